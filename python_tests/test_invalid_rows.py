"""Per-row invalid option (``invalid="mark"``) of topk_candidates, tilted_sample and guided_sample.

A row with bad data gets id -1 and NaN log-probabilities instead of an error; every other row is
bit-identical to a run without the bad rows (per-row seeds: the good rows alone; one shared seed:
the same batch with the bad rows repaired). ``invalid="raise"`` (default) keeps raising, with the
highest-priority error of the batch whatever the row order; argument errors raise in both modes.
Kernels are checked against mavis_ext/reference.py in both modes.
"""

import pytest
import torch

import mavis_ext
from mavis_ext import reference
from conftest import gen, randn, seed_pair

nan, inf = float("nan"), float("inf")
ERRORS = (ValueError, RuntimeError)
B, N, M = 7, 300, 2
BAD_ROWS = [0, 3, 6]  # first, middle and last row

# tilted_sample configurations: every path of the CPU kernel (restricted base / tilted, full-row
# Gumbel-max, full-row nucleus, short-list nucleus).
CONFIGS = [dict(top_k=0, top_p=1.0, topk_on="base"), dict(top_k=0, top_p=0.7, topk_on="base"),
           dict(top_k=20, top_p=1.0, topk_on="base"), dict(top_k=20, top_p=0.8, topk_on="tilted")]


def _inputs(device, s=1):
    logits = randn((B, N), seed=s, scale=2.0, device=device)
    values = randn((B, M, N), seed=s + 1, device=device)
    w = (0.5 + 0.5 * torch.rand(B, M, generator=gen(s + 2))).to(device)  # >= 0.5: 3e38 values overflow
    return logits, values, w


def _poison(kind, logits, values, row):
    """Make `row` bad in one of the ways the op can see in the data. Returns (logits, values)."""
    logits, values = logits.clone(), values.clone()
    top = int(logits[row].argmax())  # the base argmax is kept by every configuration
    if kind == "nan_logit":
        logits[row, 17] = nan
    elif kind == "posinf_logit":
        logits[row, N - 1] = inf
    elif kind == "all_neg_inf":
        logits[row] = -inf
    elif kind == "nan_value":
        values[row, 1, top] = nan
    elif kind == "overflow_value":  # finite value, but the tilted score overflows to +inf
        values[row, 0, top] = 3e38
        values[row, 1, top] = 3e38
    else:
        raise AssertionError(kind)
    return logits, values


LOGIT_KINDS = ["nan_logit", "posinf_logit", "all_neg_inf"]
ALL_KINDS = LOGIT_KINDS + ["nan_value", "overflow_value"]


def _assert_marked(ids, lt, lb, bad):
    bad = torch.as_tensor(bad, device=ids.device)
    assert (ids[bad] == -1).all()
    assert torch.isnan(lt[bad]).all() and torch.isnan(lb[bad]).all()
    good = ~bad
    assert (ids[good] >= 0).all() and torch.isfinite(lt[good]).all() and torch.isfinite(lb[good]).all()


def _equal(a, b):
    """Bitwise equality of two output tuples (NaN == NaN)."""
    for x, y in zip(a, b):
        x, y = x.cpu(), y.cpu()
        assert x.dtype == y.dtype and x.shape == y.shape
        if x.is_floating_point():
            assert torch.equal(x.isnan(), y.isnan())
            x, y = torch.where(x.isnan(), 0.0, x), torch.where(y.isnan(), 0.0, y)
        assert torch.equal(x, y)


