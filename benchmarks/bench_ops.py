"""Op benchmark: each fused mavis op against the eager PyTorch composite a user writes today, side by
side in one run (median of repeats after warmup), printed as a Markdown table and written as JSON.

    python benchmarks/bench_ops.py --device cpu --threads 2 [--quick] [--json out.json]

``run_benchmarks(device, threads, quick)`` and ``format_table(rows)`` are importable (the demo prints
the same table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eager  # noqa: E402

import mavis_ext  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, warmup: int, repeats: int, budget_s: float = 5.0) -> float:
    """Median wall time of fn() in milliseconds (repeats stop early after budget_s seconds)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return statistics.median(times)


def _inputs(B, V, m, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, V, generator=g) * 3.0).to(dtype=dtype, device=device)
    values = torch.randn(B, m, V, generator=g).to(dtype=dtype, device=device)
    weights = torch.rand(m, generator=g).to(device)
    return logits, values, weights


def _heads(B, V, m, d, dtype, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, d, generator=g).to(dtype=dtype, device=device)
    W = (torch.randn(m, V, d, generator=g) * d ** -0.5).to(dtype=dtype, device=device)
    b = (torch.randn(m, V, generator=g) * 0.1).to(dtype=dtype, device=device)
    return hidden, W, b


def _configs(quick: bool):
    """(op, label, dtype, setup) where setup(device) -> (fused_fn, [(eager_name, eager_fn), ...])."""
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    cfgs = []

    def tilted(B, V, m, k, dtype, top_p=1.0, topk_on="base"):
        def setup(device):
            logits, values, w = _inputs(B, V, m, dtype, device)
            kw = dict(beta=1.0, top_k=k, top_p=top_p, topk_on=topk_on)
            seed = torch.tensor([1], device=device)
            fused = lambda: mavis_ext.tilted_sample(logits, values, w, seed=seed, **kw)
            return fused, [("tilt+topk+softmax+multinomial", lambda: eager.tilted_sample(logits, values, w, **kw))]

        extra = "".join([f", top_p={top_p}" if top_p < 1 else "", ", topk_on=tilted" if topk_on == "tilted" else ""])
        return ("tilted_sample", f"B={B}, V={V}, m={m}, top_k={k}{extra}", dtype, setup)

    def guided(B, V, m, d, K, dtype, full_heads=True):
        def setup(device):
            logits, _, w = _inputs(B, V, m, dtype, device)
            hidden, W, b = _heads(B, V, m, d, dtype, device)
            seed = torch.tensor([1], device=device)
            fused = lambda: mavis_ext.guided_sample(logits, hidden, W, b, w, beta=1.0, top_k=K, seed=seed)
            eagers = [("topk+gather-einsum+tilt+softmax+multinomial",
                       lambda: eager.guided_sample_gather(logits, hidden, W, b, w, top_k=K))]
            if full_heads:
                eagers.append(("full V-wide heads (hidden@W.T)+topk+tilt+multinomial",
                               lambda: eager.guided_sample_full_heads(logits, hidden, W, b, w, top_k=K)))
            return fused, eagers

        return ("guided_sample", f"B={B}, V={V}, d={d}, m={m}, K={K}", dtype, setup)

    def topk(B, V, k, dtype):
        def setup(device):
            logits, _, _ = _inputs(B, V, 1, dtype, device)
            fused = lambda: mavis_ext.topk_candidates(logits, k)
            return fused, [("torch.topk+logsumexp", lambda: eager.topk_candidates(logits, k))]

        return ("topk_candidates", f"B={B}, V={V}, k={k}", dtype, setup)

    def qheads(B, V, m, d, K, dtype):
        def setup(device):
            _, _, w = _inputs(B, 8, m, dtype, device)
            hidden, W, b = _heads(B, V, m, d, dtype, device)
            ids = torch.randint(0, V, (B, K), generator=torch.Generator().manual_seed(2)).to(device)
            fused = lambda: mavis_ext.value_heads(hidden, W, b, candidate_ids=ids, weights=w)
            return fused, [("gather+einsum+weighted sum", lambda: eager.value_heads_gather(hidden, W, b, ids, w))]

        return ("value_heads (Q-head)", f"B={B}, V={V}, d={d}, m={m}, K={K}", dtype, setup)

    # the three configurations of the targets (issue 2)
    cfgs.append(tilted(32, 32000, 3, 40, f32))
    cfgs.append(guided(32, 32000, 3, 512, 40, f32))
    cfgs.append(topk(32, 128256, 40, f32))
    # further rows
    cfgs.append(tilted(32, 32000, 3, 40, f32, topk_on="tilted"))
    cfgs.append(tilted(32, 32000, 3, 40, f32, top_p=0.9))
    cfgs.append(tilted(32, 32000, 3, 40, bf16))
    cfgs.append(tilted(1, 32000, 3, 40, f32))
    if not quick:
        cfgs.append(tilted(32, 32000, 3, 0, f32))
        cfgs.append(tilted(32, 32000, 3, 40, f16))
        cfgs.append(guided(32, 32000, 3, 512, 40, bf16, full_heads=False))
        cfgs.append(guided(1, 32000, 3, 512, 40, f32, full_heads=False))
        cfgs.append(topk(32, 128256, 40, bf16))
        cfgs.append(topk(1, 128256, 40, f32))
        cfgs.append(qheads(32, 32000, 3, 512, 40, f32))
    return cfgs


