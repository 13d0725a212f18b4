"""tilted_sample and guided_sample against the reference with the same seed: identical tokens (the
noise is the same counter-based Philox), matching logp_tilted / logp_base, over a grid of shapes,
dtypes, top_k / top_p / topk_on, candidate_ids, strided inputs; guided_sample also against the
composition topk_candidates -> value_heads -> tilted_sample."""

import itertools

import pytest
import torch

import mavis_ext
from mavis_ext import reference
from conftest import FLOAT_DTYPES, assert_tokens_match, gen, non_contiguous, randn, seed_pair

# Where two tilted scores tie within rounding the kernels may legitimately pick the other one, and
# nucleus boundaries are computed from exp() that differs in the last bits. Measured on the CPU
# kernels over this file's grid: 0 mismatches; the allowance covers other backends and libms.
MAX_MISMATCH = 0.002


def _ref_sample(logits, values, w, beta, T, top_k, top_p, tilted, cand, seed):
    s, o = seed_pair(seed)
    return reference.tilted_sample(
        logits.cpu(), None if values is None else values.cpu(), None if w is None else w.cpu(), beta, T, top_k,
        top_p, tilted, None if cand is None else cand.cpu(), s, o,
    )


def _compare(got, want, device):
    ids, lt, lb = got
    rid, rlt, rlb = want
    assert ids.dtype == torch.int64 and lt.dtype == torch.float32 and lb.dtype == torch.float32
    assert_tokens_match(ids, rid, MAX_MISMATCH)
    same = ids.cpu() == rid
    torch.testing.assert_close(lt.cpu()[same], rlt[same], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lb.cpu()[same], rlb[same], rtol=1e-4, atol=1e-4)


GRID = list(itertools.product(
    [(4, 10), (16, 1000), (8, 32000)],  # (B, N)
    [0, 1, 5, 40],  # top_k (clipped to N)
    [1.0, 0.8],  # top_p
    ["base", "tilted"],
))


@pytest.mark.parametrize("shape,top_k,top_p,topk_on", GRID)
def test_matches_reference_fp32(device, shape, top_k, top_p, topk_on):
    B, N = shape
    top_k = min(top_k, N)
    s = B * N + top_k
    logits = randn((B, N), seed=s, scale=2.5, device=device)
    values = randn((B, 3, N), seed=s + 1, device=device)
    w = torch.rand(B, 3, generator=gen(s + 2)).to(device)
    got = mavis_ext.tilted_sample(logits, values, w, beta=1.5, temperature=0.9, top_k=top_k, top_p=top_p,
                                  topk_on=topk_on, seed=1234 + s, return_logprobs=True)
    want = _ref_sample(logits, values, w, 1.5, 0.9, top_k, top_p, topk_on == "tilted", None, 1234 + s)
    _compare(got, want, device)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("top_k,top_p,topk_on", [(0, 1.0, "base"), (20, 0.9, "base"), (20, 1.0, "tilted"),
                                                 (0, 0.5, "base")])
def test_matches_reference_dtypes(device, dtype, top_k, top_p, topk_on):
    B, N = 12, 3000
    logits = randn((B, N), seed=21, scale=3.0, dtype=dtype, device=device)
    values = randn((B, 2, N), seed=22, dtype=dtype, device=device)
    w = torch.tensor([0.7, 0.3], device=device)
    got = mavis_ext.tilted_sample(logits, values, w, beta=2.0, top_k=top_k, top_p=top_p, topk_on=topk_on,
                                  seed=torch.arange(B, device=device) * 7, return_logprobs=True)
    want = _ref_sample(logits, values, w, 2.0, 1.0, top_k, top_p, topk_on == "tilted", None,
                       torch.arange(B) * 7)
    _compare(got, want, device)


@pytest.mark.parametrize("top_k", [0, 8])
def test_no_values_and_candidate_ids(device, top_k):
    B, N = 6, 50
    logits = randn((B, N), seed=31, scale=2.0, device=device)
    cand = torch.randint(0, 100000, (B, N), generator=gen(32)).to(device)
    got = mavis_ext.tilted_sample(logits, top_k=top_k, candidate_ids=cand, seed=5, return_logprobs=True)
    want = _ref_sample(logits, None, None, 1.0, 1.0, top_k, 1.0, False, cand, 5)
    _compare(got, want, device)
    assert set(got[0].tolist()) <= set(cand.flatten().tolist())


