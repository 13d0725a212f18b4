"""Guided decoding engine (mavis_ext.decoding) against slow from-scratch references and HF generate.

Tiny models (2 layers, hidden 16-32, ~44-token vocabulary) are built with mavis_ext.tiny, saved
and loaded back by path. Everything runs in fp32 on CPU unless a test says otherwise.
"""

from __future__ import annotations

import math

import pytest
import torch

from mavis_ext import ops, tiny
from mavis_ext._value_scoring import TrunkScorer
from mavis_ext.decoding import MavisGenerator, step_seeds
from mavis_ext.values import ValueEnsemble, ValueModel, load_value_models, positions_from_mask

WORDS = tiny.default_words(40)
PROMPTS = ["w1 w2 w3 w4 w5", "w7", "w9 w10 w11", "w20 w21 w22 w23 w24 w25 w26"]


def _randomize_heads(vm: ValueModel, seed: int, std: float = 1.0) -> ValueModel:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        vm.head_weight.copy_(torch.randn(vm.head_weight.shape, generator=g) * std)
        vm.head_bias.copy_(torch.randn(vm.head_bias.shape, generator=g))
    return vm


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Base model + value models of several kinds, each saved and loaded back by path."""
    root = tmp_path_factory.mktemp("decoding")
    tok = tiny.word_tokenizer(WORDS)
    V = len(tok)
    base_path = tiny.save_local(tiny.tiny_llama(V, seed=1, tokenizer=tok), tok, str(root / "base"))
    llama_trunk = tiny.save_local(tiny.tiny_llama(V, hidden_size=16, seed=2, tokenizer=tok), tok, str(root / "vt_llama"))
    gpt2_trunk = tiny.save_local(tiny.tiny_gpt2(V, hidden_size=16, seed=3, tokenizer=tok), tok, str(root / "vt_gpt2"))
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(4)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
                                        bos_token_id=1, eos_token_id=2)).eval()
    qwen_trunk = tiny.save_local(qwen, tok, str(root / "vt_qwen2"))
    base = AutoModelForCausalLM.from_pretrained(base_path).eval()
    out = {"tok": tok, "base": base, "V": V}
    specs = {
        "prefix_llama": (llama_trunk, ["help", "harm"], "prefix"),
        "prefix_gpt2": (gpt2_trunk, ["humor"], "prefix"),
        "prefix_qwen2": (qwen_trunk, ["brief"], "prefix"),
        "qhead_llama": (llama_trunk, ["q1", "q2"], "qhead"),
        "qhead_gpt2": (gpt2_trunk, ["q3"], "qhead"),
    }
    for i, (name, (trunk, objs, mode)) in enumerate(specs.items()):
        vm = _randomize_heads(ValueModel.from_trunk(trunk, objs, mode), 10 + i)
        vm.save_pretrained(str(root / name))
        out[name] = load_value_models(str(root / name), base_tokenizer=tok).eval()
    return out


# ----------------------------------------------------------------------------- slow references
def _real(ids_row, mask_row):
    return ids_row[mask_row.bool()].tolist()


def _reference_decode(world, vms, prompts, weights, beta, top_k, max_new, row_seeds, temperature=1.0, top_p=1.0,
                      normalize=False):
    """Recomputes everything from scratch each step, one row at a time, no cache, no padding."""
    tok, base = world["tok"], world["base"]
    members = [] if vms is None else (list(vms.models) if isinstance(vms, ValueEnsemble) else [vms])
    enc = tok(prompts, return_tensors="pt", padding=True)
    w = torch.as_tensor(weights, dtype=torch.float32) if weights is not None else None
    eos = tok.eos_token_id
    results = []
    for b in range(len(prompts)):
        seq = _real(enc["input_ids"][b], enc["attention_mask"][b])
        new = []
        wb = None if w is None else (w[b] if w.dim() == 2 else w)
        for t in range(max_new):
            x = torch.tensor([seq])
            logits = base(x).logits[:, -1]
            cl, ci, lse = ops.topk_candidates(logits, top_k, temperature=temperature)
            seeds = step_seeds(row_seeds[b : b + 1], t)
            if members and wb is not None and beta != 0:
                comb = torch.zeros(1, top_k)
                o = 0
                for vm in members:
                    if vm.mode == "prefix":
                        cands = torch.tensor([seq + [int(c)] for c in ci[0]])
                        h = vm.backbone_forward(cands, use_cache=False)[:, -1]  # [K, d]
                        vals = vm.heads(h[None])  # [1, m, K]
                    else:
                        h = vm.backbone_forward(x, use_cache=False)[:, -1]  # [1, d]
                        vals = vm.heads(h, candidate_ids=ci)
                    comb = comb + (wb[o : o + vm.m].view(1, -1, 1) * vals).sum(1)
                    o += vm.m
                if normalize:
                    comb = (comb - comb.min()) / (comb.max() - comb.min() + 1e-6)
                col = ops.tilted_sample(cl, comb[:, None], torch.ones(1), beta=beta, top_p=top_p, seed=seeds)
            else:
                col = ops.tilted_sample(cl, top_p=top_p, seed=seeds)
            a = int(ci[0, int(col)])
            new.append(a)
            seq.append(a)
            if a == eos:
                break
        results.append(new)
    return results


def _engine_rows(out):
    return [out.sequences[b, : int(out.lengths[b])].tolist() for b in range(out.sequences.shape[0])]


# ----------------------------------------------------------------------------- tree-mask scoring
@pytest.mark.parametrize("name", ["prefix_llama", "prefix_gpt2", "prefix_qwen2"])
def test_tree_mask_scoring_equals_separate_sequences(world, name):
    """One tree-masked pass over K candidates == scoring each prefix+candidate sequence alone,
    with left padding in the batch, for Llama and GPT-2 trunks; and committing the chosen candidate
    leaves the cache exactly as if the token had been appended normally."""
    vm, tok = world[name], world["tok"]
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    B, K = ids.shape[0], 7
    sc = TrunkScorer(vm)
    sc.start(ids, mask, positions_from_mask(mask))
    g = torch.Generator().manual_seed(5)
    cand = torch.randint(4, world["V"], (B, K), generator=g)
    next_pos = mask.sum(1)
    got = sc.values(cand, next_pos, mask)  # [B, m, K]
    for b in range(B):
        seq = _real(ids[b], mask[b])
        h = vm.backbone_forward(torch.tensor([seq + [int(c)] for c in cand[b]]), use_cache=False)[:, -1]
        want = vm.heads(h[None])[0]
        torch.testing.assert_close(got[b], want, rtol=1e-4, atol=1e-4)
    # commit a random candidate per row, then score again: must equal scoring the longer sequences
    col = torch.randint(0, K, (B,), generator=g)
    chosen = cand.gather(1, col[:, None])[:, 0]
    mask2 = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], 1)
    sc.advance(chosen, col, next_pos, mask2)
    assert sc.cache.get_seq_length() == ids.shape[1] + 1
    cand2 = torch.randint(4, world["V"], (B, K), generator=g)
    got2 = sc.values(cand2, next_pos + 1, mask2)
    for b in range(B):
        seq = _real(ids[b], mask[b]) + [int(chosen[b])]
        h = vm.backbone_forward(torch.tensor([seq + [int(c)] for c in cand2[b]]), use_cache=False)[:, -1]
        torch.testing.assert_close(got2[b], vm.heads(h[None])[0], rtol=1e-4, atol=1e-4)


def test_copies_scoring_equals_tree_scoring(world):
    vm = world["prefix_llama"]
    gen_tree = MavisGenerator(world["base"], vm, world["tok"])
    gen_copies = MavisGenerator(world["base"], vm, world["tok"], prefix_scoring="copies")
    kw = dict(weights=[0.8, -0.5], beta=3.0, top_k=6, max_new_tokens=10, seed=11)
    a, b = gen_tree.generate(PROMPTS, **kw), gen_copies.generate(PROMPTS, **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.logp, b.logp, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- vs slow reference decoder
@pytest.mark.parametrize(
    "names,weights,normalize",
    [
        (["prefix_llama"], [[1.0, -0.5], [0.2, 0.9], [-1.0, 0.0], [0.5, 0.5]], False),
        (["prefix_gpt2"], [1.5], False),
        (["qhead_llama"], [0.7, -0.6], False),
        (["qhead_gpt2", "prefix_llama"], [1.0, 0.3, -0.8], False),
        (["prefix_llama", "qhead_gpt2"], [0.6, 0.2, 1.0], True),
    ],
)
def test_engine_matches_from_scratch_reference(world, names, weights, normalize):
    """Same seed -> same tokens as a decoder that recomputes everything from scratch each step (so
    caches, tree masks, cache trimming, padding and per-row weights are all exact), and logp/logp_ref
    are right."""
    vms = world[names[0]] if len(names) == 1 else ValueEnsemble([world[n] for n in names])
    gen = MavisGenerator(world["base"], vms, world["tok"])
    beta = 8.0 if normalize else 2.0
    out = gen.generate(PROMPTS, weights=weights, beta=beta, top_k=6, max_new_tokens=12, seed=123,
                       normalize_values=normalize)
    ref = _reference_decode(world, vms, PROMPTS, weights, beta, 6, 12, out.row_seeds, normalize=normalize)
    assert _engine_rows(out) == ref
    # logp_ref is the full-vocabulary log-softmax of the base model at each generated token
    tok = world["tok"]
    for b in range(len(PROMPTS)):
        seq = tok(PROMPTS[b])["input_ids"] + ref[b]
        lp = torch.log_softmax(world["base"](torch.tensor([seq])).logits[0].float(), -1)
        n0 = len(seq) - len(ref[b])
        want = torch.stack([lp[n0 - 1 + i, a] for i, a in enumerate(ref[b])])
        torch.testing.assert_close(out.logp_ref[b, : len(ref[b])], want, rtol=1e-4, atol=1e-4)
    assert torch.all(out.logp <= 1e-6)
    torch.testing.assert_close(out.kl, (out.logp - out.logp_ref).sum(1))


@pytest.mark.parametrize("name", ["qhead_llama", "prefix_llama"])
def test_temperature_and_top_p_match_reference(world, name):
    """qhead_llama alone takes the fused guided_sample path, prefix_llama the unfused one; both must
    follow the from-scratch reference with temperature and nucleus filtering on."""
    vm = world[name]
    W = [[0.5, 0.5], [1.0, -1.0], [0.0, 2.0], [-0.3, 0.1]]
    out = MavisGenerator(world["base"], vm, world["tok"]).generate(
        PROMPTS, weights=W, beta=2.5, top_k=7, max_new_tokens=10, seed=7, temperature=0.8, top_p=0.9)
    ref = _reference_decode(world, vm, PROMPTS, W, 2.5, 7, 10, out.row_seeds, temperature=0.8, top_p=0.9)
    assert _engine_rows(out) == ref


def test_members_with_zero_weight_are_not_run(world, monkeypatch):
    ens = ValueEnsemble([world["prefix_llama"], world["qhead_gpt2"]])
    gen = MavisGenerator(world["base"], ens, world["tok"])
    kw = dict(beta=2.0, top_k=6, max_new_tokens=6, seed=1)
    want = MavisGenerator(world["base"], world["prefix_llama"], world["tok"]).generate(
        PROMPTS, weights=[0.7, -0.2], **kw)

    def boom(*a, **k):
        raise AssertionError("a value model with zero weight in every row was run")

    monkeypatch.setattr(world["qhead_gpt2"], "backbone_forward", boom)
    got = gen.generate(PROMPTS, weights=[0.7, -0.2, 0.0], **kw)
    assert torch.equal(got.sequences, want.sequences)
    with pytest.raises(AssertionError, match="zero weight"):
        gen.generate(PROMPTS, weights=[[0.7, -0.2, 0.0]] * 3 + [[0.7, -0.2, 0.1]], **kw)


# ----------------------------------------------------------------------------- batching and seeds
@pytest.mark.parametrize("name", ["prefix_llama", "qhead_llama"])
def test_batch_rows_equal_single_row_runs(world, name):
    vm = world[name]
    gen = MavisGenerator(world["base"], vm, world["tok"])
    W = [[1.0, -0.5], [0.2, 0.9], [-1.0, 0.0], [0.5, 0.5]]
    out = gen.generate(PROMPTS, weights=W, beta=2.0, top_k=8, max_new_tokens=10, seed=99)
    for b in range(len(PROMPTS)):
        one = gen.generate([PROMPTS[b]], weights=W[b], beta=2.0, top_k=8, max_new_tokens=10,
                           seed=[int(out.row_seeds[b])])
        assert one.sequences[0, : int(one.lengths[0])].tolist() == out.sequences[b, : int(out.lengths[b])].tolist()
        torch.testing.assert_close(one.logp[0, : int(one.lengths[0])], out.logp[b, : int(out.lengths[b])],
                                   rtol=1e-4, atol=1e-4)
    again = gen.generate(PROMPTS, weights=W, beta=2.0, top_k=8, max_new_tokens=10, seed=99)
    assert torch.equal(again.sequences, out.sequences)
    other = gen.generate(PROMPTS, weights=W, beta=2.0, top_k=8, max_new_tokens=10, seed=100)
    assert not torch.equal(other.sequences, out.sequences)


def test_tokenizer_without_pad_token(world):
    tok = tiny.word_tokenizer(WORDS)
    tok.pad_token = None
    assert tok.pad_token_id is None
    kw = dict(weights=[0.5, 0.5], beta=2.0, top_k=6, max_new_tokens=5, seed=8)
    a = MavisGenerator(world["base"], world["prefix_llama"], tok).generate(PROMPTS, **kw)
    b = MavisGenerator(world["base"], world["prefix_llama"], world["tok"]).generate(PROMPTS, **kw)
    assert torch.equal(a.sequences, b.sequences) and a.texts == b.texts


def test_identical_prompts_get_different_samples(world):
    gen = MavisGenerator(world["base"], None, world["tok"])
    out = gen.generate([PROMPTS[0]] * 6, top_k=20, max_new_tokens=6, seed=0, stop_at_eos=False)
    assert len({tuple(r) for r in out.sequences.tolist()}) > 1


def test_per_row_budgets_and_eos(world):
    gen = MavisGenerator(world["base"], world["prefix_llama"], world["tok"])
    budgets = torch.tensor([3, 0, 7, 1])
    out = gen.generate(PROMPTS, weights=[1.0, 1.0], beta=1.0, top_k=5, max_new_tokens=99,
                       max_new_tokens_per_row=budgets, seed=4, stop_at_eos=False)
    assert out.lengths.tolist() == budgets.tolist()
    assert out.sequences.shape[1] == 7
    pad = world["tok"].pad_token_id
    for b in range(4):
        assert (out.sequences[b, budgets[b]:] == pad).all()
        assert (out.logp[b, budgets[b]:] == 0).all() and (out.logp_ref[b, budgets[b]:] == 0).all()
    assert not out.finished.any()
    # EOS per row: declare the token each row drew at step 2 to be EOS -> every row stops right there
    free = gen.generate(PROMPTS, weights=[1.0, 1.0], beta=1.0, top_k=5, max_new_tokens=6, seed=4, stop_at_eos=False)
    eos_ids = sorted(set(free.sequences[:, 2].tolist()))
    out = gen.generate(PROMPTS, weights=[1.0, 1.0], beta=1.0, top_k=5, max_new_tokens=6, seed=4, eos_token_id=eos_ids)
    for b in range(4):
        row = free.sequences[b].tolist()
        stop = min(i for i, a in enumerate(row) if a in eos_ids)
        assert out.lengths[b] == stop + 1 and bool(out.finished[b])
        assert out.sequences[b, : stop + 1].tolist() == row[: stop + 1]
        assert (out.sequences[b, stop + 1 :] == pad).all() and (out.logp[b, stop + 1 :] == 0).all()
    banned = gen.generate(PROMPTS, weights=[1.0, 1.0], top_k=5, max_new_tokens=1, seed=4, ban_eos_first=True,
                          eos_token_id=eos_ids)
    assert not set(banned.sequences[:, 0].tolist()) & set(eos_ids)


# ----------------------------------------------------------------------------- beta = 0 / plain sampling
def test_beta_zero_and_zero_weights_equal_plain_sampling(world):
    plain = MavisGenerator(world["base"], None, world["tok"]).generate(PROMPTS, top_k=9, max_new_tokens=10, seed=5)
    gen = MavisGenerator(world["base"], ValueEnsemble([world["prefix_llama"], world["qhead_gpt2"]]), world["tok"])
    b0 = gen.generate(PROMPTS, weights=[1.0, 2.0, 3.0], beta=0.0, top_k=9, max_new_tokens=10, seed=5)
    w0 = gen.generate(PROMPTS, weights=[0.0, 0.0, 0.0], beta=4.0, top_k=9, max_new_tokens=10, seed=5)
    for o in (b0, w0):
        assert torch.equal(o.sequences, plain.sequences)
        torch.testing.assert_close(o.logp, plain.logp)
    # and a tilt that is not zero changes the samples
    tilted = gen.generate(PROMPTS, weights=[1.0, 2.0, 3.0], beta=5.0, top_k=9, max_new_tokens=10, seed=5)
    assert not torch.equal(tilted.sequences, plain.sequences)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.85)])
def test_plain_sampling_matches_hf_generate_distribution(world, temperature, top_p):
    """beta = 0 samples what model.generate(do_sample=True, top_k=K, temperature, top_p) samples:
    per-step log-probs equal HF's processed scores exactly, and the empirical first-token
    distribution over 3000 rows passes a chi-squared test against HF's probabilities."""
    from scipy.stats import chisquare

    base, tok, K = world["base"], world["tok"], 6
    prompt = PROMPTS[2]
    enc = tok([prompt], return_tensors="pt")
    hf = base.generate(**enc, do_sample=True, top_k=K, temperature=temperature, top_p=top_p, max_new_tokens=4,
                       min_new_tokens=4, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
    hf_logp = [torch.log_softmax(s[0].float(), -1) for s in hf.scores]
    hf_new = hf.sequences[0, enc["input_ids"].shape[1]:].tolist()
    gen = MavisGenerator(base, None, tok)
    # the engine's log pi for HF's own sampled sequence: decode it with the engine forced via prompts
    for i, a in enumerate(hf_new):
        prefix_ids = torch.cat([enc["input_ids"], torch.tensor([hf_new[:i]], dtype=torch.int64)], 1)
        # find an engine seed whose first token is a (the distribution, not the noise, is compared)
        out = gen.generate(input_ids=prefix_ids.repeat(64, 1), top_k=K, temperature=temperature, top_p=top_p,
                           max_new_tokens=1, seed=i, stop_at_eos=False)
        for b in range(64):
            tokb = int(out.sequences[b, 0])
            assert math.isfinite(float(hf_logp[i][tokb]))
            assert abs(float(out.logp[b, 0]) - float(hf_logp[i][tokb])) < 1e-4
    # chi-squared on the first token
    N = 3000
    out = gen.generate(input_ids=enc["input_ids"].repeat(N, 1), top_k=K, temperature=temperature, top_p=top_p,
                       max_new_tokens=1, seed=2024, stop_at_eos=False)
    p = hf_logp[0].exp()
    support = (p > 0).nonzero().flatten()
    counts = torch.bincount(out.sequences[:, 0], minlength=p.numel())
    assert counts[p == 0].sum() == 0, "engine sampled a token outside HF's top-k/top-p set"
    expected = p[support].double() / p[support].double().sum() * N
    stat = chisquare(counts[support].double().numpy(), expected.numpy())
    assert stat.pvalue > 1e-3, stat


# ----------------------------------------------------------------------------- precision
def test_bf16_runs_and_tree_scoring_close(world, tmp_path):
    tok = world["tok"]
    base = tiny.tiny_llama(world["V"], seed=1, tokenizer=tok).to(torch.bfloat16)
    vm = _randomize_heads(ValueModel.from_trunk(tiny.tiny_llama(world["V"], hidden_size=16, seed=2), ["a"], "prefix"), 3)
    vm = vm.to(torch.bfloat16)
    gen = MavisGenerator(base, vm, tok)
    out = gen.generate(PROMPTS, weights=[1.0], beta=1.0, top_k=5, max_new_tokens=6, seed=0)
    assert out.sequences.dtype == torch.int64 and torch.isfinite(out.logp).all() and torch.isfinite(out.kl).all()
    # tree scoring within bf16 tolerance of separate sequences
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    sc = TrunkScorer(vm)
    sc.start(enc["input_ids"], enc["attention_mask"], positions_from_mask(enc["attention_mask"]))
    cand = torch.randint(4, world["V"], (4, 5), generator=torch.Generator().manual_seed(0))
    got = sc.values(cand, enc["attention_mask"].sum(1), enc["attention_mask"])
    for b in range(4):
        seq = _real(enc["input_ids"][b], enc["attention_mask"][b])
        h = vm.backbone_forward(torch.tensor([seq + [int(c)] for c in cand[b]]), use_cache=False)[:, -1]
        torch.testing.assert_close(got[b], vm.heads(h[None])[0], rtol=0.05, atol=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(world):
    vm = world["prefix_llama"]
    kw = dict(weights=[1.0, -0.5], beta=2.0, top_k=6, max_new_tokens=8, seed=3)
    cpu = MavisGenerator(world["base"], vm, world["tok"]).generate(PROMPTS, **kw)
    import copy

    gpu = MavisGenerator(copy.deepcopy(world["base"]).cuda(), copy.deepcopy(vm).cuda(), world["tok"]).generate(PROMPTS, **kw)
    agree = (gpu.sequences.cpu() == cpu.sequences).float().mean()
    assert agree > 0.9


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_argument(world):
    tok = world["tok"]
    gen = MavisGenerator(world["base"], world["prefix_llama"], tok)
    with pytest.raises(ValueError, match="weights"):
        gen.generate(PROMPTS, weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="weights"):
        gen.generate(PROMPTS, weights=[[1.0, 2.0]] * 3)
    with pytest.raises(ValueError, match="weights"):
        gen.generate(PROMPTS, weights=[float("nan"), 1.0])
    with pytest.raises(ValueError, match="weights"):
        gen.generate(PROMPTS, weights={"nope": 1.0})
    with pytest.raises(ValueError, match="beta"):
        gen.generate(PROMPTS, weights=[1.0, 1.0], beta=-0.1)
    with pytest.raises(ValueError, match="prompts"):
        gen.generate(["w1", ""], weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="prompts"):
        gen.generate([], weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="input_ids"):
        gen.generate(input_ids=torch.zeros(2, 0, dtype=torch.int64))
    with pytest.raises(ValueError, match="attention_mask"):
        gen.generate(input_ids=torch.ones(2, 3, dtype=torch.int64), attention_mask=torch.tensor([[1, 1, 1], [0, 0, 0]]))
    with pytest.raises(ValueError, match="top_k"):
        gen.generate(PROMPTS, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        gen.generate(PROMPTS, top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        gen.generate(PROMPTS, temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens_per_row"):
        gen.generate(PROMPTS, weights=[1.0, 1.0], max_new_tokens_per_row=[1, 2])
    # with value models the weights are required: no silent unguided or uniform default
    for beta in (2.0, 0.0):
        with pytest.raises(ValueError, match=r"weights: required with value models.*\['help', 'harm'\]"):
            gen.generate(PROMPTS, beta=beta, max_new_tokens=2)
    # no value models: weights are ignored (plain sampling), so rollout code may pass them unconditionally
    plain = MavisGenerator(world["base"], None, tok)
    assert torch.equal(plain.generate(PROMPTS, weights=[1.0], max_new_tokens=3).sequences,
                       plain.generate(PROMPTS, max_new_tokens=3).sequences)


def test_mismatched_vocabulary_is_rejected(world, tmp_path):
    tok = world["tok"]
    # a value model on a smaller vocabulary than the base model
    small = ValueModel.from_trunk(tiny.tiny_llama(20, hidden_size=16), ["a"], "prefix")
    with pytest.raises(ValueError, match="value_models.*vocabulary"):
        MavisGenerator(world["base"], small, tok)
    # same size, different token -> id map
    other_tok = tiny.word_tokenizer([f"x{i}" for i in range(40)])
    vm = ValueModel.from_trunk(tiny.tiny_llama(world["V"], hidden_size=16), ["a"], "qhead", tokenizer=other_tok)
    with pytest.raises(ValueError, match="value_models: vocabulary does not match"):
        MavisGenerator(world["base"], vm, tok)
