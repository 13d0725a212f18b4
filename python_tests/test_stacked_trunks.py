"""Separate value trunks of one shape run as one stacked pass (mavis_ext.stacked_trunks).

The stacked pass must give each trunk's values as if it ran alone (through prefill, tree-masked
scoring and the in-place commit of the chosen candidate), the engine must sample the same tokens
with and without stacking, and a stack must never run with stale weights.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from mavis_ext import stacked_trunks, tiny
from mavis_ext._value_scoring import StackedScorer, TrunkScorer
from mavis_ext.decoding import MavisGenerator
from mavis_ext.stacked_trunks import StackError, build_stack
from mavis_ext.values import ValueEnsemble, ValueModel, positions_from_mask

WORDS = tiny.default_words(40)
PROMPTS = ["w1 w2 w3 w4 w5", "w7", "w9 w10 w11", "w20 w21 w22 w23 w24 w25 w26"]
W3 = [[1.0, -0.5, 0.3], [0.2, 0.9, 0.0], [-1.0, 0.0, 1.0], [0.5, 0.5, 0.5]]


def _trunk(kind: str, V: int, seed: int):
    if kind == "llama":
        return tiny.tiny_llama(V, hidden_size=16, seed=seed)
    if kind == "gpt2":
        return tiny.tiny_gpt2(V, hidden_size=16, seed=seed)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2)).eval()


def _vm(kind, V, seed, objectives=None):
    vm = ValueModel.from_trunk(_trunk(kind, V, seed), objectives or [f"o{seed}"], "prefix", init_std=1.0)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        vm.head_bias.copy_(torch.randn(vm.head_bias.shape, generator=g))
    return vm


@pytest.fixture(scope="module")
def tok():
    return tiny.word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def base(tok):
    return tiny.tiny_llama(len(tok), seed=1, tokenizer=tok)


def _no_commit_warning(rec):
    return [w for w in rec if "cannot keep the chosen candidate" in str(w.message)] == []


@pytest.mark.parametrize("kind", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("m", [2, 3])
def test_stacked_values_equal_each_trunk_alone(tok, kind, m):
    """Prefill, 5 tree-masked steps with a random committed candidate each: every trunk's values
    from the stacked pass equal that trunk's own TrunkScorer within 1e-5."""
    V = len(tok)
    vms = [_vm(kind, V, s) for s in range(2, 2 + m)]
    if getattr(vms[0].trunk, "_supports_cache_class", True) is False:
        pytest.skip(f"{kind} takes no cache object in this transformers version")
    if kind == "llama":  # a trunk with several heads stacks too
        vms[0] = _vm(kind, V, 2, ["a", "b"])
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    B = ids.shape[0]
    stacked = StackedScorer(vms, build_stack(vms, vocab=V))
    alone = [TrunkScorer(vm) for vm in vms]
    pos = positions_from_mask(mask)
    stacked.start(ids, mask, pos)
    for sc in alone:
        sc.start(ids, mask, pos)
    g = torch.Generator().manual_seed(7)
    nxt, am = mask.sum(1), mask
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for step in range(5):
            K = 3 + step  # K changes between steps
            cand = torch.randint(4, V, (B, K), generator=g)
            got = stacked.member_values(cand, nxt, am)
            for vm, sc, v in zip(vms, alone, got):
                assert v.shape == (B, vm.m, K)
                torch.testing.assert_close(v, sc.values(cand, nxt, am), rtol=1e-5, atol=1e-5)
            col = torch.randint(0, K, (B,), generator=g)
            chosen = cand.gather(1, col[:, None])[:, 0]
            am = torch.cat([am, torch.ones(B, 1, dtype=am.dtype)], 1)
            stacked.advance(chosen, col, nxt, am)
            for sc in alone:
                sc.advance(chosen, col, nxt, am)
            nxt = nxt + 1
    assert _no_commit_warning(rec)
    assert stacked.cache.get_seq_length() == am.shape[1]


