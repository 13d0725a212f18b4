"""Reading back files this package wrote: one-line errors that name the file, and checksums.

Why: a truncated or damaged file (a full disk, a killed copy, a bad sector) otherwise surfaces as a
raw ``SafetensorError`` / ``JSONDecodeError`` / ``OSError`` traceback that does not say which file
is bad, and the same command fails again. Every reader here raises ``CorruptFileError`` instead:
a ``ValueError`` whose one-line message names the file, says what is wrong with it and what to do.
Directories of several files carry a manifest (``{relative path: {"size", "sha256"}}``) so that any
damage, not only a parse error, is detected and attributed to the right file.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Iterable, Optional

__all__ = ["CorruptFileError", "one_line", "sha256_file", "read_json", "dir_manifest", "verify_manifest"]

_CHUNK = 1 << 22


def one_line(text: Any) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


class CorruptFileError(ValueError):
    """A saved file is unreadable or damaged. ``path``: the file; ``rebuildable``: whether rerunning
    the command that wrote it recomputes it (training does this by itself on resume)."""

    def __init__(self, path: str, problem: str, remedy: str, *, rebuildable: bool = False):
        self.path = os.fspath(path)
        self.problem = one_line(problem)
        self.rebuildable = rebuildable
        super().__init__(one_line(f"{self.path}: {self.problem}; {remedy}"))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def read_json(path: str, remedy: str, *, rebuildable: bool = False, expect: type = dict) -> Any:
    """Parse a JSON file; any failure (missing, unreadable, truncated, not ``expect``) is a
    ``CorruptFileError`` naming ``path`` with ``remedy`` as the advice."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CorruptFileError(path, "file is missing", remedy, rebuildable=rebuildable) from None
    except OSError as e:
        raise CorruptFileError(path, f"cannot be read ({e.strerror or e})", remedy, rebuildable=rebuildable) from None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        what = "is empty" if not raw.strip() else f"is not valid JSON ({getattr(e, 'msg', e)})"
        raise CorruptFileError(path, f"{what} (truncated or damaged)", remedy, rebuildable=rebuildable) from None
    if expect is not None and not isinstance(obj, expect):
        raise CorruptFileError(path, f"holds a JSON {type(obj).__name__}, expected a {expect.__name__}", remedy,
                               rebuildable=rebuildable)
    return obj


def dir_manifest(root: str, exclude: Iterable[str] = ()) -> Dict[str, Dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``root`` (sorted, ``/`` separators)."""
    skip = set(exclude)
    out = {}
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(d, name)
            rel = os.path.relpath(p, root).replace(os.sep, "/")
            if rel in skip:
                continue
            out[rel] = {"size": os.path.getsize(p), "sha256": sha256_file(p)}
    return dict(sorted(out.items()))


def verify_manifest(root: str, manifest: Optional[Dict[str, Dict[str, Any]]], remedy: str, *,
                    rebuildable: bool = False, checksums: bool = True) -> None:
    """Raise ``CorruptFileError`` for the first file of ``manifest`` that is missing, has the wrong
    size (truncated) or, with ``checksums``, the wrong SHA-256. ``None``: nothing to check."""
    if manifest is None:
        return
    if not isinstance(manifest, dict):
        raise CorruptFileError(root, "its file manifest is damaged", remedy, rebuildable=rebuildable)
    for rel, want in sorted(manifest.items()):
        p = os.path.join(root, *rel.split("/"))
        if not isinstance(want, dict) or "size" not in want or "sha256" not in want:
            raise CorruptFileError(root, f"its file manifest entry for {rel!r} is damaged", remedy,
                                   rebuildable=rebuildable)
        if not os.path.isfile(p):
            raise CorruptFileError(p, "file is missing", remedy, rebuildable=rebuildable)
        size = os.path.getsize(p)
        if size != want["size"]:
            raise CorruptFileError(p, f"has {size} bytes, {want['size']} were written (truncated or damaged)",
                                   remedy, rebuildable=rebuildable)
        if checksums and sha256_file(p) != want["sha256"]:
            raise CorruptFileError(p, "content differs from what was written (SHA-256 mismatch: damaged)", remedy,
                                   rebuildable=rebuildable)
