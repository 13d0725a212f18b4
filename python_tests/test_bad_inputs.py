"""Bad input gets a clean exception naming the argument, never a crash, a hang or a silent token 0:
through the public wrappers (ValueError/TypeError before any kernel runs, RuntimeError for what only
the data shows) and through torch.ops.mavis.* directly (RuntimeError from the kernels' checks)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mavis_ext
from conftest import gen, randn

ERRORS = (ValueError, TypeError, RuntimeError)
nan, inf = float("nan"), float("inf")


def _raises(match, fn, *args, **kw):
    with pytest.raises(ERRORS, match=match):
        fn(*args, **kw)


def _basic(device, B=3, N=50, m=2):
    return (randn((B, N), seed=1, device=device), randn((B, m, N), seed=2, device=device),
            torch.tensor([0.5, 0.5], device=device))


# ----------------------------------------------------------------------------- topk_candidates
def test_topk_candidates_bad_args(device):
    x = randn((2, 10), seed=3, device=device)
    _raises("logits", mavis_ext.topk_candidates, x[0], 3)
    _raises("logits", mavis_ext.topk_candidates, x.to(torch.int64), 3)
    _raises("logits", mavis_ext.topk_candidates, x.double(), 3)
    _raises("logits", mavis_ext.topk_candidates, "not a tensor", 3)
    _raises("logits", mavis_ext.topk_candidates, x[:0], 3)
    _raises("k", mavis_ext.topk_candidates, x, 0)
    _raises("k", mavis_ext.topk_candidates, x, 11)
    _raises("k", mavis_ext.topk_candidates, x, 2.5)
    for t in (0.0, -1.0, inf, nan):
        _raises("temperature", mavis_ext.topk_candidates, x, 3, temperature=t)


@pytest.mark.parametrize("bad", [nan, inf])
def test_topk_candidates_bad_logits(device, bad):
    x = randn((3, 100), seed=4, device=device)
    x[1, 17] = bad
    _raises("logits", mavis_ext.topk_candidates, x, 3)


def test_topk_candidates_all_neg_inf_row(device):
    x = randn((3, 100), seed=5, device=device)
    x[2] = -inf
    _raises("logits", mavis_ext.topk_candidates, x, 3)


# ----------------------------------------------------------------------------- value_heads
def test_value_heads_bad_args(device):
    B, V, K, m, d = 2, 30, 4, 2, 8
    h = randn((B, d), seed=6, device=device)
    W = randn((m, V, d), seed=7, device=device)
    ids = torch.randint(0, V, (B, K), generator=gen(8)).to(device)
    _raises("hidden", mavis_ext.value_heads, h[0], W, candidate_ids=ids)
    _raises("hidden", mavis_ext.value_heads, h.long(), W, candidate_ids=ids)
    _raises("head_weight", mavis_ext.value_heads, h, W[:, :, :5], candidate_ids=ids)
    _raises("head_weight", mavis_ext.value_heads, h, W[0], candidate_ids=ids)
    _raises("head_bias", mavis_ext.value_heads, h, W, torch.zeros(m, V + 1, device=device) + 1, candidate_ids=ids)
    _raises("candidate_ids", mavis_ext.value_heads, h, W, candidate_ids=ids.float())
    _raises("candidate_ids", mavis_ext.value_heads, h, W, candidate_ids=ids[:1])
    _raises("candidate_ids", mavis_ext.value_heads, h, W, candidate_ids=ids + V)  # out of range: no OOB read
    _raises("candidate_ids", mavis_ext.value_heads, h, W, candidate_ids=ids - V)
    _raises("weights", mavis_ext.value_heads, h, W, candidate_ids=ids, weights=torch.ones(m + 1, device=device))
    _raises("weights", mavis_ext.value_heads, h, W, candidate_ids=ids, weights=torch.tensor([1.0, nan], device=device))
    _raises("weights", mavis_ext.value_heads, h, W, candidate_ids=ids, weights=torch.tensor([1.0, inf], device=device))
    _raises("weights", mavis_ext.value_heads, h, W, candidate_ids=ids, weights=torch.ones(B + 1, m, device=device))
    hp = randn((B, K, d), seed=9, device=device)
    _raises("head_weight", mavis_ext.value_heads, hp, randn((m, d + 1), seed=10, device=device))
    _raises("hidden", mavis_ext.value_heads, hp[:0], randn((m, d), seed=10, device=device))


# ----------------------------------------------------------------------------- tilt_logits
def test_tilt_logits_bad_args(device):
    x, v, w = _basic(device)
    _raises("values", mavis_ext.tilt_logits, x, v[:, :, :-1], w, beta=1.0)
    _raises("values", mavis_ext.tilt_logits, x, v[:2], w, beta=1.0)
    _raises("values", mavis_ext.tilt_logits, x, v.long(), w, beta=1.0)
    _raises("weights", mavis_ext.tilt_logits, x, v, w[:1], beta=1.0)
    _raises("weights", mavis_ext.tilt_logits, x, v, torch.tensor([nan, 1.0], device=device), beta=1.0)
    _raises("weights", mavis_ext.tilt_logits, x, v, w.long(), beta=1.0)
    _raises("beta", mavis_ext.tilt_logits, x, v, w, beta=nan)
    _raises("beta", mavis_ext.tilt_logits, x, v, w, beta=inf)
    _raises("temperature", mavis_ext.tilt_logits, x, v, w, beta=1.0, temperature=0.0)


def test_device_mismatch_names_argument(device):
    x, v, w = _basic(device)
    _raises("values", mavis_ext.tilt_logits, x, v.to("meta"), w, beta=1.0)
    _raises("weights", mavis_ext.tilted_sample, x, v, w.to("meta"), seed=1)
    _raises("candidate_ids", mavis_ext.tilted_sample, x, candidate_ids=torch.zeros(3, 50, dtype=torch.long,
                                                                                 device="meta"), seed=1)
    h = randn((3, 8), seed=11, device=device)
    W = randn((2, 50, 8), seed=12, device=device)
    _raises("hidden", mavis_ext.guided_sample, x, h.to("meta"), W, None, w, beta=1.0, top_k=4, seed=1)
    _raises("head_weight", mavis_ext.guided_sample, x, h, W.to("meta"), None, w, beta=1.0, top_k=4, seed=1)


# ----------------------------------------------------------------------------- tilted_sample
def test_tilted_sample_bad_args(device):
    x, v, w = _basic(device)
    ts = mavis_ext.tilted_sample
    _raises("top_k", ts, x, v, w, top_k=-1, seed=1)
    _raises("top_k", ts, x, v, w, top_k=51, seed=1)
    _raises("top_k", ts, x, v, w, top_k=1.5, seed=1)
    for p in (0.0, -0.1, 1.0001, nan, inf):
        _raises("top_p", ts, x, v, w, top_p=p, seed=1)
    _raises("topk_on", ts, x, v, w, top_k=3, topk_on="values", seed=1)
    for t in (0.0, -2.0, nan):
        _raises("temperature", ts, x, v, w, temperature=t, seed=1)
    _raises("beta", ts, x, v, w, beta=nan, seed=1)
    _raises("weights", ts, x, None, w, seed=1)
    _raises("weights", ts, x, v, torch.ones(3, device=device), seed=1)
    _raises("weights", ts, x, v, torch.tensor([inf, 0.0], device=device), seed=1)
    _raises("candidate_ids", ts, x, candidate_ids=torch.zeros(3, 49, dtype=torch.long, device=device), seed=1)
    _raises("candidate_ids", ts, x, candidate_ids=torch.zeros(3, 50, device=device), seed=1)
    _raises("logits", ts, x[:0], seed=1)
    _raises("logits", ts, x[:, :0], seed=1)
    _raises("seed", ts, x, seed=torch.tensor([1.0], device=device))
    _raises("seed", ts, x, seed=torch.arange(2, device=device))
    _raises("seed", ts, x, seed=1.5)
    _raises("generator", ts, x, generator="not a generator")


@pytest.mark.parametrize("top_k,top_p,topk_on", [(0, 1.0, "base"), (0, 0.5, "base"), (5, 1.0, "base"),
                                                 (5, 0.7, "tilted")])
def test_tilted_sample_bad_data(device, top_k, top_p, topk_on):
    kw = dict(top_k=top_k, top_p=top_p, topk_on=topk_on, seed=1)
    x, v, w = _basic(device)
    for bad in (nan, inf):
        xb = x.clone()
        xb[1, 7] = bad
        _raises("logits", mavis_ext.tilted_sample, xb, v, w, **kw)
    xb = x.clone()
    xb[2] = -inf  # a row with no finite logit is an error, never a silent token 0
    _raises("logits", mavis_ext.tilted_sample, xb, v, w, **kw)
    xb[2] = nan
    _raises("logits", mavis_ext.tilted_sample, xb, v, w, **kw)
    # a non-finite value at a column that is kept (the base argmax is always kept)
    vb = v.clone()
    vb[0, 1, x[0].argmax()] = nan
    _raises("values", mavis_ext.tilted_sample, x, vb, w, **kw)
    vb[0, 1, x[0].argmax()] = -inf
    _raises("values", mavis_ext.tilted_sample, x, vb, w, **kw)
    # finite but huge: the tilted score overflows to inf
    vb[0, 1, x[0].argmax()] = 3e38
    _raises("values", mavis_ext.tilted_sample, x, vb, w, beta=4.0, **kw)


def test_banned_columns_may_have_any_value(device):
    # values at -inf (banned) columns are never used, even if they are NaN
    x, v, w = _basic(device)
    x[:, :10] = -inf
    v[:, :, :10] = nan
    for top_k, topk_on in [(0, "base"), (5, "base"), (5, "tilted")]:
        ids = mavis_ext.tilted_sample(x, v, w, top_k=top_k, topk_on=topk_on, seed=2)
        assert (ids >= 10).all()


# ----------------------------------------------------------------------------- guided_sample
def test_guided_sample_bad_args(device):
    B, V, m, d = 3, 40, 2, 8
    x = randn((B, V), seed=13, device=device)
    h = randn((B, d), seed=14, device=device)
    W = randn((m, V, d), seed=15, device=device)
    w = torch.tensor([0.5, 0.5], device=device)
    gs = mavis_ext.guided_sample
    _raises("hidden", gs, x, h[:2], W, None, w, beta=1.0, top_k=4, seed=1)
    _raises("hidden", gs, x, h.long(), W, None, w, beta=1.0, top_k=4, seed=1)
    _raises("head_weight", gs, x, h, W[:, :-1], None, w, beta=1.0, top_k=4, seed=1)
    _raises("head_weight", gs, x, h, W[:, :, :-1], None, w, beta=1.0, top_k=4, seed=1)
    _raises("head_bias", gs, x, h, W, torch.ones(m, V - 1, device=device), w, beta=1.0, top_k=4, seed=1)
    _raises("weights", gs, x, h, W, None, w[:1], beta=1.0, top_k=4, seed=1)
    _raises("weights", gs, x, h, W, None, torch.tensor([nan, 1.0], device=device), beta=1.0, top_k=4, seed=1)
    _raises("top_k", gs, x, h, W, None, w, beta=1.0, top_k=0, seed=1)
    _raises("top_k", gs, x, h, W, None, w, beta=1.0, top_k=V + 1, seed=1)
    _raises("top_p", gs, x, h, W, None, w, beta=1.0, top_k=4, top_p=0.0, seed=1)
    _raises("temperature", gs, x, h, W, None, w, beta=1.0, top_k=4, temperature=-1.0, seed=1)
    xb = x.clone()
    xb[0] = -inf
    _raises("logits", gs, xb, h, W, None, w, beta=1.0, top_k=4, seed=1)
    xb[0, 3] = nan
    _raises("logits", gs, xb, h, W, None, w, beta=1.0, top_k=4, seed=1)
    Wb = W.clone()
    Wb[1, x[1].argmax(), 0] = nan  # NaN in the head row of a kept candidate
    _raises("values|head_weight|hidden", gs, x, h, Wb, None, w, beta=1.0, top_k=4, seed=1)


# ----------------------------------------------------------------------------- raw torch.ops calls
@pytest.mark.skipif(not mavis_ext.HAS_C, reason="compiled extension not built")
def test_raw_ops_reject_bad_args(device):
    ops = torch.ops.mavis
    x, v, w = _basic(device)
    s = torch.tensor([1], device=device)
    o = torch.tensor([0], device=device)
    h = randn((3, 8), seed=16, device=device)
    W = randn((2, 50, 8), seed=17, device=device)
    cases = [
        ("k", ops.topk_candidates, (x, 0, 1.0)),
        ("k", ops.topk_candidates, (x, 51, 1.0)),
        ("temperature", ops.topk_candidates, (x, 3, -1.0)),
        ("logits", ops.topk_candidates, (x.long(), 3, 1.0)),
        ("logits", ops.topk_candidates, (x[0], 3, 1.0)),
        ("logits", ops.topk_candidates, (x[:0], 3, 1.0)),
        ("candidate_ids", ops.value_heads, (h, W, None, torch.full((3, 2), 50, device=device), None)),
        ("candidate_ids", ops.value_heads, (h, W, None, torch.full((3, 2), -1, device=device), None)),
        ("candidate_ids", ops.value_heads, (h, W, None, torch.zeros(3, 2, dtype=torch.int32, device=device), None)),
        ("head_weight", ops.value_heads, (h, W[:, :, :4], None, torch.zeros(3, 2, dtype=torch.long, device=device),
                                          None)),
        ("head_bias", ops.value_heads, (h, W, torch.ones(2, 3, device=device),
                                        torch.zeros(3, 2, dtype=torch.long, device=device), None)),
        ("weights", ops.tilt_logits, (x, v, torch.ones(3, device=device), 1.0, 1.0)),
        ("weights", ops.tilt_logits, (x, v, torch.ones(2, dtype=torch.float64, device=device), 1.0, 1.0)),
        ("values", ops.tilt_logits, (x, v[:, :, :3], w, 1.0, 1.0)),
        ("top_k", ops.tilted_sample, (x, v, w, 1.0, 1.0, 51, 1.0, False, None, s, o)),
        ("top_k", ops.tilted_sample, (x, v, w, 1.0, 1.0, -1, 1.0, False, None, s, o)),
        ("top_p", ops.tilted_sample, (x, v, w, 1.0, 1.0, 0, 1.5, False, None, s, o)),
        ("top_p", ops.tilted_sample, (x, v, w, 1.0, 1.0, 0, 0.0, False, None, s, o)),
        ("weights", ops.tilted_sample, (x, None, w, 1.0, 1.0, 0, 1.0, False, None, s, o)),
        ("weights", ops.tilted_sample, (x, v, None, 1.0, 1.0, 0, 1.0, False, None, s, o)),
        ("seed", ops.tilted_sample, (x, v, w, 1.0, 1.0, 0, 1.0, False, None, s.float(), o)),
        ("seed", ops.tilted_sample, (x, v, w, 1.0, 1.0, 0, 1.0, False, None, torch.arange(2, device=device), o)),
        ("offset", ops.tilted_sample, (x, v, w, 1.0, 1.0, 0, 1.0, False, None, s, torch.arange(4, device=device))),
        ("candidate_ids", ops.tilted_sample, (x, v, w, 1.0, 1.0, 0, 1.0, False,
                                              torch.zeros(3, 5, dtype=torch.long, device=device), s, o)),
        ("top_k", ops.guided_sample, (x, h, W, None, w, 1.0, 0, 1.0, 1.0, s, o)),
        ("top_k", ops.guided_sample, (x, h, W, None, w, 1.0, 51, 1.0, 1.0, s, o)),
        ("hidden", ops.guided_sample, (x, h[:2], W, None, w, 1.0, 3, 1.0, 1.0, s, o)),
        ("head_weight", ops.guided_sample, (x, h, W[:, :10], None, w, 1.0, 3, 1.0, 1.0, s, o)),
        ("head_bias", ops.guided_sample, (x, h, W, torch.ones(2, 49, device=device), w, 1.0, 3, 1.0, 1.0, s, o)),
        ("weights", ops.guided_sample, (x, h, W, None, torch.tensor([nan, 1.0], device=device), 1.0, 3, 1.0, 1.0,
                                        s, o)),
    ]
    # argument errors raise whether bad rows are marked or not (mark_invalid, the trailing argument)
    marked = [(name, op, args + (True,)) for name, op, args in cases if op is not ops.value_heads
              and op is not ops.tilt_logits]
    for name, op, args in cases + marked:
        with pytest.raises(RuntimeError, match=name):
            op(*args)


# ----------------------------------------------------------------------------- property-based
_floats = st.sampled_from([0.0, 1.0, -1.0, 3.5, -20.0, 1e30, -1e30, nan, inf, -inf])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 4), N=st.integers(1, 40), m=st.integers(1, 3),
    top_k=st.integers(-1, 42), top_p=st.sampled_from([-0.5, 0.0, 0.1, 0.5, 0.99, 1.0, 1.5, nan]),
    temperature=st.sampled_from([-1.0, 0.0, 0.05, 1.0, 7.0, inf]),
    topk_on=st.sampled_from(["base", "tilted"]), use_values=st.booleans(),
    poison=st.lists(st.tuples(st.integers(0, 10**6), _floats), max_size=4),
    poison_values=st.lists(st.tuples(st.integers(0, 10**6), _floats), max_size=3),
    data_seed=st.integers(0, 2**31 - 1),
)
def test_tilted_sample_never_crashes(B, N, m, top_k, top_p, temperature, topk_on, use_values, poison,
                                     poison_values, data_seed):
    """Random shapes, parameters and injected NaN/inf/huge values: either a valid draw or a clean
    exception naming an argument."""
    logits = randn((B, N), seed=data_seed, scale=3.0)
    flat = logits.view(-1)
    for pos, val in poison:
        flat[pos % flat.numel()] = val
    values = randn((B, m, N), seed=data_seed + 1) if use_values else None
    if values is not None:
        vflat = values.view(-1)
        for pos, val in poison_values:
            vflat[pos % vflat.numel()] = val
    w = torch.rand(m, generator=gen(data_seed)) if use_values else None
    try:
        ids, lt, lb = mavis_ext.tilted_sample(logits, values, w, top_k=top_k, top_p=top_p, temperature=temperature,
                                              topk_on=topk_on, seed=data_seed, return_logprobs=True)
    except ERRORS as e:
        msg = str(e)
        assert any(a in msg for a in ("logits", "values", "weights", "top_k", "top_p", "temperature")), msg
        return
    assert ids.shape == (B,) and ((ids >= 0) & (ids < N)).all()
    x = logits.float() / temperature
    assert torch.isfinite(x.gather(1, ids[:, None])).all(), "drew a banned (-inf) column"
    assert (lt <= 1e-6).all() and (lb <= 1e-6).all() and not torch.isnan(lt).any() and not torch.isnan(lb).any()
    # a batch that samples without error has no row to mark, and marking changes nothing
    marked = mavis_ext.tilted_sample(logits, values, w, top_k=top_k, top_p=top_p, temperature=temperature,
                                     topk_on=topk_on, seed=data_seed, return_logprobs=True, invalid="mark")
    assert all(torch.equal(a, b) for a, b in zip(marked, (ids, lt, lb)))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 5), N=st.integers(1, 40), m=st.integers(1, 3), top_k=st.integers(0, 40),
    top_p=st.sampled_from([0.1, 0.5, 0.99, 1.0]), temperature=st.sampled_from([0.05, 1.0, 7.0]),
    topk_on=st.sampled_from(["base", "tilted"]), use_values=st.booleans(),
    poison=st.lists(st.tuples(st.integers(0, 10**6), _floats), max_size=4),
    poison_values=st.lists(st.tuples(st.integers(0, 10**6), _floats), max_size=3),
    data_seed=st.integers(0, 2**31 - 1),
)
def test_tilted_sample_marks_rows_never_raises_on_data(B, N, m, top_k, top_p, temperature, topk_on, use_values,
                                                      poison, poison_values, data_seed):
    """invalid="mark" with valid arguments never raises on data: each row is either a valid draw or
    id -1 with NaN log-probs, and each valid row is the draw of that row alone (per-row seeds)."""
    top_k = min(top_k, N)
    logits = randn((B, N), seed=data_seed, scale=3.0)
    flat = logits.view(-1)
    for pos, val in poison:
        flat[pos % flat.numel()] = val
    values = randn((B, m, N), seed=data_seed + 1) if use_values else None
    if values is not None:
        vflat = values.view(-1)
        for pos, val in poison_values:
            vflat[pos % vflat.numel()] = val
    w = torch.rand(m, generator=gen(data_seed)) if use_values else None
    kw = dict(top_k=top_k, top_p=top_p, temperature=temperature, topk_on=topk_on, return_logprobs=True)
    seeds = torch.arange(B) + data_seed
    ids, lt, lb = mavis_ext.tilted_sample(logits, values, w, seed=seeds, invalid="mark", **kw)
    for r in range(B):
        one = lambda: mavis_ext.tilted_sample(logits[r:r + 1], None if values is None else values[r:r + 1], w,
                                              seed=seeds[r:r + 1], **kw)
        if ids[r] < 0:
            assert ids[r] == -1 and torch.isnan(lt[r]) and torch.isnan(lb[r])
            with pytest.raises(ERRORS, match="logits|values"):  # the same row alone raises
                one()
        else:
            a, b, c = one()
            assert a.item() == ids[r].item() and torch.equal(b[0], lt[r]) and torch.equal(c[0], lb[r])


@settings(max_examples=60, deadline=None)
@given(
    B=st.integers(1, 3), V=st.integers(1, 30), K=st.integers(-1, 32), m=st.integers(1, 2), d=st.integers(1, 9),
    poison=st.lists(st.tuples(st.integers(0, 10**6), _floats), max_size=3), data_seed=st.integers(0, 2**31 - 1),
)
def test_guided_and_topk_never_crash(B, V, K, m, d, poison, data_seed):
    logits = randn((B, V), seed=data_seed, scale=2.0)
    flat = logits.view(-1)
    for pos, val in poison:
        flat[pos % flat.numel()] = val
    h = randn((B, d), seed=data_seed + 1)
    W = randn((m, V, d), seed=data_seed + 2)
    w = torch.rand(m, generator=gen(data_seed))
    for fn in (lambda: mavis_ext.guided_sample(logits, h, W, None, w, beta=1.0, top_k=K, seed=1),
               lambda: mavis_ext.topk_candidates(logits, K)):
        try:
            out = fn()
        except ERRORS as e:
            assert any(a in str(e) for a in ("logits", "top_k", "k:")), str(e)
            continue
        ids = out if isinstance(out, torch.Tensor) else out[1]
        assert ((ids >= 0) & (ids < V)).all()
