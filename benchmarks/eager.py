"""The eager PyTorch composites a user writes today for each fused op: the baselines of the op
benchmark. Device-agnostic (they run wherever their inputs live); all accumulate in fp32."""

from __future__ import annotations

import torch


def _combine(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w[b,i] * values[b,i,:] for values [B, m, N] and weights [m] or [B, m]."""
    w = weights.float()
    w = w.view(1, -1, 1) if w.dim() == 1 else w.unsqueeze(-1)
    return (w * values.float()).sum(1)


def _sample_from_sorted(scores: torch.Tensor, ids: torch.Tensor, top_p: float) -> torch.Tensor:
    """softmax over the (descending) candidate scores, optional nucleus, multinomial, map to ids."""
    p = torch.softmax(scores, dim=-1)
    if top_p < 1.0:
        before = torch.cumsum(p, dim=-1) - p
        p = torch.where(before < top_p, p, torch.zeros_like(p))
    pick = torch.multinomial(p, 1)
    return ids.gather(-1, pick)[:, 0]


def tilted_sample(logits, values, weights, *, beta=1.0, temperature=1.0, top_k=40, top_p=1.0, topk_on="base"):
    """tilt (whole vocabulary) + topk + softmax + multinomial."""
    base = logits.float() / temperature
    t = base + beta * _combine(values, weights) if values is not None else base
    if top_k == 0:
        if top_p < 1.0:
            t, ids = torch.sort(t, dim=-1, descending=True)
            return _sample_from_sorted(t, ids, top_p)
        return torch.multinomial(torch.softmax(t, dim=-1), 1)[:, 0]
    if topk_on == "tilted":
        tv, ids = t.topk(top_k, dim=-1)
    else:
        _, ids = base.topk(top_k, dim=-1)
        tv = t.gather(-1, ids)
        if top_p < 1.0:  # the nucleus ranks by tilted score
            tv, order = torch.sort(tv, dim=-1, descending=True)
            ids = ids.gather(-1, order)
    return _sample_from_sorted(tv, ids, top_p)


def guided_sample_gather(logits, hidden, head_weight, head_bias, weights, *, beta=1.0, top_k=40, temperature=1.0):
    """topk of the base logits + gather the K candidate rows of each head + einsum + tilt + softmax +
    multinomial (the K-candidate Q-head step written by hand)."""
    cand, ids = (logits.float() / temperature).topk(top_k, dim=-1)
    rows = head_weight[:, ids].float()  # [m, B, K, d]
    q = torch.einsum("mbkd,bd->bmk", rows, hidden.float())
    if head_bias is not None:
        q = q + head_bias[:, ids].float().permute(1, 0, 2)
    t = cand + beta * _combine(q, weights)
    return _sample_from_sorted(t, ids, 1.0)


def guided_sample_full_heads(logits, hidden, head_weight, head_bias, weights, *, beta=1.0, top_k=40,
                             temperature=1.0):
    """The naive Q-head step: every head over the whole vocabulary (hidden @ W.T, a [B, m, V] GEMM),
    then gather the top-k candidates of the base logits, tilt, softmax, multinomial."""
    m, V, d = head_weight.shape
    q = (hidden.float() @ head_weight.float().reshape(m * V, d).t()).view(-1, m, V)
    if head_bias is not None:
        q = q + head_bias.float()
    cand, ids = (logits.float() / temperature).topk(top_k, dim=-1)
    comb = _combine(q, weights).gather(-1, ids)
    return _sample_from_sorted(cand + beta * comb, ids, 1.0)


def topk_candidates(logits, k, *, temperature=1.0):
    """torch.topk + torch.logsumexp of logits / temperature."""
    x = logits.float() / temperature
    vals, ids = x.topk(k, dim=-1)
    return vals, ids, torch.logsumexp(x, dim=-1)


def value_heads_gather(hidden, head_weight, head_bias, candidate_ids, weights):
    """Q-head values of K candidates: gather rows + einsum (+ bias) + weighted sum."""
    rows = head_weight[:, candidate_ids].float()
    q = torch.einsum("mbkd,bd->bmk", rows, hidden.float())
    if head_bias is not None:
        q = q + head_bias[:, candidate_ids].float().permute(1, 0, 2)
    return _combine(q, weights)
