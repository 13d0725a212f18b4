"""What a training run depends on, recorded in ``run.json`` and compared when a run is resumed.

Resuming continues saved work (tree and reward shards, checkpoints, finished iterations), which is
only right when everything that shapes it is unchanged. The record therefore holds:

- ``config``: every ``TrainConfig`` field except those that cannot change results
  (``TrainConfig.fingerprint``);
- ``rewards``: per objective, what the reward computes (``describe()`` of the reward adapters:
  a Hugging Face reward model's weights, tokenizer, template, logit index, truncation and batch
  size; a Python reward's name and source text, or the whole file for a ``file.py:function`` /
  ``module:function`` spec);
- ``prompts``: their number and the SHA-256 of their texts and of their token ids;
- ``base_model``, ``value_trunk``: weights and config (``model_fingerprint`` / ``dir_fingerprint``);
  ``tokenizer``: its token -> id map.

Paths are deliberately not compared (moving a model folder is fine; changing its weights is not).
``environment`` (device type, world size, torch/transformers versions) is recorded too, but a change
there only warns: it changes floating-point rounding, not what is computed.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List

import numpy as np
import torch

__all__ = ["model_fingerprint", "dir_fingerprint", "trunk_fingerprint", "run_record", "record_diffs",
           "RECORD_FORMAT"]

RECORD_FORMAT = 2
_SAMPLES = 4096            # values per tensor that enter a model fingerprint
_FULL_HASH_LIMIT = 8 << 20  # files up to this size are hashed whole by dir_fingerprint
_EDGE = 4 << 20             # larger ones: size + first and last 4 MiB


def _config_dict(config) -> Dict[str, Any]:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    # bookkeeping that differs between a loaded and an in-memory copy of the same model
    return {k: v for k, v in d.items() if not k.startswith("_") and k != "transformers_version"}


def model_fingerprint(model: torch.nn.Module) -> Dict[str, Any]:
    """SHA-256 over the model's config, the name/dtype/shape of every tensor of its state dict and
    ``_SAMPLES`` evenly strided values of each: any real change of weights (another checkpoint, a
    fine-tune) changes it, at a cost independent of the model size."""
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    h.update(json.dumps(_config_dict(cfg) if cfg is not None else None, sort_keys=True, default=str).encode())
    n = 0
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLES)
        sample = flat[::step][:_SAMPLES].contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if sample.numel():
            h.update(sample.view(torch.uint8).numpy().tobytes())
        n += t.numel()
    return {"class": type(model).__name__, "n_values": n, "sha256": h.hexdigest()}


def _file_digest(path: str) -> str:
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _FULL_HASH_LIMIT:
            h.update(f.read())
        else:
            h.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    return h.hexdigest()


def dir_fingerprint(path: str) -> Dict[str, Any]:
    """A model folder without loading it: every file's name and size, small files hashed whole and
    large ones by their first and last 4 MiB (a safetensors header sits at the start, so changed
    tensors show there)."""
    files = {}
    for d, dirs, names in os.walk(path):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            p = os.path.join(d, name)
            files[os.path.relpath(p, path).replace(os.sep, "/")] = _file_digest(p)
    h = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"n_files": len(files), "sha256": h}


def trunk_fingerprint(value_trunk) -> Any:
    if value_trunk is None:
        return None                       # a copy of the base model, covered by base_model
    if isinstance(value_trunk, torch.nn.Module):
        return model_fingerprint(value_trunk)
    src = os.path.expanduser(os.fspath(value_trunk))
    if os.path.isdir(src):
        return dir_fingerprint(src)
    return {"hub_id": src}                # a hub id: its files live in the HF cache


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode("utf-8")).hexdigest()


def run_record(cfg, objectives: List[str], rewards: Dict[str, Any], prompts: List[str],
               prompt_ids: List[np.ndarray], base_model, tokenizer, value_trunk, environment: Dict[str, Any],
               sources: Dict[str, Any]) -> Dict[str, Any]:
    from ..values import tokenizer_fingerprint

    ids = hashlib.sha256()
    for a in prompt_ids:
        ids.update(np.asarray(a, np.int64).tobytes())
        ids.update(b"|")
    return {
        "format": RECORD_FORMAT,
        "config": cfg.fingerprint(),
        "objectives": list(objectives),
        "rewards": {name: rewards[name].describe() for name in objectives},
        "prompts": {"n": len(prompts), "sha256": _sha(prompts), "token_ids_sha256": ids.hexdigest()},
        "base_model": model_fingerprint(base_model),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "value_trunk": trunk_fingerprint(value_trunk),
        "environment": dict(environment),
        "sources": dict(sources),         # informational only: where things were loaded from
    }


_NOT_COMPARED = {"sources"}
_WARN_ONLY = {"environment"}


def _short(v) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 80 else s[:77] + "..."


def _diff(a, b, prefix: str, out: List[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k), out)
    elif a != b:
        out.append(f"{prefix}: {_short(a)} -> {_short(b)}")


def record_diffs(old: Dict[str, Any], new: Dict[str, Any]):
    """(differences that forbid resuming, differences that only warn), as ``"path: old -> new"``."""
    hard, soft = [], []
    for k in sorted(set(old) | set(new)):
        if k in _NOT_COMPARED:
            continue
        _diff(old.get(k), new.get(k), k, soft if k in _WARN_ONLY else hard)
    return hard, soft
