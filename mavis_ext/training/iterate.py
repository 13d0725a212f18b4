"""The outer loop of MAVIS value training (soft policy iteration).

Iteration n:
  1. collect: rollout trees from the current policy (n = 0: the base model's top-k sampling;
     n >= 1: the MAVIS policy with iteration n-1's value models, one single-objective policy per
     objective as in the paper, or one policy with ``rollout_weights``), one shard of prompts at a
     time, each shard's trees and leaf rewards saved as soon as they exist;
  2. label: node values (means of children) minus ``zeta`` x the KL term;
  3. train: MSE regression of the value model(s), warm-started from iteration n-1;
  4. record metrics (mean reward per objective, KL, value MSE) and mark the iteration done.

Layout of ``out_dir`` (every file written atomically and byte-deterministically; a rerun skips what
exists and is intact)::

    run.json                     what the run depends on (fingerprint.py; checked on resume)
    train.log, metrics.jsonl     log of losses and timings; one JSON line per finished iteration
    iter_000/trees/<set>/shard_00000.safetensors   forests (trees.py / storage.py)
    iter_000/labels/<set>/shard_00000.safetensors  leaf rewards
    iter_000/train_state/<group>/                  resumable training checkpoints (removed when done)
    iter_000/model/                                the value model(s): load_value_models(this dir)
    iter_000/metrics.json, iter_000/DONE

Under ``torchrun`` shards are dealt round-robin to ranks, every rank then reads all shards, and
training splits each global batch across ranks (regression.py); rank 0 writes the shared files.

Damaged files (``CorruptFileError``) on resume: a tree or reward shard, a training checkpoint, a
finished iteration's ``DONE``/``metrics.json``/train summary or value model is discarded with a
warning and recomputed (everything is a deterministic function of the inputs, so the rebuilt file
is the one an uninterrupted run writes). ``run.json`` cannot be rebuilt (it is the record of what the
saved work was made with): a damaged one is a clear error.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import torch

from ..atomic import atomic_write_json, atomic_write_text, cleanup_tmp
from ..integrity import CorruptFileError, read_json
from ..model_paths import check_model_source
from ..rewards import check_reward_output, load_rewards
from .config import TrainConfig
from .dataset import PathExamples, bottom_node_mask, build_examples, split_trees
from .distributed import DistInfo, barrier, broadcast_object, init_distributed
from .faults import maybe_kill
from .fingerprint import RECORD_FORMAT, record_diffs, run_record
from .preflight import check_out_dir, check_value_trunk_vocab
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
        src = check_model_source(base_model, "base_model")
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
        src = check_model_source(tokenizer, "tokenizer")
        try:
            tokenizer = AutoTokenizer.from_pretrained(src)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"tokenizer: cannot load {src!r}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
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


def _check_lora(lora):
    if lora is not None:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ImportError("lora: LoRA value models need the optional `peft` package (pip install peft)") from None


RUN_REMEDY = ("it records what the saved work was made with and cannot be rebuilt: if this command is the one that "
              "started the run, delete run.json and rerun to resume; otherwise use a new out_dir")


def _check_run(out_dir: str, record: dict) -> None:
    """Compare with the ``run.json`` of an earlier start: refuse to resume when anything that shapes
    the results differs, warn when only the environment (rounding) differs."""
    path = os.path.join(out_dir, "run.json")
    if not os.path.lexists(path):
        return
    old = read_json(path, RUN_REMEDY)
    if old.get("format") != RECORD_FORMAT:
        raise ValueError(f"out_dir {out_dir!r} holds a run started by another version of mavis_ext (run.json format "
                         f"{old.get('format', 1)!r}, this version writes {RECORD_FORMAT}); finish it with that "
                         "version, or use a new out_dir")
    hard, soft = record_diffs(old, record)
    if hard:
        shown = "; ".join(hard[:6]) + (f"; and {len(hard) - 6} more" if len(hard) > 6 else "")
        raise ValueError(f"out_dir {out_dir!r} holds a run with different settings ({shown}); rerun with the original "
                         "settings to resume, or use a new out_dir")
    if soft:
        msg = (f"resuming {out_dir!r} in a different environment ({'; '.join(soft)}): files written from now on may "
               "differ in the last bits from an uninterrupted run")
        log.warning("%s", msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _iteration_state(out_dir: str, it: int) -> str:
    """"done", "todo" (never finished) or a reason why a finished iteration must be rebuilt."""
    from ..values import verify_saved

    d = iteration_dir(out_dir, it)
    done = os.path.join(d, "DONE")
    if not os.path.lexists(done):
        return "todo"
    try:
        with open(done, "rb") as f:
            if f.read() != b"done\n":
                return f"{done} is damaged"
        read_json(os.path.join(d, "metrics.json"), "rebuilt on resume", rebuildable=True)
        verify_saved(os.path.join(d, "model"))
    except (CorruptFileError, FileNotFoundError, OSError) as e:
        return str(e)
    return "done"


def _discard_finished(it_dir: str, reason: str) -> None:
    """Turn a finished iteration with a damaged file back into an unfinished one (main rank only).
    Its shards and, when intact, its value model are kept and checked again as the iteration reruns."""
    from ..values import verify_saved

    log.warning("%s: %s -- rebuilding this iteration", it_dir, reason)
    warnings.warn(f"{it_dir}: {reason} -- rebuilding this iteration", RuntimeWarning, stacklevel=3)
    for name in ("DONE", "metrics.json"):
        p = os.path.join(it_dir, name)
        if os.path.lexists(p):
            os.unlink(p)
    model = os.path.join(it_dir, "model")
    try:
        verify_saved(model)
    except (CorruptFileError, FileNotFoundError, OSError):
        shutil.rmtree(model, ignore_errors=True)


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
        objs = [objectives[j] for j in ts.supervises]
        forest = _checked_shards(tpath, lpath, objs)
        if not os.path.isfile(lpath):
            if forest is None:
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
            leaf_nodes, leaf_r = score_leaves(forest, {o: rewards[o] for o in objs}, tokenizer)
            save_leaf_rewards(lpath, leaf_nodes, leaf_r, objs)
            maybe_kill("label")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


def _checked_shards(tpath: str, lpath: str, objs: List[str]):
    """The forest of an existing tree shard (None if there is none), after checking it and its
    reward shard. A damaged tree shard is deleted with its reward shard (rewards are per leaf of
    that forest); a damaged or mismatching reward shard alone is deleted; both are then recomputed."""
    if not os.path.isfile(tpath):
        if os.path.lexists(lpath):
            os.unlink(lpath)        # rewards of a forest that no longer exists
        return None
    try:
        forest, _ = load_forest(tpath)
    except CorruptFileError as e:
        log.warning("%s -- discarding it and growing the trees again", e)
        for p in (tpath, lpath):
            if os.path.lexists(p):
                os.unlink(p)
        return None
    if os.path.isfile(lpath):
        try:
            leaf_nodes, _, got = load_leaf_rewards(lpath)
            if got != objs or not np.array_equal(leaf_nodes, np.nonzero(forest.is_leaf())[0]):
                raise CorruptFileError(lpath, f"holds rewards for objectives {got} / other leaves than its tree shard",
                                       "recomputed on resume", rebuildable=True)
        except CorruptFileError as e:
            log.warning("%s -- discarding it and scoring the leaves again", e)
            os.unlink(lpath)
    return forest


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
                raise CorruptFileError(os.path.join(it_dir, "labels", ts.name, shard_name(k)),
                                       f"holds objectives {objs}", "rerun the training command to recompute it",
                                       rebuildable=True)
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
    from ..values import ValueModel, _apply_lora, backbone_of, load_value_models, members_of

    torch.manual_seed(derive_seed(cfg.seed, it, 11, g))     # head init identical on every rank and rerun
    if prev_dir is None:
        trunk = value_trunk
        if trunk is None:
            # never train the generation model itself; its LM head is not part of a value model
            trunk = copy.deepcopy(backbone_of(base_model))
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
    model_dir = os.path.join(it_dir, "model")
    if not cfg.shared_trunk:
        # the ensemble exists once every member is trained (the members' folders go at DONE)
        done_before = _intact_summaries(it_dir, [gname for gname, *_ in groups], model_dir, info)
        if done_before is not None:
            return done_before
    summaries = {}
    for g, (gname, gobjs, cols, final) in enumerate(groups):
        spath = os.path.join(it_dir, f"train_summary_{gname}.json")
        got = _intact_summaries(it_dir, [gname], final, info)
        if got is not None:
            summaries.update(got)
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
    if not cfg.shared_trunk and not os.path.isdir(model_dir):
        if info.is_main:
            members = [ValueModel.from_pretrained(os.path.join(it_dir, f"value_{o}")) for o in objectives]
            ValueEnsemble(members).save_pretrained(model_dir)
        barrier(info)
    return summaries


def _intact_summaries(it_dir, gnames, model_dir, info):
    """The train summaries of ``gnames`` when they and the value model in ``model_dir`` are intact
    (rank 0 checks, every rank gets the answer); None otherwise, and a damaged model is deleted (it
    is trained again; training is deterministic, so it comes back identical)."""
    from ..values import verify_saved

    result = None
    if info.is_main and os.path.isdir(model_dir):
        try:
            verify_saved(model_dir)
        except (CorruptFileError, FileNotFoundError) as e:
            log.warning("%s -- training this value model again", e)
            shutil.rmtree(model_dir, ignore_errors=True)
        else:
            try:
                result = {g: read_json(os.path.join(it_dir, f"train_summary_{g}.json"), "recomputed on resume",
                                       rebuildable=True) for g in gnames}
            except CorruptFileError as e:
                log.warning("%s -- training this value model again to recompute it", e)
    return broadcast_object(info, result)


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
    ``config.value_trunk``, else a copy of the base model); it must read the base model's
    vocabulary. Rerunning with the same ``out_dir`` continues where a previous run stopped, after
    checking that nothing that shapes the results changed (``run.json``) and rebuilding any damaged
    file it can. Bad arguments fail before anything is written."""
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
    trunk_source = None
    if isinstance(value_trunk, (str, os.PathLike)):
        trunk_source = os.fspath(value_trunk)
        value_trunk = check_model_source(value_trunk, "value_trunk")
    out_dir = cfg.out_dir
    check_out_dir(out_dir, "out_dir")
    info = init_distributed(cfg.device)
    prompts = load_prompts(prompts)
    if not isinstance(rewards, dict) or not rewards:
        raise ValueError("rewards: expected a non-empty dict {objective: reward}")
    objectives = list(rewards)
    cfg.check_objectives(objectives)
    _check_lora(cfg.lora)
    rewards = load_rewards(rewards, device=info.device, batch_size=cfg.reward_batch_size)
    base, tokenizer = _load_base(base_model, tokenizer)
    check_value_trunk_vocab(value_trunk, base, tokenizer, "value_trunk")
    base.to(info.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    prompt_ids = _tokenize(tokenizer, prompts, cfg.max_new_tokens, base)
    record = run_record(cfg, objectives, rewards, prompts, prompt_ids, base, tokenizer, value_trunk,
                        _environment(info), _sources(base_model, tokenizer, trunk_source, value_trunk))
    _check_run(out_dir, record)
    dirs = [os.path.join(iteration_dir(out_dir, it), "model") for it in range(cfg.iterations)]
    states = None
    if info.is_main:
        states = [_iteration_state(out_dir, it) for it in range(cfg.iterations)]
    states = broadcast_object(info, states)
    todo = [it for it, st in enumerate(states) if st != "done"]
    if todo:
        # Everything that can fail on bad input fails here, before anything is written.
        from ..decoding import MavisGenerator

        _preflight_rewards(MavisGenerator(base, None, tokenizer), prompts, prompt_ids, rewards, cfg, pad_id)
    if info.is_main:
        try:
            os.makedirs(out_dir, exist_ok=True)
            if not os.path.lexists(os.path.join(out_dir, "run.json")):
                atomic_write_json(os.path.join(out_dir, "run.json"), record)
        except OSError as e:
            raise ValueError(f"out_dir: cannot write to {out_dir!r}: {e.strerror or e}") from None
    barrier(info)
    handler = None
    if info.is_main:
        handler = logging.FileHandler(os.path.join(out_dir, "train.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
    try:
        if info.is_main:
            for it, st in enumerate(states):
                if st not in ("done", "todo"):
                    _discard_finished(iteration_dir(out_dir, it), st)
        barrier(info)
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


def _environment(info: DistInfo) -> dict:
    """What changes floating-point rounding but not what is computed (a change only warns)."""
    import transformers

    return {"device_type": info.device.type, "world_size": info.world_size, "torch": torch.__version__,
            "transformers": transformers.__version__, "cpu_threads": torch.get_num_threads()}


def _sources(base_model, tokenizer, trunk_source, value_trunk) -> dict:
    def name(x):
        if x is None or isinstance(x, (str, os.PathLike)):
            return None if x is None else os.fspath(x)
        return f"<{type(x).__name__} object>"

    return {"base_model": name(base_model), "value_trunk": trunk_source or name(value_trunk)}


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
        # checked when this run started (a damaged one was rebuilt first), and checked again on load
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
    # relative to out_dir, and no timings: metrics are byte-identical across identical runs
    metrics["model_dir"] = os.path.relpath(os.path.join(it_dir, "model"), cfg.out_dir).replace(os.sep, "/")
    if info.is_main:
        atomic_write_json(os.path.join(it_dir, "metrics.json"), metrics)
        atomic_write_text(os.path.join(it_dir, "DONE"), "done\n")
        shutil.rmtree(os.path.join(it_dir, "train_state"), ignore_errors=True)
        if not cfg.shared_trunk:
            for o in objectives:
                shutil.rmtree(os.path.join(it_dir, f"value_{o}"), ignore_errors=True)
        _write_metrics_jsonl(cfg.out_dir)
    log.info("iter %d done: reward %s, KL %s, val MSE %s (collect %.1fs, train %.1fs)", it, metrics["reward"],
             metrics["kl"], metrics["val_mse"], t_collect, time.time() - t1)
    barrier(info)


def _write_metrics_jsonl(out_dir: str) -> None:
    import json

    lines = []
    for name in sorted(os.listdir(out_dir)):
        p = os.path.join(out_dir, name, "metrics.json")
        if name.startswith("iter_") and os.path.isfile(os.path.join(out_dir, name, "DONE")) and os.path.isfile(p):
            metrics = read_json(p, "rerun the training command to rebuild it", rebuildable=True)
            lines.append(json.dumps(metrics, sort_keys=True))
    atomic_write_text(os.path.join(out_dir, "metrics.jsonl"), "".join(l + "\n" for l in lines))
