"""The quality protocol on the hard world: seeds, betas, train / validation / test prompts, both
optima, the linear-mix ceiling, trained value models, and no selection on the test numbers.

For every seed (a different base model, prompt split and training run) and every beta, the real
training pipeline trains prefix-mode value models for the three objectives on the TRAIN prompts
only. Every policy is then evaluated exactly, per prompt, at every weight vector of the grids
(two objectives: 11 points; three: the simplex grid with 4 steps per edge; a two-objective run
uses the first two value heads with weight 0 on the third, which the paper's per-objective
scheme makes legitimate: each objective's rollouts and labels never depend on the others):

* ``opt_k``: the optimum restricted to the base model's top-k (the best any top-k method can do);
* ``base_k``: the base model's top-k sampling (the zero of every top-k share);
* ``ceiling``: the linear value mix with EXACT per-objective values (each objective's own
  restricted optimum, mixed linearly): what MAVIS reaches with perfect regression at the fixed
  point of its iteration;
* ``exact_itN``: perfect regression of iteration N (soft values of the data-collection policy);
* ``mavis_itN``: the trained value models of iteration N;
* from the full tree: ``opt_full`` (the full-vocabulary optimum) and ``base`` (pi_ref).

Headline: a policy's share of the restricted optimum's gain over top-k sampling,
``(J - J(base_k)) / (J(opt_k) - J(base_k))``, mean ± sd over seeds, on the training prompts and on
the held-out TEST prompts. The iteration reported besides the last is chosen per seed on the
VALIDATION prompts (the worst grid point of their exact share, then the mean): validation prompts
are neither trained on nor reported, so the choice never looks at the reported numbers.

Layout of ``out_dir``: ``runs/seed{S}_reference.json`` (full tree) and
``runs/seed{S}_beta{B}.json`` (one training run) are written as each task ends (a rerun skips what
is there, so an interrupted benchmark resumes); ``report.md``, ``summary.json`` and the plots come
from them at the end. ``work/`` holds base models, trees and checkpoints while tasks run.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

__all__ = ["HardSettings", "quick_settings", "run_hard_benchmark", "hard_train_config", "exact_iteration_tables",
           "ceiling_table", "coverage"]


@dataclass
class HardSettings:
    seeds: tuple = (0, 1, 2)
    betas: tuple = (1.0, 3.0, 8.0)
    horizon: int = 5
    top_k: int = 8
    iterations: int = 4
    trees_per_prompt: int = 8      # rollout trees per TRAIN prompt and tree set, per iteration
    epochs: int = 6
    lr: float = 5e-3
    batch_size: int = 64
    mode: str = "prefix"
    root_branching: int = 4
    branching: int = 2
    grid2: int = 11                # two objectives: points on the segment
    grid3: int = 5                 # three objectives: points per simplex edge
    base_train_steps: int = 300
    corpus_per_prompt: int = 400
    alpha: float = 0.3             # Dirichlet concentration of the corpus chain (lower: peakier pi_ref)
    threads: int = 1               # torch threads per task (fixed: results depend on it through float sums)
    jobs: int = 1                  # tasks run in parallel (processes)
    out_dir: str = "benchmarks/results/hard"
    keep_checkpoints: bool = False

    # fields that do not change any number of the results
    _FREE = ("jobs", "out_dir", "keep_checkpoints")

    def validate(self) -> "HardSettings":
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(int(s) < 0 for s in self.seeds):
            raise ValueError(f"seeds: expected distinct non-negative integers, got {self.seeds}")
        if not self.betas or any(not (b > 0 and math.isfinite(b)) for b in self.betas):
            raise ValueError(f"betas: expected positive numbers, got {self.betas}")
        for name, lo in (("horizon", 1), ("top_k", 1), ("iterations", 1), ("trees_per_prompt", 2), ("epochs", 1),
                         ("batch_size", 1), ("root_branching", 1), ("branching", 1), ("grid2", 2), ("grid3", 2),
                         ("corpus_per_prompt", 1), ("threads", 1), ("jobs", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")
        if self.horizon > 6:
            raise ValueError(f"horizon: at most 6 (the full tree grows as 15**horizon), got {self.horizon}")
        if self.top_k > 16:
            raise ValueError(f"top_k: at most 16 (the vocabulary), got {self.top_k}")
        if self.mode not in ("prefix", "qhead"):
            raise ValueError(f"mode: expected 'prefix' or 'qhead', got {self.mode!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        return self

    def key(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self._FREE}
        return json.loads(json.dumps(d))

    def key_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:16]


def quick_settings(**overrides) -> HardSettings:
    """The CI size: 2 seeds, beta 3, horizon 3, top-4, 2 iterations (well under a minute on 2 cores)."""
    s = HardSettings(seeds=(0, 1), betas=(3.0,), horizon=3, top_k=4, iterations=2, trees_per_prompt=4, epochs=3,
                     grid2=5, grid3=3, base_train_steps=120, corpus_per_prompt=150, out_dir="mavis_eval_hard_quick")
    for k, v in overrides.items():
        setattr(s, k, v)
    return s


# ---------------------------------------------------------------------- small helpers
def _wkey(w: Sequence[float]) -> str:
    return ",".join(f"{float(x):.4f}" for x in w)


def grids(s: HardSettings) -> Dict[int, List[List[float]]]:
    """Weight grids per number of objectives, padded to the world's 3 objectives."""
    from .evaluation import weight_grid

    return {2: [list(w) + [0.0] for w in weight_grid(2, s.grid2)], 3: [list(w) for w in weight_grid(3, s.grid3)]}


