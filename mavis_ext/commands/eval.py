"""Exact evaluation of MAVIS policies on an enumerable world (J_w, rewards, KL vs the true optimum).

``--world demo`` (default): the demo's one-prompt testbed; builds it, trains value models with the
real pipeline (unless ``--no-train``), evaluates every policy exactly on a weight grid and writes
``quality.md``, ``quality.json`` and ``pareto_fronts.png`` to ``--out``.

``--world hard``: the hard world's protocol (several seeds, beta 1/3/8, top-k decoding, held-out
prompts, both optima, the linear-mix ceiling); writes ``report.md``, ``summary.json``, plots and
per-task results under ``--out`` and resumes an interrupted run. ``--quick`` is the CI size.
"""

from __future__ import annotations

import argparse

# Options of the demo world only; given with --world hard they are an error (not silently ignored).
_DEMO_ONLY = ("objectives", "trees", "mixture_aware", "mixture_iterations", "no_train", "grid")
_HARD_ONLY = ("seeds", "betas", "trees_per_prompt", "jobs", "quick", "keep_checkpoints")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..testbed import OBJECTIVES

    p.add_argument("--world", choices=("demo", "hard"), default="demo",
                   help="demo: the one-prompt testbed (default); hard: the multi-seed hard-world protocol")
    p.add_argument("--objectives", default=None,
                   help=f"demo: comma-separated, 1 to 3 of {sorted(OBJECTIVES)} (default positive,concise)")
    p.add_argument("--beta", type=float, default=None, help="demo: tilt strength and KL weight 1/beta (default 3)")
    p.add_argument("--betas", default=None, help="hard: comma-separated betas (default 1,3,8; --quick 3)")
    p.add_argument("--seeds", default=None, help="hard: comma-separated seeds (default 0,1,2; --quick 0,1)")
    p.add_argument("--horizon", type=int, default=None, help="response length limit (default 5; hard --quick 3)")
    p.add_argument("--iterations", type=int, default=None, help="value-model iterations 0..N-1 (default 4)")
    p.add_argument("--grid", type=int, default=None,
                   help="demo: grid points per edge: 2 objectives -> that many weights; 3 -> the simplex grid (default 11)")
    p.add_argument("--top-k", type=int, default=None,
                   help="MAVIS candidates per step; demo default 0 = the full vocabulary; hard default 8 of 16")
    p.add_argument("--mode", choices=("prefix", "qhead"), default="prefix", help="value-model mode (default prefix)")
    p.add_argument("--trees", type=int, default=None, help="demo: rollout trees per iteration (default 128)")
    p.add_argument("--trees-per-prompt", type=int, default=None,
                   help="hard: rollout trees per train prompt and objective per iteration (default 8)")
    p.add_argument("--epochs", type=int, default=None, help="regression epochs per iteration (default 6)")
    p.add_argument("--batch-size", type=int, default=64, help="regression batch (paths per step, default 64)")
    p.add_argument("--lr", type=float, default=5e-3, help="AdamW learning rate (default 5e-3)")
    p.add_argument("--seed", type=int, default=0, help="demo: the world's and the run's seed")
    p.add_argument("--jobs", type=int, default=None,
                   help="hard: training runs in parallel processes, one thread each (default 1)")
    p.add_argument("--quick", action="store_true", help="hard: the CI size (2 seeds, beta 3, horizon 3, top-4)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="hard: keep base models, trees and value models under OUT/work (deleted by default)")
    p.add_argument("--mixture-aware", action="store_true",
                   help="demo: also train value models per weight from mixed-weight rollouts and report them side by side")
    p.add_argument("--mixture-iterations", type=int, default=None)
    p.add_argument("--no-train", action="store_true", help="demo: only the exact policies (optimum, MOD mix, exact-value MAVIS)")
    p.add_argument("--out", default=None, help="output directory (default mavis_eval_out; hard: mavis_eval_hard)")
    p.add_argument("--no-progress", action="store_true")


def _given(args, names):
    defaults = {"mixture_aware": False, "no_train": False, "quick": False, "keep_checkpoints": False}
    return [n for n in names if getattr(args, n) not in (None, defaults.get(n, None))]


def _floats(text: str, flag: str) -> tuple:
    try:
        out = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not out:
        raise ValueError(f"{flag}: expected at least one number, got {text!r}")
    return out


def _ints(text: str, flag: str) -> tuple:
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not out:
        raise ValueError(f"{flag}: expected at least one integer, got {text!r}")
    return out


def settings_from_args(args):
    from ..evaluation import QualitySettings

    bad = _given(args, _HARD_ONLY)
    if bad:
        raise ValueError(f"--{bad[0].replace('_', '-')}: only applies to --world hard")
    objectives = tuple(o.strip() for o in (args.objectives or "positive,concise").split(",") if o.strip())
    if not 1 <= len(objectives) <= 3:
        raise ValueError(f"--objectives: expected 1 to 3 names, got {args.objectives!r}")
    beta = 3.0 if args.beta is None else args.beta
    if not beta > 0:
        raise ValueError(f"--beta: must be > 0, got {beta}")
    iterations = 4 if args.iterations is None else args.iterations
    if iterations < 1:
        raise ValueError(f"--iterations: must be >= 1, got {iterations}")
    grid = 11 if args.grid is None else args.grid
    if grid < 2:
        raise ValueError(f"--grid: must be >= 2, got {grid}")
    top_k = 0 if args.top_k is None else args.top_k
    if top_k < 0:
        raise ValueError(f"--top-k: must be >= 0, got {top_k}")
    return QualitySettings(objectives=objectives, horizon=5 if args.horizon is None else args.horizon, beta=beta,
                           iterations=iterations, grid_points=grid, top_k=top_k, mode=args.mode,
                           trees=128 if args.trees is None else args.trees,
                           epochs=6 if args.epochs is None else args.epochs, batch_size=args.batch_size, lr=args.lr,
                           seed=args.seed, mixture_aware=args.mixture_aware,
                           mixture_iterations=2 if args.mixture_iterations is None else args.mixture_iterations,
                           out_dir=args.out or "mavis_eval_out")


def hard_settings_from_args(args):
    from ..quality_protocol import HardSettings, quick_settings

    bad = _given(args, _DEMO_ONLY)
    if bad:
        raise ValueError(f"--{bad[0].replace('_', '-')}: only applies to --world demo")
    if args.beta is not None:
        raise ValueError("--beta: --world hard evaluates several betas; give them with --betas")
    if args.seed != 0:
        raise ValueError("--seed: --world hard runs several seeds; give them with --seeds")
    s = quick_settings() if args.quick else HardSettings(out_dir="mavis_eval_hard")
    if args.seeds is not None:
        s.seeds = _ints(args.seeds, "--seeds")
    if args.betas is not None:
        s.betas = _floats(args.betas, "--betas")
    for flag, attr in (("horizon", "horizon"), ("iterations", "iterations"), ("top_k", "top_k"),
                       ("trees_per_prompt", "trees_per_prompt"), ("epochs", "epochs"), ("jobs", "jobs")):
        v = getattr(args, flag)
        if v is not None:
            setattr(s, attr, v)
    s.mode, s.batch_size, s.lr = args.mode, args.batch_size, args.lr
    s.keep_checkpoints = bool(args.keep_checkpoints)
    if args.out is not None:
        s.out_dir = args.out
    try:
        s.validate()
    except ValueError as e:
        name = str(e).split(":", 1)[0]
        raise ValueError(f"--{name.replace('_', '-')}:{str(e).split(':', 1)[1]}") from None
    return s


def run(args) -> int:
    from ..evaluation import quiet_transformers_progress

    quiet_transformers_progress()
    if args.world == "hard":
        from ..quality_protocol import run_hard_benchmark

        s = hard_settings_from_args(args)
        res = run_hard_benchmark(s)
        with open(res["files"][0]) as f:
            print()
            print(f.read())
        print("Files: " + ", ".join(res["files"]))
        return 0
    from ..evaluation import run_quality

    s = settings_from_args(args)
    res = run_quality(s, train=not args.no_train, progress=not args.no_progress)
    print()
    print(res["markdown"])
    print()
    print("Files: " + ", ".join(res["files"]))
    return 0
