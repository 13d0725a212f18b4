"""The CUDA kernels at the edges a line-by-line review found: value-head rows whose length is not a
multiple of 8 (fp32 d = 12, 20, 100), head weights in a non-canonical layout (read through their
strides, never copied), the large-k slow paths, the top-k merge beyond its shared-memory staging,
4096-column chunks, rows with fewer finite logits than k, huge scaled logits in the
full-vocabulary Gumbel-max, more rows than one grid dimension holds, the row tiles of the
workspace and of the slow paths at production shapes, side streams and other devices, and the
error raised for a batch with several bad rows.

Each is checked against the reference or the CPU kernel (CPU = CUDA tokens for the same seed is
the contract). Skipped without a GPU; benchmarks/gpu_check.sh runs them on one.
"""

import pytest
import torch

import mavis_ext
from mavis_ext import reference
from conftest import assert_tokens_match, gen, randn, seed_pair

CUDA = torch.cuda.is_available() and mavis_ext.has_cuda_kernels()
pytestmark = pytest.mark.skipif(not CUDA, reason="needs a GPU and the CUDA kernels")

# Tokens may differ only where two scores tie within the last bits of libm's log (double): allow
# 0.1% of rows, the contract's bound.
MAX_MISMATCH = 0.001


def _close(got, want, tol=1e-4):
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=tol, atol=tol)


def _same_samples(got, want, max_mismatch=MAX_MISMATCH):
    """(ids, logp_t, logp_b) of two backends: tokens agree, log-probs agree where they do."""
    ids, lt, lb = (x.cpu() for x in got)
    rid, rlt, rlb = (x.cpu() for x in want)
    assert_tokens_match(ids, rid, max_mismatch)
    same = ids == rid
    _close(lt[same], rlt[same])
    _close(lb[same], rlb[same])


# ----------------------------------------------------------------------------- value heads
@pytest.mark.parametrize("d", [12, 20, 100])  # fp32 rows 16-byte aligned, d % 8 != 0
@pytest.mark.parametrize("mode", ["prefix", "qhead"])
@pytest.mark.parametrize("weights", [None, "Bm"])
def test_value_heads_fp32_row_length_not_multiple_of_8(d, mode, weights):
    B, m, N, V = 3, 2, 9, 50
    s = 1000 + d
    hidden = randn((B, N, d) if mode == "prefix" else (B, d), seed=s, device="cuda")
    W = randn((m, d) if mode == "prefix" else (m, V, d), seed=s + 1, scale=0.3, device="cuda")
    b = randn((m,) if mode == "prefix" else (m, V), seed=s + 2, device="cuda")
    ids = torch.randint(0, V, (B, N), generator=gen(s + 3)).cuda() if mode == "qhead" else None
    w = (torch.rand(B, m, generator=gen(s + 4)) + 0.1).cuda() if weights else None
    got = mavis_ext.value_heads(hidden, W, b, candidate_ids=ids, weights=w)
    want = reference.value_heads(hidden.cpu(), W.cpu(), b.cpu(), None if ids is None else ids.cpu(),
                                 None if w is None else w.cpu())
    _close(got, want)


def test_value_heads_d12_issue_trigger():
    # the review's trigger: each dot product gained the next row's first 4 products
    hidden, W = randn((2, 3, 12), seed=1, device="cuda"), randn((2, 12), seed=2, device="cuda")
    _close(mavis_ext.value_heads(hidden, W), reference.value_heads(hidden.cpu(), W.cpu()))


def test_guided_sample_fp32_d12_matches_cpu():
    B, V, m, d, K = 64, 3000, 2, 12, 16
    logits = randn((B, V), seed=11, scale=2.0)
    hidden, W = randn((B, d), seed=12), randn((m, V, d), seed=13, scale=0.5)
    b, w = randn((m, V), seed=14, scale=0.2), torch.tensor([0.6, 0.4])
    kw = dict(beta=3.0, top_k=K, top_p=0.9, seed=torch.arange(B) + 5, return_logprobs=True)
    cpu = mavis_ext.guided_sample(logits, hidden, W, b, w, **kw)
    kw["seed"] = kw["seed"].cuda()
    gpu = mavis_ext.guided_sample(logits.cuda(), hidden.cuda(), W.cuda(), b.cuda(), w.cuda(), **kw)
    _same_samples(gpu, cpu)


