"""Training prompts from a text file (one per line), a JSONL file (``{"prompt": ...}`` per line)
or any Python iterable of strings. Errors name the file and line."""

from __future__ import annotations

import json
import os
from typing import Iterable, List, Union

__all__ = ["load_prompts"]


def _from_jsonl(path: str, key: str) -> List[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"prompts: {path}:{i}: not valid JSON ({e.msg})") from None
            if isinstance(obj, str):
                out.append(obj)
                continue
            if not isinstance(obj, dict) or key not in obj:
                raise ValueError(f"prompts: {path}:{i}: expected an object with a {key!r} field, got {line.strip()[:80]!r}")
            if not isinstance(obj[key], str):
                raise ValueError(f"prompts: {path}:{i}: field {key!r} must be a string, got {type(obj[key]).__name__}")
            out.append(obj[key])
    return out


def load_prompts(source: Union[str, os.PathLike, Iterable[str]], *, key: str = "prompt") -> List[str]:
    """Returns a non-empty list of prompt strings.

    - ``*.jsonl`` / ``*.json`` files: one JSON object per line with a ``key`` field (or a bare string);
    - any other file: one prompt per line (blank lines skipped, trailing newline stripped; ``\\n``
      inside a prompt is impossible in this format, use JSONL for multi-line prompts);
    - an iterable of strings (not a single str, which is taken as a path)."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"prompts: file {path!r} does not exist")
        if not os.path.isfile(path):
            raise ValueError(f"prompts: {path!r} is not a file")
        if path.endswith((".jsonl", ".json")):
            prompts = _from_jsonl(path, key)
        else:
            try:
                with open(path, encoding="utf-8") as f:
                    prompts = [line.rstrip("\r\n") for line in f]
            except UnicodeDecodeError as e:
                raise ValueError(f"prompts: {path!r} is not UTF-8 text ({e})") from None
            prompts = [p for p in prompts if p.strip()]
        where = path
    else:
        try:
            prompts = list(source)
        except TypeError:
            raise TypeError(f"prompts: expected a file path or an iterable of strings, got {type(source).__name__}") from None
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompts[{i}]: expected a string, got {type(p).__name__}")
        where = "the given iterable"
    if not prompts:
        raise ValueError(f"prompts: no prompts in {where}")
    return prompts
