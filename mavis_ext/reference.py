"""Pure-PyTorch reference of every op in the public contract (DESIGN.md section 3).

This file is the ground truth: the C++ and CUDA kernels are tested against it, and it is the
fallback when the compiled extension is missing. It favours clarity over speed, but follows the
kernels' order of floating-point operations (fp32 accumulation, objectives summed in order, then
``logit / temperature + beta * combined``) and draws the same counter-based noise
(Philox4x32-10 keyed by seed, offset, row and column; see ``csrc/include/mavis/philox.h``), so that
with the same seed it picks the same tokens as the kernels except where two scores tie within
rounding.

The functions here take already-validated arguments in the torch-op form (seed/offset tensors,
``weights`` as float32 ``[m]`` or ``[B, m]``). Argument checking with user-facing messages lives in
``mavis_ext/ops.py``; the data-dependent checks (NaN weights, rows with no finite logit) are done
here as in the kernels, because only a pass over the data can see them.
"""

from __future__ import annotations

import torch

__all__ = [
    "philox_uniform",
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
    """Uniform (0, 1) noise of shape [n_rows, n_cols], identical to ``mavis::philox_uniform``.

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
    x0, _, _, _ = _philox4x32_10(c0, c1, c2, c3, k0, k1)
    # 23 bits, centred: (k + 0.5) * 2^-23 is exact in fp32 and never 0 or 1 (see philox.h).
    return ((x0 >> 9).to(torch.float32) + 0.5) * (1.0 / 8388608.0)


def gumbel_noise(seed: torch.Tensor, offset: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    u = philox_uniform(seed, offset, n_rows, n_cols)
    return -torch.log(-torch.log(u))


def _check_rows(x: torch.Tensor, name: str) -> None:
    """Data-dependent checks shared with the kernels: no NaN/+inf, and a finite entry in each row."""
    if torch.isnan(x).any():
        raise ValueError(f"{name}: contains NaN")
    if torch.isposinf(x).any():
        raise ValueError(f"{name}: contains +inf")
    if x.numel() and not torch.isfinite(x).any(dim=-1).all():
        raise ValueError(f"{name}: a row has no finite entry (all -inf)")


def _check_weights(weights: torch.Tensor) -> None:
    if not torch.isfinite(weights).all():
        raise ValueError("weights: contains NaN or inf")


def _ranked_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row, sorted descending, ties broken by the lower column index."""
    # A stable descending sort keeps equal values in index order: exactly the contract's tie rule.
    vals, idx = torch.sort(scores, dim=-1, descending=True, stable=True)
    return vals[:, :k], idx[:, :k]


def topk_candidates(logits: torch.Tensor, k: int, temperature: float = 1.0):
    x = logits.float() / temperature
    _check_rows(x, "logits")
    vals, idx = _ranked_topk(x, k)
    lse = torch.logsumexp(x, dim=-1)
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
):
    """Returns (ids [B] int64, logp_tilted [B] fp32, logp_base [B] fp32)."""
    B, N = logits.shape
    base = logits.float() / temperature
    _check_rows(base, "logits")
    t = base + beta * combine_values(values, weights) if values is not None else base
    t = torch.where(torch.isneginf(base), base, t)  # a column the base model bans stays banned
    keep = torch.ones(B, N, dtype=torch.bool, device=logits.device)
    if 0 < top_k < N and not topk_on_tilted:
        # The base model proposes: the keep set depends on the logits only, and only the values of
        # the kept columns are ever read (the kernels gather them), so only those are checked.
        _, idx = _ranked_topk(base, top_k)
        keep = torch.zeros_like(keep)
        keep.scatter_(-1, idx, True)
    if values is not None and not torch.isfinite(t[keep & torch.isfinite(base)]).all():
        raise ValueError("values: tilted scores are not finite (NaN or inf in values)")
    if 0 < top_k < N and topk_on_tilted:
        _, idx = _ranked_topk(t, top_k)
        keep = torch.zeros_like(keep)
        keep.scatter_(-1, idx, True)
    keep = keep & torch.isfinite(t)
    if not keep.any(dim=-1).all():
        raise ValueError("logits: no finite candidate left in a row after top_k")
    if top_p < 1.0:
        keep = _nucleus_mask(t, keep, top_p)
    g = gumbel_noise(seed, offset, B, N).to(logits.device)
    neg_inf = torch.full_like(t, float("-inf"))
    score = torch.where(keep, t + g, neg_inf)
    tok = torch.argmax(score, dim=-1)
    logp_t = torch.log_softmax(torch.where(keep, t, neg_inf), dim=-1).gather(-1, tok[:, None])[:, 0]
    logp_b = torch.log_softmax(base, dim=-1).gather(-1, tok[:, None])[:, 0]
    ids = tok if candidate_ids is None else candidate_ids.gather(-1, tok[:, None])[:, 0].to(torch.int64)
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
):
    """Fused Q-head MAVIS step. ``logp_base`` is log pi_ref over the FULL vocabulary."""
    cand_logits, cand_ids, lse = topk_candidates(logits, top_k, temperature)
    comb = value_heads(hidden, head_weight, head_bias, candidate_ids=cand_ids, weights=weights)
    ids, logp_t, _ = tilted_sample(
        cand_logits,
        comb.unsqueeze(1),
        torch.ones(1, dtype=torch.float32, device=logits.device),
        beta=beta,
        top_p=top_p,
        seed=seed,
        offset=offset,
        candidate_ids=cand_ids,
    )
    pos = (cand_ids == ids[:, None]).float().argmax(dim=-1)
    logp_b = cand_logits.gather(-1, pos[:, None])[:, 0] - lse
    return ids, logp_t, logp_b
