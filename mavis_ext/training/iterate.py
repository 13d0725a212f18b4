"""The outer loop of MAVIS value training (soft policy iteration, DESIGN.md section 5).

Iteration n:
  1. collect: rollout trees from the current policy (n = 0: the base model's top-k sampling;
     n >= 1: the MAVIS policy with iteration n-1's value models, one single-objective policy per
     objective as in the paper, or one policy with ``rollout_weights``), one shard of prompts at a
     time, each shard's trees and leaf rewards saved as soon as they exist;
  2. label: node values (means of children) minus ``zeta`` x the KL term;
  3. train: MSE regression of the value model(s), warm-started from iteration n-1;
  4. record metrics (mean reward per objective, KL, value MSE) and mark the iteration done.

Layout of ``out_dir`` (every file written atomically; a rerun skips what exists)::

    run.json                     config, objectives and prompt fingerprint (checked on resume)
    train.log, metrics.jsonl     log of losses; one JSON line per finished iteration
    iter_000/trees/<set>/shard_00000.safetensors   forests (trees.py / storage.py)
    iter_000/labels/<set>/shard_00000.safetensors  leaf rewards
    iter_000/train_state/<group>/                  resumable training checkpoints (removed when done)
    iter_000/model/                                the value model(s): load_value_models(this dir)
    iter_000/metrics.json, iter_000/DONE

Under ``torchrun`` shards are dealt round-robin to ranks, every rank then reads all shards, and
training splits each global batch across ranks (regression.py); rank 0 writes the shared files.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import torch

from ..atomic import atomic_write_json, atomic_write_text, cleanup_tmp
from ..rewards import check_reward_output, load_rewards
from .config import TrainConfig
from .dataset import PathExamples, bottom_node_mask, build_examples, split_trees
from .distributed import DistInfo, barrier, init_distributed
from .faults import maybe_kill
from .labeling import expected_path_logratio, node_labels, node_values, score_leaves, token_suffix_logratio
from .prompts import load_prompts
from .regression import train_regression
from .seeds import derive_seed, rng_for
from .storage import load_forest, load_leaf_rewards, save_forest, save_leaf_rewards, shard_name
from .trees import grow_forest

__all__ = ["train_value_models", "TreeSet", "plan_tree_sets", "iteration_dir"]

log = logging.getLogger("mavis_ext.training")


@dataclass
class TreeSet:
    """One collection policy of an iteration and the objectives its trees supervise."""
    name: str
    weights: Optional[List[float]]   # None: base model sampling
    beta: float
    supervises: List[int]            # objective indices


def plan_tree_sets(iteration: int, objectives: List[str], cfg: TrainConfig) -> List[TreeSet]:
    m = len(objectives)
    if iteration == 0:
        return [TreeSet("base", None, 0.0, list(range(m)))]
    if cfg.rollout_weights is not None:
        return [TreeSet("mix", list(cfg.rollout_weights), cfg.beta_for(None), list(range(m)))]
    sets = []
    for i, o in enumerate(objectives):
        w = [0.0] * m
        w[i] = 1.0
        sets.append(TreeSet(o, w, cfg.beta_for(o), [i]))
    return sets


def iteration_dir(out_dir: str, iteration: int) -> str:
    return os.path.join(out_dir, f"iter_{iteration:03d}")


def _prompt_pool(n_prompts: int, iteration: int, cfg: TrainConfig) -> List[int]:
    if cfg.prompts_per_iteration is None or cfg.prompts_per_iteration >= n_prompts:
        return list(range(n_prompts))
    P = cfg.prompts_per_iteration
    start = (iteration * P) % n_prompts
    return [(start + j) % n_prompts for j in range(P)]


def _shards(pool: List[int], per: int) -> List[List[int]]:
    return [pool[i:i + per] for i in range(0, len(pool), per)]


# ----------------------------------------------------------------------------- setup and checks
def _load_base(base_model, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(base_model, (str, os.PathLike)):
        src = os.fspath(base_model)
        try:
            model = AutoModelForCausalLM.from_pretrained(src)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"base_model: cannot load causal LM {src!r}: {type(e).__name__}: {e}") from e
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(src)
    else:
        model = base_model
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"base_model: expected a Hugging Face causal LM or an id/path, got {type(model).__name__}")
        if tokenizer is None:
            src = getattr(model.config, "_name_or_path", None)
            if not src:
                raise ValueError("tokenizer: required when base_model is a model object without a source path")
            tokenizer = AutoTokenizer.from_pretrained(src)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    return model.eval(), tokenizer


def _tokenize(tokenizer, prompts: List[str], max_new_tokens: int, model) -> List[np.ndarray]:
    out = []
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    for i, p in enumerate(prompts):
        ids = np.asarray(tokenizer(p)["input_ids"], np.int64)
        if ids.size == 0:
            raise ValueError(f"prompts[{i}]: {p!r} tokenizes to zero tokens; every prompt needs at least one")
        if limit is not None and ids.size + max_new_tokens > int(limit):
            raise ValueError(f"prompts[{i}]: {ids.size} prompt tokens + max_new_tokens {max_new_tokens} exceed the "
                             f"base model's {limit} positions")
        out.append(ids)
    return out


def _preflight_rewards(generator, prompts, prompt_ids, rewards, cfg, pad_id):
    """Score two real samples with every reward before any expensive work (fail in seconds, not hours)."""
    from .trees import _left_pad

    k = min(2, len(prompts))
    ids, mask = _left_pad(prompt_ids[:k], pad_id)
    out = generator.generate(input_ids=ids, attention_mask=mask, top_k=cfg.top_k, temperature=cfg.temperature,
                             max_new_tokens=min(cfg.max_new_tokens, 4), seed=cfg.seed)
    responses = generator.tokenizer.batch_decode(
        [out.sequences[b, :int(out.lengths[b])].tolist() for b in range(k)], skip_special_tokens=True)
    for name, fn in rewards.items():
        try:
            res = fn(list(prompts[:k]), responses)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"reward {name!r}: failed on a sample input before training started: "
                             f"{type(e).__name__}: {e}") from e
        check_reward_output(res, k, name)


def _check_value_trunk(value_trunk, lora):
    if lora is not None:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ImportError("lora: LoRA value models need the optional `peft` package (pip install peft)") from None
    if isinstance(value_trunk, (str, os.PathLike)):
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(os.fspath(value_trunk))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"value_trunk: cannot load {os.fspath(value_trunk)!r}: {type(e).__name__}: {e}") from e


def _run_record(cfg: TrainConfig, objectives, prompts, value_trunk) -> dict:
    h = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()
    vt = os.fspath(value_trunk) if isinstance(value_trunk, (str, os.PathLike)) else (
        None if value_trunk is None else f"<{type(value_trunk).__name__}>")
    return {"config": cfg.fingerprint(), "objectives": list(objectives), "n_prompts": len(prompts),
            "prompts_sha256": h, "value_trunk": vt}


def _check_or_write_run(out_dir: str, record: dict, info: DistInfo, write: bool) -> None:
    path = os.path.join(out_dir, "run.json")
    if os.path.isfile(path) and not write:
        with open(path) as f:
            old = json.load(f)
        diffs = []
        for k in sorted(set(old) | set(record)):
            if k == "config":
                for ck in sorted(set(old.get(k, {})) | set(record[k])):
                    if old.get(k, {}).get(ck) != record[k].get(ck):
                        diffs.append(f"config.{ck}: {old.get(k, {}).get(ck)!r} -> {record[k].get(ck)!r}")
            elif old.get(k) != record.get(k):
                diffs.append(f"{k}: {old.get(k)!r} -> {record.get(k)!r}")
        if diffs:
            raise ValueError(f"out_dir {out_dir!r} holds a run with different settings ({'; '.join(diffs)}); "
                             "rerun with the original settings to resume, or use a new out_dir")
    elif write and info.is_main and not os.path.isfile(path):
        atomic_write_json(path, record)


# ----------------------------------------------------------------------------- stages
def _collect(it, sets, shards, gen, prompts, prompt_ids, rewards, objectives, tokenizer, cfg, it_dir, info,
             pad_id, progress):
    mine = [(s, k) for s in range(len(sets)) for k in range(len(shards)) if k % info.world_size == info.rank]
    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(mine), desc=f"iter {it} rollouts+rewards", unit="shard", leave=False)
    for s, k in mine:
        ts = sets[s]
        tdir = os.path.join(it_dir, "trees", ts.name)
        ldir = os.path.join(it_dir, "labels", ts.name)
        tpath, lpath = os.path.join(tdir, shard_name(k)), os.path.join(ldir, shard_name(k))
        if bar is not None:
            bar.set_postfix(set=ts.name, shard=k)
        if not os.path.isfile(lpath):
            if os.path.isfile(tpath):
                forest, _ = load_forest(tpath)
            else:
                idx = shards[k]
                t0 = time.time()
                forest = grow_forest(
                    gen, [prompts[i] for i in idx], idx, [prompt_ids[i] for i in idx],
                    root_branching=cfg.root_branching, branching=cfg.branching, depth=cfg.depth,
                    max_new_tokens=cfg.max_new_tokens, top_k=cfg.top_k, temperature=cfg.temperature,
                    weights=ts.weights, beta=ts.beta, normalize_values=cfg.normalize_values,
                    ban_eos_first=cfg.ban_eos_first, gen_batch_size=cfg.gen_batch_size, pad_token_id=pad_id,
                    seed_key=(cfg.seed, it, s, k), device=info.device)
                save_forest(tpath, forest, extra={"iteration": it, "set": ts.name, "shard": k})
                log.info("iter %d set %s shard %d: %d trees, %d nodes in %.1fs", it, ts.name, k, forest.n_trees,
                         forest.n_nodes, time.time() - t0)
                maybe_kill("collect")
            objs = [objectives[j] for j in ts.supervises]
            leaf_nodes, leaf_r = score_leaves(forest, {o: rewards[o] for o in objs}, tokenizer)
            save_leaf_rewards(lpath, leaf_nodes, leaf_r, objs)
            maybe_kill("label")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def _build_data(it, sets, shards, objectives, cfg, it_dir):
    """All labelled shards of an iteration -> (train, val) examples and label/policy statistics."""
    m = len(objectives)
    zeta = cfg.zeta if (it > 0 or cfg.kl_penalty_iteration0) else 0.0
    pool = sorted({i for sh in shards for i in sh})
    val_keys = split_trees(pool, cfg.val_fraction, rng_for(cfg.seed, it, 5))
    train, val = PathExamples(m), PathExamples(m)
    stats = {"reward": {}, "reward_by_set": {}, "kl": {}, "n_trees": 0, "n_nodes": 0, "n_leaves": 0}
    label_vals = {o: [] for o in objectives}
    for s, ts in enumerate(sets):
        roots_v, roots_kl = [], []
        for k in range(len(shards)):
            forest, _ = load_forest(os.path.join(it_dir, "trees", ts.name, shard_name(k)))
            leaf_nodes, leaf_r, objs = load_leaf_rewards(os.path.join(it_dir, "labels", ts.name, shard_name(k)))
            if objs != [objectives[j] for j in ts.supervises]:
                raise RuntimeError(f"{it_dir}: reward shard {ts.name}/{k} holds objectives {objs}")
            vals = node_values(forest, leaf_nodes, leaf_r)                    # [N, len(supervises)]
            lab = node_labels(forest, vals, zeta, cfg.kl_label)
            labels = np.zeros((forest.n_nodes, m), np.float32)
            labels[:, ts.supervises] = lab
            omask = np.zeros(m, bool)
            omask[ts.supervises] = True
            roots = np.nonzero(forest.node_parent < 0)[0]
            roots_v.append(vals[roots])
            roots_kl.append(expected_path_logratio(forest)[roots])
            in_val = np.isin(forest.prompt_index[forest.node_tree], list(val_keys))
            keep = bottom_node_mask(forest, cfg.fraction_bottom_nodes_to_keep, rng_for(cfg.seed, it, s, k, 3))
            offset = None
            if cfg.mode == "qhead" and cfg.kl_label == "future" and zeta > 0:
                offset = -zeta * token_suffix_logratio(forest)     # the rest of the token's segment
            train.extend(build_examples(forest, labels, omask, mode=cfg.mode, keep_node=keep & ~in_val,
                                        token_offset=offset))
            val.extend(build_examples(forest, labels, omask, mode=cfg.mode, keep_node=in_val, token_offset=offset))
            nonroot = forest.node_parent >= 0
            for j, o in zip(ts.supervises, objs):
                label_vals[o].append(labels[nonroot, j])
            stats["n_trees"] += forest.n_trees
            stats["n_nodes"] += int(nonroot.sum())
            stats["n_leaves"] += int(leaf_nodes.size)
        rv = np.concatenate(roots_v)
        stats["reward_by_set"][ts.name] = {objectives[j]: float(rv[:, c].mean()) for c, j in enumerate(ts.supervises)}
        stats["kl"][ts.name] = float(np.concatenate(roots_kl).mean())
        for c, j in enumerate(ts.supervises):
            stats["reward"].setdefault(objectives[j], float(rv[:, c].mean()))
    stats["label_mean"] = {o: float(np.concatenate(v).mean()) for o, v in label_vals.items() if v}
    stats["label_var"] = {o: float(np.concatenate(v).var()) for o, v in label_vals.items() if v}
    stats["n_train_paths"], stats["n_val_paths"] = len(train), len(val)
    stats["zeta"] = zeta
    return train, val, stats


def _new_value_model(it, g, group_objs, cfg, value_trunk, base_model, tokenizer, prev_dir):
    from ..values import ValueModel, _apply_lora, load_value_models, members_of

    torch.manual_seed(derive_seed(cfg.seed, it, 11, g))     # head init identical on every rank and rerun
    if prev_dir is None:
        trunk = value_trunk
        if trunk is None:
            trunk = copy.deepcopy(base_model)   # never train the generation model itself
        elif isinstance(trunk, torch.nn.Module):
            trunk = copy.deepcopy(trunk)
        return ValueModel.from_trunk(trunk, group_objs, mode=cfg.mode, lora=cfg.lora, tokenizer=tokenizer)
    prev = members_of(load_value_models(prev_dir))
    match = [vm for vm in prev if list(vm.objectives) == list(group_objs)]
    if len(match) != 1:
        raise RuntimeError(f"{prev_dir}: no value model for objectives {group_objs} to warm-start from "
                           f"(found {[vm.objectives for vm in prev]})")
    vm = match[0]
    if vm.mode != cfg.mode:
        raise RuntimeError(f"{prev_dir}: previous value model is in {vm.mode} mode, config says {cfg.mode}")
    if cfg.lora is not None:
        # Saved checkpoints hold merged weights; a fresh adapter (zero-initialised B) on top continues
        # from exactly the previous function.
        vm.trunk, vm.lora_config = _apply_lora(vm.trunk, cfg.lora)
    return vm


def _train_stage(it, objectives, train, val, cfg, it_dir, info, value_trunk, base_model, tokenizer, pad_id,
                 progress):
    from ..values import ValueEnsemble, ValueModel

    prev_dir = None if it == 0 else os.path.join(iteration_dir(cfg.out_dir, it - 1), "model")
    if cfg.shared_trunk:
        groups = [("all", list(objectives), list(range(len(objectives))), os.path.join(it_dir, "model"))]
    else:
        groups = [(o, [o], [j], os.path.join(it_dir, f"value_{o}")) for j, o in enumerate(objectives)]
    summaries = {}
    for g, (gname, gobjs, cols, final) in enumerate(groups):
        spath = os.path.join(it_dir, f"train_summary_{gname}.json")
        if os.path.isfile(os.path.join(final, "mavis_value_config.json")) and os.path.isfile(spath):
            with open(spath) as f:
                summaries[gname] = json.load(f)
            continue
        vm = _new_value_model(it, g, gobjs, cfg, value_trunk, base_model, tokenizer, prev_dir)
        tr = train if cfg.shared_trunk else train.select_objectives(cols)
        va = val if cfg.shared_trunk else val.select_objectives(cols)
        warm = prev_dir is not None
        summary = train_regression(
            vm, tr, va, info=info, state_dir=os.path.join(it_dir, "train_state", gname), optimizer=cfg.optimizer,
            lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.epochs, batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum, warmup=cfg.warmup_warm_start if warm else cfg.warmup,
            max_grad_norm=cfg.max_grad_norm, eval_every=cfg.eval_every, save_every=cfg.save_every,
            log_every=cfg.log_every, pad_id=pad_id, seed_key=(cfg.seed, it, 13, g), bf16=cfg.bf16,
            progress=progress, desc=f"iter {it} train [{gname}]")
        summary["objectives"] = gobjs
        summaries[gname] = summary
        if info.is_main:
            atomic_write_json(spath, summary)
            vm.eval()
            vm.save_pretrained(final)
        barrier(info)
        del vm
    model_dir = os.path.join(it_dir, "model")
    if not cfg.shared_trunk and not os.path.isdir(model_dir):
        if info.is_main:
            members = [ValueModel.from_pretrained(os.path.join(it_dir, f"value_{o}")) for o in objectives]
            ValueEnsemble(members).save_pretrained(model_dir)
        barrier(info)
    return summaries


# ----------------------------------------------------------------------------- public entry point
def train_value_models(base_model, tokenizer, prompts, rewards: Dict[str, Union[Callable, str]],
                       config: Union[TrainConfig, dict, None] = None, *, value_trunk=None,
                       progress: bool = True) -> List[str]:
    """Run iterations ``0 .. config.iterations-1`` of MAVIS value training; returns each iteration's
    checkpoint directory (``load_value_models(dir)`` gives a ``ValueModel``, or a ``ValueEnsemble``
    when ``shared_trunk=False``, covering all objectives in ``rewards`` order).

    ``base_model``: a causal LM or its id/path (moved to the run's device); ``tokenizer``: its
    tokenizer (loaded from the path when None); ``prompts``: a file path or an iterable of strings;
    ``rewards``: ``{objective: callable (prompts, responses) -> Tensor[N] | "hf:ID[:LOGIT]" |
    "module:function"}``; ``value_trunk``: id/path/model for the value models' backbone (default
    ``config.value_trunk``, else a copy of the base model). Rerunning with the same ``out_dir``
    continues where a previous run stopped."""
    if config is None:
        cfg = TrainConfig()
    elif isinstance(config, dict):
        cfg = TrainConfig.from_dict(config)
    elif isinstance(config, TrainConfig):
        cfg = copy.deepcopy(config).validate()
    else:
        raise TypeError(f"config: expected a TrainConfig, a dict or None, got {type(config).__name__}")
    if value_trunk is None:
        value_trunk = cfg.value_trunk
    elif isinstance(value_trunk, (str, os.PathLike)):
        cfg.value_trunk = os.fspath(value_trunk)
    info = init_distributed(cfg.device)
    prompts = load_prompts(prompts)
    if not isinstance(rewards, dict) or not rewards:
        raise ValueError("rewards: expected a non-empty dict {objective: reward}")
    objectives = list(rewards)
    cfg.check_objectives(objectives)
    rewards = load_rewards(rewards, device=info.device, batch_size=cfg.reward_batch_size)
    base, tokenizer = _load_base(base_model, tokenizer)
    base.to(info.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    prompt_ids = _tokenize(tokenizer, prompts, cfg.max_new_tokens, base)
    out_dir = cfg.out_dir
    record = _run_record(cfg, objectives, prompts, value_trunk)
    _check_or_write_run(out_dir, record, info, write=False)
    dirs = [os.path.join(iteration_dir(out_dir, it), "model") for it in range(cfg.iterations)]
    todo = [it for it in range(cfg.iterations) if not os.path.isfile(os.path.join(iteration_dir(out_dir, it), "DONE"))]
    if todo:
        # Everything that can fail on bad input fails here, before anything is written.
        from ..decoding import MavisGenerator

        _check_value_trunk(value_trunk, cfg.lora)
        _preflight_rewards(MavisGenerator(base, None, tokenizer), prompts, prompt_ids, rewards, cfg, pad_id)
    os.makedirs(out_dir, exist_ok=True)
    _check_or_write_run(out_dir, record, info, write=True)
    barrier(info)
    handler = None
    if info.is_main:
        handler = logging.FileHandler(os.path.join(out_dir, "train.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
    try:
        if todo:
            log.info("run: %d prompts, objectives %s, iterations %s to do, world size %d", len(prompts), objectives,
                     todo, info.world_size)
        for it in todo:
            _run_iteration(it, objectives, prompts, prompt_ids, rewards, cfg, info, base, tokenizer, value_trunk,
                           pad_id, progress)
        if info.is_main:
            _write_metrics_jsonl(out_dir)
        barrier(info)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
    return dirs


def _run_iteration(it, objectives, prompts, prompt_ids, rewards, cfg, info, base, tokenizer, value_trunk, pad_id,
                   progress):
    from ..decoding import MavisGenerator
    from ..values import load_value_models

    it_dir = iteration_dir(cfg.out_dir, it)
    if info.is_main:
        os.makedirs(it_dir, exist_ok=True)
        for sub in ("", "trees", "labels"):
            cleanup_tmp(os.path.join(it_dir, sub))
        for name in os.listdir(it_dir):
            # half-written value-model directories of a killed save_pretrained (values.py naming)
            if name.startswith(".") and (".tmp-" in name or ".old-" in name):
                shutil.rmtree(os.path.join(it_dir, name), ignore_errors=True)
    barrier(info)
    t0 = time.time()
    sets = plan_tree_sets(it, objectives, cfg)
    shards = _shards(_prompt_pool(len(prompts), it, cfg), cfg.prompts_per_shard)
    if info.is_main:
        for ts in sets:
            for sub in ("trees", "labels"):
                d = os.path.join(it_dir, sub, ts.name)
                os.makedirs(d, exist_ok=True)
                cleanup_tmp(d)
    barrier(info)
    vm_prev = None
    if it > 0:
        vm_prev = load_value_models(os.path.join(iteration_dir(cfg.out_dir, it - 1), "model"), device=info.device)
        vm_prev.eval()
    gen = MavisGenerator(base, vm_prev, tokenizer)
    _collect(it, sets, shards, gen, prompts, prompt_ids, rewards, objectives, tokenizer, cfg, it_dir, info, pad_id,
             progress)
    del gen, vm_prev
    barrier(info)
    t_collect = time.time() - t0
    train, val, stats = _build_data(it, sets, shards, objectives, cfg, it_dir)
    log.info("iter %d: %d trees, %d nodes, %d train / %d val paths, reward %s, KL %s", it, stats["n_trees"],
             stats["n_nodes"], len(train), len(val), stats["reward"], stats["kl"])
    t1 = time.time()
    summaries = _train_stage(it, objectives, train, val, cfg, it_dir, info, value_trunk, base, tokenizer, pad_id,
                             progress)
    metrics = dict(stats)
    metrics["iteration"] = it
    metrics["policy"] = {ts.name: {"weights": ts.weights, "beta": ts.beta, "objectives": [objectives[j] for j in ts.supervises]}
                         for ts in sets}
    metrics["kl_mean"] = float(np.mean(list(stats["kl"].values())))
    metrics["val_mse"] = {g: s["best_val_mse"] for g, s in summaries.items()}
    metrics["val_mse_initial"] = {g: s["val_mse_initial"] for g, s in summaries.items()}
    metrics["val_mse_per_objective"] = {}
    for g, s in summaries.items():
        if s.get("val_mse_per_objective") is not None:
            for o, v in zip(s["objectives"], s["val_mse_per_objective"]):
                metrics["val_mse_per_objective"][o] = v
    metrics["train_loss_final"] = {g: s["train_loss_final"] for g, s in summaries.items()}
    metrics["train_steps"] = {g: s["steps"] for g, s in summaries.items()}
    metrics["time_s"] = {"collect": t_collect, "train": time.time() - t1}
    metrics["model_dir"] = os.path.join(it_dir, "model")
    if info.is_main:
        atomic_write_json(os.path.join(it_dir, "metrics.json"), metrics)
        atomic_write_text(os.path.join(it_dir, "DONE"), "done\n")
        shutil.rmtree(os.path.join(it_dir, "train_state"), ignore_errors=True)
        if not cfg.shared_trunk:
            for o in objectives:
                shutil.rmtree(os.path.join(it_dir, f"value_{o}"), ignore_errors=True)
        _write_metrics_jsonl(cfg.out_dir)
    log.info("iter %d done: reward %s, KL %s, val MSE %s", it, metrics["reward"], metrics["kl"], metrics["val_mse"])
    barrier(info)


def _write_metrics_jsonl(out_dir: str) -> None:
    lines = []
    for name in sorted(os.listdir(out_dir)):
        p = os.path.join(out_dir, name, "metrics.json")
        if name.startswith("iter_") and os.path.isfile(os.path.join(out_dir, name, "DONE")) and os.path.isfile(p):
            with open(p) as f:
                lines.append(json.dumps(json.load(f), sort_keys=True))
    atomic_write_text(os.path.join(out_dir, "metrics.jsonl"), "".join(l + "\n" for l in lines))
