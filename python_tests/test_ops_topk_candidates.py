"""topk_candidates against reference.topk_candidates: exact values and index sets (lower id wins
ties), full-row logsumexp, every float dtype, strided inputs, rows with -inf entries."""

import pytest
import torch

import mavis_ext
from mavis_ext import reference
from conftest import FLOAT_DTYPES, non_contiguous, randn


def _check(logits, k, temperature):
    vals, ids, lse = mavis_ext.topk_candidates(logits, k, temperature=temperature)
    rv, ri, rl = reference.topk_candidates(logits.cpu(), k, temperature)
    assert vals.dtype == torch.float32 and ids.dtype == torch.int64 and lse.dtype == torch.float32
    assert vals.shape == (logits.shape[0], k) and lse.shape == (logits.shape[0],)
    torch.testing.assert_close(ids.cpu(), ri, rtol=0, atol=0)
    torch.testing.assert_close(vals.cpu(), rv, rtol=1e-6, atol=0)
    torch.testing.assert_close(lse.cpu(), rl, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("B,V", [(1, 7), (3, 1000), (5, 5003), (2, 40000)])
@pytest.mark.parametrize("k", [1, 5, 40])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_reference(device, dtype, B, V, k, temperature):
    k = min(k, V)
    logits = randn((B, V), seed=B * V + k, scale=3.0, dtype=dtype, device=device)
    _check(logits, k, temperature)


def test_k_equals_v_sorts_whole_row(device):
    logits = randn((3, 300), seed=1, scale=2.0, device=device)
    _check(logits, 300, 1.3)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_non_contiguous(device, dtype):
    logits = non_contiguous(randn((4, 3001), seed=2, scale=3.0, dtype=dtype, device=device))
    _check(logits, 17, 0.9)
    # a transposed view: unit stride along the batch, not along the vocabulary
    t = randn((2500, 3), seed=3, dtype=dtype, device=device).t()
    _check(t, 9, 1.0)


def test_ties_go_to_lower_id(device):
    # integer logits in a small range: every row has many exact ties at the k-th value
    g = torch.Generator().manual_seed(4)
    logits = torch.randint(0, 4, (6, 2000), generator=g).float().to(device)
    _check(logits, 25, 1.0)
    vals, ids, _ = mavis_ext.topk_candidates(logits, 25)
    for row_v, row_i in zip(vals.cpu(), ids.cpu()):
        for a in range(24):  # sorted descending, equal values in increasing id order
            assert row_v[a] > row_v[a + 1] or (row_v[a] == row_v[a + 1] and row_i[a] < row_i[a + 1])


def test_rows_with_neg_inf(device):
    logits = randn((4, 600), seed=5, device=device)
    logits[0, 3:] = float("-inf")  # only 3 finite entries, k = 10: the rest are -inf, lowest ids first
    logits[1, ::2] = float("-inf")
    _check(logits, 10, 1.0)
    vals, ids, _ = mavis_ext.topk_candidates(logits, 10)
    assert torch.isinf(vals[0, 3:]).all() and ids[0, 3:].tolist() == list(range(3, 10))


def test_log_pi_ref(device):
    logits = randn((3, 5000), seed=6, scale=2.0, device=device)
    vals, ids, lse = mavis_ext.topk_candidates(logits, 8, temperature=0.5)
    want = torch.log_softmax(logits.float().cpu() / 0.5, dim=-1).gather(-1, ids.cpu())
    torch.testing.assert_close((vals - lse[:, None]).cpu(), want, rtol=1e-5, atol=1e-5)


def test_large_magnitude_logits(device):
    # lse must stay finite and exact for huge (but finite) logits
    logits = randn((2, 3000), seed=7, scale=1e4, device=device)
    _check(logits, 5, 1.0)
