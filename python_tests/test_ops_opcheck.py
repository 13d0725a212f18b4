"""torch.library.opcheck on every op (schema, fake kernel, autograd registration, AOT dispatch),
with explicit seed/offset tensors so the sampling ops are pure functions of their inputs."""

import pytest
import torch

import mavis_ext
from conftest import gen, randn

pytestmark = pytest.mark.skipif(not mavis_ext.HAS_C, reason="compiled extension not built")


def _cases(device):
    B, V, m, d, K = 3, 257, 2, 16, 5
    logits = randn((B, V), seed=1, scale=2.0, device=device)
    values = randn((B, m, V), seed=2, device=device)
    w = torch.tensor([0.4, 0.6], device=device)
    wb = torch.rand(B, m, generator=gen(3)).to(device)
    seed = torch.tensor([11], device=device)
    off = torch.tensor([0], device=device)
    seeds = torch.arange(B, device=device)
    hidden_q = randn((B, d), seed=4, device=device)
    W_q = randn((m, V, d), seed=5, device=device)
    b_q = randn((m, V), seed=6, device=device)
    ids = torch.randint(0, V, (B, K), generator=gen(7)).to(device)
    hidden_p = randn((B, K, d), seed=8, device=device)
    W_p = randn((m, d), seed=9, device=device)
    b_p = randn((m,), seed=10, device=device)
    ops = torch.ops.mavis
    return [
        (ops.topk_candidates.default, (logits, 7, 0.8, True)),
        (ops.tilted_sample.default, (logits, values, wb, 2.0, 0.7, 10, 0.9, True, None, seeds, seeds, True)),
        (ops.guided_sample.default, (logits, hidden_q, W_q, b_q, w, 1.0, K, 1.0, 0.8, seeds, seeds, True)),
        (ops.topk_candidates.default, (logits, 7, 0.8)),
        (ops.topk_candidates.default, (logits.half(), 1, 1.0)),
        (ops.value_heads.default, (hidden_p, W_p, b_p, None, None)),
        (ops.value_heads.default, (hidden_p, W_p, None, None, wb)),
        (ops.value_heads.default, (hidden_q, W_q, b_q, ids, None)),
        (ops.value_heads.default, (hidden_q.bfloat16(), W_q.bfloat16(), None, ids, w)),
        (ops.tilt_logits.default, (logits, values, w, 1.5, 0.9)),
        (ops.tilted_sample.default, (logits, values, w, 1.0, 1.0, 0, 1.0, False, None, seed, off)),
        (ops.tilted_sample.default, (logits, values, wb, 2.0, 0.7, 10, 0.9, True, None, seeds, seeds)),
        (ops.tilted_sample.default, (logits, None, None, 1.0, 1.0, 4, 1.0, False,
                                     torch.randint(0, 9999, (B, V), generator=gen(12)).to(device), seed, off)),
        (ops.guided_sample.default, (logits, hidden_q, W_q, b_q, w, 1.0, K, 1.0, 1.0, seed, off)),
        (ops.guided_sample.default, (logits, hidden_q, W_q, None, wb, 0.5, K, 1.2, 0.8, seeds, seeds)),
    ]


def test_opcheck_every_op(device):
    seen = set()
    for op, args in _cases(device):
        torch.library.opcheck(op, args)
        seen.add(op.name())
    assert seen == {f"mavis::{n}" for n in ("topk_candidates", "value_heads", "tilt_logits", "tilted_sample",
                                             "guided_sample")}


def _marked_cases(device):
    """mark_invalid=True on batches with bad rows: outputs with -1 ids and NaN."""
    B, V, m, d, K = 3, 257, 2, 16, 5
    logits = randn((B, V), seed=21, scale=2.0, device=device)
    logits[0, 5] = float("nan")
    logits[2] = float("-inf")
    values = randn((B, m, V), seed=22, device=device)
    values[1, 0, :] = float("inf")
    w = torch.tensor([0.4, 0.6], device=device)
    seed = torch.tensor([11], device=device)
    off = torch.tensor([0], device=device)
    seeds = torch.arange(B, device=device)
    hidden = randn((B, d), seed=23, device=device)
    W = randn((m, V, d), seed=24, device=device)
    ops = torch.ops.mavis
    return [
        (ops.topk_candidates.default, (logits, 7, 0.8, True)),
        (ops.tilted_sample.default, (logits, values, w, 1.0, 1.0, 0, 1.0, False, None, seeds, seeds, True)),
        (ops.tilted_sample.default, (logits, values, w, 2.0, 0.7, 10, 0.9, True, None, seed, off, True)),
        (ops.guided_sample.default, (logits, hidden, W, None, w, 1.0, K, 1.0, 0.8, seeds, seeds, True)),
    ]


def test_opcheck_marked_rows(device):
    """Schema, fake kernel and autograd registration on outputs with marked rows; opcheck's AOT test
    compares outputs without equal_nan, so the traced op is compared here, NaN == NaN."""
    for op, args in _marked_cases(device):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
        eager = op(*args)
        assert (eager[1] == -1).any() if op.name() == "mavis::topk_candidates" else (eager[0] == -1).any()
        traced = torch.compile(lambda *a: op(*a), backend="aot_eager", fullgraph=True, dynamic=True)(*args)
        for x, y in zip(traced, eager):
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)
