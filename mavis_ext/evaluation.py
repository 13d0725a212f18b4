"""Exact evaluation of decoding policies on the testbed: policies, weight sweeps, tables, plots.

Policies compared (each a function ``weights -> policy table``, see ``mavis_ext.testbed``):

* ``optimum``: the exact KL-regularized optimum of ``w . r`` (backward induction);
* ``base``: pi_ref;
* ``mod_mix``: the post-hoc mix of the per-objective optimal policies (what MOD does): per-step
  ``softmax(sum_i w_i log pi*_i)``;
* ``mavis_itN``: the MAVIS policy ``pi_ref * exp(beta * sum_i w_i V_i(s.a))`` over the base
  model's top-k, with value models from training iteration N, evaluated exactly: every state's
  candidates are scored by the value models in batches and tilted with the library's own ops
  (``topk_candidates``, ``value_heads`` through the value model, ``tilt_logits``);
* ``exactQ_itN`` (diagnostic): the same policy with *perfect* regression, i.e. the exact
  per-objective soft values of the paper's iteration (values of pi_ref at N = 0, then of the
  single-objective MAVIS policy of iteration N-1). It separates what the value models fail to
  learn from what the linear value mix itself loses.

With weights summing to 1, ``sum_i w_i log pi*_i = log pi_ref + beta * sum_i w_i Q*_i + const``:
the MOD mix is exactly MAVIS with the per-objective optimal values, i.e. the fixed point of the
paper's per-objective iteration. Its gap to ``optimum`` is the price of mixing values linearly.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from . import ops
from .testbed import Testbed

__all__ = [
    "weight_grid",
    "value_table_from_model",
    "exact_iteration_values",
    "mavis_policy",
    "mod_mix_policy",
    "standard_policies",
    "sweep",
    "summarize",
    "markdown_table",
    "write_results",
    "plot_fronts",
]


# ---------------------------------------------------------------------------------- grids
def weight_grid(m: int, points: int = 11) -> List[tuple]:
    """Weights on the simplex: for m = 2, ``points`` evenly spaced (w, 1-w) from (0, 1) to (1, 0);
    for m = 3, the simplex grid with ``points - 1`` steps per edge; m = 1 gives ``[(1.0,)]``."""
    if m == 1:
        return [(1.0,)]
    if points < 2:
        raise ValueError(f"points: need at least 2 grid points, got {points}")
    n = points - 1
    out = []
    for c in itertools.product(range(n + 1), repeat=m - 1):
        if sum(c) <= n:
            w = tuple(x / n for x in c) + ((n - sum(c)) / n,)
            out.append(tuple(round(x, 10) for x in w))
    return sorted(out, reverse=True)


# ---------------------------------------------------------------------------------- values
@torch.no_grad()
def value_table_from_model(tb: Testbed, value_models, batch_size: int = 8192) -> list:
    """``V_i(s.a)`` for every state ``s`` and every token ``a``, scored by trained value models
    (``ValueModel`` / ``ValueEnsemble``): a value table (list over depths of ``[N_t, m, V]``
    float64). Prefix-mode models run every complete sequence once and read the value at each
    position (a causal trunk's value at position P+t is that of the depth-t+1 prefix); Q-head models
    run the states once and gather all V candidate rows with ``value_heads``."""
    from .values import members_of

    members = members_of(value_models)
    if not members:
        raise ValueError("value_models: no ValueModel given")
    parts = [_member_table(tb, vm, batch_size) for vm in members]
    return [torch.cat([p[t] for p in parts], dim=1) for t in range(tb.horizon)]


def _forward_hidden(vm, ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = []
    for i in range(0, ids.shape[0], batch_size):
        x = ids[i:i + batch_size]
        pos = torch.arange(x.shape[1]).expand_as(x)
        out.append(vm.backbone_forward(x, attention_mask=torch.ones_like(x), position_ids=pos, use_cache=False).float())
    return torch.cat(out)


def _member_table(tb: Testbed, vm, batch_size: int) -> list:
    H, P, V, C = tb.horizon, len(tb.prompt_ids), tb.V, len(tb.cont)
    dev = next(vm.parameters()).device
    m = vm.m
    if vm.mode == "qhead":
        # Hidden state of each state s (at its last position), then Q_i(s, a) for all a via the op.
        h = _forward_hidden(vm, tb.input_ids(H - 1).to(dev), batch_size)  # [N_{H-1}, P+H-1, d]
        out = []
        for t in range(H):
            hs = h[tb.full_rows(t).to(dev), P + t - 1]
            cand = torch.arange(V, device=dev).expand(hs.shape[0], V)
            out.append(vm.heads(hs, candidate_ids=cand).double().cpu())
        return out
    # Prefix mode: all complete sequences s.a at the deepest level cover every continuing prefix.
    deep = tb.input_ids(H - 1)
    n = deep.shape[0]
    full = torch.cat([deep.repeat_interleave(V, 0), torch.arange(V).repeat(n)[:, None]], 1)  # [n*V, P+H]
    hid = _forward_hidden(vm, full.to(dev), batch_size)
    vals = []
    for i in range(0, hid.shape[0], batch_size):
        vals.append(vm.heads(hid[i:i + batch_size]).double().cpu())  # [b, m, P+H] via ops.value_heads
    vals = torch.cat(vals)
    out = []
    for t in range(H):
        nt = tb.states[t].shape[0]
        tab = torch.zeros(nt, m, V, dtype=torch.float64)
        if t == H - 1:
            tab[:] = vals[:, :, P + t].view(nt, V, m).permute(0, 2, 1)
        else:
            # child s.a (a continuing) = deepest row (s, a, cont0, ...) at position P+t.
            rows = (torch.arange(nt)[:, None] * C + torch.arange(C)[None, :]) * C ** (H - 2 - t)  # [nt, C]
            rows = rows * V + int(tb.cont[0])
            tab[:, :, tb.cont] = vals[rows.flatten(), :, P + t].view(nt, C, m).permute(0, 2, 1)
            # s.EOS is not a prefix of a deeper sequence: score those sequences on their own.
            eos_seq = torch.cat([tb.input_ids(t), torch.full((nt, 1), tb.eos_id)], 1).to(dev)
            he = _forward_hidden(vm, eos_seq, batch_size)[:, -1:]
            tab[:, :, tb.eos_id] = vm.heads(he).double().cpu()[:, :, 0]
        out.append(tab)
    return out


def exact_iteration_values(tb: Testbed, beta: float, iterations: int, *, zeta: Optional[float] = None,
                           top_k: int = 0) -> List[list]:
    """Perfect-regression version of the paper's per-objective iteration: value tables for
    iterations 0..iterations-1. Iteration 0: soft values of pi_ref; iteration n: of the
    single-objective MAVIS policy ``pi_ref exp(beta Q_i^{n-1})`` (top-k), objective by objective.
    ``zeta`` (the KL weight of the labels) defaults to ``1/beta``, the value that makes each
    single-objective step a soft policy improvement."""
    zeta = 1.0 / beta if zeta is None else zeta
    out = []
    cur = [tb.logp_ref] * tb.m  # data-collection policy per objective
    for n in range(iterations):
        tables = []
        for i in range(tb.m):
            Q, _ = tb.soft_values(cur[i], 0.0 if n == 0 else zeta)
            tables.append([q[:, i : i + 1] for q in Q])
        vt = [torch.cat([tables[i][t] for i in range(tb.m)], 1) for t in range(tb.horizon)]
        out.append(vt)
        cur = [mavis_policy(tb, vt, _unit(tb.m, i), beta, top_k) for i in range(tb.m)]
    return out


def exact_mixture_iteration(tb: Testbed, values: list, weights, beta: float, steps: int, *, zeta: Optional[float] = None,
                            top_k: int = 0) -> List[list]:
    """Perfect-regression version of the mixture-aware option: starting from ``values``, roll out
    the *mixed* MAVIS policy for ``weights`` and take its per-objective soft values (labels
    ``r_i - zeta * log-ratio``; with sum(w) = 1, ``w . V`` is then the soft value of the mixed
    policy for ``w . r``), ``steps`` times. Returns the value table after each step."""
    zeta = 1.0 / beta if zeta is None else zeta
    out, vt = [], values
    for _ in range(steps):
        pol = mavis_policy(tb, vt, weights, beta, top_k)
        Q, _ = tb.soft_values(pol, zeta)
        vt = [q.clone() for q in Q]
        out.append(vt)
    return out


def _unit(m, i):
    w = [0.0] * m
    w[i] = 1.0
    return w


# ---------------------------------------------------------------------------------- policies
def mavis_policy(tb: Testbed, values: list, weights, beta: float, top_k: int = 0, temperature: float = 1.0) -> list:
    """The exact MAVIS policy table: at every state, the base model's top-k candidates
    (``topk_candidates``; ``top_k`` 0 or >= V keeps all), tilted by ``beta * sum_i w_i V_i(s.a)``
    (``tilt_logits``), softmax over the candidates, zero elsewhere."""
    V = tb.V
    k = V if top_k <= 0 or top_k >= V else int(top_k)
    w = torch.as_tensor(weights, dtype=torch.float32).flatten()
    if w.numel() != values[0].shape[1]:
        raise ValueError(f"weights: expected {values[0].shape[1]} weights, got {w.numel()}")
    out = []
    for t in range(tb.horizon):
        logits = tb.logp_ref[t].float()
        cand_logits, cand_ids, _ = ops.topk_candidates(logits, k, temperature=temperature)
        vals = values[t].float().gather(2, cand_ids[:, None, :].expand(-1, values[t].shape[1], -1))
        tilted = ops.tilt_logits(cand_logits, vals, w, beta=beta)
        lp = torch.full((logits.shape[0], V), -math.inf, dtype=torch.float64)
        lp.scatter_(1, cand_ids, torch.log_softmax(tilted.double(), -1))
        out.append(lp)
    return out


def mod_mix_policy(per_objective_optima: Sequence[list], weights) -> list:
    """MOD-style post-hoc mix: per step ``softmax(sum_i w_i log pi*_i)``."""
    w = [float(x) for x in weights]
    H = len(per_objective_optima[0])
    out = []
    for t in range(H):
        mix = sum(wi * lp[t] for wi, lp in zip(w, per_objective_optima) if wi != 0.0)
        out.append(torch.log_softmax(mix, -1))
    return out


def standard_policies(tb: Testbed, beta: float) -> Dict[str, Callable]:
    """``optimum``, ``base`` and ``mod_mix`` as ``weights -> policy table``."""
    optima = [tb.optimal(_unit(tb.m, i), beta)[0] for i in range(tb.m)]
    return {
        "optimum": lambda w: tb.optimal(w, beta)[0],
        "mod_mix": lambda w: mod_mix_policy(optima, w),
        "base": lambda w: tb.logp_ref,
    }


def mavis_policies(tb: Testbed, value_tables: Sequence[list], beta: float, top_k: int = 0, prefix: str = "mavis_it"
                   ) -> Dict[str, Callable]:
    """One MAVIS policy per value table (iteration): ``{prefix}{n}``."""
    return {f"{prefix}{n}": (lambda w, vt=vt: mavis_policy(tb, vt, w, beta, top_k)) for n, vt in enumerate(value_tables)}


# ---------------------------------------------------------------------------------- sweeps
def sweep(tb: Testbed, policies: Dict[str, Callable], grid: Sequence[tuple], beta: float, progress=None) -> List[dict]:
    """Exact J_w, rewards and KL of every policy at every weight vector, plus each policy's share
    of the optimum's improvement over the base model, ``(J - J_base) / (J_opt - J_base)``."""
    rows = []
    it = grid if progress is None else progress(grid)
    for w in it:
        res = {}
        for name, pol in policies.items():
            e = tb.evaluate(pol(w), w, beta)
            res[name] = e.as_dict(tb.objectives)
        if "optimum" in res and "base" in res:
            gap = res["optimum"]["J"] - res["base"]["J"]
            for name, r in res.items():
                r["recovered"] = (r["J"] - res["base"]["J"]) / gap if gap > 1e-12 else float("nan")
        rows.append({"weights": [float(x) for x in w], "policies": res})
    return rows


def summarize(rows: List[dict]) -> Dict[str, dict]:
    """Per policy: the worst and mean share of the optimum's improvement over the grid."""
    names = list(rows[0]["policies"])
    out = {}
    for n in names:
        rec = [r["policies"][n].get("recovered", float("nan")) for r in rows]
        rec = [x for x in rec if x == x]
        out[n] = {"min_recovered": min(rec) if rec else float("nan"), "mean_recovered": sum(rec) / len(rec) if rec else float("nan")}
    return out


def best_iteration(summary: Dict[str, dict], prefix: str) -> Optional[str]:
    cands = [n for n in summary if n.startswith(prefix) and n[len(prefix):].isdigit()]
    if not cands:
        return None
    return max(cands, key=lambda n: (summary[n]["min_recovered"], summary[n]["mean_recovered"]))


def monotonicity(tb: Testbed, value_tables: Sequence[list], beta: float, top_k: int = 0) -> Dict[str, dict]:
    """For each objective alone (w = e_i): exact J of the MAVIS policy at each iteration and
    whether it never decreases."""
    out = {}
    for i, name in enumerate(tb.objectives):
        w = _unit(tb.m, i)
        Js = [tb.evaluate(mavis_policy(tb, vt, w, beta, top_k), w, beta).J for vt in value_tables]
        out[name] = {"J": Js, "nondecreasing": all(b >= a - 1e-9 for a, b in zip(Js, Js[1:]))}
    return out


# ---------------------------------------------------------------------------------- output
def _fmt_w(w):
    return "(" + ", ".join(f"{x:.2f}".rstrip("0").rstrip(".") if x not in (0, 1) else str(int(x)) for x in w) + ")"


def markdown_table(rows: List[dict], objectives: Sequence[str], policies: Optional[Sequence[str]] = None) -> str:
    """One line per weight vector: J_w of each policy, and the % of the optimum's improvement over
    the base that each non-reference policy recovers."""
    names = list(policies or rows[0]["policies"])
    rec_names = [n for n in names if n not in ("optimum", "base")]
    head = ["w (" + ", ".join(objectives) + ")"] + [f"J {n}" for n in names] + [f"% {n}" for n in rec_names]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        p = r["policies"]
        cells = [_fmt_w(r["weights"])] + [f"{p[n]['J']:.4f}" for n in names]
        cells += [f"{100 * p[n]['recovered']:.1f}" for n in rec_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_table(rows: List[dict], objectives: Sequence[str], policies: Optional[Sequence[str]] = None) -> str:
    """Per weight and policy: each objective's expected reward and the KL."""
    names = list(policies or rows[0]["policies"])
    head = ["w", "policy"] + [f"E[{o}]" for o in objectives] + ["KL", "J"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        for n in names:
            p = r["policies"][n]
            cells = [_fmt_w(r["weights"]), n] + [f"{p['r_' + o]:.4f}" for o in objectives] + [f"{p['kl']:.4f}", f"{p['J']:.4f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(summary: Dict[str, dict]) -> str:
    lines = ["| policy | worst % of optimum's gain | mean % |", "|---|---|---|"]
    for n, s in summary.items():
        if n in ("optimum", "base"):
            continue
        lines.append(f"| {n} | {100 * s['min_recovered']:.1f} | {100 * s['mean_recovered']:.1f} |")
    return "\n".join(lines)


def write_results(out_dir: str, name: str, payload: dict, markdown: str) -> tuple[str, str]:
    """``{name}.json`` and ``{name}.md`` in ``out_dir`` (created)."""
    os.makedirs(out_dir, exist_ok=True)
    jp, mp = os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}.md")
    with open(jp, "w") as f:
        json.dump(payload, f, indent=2)
    with open(mp, "w") as f:
        f.write(markdown + "\n")
    return jp, mp


_STYLE = {"optimum": ("k", "o", "-"), "base": ("gray", "x", ""), "mod_mix": ("tab:red", "s", "--")}


def plot_fronts(rows: List[dict], objectives: Sequence[str], path: str, title: str = "", policies=None) -> Optional[str]:
    """Pareto fronts over the weight grid: reward vs reward (each pair of objectives) and each
    objective's reward vs KL. Returns the PNG path, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(policies or rows[0]["policies"])
    pairs = list(itertools.combinations(range(len(objectives)), 2))
    ncols = len(pairs) + len(objectives)
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.8), squeeze=False)
    axes = axes[0]
    cmap = plt.get_cmap("viridis")
    mavis_names = [n for n in names if n not in _STYLE]

    def style(n):
        if n in _STYLE:
            return _STYLE[n]
        i = mavis_names.index(n)
        return (cmap(0.15 + 0.7 * i / max(1, len(mavis_names) - 1)), "^" if n.startswith("mavis") else "v", ":")

    for n in names:
        c, mk, ls = style(n)
        pts = [r["policies"][n] for r in rows]
        for k, (a, b) in enumerate(pairs):
            xa = [p["r_" + objectives[a]] for p in pts]
            xb = [p["r_" + objectives[b]] for p in pts]
            axes[k].plot(xa, xb, color=c, marker=mk, linestyle=ls or "none", label=n, ms=4, lw=1)
        for j, o in enumerate(objectives):
            ax = axes[len(pairs) + j]
            ax.plot([p["kl"] for p in pts], [p["r_" + o] for p in pts], color=c, marker=mk, linestyle="none", ms=4, label=n)
    for k, (a, b) in enumerate(pairs):
        axes[k].set_xlabel(f"E[{objectives[a]}]")
        axes[k].set_ylabel(f"E[{objectives[b]}]")
        axes[k].set_title("reward vs reward")
    for j, o in enumerate(objectives):
        ax = axes[len(pairs) + j]
        ax.set_xlabel("KL(pi || pi_ref)")
        ax.set_ylabel(f"E[{o}]")
        ax.set_title(f"{o} vs KL")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- the pipeline
@dataclass
class QualitySettings:
    """Everything ``mavis eval`` / ``mavis demo`` / ``benchmarks/bench_quality.py`` can set."""

    objectives: tuple = ("positive", "concise")
    horizon: int = 5
    beta: float = 3.0
    iterations: int = 4           # MAVIS value-model iterations 0..iterations-1
    grid_points: int = 11         # 2 objectives: points on the segment; 3: steps+1 per simplex edge
    top_k: int = 0                # 0: the full vocabulary (12 tokens)
    mode: str = "prefix"          # value-model mode
    trees: int = 96               # rollout trees (prompts) per iteration
    epochs: int = 4
    lr: float = 5e-3
    batch_size: int = 128
    root_branching: int = 4
    branching: int = 2
    seed: int = 0
    base_train_steps: int = 150
    exact_diagnostics: bool = True  # also sweep the exact-value MAVIS policies (exactQ_itN)
    mixture_aware: bool = False   # also train per-weight value models from mixed-weight rollouts
    mixture_iterations: int = 2
    out_dir: str = "mavis_eval_out"


def testbed_train_config(tb: Testbed, s: QualitySettings, out_dir: str, *, iterations: Optional[int] = None,
                         rollout_weights=None):
    """The ``TrainConfig`` used on the testbed: paper tree shape (4 root branches, then 2) over
    ``horizon`` layers, full-vocabulary candidates, labels ``r - zeta * (log-ratio after the
    node)`` with ``zeta = 1/beta`` (the coefficient under which each step is a soft policy
    improvement), and an optimizer sized for a 30k-parameter trunk (AdamW, lr 3e-3, no warmup)."""
    from .training import TrainConfig

    return TrainConfig(
        out_dir=out_dir,
        iterations=s.iterations if iterations is None else iterations,
        beta=s.beta,
        zeta=1.0 / s.beta,
        kl_label="future",
        rollout_weights=None if rollout_weights is None else [float(x) for x in rollout_weights],
        root_branching=s.root_branching,
        branching=s.branching,
        depth=tb.horizon,
        top_k=tb.V if s.top_k <= 0 else min(s.top_k, tb.V),
        max_new_tokens=tb.horizon,
        mode=s.mode,
        shared_trunk=True,
        optimizer="adamw",
        lr=s.lr,
        weight_decay=0.0,
        epochs=s.epochs,
        batch_size=s.batch_size,
        warmup=0,
        fraction_bottom_nodes_to_keep=1.0,
        val_fraction=0.1,
        eval_every=10**6,
        save_every=10**6,
        log_every=10**6,
        gen_batch_size=4096,
        prompts_per_shard=max(16, s.trees),  # one shard per iteration: large generate() batches
        reward_batch_size=4096,
        seed=s.seed,
        device="cpu",
    )


def train_value_tables(tb: Testbed, s: QualitySettings, out_dir: str, *, rollout_weights=None,
                       iterations: Optional[int] = None, progress: bool = True):
    """Train value models on the testbed with the real pipeline (``train_value_models`` with the
    testbed's reward callables) and score every state with each iteration's checkpoint.
    Returns ``(checkpoint_dirs, value_tables)``."""
    import copy

    from .training import train_value_models
    from .values import load_value_models

    cfg = testbed_train_config(tb, s, out_dir, iterations=iterations, rollout_weights=rollout_weights)
    prompts = [tb.prompt] * s.trees
    ref_before = [p.detach().clone() for p in tb.model.parameters()]
    dirs = train_value_models(tb.model, tb.tokenizer, prompts, tb.reward_fns(), cfg,
                              value_trunk=copy.deepcopy(tb.model), progress=progress)
    for a, b in zip(ref_before, tb.model.parameters()):
        if not torch.equal(a, b.detach()):
            raise RuntimeError("train_value_models modified the base model's weights")
    tables = []
    for d in dirs:
        vm = load_value_models(d)
        if list(vm.objectives) != list(tb.objectives):
            raise RuntimeError(f"value models in {d} have objectives {vm.objectives}, expected {tb.objectives}")
        tables.append(value_table_from_model(tb, vm))
    return dirs, tables


def quiet_transformers_progress() -> None:
    """Hide transformers' per-load/save progress bars (the checkpoints are saved and loaded many
    times); for the commands and scripts, not called by library functions."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def _tqdm(progress: bool):
    if not progress:
        return lambda it, **kw: it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return lambda it, **kw: it
    return lambda it, **kw: tqdm(it, **kw)


def run_quality(s: QualitySettings, *, train: bool = True, progress: bool = True, log=print, testbed: Optional[Testbed] = None
                ) -> dict:
    """Build the testbed, compute the exact policies, train value models with the real pipeline
    (iterations 0..N-1), sweep the weight grid and write ``quality.{md,json}`` and the Pareto-front
    plot to ``s.out_dir``. Returns everything as a dict (also what the JSON holds)."""
    import time

    from .testbed import OBJECTIVES, build_testbed

    bar = _tqdm(progress)
    timings = {}
    t0 = time.perf_counter()
    tb = testbed or build_testbed(s.objectives, horizon=s.horizon, seed=s.seed, train_steps=s.base_train_steps)
    timings["build_testbed_s"] = time.perf_counter() - t0
    k = tb.V if s.top_k <= 0 else min(s.top_k, tb.V)
    log(f"testbed: {tb.V} tokens, horizon {tb.horizon}, {tb.num_states} decision states, prompt {tb.prompt!r}, "
        f"objectives {tb.objectives}, beta {s.beta}, top_k {k}")
    for o in tb.objectives:
        log(f"  {o}: {OBJECTIVES[o]}")

    t0 = time.perf_counter()
    policies = standard_policies(tb, s.beta)
    exact_vts = exact_iteration_values(tb, s.beta, max(1, s.iterations), top_k=s.top_k)
    if s.exact_diagnostics:
        policies.update(mavis_policies(tb, exact_vts, s.beta, s.top_k, prefix="exactQ_it"))
    timings["exact_policies_s"] = time.perf_counter() - t0

    dirs, vts = [], []
    if train:
        t0 = time.perf_counter()
        dirs, vts = train_value_tables(tb, s, os.path.join(s.out_dir, "value_models"), progress=progress)
        policies.update(mavis_policies(tb, vts, s.beta, s.top_k))
        timings["train_value_models_s"] = time.perf_counter() - t0

    grid = weight_grid(tb.m, s.grid_points)
    t0 = time.perf_counter()
    rows = sweep(tb, policies, grid, s.beta, progress=lambda g: bar(g, desc="exact sweep", leave=False))
    timings["sweep_s"] = time.perf_counter() - t0

    mix_dirs = {}
    if train and s.mixture_aware:
        t0 = time.perf_counter()
        for r in bar(rows, desc="mixture-aware training"):
            w = r["weights"]
            if max(w) == 1.0:  # a single objective: the per-objective iteration already is mixture-aware
                vt = vts[-1]
            else:
                tag = "w_" + "_".join(f"{x:.2f}" for x in w)
                d, tabs = train_value_tables(tb, s, os.path.join(s.out_dir, "mixture_aware", tag), rollout_weights=w,
                                             iterations=s.mixture_iterations, progress=False)
                vt, mix_dirs[tag] = tabs[-1], d[-1]
            e = tb.evaluate(mavis_policy(tb, vt, w, s.beta, s.top_k), w, s.beta).as_dict(tb.objectives)
            p = r["policies"]
            gap = p["optimum"]["J"] - p["base"]["J"]
            e["recovered"] = (e["J"] - p["base"]["J"]) / gap if gap > 1e-12 else float("nan")
            p["mavis_mixaware"] = e
        timings["mixture_aware_s"] = time.perf_counter() - t0

    summ = summarize(rows)
    mono_trained = monotonicity(tb, vts, s.beta, s.top_k) if vts else {}
    mono_exact = monotonicity(tb, exact_vts, s.beta, s.top_k)
    best = best_iteration(summ, "mavis_it")
    linear_gap = [{"weights": r["weights"], "J_opt": r["policies"]["optimum"]["J"],
                   "J_mod_mix": r["policies"]["mod_mix"]["J"],
                   "gap": r["policies"]["optimum"]["J"] - r["policies"]["mod_mix"]["J"],
                   "recovered": r["policies"]["mod_mix"]["recovered"]} for r in rows]
    result = {
        "settings": {k2: (list(v) if isinstance(v, tuple) else v) for k2, v in vars(s).items()},
        "testbed": {"vocab": tb.V, "horizon": tb.horizon, "states": tb.num_states, "objectives": tb.objectives,
                    "words": list(tb.words), "prompt": tb.prompt, "top_k": k},
        "rows": rows,
        "summary": summ,
        "best_mavis_iteration": best,
        "target_95_met": (None if best is None else bool(summ[best]["min_recovered"] >= 0.95)),
        "monotonicity_trained": mono_trained,
        "monotonicity_exact_values": mono_exact,
        "linear_mix_gap": linear_gap,
        "checkpoints": dirs,
        "mixture_aware_checkpoints": mix_dirs,
        "timings": timings,
    }
    result["markdown"] = report_markdown(result, tb.objectives)
    os.makedirs(s.out_dir, exist_ok=True)
    result["files"] = list(write_results(s.out_dir, "quality", {k2: v for k2, v in result.items() if k2 != "markdown"},
                                         result["markdown"]))
    png = plot_fronts(rows, tb.objectives, os.path.join(s.out_dir, "pareto_fronts.png"),
                      title=f"exact Pareto fronts, beta={s.beta}, horizon {tb.horizon}",
                      policies=_plot_policies(rows))
    if png:
        result["files"].append(png)
    result["testbed_obj"] = tb
    result["value_tables"] = vts
    return result


def _plot_policies(rows):
    names = list(rows[0]["policies"])
    keep = [n for n in names if not n.startswith("exactQ_it")]
    return keep


def report_markdown(result: dict, objectives: Sequence[str]) -> str:
    """The report: J per policy per weight with % of the optimum's gain, the summary, the
    monotonicity check, and the per-weight gap of the linear value mix."""
    rows, summ = result["rows"], result["summary"]
    names = [n for n in rows[0]["policies"] if not n.startswith("exactQ_it")]
    out = [f"### J_w = E[w.r] - KL/beta per policy (beta = {result['settings']['beta']}), "
           "and % of the optimum's improvement over the base recovered", "",
           markdown_table(rows, objectives, names), "", "### Worst / mean % over the grid", "", summary_table(summ), ""]
    best = result.get("best_mavis_iteration")
    if best:
        ok = summ[best]["min_recovered"] >= 0.95
        out.append(f"Best MAVIS iteration: **{best}**, worst grid point {100 * summ[best]['min_recovered']:.1f}% "
                   f"of the optimum's gain: 95% target {'MET' if ok else 'NOT met'}.")
        out.append("")
    for title, key in (("trained value models", "monotonicity_trained"), ("exact values (perfect regression)",
                                                                          "monotonicity_exact_values")):
        mono = result.get(key) or {}
        if mono:
            out.append(f"Single-objective J per iteration, {title}:")
            for o, r in mono.items():
                js = ", ".join(f"{x:.4f}" for x in r["J"])
                out.append(f"- {o}: {js} -> {'non-decreasing' if r['nondecreasing'] else 'DECREASES'}")
            out.append("")
    out.append("Linear value mix vs the optimum (MOD mix = MAVIS with exact per-objective values):")
    out.append("")
    out.append("| w | J optimum | J linear mix | gap | % of gain |")
    out.append("|---|---|---|---|---|")
    for g in result["linear_mix_gap"]:
        out.append(f"| {_fmt_w(g['weights'])} | {g['J_opt']:.4f} | {g['J_mod_mix']:.4f} | {g['gap']:.4f} | "
                   f"{100 * g['recovered']:.1f} |")
    return "\n".join(out)
