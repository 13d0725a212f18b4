"""Shared fixtures and helpers of the op tests.

``device``: every op test runs on the CPU kernels, and on the CUDA kernels too when this build has
them and a GPU is present, so the same suite checks both backends. Inputs are random (seeded per
test for reproducibility) and never all zeros.
"""

from __future__ import annotations

import pytest
import torch

import mavis_ext

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and mavis_ext.has_cuda_kernels() else [])
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def gen(seed: int) -> torch.Generator:
    """A CPU generator for test inputs (inputs are made on the CPU, then moved)."""
    return torch.Generator().manual_seed(seed)


def randn(shape, seed: int, *, scale: float = 1.0, dtype=torch.float32, device="cpu") -> torch.Tensor:
    return (torch.randn(shape, generator=gen(seed)) * scale).to(dtype=dtype, device=device)


def non_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The same values as ``x`` with a non-unit stride in every dimension (a strided view)."""
    big = torch.empty(tuple(2 * s for s in x.shape), dtype=x.dtype, device=x.device)
    big.normal_()
    view = big[tuple(slice(None, None, 2) for _ in x.shape)]
    view.copy_(x)
    assert not view.is_contiguous() or x.numel() <= 1
    return view


def seed_pair(seed, device="cpu", batch=None):
    """(seed, offset) tensors as the torch ops take them."""
    return mavis_ext.make_seed(device=device, seed=seed, batch=batch)


def assert_tokens_match(got: torch.Tensor, want: torch.Tensor, max_mismatch: float = 0.0) -> None:
    """Tokens equal, up to a fraction ``max_mismatch`` of rows (scores tying within rounding)."""
    got, want = got.cpu(), want.cpu()
    frac = (got != want).float().mean().item()
    assert frac <= max_mismatch, f"{frac:.4%} of tokens differ (allowed {max_mismatch:.4%})"
