"""A small case of every CUDA code path of the mavis ops, for compute-sanitizer memcheck
(benchmarks/gpu_check.sh step 4): fused and slow paths of every op, fp32/bf16, aligned and
unaligned rows (scalar loads), fp32 value-head rows of d = 12 (partial 16-byte granules), head
weights read through non-canonical strides, rows with fewer finite logits than k, the top-k merge
beyond its shared-memory staging, more rows than one grid dimension holds, mark_invalid rows, and
the eager error of a bad row. Shapes are small: memcheck slows kernels down 10-100x.

    compute-sanitizer --tool memcheck --error-exitcode 9 python3 benchmarks/gpu_sanitize_cases.py
    python3 benchmarks/gpu_sanitize_cases.py --device cpu   # the same calls on the CPU kernels
"""

from __future__ import annotations

import argparse
import sys

import torch

import mavis_ext as mx


def run(d: str) -> None:
    torch.manual_seed(0)
    ops = torch.ops.mavis
    for dt in (torch.float32, torch.bfloat16):
        for B, V in ((3, 1000), (2, 5003)):  # 5003: rows not 16-byte aligned (scalar loads)
            lg = (torch.randn(B, V, device=d) * 3).to(dt)
            vals = torch.randn(B, 2, V, device=d).to(dt)
            w = torch.rand(2, device=d)
            mx.topk_candidates(lg, 7, temperature=0.7)
            mx.topk_candidates(lg, 300, temperature=0.7)  # slow path (k > 256)
            mx.tilt_logits(lg, vals, w, beta=0.5)
            for top_k, top_p, on in ((40, 1.0, "base"), (40, 0.9, "tilted"), (0, 1.0, "base"), (0, 0.8, "base"),
                                     (300, 0.95, "base")):
                mx.tilted_sample(lg, vals, w, beta=0.5, temperature=0.9, top_k=top_k, top_p=top_p, topk_on=on, seed=1,
                                 return_logprobs=True)
            mx.tilted_sample(lg[:, : V // 2], vals[:, :, : V // 2], w, beta=0.5, top_k=5, seed=2)  # row-strided views
            for dd in (12, 64):  # fp32 d = 12: the last granule of each row is half outside it
                hid = torch.randn(B, dd, device=d).to(dt)
                Wq = torch.randn(2, V, dd, device=d).to(dt)
                bq = torch.randn(2, V, device=d).to(dt)
                ids = torch.randint(0, V, (B, 9), device=d)
                mx.value_heads(hid, Wq, bq, candidate_ids=ids, weights=w)
                mx.value_heads(hid, Wq, bq, candidate_ids=ids)
                mx.value_heads(torch.randn(B, 5, dd, device=d).to(dt), torch.randn(2, dd, device=d).to(dt),
                               torch.randn(2, device=d).to(dt))
                mx.guided_sample(lg, hid, Wq, bq, w, beta=0.7, top_k=12, top_p=0.9, seed=3, return_logprobs=True)
                mx.guided_sample(lg, hid, Wq, bq, w, beta=0.7, top_k=260, seed=3, return_logprobs=True)
            Wt = torch.randn(64, V, 2, device=d).to(dt).permute(2, 1, 0)  # no unit stride along d
            mx.guided_sample(lg, torch.randn(B, 64, device=d).to(dt), Wt, None, w, beta=0.7, top_k=12, seed=3)
    # fewer finite logits than k, spread over chunks; the merge beyond its staging (all-equal rows)
    sparse = torch.full((3, 40000), float("-inf"), device=d)
    sparse[0, ::1500] = 1.0
    sparse[1, -5:] = 2.0
    sparse[2, 7] = 0.5
    mx.topk_candidates(sparse, 256)
    mx.topk_candidates(sparse, 30)
    mx.guided_sample(sparse, torch.randn(3, 16, device=d), torch.randn(1, 40000, 16, device=d), None, None, beta=1.0,
                     top_k=100, seed=4)
    mx.topk_candidates(torch.zeros(1, 128256, device=d), 256)
    # more rows than grid y holds
    big = torch.randn(65600, 16, device=d)
    mx.tilted_sample(big, top_k=4, seed=5)
    mx.tilted_sample(big, top_k=0, seed=5)
    mx.topk_candidates(big, 3)
    # mark_invalid: bad rows on every path, no raise
    lg = torch.randn(4, 3000, device=d)
    lg[1, 5] = float("nan")
    lg[2] = float("-inf")
    vals = torch.randn(4, 1, 3000, device=d)
    vals[3] = float("nan")
    w1 = torch.ones(1, device=d)
    s, o = mx.make_seed(device=d, seed=torch.arange(4, device=d), batch=4)
    for top_k, top_p in ((0, 1.0), (20, 0.9), (300, 1.0), (0, 0.9)):
        ops.tilted_sample(lg, vals, w1, 1.0, 1.0, top_k, top_p, False, None, s, o, True)
    ops.topk_candidates(lg, 20, 1.0, True)
    ops.topk_candidates(lg, 300, 1.0, True)
    hid = torch.randn(4, 16, device=d)
    hid[3] = float("nan")
    Wq = torch.randn(1, 3000, 16, device=d)
    for top_k in (10, 300):
        ops.guided_sample(lg, hid, Wq, None, w1, 1.0, top_k, 1.0, 1.0, s, o, True)
    # a bad row in the default mode: must raise, not crash
    try:
        mx.tilted_sample(lg, top_k=5, seed=1)
    except (RuntimeError, ValueError) as e:
        print("raised as expected:", str(e).splitlines()[0])
    else:
        raise SystemExit("no error raised for a NaN row")
    if d == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = ap.parse_args()
    if args.device == "cuda" and not (torch.cuda.is_available() and mx.has_cuda_kernels()):
        print("gpu_sanitize_cases: needs a GPU and the CUDA kernels (or --device cpu)", file=sys.stderr)
        return 2
    run(args.device)
    print("sanitize cases done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
