"""The lean Llama-family forward (mavis_ext.lean_llama, MavisGenerator(lean_forward=True)) against
the Hugging Face forward: hidden states and logits through prefill (left padding), single-token
steps, tree-masked candidate steps and commits, KV buffers that have to grow; and the engine must
sample the same tokens as with the Hugging Face forward, falling back to it for other models.
"""

from __future__ import annotations

import pytest
import torch

from mavis_ext import tiny
from mavis_ext._value_scoring import new_cache, tree_mask
from mavis_ext.decoding import MavisGenerator
from mavis_ext.lean_llama import LeanLlama, unsupported_reason
from mavis_ext.values import ValueEnsemble, ValueModel, backbone_of, positions_from_mask

V = 60
WORDS = tiny.default_words(40)
PROMPTS = ["w1 w2 w3 w4 w5", "w7", "w9 w10 w11", "w20 w21 w22 w23 w24 w25 w26"]


def _model(kind, seed, V=V, hidden=32):
    if kind == "llama":
        return tiny.tiny_llama(V, hidden_size=hidden, seed=seed)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=hidden, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2)).eval()


def _hf(bb, ids, mask, pos, cache):
    return bb(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
              past_key_values=cache).last_hidden_state


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("m", [1, 2])
def test_hidden_states_match_hf(kind, m):
    models = [_model(kind, s) for s in range(1, 1 + m)]
    bbs = [backbone_of(x) for x in models]
    lean = LeanLlama(bbs, lm_head=models[0].lm_head if m == 1 else None)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (3, 5), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :4] = 0
    pos = positions_from_mask(mask)
    lc = lean.new_cache(3, 2)  # too small on purpose: the buffers must grow
    hc = [new_cache(bb) for bb in bbs]

    def check(got, want_fn, rows=None):
        for i, (bb, c) in enumerate(zip(bbs, hc)):
            want = want_fn(bb, c)
            a, b = (got[i], want) if rows is None else (got[i][rows], want[rows])
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    check(lean.forward(ids, mask, pos, lc), lambda bb, c: _hf(bb, ids, mask, pos, c), rows=mask.bool())
    am, nxt = mask, mask.sum(1)
    for step in range(6):
        if step % 2 == 0:  # a tree-masked candidate step, then commit one candidate per row
            K = 3 + step
            cand = torch.randint(3, V, (3, K), generator=g)
            eye = torch.full((K, K), torch.finfo(torch.float32).min).fill_diagonal_(0.0)
            tm = tree_mask(am, K, eye, torch.float32)
            cpos = nxt[:, None].expand(3, K)
            check(lean.forward(cand, tm, cpos, lc), lambda bb, c: _hf(bb, cand, tm, cpos, c))
            col = torch.randint(0, K, (3,), generator=g)
            L = am.shape[1]
            lean.commit(lc, L, K, col.repeat(m))
            for c in hc:
                c.crop(-K)  # the HF caches take the chosen token as a normal step below
            tok = cand.gather(1, col[:, None])
            am = torch.cat([am, torch.ones_like(tok)], 1)
            for bb, c in zip(bbs, hc):
                _hf(bb, tok, am, nxt[:, None], c)
            assert lc.get_seq_length() == am.shape[1]
        else:
            tok = torch.randint(3, V, (3, 1), generator=g)
            am = torch.cat([am, torch.ones_like(tok)], 1)
            check(lean.forward(tok, am, nxt[:, None], lc), lambda bb, c: _hf(bb, tok, am, nxt[:, None], c))
        nxt = nxt + 1
    if m == 1:  # the base model's logits at the last position
        tok = torch.randint(3, V, (3, 1), generator=g)
        am = torch.cat([am, torch.ones_like(tok)], 1)
        got = lean.logits_last(tok, am, nxt[:, None], lc)
        want = models[0](input_ids=tok, attention_mask=am, position_ids=nxt[:, None], past_key_values=hc[0],
                         use_cache=True).logits[:, -1]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def world():
    tok = tiny.word_tokenizer(WORDS)
    Vt = len(tok)
    base = tiny.tiny_llama(Vt, seed=1, tokenizer=tok)
    vms = [ValueModel.from_trunk(tiny.tiny_llama(Vt, hidden_size=16, seed=s), [f"o{s}"], "prefix", init_std=1.0)
           for s in (2, 3)]
    vms.append(ValueModel.from_trunk(_model("qwen2", 4, V=Vt, hidden=16), ["qw"], "prefix", init_std=1.0))
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):  # outside the lean forward's scope: keeps the HF forward
        torch.manual_seed(5)
        biased = LlamaForCausalLM(LlamaConfig(vocab_size=Vt, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, mlp_bias=True)).eval()
    vms.append(ValueModel.from_trunk(biased, ["g"], "prefix", init_std=1.0))
    vms.append(ValueModel.from_trunk(tiny.tiny_llama(Vt, hidden_size=16, seed=6), ["q1", "q2"], "qhead",
                                     init_std=1.0))
    return tok, base, ValueEnsemble(vms)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_engine_same_tokens_as_hf_forward(world, seed):
    tok, base, ens = world
    W = [[1.0, -0.5, 0.3, 0.4, 0.2, -0.1], [0.2, 0.9, 0.0, -0.3, 0.5, 0.5],
         [-1.0, 0.0, 1.0, 0.2, 0.0, 1.0], [0.5] * 6]
    kw = dict(weights=W, beta=2.0, top_k=6, max_new_tokens=14, seed=seed, stop_at_eos=False)
    want = MavisGenerator(base, ens, tok).generate(PROMPTS, **kw)
    gen = MavisGenerator(base, ens, tok, lean_forward=True)
    got = gen.generate(PROMPTS, **kw)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(got.logp, want.logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.logp_ref, want.logp_ref, rtol=1e-5, atol=1e-5)
    st = gen.lean_status
    assert st["base_model"] == "lean" and st["value_models[0]"] == st["value_models[1]"] == "lean"
    assert st["value_models[2]"] == "lean"  # Qwen2 with grouped KV heads
    assert st["value_models[3]"] == "mlp_bias"
    assert st["value_models[4]"] == "lean"  # a Q-head trunk, one token per step


