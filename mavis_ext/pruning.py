"""Certified candidate pruning: skip scoring candidates that cannot matter, with a proven bound on
how much the sampled distribution can move.

A guided step samples candidate j of the K base candidates with probability
``pi_j = q_j exp(beta v_j) / sum_i q_i exp(beta v_i)``, where ``q`` is the base model's softmax over
the K candidates and ``v`` their combined value. If every combined value lies in an interval of
width ``D`` (from ``value_range``: ``D = sum_i |w_i| (hi_i - lo_i)``), a set S of candidates with
base mass ``Q = sum_{j in S} q_j`` has tilted mass at most

    bound(Q) = Q e^{beta D} / (Q e^{beta D} + 1 - Q)

(all of S at the top of the range, everything else at the bottom; the bound is attained). Dropping
S and renormalising moves the distribution by exactly ``pi(S)`` in total variation, so

    TV(pruned step, exact step) <= bound(Q_S) <= tv.

``keep_counts`` drops, per row, the longest tail of lowest-probability candidates whose bound is at
most ``tv``; every dropped candidate then also has a largest possible tilted probability <= tv.
Over a generation of T steps the distributions of whole sequences differ by at most ``T * tv``
(each step's kernel is within ``tv``; total variation adds up along a chain).

The certificate holds when the value models' combined values really lie in the range; the engine
checks every value it does score against it and raises if one does not.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["keep_counts", "tail_bounds", "value_interval", "check_values_in_range", "parse_value_range"]


def parse_value_range(value_range, objectives: Sequence[str]) -> torch.Tensor:
    """``value_range`` as a ``[m, 2]`` float64 tensor of (lo, hi) per objective. Accepts one
    ``(lo, hi)`` for every objective, a list of m pairs in objective order, or a dict
    ``{objective: (lo, hi)}`` covering every objective."""
    m = len(objectives)
    if value_range is None:
        raise ValueError("value_range: required with prune_tv (bounds on the value models' outputs, e.g. "
                         "value_range=(-1.0, 1.0)); the pruning certificate is only as good as these bounds")
    if isinstance(value_range, dict):
        missing = [o for o in objectives if o not in value_range]
        unknown = sorted(set(value_range) - set(objectives))
        if missing or unknown:
            raise ValueError(f"value_range: needs exactly the objectives {list(objectives)} "
                             f"(missing {missing}, unknown {unknown})")
        pairs = [value_range[o] for o in objectives]
    else:
        try:
            t = torch.as_tensor(value_range, dtype=torch.float64)
        except (TypeError, ValueError):
            raise ValueError(f"value_range: expected (lo, hi), a list of {m} pairs or a dict, got {value_range!r}") from None
        if tuple(t.shape) == (2,):
            pairs = [tuple(t.tolist())] * m
        elif tuple(t.shape) == (m, 2):
            pairs = [tuple(r) for r in t.tolist()]
        else:
            raise ValueError(f"value_range: expected (lo, hi) or {m} pairs (one per objective {list(objectives)}), "
                             f"got shape {tuple(t.shape)}")
    out = torch.tensor([[float(a), float(b)] for a, b in pairs], dtype=torch.float64)
    if not torch.isfinite(out).all() or bool((out[:, 0] > out[:, 1]).any()):
        raise ValueError(f"value_range: every (lo, hi) must be finite with lo <= hi, got {out.tolist()}")
    return out


def value_interval(weights: torch.Tensor, ranges: torch.Tensor, B: int):
    """Per-row interval ``(lo [B], hi [B])`` float64 that holds ``sum_i w_i v_i`` when every
    ``v_i`` lies in ``ranges[i]``. ``weights``: ``[m]`` or ``[B, m]``."""
    w = weights.detach().to("cpu", torch.float64)
    w = w.expand(B, -1) if w.dim() == 1 else w
    a, b = w * ranges[:, 0], w * ranges[:, 1]
    return torch.minimum(a, b).sum(1), torch.maximum(a, b).sum(1)


def tail_bounds(cand_logits: torch.Tensor, beta: float, spread: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` float64: entry n is the largest tilted mass the candidates in columns n..K-1 can
    have (``bound(Q)`` of the module docstring), for combined values within ``spread [B]``."""
    q = torch.softmax(cand_logits.detach().to("cpu", torch.float64), dim=-1)
    tail = q.flip(-1).cumsum(-1).flip(-1).clamp(0.0, 1.0)   # tail[n] = sum_{j >= n} q_j
    bd = beta * spread.to(torch.float64)[:, None]
    with torch.no_grad():
        # bound = sigmoid(log Q + beta D - log(1 - Q)), exact at Q = 0 (0) and Q = 1 (1)
        z = torch.log(tail) + bd - torch.log1p(-tail)
    return torch.sigmoid(z)


def keep_counts(cand_logits: torch.Tensor, beta: float, spread: torch.Tensor, tv: float) -> torch.Tensor:
    """Per row, how many leading candidates to score (>= 1): the dropped tail has worst-case tilted
    mass <= ``tv``. ``cand_logits [B, K]`` must be sorted in descending order (as
    ``topk_candidates`` returns them). Rows with non-finite logits keep all K (the sampling op
    then reports them)."""
    if not (0.0 <= tv < 1.0) or math.isnan(tv):
        raise ValueError(f"prune_tv: must be in [0, 1), got {tv}")
    B, K = cand_logits.shape
    bnd = tail_bounds(cand_logits, beta, spread)
    cols = torch.arange(K, dtype=torch.int64)
    # keep columns 0..p where p is the last column whose tail (p..K-1) may carry more than tv; the
    # tail after it is then certified directly (no reliance on the bounds being monotone)
    over = bnd > tv
    over[:, 0] = True
    keep = (over.long() * cols).amax(1) + 1
    bad = ~torch.isfinite(cand_logits.detach().cpu()).any(1) | torch.isnan(bnd).any(1)
    keep = torch.where(bad, torch.full_like(keep, K), keep)
    return keep


def check_values_in_range(comb: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
    """Raise ``ValueError`` (naming ``value_range``) if a finite scored combined value ``comb [B, K]``
    lies outside its row's interval (beyond float rounding)."""
    c = comb.detach().to("cpu", torch.float64)
    tol = 1e-5 * (1.0 + torch.maximum(lo.abs(), hi.abs()))[:, None]
    out = torch.isfinite(c) & ((c < lo[:, None] - tol) | (c > hi[:, None] + tol))
    if bool(out.any()):
        b, j = (int(x) for x in out.nonzero()[0])
        raise ValueError(f"value_range: row {b} scored a combined value {float(c[b, j]):.6g} outside "
                         f"[{float(lo[b]):.6g}, {float(hi[b]):.6g}] implied by value_range and the weights; the "
                         "pruning certificate needs true bounds: widen value_range")
