"""CUDA-graph capture of the ops, and what an eager call costs in synchronisation.

* Every op and code path (fused and slow) captures, and a replay equals the eager call on the same
  inputs, also after the inputs were overwritten in place.
* Capturable call forms of the sampling ops: seed/offset tensors (one per batch or per row), the
  default CUDA generator (seed=None: every replay draws fresh seeds on the device), and seed=int.
* Bad rows under capture cannot raise: they come back marked (id -1, NaN log-probs) and the other
  rows are unaffected; MAVIS_CUDA_CHECKS=0 does the same in eager mode.
* mark_invalid=True is sync-free in eager mode (torch's sync debug mode sees the status check's
  copy-and-sync of the default mode).
* An eager call with the status check on one stream does not invalidate a global-mode capture
  running on another stream.
* torch.compile(mode="reduce-overhead") (CUDA graphs through cudagraph trees) equals eager.
Skipped without a GPU.
"""

import pytest
import torch

import mavis_ext
from conftest import gen, randn

CUDA = torch.cuda.is_available() and mavis_ext.has_cuda_kernels()
pytestmark = pytest.mark.skipif(not CUDA, reason="needs a GPU and the CUDA kernels")
ops = torch.ops.mavis

B, V, M, D = 6, 3000, 2, 32


def _capture(fn):
    """Warm fn up on a side stream, then capture it into a graph; returns (graph, outputs)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


def _inputs(s=0):
    d = "cuda"
    return dict(
        logits=randn((B, V), seed=s + 1, scale=2.5, device=d),
        values=randn((B, M, V), seed=s + 2, device=d),
        w=(torch.rand(B, M, generator=gen(s + 3)) + 0.1).to(d),
        hidden=randn((B, D), seed=s + 4, device=d),
        W=randn((M, V, D), seed=s + 5, scale=0.2, device=d),
        bias=randn((M, V), seed=s + 6, device=d),
        hidden3=randn((B, 5, D), seed=s + 7, device=d),
        Wp=randn((M, D), seed=s + 8, device=d),
        ids=torch.randint(0, V, (B, 9), generator=gen(s + 9)).to(d),
        seed=torch.arange(B, device=d, dtype=torch.int64) + 100,
        seed1=torch.tensor([77], device=d),
        offset=torch.zeros(B, device=d, dtype=torch.int64),
        offset1=torch.zeros(1, device=d, dtype=torch.int64),
        mark=False,  # mark_invalid of the sampling / top-k ops
    )


# Every op and path, through the raw ops with device seed tensors (the always-capturable form).
PATHS = {
    "topk_k40": lambda x: ops.topk_candidates(x["logits"], 40, 0.9, x["mark"]),
    "topk_k300_slow": lambda x: ops.topk_candidates(x["logits"], 300, 0.9, x["mark"]),
    "value_heads_prefix": lambda x: (ops.value_heads(x["hidden3"], x["Wp"], None, None, x["w"]),),
    "value_heads_qhead": lambda x: (ops.value_heads(x["hidden"], x["W"], x["bias"], x["ids"], None),),
    "tilt_logits": lambda x: (ops.tilt_logits(x["logits"], x["values"], x["w"], 1.5, 0.9),),
    "tilted_full": lambda x: ops.tilted_sample(x["logits"], x["values"], x["w"], 1.5, 0.9, 0, 1.0, False, None,
                                               x["seed"], x["offset"], x["mark"]),
    "tilted_k40_base_p": lambda x: ops.tilted_sample(x["logits"], x["values"], x["w"], 1.5, 0.9, 40, 0.9, False,
                                                     None, x["seed1"], x["offset1"], x["mark"]),
    "tilted_k40_tilted": lambda x: ops.tilted_sample(x["logits"], x["values"], x["w"], 1.5, 0.9, 40, 1.0, True,
                                                     None, x["seed"], x["offset"], x["mark"]),
    "tilted_k300_slow": lambda x: ops.tilted_sample(x["logits"], x["values"], x["w"], 1.5, 0.9, 300, 0.95, False,
                                                    None, x["seed"], x["offset"], x["mark"]),
    "tilted_full_p_slow": lambda x: ops.tilted_sample(x["logits"], None, None, 1.0, 0.9, 0, 0.8, False, None,
                                                      x["seed1"], x["offset1"], x["mark"]),
    "guided_k8": lambda x: ops.guided_sample(x["logits"], x["hidden"], x["W"], x["bias"], x["w"], 1.5, 8, 0.9,
                                             0.9, x["seed"], x["offset"], x["mark"]),
    "guided_k300_slow": lambda x: ops.guided_sample(x["logits"], x["hidden"], x["W"], x["bias"], x["w"], 1.5,
                                                    300, 0.9, 1.0, x["seed1"], x["offset1"], x["mark"]),
}


def _equal(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y) or torch.allclose(x, y, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("path", list(PATHS))
def test_capture_and_replay_equal_eager(path):
    x = _inputs()
    fn = lambda: PATHS[path](x)
    g, out = _capture(fn)
    g.replay()
    torch.cuda.synchronize()
    _equal(out, fn())
    # the graph reads its inputs where they live: overwrite them in place and replay
    new = _inputs(50)
    for k in x:
        if isinstance(x[k], torch.Tensor):
            x[k].copy_(new[k])
    g.replay()
    torch.cuda.synchronize()
    _equal(out, fn())


@pytest.mark.parametrize("form", ["per_row", "one", "int"])
def test_call_forms_with_a_seed(form):
    # seed= an int64 CUDA tensor (per row or one) or an int: replays equal eager. The int form needs
    # make_seed to build the seed on the device (torch.full), not by a pageable host copy.
    x = _inputs()
    lg, vals, w = x["logits"], x["values"], x["w"]
    seed = {"per_row": x["seed"], "one": x["seed1"], "int": 1234}[form]
    fn = lambda: mavis_ext.tilted_sample(lg, vals, w, beta=1.0, top_k=20, seed=seed, return_logprobs=True)
    g, out = _capture(fn)
    g.replay()
    torch.cuda.synchronize()
    _equal(out, fn())


def test_call_form_default_generator():
    # default CUDA generator: every replay draws fresh seeds on the device (no host copy)
    flat = torch.zeros(64, 5000, device="cuda")
    g, ids = _capture(lambda: mavis_ext.tilted_sample(flat, top_k=0))
    draws = []
    for _ in range(3):
        g.replay()
        torch.cuda.synchronize()
        draws.append(ids.clone())
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert ((draws[0] >= 0) & (draws[0] < 5000)).all()


def _poisoned(x):
    lg = x["logits"].clone()
    lg[1, 10] = float("nan")
    lg[4] = float("-inf")
    return lg


@pytest.mark.parametrize("path", ["tilted_full", "tilted_k40_base_p", "tilted_k300_slow", "guided_k8",
                                  "guided_k300_slow", "topk_k40", "topk_k300_slow"])
def test_bad_rows_under_capture_are_marked(path):
    x = _inputs()
    clean = PATHS[path](x)
    g, out = _capture(lambda: PATHS[path](x))  # captured on clean data: no raise possible anyway
    x["logits"].copy_(_poisoned(x))  # rows 1 and 4 turn bad before the replay
    g.replay()
    torch.cuda.synchronize()
    ids = out[1] if path.startswith("topk") else out[0]
    good = torch.tensor([0, 2, 3, 5], device="cuda")
    assert (ids[1] == -1).all() and (ids[4] == -1).all()
    for o, c in zip(out, clean):
        if o.dtype.is_floating_point:
            assert torch.isnan(o[1]).all() and torch.isnan(o[4]).all()
        assert torch.equal(o[good], c[good])  # the other rows are unaffected
    # eager on the poisoned batch with mark_invalid=True gives what the replay gave
    _equal(PATHS[path]({**x, "mark": True}), out)


def test_checks_off_and_mark_invalid_in_eager(monkeypatch):
    x = _inputs()
    bad = _poisoned(x)
    call = lambda lg, mark=False: ops.tilted_sample(lg, x["values"], x["w"], 1.0, 1.0, 40, 1.0, False, None,
                                                    x["seed"], x["offset"], mark)
    with pytest.raises(RuntimeError, match="logits: contains NaN"):
        call(bad)
    marked = call(bad, True)
    assert marked[0][1] == -1 and marked[0][4] == -1 and torch.isnan(marked[1][[1, 4]]).all()
    monkeypatch.setenv("MAVIS_CUDA_CHECKS", "0")
    off = call(bad)  # no check, no raise: the same marked rows
    _equal(off, marked)
    monkeypatch.delenv("MAVIS_CUDA_CHECKS")
    with pytest.raises(RuntimeError, match="logits: contains NaN"):
        call(bad)


def test_mark_invalid_is_sync_free():
    x = _inputs()
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        for path_args in (
            lambda m: ops.tilted_sample(x["logits"], x["values"], x["w"], 1.0, 1.0, 40, 0.9, False, None, x["seed"],
                                        x["offset"], m),
            lambda m: ops.tilted_sample(x["logits"], None, None, 1.0, 1.0, 0, 0.9, False, None, x["seed1"],
                                        x["offset1"], m),
            lambda m: ops.guided_sample(x["logits"], x["hidden"], x["W"], x["bias"], x["w"], 1.0, 8, 1.0, 1.0,
                                        x["seed"], x["offset"], m),
            lambda m: ops.topk_candidates(x["logits"], 40, 1.0, m),
        ):
            path_args(True)  # no synchronising call
            with pytest.raises(RuntimeError, match="synchroniz"):
                path_args(False)  # the default mode copies the status back and syncs
    finally:
        torch.cuda.set_sync_debug_mode(prev)


def test_eager_checked_call_during_global_capture_on_another_stream():
    x = _inputs()
    other = torch.cuda.Stream()
    eager_fn = lambda: mavis_ext.tilted_sample(x["logits"], x["values"], x["w"], beta=1.0, top_k=40, seed=x["seed"],
                                               return_logprobs=True)
    with torch.cuda.stream(other):  # warm the allocator for `other` (no cudaMalloc during capture)
        want = eager_fn()
    torch.cuda.synchronize()
    fn = lambda: PATHS["guided_k8"](x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, capture_error_mode="global"):
        out = fn()
        with torch.cuda.stream(other):
            got = eager_fn()  # status check: a copy and a sync of `other`, in relaxed mode
    torch.cuda.synchronize()
    _equal(got, want)
    g.replay()
    torch.cuda.synchronize()
    _equal(out, fn())


def test_torch_compile_reduce_overhead():
    x = _inputs()

    def step(logits, values, w, hidden, W, bias, seed, offset):
        a = ops.tilted_sample(logits, values, w, 1.5, 0.9, 40, 0.9, False, None, seed, offset, True)
        g = ops.guided_sample(logits, hidden, W, bias, w, 1.5, 8, 0.9, 1.0, seed, offset, True)
        c = ops.topk_candidates(logits, 16, 0.9, True)
        return (*a, *g, *c)

    args = (x["logits"], x["values"], x["w"], x["hidden"], x["W"], x["bias"], x["seed"], x["offset"])
    eager = step(*args)
    torch._dynamo.reset()
    compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, record, replay
        out = compiled(*args)
    torch.cuda.synchronize()
    for e, c in zip(eager, out):
        torch.testing.assert_close(c, e, rtol=0, atol=0)
