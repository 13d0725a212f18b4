"""Test hook for crash-safety: ``MAVIS_TEST_KILL="<stage>:<k>"`` makes this process SIGKILL itself
right after the k-th completed event of ``stage`` ("collect": a tree shard written, "label": a
reward shard written, "train": an optimizer step taken). Unset in normal use: one dict lookup."""

from __future__ import annotations

import os
import signal

__all__ = ["maybe_kill"]

_counts: dict = {}


def maybe_kill(stage: str) -> None:
    spec = os.environ.get("MAVIS_TEST_KILL")
    if not spec:
        return
    want, _, k = spec.partition(":")
    if want != stage:
        return
    _counts[stage] = _counts.get(stage, 0) + 1
    if _counts[stage] >= int(k or 1):
        os.kill(os.getpid(), signal.SIGKILL)
