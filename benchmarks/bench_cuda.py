"""GPU benchmark of the mavis CUDA kernels (needs a CUDA device; exits with status 2 without one).

Measures, in one run on one card:
  * the card's device-to-device copy bandwidth (bytes read + written / time), the yardstick;
  * each kernel's time with CUDA events (eager, with the default status check: one small copy and a
    stream sync per call; and eager with mark_invalid=True: no copy, no sync) and as CUDA-graph
    replays, warm and cold L2 (cold: a 512 MiB buffer is overwritten between calls, outside the
    timed region);
  * achieved GB/s over the bytes that must be read once, and the ratio time / floor, where
    floor = those bytes / measured copy bandwidth;
  * the speedup over the eager PyTorch composite doing the same work (same timing method);
  * that every op can be captured in a CUDA graph and replays to the eager result.

Cases: tilted_sample full-vocab fp32 logits, m=3 bf16 values, top_k=40, V=128256 at
B in {1, 8, 32, 128}; guided_sample V=128256, d=2048, m=3, K=40; topk_candidates B=128, V=128256
against torch.topk.

    python benchmarks/bench_cuda.py [--out DIR] [--quick]

Prints a Markdown table last and writes bench_cuda.json / bench_cuda.md under --out (default $OUT
or ./bench_out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

V = 128256
M = 3
K = 40
D = 2048
BETA = 1.5
TEMP = 0.8


# ----------------------------------------------------------------------------- timing helpers
class Flusher:
    """Overwrites a buffer larger than L2 so the next kernel starts with a cold cache."""

    def __init__(self, nbytes: int = 512 << 20):
        self.buf = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")

    def __call__(self):
        self.buf.fill_(1.0)


def time_events(fn, iters: int, flush=None) -> float:
    """Median microseconds of fn() between two events, one measurement per call."""
    times = []
    for _ in range(iters):
        if flush is not None:
            flush()
        s = torch.cuda.Event(enable_timing=True)
        e = torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e3)
    return statistics.median(times)


def capture(fn):
    """A CUDA graph of fn() (warmed up on a side stream first), or raises."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    return g, out


