"""MavisLogitsProcessor with HF model.generate: per-step distributions equal the engine's and a
from-scratch reference; caches survive across steps and reset between generations."""

from __future__ import annotations

import pytest
import torch

from mavis_ext import ops, tiny
from mavis_ext.decoding import MavisGenerator
from mavis_ext.hf import MavisLogitsProcessor
from mavis_ext.values import ValueEnsemble, ValueModel, load_value_models, positions_from_mask

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


# ----------------------------------------------------------------------------- padding in the drop-in
# Prompts of different lengths, so that HF left-pads all but the longest; the padded rows are where
# reading padding as text would change the values.
PADDED = ["w1 w2 w3 w4 w5 w6", "w7", "w9 w10 w11"]
W3 = [0.8, -0.4, 1.2]


def _padded_proc(world, how, W, **kw):
    tok, enc = world["tok"], world["tok"](PADDED, return_tensors="pt", padding=True)
    if how == "mask":
        return MavisLogitsProcessor(world["ens"], W, 2.0, 6, attention_mask=enc["attention_mask"], **kw)
    if how == "tokenizer":
        return MavisLogitsProcessor(world["ens"], W, 2.0, 6, tokenizer=tok, **kw)
    return MavisLogitsProcessor(world["ens"], W, 2.0, 6, model=world["base"], **kw)  # generation config's pad id


@pytest.mark.parametrize("how", ["mask", "tokenizer", "model"])
@pytest.mark.parametrize("n_ret", [1, 3])
def test_padded_batch_scores_equal_the_unpadded_prompt(world, how, n_ret):
    """model.generate(**enc, ...) as the README shows it, on a left-padded batch, also with
    num_return_sequences: every step's processed distribution of every row equals the MAVIS
    distribution of the same prompt without padding (recomputed from scratch). Per-prompt weights
    follow HF's row expansion like the mask."""
    tok, base = world["tok"], world["base"]
    enc = tok(PADDED, return_tensors="pt", padding=True)
    assert (enc["attention_mask"] == 0).any(), "the batch must really be padded"
    W = [W3, [0.0, 1.0, -1.0], [2.0, 0.5, 0.3]]
    proc = _padded_proc(world, how, W)
    torch.manual_seed(0)
    hf = base.generate(**enc, do_sample=True, top_k=0, max_new_tokens=4, num_return_sequences=n_ret,
                       logits_processor=[proc], output_scores=True, return_dict_in_generate=True,
                       pad_token_id=tok.pad_token_id)
    T = enc["input_ids"].shape[1]
    assert hf.sequences.shape[0] == len(PADDED) * n_ret
    worst = 0.0
    for r in range(hf.sequences.shape[0]):
        b = r // n_ret  # HF repeats each prompt row n_ret times in place
        prompt = tok(PADDED[b])["input_ids"]
        new = hf.sequences[r, T:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id) + 1]
        for t in range(len(new)):
            want = _reference_tilted_logp(world, prompt + new[:t], W[b], 2.0, 6).detach()
            got = torch.log_softmax(hf.scores[t][r].float(), -1)
            assert torch.equal(torch.isfinite(got), torch.isfinite(want))
            fin = torch.isfinite(want)
            worst = max(worst, float((got[fin] - want[fin]).abs().max()))
    assert worst < 2e-5, worst


