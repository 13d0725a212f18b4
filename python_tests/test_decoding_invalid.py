"""MavisGenerator.generate(invalid="mark"): a row whose logits (or values) are not finite stops
before the bad step and is reported in out.valid; every other row is exactly what it is without the
poisoned row. invalid="raise" (default) keeps the whole-call error."""

from __future__ import annotations

import pytest
import torch

from mavis_ext import tiny
from mavis_ext._value_scoring import TrunkScorer
from mavis_ext.decoding import MavisGenerator
from mavis_ext.values import ValueEnsemble, ValueModel

WORDS = tiny.default_words(40)
PROMPTS = ["w1 w2 w3 w4 w5", "w7", "w9 w10 w11", "w20 w21 w22 w23"]


def _vm(trunk, objectives, mode, seed):
    vm = ValueModel.from_trunk(trunk, objectives, mode)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        vm.head_weight.copy_(torch.randn(vm.head_weight.shape, generator=g))
        vm.head_bias.copy_(torch.randn(vm.head_bias.shape, generator=g))
    return vm.eval()


@pytest.fixture(scope="module")
def world():
    tok = tiny.word_tokenizer(WORDS)
    V = len(tok)
    base = tiny.tiny_llama(V, seed=1, tokenizer=tok)
    prefix = _vm(tiny.tiny_llama(V, hidden_size=16, seed=2, tokenizer=tok), ["a", "b"], "prefix", 5)
    qhead = _vm(tiny.tiny_gpt2(V, hidden_size=16, seed=3, tokenizer=tok), ["c"], "qhead", 6)
    return {"tok": tok, "base": base, "prefix": prefix, "qhead": qhead}


# (value models, weights, prefix scoring): every sampling path of the engine
SETUPS = {
    "plain": (None, None, "tree"),
    "prefix-tree": ("prefix", [0.8, -0.5], "tree"),      # candidate ids -> value trunk (ids -1 substituted)
    "prefix-copies": ("prefix", [0.8, -0.5], "copies"),
    "qhead-fused": ("qhead", [1.5], "tree"),              # guided_sample
    "ensemble": ("both", [0.8, -0.5, 1.0], "tree"),       # topk_candidates -> value_heads -> tilted_sample
}


def _gen(world, setup):
    name, w, scoring = SETUPS[setup]
    vms = {None: None, "prefix": world["prefix"], "qhead": world["qhead"],
           "both": ValueEnsemble([world["prefix"], world["qhead"]])}[name]
    return MavisGenerator(world["base"], vms, world["tok"], prefix_scoring=scoring), w


def _poison_logits(monkeypatch, gen, row, step, kind):
    """Make the base model's logits of ``row`` at decoding step ``step`` NaN / +inf / all -inf."""
    orig = gen._base_forward
    calls = {"n": 0}

    def forward(*a, **k):
        logits = orig(*a, **k)
        if calls["n"] == step:  # call 0 is the prefill, whose logits are sampled at step 0
            logits = logits.clone()
            if kind == "nan":
                logits[row, 3] = float("nan")
            elif kind == "inf":
                logits[row, 5] = float("inf")
            else:
                logits[row] = float("-inf")
        calls["n"] += 1
        return logits

    monkeypatch.setattr(gen, "_base_forward", forward)
    return calls


def _rows(out):
    return [out.sequences[b, : int(out.lengths[b])].tolist() for b in range(out.sequences.shape[0])]


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("kind", ["nan", "inf", "no_finite"])
def test_marked_row_stops_and_the_others_are_untouched(world, monkeypatch, setup, kind):
    gen, w = _gen(world, setup)
    kw = dict(weights=w, beta=2.0, top_k=6, max_new_tokens=8, seed=17, stop_at_eos=False)
    clean = gen.generate(PROMPTS, invalid="mark", **kw)
    assert clean.valid.all() and torch.equal(clean.sequences, gen.generate(PROMPTS, **kw).sequences)
    bad_row, bad_step = 1, 3
    calls = _poison_logits(monkeypatch, gen, bad_row, bad_step, kind)
    with pytest.raises((ValueError, RuntimeError)):
        gen.generate(PROMPTS, **kw)  # default: the whole call raises
    assert calls["n"] == bad_step + 1  # it raised at the poisoned step
    calls["n"] = 0
    out = gen.generate(PROMPTS, invalid="mark", **kw)
    assert out.valid.tolist() == [b != bad_row for b in range(len(PROMPTS))]
    assert int(out.lengths[bad_row]) == bad_step and not bool(out.finished[bad_row])
    assert _rows(out)[bad_row] == _rows(clean)[bad_row][:bad_step]
    pad = world["tok"].pad_token_id
    assert (out.sequences[bad_row, bad_step:] == pad).all() and (out.logp[bad_row, bad_step:] == 0).all()
    assert torch.isfinite(out.logp).all() and torch.isfinite(out.logp_ref).all() and torch.isfinite(out.kl).all()
    for b in range(len(PROMPTS)):
        if b != bad_row:
            assert _rows(out)[b] == _rows(clean)[b]
            torch.testing.assert_close(out.logp[b], clean.logp[b], rtol=0, atol=1e-6)
            torch.testing.assert_close(out.logp_ref[b], clean.logp_ref[b], rtol=0, atol=1e-6)


def test_row_poisoned_at_the_first_step(world, monkeypatch):
    gen, w = _gen(world, "prefix-tree")
    kw = dict(weights=w, beta=2.0, top_k=6, max_new_tokens=5, seed=3, stop_at_eos=False, invalid="mark")
    clean = gen.generate(PROMPTS, **kw)
    _poison_logits(monkeypatch, gen, 0, 0, "nan")
    out = gen.generate(PROMPTS, **kw)
    assert out.valid.tolist() == [False, True, True, True] and int(out.lengths[0]) == 0
    assert _rows(out)[1:] == _rows(clean)[1:]
    # every row poisoned: nothing sampled, nothing raised
    monkeypatch.undo()
    gen, w = _gen(world, "prefix-tree")
    orig = gen._base_forward
    monkeypatch.setattr(gen, "_base_forward", lambda *a, **k: orig(*a, **k) * float("nan"))
    out = gen.generate(PROMPTS, **kw)
    assert not out.valid.any() and (out.lengths == 0).all()


def test_non_finite_values_mark_the_row(world, monkeypatch):
    """Values that are NaN for one row (a broken value model) mark that row at the sampling op."""
    gen, w = _gen(world, "prefix-tree")
    kw = dict(weights=w, beta=2.0, top_k=6, max_new_tokens=6, seed=9, stop_at_eos=False)
    clean = gen.generate(PROMPTS, invalid="mark", **kw)
    orig = TrunkScorer.values
    calls = {"n": 0}

    def values(self, *a, **k):
        v = orig(self, *a, **k)
        if calls["n"] == 2:
            v = v.clone()
            v[2] = float("nan")
        calls["n"] += 1
        return v

    monkeypatch.setattr(TrunkScorer, "values", values)
    out = gen.generate(PROMPTS, invalid="mark", **kw)
    assert out.valid.tolist() == [True, True, False, True] and int(out.lengths[2]) == 2
    assert [r for b, r in enumerate(_rows(out)) if b != 2] == [r for b, r in enumerate(_rows(clean)) if b != 2]


def test_invalid_argument_is_checked(world):
    gen, w = _gen(world, "plain")
    with pytest.raises(ValueError, match='invalid: must be "raise" or "mark"'):
        gen.generate(PROMPTS, invalid="skip")
