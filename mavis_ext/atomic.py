"""Crash-safe file writes: write into a temporary sibling, flush + fsync, then ``os.replace``.

A reader (or a rerun after SIGKILL) therefore sees either the old file or the complete new one,
never a torn write. Temporary names start with ``.tmp-`` so that leftovers from a killed process
are recognisable and never mistaken for finished output (``cleanup_tmp`` removes them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Dict, Iterator, Optional

TMP_PREFIX = ".tmp-"
# fsync makes a finished write survive power loss, not just a killed process (os.replace already
# covers that). It costs a few ms per file, which matters only for tiny demo runs:
# MAVIS_FSYNC=0 turns it off.
FSYNC = os.environ.get("MAVIS_FSYNC", "1") != "0"

__all__ = [
    "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save_safetensors",
    "atomic_torch_save", "atomic_dir", "cleanup_tmp", "TMP_PREFIX",
]


def _fsync_dir(path: str) -> None:
    # Makes the rename itself durable on power loss; harmless (and skipped) where unsupported.
    if not FSYNC:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _tmp_file(path: str) -> Iterator[str]:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + os.path.basename(path) + ".", dir=d)
    os.close(fd)
    try:
        yield tmp
        if FSYNC:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(d)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    with _tmp_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any, indent: Optional[int] = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def atomic_save_safetensors(tensors: Dict[str, Any], path: str, metadata: Optional[Dict[str, str]] = None) -> None:
    """``tensors``: name -> torch.Tensor. Byte-deterministic (sorted header and tensors) and
    checksummed: read back with ``safetensors_io.load_checked``."""
    from .safetensors_io import save_deterministic

    with _tmp_file(path) as tmp:
        save_deterministic(tensors, tmp, metadata)


def atomic_torch_save(obj: Any, path: str) -> None:
    """For optimizer state only (plain dicts of tensors/numbers, loaded back with
    ``torch.load(weights_only=True)``, so no arbitrary unpickling on resume)."""
    import torch

    with _tmp_file(path) as tmp:
        torch.save(obj, tmp)


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary directory next to ``path``; on success it is renamed to ``path``.
    With ``overwrite`` an existing ``path`` is moved aside first and deleted after the rename."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX + os.path.basename(path) + ".", dir=parent)
    try:
        yield tmp
        old = None
        if os.path.exists(path):
            if not overwrite:
                raise FileExistsError(f"atomic_dir: {path} already exists")
            old = tempfile.mkdtemp(prefix=TMP_PREFIX + "old-" + os.path.basename(path) + ".", dir=parent)
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cleanup_tmp(directory: str) -> int:
    """Delete ``.tmp-*`` leftovers of killed writers directly inside ``directory``; returns how many."""
    n = 0
    if not os.path.isdir(directory):
        return 0
    for name in os.listdir(directory):
        if name.startswith(TMP_PREFIX):
            p = os.path.join(directory, name)
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(p)
            n += 1
    return n