def _all_weights(s: HardSettings) -> List[List[float]]:
    seen, out = set(), []
    for ws in grids(s).values():
        for w in ws:
            if _wkey(w) not in seen:
                seen.add(_wkey(w))
                out.append(w)
    return out


def _unit(m: int, i: int) -> List[float]:
    w = [0.0] * m
    w[i] = 1.0
    return w


def _paths(s: HardSettings, seed: int, beta: Optional[float] = None) -> dict:
    work = os.path.join(s.out_dir, "work", f"seed{seed}")
    runs = os.path.join(s.out_dir, "runs")
    d = {"work": work, "runs": runs, "base": os.path.join(work, "base"), "tree": os.path.join(work, "topk_tree.pt"),
         "reference": os.path.join(runs, f"seed{seed}_reference.json")}
    if beta is not None:
        tag = f"beta{beta:g}"
        d["train_dir"] = os.path.join(work, tag, "value_models")
        d["result"] = os.path.join(runs, f"seed{seed}_{tag}.json")
    return d


def _done(path: str, s: HardSettings) -> bool:
    if not os.path.isfile(path):
        return False
    try:
        with open(path) as f:
            got = json.load(f).get("settings_key")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable result file ({type(e).__name__}: {e}); delete it to recompute") from None
    if got != s.key_hash():
        raise ValueError(f"{path}: holds results of different settings (key {got}, now {s.key_hash()}); "
                         "use a new --out or delete that directory")
    return True


def _save_tree(tree, path: str) -> None:
    from .atomic import atomic_torch_save

    atomic_torch_save({f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}, path)


def _load_tree(path: str):
    from .exact_tree import ExactTree

    try:
        d = torch.load(path, weights_only=True)
        return ExactTree(**d)
    except Exception as e:  # noqa: BLE001 - rebuildable: say so
        raise ValueError(f"{path}: cannot read the saved top-k tree ({type(e).__name__}: {e}); delete it and rerun "
                         "(the seed's reference task rebuilds it)") from None


def _policy_record(tree, policy, weights: Sequence[float], beta: float) -> dict:
    e = tree.evaluate(policy, weights, beta)
    return {"J": e.J.tolist(), "rewards": e.rewards.tolist(), "kl": e.kl.tolist()}