def test_non_contiguous_inputs(device):
    B, N = 5, 2001
    logits = non_contiguous(randn((B, N), seed=41, scale=2.0, device=device))
    values = non_contiguous(randn((B, 3, N), seed=42, device=device))
    w = torch.tensor([1.0, -0.5, 0.25], device=device)
    for top_k, topk_on in [(0, "base"), (30, "base"), (30, "tilted")]:
        got = mavis_ext.tilted_sample(logits, values, w, beta=0.8, top_k=top_k, topk_on=topk_on, seed=9,
                                      return_logprobs=True)
        want = _ref_sample(logits, values, w, 0.8, 1.0, top_k, 1.0, topk_on == "tilted", None, 9)
        _compare(got, want, device)


def test_neg_inf_columns_are_never_drawn(device):
    B, N = 64, 300
    logits = randn((B, N), seed=51, device=device)
    logits[:, 1::2] = float("-inf")  # banned columns, whatever the values say
    values = randn((B, 1, N), seed=52, scale=5.0, device=device)
    for top_k, top_p, topk_on in [(0, 1.0, "base"), (0, 0.7, "base"), (200, 1.0, "base"), (200, 1.0, "tilted")]:
        ids, lt, lb = mavis_ext.tilted_sample(logits, values, torch.ones(1, device=device), beta=3.0, top_k=top_k,
                                              top_p=top_p, topk_on=topk_on, seed=torch.arange(B, device=device),
                                              return_logprobs=True)
        assert (ids % 2 == 0).all()
        assert torch.isfinite(lt).all() and torch.isfinite(lb).all()
        want = _ref_sample(logits, values, torch.ones(1), 3.0, 1.0, top_k, top_p, topk_on == "tilted", None,
                           torch.arange(B))
        _compare((ids, lt, lb), want, device)


def test_fewer_finite_than_top_k(device):
    logits = randn((3, 100), seed=61, device=device)
    logits[:, 4:] = float("-inf")
    ids = mavis_ext.tilted_sample(logits, top_k=10, seed=torch.arange(3, device=device))
    assert (ids < 4).all()


def test_top_k_equal_n_and_one(device):
    logits = randn((8, 64), seed=71, device=device)
    values = randn((8, 2, 64), seed=72, device=device)
    w = torch.tensor([1.0, 1.0], device=device)
    a = mavis_ext.tilted_sample(logits, values, w, top_k=64, seed=3)
    b = mavis_ext.tilted_sample(logits, values, w, top_k=0, seed=3)
    assert torch.equal(a, b)  # top_k == N keeps everything, like top_k == 0
    one = mavis_ext.tilted_sample(logits, values, w, top_k=1, seed=3)
    assert torch.equal(one, logits.argmax(-1))  # base mode: the base argmax, whatever the values
    one_t = mavis_ext.tilted_sample(logits, values, w, top_k=1, topk_on="tilted", seed=3)
    assert torch.equal(one_t, mavis_ext.tilt_logits(logits, values, w, beta=1.0).argmax(-1))


# ----------------------------------------------------------------------------- guided_sample
def _guided_inputs(B, V, m, d, dtype, device, s):
    logits = randn((B, V), seed=s, scale=2.5, dtype=dtype, device=device)
    hidden = randn((B, d), seed=s + 1, dtype=dtype, device=device)
    W = randn((m, V, d), seed=s + 2, scale=d ** -0.5, dtype=dtype, device=device)
    b = randn((m, V), seed=s + 3, scale=0.3, dtype=dtype, device=device)
    w = torch.rand(B, m, generator=gen(s + 4)).to(device)
    return logits, hidden, W, b, w


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("B,V,m,d,K", [(1, 10, 1, 4, 3), (16, 2000, 3, 64, 40), (4, 32000, 2, 128, 7)])
@pytest.mark.parametrize("top_p", [1.0, 0.75])
def test_guided_matches_reference(device, dtype, B, V, m, d, K, top_p):
    s = B + V + d
    logits, hidden, W, b, w = _guided_inputs(B, V, m, d, dtype, device, s)
    got = mavis_ext.guided_sample(logits, hidden, W, b, w, beta=2.0, top_k=K, temperature=0.8, top_p=top_p,
                                  seed=99 + s, return_logprobs=True)
    so = seed_pair(99 + s)
    want = reference.guided_sample(logits.cpu(), hidden.cpu(), W.cpu(), b.cpu(), w.cpu(), 2.0, K, 0.8, top_p, *so)
    _compare(got, want, device)