@pytest.mark.parametrize("layout", ["permuted", "vocab_major"])
def test_head_weight_read_through_strides_without_copy(layout):
    m, V, d, B, K = 2, 32000, 256, 4, 24
    if layout == "permuted":  # no unit stride along d: scalar loads through the strides
        W = randn((d, V, m), seed=21, scale=0.1, device="cuda").permute(2, 1, 0)
    else:  # [V, m, d] storage seen as [m, V, d]: contiguous rows, 16-byte aligned (vector loads)
        W = randn((V, m, d), seed=21, scale=0.1, device="cuda").transpose(0, 1)
    assert not W.is_contiguous()
    hidden = randn((B, d), seed=22, device="cuda")
    bias = randn((V, m), seed=23, device="cuda").t()  # [m, V] with non-canonical strides
    ids = torch.randint(0, V, (B, K), generator=gen(24)).cuda()
    w = torch.tensor([0.3, 0.7], device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    got = mavis_ext.value_heads(hidden, W, bias, candidate_ids=ids, weights=w)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < W.numel() * W.element_size() // 4, f"{extra} bytes allocated: the head weight was copied"
    want = reference.value_heads(hidden.cpu(), W.cpu(), bias.cpu(), ids.cpu(), w.cpu())
    _close(got, want)
    logits = randn((B, V), seed=25, scale=2.0)
    kw = dict(beta=2.0, top_k=K, seed=7, return_logprobs=True)
    cpu = mavis_ext.guided_sample(logits, hidden.cpu(), W.cpu(), bias.cpu(), w.cpu(), **kw)
    gpu = mavis_ext.guided_sample(logits.cuda(), hidden, W, bias, w, **kw)
    _same_samples(gpu, cpu)


# ----------------------------------------------------------------------------- top-k paths
@pytest.mark.parametrize("top_k,top_p,topk_on", [(300, 1.0, "base"), (300, 0.9, "base"), (700, 0.95, "tilted")])
def test_tilted_sample_large_k_slow_path(top_k, top_p, topk_on):
    B, N = 32, 5000
    logits = randn((B, N), seed=31, scale=2.5, device="cuda")
    values = randn((B, 2, N), seed=32, device="cuda")
    w = torch.tensor([0.5, 0.5], device="cuda")
    got = mavis_ext.tilted_sample(logits, values, w, beta=1.5, temperature=0.9, top_k=top_k, top_p=top_p,
                                  topk_on=topk_on, seed=41, return_logprobs=True)
    s, o = seed_pair(41)
    want = reference.tilted_sample(logits.cpu(), values.cpu(), w.cpu(), 1.5, 0.9, top_k, top_p, topk_on == "tilted",
                                   None, s, o)
    _same_samples(got, want, 0.002)


def test_topk_candidates_and_guided_large_k_slow_path():
    B, V, m, d, K = 8, 4000, 2, 32, 300
    logits = randn((B, V), seed=51, scale=3.0, device="cuda")
    vals, ids, lse = mavis_ext.topk_candidates(logits, K, temperature=0.8)
    rv, ri, rl = reference.topk_candidates(logits.cpu(), K, 0.8)
    assert torch.equal(ids.cpu(), ri)
    _close(vals, rv, 1e-6)
    _close(lse, rl, 2e-6)
    hidden, W = randn((B, d), seed=52, device="cuda"), randn((m, V, d), seed=53, scale=0.2, device="cuda")
    w = torch.tensor([1.0, -0.5], device="cuda")
    got = mavis_ext.guided_sample(logits, hidden, W, None, w, beta=1.0, top_k=K, temperature=0.8, top_p=0.8,
                                  seed=9, return_logprobs=True)
    want = reference.guided_sample(logits.cpu(), hidden.cpu(), W.cpu(), None, w.cpu(), 1.0, K, 0.8, 0.8,
                                   *seed_pair(9))
    _same_samples(got, want, 0.002)


def test_merge_beyond_staging_all_equal_row():
    # every chunk's top-256 ties: 63 chunks x 256 = 16128 survivors > kMergeCap (2048), so the merge
    # selects from the global candidate array
    V, k = 128256, 256
    logits = torch.full((2, V), 1.5, device="cuda")
    vals, ids, lse = mavis_ext.topk_candidates(logits, k)
    assert torch.equal(ids.cpu(), torch.arange(k).expand(2, k))
    assert torch.equal(vals.cpu(), torch.full((2, k), 1.5))
    _close(lse, torch.full((2,), 1.5 + torch.log(torch.tensor(float(V))).item()), 1e-6)
    got = mavis_ext.tilted_sample(logits, top_k=k, seed=torch.tensor([3, 4], device="cuda"), return_logprobs=True)
    want = reference.tilted_sample(logits.cpu(), None, None, 1.0, 1.0, k, 1.0, False, None,
                                   *seed_pair(torch.tensor([3, 4])))
    _same_samples(got, want, 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_candidates_4096_column_chunks(dtype):
    # B * ceil(V / 4096) = 512 blocks >= 2 per SM on any current GPU: the 4096-column chunk kernel
    logits = randn((64, 32000), seed=61, scale=3.0, dtype=dtype, device="cuda")
    for k in (1, 40, 256):
        vals, ids, lse = mavis_ext.topk_candidates(logits, k, temperature=1.3)
        rv, ri, rl = reference.topk_candidates(logits.cpu(), k, 1.3)
        assert torch.equal(ids.cpu(), ri)
        _close(vals, rv, 1e-6)
        _close(lse, rl, 2e-6)


def _sparse_rows(V, device="cpu"):
    """Rows with fewer finite logits than k, spread over the chunks in different ways."""
    g = gen(71)
    rows = torch.full((6, V), float("-inf"))
    rows[0, torch.randperm(V, generator=g)[:100]] = torch.randn(100, generator=g)  # spread everywhere
    rows[1, V - 10:] = torch.randn(10, generator=g)  # only in the last chunk
    rows[2, ::2000] = torch.randn(rows[2, ::2000].shape[0], generator=g)  # one per 2000 columns
    rows[3] = torch.randn(V, generator=g)  # all finite
    rows[4, V // 2] = 0.25  # a single finite entry
    rows[5, torch.randperm(V, generator=g)[:255]] = torch.randn(255, generator=g)  # k - 1 of them
    return rows.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("k", [1, 40, 256])
def test_fewer_finite_than_k_over_many_chunks(dtype, k):
    logits = _sparse_rows(128256).to(dtype)
    vals, ids, lse = mavis_ext.topk_candidates(logits.cuda(), k, temperature=0.7)
    rv, ri, rl = reference.topk_candidates(logits, k, 0.7)
    assert torch.equal(ids.cpu(), ri)  # finite ones sorted, then the lowest -inf columns in order
    assert torch.equal(vals.cpu(), rv)
    _close(lse, rl, 2e-6)


def test_fewer_finite_than_k_guided_and_tilted_match_cpu():
    V, m, d = 128256, 2, 16
    logits = _sparse_rows(V)
    B = logits.shape[0]
    hidden, W = randn((B, d), seed=72), randn((m, V, d), seed=73, scale=0.3)
    w = torch.tensor([0.5, 0.5])
    seeds = torch.arange(B) + 100
    for K in (40, 256):
        cpu = mavis_ext.guided_sample(logits, hidden, W, None, w, beta=2.0, top_k=K, seed=seeds, return_logprobs=True)
        gpu = mavis_ext.guided_sample(logits.cuda(), hidden.cuda(), W.cuda(), None, w.cuda(), beta=2.0, top_k=K,
                                      seed=seeds.cuda(), return_logprobs=True)
        _same_samples(gpu, cpu, 0.0)
        cpu = mavis_ext.tilted_sample(logits, top_k=K, top_p=0.9, seed=seeds, return_logprobs=True)
        gpu = mavis_ext.tilted_sample(logits.cuda(), top_k=K, top_p=0.9, seed=seeds.cuda(), return_logprobs=True)
        _same_samples(gpu, cpu, 0.0)


# ----------------------------------------------------------------------------- full vocabulary
def test_huge_scaled_logits_full_vocab_issue_trigger():
    # 2^27 and 2^27 + 16: adjacent floats. A `<=` skip rule skipped the column tying the best.
    logits = torch.tensor([[134217728.0, 134217744.0]])
    s, o = seed_pair(1151)
    want = reference.tilted_sample(logits, None, None, 1.0, 1.0, 0, 1.0, False, None, s, o)[0]
    cpu = mavis_ext.tilted_sample(logits, top_k=0, seed=1151)
    gpu = mavis_ext.tilted_sample(logits.cuda(), top_k=0, seed=1151)
    assert torch.equal(cpu, want) and torch.equal(gpu.cpu(), want)


@pytest.mark.parametrize("temperature", [1e-7, 1e-3])
def test_huge_scaled_logits_full_vocab_match_cpu(temperature):
    B, V = 512, 3000
    # integer-valued logits: many exact ties after scaling, broken by the noise and the lower column
    logits = torch.randint(-4, 4, (B, V), generator=gen(81)).float() * 1000.0
    values = randn((B, 1, V), seed=82)
    seeds = torch.arange(B) * 3 + 1
    for vals in (None, values):
        w = None if vals is None else torch.ones(1)
        cpu = mavis_ext.tilted_sample(logits, vals, w, beta=1e6, temperature=temperature, top_k=0, seed=seeds,
                                      return_logprobs=True)
        gpu = mavis_ext.tilted_sample(logits.cuda(), None if vals is None else vals.cuda(),
                                      None if w is None else w.cuda(), beta=1e6, temperature=temperature, top_k=0,
                                      seed=seeds.cuda(), return_logprobs=True)
        assert_tokens_match(gpu[0], cpu[0], MAX_MISMATCH)


# ----------------------------------------------------------------------------- top_p precision
def _boundary_case():
    """Logits and a top_p just above the mass ranked before column 3, such that float32(top_p) is
    below that mass: double comparisons keep column 3 (probability ~0.13), float ones drop it. The
    last two columns are banned, so the full row and its top 6 have the same keep set and masses."""
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, float("-inf"), float("-inf")])
    for _ in range(1000):
        x = logits[:6].double()
        lse = x.max() + torch.log(torch.exp(x - x.max()).sum())
        before3 = torch.exp(x[:3] - lse).sum().item()
        top_p = before3 + 1e-9
        if torch.tensor(top_p, dtype=torch.float32).item() < before3:
            return logits, top_p
        logits[5] -= 1e-3  # moves the masses slightly; retry
    raise AssertionError("no boundary case found")


def test_top_p_compared_in_double_matches_cpu():
    logits, top_p = _boundary_case()
    n = 4096
    rows = logits.expand(n, -1).contiguous()
    seeds = torch.arange(n) * 5 + 3
    for top_k in (0, 6):  # 0: slow path (nucleus over the whole row); 6: the fused top-k tail
        cpu = mavis_ext.tilted_sample(rows, top_k=top_k, top_p=top_p, seed=seeds, return_logprobs=True)
        gpu = mavis_ext.tilted_sample(rows.cuda(), top_k=top_k, top_p=top_p, seed=seeds.cuda(), return_logprobs=True)
        _same_samples(gpu, cpu)
        frac3 = (gpu[0] == 3).float().mean().item()
        p = torch.softmax(logits.double()[:4], 0)[3].item()  # column 3 is kept: 4 columns in the nucleus
        assert abs(frac3 - p) < 5 * (p * (1 - p) / n) ** 0.5, (top_k, frac3, p)


# ----------------------------------------------------------------------------- batch sizes / tiles
def test_more_rows_than_grid_y():
    B, N = 70000, 64  # > 65535 rows: several launches per op
    logits = randn((B, N), seed=91, scale=2.0)
    values = randn((B, 1, N), seed=92)
    w = torch.ones(1)
    seeds = torch.arange(B)
    g = [x.cuda() for x in (logits, values, w, seeds)]
    for kw in (dict(top_k=0), dict(top_k=8), dict(top_k=8, topk_on="tilted"), dict(top_k=0, top_p=0.9)):
        cpu = mavis_ext.tilted_sample(logits, values, w, beta=0.5, seed=seeds, return_logprobs=True, **kw)
        gpu = mavis_ext.tilted_sample(g[0], g[1], g[2], beta=0.5, seed=g[3], return_logprobs=True, **kw)
        _same_samples(gpu, cpu)
    cv, ci, cl = mavis_ext.topk_candidates(logits, 4)
    gv, gi, gl = mavis_ext.topk_candidates(g[0], 4)
    assert torch.equal(gi.cpu(), ci)
    _close(gl, cl, 2e-6)
    _close(mavis_ext.tilt_logits(g[0], g[1], g[2], beta=0.5), mavis_ext.tilt_logits(logits, values, w, beta=0.5), 1e-6)


def test_workspace_row_tiles_production_shape():
    # V = 262144, k = 256: 268 KiB of workspace per row, so B = 256 takes two row tiles of <= 64 MiB
    B, V, k = 256, 262144, 256
    logits = randn((B, V), seed=101, scale=3.0)
    values = randn((B, 2, V), seed=102, dtype=torch.bfloat16)
    w = torch.tensor([0.7, 0.3])
    seeds = torch.arange(B) + 11
    cv, ci, cl = mavis_ext.topk_candidates(logits, k)
    gv, gi, gl = mavis_ext.topk_candidates(logits.cuda(), k)
    assert torch.equal(gi.cpu(), ci)
    _close(gl, cl, 2e-6)
    for topk_on in ("base", "tilted"):
        kw = dict(beta=1.0, top_k=k, top_p=0.95, topk_on=topk_on, return_logprobs=True)
        cpu = mavis_ext.tilted_sample(logits, values, w, seed=seeds, **kw)
        gpu = mavis_ext.tilted_sample(logits.cuda(), values.cuda(), w.cuda(), seed=seeds.cuda(), **kw)
        _same_samples(gpu, cpu)


def test_production_shape_b1024_v128k():
    B, V = 1024, 128256
    logits = randn((B, V), seed=111, scale=3.0)
    cv, ci, cl = mavis_ext.topk_candidates(logits, 40, temperature=0.8)
    gv, gi, gl = mavis_ext.topk_candidates(logits.cuda(), 40, temperature=0.8)
    assert torch.equal(gi.cpu(), ci)
    _close(gl, cl, 2e-6)
    for kw in (dict(top_k=0), dict(top_k=40, top_p=0.9)):
        cpu = mavis_ext.tilted_sample(logits, temperature=0.8, seed=5, return_logprobs=True, **kw)
        gpu = mavis_ext.tilted_sample(logits.cuda(), temperature=0.8, seed=5, return_logprobs=True, **kw)
        _same_samples(gpu, cpu)


def test_slow_path_row_tiles():
    # 300 x 65536 > 2^24 elements: the slow paths run in two row tiles
    B, V = 300, 65536
    logits = randn((B, V), seed=121, scale=2.0)
    seeds = torch.arange(B) + 7
    cpu = mavis_ext.tilted_sample(logits, top_k=0, top_p=0.9, seed=seeds, return_logprobs=True)
    gpu = mavis_ext.tilted_sample(logits.cuda(), top_k=0, top_p=0.9, seed=seeds.cuda(), return_logprobs=True)
    _same_samples(gpu, cpu)
    cv, ci, cl = mavis_ext.topk_candidates(logits, 300)
    gv, gi, gl = mavis_ext.topk_candidates(logits.cuda(), 300)
    assert torch.equal(gi.cpu(), ci)
    _close(gl, cl, 2e-6)


# ----------------------------------------------------------------------------- streams / devices
def test_side_stream_matches_default_stream():
    B, V = 16, 5000
    logits = randn((B, V), seed=131, scale=2.0, device="cuda")
    values = randn((B, 2, V), seed=132, device="cuda")
    w = torch.tensor([0.5, 0.5], device="cuda")
    kw = dict(beta=1.0, top_k=20, top_p=0.9, seed=3, return_logprobs=True)
    base = mavis_ext.tilted_sample(logits, values, w, **kw)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        side = mavis_ext.tilted_sample(logits, values, w, **kw)
        bad = logits.clone()
        bad[3, 7] = float("nan")
        with pytest.raises(RuntimeError, match="logits: contains NaN"):
            mavis_ext.tilted_sample(bad, values, w, **kw)
    torch.cuda.current_stream().wait_stream(s)
    for a, b in zip(base, side):
        assert torch.equal(a, b)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_inputs_on_a_non_current_device():
    B, V = 8, 3000
    logits = randn((B, V), seed=141, scale=2.0)
    hidden, W = randn((B, 16), seed=142), randn((2, V, 16), seed=143, scale=0.3)
    w = torch.tensor([0.5, 0.5])
    on = lambda dev: [x.to(dev) for x in (logits, hidden, W, w)]
    want = mavis_ext.guided_sample(*on("cuda:0")[:3], None, on("cuda:0")[3], beta=1.0, top_k=10, seed=4)
    with torch.cuda.device(0):
        got = mavis_ext.guided_sample(*on("cuda:1")[:3], None, on("cuda:1")[3], beta=1.0, top_k=10, seed=4)
    assert got.device == torch.device("cuda:1")
    assert torch.equal(got.cpu(), want.cpu())
    with torch.cuda.device(0):
        got = mavis_ext.tilted_sample(on("cuda:1")[0], top_k=0, seed=4)
    assert torch.equal(got.cpu(), mavis_ext.tilted_sample(logits, top_k=0, seed=4))


# ----------------------------------------------------------------------------- error priority
def _message(fn):
    try:
        fn()
    except (RuntimeError, ValueError) as e:
        return str(e).splitlines()[0]
    return None


def test_error_priority_with_several_bad_rows():
    B, V = 6, 600
    base = randn((B, V), seed=151, scale=2.0)
    values = randn((B, 1, V), seed=152)
    w = torch.ones(1)
    nan_v = values.clone()
    nan_v[3, 0, :] = float("nan")  # row 3: non-finite tilted scores

    def bad_logits(nan, pinf, ninf):
        x = base.clone()
        if nan:
            x[2, 5] = float("nan")
        if pinf:
            x[1, 9] = float("inf")
        if ninf:
            x[4] = float("-inf")
        return x

    cases = [  # the reference raises for the first bad kind in its check order
        (bad_logits(True, True, True), nan_v),    # logits: contains NaN
        (bad_logits(False, True, True), nan_v),   # logits: contains +inf
        (bad_logits(False, False, True), nan_v),  # logits: a row has no finite entry
        (base, nan_v),                            # values: tilted scores are not finite
    ]
    for logits, vals in cases:
        for kw in (dict(top_k=0), dict(top_k=20), dict(top_k=20, topk_on="tilted"), dict(top_k=300),
                   dict(top_k=0, top_p=0.9)):
            on_tilted, top_p = kw.get("topk_on") == "tilted", kw.get("top_p", 1.0)
            want = _message(lambda: reference.tilted_sample(logits, vals, w, 1.0, 1.0, kw["top_k"], top_p, on_tilted,
                                                            None, *seed_pair(1)))
            got = _message(lambda: mavis_ext.tilted_sample(logits.cuda(), vals.cuda(), w.cuda(), seed=1, **kw))
            assert want is not None and got == want, (kw, got, want)
        for k in (5, 300):
            want = _message(lambda: reference.topk_candidates(logits, k, 1.0))
            got = _message(lambda: mavis_ext.topk_candidates(logits.cuda(), k))
            assert got == want, (k, got, want)
