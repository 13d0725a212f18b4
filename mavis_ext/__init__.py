"""mavis_ext: multi-objective, value-guided decoding (MAVIS, arXiv 2508.13415) as fused torch ops.

Public ops (DESIGN.md section 3): ``topk_candidates``, ``value_heads``, ``tilt_logits``,
``tilted_sample``, ``guided_sample``. They dispatch to the compiled CPU/CUDA kernels
(``torch.ops.mavis.*``) or, when the extension is not built, to ``mavis_ext.reference``.
"""

from . import reference
from ._backend import HAS_C, has_cuda_kernels
from .ops import guided_sample, make_seed, tilt_logits, tilted_sample, topk_candidates, value_heads

__version__ = "0.1.0"

# The Hugging Face layer is imported on first use, so `import mavis_ext` (the ops) stays light.
_LAZY = {
    "ValueModel": "values",
    "ValueEnsemble": "values",
    "load_value_models": "values",
    "MavisGenerator": "decoding",
    "GenerationOutput": "decoding",
    "MavisLogitsProcessor": "hf",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mavis_ext' has no attribute {name!r}")


__all__ = [
    "HAS_C",
    "has_cuda_kernels",
    "reference",
    "topk_candidates",
    "value_heads",
    "tilt_logits",
    "tilted_sample",
    "guided_sample",
    "make_seed",
    "__version__",
    *_LAZY,
]
