"""Quality benchmark: the full exact evaluation behind the README's quality tables.

``--world hard`` runs the hard world's protocol (3 seeds, beta 1/3/8, top-8 of 16 tokens, held-out
prompts, both optima, the linear-mix ceiling; ``mavis_ext/quality_protocol.py``) into
``benchmarks/results/hard`` (any other ``mavis eval --world hard`` option is passed through):

    python benchmarks/bench_quality.py --world hard --jobs 2     # the full benchmark, 2 cores
    python benchmarks/bench_quality.py --world hard --quick      # CI size

Without ``--world`` (or with ``--world demo``) it runs ``mavis_ext.evaluation.run_quality`` on the testbed for two objectives (11-point grid) and for
three objectives (simplex grid), with value models trained by the real pipeline, and writes
``quality.{md,json}`` and ``pareto_fronts.png`` per setting under ``--out``, plus
``linear_mix_gap.md``: the exact gap between the linear value mix (MAVIS with perfect
per-objective values = the MOD mix) and the true optimum, for several beta, with no training.

    python benchmarks/bench_quality.py --out benchmarks/results/quality
    python benchmarks/bench_quality.py --quick          # small, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def linear_gap_table(betas, objectives_sets, horizon: int, seed: int) -> str:
    """Worst and mean share of the optimum's gain over the interior of the weight grid reached, with
    perfect regression (exact values, no training), by (a) the paper's per-objective iteration at its
    fixed point = the linear value mix = the MOD mix, and (b) the mixture-aware iteration (rollouts
    from the mixed policy of weight w, values of pi_ref at iteration 0) after 1 and 2 steps."""
    from mavis_ext import evaluation as ev
    from mavis_ext.testbed import build_testbed

    lines = ["| objectives | beta | linear mix: worst % | at w | mean % | mixture-aware, 1 step: worst % | "
             "2 steps: worst % |", "|---|---|---|---|---|---|---|"]
    for objs in objectives_sets:
        tb = build_testbed(objs, horizon=horizon, seed=seed)
        grid = [w for w in ev.weight_grid(tb.m, 11 if tb.m == 2 else 5) if max(w) < 1.0]
        for beta in betas:
            rows = ev.sweep(tb, ev.standard_policies(tb, beta), grid, beta)
            rec = [(r["policies"]["mod_mix"]["recovered"], r["weights"]) for r in rows]
            worst = min(rec)
            mean = sum(x for x, _ in rec) / len(rec)
            v0 = ev.exact_iteration_values(tb, beta, 1)[0]
            mix = [1.0, 1.0]
            for r in rows:
                w, p = r["weights"], r["policies"]
                for i, vt in enumerate(ev.exact_mixture_iteration(tb, v0, w, beta, 2)):
                    J = tb.evaluate(ev.mavis_policy(tb, vt, w, beta), w, beta).J
                    mix[i] = min(mix[i], (J - p["base"]["J"]) / (p["optimum"]["J"] - p["base"]["J"]))
            lines.append(f"| {', '.join(objs)} | {beta:g} | {100 * worst[0]:.1f} | {ev._fmt_w(worst[1])} | "
                         f"{100 * mean:.1f} | {100 * mix[0]:.2f} | {100 * mix[1]:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from mavis_ext import evaluation as ev

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--world", choices=("demo", "hard"), default="demo")
    known, rest = pre.parse_known_args(argv)
    if known.world == "hard":
        from mavis_ext.cli import main as mavis_main

        if "--out" not in rest and not any(a.startswith("--out=") for a in rest):
            rest += ["--out", "benchmarks/results/hard"]
        return mavis_main(["eval", "--world", "hard"] + rest)
    argv = rest

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/quality")
    p.add_argument("--quick", action="store_true", help="horizon 4, 2 iterations, 2 objectives only")
    p.add_argument("--beta", type=float, default=3.0)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--trees", type=int, default=128)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--mode", choices=("prefix", "qhead"), default="prefix")
    p.add_argument("--mixture-aware", action="store_true", help="add per-weight mixture-aware value models")
    p.add_argument("--no-three", action="store_true", help="skip the 3-objective simplex run")
    p.add_argument("--gap-only", action="store_true", help="only the exact linear-mix gap table (no training)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the trained value models under --out (deleted by default: only results are kept)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    ev.quiet_transformers_progress()

    settings = []
    base = dict(beta=a.beta, iterations=a.iterations, trees=a.trees, epochs=a.epochs, batch_size=a.batch_size,
                mode=a.mode, seed=a.seed, mixture_aware=a.mixture_aware)
    if a.quick:
        base.update(iterations=2, trees=48, epochs=5)
        settings.append(ev.QualitySettings(objectives=("positive", "concise"), horizon=4, grid_points=11,
                                           out_dir=os.path.join(a.out, "two_objectives"), **base))
    else:
        settings.append(ev.QualitySettings(objectives=("positive", "concise"), horizon=5, grid_points=11,
                                           out_dir=os.path.join(a.out, "two_objectives"), **base))
        if not a.no_three:
            settings.append(ev.QualitySettings(objectives=("positive", "concise", "cats"), horizon=5, grid_points=5,
                                               out_dir=os.path.join(a.out, "three_objectives"), **base))
    summary = {}
    for s in ([] if a.gap_only else settings):
        t0 = time.perf_counter()
        c0 = time.process_time()
        res = ev.run_quality(s, progress=not a.no_progress)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"\n## {', '.join(s.objectives)} (beta {s.beta}, horizon {s.horizon}) - {wall:.0f} s wall, {cpu:.0f} s CPU\n")
        print(res["markdown"])
        if not a.keep_checkpoints:
            for sub in ("value_models", "mixture_aware"):
                shutil.rmtree(os.path.join(s.out_dir, sub), ignore_errors=True)
            res["files"] = [f for f in res["files"] if os.path.exists(f)]
        summary[",".join(s.objectives)] = {"summary": res["summary"], "best": res["best_mavis_iteration"],
                                           "target_95_met": res["target_95_met"], "wall_s": wall, "cpu_s": cpu,
                                           "files": res["files"]}
    gap = linear_gap_table([1.0, 2.0, 3.0, 5.0, 8.0],
                           [("positive", "concise")] + ([] if a.quick or a.no_three else [("positive", "concise", "cats")]),
                           horizon=4 if a.quick else 5, seed=a.seed)
    print("\n## Linear value mix (exact per-objective values) vs the optimum, by beta\n")
    print(gap)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "linear_mix_gap.md"), "w") as f:
        f.write(gap + "\n")
    if summary:
        with open(os.path.join(a.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