# ----------------------------------------------------------------------------- tilted_sample
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"k{c['top_k']}-p{c['top_p']}-{c['topk_on']}")
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_tilted_sample_marks_each_bad_kind(device, cfg, kind):
    logits, values, w = _inputs(device)
    seeds = torch.arange(B, device=device) * 31 + 5
    bl, bv = logits, values
    for r in BAD_ROWS:
        bl, bv = _poison(kind, bl, bv, r)
    beta = 4.0 if kind == "overflow_value" else 1.5
    kw = dict(beta=beta, temperature=0.9, return_logprobs=True, **cfg)
    with pytest.raises(ERRORS, match="values" if "value" in kind else "logits"):
        mavis_ext.tilted_sample(bl, bv, w, seed=seeds, **kw)  # the default still raises
    got = mavis_ext.tilted_sample(bl, bv, w, seed=seeds, invalid="mark", **kw)
    bad = torch.zeros(B, dtype=torch.bool)
    bad[BAD_ROWS] = True
    _assert_marked(*got, bad)
    # good rows alone, with their own seeds: bit-identical
    good = (~bad).nonzero().flatten().to(device)
    alone = mavis_ext.tilted_sample(logits[good], values[good], w[good], seed=seeds[good], **kw)
    _equal([x[good] for x in got], alone)
    # and the reference marks the same rows and draws the same tokens
    ref = reference.tilted_sample(bl.cpu(), bv.cpu(), w.cpu(), beta, 0.9, cfg["top_k"], cfg["top_p"],
                                  cfg["topk_on"] == "tilted", None, *seed_pair(seeds.cpu()), True)
    assert torch.equal(got[0].cpu(), ref[0])
    torch.testing.assert_close(got[1].cpu(), ref[1], rtol=1e-4, atol=1e-4, equal_nan=True)
    torch.testing.assert_close(got[2].cpu(), ref[2], rtol=1e-4, atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"k{c['top_k']}-p{c['top_p']}-{c['topk_on']}")
def test_mixed_batch_shared_seed(device, cfg):
    """One int seed for the batch (the row index is in the noise counter): bad rows of different
    kinds leave every other row exactly as in the same batch with those rows repaired."""
    logits, values, w = _inputs(device, s=11)
    bl, bv = logits, values
    for r, kind in zip([0, 2, 3, 6], ["nan_value", "posinf_logit", "all_neg_inf", "nan_logit"]):
        bl, bv = _poison(kind, bl, bv, r)
    kw = dict(beta=1.0, seed=1234, return_logprobs=True, **cfg)
    got = mavis_ext.tilted_sample(bl, bv, w, invalid="mark", **kw)
    clean = mavis_ext.tilted_sample(logits, values, w, **kw)
    bad = torch.zeros(B, dtype=torch.bool)
    bad[[0, 2, 3, 6]] = True
    _assert_marked(*got, bad)
    good = (~bad).to(device)
    _equal([x[good] for x in got], [x[good] for x in clean])


def test_mark_with_candidate_ids_and_no_values(device):
    logits, _, _ = _inputs(device, s=21)
    cand = torch.randint(0, 10**6, (B, N), generator=gen(22)).to(device)
    bl = logits.clone()
    bl[4, 9] = nan
    seeds = torch.arange(B, device=device) + 100
    ids, lt, lb = mavis_ext.tilted_sample(bl, top_k=8, candidate_ids=cand, seed=seeds, invalid="mark",
                                          return_logprobs=True)
    assert ids[4] == -1 and torch.isnan(lt[4]) and torch.isnan(lb[4])
    keep = torch.tensor([0, 1, 2, 3, 5, 6], device=device)
    alone = mavis_ext.tilted_sample(logits[keep], top_k=8, candidate_ids=cand[keep], seed=seeds[keep])
    assert torch.equal(ids[keep], alone)


def test_all_rows_bad(device):
    logits, values, w = _inputs(device, s=31)
    logits[:] = -inf
    ids, lt, lb = mavis_ext.tilted_sample(logits, values, w, seed=1, invalid="mark", return_logprobs=True)
    assert (ids == -1).all() and torch.isnan(lt).all() and torch.isnan(lb).all()


