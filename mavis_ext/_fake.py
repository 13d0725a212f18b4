"""Fake (meta) kernels: output shapes and dtypes for tracing (torch.compile, opcheck). They mirror
the schemas in csrc/ops.cpp and must never read tensor data."""

from __future__ import annotations

import torch


@torch.library.register_fake("mavis::topk_candidates")
def _topk_candidates_fake(logits, k, temperature, mark_invalid=False):
    B = logits.shape[0]
    return (
        logits.new_empty((B, k), dtype=torch.float32),
        logits.new_empty((B, k), dtype=torch.int64),
        logits.new_empty((B,), dtype=torch.float32),
    )


@torch.library.register_fake("mavis::value_heads")
def _value_heads_fake(hidden, head_weight, head_bias, candidate_ids, weights):
    B, m = hidden.shape[0], head_weight.shape[0]
    n = hidden.shape[1] if candidate_ids is None else candidate_ids.shape[1]
    shape = (B, n) if weights is not None else (B, m, n)
    return hidden.new_empty(shape, dtype=torch.float32)


@torch.library.register_fake("mavis::tilt_logits")
def _tilt_logits_fake(logits, values, weights, beta, temperature):
    return logits.new_empty(logits.shape, dtype=torch.float32)


def _sample_outputs(logits):
    B = logits.shape[0]
    return (
        logits.new_empty((B,), dtype=torch.int64),
        logits.new_empty((B,), dtype=torch.float32),
        logits.new_empty((B,), dtype=torch.float32),
    )


@torch.library.register_fake("mavis::tilted_sample")
def _tilted_sample_fake(logits, values, weights, beta, temperature, top_k, top_p, topk_on_tilted,
                        candidate_ids, seed, offset, mark_invalid=False):
    return _sample_outputs(logits)


@torch.library.register_fake("mavis::guided_sample")
def _guided_sample_fake(logits, hidden, head_weight, head_bias, weights, beta, top_k, temperature,
                        top_p, seed, offset, mark_invalid=False):
    return _sample_outputs(logits)
