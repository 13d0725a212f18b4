"""Tell a local model path from a Hugging Face hub id before anything is loaded.

Why: ``from_pretrained`` treats any string that is not an existing directory as a hub id. A mistyped
local path then fails with huggingface_hub's "Repo id must be in the form ..." (absolute paths) or
retries the hub for about a minute (relative paths, on a machine without network). Checking first
turns both into one line that names the argument and the path.
"""

from __future__ import annotations

import os

__all__ = ["looks_like_path", "check_model_source"]


def looks_like_path(source: str) -> bool:
    """True when ``source`` can only be meant as a local path, never as a hub id.

    Hub ids are ``name`` or ``org/name``: no leading ``/``, ``.`` or ``~``, at most one ``/``, no
    backslash. Anything else is a path; so is ``a/b`` when ``a`` exists here as a directory (the user
    is pointing into a local folder, e.g. ``runs/model``).
    """
    s = os.fspath(source)
    if not s:
        return False
    if s.startswith(("/", ".", "~")) or "\\" in s or s.endswith("/") or s.count("/") >= 2:
        return True
    if "/" in s and os.path.isdir(s.split("/", 1)[0]):
        return True
    return False


def check_model_source(source, what: str) -> str:
    """Return ``source`` as a string; raise FileNotFoundError when it is a path that is not a directory.

    ``what`` names the argument in the message (e.g. ``"--base-model"`` or ``"base_model"``).
    Hub ids pass through unchanged.
    """
    s = os.fspath(source)
    expanded = os.path.expanduser(s)
    if os.path.isdir(expanded):
        return expanded
    if os.path.exists(expanded):
        raise FileNotFoundError(f"{what}: {s!r} is a file, not a model directory (give the folder "
                                "that holds config.json)")
    if looks_like_path(s):
        raise FileNotFoundError(f"{what}: no such directory: {s!r} (give an existing local model "
                                "folder or a hub id such as 'org/name')")
    return s
