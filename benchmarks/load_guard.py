"""Refuse to time on an oversubscribed machine (used by ``bench_decoding.py``).

Rule: with ``threads`` compute threads on ``n`` usable CPUs, timing starts only if the 1-minute
load average plus ``threads`` is at most ``n + 1`` (other work leaves our threads their cores,
give or take one waiting process), and goes on only while the load average, which then includes
our own threads, stays at most ``n + 1``. On 2 CPUs with 2 threads: start below a load of 1.0.
"""

from __future__ import annotations

import os
import sys

__all__ = ["usable_cpus", "rule", "require_quiet"]


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def rule(threads: int) -> str:
    n = usable_cpus()
    return (f"timing needs 1-minute load average + {threads} threads <= {n} CPUs + 1 to start "
            f"(load <= {n + 1 - threads:.1f} now), and load <= {n + 1} while it runs")


def _load1() -> float:
    return os.getloadavg()[0]


def require_quiet(threads: int, started: bool) -> float:
    """Exit with status 3 and a one-line message when the rule is broken; return the load."""
    n = usable_cpus()
    load = _load1()
    limit = n + 1 if started else n + 1 - threads
    if load > limit:
        when = "while timing" if started else "before timing"
        sys.stderr.write(f"bench_decoding: the machine is oversubscribed {when} (1-minute load average {load:.2f} "
                         f"> {limit:.1f}); refusing to time. Rule: {rule(threads)}. Rerun when it is quiet.\n")
        sys.exit(3)
    return load
