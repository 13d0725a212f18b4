"""Byte-deterministic safetensors files with a built-in checksum, and a reader that names the file.

Why not ``safetensors.torch.save_file``: it writes the ``__metadata__`` keys in hash order, which
changes from one process to the next, so the same tensors and metadata give different bytes on
every run. Here the header is canonical JSON (sorted keys, no spaces, ASCII) padded to 8 bytes and
the tensors are laid out in name order, so identical inputs give identical bytes. The files are
standard safetensors (``safetensors.safe_open`` reads them).

Integrity: the metadata key ``mavis_sha256`` holds the SHA-256 of the canonical header without that
key followed by the tensor bytes, so any damage (a flipped bit as well as a truncation) is detected
by ``load_checked``. Files without that key (written by other tools) are still read, with every
structural check, unless the caller knows the file is ours (``require_checksum=True``): then a
missing key is damage too (a flipped bit in the key's name must not turn the check off).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from typing import Dict, Optional, Tuple

import torch

from .integrity import CorruptFileError

__all__ = ["save_deterministic", "load_checked", "CHECKSUM_KEY"]

CHECKSUM_KEY = "mavis_sha256"
_MAX_HEADER = 100 * 1024 * 1024

_TO_NAME = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.uint16: "U16",
    torch.int32: "I32", torch.uint32: "U32", torch.int64: "I64", torch.uint64: "U64", torch.float16: "F16",
    torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
}
_FROM_NAME = {v: k for k, v in _TO_NAME.items()}

if sys.byteorder != "little":  # safetensors is little-endian; raw tensor bytes are native order
    raise ImportError("mavis_ext.safetensors_io: big-endian machines are not supported")


def _canonical(header: dict) -> bytes:
    b = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return b + b" " * (-len(b) % 8)


def _raw(t: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy (``t`` must be a contiguous CPU tensor)."""
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def save_deterministic(tensors: Dict[str, torch.Tensor], path: str, metadata: Optional[Dict[str, str]] = None,
                       *, checksum: bool = True) -> None:
    """Write ``tensors`` (name -> tensor) and string ``metadata`` to ``path`` (not atomically: use
    ``atomic.atomic_save_safetensors`` for that)."""
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata: keys and values must be strings, got {k!r}: {type(v).__name__}")
    if CHECKSUM_KEY in meta:
        raise ValueError(f"metadata: {CHECKSUM_KEY!r} is reserved")
    names = sorted(tensors)
    flat = {}
    header: Dict[str, object] = {}
    off = 0
    for n in names:
        t = tensors[n]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{n!r}]: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _TO_NAME:
            raise TypeError(f"tensors[{n!r}]: dtype {t.dtype} cannot be stored")
        t = t.detach().to("cpu").contiguous()
        flat[n] = t
        nbytes = t.numel() * t.element_size()
        header[n] = {"dtype": _TO_NAME[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    if checksum:
        h = hashlib.sha256(_canonical(dict(header, __metadata__=meta) if meta else header))
        for n in names:
            h.update(_raw(flat[n]))
        meta[CHECKSUM_KEY] = h.hexdigest()
    if meta:
        header["__metadata__"] = meta
    hb = _canonical(header)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for n in names:
            f.write(_raw(flat[n]))


def load_checked(path: str, remedy: str, *, rebuildable: bool = False,
                 require_checksum: bool = False) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; any structural problem or checksum mismatch
    (or, with ``require_checksum``, a missing checksum) raises ``CorruptFileError`` naming ``path``
    (with ``remedy`` as the advice)."""

    def bad(problem):
        return CorruptFileError(path, problem, remedy, rebuildable=rebuildable)

    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise bad("file is missing") from None
    except OSError as e:
        raise bad(f"cannot be read ({e.strerror or e})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"has {size} bytes, too short for a safetensors file (truncated)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_HEADER):
            raise bad(f"header length {n} exceeds the file's {size} bytes (truncated or not a safetensors file)")
        raw_header = f.read(n)
        try:
            header = json.loads(raw_header.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise bad("header is not valid JSON (damaged)") from None
        if not isinstance(header, dict):
            raise bad("header is not a JSON object (damaged)")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise bad("metadata is damaged")
        data_len = size - 8 - n
        entries = []
        for name, e in header.items():
            try:
                dtype = _FROM_NAME[e["dtype"]]
                shape = [int(s) for s in e["shape"]]
                lo, hi = (int(x) for x in e["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise bad(f"entry for tensor {name!r} is damaged") from None
            numel = 1
            for s in shape:
                numel *= s
            if min(shape, default=0) < 0 or hi - lo != numel * torch.empty((), dtype=dtype).element_size():
                raise bad(f"tensor {name!r}: shape {shape} does not match its {hi - lo} bytes (damaged)")
            entries.append((lo, hi, name, dtype, shape))
        entries.sort()
        pos = 0
        for lo, hi, name, _, _ in entries:
            if lo != pos:
                raise bad(f"tensor {name!r} does not start where the previous one ends (damaged)")
            pos = hi
        if pos != data_len:
            what = "truncated" if pos > data_len else "has trailing bytes"
            raise bad(f"holds {data_len} data bytes, its header describes {pos} ({what})")
        want = meta.get(CHECKSUM_KEY)
        if want is None and require_checksum:
            raise bad(f"has no {CHECKSUM_KEY} checksum, which every file written here carries (damaged)")
        h = None
        if want is not None:
            rest = {k: v for k, v in meta.items() if k != CHECKSUM_KEY}
            h = hashlib.sha256(_canonical(dict(header, __metadata__=rest) if rest else header))
        out = {}
        for lo, hi, name, dtype, shape in entries:
            buf = bytearray(hi - lo)
            if f.readinto(buf) != hi - lo:
                raise bad("ends early (truncated)")
            if h is not None:
                h.update(buf)
            out[name] = torch.frombuffer(buf, dtype=dtype).reshape(shape) if buf else torch.empty(shape, dtype=dtype)
        if h is not None and h.hexdigest() != want:
            raise bad("content differs from what was written (checksum mismatch: damaged)")
    return out, {k: v for k, v in meta.items() if k != CHECKSUM_KEY}
