"""Compact on-disk tree shards: one safetensors file per shard (NumPy arrays) with JSON metadata.

Nothing is pickled, so a shard from an untrusted source can be read safely. Each file is written
atomically (temp + rename), byte-deterministically and with a checksum (``safetensors_io``): its
existence means it was complete, and damage done afterwards is reported as ``CorruptFileError``.

- ``trees/<set>/shard_XXXXX.safetensors``: the ``Forest`` arrays; metadata holds the prompt texts.
- ``labels/<set>/shard_XXXXX.safetensors``: ``leaf_nodes [n_leaves]`` and ``leaf_rewards
  [n_leaves, m]``; metadata holds the objective names. Node values, KL terms and labels are derived
  from these deterministically (``labeling.py``), so changing ``zeta`` needs no new rewards.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

import numpy as np
import torch

from ..atomic import atomic_save_safetensors
from ..integrity import CorruptFileError
from ..safetensors_io import load_checked
from .trees import Forest

__all__ = ["save_forest", "load_forest", "save_leaf_rewards", "load_leaf_rewards", "shard_name"]

FORMAT = "mavis-forest-v1"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def save_forest(path: str, forest: Forest, extra: Dict = None) -> None:
    forest.validate()
    tensors = {name: torch.from_numpy(np.ascontiguousarray(getattr(forest, name))) for name in Forest.ARRAYS}
    meta = {"format": FORMAT, "prompts": json.dumps(forest.prompts), "extra": json.dumps(extra or {}, sort_keys=True)}
    atomic_save_safetensors(tensors, path, metadata=meta)


# A damaged shard is recomputed by the training loop on resume (iterate.py); this advice is for
# anyone reading a shard outside it.
REMEDY = "shards are recomputed on resume: rerun the training command (it discards and rebuilds this file)"


def _read(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"shard {path!r} does not exist")
    tensors, meta = load_checked(path, REMEDY, rebuildable=True, require_checksum=True)
    return {k: t.numpy() for k, t in tensors.items()}, meta


def _bad(path: str, problem: str) -> CorruptFileError:
    return CorruptFileError(path, problem, REMEDY, rebuildable=True)


def load_forest(path: str) -> Tuple[Forest, Dict]:
    arrays, meta = _read(path)
    if meta.get("format") != FORMAT:
        raise _bad(path, f"not a {FORMAT} shard (format={meta.get('format')!r})")
    missing = [a for a in Forest.ARRAYS if a not in arrays]
    if missing:
        raise _bad(path, f"missing arrays {missing}")
    try:
        f = Forest(prompts=json.loads(meta["prompts"]), **{a: arrays[a] for a in Forest.ARRAYS})
        f.validate()
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise _bad(path, f"inconsistent content ({e})") from None
    return f, extra


def save_leaf_rewards(path: str, leaf_nodes: np.ndarray, leaf_rewards: np.ndarray, objectives: List[str]) -> None:
    leaf_rewards = np.asarray(leaf_rewards, np.float32)
    if leaf_rewards.shape != (len(leaf_nodes), len(objectives)):
        raise ValueError(f"save_leaf_rewards: rewards shape {leaf_rewards.shape} != ({len(leaf_nodes)}, {len(objectives)})")
    atomic_save_safetensors(
        {"leaf_nodes": torch.from_numpy(np.asarray(leaf_nodes, np.int64)), "leaf_rewards": torch.from_numpy(leaf_rewards)},
        path, metadata={"format": "mavis-leaf-rewards-v1", "objectives": json.dumps(list(objectives))})


def load_leaf_rewards(path: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    arrays, meta = _read(path)
    if meta.get("format") != "mavis-leaf-rewards-v1":
        raise _bad(path, "not a leaf-reward shard")
    try:
        nodes, rewards, objs = arrays["leaf_nodes"], arrays["leaf_rewards"], json.loads(meta["objectives"])
    except (KeyError, ValueError) as e:
        raise _bad(path, f"missing content ({e})") from None
    if rewards.ndim != 2 or rewards.shape != (nodes.shape[0], len(objs)):
        raise _bad(path, f"rewards of shape {tuple(rewards.shape)} for {nodes.shape[0]} leaves and {len(objs)} objectives")
    return nodes, rewards, objs
