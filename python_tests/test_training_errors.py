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
    """Resuming with another reward function is refused (the reward is part of the run's
    fingerprint), naming the objective, and leaves every saved byte as it was."""
    model, tok = lm
    cfg = _cfg(tmp_path / "out")
    train_value_models(model, tok, PROMPTS, {"a": good, "b": good}, cfg, progress=False)
    snapshot = {}
    for root, _, files in os.walk(tmp_path / "out"):
        for f in files:
            p = os.path.join(root, f)
            snapshot[p] = open(p, "rb").read()
    with pytest.raises(ValueError, match=r"different settings \(rewards\.b\.function: .*good.* -> .*nan_reward"):
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
    with pytest.raises(FileNotFoundError, match="value_trunk: no such directory: .*no_trunk"):
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


# ----------------------------------------------------------------------------- CLI: one line, exit 2
@pytest.fixture(scope="module")
def cli_world(lm, tmp_path_factory):
    model, tok = lm
    d = tmp_path_factory.mktemp("cli_errors")
    base = save_local(model, tok, str(d / "base"))
    (d / "p.txt").write_text("w1 w2\nw3\n")
    (d / "afile").write_text("not a folder\n")
    return d, base


def _cli_error(capsys, args):
    capsys.readouterr()                   # only what the command itself prints
    rc = cli_main(args)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("mavis train: error: "), err
    return lines[0]


def _common(d, base, **over):
    a = {"--base-model": base, "--objectives": f"a={__name__}:good", "--prompts": str(d / "p.txt"),
         "--out": str(d / "out"), "--device": "cpu"}
    a.update(over)
    out = ["train", "--no-progress"]
    for k, v in a.items():
        out += [k, v]
    return out


@pytest.mark.parametrize("case,over,expect", [
    ("out_under_file", {"--out": "{d}/afile/run"}, r"--out: cannot create .*afile/run.*afile' is a file, not a directory"),
    ("out_is_file", {"--out": "{d}/afile"}, r"--out: .*afile' exists and is not a directory"),
    ("bad_lora_json", {"--lora": "{r: 4}"}, r"--lora: not valid JSON \(Expecting property name"),
    ("lora_not_object", {"--lora": "[4]"}, r"--lora: expected a JSON object"),
    ("device_malformed", {"--device": "gpu0"}, r"--device: 'gpu0' is not a device name"),
    ("base_missing", {"--base-model": "{d}/no_base"}, r"--base-model: no such directory: .*no_base"),
    ("trunk_missing", {"--value-trunk": "./no_trunk_here/x"}, r"--value-trunk: no such directory: .*no_trunk_here"),
    ("reward_hf_missing", {"--objectives": "a=hf:{d}/no_rm"}, r"reward 'a': no such directory: .*no_rm"),
    ("prompts_missing", {"--prompts": "{d}/no_prompts.txt"}, r"--prompts: no such file"),
])
def test_cli_bad_arguments_are_one_line(cli_world, capsys, case, over, expect):
    import re

    d, base = cli_world
    line = _cli_error(capsys, _common(d, base, **{k: v.replace("{d}", str(d)) for k, v in over.items()}))
    assert re.search(expect, line), line
    assert not (d / "out").exists()