# ---------------------------------------------------------------------- task 1: the full tree
def reference_task(s: HardSettings, seed: int, log=print) -> dict:
    """Build the seed's world with its full tree; save the base model and the top-k tree for the
    training tasks; record pi_ref's and the full-vocabulary optimum's J per prompt at every
    (beta, weight vector). Skipped when its results exist and no training task still needs the
    saved files (a rebuild for a resumed run must reproduce the same world, or it stops)."""
    from .atomic import atomic_write_json
    from .hard_world import build_hard_world, entropy_per_state, world_fingerprint

    p = _paths(s, seed)
    have_json = _done(p["reference"], s)
    have_files = os.path.isdir(p["base"]) and os.path.isfile(p["tree"])
    pending = [b for b in s.betas if not _done(_paths(s, seed, b)["result"], s)]
    old = None
    if have_json:
        with open(p["reference"]) as f:
            old = json.load(f)
        if have_files or not pending:
            return old
    t0, c0 = time.perf_counter(), time.process_time()
    torch.set_num_threads(s.threads)
    world = build_hard_world(seed, horizon=s.horizon, top_k=s.top_k, train_steps=s.base_train_steps,
                             corpus_per_prompt=s.corpus_per_prompt, alpha=s.alpha)
    t_build = time.perf_counter() - t0
    sha = world_fingerprint(world)
    if old is not None and old.get("world_sha256") != sha:
        raise RuntimeError(f"seed {seed}: the rebuilt world differs from the one in {p['reference']} (another torch "
                           "version or thread count?); use a new --out")
    os.makedirs(p["work"], exist_ok=True)
    if os.path.isdir(p["base"]):
        shutil.rmtree(p["base"])
    world.model.save_pretrained(p["base"])
    world.tokenizer.save_pretrained(p["base"])
    _save_tree(world.tree, p["tree"])
    if old is not None:
        return old
    full, tree = world.full, world.tree
    base_full = full.evaluate(full.base_policy())
    out = {"kind": "reference", "seed": seed, "settings_key": s.key_hash(), "world_sha256": sha,
           "world": world.describe(), "entropy_full": entropy_per_state(full),
           "topk_mass_by_depth": [float(tree.logp_ref[t].exp().sum(-1).mean()) for t in range(tree.horizon)],
           "base_rewards": base_full.rewards.tolist(), "opt_full": {}, "base": {}}
    for beta in s.betas:
        bk = f"{beta:g}"
        out["opt_full"][bk], out["base"][bk] = {}, {}
        for w in _all_weights(s):
            wt = torch.tensor(w, dtype=torch.float64)
            out["opt_full"][bk][_wkey(w)] = full.optimal_value(w, beta).tolist()
            out["base"][bk][_wkey(w)] = (base_full.rewards @ wt).tolist()   # KL(pi_ref || pi_ref) = 0
    out["timings"] = {"build_s": t_build, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    os.makedirs(p["runs"], exist_ok=True)
    atomic_write_json(p["reference"], out, indent=None)
    log(f"seed {seed}: world built ({full.num_states} full-tree / {tree.num_states} top-{s.top_k} states), "
        f"references in {out['timings']['wall_s']:.0f} s")
    return out


# ---------------------------------------------------------------------- task 2: one training run
def hard_train_config(s: HardSettings, beta: float, seed: int, out_dir: str, n_prompts: int):
    """The ``TrainConfig`` of one run: the paper's tree shape (4 root branches, then 2, one token
    per layer over the horizon), the base model's top-k candidates, labels ``r - zeta *
    (log-ratio after the node)`` with ``zeta = 1/beta`` (each step a soft policy improvement),
    AdamW sized for a tiny trunk, all trees of an iteration in one shard."""
    from .training import TrainConfig

    return TrainConfig(
        out_dir=out_dir, iterations=s.iterations, beta=float(beta), zeta=1.0 / float(beta), kl_label="future",
        root_branching=s.root_branching, branching=s.branching, depth=s.horizon, top_k=s.top_k,
        max_new_tokens=s.horizon, mode=s.mode, shared_trunk=True, optimizer="adamw", lr=s.lr, weight_decay=0.0,
        epochs=s.epochs, batch_size=s.batch_size, warmup=0, fraction_bottom_nodes_to_keep=1.0, val_fraction=0.1,
        eval_every=10**6, save_every=10**6, log_every=10**6, gen_batch_size=4096,
        prompts_per_shard=max(16, n_prompts), reward_batch_size=4096, seed=int(seed) * 1000 + int(round(beta * 10)),
        device="cpu")


def exact_iteration_tables(tree, beta: float, iterations: int) -> List[list]:
    """Perfect-regression version of the pipeline's iteration on the top-k tree: iteration 0 = the
    soft values (no KL term, as the pipeline's iteration 0) of top-k sampling; iteration n = for
    each objective i, the soft values (zeta = 1/beta) of the single-objective MAVIS policy built
    from iteration n-1's values."""
    out = []
    Q = tree.soft_values(tree.base_policy(), 0.0)
    out.append(Q)
    for _ in range(1, iterations):
        prev = out[-1]
        cols = []
        for i in range(tree.m):
            pol = tree.tilted_policy(prev, _unit(tree.m, i), beta)
            cols.append([q[:, i:i + 1] for q in tree.soft_values(pol, 1.0 / beta)])
        out.append([torch.cat([c[t] for c in cols], 1) for t in range(tree.horizon)])
    return out


def ceiling_table(tree, beta: float) -> list:
    """Each objective's exact restricted-optimal Q*_i as a value table: mixed linearly by
    ``tilted_policy`` it is the linear-mix ceiling."""
    cols = [tree.optimal(_unit(tree.m, i), beta)[1] for i in range(tree.m)]
    return [torch.stack([c[t] for c in cols], 1) for t in range(tree.horizon)]


def coverage(tree, forests, policy) -> List[float]:
    """Share of each depth's probability mass (under the data-collection ``policy``) held by the
    distinct response prefixes the rollout forests visited, averaged over the prompts that have
    trees. Depth d = prefixes of d tokens, d = 1..H."""
    import numpy as np

    vis = tree.visitation(policy)
    H = tree.horizon
    covered = [set() for _ in range(H + 1)]
    prompt_root = {}
    for forest, roots_of_tree in forests:
        for n in range(forest.n_nodes):
            if forest.node_parent[n] < 0:
                continue
            toks = forest.response_tokens(n)
            r = int(roots_of_tree[int(forest.node_tree[n])])
            prompt_root[r] = True
            for d in range(1, min(len(toks), H) + 1):
                covered[d].add((r, tuple(int(x) for x in toks[:d])))
    out = []
    roots = sorted(prompt_root)
    for d in range(1, H + 1):
        # mass of a depth-d prefix s.a = visitation of s (depth d-1) times pi(a | s)
        keys = sorted(covered[d])
        if not keys:
            out.append(0.0)
            continue
        rt = torch.tensor([k[0] for k in keys])
        L = torch.tensor([d] * len(keys))
        toks = torch.tensor([list(k[1]) for k in keys])
        parent = tree.lookup(rt, toks[:, :-1], L - 1)
        ok = parent >= 0
        acts = tree.actions[d - 1][parent.clamp_min(0)]
        hit = acts == toks[:, -1:]
        col = hit.long().argmax(-1)
        ok &= hit.any(-1)
        p = policy[d - 1].exp()[parent.clamp_min(0), col] * vis[d - 1][parent.clamp_min(0)]
        got = torch.zeros(tree.n_roots, dtype=torch.float64)
        got.index_add_(0, rt[ok], p[ok])
        # total mass at depth d: every (state at depth d-1, action) pair, EOS included
        tot = torch.zeros(tree.n_roots, dtype=torch.float64)
        tot.index_add_(0, tree.root[d - 1], vis[d - 1] * policy[d - 1].exp().sum(-1))
        out.append(float(np.mean([float(got[r] / tot[r]) for r in roots if tot[r] > 0])))
    return out


def train_task(s: HardSettings, seed: int, beta: float, log=print, progress: bool = False) -> dict:
    """One training run (seed, beta) with the real pipeline on the train prompts, and the exact
    evaluation of every policy at every weight vector, per prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .atomic import atomic_write_json
    from .hard_world import OBJECTIVE_SETS, split_prompts, text_rewards
    from .training import train_value_models
    from .training.storage import load_forest
    from .tree_values import value_table
    from .values import load_value_models

    p = _paths(s, seed, beta)
    if _done(p["result"], s):
        with open(p["result"]) as f:
            return json.load(f)
    t0, c0 = time.perf_counter(), time.process_time()
    torch.set_num_threads(s.threads)
    with open(p["reference"]) as f:
        ref = json.load(f)
    model = AutoModelForCausalLM.from_pretrained(p["base"]).eval()
    tok = AutoTokenizer.from_pretrained(p["base"])
    tree = _load_tree(p["tree"])
    prompts = ref["world"]["prompts"]
    split = split_prompts(seed)
    objectives = list(OBJECTIVE_SETS[3])
    weights = _all_weights(s)
    timings = {}

    # exact references on the top-k tree
    t1 = time.perf_counter()
    base_k = tree.base_policy()
    exact_vts = exact_iteration_tables(tree, beta, s.iterations)
    ceil_vt = ceiling_table(tree, beta)
    pol = {"base_k": {}, "opt_k": {}, "ceiling": {}}
    pol.update({f"exact_it{n}": {} for n in range(s.iterations)})
    for w in weights:
        k = _wkey(w)
        pol["base_k"][k] = _policy_record(tree, base_k, w, beta)
        pol["opt_k"][k] = _policy_record(tree, tree.optimal(w, beta)[0], w, beta)
        pol["ceiling"][k] = _policy_record(tree, tree.tilted_policy(ceil_vt, w, beta), w, beta)
        for n, vt in enumerate(exact_vts):
            pol[f"exact_it{n}"][k] = _policy_record(tree, tree.tilted_policy(vt, w, beta), w, beta)
    timings["exact_s"] = time.perf_counter() - t1

    # training on the train prompts only
    t1 = time.perf_counter()
    train_prompts = [prompts[i] for i in split["train"] for _ in range(s.trees_per_prompt)]
    cfg = hard_train_config(s, beta, seed, p["train_dir"], len(train_prompts))
    dirs = train_value_models(model, tok, train_prompts, text_rewards(objectives), cfg,
                              value_trunk=copy.deepcopy(model), progress=progress)
    timings["train_s"] = time.perf_counter() - t1

    # every iteration's value models, scored on the whole tree (all prompts)
    t1 = time.perf_counter()
    vts, val_mse, trained_prompts = [], [], set()
    for n, d in enumerate(dirs):
        vm = load_value_models(d)
        if list(vm.objectives) != objectives:
            raise RuntimeError(f"{d}: value models for {vm.objectives}, expected {objectives}")
        vts.append(value_table(tree, vm))
        with open(os.path.join(os.path.dirname(d), "metrics.json")) as f:
            val_mse.append(json.load(f).get("val_mse"))
        for w in weights:
            pol.setdefault(f"mavis_it{n}", {})[_wkey(w)] = _policy_record(tree, tree.tilted_policy(vts[-1], w, beta),
                                                                       w, beta)
    timings["value_tables_s"] = time.perf_counter() - t1
    # an iteration whose models equal the previous one's (e.g. a regression that kept its warm
    # start) would make "improves over N iterations" claim one iteration too many
    identical = [False] + [all(torch.equal(a, b) for a, b in zip(vts[n], vts[n - 1])) for n in range(1, len(vts))]

    # rollout coverage, and which prompts the pipeline actually saw
    t1 = time.perf_counter()
    root_of = {pr: i for i, pr in enumerate(prompts)}
    cov = {}
    for n in range(s.iterations):
        it_dir = os.path.join(p["train_dir"], f"iter_{n:03d}", "trees")
        for set_name in sorted(d for d in os.listdir(it_dir) if os.path.isdir(os.path.join(it_dir, d))):
            forests = []
            for fn in sorted(os.listdir(os.path.join(it_dir, set_name))):
                if fn.endswith(".safetensors"):
                    forest, _ = load_forest(os.path.join(it_dir, set_name, fn))
                    trained_prompts.update(forest.prompts)
                    forests.append((forest, [root_of[pr] for pr in forest.prompts]))
            if n == 0:
                collect = base_k
            else:
                i = objectives.index(set_name)
                collect = tree.tilted_policy(vts[n - 1], _unit(len(objectives), i), beta)
            cov[f"it{n}/{set_name}"] = coverage(tree, forests, collect)
    timings["coverage_s"] = time.perf_counter() - t1
    leaked = sorted(trained_prompts - {prompts[i] for i in split["train"]})
    if leaked:
        raise RuntimeError(f"held-out prompts reached the training pipeline: {leaked}")

    out = {"kind": "train", "seed": seed, "beta": beta, "settings_key": s.key_hash(), "objectives": objectives,
           "split": split, "prompts_trained": sorted(trained_prompts), "policies": pol, "val_mse": val_mse,
           "identical_to_previous": identical, "coverage": cov}
    timings["wall_s"] = time.perf_counter() - t0
    timings["cpu_s"] = time.process_time() - c0
    out["timings"] = timings
    atomic_write_json(p["result"], out, indent=None)
    if not s.keep_checkpoints:
        shutil.rmtree(os.path.dirname(p["train_dir"]), ignore_errors=True)
    log(f"seed {seed}, beta {beta:g}: trained and evaluated in {timings['wall_s']:.0f} s "
        f"(training {timings['train_s']:.0f} s)")
    return out


# ---------------------------------------------------------------------- running the tasks
def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    from .evaluation import quiet_transformers_progress

    quiet_transformers_progress()


def _call(kind: str, s: HardSettings, seed: int, beta: Optional[float]):
    if kind == "reference":
        reference_task(s, seed)
    else:
        train_task(s, seed, beta)
    return kind, seed, beta


def _run_all(s: HardSettings, log) -> None:
    """Every seed's reference task, then its training tasks (one per beta). With ``jobs`` > 1 the
    tasks run in that many processes and a seed's training tasks are queued as soon as its
    reference task is done, so no worker waits for the other seeds' worlds."""
    if s.jobs == 1:
        for seed in s.seeds:
            reference_task(s, seed, log)
        for beta in s.betas:
            for seed in s.seeds:
                train_task(s, seed, beta, log)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(max_workers=s.jobs, mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(s.threads,)) as ex:
        pending = {ex.submit(_call, "reference", s, seed, None) for seed in s.seeds}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                kind, seed, beta = f.result()     # re-raises a task's error here
                log(f"  done: {kind} seed {seed}" + ("" if beta is None else f" beta {beta:g}"))
                if kind == "reference":
                    pending |= {ex.submit(_call, "train", s, seed, b) for b in s.betas}


def run_hard_benchmark(s: HardSettings, log=print) -> dict:
    """Run (or resume) every task, then aggregate: returns the summary and writes the report."""
    s.validate()
    t0 = time.perf_counter()
    os.makedirs(os.path.join(s.out_dir, "runs"), exist_ok=True)
    log(f"hard world: seeds {list(s.seeds)}, betas {list(s.betas)}, horizon {s.horizon}, top-{s.top_k}, "
        f"{s.iterations} iterations, {s.trees_per_prompt} trees per train prompt; {s.jobs} job(s) x {s.threads} "
        f"thread(s); results in {s.out_dir}")
    threads = torch.get_num_threads()
    try:
        _run_all(s, log)
    finally:
        torch.set_num_threads(threads)   # the tasks pin the thread count (results depend on it)
    wall = time.perf_counter() - t0
    if not s.keep_checkpoints:
        shutil.rmtree(os.path.join(s.out_dir, "work"), ignore_errors=True)
    from .quality_report import aggregate, write_report

    summary = aggregate(s, wall_s=wall)
    files = write_report(s, summary)
    summary["files"] = files
    log(f"done in {wall / 60:.1f} min wall; report: {files[0]}")
    return summary