def test_guided_equals_composition(device):
    B, V, m, d, K = 8, 1500, 3, 32, 20
    logits, hidden, W, b, w = _guided_inputs(B, V, m, d, torch.float32, device, 81)
    seeds = torch.arange(B, device=device) + 1000
    ids, lt, lb = mavis_ext.guided_sample(logits, hidden, W, b, w, beta=1.2, top_k=K, temperature=1.1, top_p=0.9,
                                          seed=seeds, return_logprobs=True)
    cl, ci, lse = mavis_ext.topk_candidates(logits, K, temperature=1.1)
    comb = mavis_ext.value_heads(hidden, W, b, candidate_ids=ci, weights=w)
    ids2, lt2, _ = mavis_ext.tilted_sample(cl, comb, None, beta=1.2, top_p=0.9, candidate_ids=ci, seed=seeds,
                                           return_logprobs=True)
    assert_tokens_match(ids, ids2, MAX_MISMATCH)
    same = ids == ids2
    torch.testing.assert_close(lt[same], lt2[same], rtol=1e-4, atol=1e-4)
    full = torch.log_softmax(logits.float() / 1.1, dim=-1).gather(-1, ids[:, None])[:, 0]
    torch.testing.assert_close(lb, full, rtol=1e-4, atol=1e-4)  # log pi_ref over the FULL vocabulary


def test_guided_no_bias_and_strided(device):
    B, V, m, d, K = 5, 900, 2, 24, 12
    logits, hidden, W, _, w = _guided_inputs(B, V, m, d, torch.float32, device, 91)
    logits, hidden, W = non_contiguous(logits), non_contiguous(hidden), non_contiguous(W)
    got = mavis_ext.guided_sample(logits, hidden, W, None, w[0], beta=1.0, top_k=K, seed=4, return_logprobs=True)
    want = reference.guided_sample(logits.cpu(), hidden.cpu(), W.cpu(), None, w[0].cpu(), 1.0, K, 1.0, 1.0,
                                   *seed_pair(4))
    _compare(got, want, device)


# ----------------------------------------------------------------------------- CPU vs CUDA
@pytest.mark.skipif(not (torch.cuda.is_available() and mavis_ext.has_cuda_kernels()),
                    reason="needs a GPU and the CUDA kernels")
@pytest.mark.parametrize("top_k,top_p,topk_on", [(0, 1.0, "base"), (40, 1.0, "base"), (40, 0.9, "tilted")])
def test_cpu_cuda_token_agreement(top_k, top_p, topk_on):
    B, N = 2048, 4000
    logits = randn((B, N), seed=101, scale=3.0)
    values = randn((B, 3, N), seed=102)
    w = torch.tensor([0.5, 0.3, 0.2])
    kw = dict(beta=1.0, top_k=top_k, top_p=top_p, topk_on=topk_on, seed=77)
    cpu = mavis_ext.tilted_sample(logits, values, w, **kw)
    gpu = mavis_ext.tilted_sample(logits.cuda(), values.cuda(), w.cuda(), **kw)
    assert_tokens_match(gpu, cpu, 0.001)
    h = randn((B, 64), seed=103)
    W = randn((3, N, 64), seed=104, scale=0.125)
    g_cpu = mavis_ext.guided_sample(logits, h, W, None, w, beta=1.0, top_k=40, seed=78)
    g_gpu = mavis_ext.guided_sample(logits.cuda(), h.cuda(), W.cuda(), None, w.cuda(), beta=1.0, top_k=40, seed=78)
    assert_tokens_match(g_gpu, g_cpu, 0.001)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_huge_scores_match_reference(device, top_p):
    """Scores so large that a float step exceeds the noise (|t| ~ 1e8-1e11): the Gumbel-max still
    compares t + noise in float64 with the lower-column tie rule, as the reference does."""
    B = 512
    base = torch.tensor([[134217728.0, 134217744.0, 134217728.0, 1.0e8]])  # 2^27, 2^27 + 1 float step
    logits = base.expand(B, 4).contiguous()
    logits[B // 2:] = base[:, [0, 2, 0, 3]]  # exact ties between two columns
    seeds = torch.arange(B) + 1151
    for T in (1.0, 1e-3):
        got = mavis_ext.tilted_sample(logits.to(device), temperature=T, top_p=top_p, seed=seeds.to(device),
                                      return_logprobs=True)
        want = _ref_sample(logits, None, None, 1.0, T, 0, top_p, False, None, seeds)
        assert torch.equal(got[0].cpu(), want[0])
    # a wide row of huge scores, full vocabulary, one shared seed
    wide = randn((8, 5000), seed=111, scale=1e7, device=device)
    got = mavis_ext.tilted_sample(wide, seed=5, temperature=1e-3)
    assert torch.equal(got.cpu(), _ref_sample(wide, None, None, 1.0, 1e-3, 0, 1.0, False, None, 5)[0])
