"""Exact evaluation of MAVIS policies on the enumerable testbed (J_w, rewards, KL vs the true optimum).

Builds the testbed, trains value models with the real pipeline (unless ``--no-train``), evaluates
every policy exactly on a weight grid and writes ``quality.md``, ``quality.json`` and
``pareto_fronts.png`` to ``--out``.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..testbed import OBJECTIVES

    p.add_argument("--objectives", default="positive,concise",
                   help=f"comma-separated, 1 to 3 of {sorted(OBJECTIVES)} (default positive,concise)")
    p.add_argument("--beta", type=float, default=3.0, help="tilt strength and KL weight 1/beta (default 3)")
    p.add_argument("--horizon", type=int, default=5, help="response length limit, 1..6 (default 5)")
    p.add_argument("--iterations", type=int, default=4, help="value-model iterations 0..N-1 (default 4)")
    p.add_argument("--grid", type=int, default=11,
                   help="grid points per edge: 2 objectives -> that many weights; 3 -> the simplex grid (default 11)")
    p.add_argument("--top-k", type=int, default=0, help="MAVIS candidates per step; 0 = the full vocabulary (default)")
    p.add_argument("--mode", choices=("prefix", "qhead"), default="prefix", help="value-model mode (default prefix)")
    p.add_argument("--trees", type=int, default=128, help="rollout trees per iteration (default 128)")
    p.add_argument("--epochs", type=int, default=6, help="regression epochs per iteration (default 6)")
    p.add_argument("--batch-size", type=int, default=64, help="regression batch (paths per step, default 64)")
    p.add_argument("--lr", type=float, default=5e-3, help="AdamW learning rate (default 5e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixture-aware", action="store_true",
                   help="also train value models per weight from mixed-weight rollouts and report them side by side")
    p.add_argument("--mixture-iterations", type=int, default=2)
    p.add_argument("--no-train", action="store_true", help="only the exact policies (optimum, MOD mix, exact-value MAVIS)")
    p.add_argument("--out", default="mavis_eval_out", help="output directory (default mavis_eval_out)")
    p.add_argument("--no-progress", action="store_true")


def settings_from_args(args):
    from ..evaluation import QualitySettings

    objectives = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    if not 1 <= len(objectives) <= 3:
        raise ValueError(f"--objectives: expected 1 to 3 names, got {args.objectives!r}")
    if not args.beta > 0:
        raise ValueError(f"--beta: must be > 0, got {args.beta}")
    if args.iterations < 1:
        raise ValueError(f"--iterations: must be >= 1, got {args.iterations}")
    if args.grid < 2:
        raise ValueError(f"--grid: must be >= 2, got {args.grid}")
    if args.top_k < 0:
        raise ValueError(f"--top-k: must be >= 0, got {args.top_k}")
    return QualitySettings(objectives=objectives, horizon=args.horizon, beta=args.beta, iterations=args.iterations,
                           grid_points=args.grid, top_k=args.top_k, mode=args.mode, trees=args.trees,
                           epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, mixture_aware=args.mixture_aware,
                           mixture_iterations=args.mixture_iterations, out_dir=args.out)


def run(args) -> int:
    from ..evaluation import quiet_transformers_progress, run_quality

    s = settings_from_args(args)
    quiet_transformers_progress()
    res = run_quality(s, train=not args.no_train, progress=not args.no_progress)
    print()
    print(res["markdown"])
    print()
    print("Files: " + ", ".join(res["files"]))
    return 0
