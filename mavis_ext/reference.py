"""Pure-PyTorch reference of every op of ``torch.ops.mavis`` (schemas in ``csrc/ops.cpp``).

This file is the ground truth: the C++ and CUDA kernels are tested against it, and it is the
fallback when the compiled extension is missing. It favours clarity over speed, but follows the
kernels' order of floating-point operations (fp32 accumulation, objectives summed in order, then
``logit / temperature + beta * combined``) and draws the same counter-based noise
(Philox4x32-10 keyed by seed, offset, row and column, 52 bits per draw, float64 Gumbel noise; see
``csrc/include/mavis/philox.h``), so that with the same seed it picks the same tokens as the kernels
except where two float64 scores tie within the rounding of a log.

The functions here take already-validated arguments in the torch-op form (seed/offset tensors,
``weights`` as float32 ``[m]`` or ``[B, m]``). Argument checking with user-facing messages lives in
``mavis_ext/ops.py``; the data-dependent checks (NaN weights, rows with no finite logit) are done
here as in the kernels, because only a pass over the data can see them. With ``mark_invalid`` (the
ops' last argument) a row with bad data is marked (id -1, NaN) instead of raising; the order in
which errors are raised when several rows are bad is that of ``_row_problems``.
"""

from __future__ import annotations

import torch

__all__ = [
    "philox_uniform",
    "uniform_from_words",
    "gumbel_from_uniform",
    "gumbel_noise",
    "topk_candidates",
    "value_heads",
    "combine_values",
    "tilt_logits",
    "tilted_sample",
    "guided_sample",
]

_MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * m for a, m < 2**32, without int64 overflow."""
    a_lo = a & 0xFFFF
    a_hi = a >> 16
    t_lo = a_lo * m  # < 2**48
    t_hi = a_hi * m  # < 2**48
    mid = t_lo + ((t_hi & 0xFFFF) << 16)  # < 2**49
    lo = mid & _MASK32
    hi = ((t_hi >> 16) + (mid >> 32)) & _MASK32
    return hi, lo


def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def _split64(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Low and high 32-bit words of an int64 tensor, as non-negative int64 values."""
    return x & _MASK32, (x >> 32) & _MASK32


