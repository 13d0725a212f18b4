"""The main job: exact testbed -> value-model training -> weight sweep -> table, plots, samples, op latency.

Runs offline in a few minutes on a laptop CPU. Everything is built locally: a 2-layer Llama base LM
over a 12-token word vocabulary (trained for a few seconds on a synthetic corpus), two objectives
that pull against each other (``positive``: upbeat words; ``concise``: few words), value models
trained by MAVIS's iterative soft policy iteration with the real training pipeline, and an exact
evaluation (every response enumerated) of the MAVIS policies against the true KL-regularized
optimum, the MOD-style mix of per-objective optima and the base model.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

DEFAULT_OUT = "./mavis_demo_out"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="CI size: horizon 4, 2 iterations, 64 trees (< 1 min)")
    p.add_argument("--beta", type=float, default=3.0, help="tilt strength; J_w = E[w.r] - KL/beta (default 3)")
    p.add_argument("--iterations", type=int, default=None, help="value-model iterations (default 4; --quick 2)")
    p.add_argument("--trees", type=int, default=None, help="rollout trees per iteration (default 96; --quick 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=3, help="sampled responses printed per weight vector")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the testbed/training stages (default 1: the models are tiny and extra "
                        "threads only add synchronisation); the op-latency table uses all cores")
    p.add_argument("--no-bench", action="store_true", help="skip the op-latency table")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _settings(args):
    from ..evaluation import QualitySettings

    # exact_diagnostics off: the demo compares what a user gets (trained MAVIS) with the optimum, the
    # MOD mix and the base model; `mavis eval` adds the perfect-regression MAVIS policies.
    if args.quick:
        s = QualitySettings(horizon=4, iterations=2, trees=64, epochs=6, exact_diagnostics=False)
    else:
        s = QualitySettings(horizon=5, iterations=4, trees=96, epochs=4, exact_diagnostics=False)
    s.beta = args.beta
    s.seed = args.seed
    s.out_dir = args.out
    if args.iterations is not None:
        s.iterations = args.iterations
    if args.trees is not None:
        s.trees = args.trees
    if s.iterations < 1:
        raise ValueError(f"--iterations: must be >= 1, got {s.iterations}")
    if s.trees < 4:
        raise ValueError(f"--trees: must be >= 4, got {s.trees}")
    if not s.beta > 0:
        raise ValueError(f"--beta: must be > 0, got {s.beta}")
    return s


def _print_samples(res, s, n: int, log, n_check: int = 256) -> None:
    """Responses per weight vector from the best iteration's value models, decoded by the real
    engine (``MavisGenerator``), and the engine's sampled mean rewards next to the exact
    expectation of the same policy (a cross-check of the decoding path against the enumeration)."""
    from ..decoding import MavisGenerator
    from ..values import load_value_models

    tb = res["testbed_obj"]
    best = res.get("best_mavis_iteration")
    if not best or n <= 0:
        return
    it = int(best[len("mavis_it"):])
    vm = load_value_models(res["checkpoints"][it])
    gen = MavisGenerator(tb.model, vm, tb.tokenizer)
    fns = tb.reward_fns()
    k = tb.V if s.top_k <= 0 else min(s.top_k, tb.V)
    by_w = {tuple(r["weights"]): r["policies"][best] for r in res["rows"]}
    log(f"\nSampled responses (MavisGenerator, value models of {best}, beta {s.beta}, top_k {k}); "
        f"mean over {n_check} samples vs the exact expectation:")
    grid = list(by_w)
    picks = [grid[0], grid[len(grid) // 2], grid[-1]] if len(grid) >= 3 else grid
    for w in picks:
        N = max(n, n_check)
        out = gen.generate([tb.prompt] * N, weights=list(w), beta=s.beta, top_k=k, max_new_tokens=tb.horizon,
                           seed=s.seed)
        scores = {o: fn([tb.prompt] * N, out.texts) for o, fn in fns.items()}
        ex = by_w[w]
        means = ", ".join(f"E[{o}] {float(scores[o].mean()):+.3f} (exact {ex['r_' + o]:+.3f})" for o in tb.objectives)
        log(f"  w = {dict(zip(tb.objectives, w))}: {means}, KL {float(out.kl.mean()):.3f} (exact {ex['kl']:.3f})")
        for b in range(n):
            r = ", ".join(f"{o}={float(scores[o][b]):+.2f}" for o in tb.objectives)
            text = (out.texts[b].strip() + (" </s>" if bool(out.finished[b]) else "")).strip()
            log(f"    {text!r:34s} {r}")


def _bench_module():
    """``benchmarks/bench_ops.py`` of the source tree, when it is there (it is not installed)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(here, "benchmarks", "bench_ops.py")
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("mavis_bench_ops", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not (hasattr(mod, "run_benchmarks") and hasattr(mod, "format_table")):
        return None
    return mod


def _fallback_latency(threads: int) -> str:
    """A quick in-package timing of one MAVIS sampling step: the library op (``tilted_sample``:
    tilt + top-k + sample) vs the eager PyTorch composite, at a few batch/vocabulary sizes."""
    import torch

    from .. import HAS_C, tilted_sample

    def timeit(fn, reps=20):
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps * 1e6

    def eager(logits, values, w, beta, k):
        t = logits + beta * (values * w.view(1, -1, 1)).sum(1)
        idx = logits.topk(k, -1).indices
        masked = torch.full_like(t, float("-inf")).scatter(1, idx, t.gather(1, idx))
        return torch.multinomial(torch.softmax(masked, -1), 1)

    lines = [f"op latency, CPU, {threads} threads ({'compiled kernels' if HAS_C else 'reference fallback: extension not built'})",
             "| op | B | V | m | top_k | fused µs | eager µs | speedup |", "|---|---|---|---|---|---|---|---|"]
    g = torch.Generator().manual_seed(0)
    for B, V in ((1, 32000), (8, 32000), (32, 32000)):
        m, k = 2, 40
        logits = torch.randn(B, V, generator=g)
        values = torch.randn(B, m, V, generator=g)
        w = torch.tensor([0.6, 0.4])
        f = timeit(lambda: tilted_sample(logits, values, w, beta=2.0, top_k=k, seed=1))
        e = timeit(lambda: eager(logits, values, w, 2.0, k))
        lines.append(f"| tilted_sample | {B} | {V} | {m} | {k} | {f:.1f} | {e:.1f} | {e / f:.2f}x |")
    return "\n".join(lines)


def _latency_table(log, quick: bool) -> None:
    import torch

    threads = torch.get_num_threads()
    mod = None
    try:
        mod = _bench_module()
    except Exception as e:  # noqa: BLE001 - a broken benchmark file must not fail the demo
        log(f"(benchmarks/bench_ops.py could not be loaded: {type(e).__name__}: {e}; using the built-in timing)")
    if mod is not None:
        rows = mod.run_benchmarks("cpu", threads, True)
        log(mod.format_table(rows))
    else:
        log("(benchmarks/bench_ops.py not found next to the package: built-in quick timing)")
        log(_fallback_latency(threads))


def run(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..evaluation import quiet_transformers_progress, run_quality

    t_start, c_start = time.perf_counter(), time.process_time()
    s = _settings(args)
    if args.threads < 1:
        raise ValueError(f"--threads: must be >= 1, got {args.threads}")
    quiet_transformers_progress()
    progress = not args.no_progress
    log = print
    # The demo always trains from scratch: a previous demo's checkpoints (recognised by the training
    # run record) are removed rather than resumed, so settings can change between runs.
    vm_dir = os.path.join(s.out_dir, "value_models")
    if os.path.isfile(os.path.join(vm_dir, "run.json")):
        import shutil

        shutil.rmtree(vm_dir)
    stages = tqdm(total=3, desc="mavis demo", disable=not progress, position=0)
    stages.set_postfix_str("testbed, training, exact sweep")
    all_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        res = run_quality(s, train=True, progress=progress, log=log)
        stages.update(1)
        log("")
        log(res["markdown"])
        log("")
        log("Files: " + ", ".join(res["files"]))
        stages.set_postfix_str("samples")
        _print_samples(res, s, args.samples, log)
        stages.update(1)
    finally:
        torch.set_num_threads(all_threads)
    stages.set_postfix_str("op latency")
    if not args.no_bench:
        log("")
        _latency_table(log, args.quick)
    stages.update(1)
    stages.close()
    t = res["timings"]
    log(f"\nDone in {time.perf_counter() - t_start:.1f} s wall, {time.process_time() - c_start:.1f} s CPU (testbed "
        f"{t.get('build_testbed_s', 0):.1f} s, training {t.get('train_value_models_s', 0):.1f} s, sweep "
        f"{t.get('sweep_s', 0):.1f} s; {args.threads} torch thread(s), latency table on {all_threads}).")
    return 0
