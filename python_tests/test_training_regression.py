"""Value regression: training lowers validation MSE well below the label variance (prefix and
Q-head modes), the LR schedule, Adafactor, and bad-loss detection."""

import json
import os

import numpy as np
import pytest
import torch

from mavis_ext.tiny import default_words, tiny_llama, word_tokenizer
from mavis_ext.training import TrainConfig, train_value_models
from mavis_ext.training.dataset import PathExamples
from mavis_ext.training.distributed import DistInfo
from mavis_ext.training.regression import lr_factor, train_regression
from mavis_ext.values import ValueModel, load_value_models


def count_w3(prompts, responses):
    return torch.tensor([r.split().count("w3") for r in responses], dtype=torch.float32)


def first_is_w5(prompts, responses):
    return torch.tensor([float(r.split()[:1] == ["w5"]) + 0.5 * ("w1" in p.split()) for p, r in zip(prompts, responses)])


@pytest.fixture(scope="module")
def lm():
    tok = word_tokenizer(default_words(8))
    return tiny_llama(len(tok), tokenizer=tok, seed=0), tok


@pytest.mark.parametrize("mode", ["prefix", "qhead"])
def test_training_lowers_validation_mse_below_label_variance(lm, tmp_path, mode):
    model, tok = lm
    prompts = [f"w{i % 8} w{(i * 3) % 8}" for i in range(32)]
    cfg = TrainConfig(out_dir=str(tmp_path / mode), iterations=1, root_branching=4, branching=2, depth=3, top_k=8,
                      max_new_tokens=5, prompts_per_shard=16, lr=1e-2, optimizer="adamw", epochs=8, batch_size=32,
                      warmup=5, eval_every=10, save_every=100, fraction_bottom_nodes_to_keep=1.0, val_fraction=0.25,
                      mode=mode, seed=1)
    dirs = train_value_models(model, tok, prompts, {"a": count_w3, "b": first_is_w5}, cfg, progress=False)
    m = json.loads(open(tmp_path / mode / "metrics.jsonl").readline())
    assert m["n_val_paths"] > 20
    for o in ("a", "b"):
        assert m["val_mse_per_objective"][o] < 0.4 * m["label_var"][o], (o, m)
    assert m["val_mse"]["all"] < 0.3 * m["val_mse_initial"]["all"]
    vm = load_value_models(dirs[0])
    assert vm.mode == mode and vm.objectives == ["a", "b"]
    # the saved model is the best one: its validation MSE equals the recorded best
    assert m["val_mse"]["all"] == min(e["val_mse"] for e in json.load(open(tmp_path / mode / "iter_000" /
                                                                               "train_summary_all.json"))["evals"])


def test_lr_schedule():
    f = [lr_factor(s, 10, 3) for s in range(10)]
    assert f[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and f[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[2:], f[3:])) and f[-1] > 0
    assert lr_factor(0, 5, 0) == 1.0


def _synthetic_examples(vocab, n, seed):
    """Paths whose targets are a fixed random function of the last token: learnable exactly."""
    table = np.random.default_rng(123).normal(size=(vocab, 2)).astype(np.float32)
    g = np.random.default_rng(seed)
    ex = PathExamples(2)
    for _ in range(n):
        ids = g.integers(4, vocab, size=g.integers(3, 7))
        pos = np.arange(1, ids.size)
        ex.ids.append(ids)
        ex.pos.append(pos)
        ex.tgt.append(table[ids[pos]])
        ex.mask.append(np.ones((pos.size, 2), bool))
        ex.tree_key.append(0)
    return ex


@pytest.mark.parametrize("optimizer", ["adafactor", "adamw"])
def test_optimizers_fit_a_learnable_target(tmp_path, optimizer):
    tok = word_tokenizer(default_words(8))
    torch.manual_seed(0)
    vm = ValueModel.from_trunk(tiny_llama(len(tok), tokenizer=tok, seed=2), ["a", "b"], "prefix", tokenizer=tok)
    train, val = _synthetic_examples(len(tok), 96, 0), _synthetic_examples(len(tok), 32, 1)
    var = float(np.var(val.targets_flat()))
    res = train_regression(vm, train, val, info=DistInfo(), state_dir=str(tmp_path / "s"), optimizer=optimizer,
                           lr=1e-2, weight_decay=0.0, epochs=12, batch_size=16, grad_accum=2, warmup=3,
                           max_grad_norm=1.0, eval_every=12, save_every=12, log_every=6, pad_id=0, seed_key=(0,),
                           progress=False)
    assert res["best_val_mse"] < 0.2 * var, (res["best_val_mse"], var)
    assert os.path.isfile(tmp_path / "s" / "latest.json")


def test_empty_training_set_is_an_error(tmp_path):
    tok = word_tokenizer(default_words(8))
    vm = ValueModel.from_trunk(tiny_llama(len(tok), tokenizer=tok), ["a"], "prefix")
    with pytest.raises(ValueError, match="no training examples"):
        train_regression(vm, PathExamples(1), PathExamples(1), info=DistInfo(), state_dir=str(tmp_path),
                         optimizer="adamw", lr=1e-3, weight_decay=0.0, epochs=1, batch_size=2, grad_accum=1,
                         warmup=0, max_grad_norm=1.0, eval_every=1, save_every=1, log_every=1, pad_id=0,
                         seed_key=(0,), progress=False)


def test_adafactor_first_step_is_lr_times_sign():
    """Step 1 has beta2 = 0, so the second moment is g^2; for a rank-1 g (a vector, or an outer
    product a b^T) the factored estimate is exact and the update is lr * sign(g)."""
    from mavis_ext.training.adafactor import Adafactor

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, generator=g), torch.randn(7, generator=g)
    w1, w2 = torch.nn.Parameter(torch.randn(5, generator=g)), torch.nn.Parameter(torch.randn(5, 7, generator=g))
    before1, before2 = w1.detach().clone(), w2.detach().clone()
    w1.grad, w2.grad = a.clone(), torch.outer(a, b)
    opt = Adafactor([w1, w2], lr=0.1)
    opt.step()
    torch.testing.assert_close(w1.detach(), before1 - 0.1 * a.sign(), atol=1e-6, rtol=0)
    torch.testing.assert_close(w2.detach(), before2 - 0.1 * torch.outer(a, b).sign(), atol=1e-5, rtol=0)
    sd = opt.state_dict()
    opt2 = Adafactor([w1, w2], lr=0.1)
    opt2.load_state_dict(sd)
    assert float(opt2.state_dict()["state"][1]["step"]) == 1.0
