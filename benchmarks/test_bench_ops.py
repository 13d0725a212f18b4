"""pytest-benchmark cases of the op benchmark (run with `pytest benchmarks/test_bench_ops.py`;
not part of the main test run): every configuration of bench_ops, fused op and eager composites."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_ops  # noqa: E402

DEVICE = os.environ.get("MAVIS_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
CONFIGS = bench_ops._configs(quick=False)


def _sync_wrap(fn):
    def run():
        out = fn()
        bench_ops._sync(DEVICE)
        return out

    return run


@pytest.mark.parametrize("cfg", CONFIGS, ids=[f"{c[0]}[{c[1]}, {str(c[2])[6:]}]" for c in CONFIGS])
@pytest.mark.parametrize("impl", ["fused", "eager0", "eager1"])
def test_bench(benchmark, cfg, impl):
    op, label, dtype, setup = cfg
    fused, eagers = setup(DEVICE)
    if impl == "fused":
        fn = fused
    else:
        i = int(impl[-1])
        if i >= len(eagers):
            pytest.skip("no such eager composite for this op")
        fn = eagers[i][1]
        benchmark.extra_info["eager"] = eagers[i][0]
    benchmark.group = f"{op} {label} {dtype}"
    benchmark(_sync_wrap(fn))