# ----------------------------------------------------------------------------- topk_candidates
@pytest.mark.parametrize("kind", LOGIT_KINDS)
def test_topk_candidates_marks_bad_rows(device, kind):
    logits, values, _ = _inputs(device, s=41)
    bl = logits
    for r in BAD_ROWS:
        bl, _ = _poison(kind, bl, values, r)
    with pytest.raises(ERRORS, match="logits"):
        mavis_ext.topk_candidates(bl, 5)
    vals, ids, lse = mavis_ext.topk_candidates(bl, 5, temperature=0.7, invalid="mark")
    bad = torch.zeros(B, dtype=torch.bool, device=device)
    bad[BAD_ROWS] = True
    assert (ids[bad] == -1).all() and torch.isnan(vals[bad]).all() and torch.isnan(lse[bad]).all()
    good = ~bad
    assert (ids[:, 0] >= 0).eq(good).all()  # the documented validity mask
    _equal((vals[good], ids[good], lse[good]), mavis_ext.topk_candidates(logits[good], 5, temperature=0.7))
    _equal((vals.cpu(), ids.cpu(), lse.cpu()), reference.topk_candidates(bl.cpu(), 5, 0.7, True))


def test_topk_candidates_fewer_finite_than_k_is_valid(device):
    logits = randn((2, 50), seed=51, device=device)
    logits[1, 3:] = -inf
    vals, ids, lse = mavis_ext.topk_candidates(logits, 6, invalid="mark")
    assert (ids >= 0).all() and torch.isfinite(lse).all()
    assert torch.isinf(vals[1, 3:]).all()


# ----------------------------------------------------------------------------- guided_sample
def _guided(device, s=61, Bg=6, V=400, m=2, d=16):
    logits = randn((Bg, V), seed=s, scale=2.0, device=device)
    hidden = randn((Bg, d), seed=s + 1, device=device)
    W = randn((m, V, d), seed=s + 2, scale=0.25, device=device)
    b = randn((m, V), seed=s + 3, scale=0.1, device=device)
    w = torch.rand(Bg, m, generator=gen(s + 4)).to(device)
    return logits, hidden, W, b, w


@pytest.mark.parametrize("kind", ["nan_logit", "posinf_logit", "all_neg_inf", "nan_hidden", "inf_head_row"])
@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_guided_sample_marks_each_bad_kind(device, kind, top_p):
    logits, hidden, W, b, w = _guided(device)
    bl, bh, bW = logits.clone(), hidden.clone(), W.clone()
    bad_rows = [1, 5]
    for r in bad_rows:
        if kind == "nan_logit":
            bl[r, 7] = nan
        elif kind == "posinf_logit":
            bl[r, 0] = inf
        elif kind == "all_neg_inf":
            bl[r] = -inf
        elif kind == "nan_hidden":  # every candidate of the row gets a NaN value
            bh[r, 3] = nan
    if kind == "inf_head_row":  # a head row that only row 1 reads: only row 1 is bad
        bad_rows = [1]
        tops = [set(logits[r].topk(12).indices.tolist()) for r in range(6)]
        tok = min(tops[1] - set().union(*(tops[r] for r in range(6) if r != 1)))
        bW[0, tok, 0] = inf
    seeds = torch.arange(6, device=device) + 7
    kw = dict(beta=1.5, top_k=12, temperature=0.8, top_p=top_p, return_logprobs=True)
    with pytest.raises(ERRORS, match="values" if kind in ("nan_hidden", "inf_head_row") else "logits"):
        mavis_ext.guided_sample(bl, bh, bW, b, w, seed=seeds, **kw)
    got = mavis_ext.guided_sample(bl, bh, bW, b, w, seed=seeds, invalid="mark", **kw)
    bad = torch.zeros(6, dtype=torch.bool)
    bad[bad_rows] = True
    _assert_marked(*got, bad)
    good = (~bad).nonzero().flatten().to(device)
    # (with the poisoned head row for "inf_head_row": the other rows never read it)
    alone = mavis_ext.guided_sample(logits[good], hidden[good], bW, b, w[good], seed=seeds[good], **kw)
    _equal([x[good] for x in got], alone)
    ref = reference.guided_sample(bl.cpu(), bh.cpu(), bW.cpu(), b.cpu(), w.cpu(), 1.5, 12, 0.8, top_p,
                                  *seed_pair(seeds.cpu()), True)
    assert torch.equal(got[0].cpu(), ref[0])
    torch.testing.assert_close(got[1].cpu(), ref[1], rtol=1e-4, atol=1e-4, equal_nan=True)
    torch.testing.assert_close(got[2].cpu(), ref[2], rtol=1e-4, atol=1e-4, equal_nan=True)