def philox_uniform(seed: torch.Tensor, offset: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    """float64 uniform (0, 1) noise of shape [n_rows, n_cols], identical to ``mavis::philox_uniform``.

    ``seed``/``offset`` are int64 tensors of one element (shared by the batch: the row index is part
    of the counter) or ``n_rows`` elements (one stream per row: the row index is not, so a row's
    draws do not depend on its position in the batch).
    """
    seed = seed.detach().to("cpu", torch.int64).reshape(-1)
    offset = offset.detach().to("cpu", torch.int64).reshape(-1)
    per_row = seed.numel() != 1 or offset.numel() != 1
    seed = seed.expand(n_rows) if seed.numel() == 1 else seed
    offset = offset.expand(n_rows) if offset.numel() == 1 else offset
    rows = torch.arange(n_rows, dtype=torch.int64)
    row_ctr = torch.zeros_like(rows) if per_row else rows
    cols = torch.arange(n_cols, dtype=torch.int64)
    s_lo, s_hi = _split64(seed)
    o_lo, o_hi = _split64(offset)
    shape = (n_rows, n_cols)
    c0 = cols.view(1, -1).expand(shape)
    c1 = row_ctr.view(-1, 1).expand(shape)
    c2 = o_lo.view(-1, 1).expand(shape)
    c3 = o_hi.view(-1, 1).expand(shape)
    k0 = s_lo.view(-1, 1).expand(shape)
    k1 = s_hi.view(-1, 1).expand(shape)
    x0, x1, _, _ = _philox4x32_10(c0, c1, c2, c3, k0, k1)
    return uniform_from_words(x0, x1)


def uniform_from_words(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """float64 uniform from two 32-bit Philox words (int64 tensors holding values < 2**32).

    52 random bits, the 32 of ``x0`` above the top 20 of ``x1``, centred in their cell:
    ``u = (k + 0.5) * 2**-52``. Every such value is exact in float64 (53 significant bits), never 0
    or 1; range ``[2**-53, 1 - 2**-53]``. Same as ``mavis::philox_uniform`` (csrc/include/mavis/philox.h).
    """
    k = (x0 << 20) | (x1 >> 12)  # < 2**52: exact in int64 and in float64
    return (k.to(torch.float64) + 0.5) * 2.0**-52


def gumbel_from_uniform(u: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise -log(-log(u)) in float64 (at most about 36.74, at u = 1 - 2**-53)."""
    return -torch.log(-torch.log(u))


def gumbel_noise(seed: torch.Tensor, offset: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    """float64 Gumbel noise [n_rows, n_cols], as ``mavis::gumbel_noise``."""
    return gumbel_from_uniform(philox_uniform(seed, offset, n_rows, n_cols))


def _row_problems(x: torch.Tensor, name: str) -> list[tuple[str, torch.Tensor]]:
    """The data errors of the rows of ``x`` [B, N]: (message, [B] bool mask of the rows that have
    it), in the order they are reported when a batch has several (the kernels use the same order)."""
    no_finite = ~torch.isfinite(x).any(dim=-1) if x.numel() else torch.zeros(x.shape[:-1], dtype=torch.bool)
    return [
        (f"{name}: contains NaN", torch.isnan(x).any(dim=-1)),
        (f"{name}: contains +inf", torch.isposinf(x).any(dim=-1)),
        (f"{name}: a row has no finite entry (all -inf)", no_finite),
    ]


def _raise_first(problems: list[tuple[str, torch.Tensor]]) -> None:
    """Raise the first problem (in list order) that some row has: the error does not depend on
    which row has it or on the batch order."""
    for message, rows in problems:
        if rows.any():
            raise ValueError(message)


def _bad_rows(problems: list[tuple[str, torch.Tensor]], B: int, device) -> torch.Tensor:
    bad = torch.zeros(B, dtype=torch.bool, device=device)
    for _, rows in problems:
        bad = bad | rows.to(device)
    return bad


def _check_weights(weights: torch.Tensor) -> None:
    if not torch.isfinite(weights).all():
        raise ValueError("weights: contains NaN or inf")


def _ranked_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row, sorted descending, ties broken by the lower column index."""
    # A stable descending sort keeps equal values in index order: exactly the contract's tie rule.
    vals, idx = torch.sort(scores, dim=-1, descending=True, stable=True)
    return vals[:, :k], idx[:, :k]


def topk_candidates(logits: torch.Tensor, k: int, temperature: float = 1.0, mark_invalid: bool = False):
    """(cand_logits [B, k], cand_ids [B, k], lse [B]) of ``logits / temperature``. With
    ``mark_invalid`` a row with bad data (NaN/+inf, or no finite logit) gets ids -1 and NaN values
    and lse instead of an error; the other rows are unchanged."""
    x = logits.float() / temperature
    problems = _row_problems(x, "logits")
    if not mark_invalid:
        _raise_first(problems)
        bad = None
    else:
        bad = _bad_rows(problems, x.shape[0], x.device)
        x = torch.where(bad[:, None], torch.zeros_like(x), x)  # any finite stand-in: the row is masked
    vals, idx = _ranked_topk(x, k)
    lse = torch.logsumexp(x, dim=-1)
    if bad is not None:
        vals = vals.masked_fill(bad[:, None], float("nan"))
        idx = idx.masked_fill(bad[:, None], -1)
        lse = lse.masked_fill(bad, float("nan"))
    return vals, idx, lse


def combine_values(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w[b, i] * values[b, i, :] accumulated in fp32 in objective order. values: [B, m, N]."""
    _check_weights(weights)
    B, m, N = values.shape
    w = weights.float()
    w = w.expand(B, m) if w.dim() == 1 else w
    out = torch.zeros(B, N, dtype=torch.float32, device=values.device)
    for i in range(m):
        out = out + w[:, i : i + 1] * values[:, i, :].float()
    return out


def value_heads(hidden, head_weight, head_bias=None, candidate_ids=None, weights=None):
    h = hidden.float()
    W = head_weight.float()
    if candidate_ids is None:  # prefix mode: hidden [B, N, d], W [m, d] -> [B, m, N]
        vals = torch.einsum("bnd,md->bmn", h, W)
        if head_bias is not None:
            vals = vals + head_bias.float().view(1, -1, 1)
    else:  # Q-head mode: hidden [B, d], W [m, V, d], ids [B, K] -> [B, m, K]
        V = W.shape[1]
        if candidate_ids.numel() and not ((candidate_ids >= 0) & (candidate_ids < V)).all():
            raise ValueError(f"candidate_ids: an id is out of range [0, {V})")
        rows = W[:, candidate_ids]  # [m, B, K, d]
        vals = torch.einsum("mbkd,bd->bmk", rows, h)
        if head_bias is not None:
            vals = vals + head_bias.float()[:, candidate_ids].permute(1, 0, 2)
    if weights is not None:
        return combine_values(vals, weights)
    return vals


def tilt_logits(logits, values, weights, beta: float, temperature: float = 1.0):
    comb = combine_values(values, weights)
    return logits.float() / temperature + beta * comb


def _nucleus_mask(t: torch.Tensor, keep: torch.Tensor, top_p: float) -> torch.Tensor:
    """Within ``keep``, the smallest set of highest-probability columns whose mass reaches top_p.

    A column is kept when the probability mass ranked strictly before it is below ``top_p``; ranking
    is by tilted score, descending, ties to the lower column index.
    """
    masked = torch.where(keep, t, torch.full_like(t, float("-inf")))
    p = torch.softmax(masked, dim=-1)
    p_sorted, order = torch.sort(masked, dim=-1, descending=True, stable=True)
    p_sorted = torch.gather(p, -1, order)
    before = torch.cumsum(p_sorted, dim=-1) - p_sorted
    keep_sorted = before < top_p
    nucleus = torch.zeros_like(keep)
    nucleus.scatter_(-1, order, keep_sorted)
    return keep & nucleus


def tilted_sample(
    logits,
    values=None,
    weights=None,
    beta: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    topk_on_tilted: bool = False,
    candidate_ids=None,
    seed=None,
    offset=None,
    mark_invalid: bool = False,
):
    """Returns (ids [B] int64, logp_tilted [B] fp32, logp_base [B] fp32).

    The draw is a Gumbel-max: ``argmax_j (float64(t_j) + g_j)`` over the kept columns, with the
    float64 noise of :func:`gumbel_noise` and ties to the lower column. Data errors of a row (NaN or
    +inf logits, no finite logit, a non-finite tilted score at a column that is used, no finite
    candidate) raise, the first kind present in the batch first; with ``mark_invalid`` such a row
    gets id -1 and NaN log-probabilities instead, and every other row is drawn exactly as without it.
    """
    B, N = logits.shape
    device = logits.device
    base = logits.float() / temperature
    problems = _row_problems(base, "logits")
    bad = _bad_rows(problems, B, device)
    if not mark_invalid:
        _raise_first(problems)
    base = torch.where(bad[:, None], torch.zeros_like(base), base)  # stand-in for rows marked invalid
    t = base + beta * combine_values(values, weights) if values is not None else base
    t = torch.where(torch.isneginf(base), base, t)  # a column the base model bans stays banned
    keep = torch.ones(B, N, dtype=torch.bool, device=device)
    if 0 < top_k < N and not topk_on_tilted:
        # The base model proposes: the keep set depends on the logits only, and only the values of
        # the kept columns are ever read (the kernels gather them), so only those are checked.
        _, idx = _ranked_topk(base, top_k)
        keep = torch.zeros_like(keep)
        keep.scatter_(-1, idx, True)
    values_bad = (keep & torch.isfinite(base) & ~torch.isfinite(t)).any(dim=-1) & ~bad
    problems.append(("values: tilted scores are not finite (NaN or inf in values)", values_bad))
    bad = bad | values_bad
    t = torch.where(bad[:, None], base, t)
    if 0 < top_k < N and topk_on_tilted:
        _, idx = _ranked_topk(t, top_k)
        keep = torch.zeros_like(keep)
        keep.scatter_(-1, idx, True)
    keep = keep & torch.isfinite(t)
    no_candidate = ~keep.any(dim=-1) & ~bad
    problems.append(("logits: no finite candidate left in a row after top_k", no_candidate))
    if not mark_invalid:
        _raise_first(problems)
    bad = bad | no_candidate
    keep = keep | bad[:, None]  # stand-in keep set (all columns, finite scores) for marked rows
    if top_p < 1.0:
        keep = _nucleus_mask(t, keep, top_p)
    g = gumbel_noise(seed, offset, B, N).to(device)
    score = torch.where(keep, t.double() + g, torch.full_like(g, float("-inf")))
    tok = torch.argmax(score, dim=-1)  # the first maximum: ties go to the lower column
    neg_inf = torch.full_like(t, float("-inf"))
    logp_t = torch.log_softmax(torch.where(keep, t, neg_inf), dim=-1).gather(-1, tok[:, None])[:, 0]
    logp_b = torch.log_softmax(base, dim=-1).gather(-1, tok[:, None])[:, 0]
    ids = tok if candidate_ids is None else candidate_ids.gather(-1, tok[:, None])[:, 0].to(torch.int64)
    if mark_invalid:
        ids = ids.masked_fill(bad, -1)
        logp_t = logp_t.masked_fill(bad, float("nan"))
        logp_b = logp_b.masked_fill(bad, float("nan"))
    return ids, logp_t, logp_b


def guided_sample(
    logits,
    hidden,
    head_weight,
    head_bias,
    weights,
    beta: float,
    top_k: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed=None,
    offset=None,
    mark_invalid: bool = False,
):
    """Fused Q-head MAVIS step. ``logp_base`` is log pi_ref over the FULL vocabulary. With
    ``mark_invalid`` a row with bad logits or a non-finite tilted score gets id -1 and NaN
    log-probabilities; the other rows are drawn exactly as without it."""
    cand_logits, cand_ids, lse = topk_candidates(logits, top_k, temperature, mark_invalid)
    bad = cand_ids[:, 0] < 0
    safe_ids = cand_ids.clamp_min(0)  # marked rows read head rows 0..: any in-range stand-in
    comb = value_heads(hidden, head_weight, head_bias, candidate_ids=safe_ids, weights=weights)
    ids, logp_t, _ = tilted_sample(
        cand_logits,
        comb.unsqueeze(1),
        torch.ones(1, dtype=torch.float32, device=logits.device),
        beta=beta,
        top_p=top_p,
        seed=seed,
        offset=offset,
        candidate_ids=safe_ids,
        mark_invalid=mark_invalid,
    )
    pos = (safe_ids == ids[:, None]).float().argmax(dim=-1)
    logp_b = cand_logits.gather(-1, pos[:, None])[:, 0] - lse
    if mark_invalid:
        bad = bad | (ids < 0)
        ids = ids.masked_fill(bad, -1)
        logp_t = logp_t.masked_fill(bad, float("nan"))
        logp_b = logp_b.masked_fill(bad, float("nan"))
    return ids, logp_t, logp_b
