"""torchrun / DDP helpers. Without ``WORLD_SIZE > 1`` in the environment everything degrades to a
single process with no ``torch.distributed`` calls.

Data parallelism here averages gradients with one flattened ``all_reduce`` per optimizer step
instead of wrapping the model in ``DistributedDataParallel``: ranks hold different numbers of
variable-length micro-batches (paths have different token counts and targets), which DDP's
per-backward bucket sync does not allow, and the explicit reduction makes the loss normalisation
(by the *global* target count) exact, so N processes compute the same update as one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "resolve_device", "barrier", "all_reduce_sum", "all_reduce_grads",
           "broadcast_parameters", "broadcast_object"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: Optional[str], what: str = "device") -> torch.device:
    """``device`` (None: CUDA when available, else CPU) as a ``torch.device``; a malformed name or a
    CUDA device this machine does not have is a one-line ``ValueError`` naming ``what``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{what}: {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"{what}: {device!r} requested but {why}; use --device cpu (or device='cpu')")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{what}: {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) "
                             "are visible")
    return dev


def init_distributed(device: Optional[str] = None) -> DistInfo:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = None
    if world > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_sum(info: DistInfo, t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (NCCL only reduces device tensors: CPU tensors take a round trip)."""
    if info.enabled:
        if info.backend == "nccl" and t.device.type != "cuda":
            buf = t.to(info.device)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            t.copy_(buf.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_grads(info: DistInfo, params: List[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks (the loss is already divided by the global target count).

    A parameter that has no gradient on any rank keeps ``grad = None``, exactly as with one process:
    optimizers skip such parameters (no weight decay, no moment update). Turning it into zeros would
    make N processes take a different step than one. A parameter with a gradient on some ranks only
    gets the sum (the others contribute zeros), which is what one process computes."""
    if not info.enabled:
        return
    has = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], dtype=torch.float32)
    all_reduce_sum(info, has)
    used = [p for p, h in zip(params, has.tolist()) if h > 0]
    if not used:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in used]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    off = 0
    for p, g in zip(used, grads):
        n = g.numel()
        new = flat[off:off + n].view_as(g).to(g.dtype)
        if p.grad is None:
            p.grad = new
        else:
            p.grad.copy_(new)
        off += n


def broadcast_parameters(info: DistInfo, module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's weights."""
    if not info.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