def time_graph(g, iters: int, flush=None) -> float:
    """Median microseconds of one replay (warm: back to back; cold: flush between replays)."""
    if flush is None:
        g.replay()
        torch.cuda.synchronize()
        reps = []
        for _ in range(5):
            s = torch.cuda.Event(enable_timing=True)
            e = torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(iters):
                g.replay()
            e.record()
            e.synchronize()
            reps.append(s.elapsed_time(e) * 1e3 / iters)
        return statistics.median(reps)
    return time_events(g.replay, iters, flush)


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written)."""
    n = 1 << 28  # 1 GiB of fp32
    x = torch.randn(n, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    us = time_events(lambda: y.copy_(x), 20)
    del x, y
    return 2 * n * 4 / (us * 1e-6) / 1e9


# ----------------------------------------------------------------------------- composites
def composite_tilted(logits, values, w, k):
    """Eager PyTorch doing what tilted_sample(top_k=k, topk_on='base') does."""
    base = logits.float() / TEMP
    top, idx = base.topk(k, dim=-1)
    v = values.gather(2, idx[:, None, :].expand(-1, values.shape[1], -1)).float()
    t = top + BETA * (w.view(1, -1, 1) * v).sum(1)
    p = torch.softmax(t, dim=-1)
    q = torch.empty_like(p).exponential_()
    pos = (p / q).argmax(-1, keepdim=True)
    tok = idx.gather(1, pos)[:, 0]
    logp_t = torch.log(p.gather(1, pos))[:, 0]
    logp_b = top.gather(1, pos)[:, 0] - torch.logsumexp(base, -1)
    return tok, logp_t, logp_b


def composite_guided(logits, hidden, W, bias, w, k):
    base = logits.float() / TEMP
    top, idx = base.topk(k, dim=-1)
    rows = W[:, idx]  # [m, B, k, d]
    vals = torch.einsum("mbkd,bd->bmk", rows.float(), hidden.float()) + bias.float()[:, idx].permute(1, 0, 2)
    t = top + BETA * (w.view(1, -1, 1) * vals).sum(1)
    p = torch.softmax(t, dim=-1)
    q = torch.empty_like(p).exponential_()
    pos = (p / q).argmax(-1, keepdim=True)
    return idx.gather(1, pos)[:, 0], torch.log(p.gather(1, pos))[:, 0], top.gather(1, pos)[:, 0] - torch.logsumexp(base, -1)


# ----------------------------------------------------------------------------- cases
def run_case(name, fn, ref_fn, floor_bytes, bw_gbs, iters, flush, results, extra=None, fn_nosync=None):
    """fn: the op as called by default (eager status check); fn_nosync: the same with mark_invalid=True."""
    row = {"case": name, "floor_bytes": floor_bytes}
    if extra:
        row.update(extra)
    torch.cuda.synchronize()
    for _ in range(5):
        fn()
        ref_fn()
    torch.cuda.synchronize()
    row["eager_warm_us"] = time_events(fn, iters)
    row["eager_cold_us"] = time_events(fn, iters, flush)
    if fn_nosync is not None:
        row["eager_nosync_warm_us"] = time_events(fn_nosync, iters)
    row["torch_eager_warm_us"] = time_events(ref_fn, iters)
    row["torch_eager_cold_us"] = time_events(ref_fn, iters, flush)
    try:
        eager_out = fn()
        g, graph_out = capture(fn)
        g.replay()
        torch.cuda.synchronize()
        same = all(torch.equal(a, b) for a, b in zip(eager_out, graph_out)) if isinstance(eager_out, tuple) else torch.equal(eager_out, graph_out)
        row["graph_capturable"] = True
        row["graph_matches_eager"] = bool(same)
        row["graph_warm_us"] = time_graph(g, iters)
        row["graph_cold_us"] = time_graph(g, iters, flush)
        del g
    except Exception as e:  # report, do not hide
        row["graph_capturable"] = False
        row["graph_error"] = f"{type(e).__name__}: {e}"
    try:
        g2, _ = capture(ref_fn)
        row["torch_graph_warm_us"] = time_graph(g2, iters)
        row["torch_graph_cold_us"] = time_graph(g2, iters, flush)
        del g2
    except Exception as e:
        row["torch_graph_error"] = f"{type(e).__name__}: {e}"
    floor_us = floor_bytes / (bw_gbs * 1e9) * 1e6
    row["floor_us"] = floor_us
    best = row.get("graph_cold_us", row["eager_cold_us"])
    row["cold_GBps"] = floor_bytes / (best * 1e-6) / 1e9
    row["cold_ratio_to_floor"] = best / floor_us
    tb = row.get("torch_graph_cold_us", row["torch_eager_cold_us"])
    row["speedup_vs_torch_cold"] = tb / best
    results.append(row)
    print(json.dumps(row), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA device; nothing measured", file=sys.stderr)
        return 2
    import mavis_ext

    if not mavis_ext.has_cuda_kernels():
        print("bench_cuda: mavis_ext was built without CUDA kernels", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    iters = 20 if args.quick else 60
    ops = torch.ops.mavis
    dev = torch.device("cuda")
    card = torch.cuda.get_device_name(0)
    t0 = time.time()
    bw = copy_bandwidth()
    print(f"card: {card}; copy bandwidth {bw:.0f} GB/s (read + write)", flush=True)
    flush = Flusher()
    results: list = []
    gen = torch.Generator(device=dev).manual_seed(0)
    seed = torch.randint(0, 2**62, (1,), device=dev, dtype=torch.int64, generator=gen)
    offset = torch.zeros(1, device=dev, dtype=torch.int64)

    for B in (1, 8, 32, 128):
        logits = torch.randn(B, V, device=dev, generator=gen) * 3
        values = torch.randn(B, M, V, device=dev, generator=gen).to(torch.bfloat16)
        w = torch.rand(M, device=dev, generator=gen) + 0.1

        def fn(logits=logits, values=values, w=w, mark=False):
            return ops.tilted_sample.default(logits, values, w, BETA, TEMP, K, 1.0, False, None, seed, offset, mark)

        def ref(logits=logits, values=values, w=w):
            return composite_tilted(logits, values, w, K)

        floor = B * V * 4 + B * M * K * 2  # logits once + the gathered values of the kept columns
        run_case(f"tilted_sample B={B} fp32 logits, m=3 bf16 values, top_k={K}", fn, ref, floor, bw, iters, flush,
                 results, {"B": B, "op": "tilted_sample", "floor_bytes_all_values": B * V * (4 + 2 * M)},
                 fn_nosync=lambda fn=fn: fn(mark=True))
        del logits, values

    B = 32
    logits = torch.randn(B, V, device=dev, generator=gen) * 3
    hidden = torch.randn(B, D, device=dev, generator=gen).to(torch.bfloat16)
    W = (torch.randn(M, V, D, device=dev, generator=gen) * 0.02).to(torch.bfloat16)
    bias = (torch.randn(M, V, device=dev, generator=gen) * 0.1).to(torch.bfloat16)
    w = torch.rand(M, device=dev, generator=gen) + 0.1

    def gfn(mark=False):
        return ops.guided_sample.default(logits, hidden, W, bias, w, BETA, K, TEMP, 1.0, seed, offset, mark)

    def gref():
        return composite_guided(logits, hidden, W, bias, w, K)

    floor = B * V * 4 + B * M * K * D * 2 + B * D * 2 + B * M * K * 2
    run_case(f"guided_sample B={B} V={V} d={D} m={M} K={K} bf16 heads", gfn, gref, floor, bw, iters, flush, results,
             {"B": B, "op": "guided_sample"}, fn_nosync=lambda: gfn(True))
    del W, bias, hidden

    B = 128
    logits = torch.randn(B, V, device=dev, generator=gen) * 3

    def tfn(mark=False):
        return ops.topk_candidates.default(logits, K, 1.0, mark)

    def tref():
        return torch.topk(logits, K, dim=-1)

    run_case(f"topk_candidates B={B} V={V} k={K} fp32 (vs torch.topk)", tfn, tref, B * V * 4, bw, iters, flush,
             results, {"B": B, "op": "topk_candidates"}, fn_nosync=lambda: tfn(True))

    meta = {"card": card, "copy_bandwidth_GBps": bw, "torch": torch.__version__, "cuda": torch.version.cuda,
            "seconds": time.time() - t0, "checks_env": os.environ.get("MAVIS_CUDA_CHECKS", "1")}
    with open(os.path.join(args.out, "bench_cuda.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    lines = [
        f"card: {card}, copy bandwidth {bw:.0f} GB/s; times in us (median); cold = L2 flushed; "
        "graph = CUDA-graph replay; floor = must-read bytes / copy bandwidth",
        "",
        "| case | graph warm | graph cold | eager cold | eager warm, no sync | floor | cold / floor | GB/s "
        "| torch cold | speedup | graph ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        gw = r.get("graph_warm_us", float("nan"))
        gc = r.get("graph_cold_us", float("nan"))
        tb = r.get("torch_graph_cold_us", r["torch_eager_cold_us"])
        ok = "yes" if r.get("graph_capturable") and r.get("graph_matches_eager") else "NO"
        ns = r.get("eager_nosync_warm_us", float("nan"))
        lines.append(
            f"| {r['case']} | {gw:.1f} | {gc:.1f} | {r['eager_cold_us']:.1f} | {ns:.1f} | {r['floor_us']:.1f} | "
            f"{r['cold_ratio_to_floor']:.2f} | {r['cold_GBps']:.0f} | {tb:.1f} | {r['speedup_vs_torch_cold']:.1f}x | {ok} |"
        )
    table = "\n".join(lines)
    with open(os.path.join(args.out, "bench_cuda.md"), "w") as f:
        f.write(table + "\n")
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
