"""Chooses the implementation behind the public wrappers: the compiled ``torch.ops.mavis`` ops when
``mavis_ext._C`` is importable, else the pure-PyTorch ``reference`` (with one warning), so that
pure-Python users are never stuck. ``MAVIS_USE_REFERENCE=1`` forces the reference."""

from __future__ import annotations

import os
import warnings

import torch

from . import reference

_LOAD_ERROR: Exception | None = None
try:
    if os.environ.get("MAVIS_USE_REFERENCE", "0") == "1":
        raise ImportError("MAVIS_USE_REFERENCE=1")
    from . import _C  # noqa: F401  (importing runs the TORCH_LIBRARY static initialisers)

    HAS_C = True
except ImportError as e:  # missing build, or forced
    HAS_C = False
    _LOAD_ERROR = e
    if os.environ.get("MAVIS_USE_REFERENCE", "0") != "1":
        warnings.warn(
            f"mavis_ext: compiled extension not available ({e}); falling back to the pure-PyTorch "
            "reference implementation (correct, but slow). Build with "
            "`pip install --no-build-isolation .` to get the fused kernels.",
            RuntimeWarning,
            stacklevel=3,
        )

if HAS_C:
    from . import _fake  # noqa: F401  (register_fake for every op)

_REFERENCE = {
    "topk_candidates": reference.topk_candidates,
    "value_heads": reference.value_heads,
    "tilt_logits": reference.tilt_logits,
    "tilted_sample": reference.tilted_sample,
    "guided_sample": reference.guided_sample,
}


def op(name: str):
    """The callable for op ``name``, taking the torch-op (positional) arguments."""
    if HAS_C:
        return getattr(torch.ops.mavis, name).default
    return _REFERENCE[name]


def has_cuda_kernels() -> bool:
    """True when the build includes the CUDA kernels (mavis was compiled with CUDAExtension)."""
    if not HAS_C:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("mavis::tilted_sample", "CUDA")
    except Exception:  # pragma: no cover - private API changed
        return False
