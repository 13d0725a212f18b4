"""Aggregation, report and plots of the hard-world quality protocol (``quality_protocol.py``).

Everything here reads the per-task JSON files under ``<out>/runs/`` (exact J per prompt for every
policy and weight vector) and derives: shares of the optimum's gain per prompt set, the iteration
chosen on the validation prompts, mean ± sd over seeds, the targets, tables and plots.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import List, Optional

__all__ = ["aggregate", "write_report", "load_runs"]

SETS = ("train", "test")


def load_runs(s) -> tuple:
    from .quality_protocol import _paths

    refs, runs = {}, {}
    for seed in s.seeds:
        p = _paths(s, seed)
        if not os.path.isfile(p["reference"]):
            raise ValueError(f"{p['reference']}: missing; run the benchmark (it resumes) before aggregating")
        with open(p["reference"]) as f:
            refs[seed] = json.load(f)
        for beta in s.betas:
            q = _paths(s, seed, beta)
            if not os.path.isfile(q["result"]):
                raise ValueError(f"{q['result']}: missing; run the benchmark (it resumes) before aggregating")
            with open(q["result"]) as f:
                runs[(seed, beta)] = json.load(f)
    return refs, runs


def _mean(xs, idx):
    return sum(xs[i] for i in idx) / len(idx)


def _share(J, Jlo, Jhi):
    gap = Jhi - Jlo
    return (J - Jlo) / gap if gap > 1e-12 else float("nan")


def _msd(xs: List[float]) -> dict:
    xs = [x for x in xs if x == x]
    if not xs:
        return {"mean": float("nan"), "sd": float("nan"), "per_seed": []}
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "per_seed": xs}


def _seed_metrics(s, ref, run, beta, m) -> dict:
    """For one seed, beta and objective count: per weight vector, every metric per prompt set."""
    from .quality_protocol import _wkey, grids

    pol, split = run["policies"], run["split"]
    bk = f"{beta:g}"
    iters = [n for n in range(s.iterations)]
    per_w = []
    for w in grids(s)[m]:
        k = _wkey(w)
        row = {}
        for set_name in ("train", "val", "test"):
            idx = split[set_name]
            J = {name: _mean(pol[name][k]["J"], idx) for name in pol}
            J["opt_full"] = _mean(ref["opt_full"][bk][k], idx)
            J["base"] = _mean(ref["base"][bk][k], idx)
            for name in pol:
                if name not in ("base_k", "opt_k"):
                    row[f"{name}@{set_name}"] = _share(J[name], J["base_k"], J["opt_k"])
            row[f"full:opt_k@{set_name}"] = _share(J["opt_k"], J["base"], J["opt_full"])
            row[f"full:ceiling@{set_name}"] = _share(J["ceiling"], J["base"], J["opt_full"])
            row[f"full:mavis_last@{set_name}"] = _share(J[f"mavis_it{iters[-1]}"], J["base"], J["opt_full"])
            row[f"gap@{set_name}"] = J["opt_full"] - J["opt_k"]
            row[f"gain_k@{set_name}"] = J["opt_k"] - J["base_k"]
            row[f"J:opt_k@{set_name}"] = J["opt_k"]
            row[f"J:opt_full@{set_name}"] = J["opt_full"]
        per_w.append(row)

    def crit(n):
        vals = [r[f"mavis_it{n}@val"] for r in per_w]
        vals = [v for v in vals if v == v]
        return (min(vals), statistics.fmean(vals)) if vals else (-math.inf, -math.inf)

    chosen = max(iters, key=crit)
    for r in per_w:
        for set_name in ("train", "val", "test"):
            r[f"mavis_last@{set_name}"] = r[f"mavis_it{iters[-1]}@{set_name}"]
            r[f"mavis_sel@{set_name}"] = r[f"mavis_it{chosen}@{set_name}"]
            r[f"exact_last@{set_name}"] = r[f"exact_it{iters[-1]}@{set_name}"]
    return {"rows": per_w, "selected": chosen, "selection_criterion": [list(crit(n)) for n in iters]}


def _monotonicity(s, runs, beta) -> dict:
    """Per objective: the exact single-objective J (w = e_i) of the trained iterations on the
    train prompts, per seed, and whether it never decreases."""
    from .hard_world import OBJECTIVE_SETS
    from .quality_protocol import _unit, _wkey

    objs = OBJECTIVE_SETS[3]
    out = {}
    for i, o in enumerate(objs):
        k = _wkey(_unit(len(objs), i))
        per = {}
        for seed in s.seeds:
            run = runs[(seed, beta)]
            idx = run["split"]["train"]
            Js = [_mean(run["policies"][f"mavis_it{n}"][k]["J"], idx) for n in range(s.iterations)]
            per[str(seed)] = {"J": Js, "nondecreasing": all(b >= a - 1e-9 for a, b in zip(Js, Js[1:]))}
        out[o] = per
    seeds_ok = sum(all(out[o][str(seed)]["nondecreasing"] for o in objs) for seed in s.seeds)
    return {"per_objective": out, "seeds_all_nondecreasing": seeds_ok}


def aggregate(s, wall_s: Optional[float] = None) -> dict:
    """Everything the report shows, from the per-task files (see module docstring)."""
    from .quality_protocol import grids

    refs, runs = load_runs(s)
    out = {"settings": s.key(), "settings_key": s.key_hash(), "jobs": s.jobs, "wall_s": wall_s, "results": {},
           "monotonicity": {}, "coverage": {}, "val_mse": {}, "timings": {}, "world": {}}
    for seed, ref in refs.items():
        out["world"][str(seed)] = {"split": ref["world"]["split"], "entropy_full": ref["entropy_full"],
                                   "topk_mass_by_depth": ref["topk_mass_by_depth"],
                                   "full_tree_states": ref["world"].get("full_tree_states"),
                                   "topk_tree_states": ref["world"]["topk_tree_states"],
                                   "base_train_loss": ref["world"]["base_train_loss"]}
        out["timings"][f"seed{seed}_reference"] = ref["timings"]
    for beta in s.betas:
        bk = f"{beta:g}"
        out["monotonicity"][bk] = _monotonicity(s, runs, beta)
        cov = {}
        for seed in s.seeds:
            run = runs[(seed, beta)]
            out["timings"][f"seed{seed}_beta{bk}"] = run["timings"]
            out["val_mse"].setdefault(bk, {})[str(seed)] = run["val_mse"]
            for n, same in enumerate(run.get("identical_to_previous", [])):
                if same:
                    out.setdefault("noop_iterations", []).append({"seed": seed, "beta": beta, "iteration": n})
            for name, c in run["coverage"].items():
                cov.setdefault(name, []).append(c)
        out["coverage"][bk] = {name: [statistics.fmean(col) for col in zip(*cs)] for name, cs in cov.items()}
        for m in (2, 3):
            per_seed = {seed: _seed_metrics(s, refs[seed], runs[(seed, beta)], beta, m) for seed in s.seeds}
            grid = grids(s)[m]
            metrics = list(per_seed[s.seeds[0]]["rows"][0])
            points = []
            for j, w in enumerate(grid):
                pt = {"weights": w[:m]}
                for name in metrics:
                    pt[name] = _msd([per_seed[seed]["rows"][j][name] for seed in s.seeds])
                points.append(pt)
            worst = {}
            for name in metrics:
                curve = [p[name]["mean"] for p in points if p[name]["mean"] == p[name]["mean"]]
                seed_min = [min((x for x in (per_seed[seed]["rows"][j][name] for j in range(len(grid))) if x == x),
                                default=float("nan")) for seed in s.seeds]
                worst[name] = {"worst_of_mean": min(curve) if curve else float("nan"),
                               "mean_of_mean": statistics.fmean(curve) if curve else float("nan"),
                               "per_seed_worst": seed_min}
            out["results"][f"m{m}_beta{bk}"] = {
                "m": m, "beta": beta, "points": points, "worst": worst,
                "selected_iteration": {str(seed): per_seed[seed]["selected"] for seed in s.seeds},
                "selection_criterion": {str(seed): per_seed[seed]["selection_criterion"] for seed in s.seeds}}
    out["targets"] = _targets(s, out)
    return out


def _targets(s, out) -> List[dict]:
    t = []
    key = "m2_beta3"
    if key in out["results"]:
        r = out["results"][key]
        for set_name in SETS:
            v = r["worst"][f"mavis_last@{set_name}"]["worst_of_mean"]
            t.append({"target": f"two objectives, beta 3, last iteration, {set_name} prompts: >= 90% of the top-k "
                                f"optimum's gain at every grid point (mean over seeds)",
                      "measured": f"worst point {100 * v:.1f}%", "met": bool(v >= 0.90)})
            ratios = [p[f"mavis_last@{set_name}"]["mean"] / p[f"ceiling@{set_name}"]["mean"]
                      for p in r["points"] if p[f"ceiling@{set_name}"]["mean"] > 1e-9]
            worst = min(ratios) if ratios else float("nan")
            t.append({"target": f"two objectives, beta 3, last iteration, {set_name} prompts: >= 95% of what the "
                                f"linear-mix ceiling recovers, at every grid point",
                      "measured": f"worst point {100 * worst:.1f}% of the ceiling", "met": bool(worst >= 0.95)})
        diff = max(abs(p["mavis_last@test"]["mean"] - p["mavis_last@train"]["mean"]) for p in r["points"])
        t.append({"target": "held-out (test) prompts within 3 points of the training prompts (two objectives, beta 3, "
                            "last iteration, every grid point)",
                  "measured": f"largest difference {100 * diff:.1f} points", "met": bool(diff <= 0.03)})
    for bk, mono in out["monotonicity"].items():
        n = mono["seeds_all_nondecreasing"]
        t.append({"target": f"beta {bk}: exact single-objective J non-decreasing over iterations 0..{s.iterations - 1} "
                            f"(every objective) in at least 2 of {len(s.seeds)} seeds",
                  "measured": f"{n} of {len(s.seeds)} seeds", "met": bool(n >= min(2, len(s.seeds)))})
    if out.get("wall_s") is not None:
        w = out["wall_s"]
        t.append({"target": "the full benchmark runs in under 30 minutes (2 cores)",
                  "measured": f"{w / 60:.1f} min wall with {s.jobs} job(s) (this invocation)", "met": bool(w < 1800)})
    return t


# ---------------------------------------------------------------------- markdown
def _fw(w) -> str:
    return "(" + ", ".join(f"{x:.2f}".rstrip("0").rstrip(".") if x not in (0, 1) else str(int(x)) for x in w) + ")"


def _pm(d, pct=True, digits=1) -> str:
    if d["mean"] != d["mean"]:
        return "n/a"
    f = 100.0 if pct else 1.0
    return f"{f * d['mean']:.{digits}f} ± {f * d['sd']:.{digits}f}"


POLICY_LABELS = [
    ("mavis_last@train", "MAVIS last, train"),
    ("mavis_last@test", "MAVIS last, test"),
    ("mavis_sel@test", "MAVIS selected, test"),
    ("ceiling@test", "ceiling, test"),
    ("exact_last@test", "perfect regression, last it., test"),
]


def _summary_table(out) -> str:
    cols = POLICY_LABELS + [("full:opt_k@test", "top-k optimum, % of full optimum's gain, test")]
    head = ["objectives", "beta"] + [c[1] for c in cols] + ["gap J*full - J*topk, test"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, r in out["results"].items():
        cells = [str(r["m"]), f"{r['beta']:g}"]
        for name, _ in cols:
            w = r["worst"][name]
            cells.append(f"{100 * w['worst_of_mean']:.1f} / {100 * w['mean_of_mean']:.1f}")
        g = [p["gap@test"]["mean"] for p in r["points"]]
        cells.append(f"{min(g):.3f} .. {max(g):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _point_table(r) -> str:
    cols = [("gain_k@test", "gain of top-k opt., test", False)] + [(n, l, True) for n, l in POLICY_LABELS] + [
        ("full:opt_k@test", "top-k opt. % of full gain, test", True), ("gap@test", "gap J*full - J*topk, test", False)]
    head = ["w"] + [c[1] for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in r["points"]:
        cells = [_fw(p["weights"])]
        for name, _, pct in cols:
            cells.append(_pm(p[name], pct=pct, digits=1 if pct else 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(s, out) -> str:
    from .hard_world import OBJECTIVES, OBJECTIVE_SETS

    L = []
    L.append("# Hard exact world: MAVIS vs the exact optima (mean ± sd over seeds)")
    L.append("")
    L.append(f"Seeds {list(s.seeds)} (each: its own base model, prompt split and training run), beta "
             f"{', '.join(f'{b:g}' for b in s.betas)}, horizon {s.horizon}, top-{s.top_k} of 16 tokens, "
             f"{s.iterations} iterations, {s.trees_per_prompt} rollout trees per train prompt and objective, "
             f"{s.epochs} epochs, {s.mode}-mode value models trained by the real pipeline on 6 train prompts; "
             "3 validation prompts choose an iteration, 3 test prompts are held out.")
    L.append("")
    L.append("Objectives: " + "; ".join(f"`{o}` = {OBJECTIVES[o]}" for o in OBJECTIVE_SETS[3]) + ". Two objectives = "
             "`positive, brief`.")
    L.append("")
    L.append("Share (%) = `(J - J(top-k sampling)) / (J(top-k optimum) - J(top-k sampling))`, exact, averaged over the "
             "prompts of a set; J = E[w.r] - KL(pi || pi_ref)/beta with the KL to the FULL base model. `selected` = the "
             "iteration with the best worst-point share on the validation prompts (never the reported sets). "
             "`ceiling` = the linear value mix with exact per-objective values (the best the per-objective scheme "
             "can do); `perfect regression` = the exact values of the last iteration's data-collection policies.")
    L.append("")
    L.append("## Targets")
    L.append("")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for t in out["targets"]:
        L.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |")
    L.append("")
    L.append("## Worst grid point / mean over the grid (of the seed-mean), %")
    L.append("")
    L.append(_summary_table(out))
    L.append("")
    for key, r in out["results"].items():
        L.append(f"## {r['m']} objectives, beta {r['beta']:g}")
        L.append("")
        sel = ", ".join(f"seed {k}: it{v}" for k, v in r["selected_iteration"].items())
        L.append(f"Iteration chosen on the validation prompts: {sel}.")
        L.append("")
        L.append(_point_table(r))
        L.append("")
    L.append("## Monotonicity: exact single-objective J (train prompts) per trained iteration")
    L.append("")
    for bk, mono in out["monotonicity"].items():
        L.append(f"beta {bk}: every objective non-decreasing in {mono['seeds_all_nondecreasing']} of "
                 f"{len(s.seeds)} seeds")
        for o, per in mono["per_objective"].items():
            parts = [f"seed {sd}: " + " → ".join(f"{x:.4f}" for x in v["J"]) + ("" if v["nondecreasing"] else " (DECREASES)")
                     for sd, v in per.items()]
            L.append(f"- {o}: " + "; ".join(parts))
        L.append("")
    L.append("## Regression: validation MSE per iteration (held-out trees of the train prompts), mean over seeds")
    L.append("")
    L.append("| beta | " + " | ".join(f"it{n}" for n in range(s.iterations)) + " |")
    L.append("|---|" + "---|" * s.iterations)
    for bk, per in out["val_mse"].items():
        cols = []
        for n in range(s.iterations):
            xs = [v[n]["all"] for v in per.values()
                  if n < len(v) and isinstance(v[n], dict) and isinstance(v[n].get("all"), (int, float))]
            cols.append(f"{statistics.fmean(xs):.4f}" if xs else "n/a")
        L.append(f"| {bk} | " + " | ".join(cols) + " |")
    L.append("")
    noop = out.get("noop_iterations") or []
    L.append("Iterations whose value tables equal the previous iteration's (no change): "
             + (", ".join(f"seed {x['seed']} beta {x['beta']:g} it{x['iteration']}" for x in noop) if noop else "none")
             + ".")
    L.append("")
    L.append("## Rollout coverage: share of each depth's probability mass (under the collecting policy) on the "
             "prefixes the rollout trees visited, train prompts, mean over seeds")
    L.append("")
    L.append("| beta | iteration / tree set | " + " | ".join(f"depth {d}" for d in range(1, s.horizon + 1)) + " |")
    L.append("|---|---|" + "---|" * s.horizon)
    for bk, cov in out["coverage"].items():
        for name, c in cov.items():
            L.append(f"| {bk} | {name} | " + " | ".join(f"{100 * x:.0f}%" for x in c) + " |")
    L.append("")
    L.append("## World")
    L.append("")
    for seed, w in out["world"].items():
        L.append(f"- seed {seed}: split {w['split']}; pi_ref entropy {w['entropy_full']:.2f} nats per state "
                 f"(uniform: {math.log(16):.2f}); top-{s.top_k} mass by depth "
                 + ", ".join(f"{x:.2f}" for x in w["topk_mass_by_depth"])
                 + f"; {w['full_tree_states']} full-tree / {w['topk_tree_states']} top-k states")
    L.append("")
    L.append("## Time")
    L.append("")
    if out.get("wall_s") is not None:
        L.append(f"Whole run: {out['wall_s'] / 60:.1f} min wall, {s.jobs} parallel job(s) x {s.threads} thread(s).")
    tot = sum(v.get("cpu_s", 0.0) for v in out["timings"].values())
    L.append(f"Sum of task CPU times: {tot / 60:.1f} min.")
    L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------------- plots
def plot_shares(s, out, path: str) -> Optional[str]:
    """Two objectives: share of the top-k optimum's gain vs the weight of `positive`, one panel per
    beta, mean ± sd bands over seeds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = [k for k in out["results"] if out["results"][k]["m"] == 2]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.8), squeeze=False)
    styles = {"mavis_last@train": ("tab:blue", "-"), "mavis_last@test": ("tab:orange", "-"),
              "mavis_sel@test": ("tab:green", "--"), "ceiling@test": ("k", ":"), "exact_last@test": ("gray", "-.")}
    for ax, key in zip(axes[0], keys):
        r = out["results"][key]
        x = [p["weights"][0] for p in r["points"]]
        for name, label in POLICY_LABELS:
            c, ls = styles[name]
            mu = [100 * p[name]["mean"] for p in r["points"]]
            sd = [100 * p[name]["sd"] for p in r["points"]]
            ax.plot(x, mu, color=c, linestyle=ls, marker="o", ms=3, label=label)
            ax.fill_between(x, [a - b for a, b in zip(mu, sd)], [a + b for a, b in zip(mu, sd)], color=c, alpha=0.15)
        ax.set_title(f"beta {r['beta']:g}")
        ax.set_xlabel("w(positive)  [w(brief) = 1 - w]")
        ax.set_ylabel("% of the top-k optimum's gain")
        ax.axhline(90, color="red", lw=0.6)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"hard world, two objectives, top-{s.top_k}: mean ± sd over {len(s.seeds)} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_worst(s, out, path: str) -> Optional[str]:
    """Worst grid point of every setting (bars: seed-mean; dots: each seed's own worst point)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    keys = list(out["results"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(keys), 3.8))
    names = [n for n, _ in POLICY_LABELS]
    width = 0.8 / len(names)
    cmap = plt.get_cmap("tab10")
    for j, (name, label) in enumerate(POLICY_LABELS):
        xs = [i + (j - len(names) / 2 + 0.5) * width for i in range(len(keys))]
        vals = [100 * out["results"][k]["worst"][name]["worst_of_mean"] for k in keys]
        ax.bar(xs, vals, width, color=cmap(j), label=label)
        for x, k in zip(xs, keys):
            ax.plot([x] * len(s.seeds), [100 * v for v in out["results"][k]["worst"][name]["per_seed_worst"]], "k.", ms=3)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([f"{out['results'][k]['m']} obj.\nbeta {out['results'][k]['beta']:g}" for k in keys], fontsize=8)
    ax.set_ylabel("worst grid point, % of top-k optimum's gain")
    ax.axhline(90, color="red", lw=0.6)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fronts(s, path: str) -> Optional[str]:
    """Reward vs reward (two objectives) on the TEST prompts of the first seed, one panel per beta:
    the top-k optimum, the ceiling, MAVIS at the last iteration and top-k sampling over the grid."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from .quality_protocol import _paths, _wkey, grids

    seed = s.seeds[0]
    fig, axes = plt.subplots(1, len(s.betas), figsize=(4.4 * len(s.betas), 3.8), squeeze=False)
    styles = [("opt_k", "top-k optimum", "k", "o", "-"), ("ceiling", "linear-mix ceiling", "tab:red", "s", "--"),
              (f"mavis_it{s.iterations - 1}", "MAVIS last iteration", "tab:blue", "^", ":"),
              ("base_k", "top-k sampling", "gray", "x", "")]
    for ax, beta in zip(axes[0], s.betas):
        with open(_paths(s, seed, beta)["result"]) as f:
            run = json.load(f)
        idx = run["split"]["test"]
        for name, label, c, mk, ls in styles:
            xs, ys = [], []
            for w in grids(s)[2]:
                rec = run["policies"][name][_wkey(w)]
                xs.append(_mean([r[0] for r in rec["rewards"]], idx))
                ys.append(_mean([r[1] for r in rec["rewards"]], idx))
            ax.plot(xs, ys, color=c, marker=mk, linestyle=ls or "none", ms=4, lw=1, label=label)
        ax.set_xlabel("E[positive]")
        ax.set_ylabel("E[brief]")
        ax.set_title(f"beta {beta:g}, seed {seed}, test prompts")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(s, out) -> List[str]:
    from .atomic import atomic_write_json, atomic_write_text

    os.makedirs(s.out_dir, exist_ok=True)
    md = report_markdown(s, out)
    files = [os.path.join(s.out_dir, "report.md"), os.path.join(s.out_dir, "summary.json")]
    atomic_write_text(files[0], md + "\n")
    atomic_write_json(files[1], out, indent=None)
    for fn, name in ((plot_shares, "shares_two_objectives.png"), (plot_worst, "worst_points.png")):
        pth = fn(s, out, os.path.join(s.out_dir, name))
        if pth:
            files.append(pth)
    pth = plot_fronts(s, os.path.join(s.out_dir, "pareto_fronts_test_prompts.png"))
    if pth:
        files.append(pth)
    return files