# ----------------------------------------------------------------------------- argument errors
def test_invalid_argument_is_checked(device):
    logits, values, w = _inputs(device)
    h = randn((B, 8), seed=71, device=device)
    W = randn((M, N, 8), seed=72, device=device)
    for bad in ("Mark", "ignore", None, True, 1):
        with pytest.raises(ValueError, match="invalid"):
            mavis_ext.tilted_sample(logits, seed=1, invalid=bad)
        with pytest.raises(ValueError, match="invalid"):
            mavis_ext.topk_candidates(logits, 3, invalid=bad)
        with pytest.raises(ValueError, match="invalid"):
            mavis_ext.guided_sample(logits, h, W, None, w, beta=1.0, top_k=4, seed=1, invalid=bad)
    with pytest.raises(TypeError):  # keyword-only
        mavis_ext.topk_candidates(logits, 3, 1.0, "mark")


def test_argument_errors_still_raise_in_mark_mode(device):
    logits, values, w = _inputs(device)
    ts, mk = mavis_ext.tilted_sample, dict(invalid="mark", seed=1)
    with pytest.raises(ERRORS, match="top_k"):
        ts(logits, values, w, top_k=N + 1, **mk)
    with pytest.raises(ERRORS, match="weights"):
        ts(logits, values, torch.tensor([nan, 1.0], device=device), **mk)
    with pytest.raises(ERRORS, match="weights"):
        ts(logits, values, w[:, :1], **mk)
    with pytest.raises(ERRORS, match="values"):
        ts(logits, values[:, :, :-1], w, **mk)
    with pytest.raises(ERRORS, match="temperature"):
        ts(logits, values, w, temperature=0.0, **mk)
    with pytest.raises(ERRORS, match="k"):
        mavis_ext.topk_candidates(logits, 0, invalid="mark")
    h = randn((B, 8), seed=73, device=device)
    W = randn((M, N, 8), seed=74, device=device)
    with pytest.raises(ERRORS, match="weights"):
        mavis_ext.guided_sample(logits, h, W, None, torch.tensor([inf, 1.0], device=device), beta=1.0, top_k=4,
                                **mk)
    with pytest.raises(ERRORS, match="hidden"):
        mavis_ext.guided_sample(logits, h[:2], W, None, w, beta=1.0, top_k=4, **mk)


# ----------------------------------------------------------------------------- error priority
PRIORITY_CASES = [
    # (kind per row, the error that must be reported): NaN/+inf logits before a row with no finite
    # logit, before non-finite tilted scores; independent of the rows' order.
    ({0: "nan_value", 4: "nan_logit"}, "logits: contains"),
    ({1: "all_neg_inf", 5: "posinf_logit"}, "logits: contains"),
    ({0: "nan_value", 2: "all_neg_inf"}, "no finite entry"),
    ({6: "overflow_value", 1: "nan_value"}, "values: tilted scores are not finite"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"k{c['top_k']}-p{c['top_p']}-{c['topk_on']}")
@pytest.mark.parametrize("rows,expected", PRIORITY_CASES)
def test_error_priority_is_deterministic(device, cfg, rows, expected):
    logits, values, w = _inputs(device, s=81)
    for r, kind in rows.items():
        logits, values = _poison(kind, logits, values, r)
    kw = dict(beta=4.0, seed=torch.arange(B, device=device), **cfg)
    for order in (torch.arange(B), torch.arange(B).flip(0)):  # the same data, rows reversed
        o = order.to(device)
        for threads in (1, 2):
            prev = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                with pytest.raises(ERRORS, match=expected):
                    mavis_ext.tilted_sample(logits[o], values[o], w[o], **kw)
            finally:
                torch.set_num_threads(prev)
        with pytest.raises(ValueError, match=expected.replace("contains", "contains (NaN|\\+inf)")):
            reference.tilted_sample(logits[o].cpu(), values[o].cpu(), w[o].cpu(), 4.0, 1.0, cfg["top_k"],
                                    cfg["top_p"], cfg["topk_on"] == "tilted", None, *seed_pair(torch.arange(B)))
