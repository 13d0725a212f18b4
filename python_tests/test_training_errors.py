"""Bad input fails fast with a clear message, before rollouts start, and never damages saved work."""

import os

import pytest
import torch

from mavis_ext.cli import main as cli_main
from mavis_ext.tiny import default_words, save_local, tiny_llama, word_tokenizer
from mavis_ext.training import TrainConfig, train_value_models


def good(prompts, responses):
    return torch.tensor([float(len(r.split())) for r in responses])


def wrong_shape(prompts, responses):
    return torch.zeros(len(responses), 3)


def nan_reward(prompts, responses):
    out = torch.ones(len(responses))
    out[-1] = float("nan")
    return out


def raises(prompts, responses):
    raise RuntimeError("reward server unreachable")


PROMPTS = ["w1 w2", "w3", "w4 w5", "w6"]


@pytest.fixture(scope="module")
def lm():
    tok = word_tokenizer(default_words(8))
    return tiny_llama(len(tok), tokenizer=tok, seed=0), tok


def _cfg(out, **kw):
    d = dict(out_dir=str(out), iterations=1, root_branching=2, branching=2, depth=2, top_k=6, max_new_tokens=4,
             prompts_per_shard=2, lr=1e-3, optimizer="adamw", epochs=1, batch_size=8, warmup=0, val_fraction=0.25)
    d.update(kw)
    return TrainConfig(**d)


@pytest.mark.parametrize("fn,match", [
    (wrong_shape, r"reward 'b': expected shape \[2\].*\(2, 3\)"),
    (nan_reward, r"reward 'b': returned a non-finite score"),
    (raises, r"reward 'b': failed on a sample input.*reward server unreachable"),
])
def test_bad_reward_fails_before_anything_is_written(lm, tmp_path, fn, match):
    model, tok = lm
    with pytest.raises(ValueError, match=match):
        train_value_models(model, tok, PROMPTS, {"a": good, "b": fn}, _cfg(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_rerun_keeps_finished_work(lm, tmp_path):
    model, tok = lm
    cfg = _cfg(tmp_path / "out")
    train_value_models(model, tok, PROMPTS, {"a": good, "b": good}, cfg, progress=False)
    snapshot = {}
    for root, _, files in os.walk(tmp_path / "out"):
        for f in files:
            p = os.path.join(root, f)
            snapshot[p] = open(p, "rb").read()
    with pytest.raises(ValueError, match="reward 'b'.*non-finite"):
        train_value_models(model, tok, PROMPTS, {"a": good, "b": nan_reward}, _cfg(tmp_path / "out", iterations=2),
                           progress=False)
    after = {}
    for root, _, files in os.walk(tmp_path / "out"):
        for f in files:
            p = os.path.join(root, f)
            after[p] = open(p, "rb").read()
    assert after == snapshot


def test_other_bad_inputs(lm, tmp_path):
    model, tok = lm
    r = {"a": good}
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_value_models(model, tok, str(tmp_path / "nope.txt"), r, _cfg(tmp_path / "o"), progress=False)
    with pytest.raises(ValueError, match=r"prompts\[1\].*zero tokens"):
        train_value_models(model, tok, ["w1", ""], r, _cfg(tmp_path / "o"), progress=False)
    with pytest.raises(ValueError, match="value_trunk: cannot load"):
        train_value_models(model, tok, PROMPTS, r, _cfg(tmp_path / "o", value_trunk=str(tmp_path / "no_trunk")),
                           progress=False)
    with pytest.raises(ValueError, match="exceed the base model's 512 positions"):
        train_value_models(model, tok, PROMPTS, r, _cfg(tmp_path / "o", max_new_tokens=600), progress=False)
    with pytest.raises(ValueError, match="TrainConfig.depth"):
        _cfg(tmp_path / "o", depth=0)
    with pytest.raises(ValueError, match="TrainConfig.mode"):
        _cfg(tmp_path / "o", mode="q")
    with pytest.raises(ValueError, match="rewards"):
        train_value_models(model, tok, PROMPTS, {}, _cfg(tmp_path / "o"), progress=False)
    assert not (tmp_path / "o").exists()


def test_cli_reports_errors(lm, tmp_path, capsys):
    model, tok = lm
    base = save_local(model, tok, str(tmp_path / "base"))
    (tmp_path / "p.jsonl").write_text('{"prompt": "w1"}\n{"prompt": \n')
    common = ["train", "--base-model", base, "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu"]
    rc = cli_main(common + ["--objectives", "a=no_such_module_zz:f", "--prompts", str(tmp_path / "p.jsonl")])
    assert rc == 2 and "no_such_module_zz" in capsys.readouterr().err
    rc = cli_main(common + ["--objectives", f"a={__name__}:good", "--prompts", str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err
    assert rc == 2 and "p.jsonl:2: not valid JSON" in err
    assert not (tmp_path / "out").exists()


def test_lora_without_peft_fails_early(lm, tmp_path):
    try:
        import peft  # noqa: F401
        pytest.skip("peft is installed")
    except ImportError:
        pass
    model, tok = lm
    with pytest.raises(ImportError, match="peft"):
        train_value_models(model, tok, PROMPTS, {"a": good}, _cfg(tmp_path / "o", lora={"r": 4}), progress=False)
    assert not (tmp_path / "o").exists()