def run_benchmarks(device: str = "cpu", threads: int | None = None, quick: bool = False) -> list[dict]:
    """Time every configuration; returns one dict per (fused op, eager composite) pair."""
    if threads:
        torch.set_num_threads(threads)
    warmup, repeats = (2, 7) if quick else (5, 30)
    budget = 1.0 if quick else 5.0
    rows = []
    configs = list(_configs(quick))
    # Wake the thread pool and the allocator before the first measured row: without this the first
    # fused timing came out ~1.5x slower than on a rerun of the same configuration.
    fused, eagers = configs[0][3](device)
    time_ms(fused, device, warmup, repeats, budget)
    time_ms(eagers[0][1], device, warmup, repeats, budget)
    del fused, eagers
    for op, label, dtype, setup in configs:
        fused, eagers = setup(device)
        fused_ms = time_ms(fused, device, warmup, repeats, budget)
        for name, fn in eagers:
            eager_ms = time_ms(fn, device, warmup, repeats, budget)
            rows.append(dict(op=op, config=label, dtype=str(dtype).replace("torch.", ""), fused_ms=fused_ms,
                             eager=name, eager_ms=eager_ms, speedup=eager_ms / fused_ms))
        del fused, eagers
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| op | config | dtype | fused (ms) | eager composite | eager (ms) | speedup |",
             "|---|---|---|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['config']} | {r['dtype']} | {r['fused_ms']:.3f} | {r['eager']} | "
                     f"{r['eager_ms']:.3f} | {r['speedup']:.1f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    ap.add_argument("--quick", action="store_true", help="fewer configurations and repeats (< 20 s on CPU)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_ops: CUDA requested but not available", file=sys.stderr)
        return 2
    if not mavis_ext.HAS_C:
        print("bench_ops: warning: the compiled extension is missing; timing the reference", file=sys.stderr)
    t0 = time.time()
    rows = run_benchmarks(args.device, args.threads, args.quick)
    info = dict(device=args.device, threads=torch.get_num_threads(), torch=torch.__version__,
                machine=platform.processor() or platform.machine(), compiled=mavis_ext.HAS_C,
                cuda_device=torch.cuda.get_device_name() if args.device == "cuda" else None,
                seconds=round(time.time() - t0, 1))
    print(f"device={info['device']} threads={info['threads']} torch={info['torch']} ({info['seconds']} s)\n")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(info=info, rows=rows), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