def test_engine_same_tokens_stacked_or_not(tok, base):
    """Three separate same-shape trunks plus a Q-head model and a wider trunk: stacking
    (the default) samples exactly the tokens of running each trunk alone, and runs the three
    same-shape trunks in one stacked pass (the members' own forwards are never called)."""
    V = len(tok)
    same = [_vm("llama", V, s) for s in (2, 3, 4)]
    other = ValueModel.from_trunk(tiny.tiny_llama(V, hidden_size=32, seed=5), ["big"], "prefix", init_std=1.0)
    qhead = ValueModel.from_trunk(_trunk("llama", V, 6), ["q"], "qhead", init_std=1.0)
    ens = ValueEnsemble([same[0], qhead, same[1], other, same[2]])
    W = [[1.0, 0.4, -0.5, 0.7, 0.3], [0.2, 0.0, 0.9, -0.3, 0.0], [-1.0, 1.0, 0.0, 0.2, 1.0], [0.5] * 5]
    kw = dict(weights=W, beta=2.0, top_k=6, max_new_tokens=12, seed=5, stop_at_eos=False)
    want = MavisGenerator(base, ens, tok, stack_trunks=False).generate(PROMPTS, **kw)
    gen = MavisGenerator(base, ens, tok)
    calls = {"stack": 0}
    orig = stacked_trunks.StackedTrunk.forward

    def counting(self, *a, **k):
        calls["stack"] += 1
        return orig(self, *a, **k)

    def boom(*a, **k):
        raise AssertionError("a stacked member's own forward ran")

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(stacked_trunks.StackedTrunk, "forward", counting)
        gen.generate(PROMPTS, **kw)  # builds the stack (its self-check calls the members)
        for vm in same:
            mp.setattr(vm, "backbone_forward", boom)
        calls["stack"] = 0
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            got = gen.generate(PROMPTS, **kw)
    finally:
        mp.undo()
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(got.logp, want.logp, rtol=1e-5, atol=1e-5)
    # one prefill, then one scoring pass per step: the chosen candidate is committed in place,
    # never run again
    assert calls["stack"] == 1 + 12
    assert not [w for w in rec if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_objectives_paper_setup_identical_tokens(tok, base, seed):
    """One value model per objective (the paper's setup), B = 4, per-row weights, several seeds."""
    V = len(tok)
    ens = ValueEnsemble([_vm("llama", V, 2), _vm("llama", V, 3)])
    W = [[1.0, -0.5], [0.2, 0.9], [-1.0, 0.5], [0.5, 0.5]]
    kw = dict(weights=W, beta=3.0, top_k=8, max_new_tokens=16, seed=seed, stop_at_eos=False)
    a = MavisGenerator(base, ens, tok).generate(PROMPTS, **kw)
    b = MavisGenerator(base, ens, tok, stack_trunks=False).generate(PROMPTS, **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.logp, b.logp, rtol=1e-5, atol=1e-5)


def test_stack_is_rebuilt_when_weights_change(tok, base):
    V = len(tok)
    ens = ValueEnsemble([_vm("llama", V, 2), _vm("llama", V, 3)])
    kw = dict(weights=[0.7, 0.6], beta=4.0, top_k=8, max_new_tokens=10, seed=3, stop_at_eos=False)
    gen = MavisGenerator(base, ens, tok)
    before = gen.generate(PROMPTS, **kw)
    with torch.no_grad():  # in place, as an optimizer step does
        for p in ens.models[1].trunk.parameters():
            p.mul_(-1.5)
    after = gen.generate(PROMPTS, **kw)
    want = MavisGenerator(base, ens, tok, stack_trunks=False).generate(PROMPTS, **kw)
    assert torch.equal(after.sequences, want.sequences)
    assert not torch.equal(after.sequences, before.sequences)


def test_unstackable_group_warns_or_raises(tok, base, monkeypatch):
    V = len(tok)
    ens = ValueEnsemble([_vm("llama", V, 2), _vm("llama", V, 3)])
    kw = dict(weights=[0.7, 0.6], beta=2.0, top_k=6, max_new_tokens=6, seed=3)
    want = MavisGenerator(base, ens, tok, stack_trunks=False).generate(PROMPTS, **kw)

    def fail(self, vocab):
        raise StackError("made to fail")

    monkeypatch.setattr(stacked_trunks.StackedTrunk, "self_check", fail)
    gen = MavisGenerator(base, ens, tok)
    with pytest.warns(RuntimeWarning, match="cannot be stacked: made to fail"):
        got = gen.generate(PROMPTS, **kw)
    assert torch.equal(got.sequences, want.sequences)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gen.generate(PROMPTS, **kw)  # warned once per generator
    with pytest.raises(ValueError, match=r"stack_trunks: the trunks of value models \['o2', 'o3'\] cannot run"):
        MavisGenerator(base, ens, tok, stack_trunks=True).generate(PROMPTS, **kw)


def test_different_shapes_are_not_grouped():
    V = 44
    a, b = _vm("llama", V, 2), ValueModel.from_trunk(tiny.tiny_llama(V, hidden_size=32, seed=3), ["x"], "prefix")
    with pytest.raises(StackError, match="differs from trunk 0"):
        build_stack([a, b], vocab=V)


def test_bf16_gemms_values_within_tolerance(tok, base):
    """trunk_gemm_dtype="bf16": values within 3e-2 of fp32 relative to their scale (the
    README states the tolerance), and generation runs (also for a single trunk)."""
    V = len(tok)
    vms = [_vm("llama", V, 2), _vm("llama", V, 3)]
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    sc = StackedScorer(vms, build_stack(vms, torch.bfloat16, vocab=V))
    sc.start(ids, mask, positions_from_mask(mask))
    cand = torch.randint(4, V, (4, 9), generator=torch.Generator().manual_seed(0))
    for vm, v in zip(vms, sc.member_values(cand, mask.sum(1), mask)):
        ref = TrunkScorer(vm)
        ref.start(ids, mask, positions_from_mask(mask))
        want = ref.values(cand, mask.sum(1), mask)
        err = (v - want).abs().max().item()
        assert 0 < err <= 3e-2 * want.abs().max().item(), err
    for ens in (ValueEnsemble(vms), vms[0]):
        out = MavisGenerator(base, ens, tok, trunk_gemm_dtype="bf16").generate(
            PROMPTS, weights=[0.5] * (2 if ens is not vms[0] else 1), beta=1.0, top_k=5, max_new_tokens=6, seed=0)
        assert torch.isfinite(out.logp).all()


def test_bad_arguments(tok, base):
    vm = _vm("llama", len(tok), 2)
    with pytest.raises(ValueError, match='stack_trunks: must be "auto", True or False'):
        MavisGenerator(base, vm, tok, stack_trunks="yes")
    with pytest.raises(ValueError, match='trunk_gemm_dtype: expected None or "bf16"'):
        MavisGenerator(base, vm, tok, trunk_gemm_dtype="fp16")
    with pytest.raises(ValueError, match='trunk_gemm_dtype: needs prefix_scoring="tree"'):
        MavisGenerator(base, vm, tok, trunk_gemm_dtype="bf16", prefix_scoring="copies")