def test_fused_qhead_path_same_tokens(world):
    """A single Q-head model takes the fused guided_sample path, its trunk run lean."""
    tok, base, ens = world
    vm = ens.models[4]
    kw = dict(weights=[[0.7, -0.4], [0.1, 1.0], [-1.0, 0.3], [0.5, 0.5]], beta=2.0, top_k=7, max_new_tokens=12,
              seed=3, stop_at_eos=False)
    want = MavisGenerator(base, vm, tok).generate(PROMPTS, **kw)
    got = MavisGenerator(base, vm, tok, lean_forward=True).generate(PROMPTS, **kw)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(got.logp, want.logp, rtol=1e-5, atol=1e-5)


def test_plain_sampling_and_weight_changes(world):
    tok, base, ens = world
    kw = dict(top_k=8, max_new_tokens=10, seed=4, stop_at_eos=False)
    b2 = tiny.tiny_llama(len(tok), seed=1, tokenizer=tok)
    gen = MavisGenerator(b2, None, tok, lean_forward=True)
    assert torch.equal(gen.generate(PROMPTS, **kw).sequences,
                       MavisGenerator(b2, None, tok).generate(PROMPTS, **kw).sequences)
    with torch.no_grad():  # in place, as an optimizer step does: the lean copy must follow
        b2.lm_head.weight.mul_(-2.0)
        b2.model.layers[0].mlp.up_proj.weight.mul_(3.0)
    assert torch.equal(gen.generate(PROMPTS, **kw).sequences,
                       MavisGenerator(b2, None, tok).generate(PROMPTS, **kw).sequences)


def test_bf16_gemms_with_lean(world):
    tok, base, ens = world
    vm = ens.models[0]
    kw = dict(weights=[1.0], beta=2.0, top_k=6, max_new_tokens=8, seed=0, stop_at_eos=False)
    out = MavisGenerator(base, vm, tok, lean_forward=True, trunk_gemm_dtype="bf16").generate(PROMPTS, **kw)
    ref = MavisGenerator(base, vm, tok).generate(PROMPTS, **kw)
    assert torch.isfinite(out.logp).all()
    assert (out.sequences == ref.sequences).float().mean() > 0.5


def test_scope():
    assert unsupported_reason(backbone_of(tiny.tiny_gpt2(V, seed=1))).startswith("GPT2Model is not one of")
    assert unsupported_reason(backbone_of(tiny.tiny_llama(V, seed=1))) is None
    m = tiny.tiny_llama(V, seed=1)
    m.config.mlp_bias = True
    assert unsupported_reason(backbone_of(m)) == "mlp_bias"
    with pytest.raises(ValueError, match="lean_forward: GPT2Model"):
        LeanLlama([backbone_of(tiny.tiny_gpt2(V, seed=1))])
    with pytest.raises(ValueError, match="lean_forward: must be True or False"):
        MavisGenerator(tiny.tiny_llama(V, seed=1), None, None, lean_forward="yes")
