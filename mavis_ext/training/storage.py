"""Compact on-disk tree shards: one safetensors file per shard (NumPy arrays) with JSON metadata.

Nothing is pickled, so a shard from an untrusted source can be read safely. Each file is written
atomically (temp + rename): its existence means it is complete, which is what resumption relies on.

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


def _read(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"shard {path!r} does not exist")
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        arrays = {k: f.get_tensor(k).numpy() for k in f.keys()}
    return arrays, meta


def load_forest(path: str) -> Tuple[Forest, Dict]:
    arrays, meta = _read(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} shard (format={meta.get('format')!r})")
    missing = [a for a in Forest.ARRAYS if a not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}")
    f = Forest(prompts=json.loads(meta["prompts"]), **{a: arrays[a] for a in Forest.ARRAYS})
    f.validate()
    return f, json.loads(meta.get("extra", "{}"))


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
        raise ValueError(f"{path}: not a leaf-reward shard")
    return arrays["leaf_nodes"], arrays["leaf_rewards"], json.loads(meta["objectives"])
