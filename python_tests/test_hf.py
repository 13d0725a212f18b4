"""MavisLogitsProcessor with HF model.generate: per-step distributions equal the engine's and a
from-scratch reference; caches survive across steps and reset between generations."""

from __future__ import annotations

import pytest
import torch

from mavis_ext import ops, tiny
from mavis_ext.decoding import MavisGenerator
from mavis_ext.hf import MavisLogitsProcessor
from mavis_ext.values import ValueEnsemble, ValueModel, load_value_models

WORDS = tiny.default_words(40)
PROMPTS = ["w1 w2 w3 w4 w5", "w7", "w9 w10 w11"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    tok = tiny.word_tokenizer(WORDS)
    V = len(tok)
    base = tiny.tiny_llama(V, seed=1, tokenizer=tok)
    out = {"tok": tok, "base": base, "V": V}
    for i, (name, trunk, objs, mode) in enumerate([
        ("prefix", tiny.tiny_llama(V, hidden_size=16, seed=2), ["a", "b"], "prefix"),
        ("qhead", tiny.tiny_gpt2(V, hidden_size=16, seed=3), ["c"], "qhead"),
    ]):
        vm = ValueModel.from_trunk(trunk, objs, mode, tokenizer=tok)
        g = torch.Generator().manual_seed(20 + i)
        with torch.no_grad():
            vm.head_weight.copy_(torch.randn(vm.head_weight.shape, generator=g))
            vm.head_bias.copy_(torch.randn(vm.head_bias.shape, generator=g))
        vm.save_pretrained(str(root / name))
        out[name] = load_value_models(str(root / name), base_tokenizer=tok)
    out["ens"] = ValueEnsemble([out["prefix"], out["qhead"]])
    return out


def _reference_tilted_logp(world, seq, weights, beta, K, temperature=1.0, normalize=False):
    """log pi_MAVIS(.|seq) over the full vocabulary, recomputed from scratch (no cache)."""
    base = world["base"]
    logits = base(torch.tensor([seq])).logits[:, -1]
    cl, ci, _ = ops.topk_candidates(logits, K, temperature=temperature)
    comb = torch.zeros(1, K)
    o = 0
    for vm in world["ens"].models:
        if vm.mode == "prefix":
            h = vm.backbone_forward(torch.tensor([seq + [int(c)] for c in ci[0]]), use_cache=False)[:, -1]
            vals = vm.heads(h[None])
        else:
            h = vm.backbone_forward(torch.tensor([seq]), use_cache=False)[:, -1]
            vals = vm.heads(h, candidate_ids=ci)
        comb = comb + (torch.as_tensor(weights[o : o + vm.m]).view(1, -1, 1) * vals).sum(1)
        o += vm.m
    if normalize:
        comb = (comb - comb.min()) / (comb.max() - comb.min() + 1e-6)
    out = torch.full((world["V"],), float("-inf"))
    out[ci[0]] = torch.log_softmax(cl[0] + beta * comb[0], -1)
    return out


@pytest.mark.parametrize("normalize", [False, True])
def test_hf_generate_samples_the_mavis_distribution(world, normalize):
    tok, base = world["tok"], world["base"]
    W, beta, K = [0.8, -0.4, 1.2], (6.0 if normalize else 2.0), 6
    proc = MavisLogitsProcessor(world["ens"], W, beta, K, normalize_values=normalize, tokenizer=tok)
    for prompts in (PROMPTS, list(reversed(PROMPTS))):  # the second generate() must reset the caches
        enc = tok(prompts, return_tensors="pt", padding=True)
        hf = base.generate(**enc, do_sample=True, top_k=0, max_new_tokens=6,
                           logits_processor=[proc], output_scores=True, return_dict_in_generate=True,
                           pad_token_id=tok.pad_token_id)
        T = enc["input_ids"].shape[1]
        for b in range(len(prompts)):
            prompt = tok(prompts[b])["input_ids"]
            new = hf.sequences[b, T:].tolist()
            if tok.eos_token_id in new:  # after EOS HF pads the row; its scores no longer matter
                new = new[: new.index(tok.eos_token_id) + 1]
            for t in range(len(new)):
                want = _reference_tilted_logp(world, prompt + new[:t], W, beta, K, normalize=normalize)
                got = torch.log_softmax(hf.scores[t][b].float(), -1)
                assert torch.equal(torch.isfinite(got), torch.isfinite(want))
                fin = torch.isfinite(want)
                torch.testing.assert_close(got[fin], want[fin], rtol=1e-4, atol=1e-4)


def test_processor_matches_engine_step_by_step(world):
    """Feeding the engine's own sequences through the processor gives the engine's log pi."""
    tok, base = world["tok"], world["base"]
    W, beta, K, temp = [[0.8, -0.4, 1.2], [0.0, 1.0, -1.0], [2.0, 0.5, 0.0]], 2.5, 7, 0.8
    gen = MavisGenerator(base, world["ens"], tok)
    out = gen.generate(PROMPTS, weights=W, beta=beta, top_k=K, temperature=temp, max_new_tokens=6, seed=3,
                       stop_at_eos=False)
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    proc = MavisLogitsProcessor(world["ens"], W, beta, K, temperature=temp, attention_mask=mask)
    from transformers import DynamicCache

    cache = DynamicCache()
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits = base(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache).logits[:, -1]
    seq, full_mask = ids, mask
    for t in range(out.sequences.shape[1]):
        scores = proc(seq, logits)
        lp = torch.log_softmax(scores.float(), -1).gather(1, out.sequences[:, t : t + 1])[:, 0]
        torch.testing.assert_close(lp, out.logp[:, t], rtol=1e-4, atol=1e-4)
        seq = torch.cat([seq, out.sequences[:, t : t + 1]], 1)
        full_mask = torch.cat([full_mask, torch.ones(len(PROMPTS), 1, dtype=mask.dtype)], 1)
        logits = base(input_ids=out.sequences[:, t : t + 1], attention_mask=full_mask,
                      position_ids=(full_mask.sum(1, keepdim=True) - 1), cache=cache).logits[:, -1]


def test_processor_bad_arguments(world):
    with pytest.raises(ValueError, match="weights"):
        MavisLogitsProcessor(world["ens"], [1.0, 2.0], 1.0, 5)
    with pytest.raises(ValueError, match="beta"):
        MavisLogitsProcessor(world["ens"], [1.0, 2.0, 3.0], -1.0, 5)
    with pytest.raises(ValueError, match="top_k"):
        MavisLogitsProcessor(world["ens"], [1.0, 2.0, 3.0], 1.0, 0)
    with pytest.raises(ValueError, match="value_models"):
        MavisLogitsProcessor(None, [1.0], 1.0, 5)
    other = tiny.word_tokenizer([f"x{i}" for i in range(40)])
    with pytest.raises(ValueError, match="value_models: vocabulary"):
        MavisLogitsProcessor(world["ens"], [1.0, 2.0, 3.0], 1.0, 5, tokenizer=other)