def test_cli_device_cuda_without_cuda(cli_world, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    d, base = cli_world
    line = _cli_error(capsys, _common(d, base, **{"--device": "cuda"}))
    assert "--device: 'cuda' requested but" in line and "--device cpu" in line


def test_cli_unwritable_out(cli_world, capsys, tmp_path):
    d, base = cli_world
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "run"
    else:
        # root ignores permission bits; a pseudo-filesystem refuses new entries for real
        target = "/sys/mavis_train_out_test"
        try:
            os.mkdir(target)
        except OSError:
            pass
        else:
            os.rmdir(target)
            pytest.skip("no unwritable location found on this machine")
    line = _cli_error(capsys, _common(d, base, **{"--out": str(target)}))
    assert "--out: cannot write to" in line and "choose a writable folder" in line


def test_api_out_dir_and_device_errors(lm, tmp_path):
    model, tok = lm
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"out_dir: cannot create .* is a file, not a directory"):
        train_value_models(model, tok, PROMPTS, {"a": good}, _cfg(tmp_path / "f" / "o"), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device: 'cuda:0' requested but"):
            train_value_models(model, tok, PROMPTS, {"a": good}, _cfg(tmp_path / "o", device="cuda:0"), progress=False)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- value trunk vocabulary
def _trunk(tmp_path, name, vocab, tokenizer=None, seed=5):
    return save_local(tiny_llama(vocab, hidden_size=16, seed=seed, tokenizer=tokenizer), tokenizer,
                      str(tmp_path / name))


def test_value_trunk_with_another_vocabulary_fails_before_any_work(lm, tmp_path, capsys):
    model, tok = lm
    V = len(tok)
    bigger = _trunk(tmp_path, "bigger", V + 5)                      # no tokenizer files: cannot be the same
    smaller = _trunk(tmp_path, "smaller", V - 2)
    other_tok = word_tokenizer([f"x{i}" for i in range(8)])          # same size, other token -> id map
    other = _trunk(tmp_path, "other", V, other_tok)
    cases = [(bigger, rf"{V + 5} tokens, the base model's {V}"), (smaller, rf"embeds {V - 2} tokens but the base "
                                                                           rf"model emits {V}"),
             (other, r"the trunk's tokenizer .* differs from the base tokenizer")]
    for trunk, msg in cases:
        with pytest.raises(ValueError, match="value_trunk: .*" + msg):
            train_value_models(model, tok, PROMPTS, {"a": good}, _cfg(tmp_path / "o", value_trunk=trunk),
                               progress=False)
        assert not (tmp_path / "o").exists()                          # nothing written, no run.json
    # the CLI names the flag and both sizes in one line
    base = save_local(model, tok, str(tmp_path / "base"))
    (tmp_path / "p.txt").write_text("w1 w2\n")
    line = _cli_error(capsys, ["train", "--base-model", base, "--objectives", f"a={__name__}:good", "--prompts",
                               str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"), "--device", "cpu",
                               "--no-progress", "--value-trunk", bigger])
    assert line.startswith("mavis train: error: --value-trunk: ") and f"{V + 5}" in line and f"{V}" in line
    assert not (tmp_path / "o").exists()


def test_value_trunk_vocabulary_rules(lm, tmp_path):
    """Accepted: the same size; a larger embedding when the trunk's tokenizer is the base's (padded
    vocabularies, as in model families whose sizes differ only in padding)."""
    from mavis_ext.training.preflight import check_value_trunk_vocab

    model, tok = lm
    V = len(tok)
    check_value_trunk_vocab(_trunk(tmp_path, "same", V), model, tok)
    check_value_trunk_vocab(_trunk(tmp_path, "same_tok", V, tok), model, tok)
    check_value_trunk_vocab(_trunk(tmp_path, "padded", V + 8, tok), model, tok)
    check_value_trunk_vocab(tiny_llama(V, hidden_size=16), model, tok)          # a model object
    with pytest.raises(ValueError, match=rf"value_trunk: the trunk embeds {V - 1} tokens but the base model emits {V}"):
        check_value_trunk_vocab(tiny_llama(V - 1, hidden_size=16), model, tok)


# ----------------------------------------------------------------------------- hf: reward with an untrained head
def test_cli_refuses_a_reward_model_with_an_untrained_head(cli_world, capsys):
    d, base = cli_world
    line = _cli_error(capsys, _common(d, base, **{"--objectives": f"a=hf:{base}"}))
    assert "reward 'a'" in line and "score.weight" in line and "--allow-untrained-reward-head" in line
    assert not (d / "out").exists()
