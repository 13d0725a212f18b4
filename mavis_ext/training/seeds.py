"""Deterministic seeds derived from structured keys (seed, iteration, tree set, shard, layer, ...).

Every random choice in training is keyed by *what* it is for, never by which process or in which
order it happens, so a resumed run and a run split over N processes draw exactly the same numbers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["derive_seed", "rng_for"]

_SEED_MAX = 2**62  # mavis_ext.ops accepts seeds below 2**62


def derive_seed(*keys: int) -> int:
    ks = [int(k) for k in keys]
    if any(k < 0 for k in ks):
        raise ValueError(f"derive_seed: keys must be >= 0, got {ks}")
    a, b = np.random.SeedSequence(ks).generate_state(2, dtype=np.uint32)
    return int((int(a) << 32 | int(b)) % _SEED_MAX)


def rng_for(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))