def _first_step_logp(world, proc, ids):
    """The processor's first-step log-probs, on base logits computed with the true padding."""
    mask = (ids != world["tok"].pad_token_id).long()
    logits = world["base"](input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits[:, -1]
    return torch.log_softmax(proc(ids, logits).float(), -1)


def test_padding_read_as_text_is_measurably_wrong(world):
    """The power check behind the tests above: a processor told that the padding is text (an
    all-ones mask, what the processor used to fall back to) gives another distribution for the
    padded rows, and the right one for the unpadded row."""
    tok = world["tok"]
    enc = tok(PADDED, return_tensors="pt", padding=True)
    ids = enc["input_ids"]
    right = _first_step_logp(world, MavisLogitsProcessor(world["ens"], W3, 2.0, 6, attention_mask=enc["attention_mask"]), ids)
    wrong = _first_step_logp(world, MavisLogitsProcessor(world["ens"], W3, 2.0, 6, attention_mask=torch.ones_like(ids)), ids)
    for b in range(len(PADDED)):
        want = _reference_tilted_logp(world, tok(PADDED[b])["input_ids"], W3, 2.0, 6).detach()
        fin = torch.isfinite(want)
        torch.testing.assert_close(right[b][fin], want[fin], rtol=0, atol=2e-5)
        gap = float((wrong[b][fin] - want[fin]).abs().max())
        if enc["attention_mask"][b].all():
            assert gap < 2e-5
        else:
            assert gap > 0.05, f"row {b}: padding read as text changed log-probs by only {gap}"


def test_padded_sampling_chi_squared(world):
    """Sampling level: HF draws the first token of a padded prompt (a short prompt next to a long one,
    1200 return sequences each) from the unpadded prompt's MAVIS distribution (chi-squared), and the
    same counts reject the distribution that reads the padding as text (the test has power)."""
    from scipy.stats import chisquare

    tok, base = world["tok"], world["base"]
    prompts = ["w1 w2 w3 w4 w5 w6 w8", "w7 w3"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    N, K = 1200, 6
    proc = MavisLogitsProcessor(world["ens"], W3, 2.0, K, attention_mask=enc["attention_mask"])
    torch.manual_seed(1234)
    seqs = base.generate(**enc, do_sample=True, top_k=0, max_new_tokens=1, num_return_sequences=N,
                         logits_processor=[proc], pad_token_id=tok.pad_token_id)
    T = enc["input_ids"].shape[1]
    short = seqs[N:, T]  # rows of the second (padded) prompt
    counts = torch.bincount(short, minlength=world["V"]).double()
    with torch.no_grad():
        want = _reference_tilted_logp(world, tok(prompts[1])["input_ids"], W3, 2.0, K).exp().double()
    assert counts[want == 0].sum() == 0, "sampled a token outside the top-k"
    sup = want > 0
    p = chisquare(counts[sup].numpy(), (want[sup] / want[sup].sum() * N).numpy()).pvalue
    assert p > 1e-3, p
    # the distribution with the padding read as text, on the same support
    ids = enc["input_ids"][1:2]
    with torch.no_grad():
        wrong = _first_step_logp(world, MavisLogitsProcessor(world["ens"], W3, 2.0, K,
                                                             attention_mask=torch.ones_like(ids)), ids)[0].exp().double()
    assert torch.equal(wrong > 0, sup)
    p_wrong = chisquare(counts[sup].numpy(), (wrong[sup] / wrong[sup].sum() * N).numpy()).pvalue
    assert p_wrong < 1e-6, p_wrong


def test_mask_is_checked_against_the_batch_it_is_applied_to(world):
    tok, base = world["tok"], world["base"]
    enc = tok(PADDED, return_tensors="pt", padding=True)
    kw = dict(do_sample=True, top_k=0, max_new_tokens=2, pad_token_id=tok.pad_token_id)
    # a mask of another batch (other length): an error, never a silent all-ones mask
    other = tok(["w1 w2", "w3"], return_tensors="pt", padding=True)
    proc = MavisLogitsProcessor(world["ens"], W3, 2.0, 6, attention_mask=other["attention_mask"])
    with pytest.raises(ValueError, match="attention_mask: shape"):
        base.generate(**enc, logits_processor=[proc], **kw)
    # right padding
    proc = MavisLogitsProcessor(world["ens"], W3, 2.0, 6, attention_mask=enc["attention_mask"].flip(1))
    with pytest.raises(ValueError, match="left-padded"):
        proc(enc["input_ids"].flip(1), torch.zeros(3, world["V"]))
    # the mask marks a real token as padding: it belongs to another batch of the same shape
    stale = enc["attention_mask"].clone()
    stale[0, 0] = 0
    proc = MavisLogitsProcessor(world["ens"], W3, 2.0, 6, attention_mask=stale, tokenizer=tok)
    with pytest.raises(ValueError, match="another batch"):
        base.generate(**enc, logits_processor=[proc], **kw)
    # bound to the first prompts it was used with; set_attention_mask rebinds
    a = tok(["w1 w2 w3", "w4"], return_tensors="pt", padding=True)
    b = tok(["w5 w6 w7", "w8"], return_tensors="pt", padding=True)
    proc = MavisLogitsProcessor(world["ens"], W3, 2.0, 6, attention_mask=a["attention_mask"])
    base.generate(**a, logits_processor=[proc], **kw)
    base.generate(**a, logits_processor=[proc], **kw)  # the same prompts again: fine
    with pytest.raises(ValueError, match="earlier generate"):
        base.generate(**b, logits_processor=[proc], **kw)
    proc.set_attention_mask(b["attention_mask"])
    base.generate(**b, logits_processor=[proc], **kw)
    # a batch that is not num_return_sequences copies of the mask's rows
    proc = MavisLogitsProcessor(world["ens"], W3, 2.0, 6, attention_mask=a["attention_mask"][:1])
    with pytest.raises(ValueError, match="copies"):
        proc(a["input_ids"], torch.zeros(2, world["V"]))


def test_inferred_padding_refuses_ambiguity(world):
    V = world["V"]
    enc = world["tok"](PADDED, return_tensors="pt", padding=True)
    ids, scores = enc["input_ids"], torch.randn(3, V)
    # pad id == eos (tok.pad_token = tok.eos_token, the usual Llama setup): a leading eos may be text
    tok_eos = tiny.word_tokenizer(WORDS)
    tok_eos.pad_token = tok_eos.eos_token
    ids_eos = tok_eos(PADDED, return_tensors="pt", padding=True)["input_ids"]
    proc = MavisLogitsProcessor(world["ens"], W3, 2.0, 6, tokenizer=tok_eos)
    with pytest.raises(ValueError, match="ambiguous.*attention_mask"):
        proc(ids_eos, scores)
    same_len = tok_eos(["w1 w2", "w3 w4", "w5 w6"], return_tensors="pt")["input_ids"]
    assert proc(same_len, scores).shape == (3, V)  # nothing padded: nothing to infer
    # the pad id inside a prompt
    inside = torch.tensor([[0, 0, 5, 6], [7, 0, 8, 9], [0, 10, 11, 12]])
    proc = MavisLogitsProcessor(world["ens"], W3, 2.0, 6, pad_token_id=0)
    with pytest.raises(ValueError, match="occurs inside a prompt"):
        proc(inside, scores)
    # no pad id known anywhere, different prompts
    proc = MavisLogitsProcessor(world["ens"], W3, 2.0, 6)
    with pytest.raises(ValueError, match="padding is unknown"):
        proc(ids, scores)
    one = ids[:1].repeat(3, 1)  # one unpadded prompt, repeated (num_return_sequences): fine
    assert proc(one, scores).shape == (3, V)


def test_weights_are_required(world):
    with pytest.raises(ValueError, match="weights: required"):
        MavisLogitsProcessor(world["ens"], None, 2.0, 6)
    enc = world["tok"](PADDED, return_tensors="pt", padding=True)
    proc = MavisLogitsProcessor(world["ens"], [W3, W3], 2.0, 6, attention_mask=enc["attention_mask"])
    with pytest.raises(ValueError, match="weights: 2 rows"):
        proc(enc["input_ids"], torch.randn(3, world["V"]))
