"""Value regression: masked MSE of ``ValueModel.token_values`` against node labels.

Optimizer AdamW or Adafactor (``adafactor.py``: the paper's absolute-step variant), linear warmup then linear decay,
gradient accumulation, gradient clipping, bf16 autocast on CUDA, evaluation on held-out trees every
``eval_every`` steps with the best weights kept, and a checkpoint (trainable weights, optimizer
state, RNG state, best weights) every ``save_every`` steps so that a killed run resumes exactly.
A damaged checkpoint (checked against the manifest in its ``state.json``) is discarded with a
warning and the stage is trained again from step 0, which gives the same weights.

The global batch (``batch_size * grad_accum`` paths) is the same for any number of processes: each
rank takes its share, the loss is divided by the global target count, gradients are summed over
ranks. One process and N processes therefore take the same steps.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from typing import Dict, Optional, Sequence

import torch

from ..atomic import atomic_dir, atomic_save_safetensors, atomic_torch_save, atomic_write_json, cleanup_tmp
from ..integrity import CorruptFileError, dir_manifest, read_json, verify_manifest
from ..safetensors_io import load_checked
from .dataset import PathExamples, collate
from .distributed import DistInfo, all_reduce_grads, all_reduce_sum, barrier, broadcast_parameters
from .faults import maybe_kill
from .seeds import rng_for

__all__ = ["train_regression", "evaluate_mse", "make_optimizer", "lr_factor"]

log = logging.getLogger("mavis_ext.training")


def make_optimizer(params, name: str, lr: float, weight_decay: float):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adafactor":
        from .adafactor import Adafactor

        return Adafactor(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer: expected 'adamw' or 'adafactor', got {name!r}")


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier for optimizer step ``step`` (0-based): linear warmup to 1, then linear decay."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _trainable(model) -> Dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(bf16 and device.type == "cuda"))


def _sq_err(model, ex: PathExamples, idx, pad_id, device, bf16):
    ids, am, tgt, tm = collate(ex, idx, pad_id, device)
    with _autocast(device, bf16):
        pred = model.token_values(ids, am)
    pred = pred.float().permute(0, 2, 1)                      # [B, T, m]
    if pred.shape != tgt.shape:
        raise RuntimeError(f"token_values returned shape {tuple(pred.permute(0, 2, 1).shape)}, expected "
                           f"[{tgt.shape[0]}, {tgt.shape[2]}, {tgt.shape[1]}]")
    return (pred - tgt).square() * tm, tm


@torch.no_grad()
def evaluate_mse(model, ex: PathExamples, info: DistInfo, *, batch_size: int, pad_id: int, bf16: bool = True):
    """(overall MSE, per-objective MSE list) over every target of ``ex``, all ranks together."""
    was = model.training
    model.eval()
    acc = torch.zeros(2, ex.m, dtype=torch.float64)
    mine = list(range(info.rank, len(ex), info.world_size))
    for lo in range(0, len(mine), batch_size):
        idx = mine[lo:lo + batch_size]
        err, tm = _sq_err(model, ex, idx, pad_id, info.device, bf16)
        acc[0] += err.sum((0, 1)).double().cpu()
        acc[1] += tm.sum((0, 1)).double().cpu()
    all_reduce_sum(info, acc)
    model.train(was)
    per = (acc[0] / acc[1].clamp_min(1)).tolist()
    total = float(acc[0].sum() / acc[1].sum().clamp_min(1))
    return total, per


CKPT_REMEDY = "checkpoints of an unfinished stage are rebuilt on resume: rerun the training command"


def _save_ckpt(state_dir: str, step: int, model, opt, best: Optional[dict], meta: dict) -> None:
    name = f"ckpt-{step:07d}"
    path = os.path.join(state_dir, name)
    if os.path.isdir(path):   # left by a run killed between this write and the pointer update
        shutil.rmtree(path)
    with atomic_dir(path) as tmp:
        atomic_save_safetensors(_trainable(model), os.path.join(tmp, "trainable.safetensors"))
        if best is not None:
            atomic_save_safetensors(best, os.path.join(tmp, "best.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        atomic_torch_save({"optimizer": opt.state_dict(), "rng": rng}, os.path.join(tmp, "optim.pt"))
        # Written last: a manifest of the other files, so damage to any of them is detected on resume.
        atomic_write_json(os.path.join(tmp, "state.json"), dict(meta, step=step, files=dir_manifest(tmp)))
    atomic_write_json(os.path.join(state_dir, "latest.json"), {"step": step, "dir": name})
    for other in os.listdir(state_dir):     # older checkpoints are superseded
        if other.startswith("ckpt-") and other != name:
            shutil.rmtree(os.path.join(state_dir, other), ignore_errors=True)


def _read_ckpt(state_dir: str, params: Dict[str, torch.nn.Parameter], device):
    """Everything of the latest checkpoint, read and checked before anything is applied (a damaged
    checkpoint then leaves the model and optimizer untouched). None when there is none; raises
    ``CorruptFileError`` when it is unusable."""
    ptr = os.path.join(state_dir, "latest.json")
    if not os.path.isfile(ptr):
        return None
    pointer = read_json(ptr, CKPT_REMEDY, rebuildable=True)
    name = pointer.get("dir")
    if not isinstance(name, str) or not name.startswith("ckpt-") or os.sep in name:
        raise CorruptFileError(ptr, "does not name a checkpoint directory", CKPT_REMEDY, rebuildable=True)
    path = os.path.join(state_dir, name)
    spath = os.path.join(path, "state.json")
    meta = read_json(spath, CKPT_REMEDY, rebuildable=True)
    if not isinstance(meta.get("step"), int) or not all(k in meta for k in ("best_val", "best_step", "evals", "losses")):
        raise CorruptFileError(spath, "is missing fields", CKPT_REMEDY, rebuildable=True)
    verify_manifest(path, meta.pop("files", None), CKPT_REMEDY, rebuildable=True)
    tpath = os.path.join(path, "trainable.safetensors")
    saved, _ = load_checked(tpath, CKPT_REMEDY, rebuildable=True, require_checksum=True)
    if set(saved) != set(params) or any(tuple(saved[n].shape) != tuple(p.shape) for n, p in params.items()):
        raise CorruptFileError(tpath, "its parameters do not match the model being trained", CKPT_REMEDY,
                               rebuildable=True)
    best = None
    bpath = os.path.join(path, "best.safetensors")
    if os.path.isfile(bpath):
        best, _ = load_checked(bpath, CKPT_REMEDY, rebuildable=True, require_checksum=True)
        if set(best) != set(params):
            raise CorruptFileError(bpath, "its parameters do not match the model being trained", CKPT_REMEDY,
                                   rebuildable=True)
    opath = os.path.join(path, "optim.pt")
    try:
        blob = torch.load(opath, map_location=device, weights_only=True)
        blob["optimizer"], blob["rng"]["torch"]
    except Exception as e:  # noqa: BLE001 -- a damaged zip/pickle raises many different errors
        raise CorruptFileError(opath, f"cannot be read ({type(e).__name__})", CKPT_REMEDY, rebuildable=True) from None
    return meta, saved, best, blob


def _load_ckpt(state_dir: str, model, opt, device):
    params = _trainable(model)
    got = _read_ckpt(state_dir, params, device)
    if got is None:
        return None
    meta, saved, best, blob = got
    try:
        opt.load_state_dict(blob["optimizer"])
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptFileError(os.path.join(state_dir, "optim.pt"), f"optimizer state does not fit ({e})",
                               CKPT_REMEDY, rebuildable=True) from None
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n].to(p.device, p.dtype))
    torch.set_rng_state(blob["rng"]["torch"].cpu())
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in blob["rng"]["cuda"]])
    return meta, best


def _discard_state(state_dir: str, info: DistInfo) -> None:
    barrier(info)                       # every rank has finished reading before rank 0 deletes
    if info.is_main:
        for name in os.listdir(state_dir):
            p = os.path.join(state_dir, name)
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
    barrier(info)


def train_regression(model, train: PathExamples, val: PathExamples, *, info: DistInfo, state_dir: str,
                     optimizer: str, lr: float, weight_decay: float, epochs: int, batch_size: int,
                     grad_accum: int, warmup: int, max_grad_norm: float, eval_every: int, save_every: int,
                     log_every: int, pad_id: int, seed_key: Sequence[int], bf16: bool = True,
                     progress: bool = True, desc: str = "train") -> dict:
    """Train ``model`` in place; on return it holds the best weights (lowest validation MSE; the last
    weights when there is no validation set). Returns a summary dict."""
    if len(train) == 0:
        raise ValueError(f"{desc}: no training examples (every tree went to validation or had no targets)")
    device = info.device
    model.to(device)
    model.train()
    params = _trainable(model)
    if not params:
        raise ValueError(f"{desc}: the value model has no trainable parameters")
    plist = list(params.values())
    opt = make_optimizer(plist, optimizer, lr, weight_decay)
    G = batch_size * grad_accum
    steps_per_epoch = math.ceil(len(train) / G)
    total = epochs * steps_per_epoch
    n_tgt = train.n_targets()
    os.makedirs(state_dir, exist_ok=True)
    if info.is_main:
        cleanup_tmp(state_dir)          # a checkpoint half-written by a killed run
    barrier(info)

    start, best, meta = 0, None, {"best_val": None, "best_step": None, "evals": [], "losses": []}
    try:
        resumed = _load_ckpt(state_dir, model, opt, device)
    except CorruptFileError as e:
        # Nothing was applied (``_read_ckpt`` checks first); training from step 0 recomputes the
        # same weights an uninterrupted run would have, so discarding loses time, not results.
        log.warning("%s: %s -- discarding it and training this stage again from step 0", desc, e)
        _discard_state(state_dir, info)
        resumed = None
    if resumed is not None:
        meta, best = resumed
        start = int(meta["step"])
        log.info("%s: resumed at step %d/%d", desc, start, total)
    else:
        broadcast_parameters(info, model)
    evaluate = len(val) > 0

    def do_eval(step):
        mse, per = evaluate_mse(model, val, info, batch_size=batch_size, pad_id=pad_id, bf16=bf16)
        meta["evals"].append({"step": step, "val_mse": mse, "val_mse_per_objective": per})
        log.info("%s: step %d val_mse %.6g", desc, step, mse)
        if meta["best_val"] is None or mse < meta["best_val"]:
            meta["best_val"], meta["best_step"] = mse, step
            return {n: p.detach().to("cpu", copy=True) for n, p in params.items()}
        return None

    if start == 0 and evaluate and not meta["evals"]:
        best = do_eval(0) or best
    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=start, desc=desc, unit="step", leave=False)
    perm_cache = {}
    t0 = time.time()
    for step in range(start, total):
        epoch, k = divmod(step, steps_per_epoch)
        if epoch not in perm_cache:
            perm_cache = {epoch: rng_for(*seed_key, 7, epoch).permutation(len(train))}
        gb = perm_cache[epoch][k * G:(k + 1) * G]
        n_global = float(n_tgt[gb].sum())
        mine = gb[info.rank::info.world_size]
        for p in plist:
            p.grad = None
        loss_sum = torch.zeros(1, dtype=torch.float64)
        for lo in range(0, len(mine), batch_size):
            err, _ = _sq_err(model, train, mine[lo:lo + batch_size], pad_id, device, bf16)
            loss = err.sum() / max(n_global, 1.0)
            loss.backward()
            loss_sum += loss.detach().double().cpu()
        all_reduce_grads(info, plist)
        all_reduce_sum(info, loss_sum)
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(plist, max_grad_norm)
        f = lr_factor(step, total, warmup)
        for g in opt.param_groups:
            g["lr"] = lr * f
        opt.step()
        loss_v = float(loss_sum)
        if not math.isfinite(loss_v):
            raise FloatingPointError(f"{desc}: training loss became {loss_v} at step {step + 1}")
        done = step + 1
        if done % log_every == 0 or done == total:
            meta["losses"].append({"step": done, "loss": loss_v, "lr": lr * f})
            log.info("%s: step %d/%d loss %.6g lr %.3g", desc, done, total, loss_v, lr * f)
        if evaluate and (done % eval_every == 0 or done == total):
            best = do_eval(done) or best
        if done % save_every == 0 or done == total:
            if info.is_main:
                _save_ckpt(state_dir, done, model, opt, best, meta)
            barrier(info)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.4g}")
        maybe_kill("train")
    if bar is not None:
        bar.close()
    # Timings go to the log only: the summary is an output file, byte-identical across identical runs.
    log.info("%s: %d steps (%d this session) in %.1fs", desc, total, total - start, time.time() - t0)
    if best is not None:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(best[n].to(p.device, p.dtype))
    last_loss = meta["losses"][-1]["loss"] if meta["losses"] else None
    return {"steps": total, "best_val_mse": meta["best_val"], "best_step": meta["best_step"],
            "val_mse_initial": meta["evals"][0]["val_mse"] if meta["evals"] else None,
            "val_mse_per_objective": next((e["val_mse_per_objective"] for e in meta["evals"]
                                           if e["step"] == meta["best_step"]), None),
            "train_loss_final": last_loss, "evals": meta["evals"], "losses": meta["losses"]}
