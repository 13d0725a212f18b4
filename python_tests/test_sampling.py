"""Statistical and reproducibility tests of the samplers.

Many draws cheaply: one row repeated B times with one seed per row (``seed=torch.arange(B)``), so
every copy draws independent noise. The empirical frequencies are compared with the exact
restricted tilted distribution (computed here in float64) by a chi-squared test. Inputs and seeds
are fixed, so the p-values are deterministic; the threshold only guards against a wrong
distribution, which gives p-values of ~0 at these sample sizes.
"""

import numpy as np
import pytest
import torch
from scipy import stats

import mavis_ext
from conftest import gen, randn

DRAWS = 20000
P_MIN = 1e-3


def exact_distribution(logits, values, w, beta, T, top_k, top_p, topk_on):
    """float64 p over the N columns of one row: tilt, top-k keep set, nucleus, renormalise."""
    base = logits.double() / T
    t = base + beta * (w.double()[:, None] * values.double()).sum(0) if values is not None else base
    N = base.numel()
    keep = torch.ones(N, dtype=torch.bool)
    if 0 < top_k < N:
        src = t if topk_on == "tilted" else base
        idx = torch.sort(src, descending=True, stable=True).indices[:top_k]
        keep = torch.zeros(N, dtype=torch.bool)
        keep[idx] = True
    p = torch.where(keep, torch.exp(t - t[keep].max()), torch.zeros_like(t))
    p = p / p.sum()
    if top_p < 1.0:
        order = torch.sort(torch.where(keep, t, torch.full_like(t, -np.inf)), descending=True, stable=True).indices
        before = torch.cumsum(p[order], 0) - p[order]
        nucleus = torch.zeros(N, dtype=torch.bool)
        nucleus[order[before < top_p]] = True
        keep = keep & nucleus
        p = torch.where(keep, p, torch.zeros_like(p))
        p = p / p.sum()
    return p, keep


def chi2_pvalue(tokens, p):
    counts = np.bincount(tokens.cpu().numpy(), minlength=p.numel()).astype(np.float64)
    support = p.numpy() > 0
    assert counts[~support].sum() == 0, "drew a column outside the keep set"
    exp = p.numpy()[support] * counts.sum()
    assert exp.min() >= 5, "test design: expected counts too small for chi-squared"
    return stats.chisquare(counts[support], exp).pvalue


def _row(N, m, seed, scale=1.0):
    return randn((N,), seed=seed, scale=scale), randn((m, N), seed=seed + 1, scale=0.7)


@pytest.mark.parametrize(
    "top_k,top_p,topk_on",
    [(0, 1.0, "base"), (5, 1.0, "base"), (5, 1.0, "tilted"), (0, 0.8, "base"), (6, 0.85, "base"),
     (6, 0.85, "tilted")],
)
def test_tilted_sample_distribution(device, top_k, top_p, topk_on):
    N, m = 10, 2
    logits, values = _row(N, m, seed=11)
    w = torch.tensor([0.6, 0.4])
    beta, T = 1.5, 0.9
    p, keep = exact_distribution(logits, values, w, beta, T, top_k, top_p, topk_on)
    L = logits.expand(DRAWS, N).to(device)
    Vv = values.expand(DRAWS, m, N).to(device)
    ids, lt, lb = mavis_ext.tilted_sample(L, Vv, w.to(device), beta=beta, temperature=T, top_k=top_k, top_p=top_p,
                                          topk_on=topk_on, seed=torch.arange(DRAWS, device=device),
                                          return_logprobs=True)
    assert chi2_pvalue(ids, p) > P_MIN
    # log-probabilities of the drawn tokens: exact restricted tilted / full base distributions
    ids_c = ids.cpu()
    torch.testing.assert_close(lt.cpu().double(), torch.log(p[ids_c]), rtol=1e-5, atol=1e-5)
    logp_base = torch.log_softmax(logits.double() / T, 0)
    torch.testing.assert_close(lb.cpu().double(), logp_base[ids_c], rtol=1e-5, atol=1e-5)


def test_topk_modes_give_different_keep_sets(device):
    """A row where the base top-3 and the tilted top-3 differ: each mode draws from its own set."""
    N = 8
    logits = torch.tensor([3.0, 2.9, 2.8, 0.0, -0.1, -0.2, -0.3, -0.4])
    values = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0, 4.0, -9.0, -9.0]])
    w = torch.ones(1)
    for mode, allowed in [("base", {0, 1, 2}), ("tilted", {3, 4, 5})]:
        p, keep = exact_distribution(logits, values, w, 1.0, 1.0, 3, 1.0, mode)
        assert set(torch.nonzero(keep).flatten().tolist()) == allowed
        ids = mavis_ext.tilted_sample(logits.expand(DRAWS, N).to(device), values.expand(DRAWS, 1, N).to(device),
                                      w.to(device), top_k=3, topk_on=mode, seed=torch.arange(DRAWS, device=device))
        assert set(ids.tolist()) == allowed
        assert chi2_pvalue(ids, p) > P_MIN


def test_full_vocab_distribution(device):
    N = 60
    logits = randn((N,), seed=21, scale=0.5)
    p, _ = exact_distribution(logits, None, None, 1.0, 1.0, 0, 1.0, "base")
    ids = mavis_ext.tilted_sample(logits.expand(DRAWS, N).to(device), seed=torch.arange(DRAWS, device=device))
    assert chi2_pvalue(ids, p) > P_MIN


