"""value_heads (prefix and Q-head modes, with/without bias and weights) and tilt_logits against the
reference, over dtypes and strided inputs."""

import pytest
import torch

import mavis_ext
from mavis_ext import reference
from conftest import FLOAT_DTYPES, gen, non_contiguous, randn


def _tol(dtype):
    # inputs are identical for both sides (the reference upcasts the same values), only the order of
    # the fp32 dot-product accumulation differs
    return dict(rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("B,N,m,d", [(1, 1, 1, 1), (3, 40, 3, 64), (2, 7, 2, 513)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("weights", [None, "m", "Bm"])
def test_prefix_mode(device, dtype, B, N, m, d, bias, weights):
    s = B * 100 + N * 10 + m + d
    hidden = randn((B, N, d), seed=s, dtype=dtype, device=device)
    W = randn((m, d), seed=s + 1, scale=0.2, dtype=dtype, device=device)
    b = randn((m,), seed=s + 2, dtype=dtype, device=device) if bias else None
    w = None
    if weights == "m":
        w = torch.rand(m, generator=gen(s + 3)).to(device) + 0.1
    elif weights == "Bm":
        w = torch.rand(B, m, generator=gen(s + 3)).to(device) + 0.1
    got = mavis_ext.value_heads(hidden, W, b, weights=w)
    want = reference.value_heads(hidden.cpu(), W.cpu(), None if b is None else b.cpu(), None,
                                 None if w is None else w.cpu())
    assert got.dtype == torch.float32
    assert got.shape == ((B, N) if w is not None else (B, m, N))
    torch.testing.assert_close(got.cpu(), want, **_tol(dtype))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("B,V,K,m,d", [(1, 5, 1, 1, 8), (4, 3000, 40, 3, 64), (2, 500, 7, 2, 33)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("weights", [None, "m", "Bm"])
def test_q_head_mode(device, dtype, B, V, K, m, d, bias, weights):
    s = B + V + K + m + d
    hidden = randn((B, d), seed=s, dtype=dtype, device=device)
    W = randn((m, V, d), seed=s + 1, scale=0.2, dtype=dtype, device=device)
    b = randn((m, V), seed=s + 2, dtype=dtype, device=device) if bias else None
    ids = torch.randint(0, V, (B, K), generator=gen(s + 3)).to(device)
    w = None
    if weights == "m":
        w = torch.rand(m, generator=gen(s + 4)).to(device) - 0.5
    elif weights == "Bm":
        w = torch.rand(B, m, generator=gen(s + 4)).to(device) - 0.5
    got = mavis_ext.value_heads(hidden, W, b, candidate_ids=ids, weights=w)
    want = reference.value_heads(hidden.cpu(), W.cpu(), None if b is None else b.cpu(), ids.cpu(),
                                 None if w is None else w.cpu())
    assert got.shape == ((B, K) if w is not None else (B, m, K))
    torch.testing.assert_close(got.cpu(), want, **_tol(dtype))


def test_int32_candidate_ids_and_strided(device):
    B, V, K, m, d = 3, 800, 11, 2, 40
    hidden = non_contiguous(randn((B, d), seed=1, device=device))
    W = non_contiguous(randn((m, V, d), seed=2, scale=0.3, device=device))
    b = non_contiguous(randn((m, V), seed=3, device=device))
    ids = torch.randint(0, V, (B, K), generator=gen(4)).to(device)
    got = mavis_ext.value_heads(hidden, W, b, candidate_ids=ids.to(torch.int32))
    want = reference.value_heads(hidden.cpu(), W.cpu(), b.cpu(), ids.cpu())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4)
    hp = non_contiguous(randn((B, K, d), seed=5, device=device))
    Wp = randn((d, m), seed=6, device=device).t()  # column-major head matrix
    torch.testing.assert_close(
        mavis_ext.value_heads(hp, Wp).cpu(), reference.value_heads(hp.cpu(), Wp.cpu()), rtol=1e-4, atol=1e-4
    )


def test_weighted_equals_combination_of_heads(device):
    B, V, K, m, d = 2, 100, 6, 3, 16
    hidden = randn((B, d), seed=7, device=device)
    W = randn((m, V, d), seed=8, device=device)
    ids = torch.randint(0, V, (B, K), generator=gen(9)).to(device)
    w = torch.tensor([[0.2, -1.0, 0.5], [1.5, 0.0, 0.25]], device=device)
    per_head = mavis_ext.value_heads(hidden, W, candidate_ids=ids)
    comb = mavis_ext.value_heads(hidden, W, candidate_ids=ids, weights=w)
    torch.testing.assert_close(comb, (w[:, :, None] * per_head).sum(1), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- tilt_logits
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("B,N,m", [(1, 1, 1), (3, 1000, 3), (2, 4099, 2)])
@pytest.mark.parametrize("weights", ["m", "Bm"])
@pytest.mark.parametrize("beta,temperature", [(1.0, 1.0), (0.37, 0.8)])
def test_tilt_logits(device, dtype, B, N, m, weights, beta, temperature):
    s = B + N + m
    logits = randn((B, N), seed=s, scale=3.0, dtype=dtype, device=device)
    values = randn((B, m, N), seed=s + 1, dtype=dtype, device=device)
    w = torch.rand((m,) if weights == "m" else (B, m), generator=gen(s + 2)).to(device) + 0.05
    got = mavis_ext.tilt_logits(logits, values, w, beta=beta, temperature=temperature)
    want = reference.tilt_logits(logits.cpu(), values.cpu(), w.cpu(), beta, temperature)
    assert got.dtype == torch.float32 and got.shape == (B, N)
    if device == "cpu":  # same float operations in the same order: bit-identical
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    else:
        torch.testing.assert_close(got.cpu(), want, rtol=1e-6, atol=1e-6)


def test_tilt_logits_strided_and_combined_values(device):
    logits = non_contiguous(randn((3, 700), seed=11, device=device))
    values = non_contiguous(randn((3, 2, 700), seed=12, device=device))
    w = torch.tensor([0.5, -2.0], device=device)
    got = mavis_ext.tilt_logits(logits, values, w, beta=1.5)
    torch.testing.assert_close(got.cpu(), reference.tilt_logits(logits.cpu(), values.cpu(), w.cpu(), 1.5),
                               rtol=1e-6, atol=1e-6)
    # already-combined [B, N] values count as one objective with weight 1
    comb = randn((3, 700), seed=13, device=device)
    got2 = mavis_ext.tilt_logits(logits, comb, None, beta=2.0)
    torch.testing.assert_close(got2.cpu(), (logits.float() + 2.0 * comb).cpu(), rtol=1e-6, atol=1e-6)