def test_shared_seed_rows_are_independent(device):
    """One int seed for the batch: the row index is in the noise counter, so identical rows differ."""
    N = 10
    logits, values = _row(N, 1, seed=31)
    p, _ = exact_distribution(logits, values, torch.ones(1), 1.0, 1.0, 0, 1.0, "base")
    ids = mavis_ext.tilted_sample(logits.expand(DRAWS, N).to(device), values.expand(DRAWS, 1, N).to(device),
                                  torch.ones(1, device=device), seed=12345)
    assert chi2_pvalue(ids, p) > P_MIN


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_guided_sample_distribution(device, top_p):
    V, m, d, K = 12, 2, 8, 6
    logits = randn((V,), seed=41)
    hidden = randn((d,), seed=42)
    W = randn((m, V, d), seed=43, scale=0.4)
    b = randn((m, V), seed=44, scale=0.2)
    w = torch.tensor([0.7, 0.5])
    beta, T = 1.3, 1.1
    values = torch.einsum("mvd,d->mv", W.double(), hidden.double()) + b.double()
    # keep set = base top-K; tilt only matters inside it
    p, keep = exact_distribution(logits, values, w, beta, T, K, top_p, "base")
    ids, lt, lb = mavis_ext.guided_sample(
        logits.expand(DRAWS, V).to(device), hidden.expand(DRAWS, d).to(device), W.to(device), b.to(device),
        w.to(device), beta=beta, top_k=K, temperature=T, top_p=top_p, seed=torch.arange(DRAWS, device=device),
        return_logprobs=True,
    )
    assert chi2_pvalue(ids, p) > P_MIN
    torch.testing.assert_close(lt.cpu().double(), torch.log(p[ids.cpu()]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lb.cpu().double(), torch.log_softmax(logits.double() / T, 0)[ids.cpu()],
                               rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- reproducibility
def _inputs(device, B=64, N=1000):
    return randn((B, N), seed=51, device=device), randn((B, 2, N), seed=52, device=device)


@pytest.mark.parametrize("top_k", [0, 40])
def test_same_generator_state_same_tokens(device, top_k):
    logits, values = _inputs(device)
    w = torch.tensor([0.5, 0.5], device=device)
    g1 = torch.Generator(device=device).manual_seed(7)
    g2 = torch.Generator(device=device).manual_seed(7)
    a = mavis_ext.tilted_sample(logits, values, w, top_k=top_k, generator=g1)
    b = mavis_ext.tilted_sample(logits, values, w, top_k=top_k, generator=g2)
    assert torch.equal(a, b)
    # the generator advanced: the next draw differs; another seed differs
    a2 = mavis_ext.tilted_sample(logits, values, w, top_k=top_k, generator=g1)
    assert not torch.equal(a, a2)
    c = mavis_ext.tilted_sample(logits, values, w, top_k=top_k, generator=torch.Generator(device=device).manual_seed(8))
    assert not torch.equal(a, c)


def test_default_generator_follows_manual_seed(device):
    logits, values = _inputs(device)
    w = torch.tensor([0.5, 0.5], device=device)
    torch.manual_seed(3)
    a = mavis_ext.tilted_sample(logits, values, w, top_k=20)
    torch.manual_seed(3)
    b = mavis_ext.tilted_sample(logits, values, w, top_k=20)
    assert torch.equal(a, b)


def test_int_seed_reproducible_and_distinct(device):
    logits, _ = _inputs(device)
    a = mavis_ext.tilted_sample(logits, seed=11)
    assert torch.equal(a, mavis_ext.tilted_sample(logits, seed=11))
    assert not torch.equal(a, mavis_ext.tilted_sample(logits, seed=12))


@pytest.mark.parametrize("top_k", [0, 10])
def test_per_row_seeds_are_batch_invariant(device, top_k):
    logits, values = _inputs(device, B=16, N=500)
    w = torch.tensor([1.0, -1.0], device=device)
    seeds = torch.arange(16, device=device) * 1000 + 17
    full = mavis_ext.tilted_sample(logits, values, w, top_k=top_k, seed=seeds)
    perm = torch.randperm(16, generator=gen(1)).to(device)[:9]
    sub = mavis_ext.tilted_sample(logits[perm], values[perm], w, top_k=top_k, seed=seeds[perm])
    assert torch.equal(sub, full[perm])
    for r in (0, 5):  # a row alone, with its seed as a one-element tensor
        alone = mavis_ext.tilted_sample(logits[r:r + 1], values[r:r + 1], w, top_k=top_k, seed=seeds[r:r + 1])
        assert alone.item() == full[r].item()


def test_guided_per_row_seeds_batch_invariant(device):
    B, V, m, d = 10, 400, 2, 16
    logits = randn((B, V), seed=61, device=device)
    hidden = randn((B, d), seed=62, device=device)
    W = randn((m, V, d), seed=63, scale=0.25, device=device)
    w = torch.tensor([0.3, 0.7], device=device)
    seeds = torch.arange(B, device=device) + 5
    full = mavis_ext.guided_sample(logits, hidden, W, None, w, beta=1.0, top_k=16, seed=seeds)
    sub = mavis_ext.guided_sample(logits[3:7], hidden[3:7], W, None, w, beta=1.0, top_k=16, seed=seeds[3:7])
    assert torch.equal(sub, full[3:7])
