"""Typed Python wrappers of the ``torch.ops.mavis`` ops: argument checks with clear errors,
``torch.Generator`` -> (seed, offset) tensors, and the fake kernels used by ``torch.compile``.

Shape/dtype/device checks raise here (``ValueError``/``TypeError`` naming the argument) before any
kernel runs. Checks that need to look at the data (NaN weights, rows with no finite logit) are done
inside the kernels, which raise ``RuntimeError`` with the argument's name (or, with
``invalid="mark"``, mark the bad rows with id -1 instead); that keeps the wrappers free of host
synchronisation and traceable by ``torch.compile(fullgraph=True)``.

When the compiled extension is missing the same wrappers call ``mavis_ext.reference`` instead
(see ``mavis_ext/_backend.py``).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from . import _backend

__all__ = ["topk_candidates", "value_heads", "tilt_logits", "tilted_sample", "guided_sample", "make_seed"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_SEED_MAX = 2**62


# ----------------------------------------------------------------------------- argument checks
def _tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def _float_tensor(x, name: str, ndim: Union[int, tuple]) -> torch.Tensor:
    x = _tensor(x, name)
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if x.dim() not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name}: expected a {want} tensor, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {x.dtype}")
    return x


def _same_device(x: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name}: on {x.device}, but {ref_name} is on {ref.device}")


def _positive_float(x, name: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(x).__name__}") from None
    if not (v > 0.0) or v == float("inf"):
        raise ValueError(f"{name}: must be a finite number > 0, got {x}")
    return v


def _finite_float(x, name: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {type(x).__name__}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: must be finite, got {x}")
    return v


def _int(x, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        if isinstance(x, torch.SymInt):
            return x
        raise TypeError(f"{name}: expected an int, got {type(x).__name__}")
    return x


def _top_p(x) -> float:
    v = _finite_float(x, "top_p")
    if not (0.0 < v <= 1.0):
        raise ValueError(f"top_p: must be in (0, 1], got {x}")
    return v


def _mark_invalid(invalid) -> bool:
    """``invalid="raise"`` (default) or ``"mark"`` -> the ops' ``mark_invalid`` flag."""
    if not isinstance(invalid, str) or invalid not in ("raise", "mark"):
        raise ValueError(f'invalid: must be "raise" or "mark", got {invalid!r}')
    return invalid == "mark"


def _check_batch(logits: torch.Tensor) -> None:
    if logits.shape[0] == 0:
        raise ValueError("logits: empty batch (B == 0)")
    if logits.shape[-1] == 0:
        raise ValueError("logits: empty last dimension (N == 0)")


def _weights(weights, B: int, m: int, ref: torch.Tensor) -> torch.Tensor:
    """Validate ``weights`` ([m] or [B, m]) and return it as float32 on ref's device."""
    if weights is None:
        return torch.ones(m, dtype=torch.float32, device=ref.device)
    if not isinstance(weights, torch.Tensor):
        try:
            weights = torch.as_tensor(weights, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"weights: expected a tensor or a list of numbers, got {type(weights).__name__}") from None
        weights = weights.to(ref.device)
    if not weights.is_floating_point():
        raise TypeError(f"weights: expected a floating-point tensor, got {weights.dtype}")
    _same_device(weights, ref, "weights", "logits")
    if weights.dim() == 1:
        if weights.shape[0] != m:
            raise ValueError(f"weights: expected {m} weights (one per objective), got {weights.shape[0]}")
    elif weights.dim() == 2:
        if tuple(weights.shape) != (B, m):
            raise ValueError(f"weights: expected shape [{B}, {m}] (rows x objectives), got {tuple(weights.shape)}")
    else:
        raise ValueError(f"weights: expected [m] or [B, m], got shape {tuple(weights.shape)}")
    return weights.to(torch.float32)


def make_seed(
    generator: Optional[torch.Generator] = None,
    device: Union[str, torch.device] = "cpu",
    seed: Union[None, int, torch.Tensor] = None,
    batch: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(seed, offset) int64 tensors for the sampling ops.

    * ``seed`` int: one stream for the batch, the row index is part of the noise counter.
    * ``seed`` tensor of B ints: one independent stream per row (batch-invariant: a row draws the
      same tokens whatever else is in the batch).
    * otherwise two int64 values are drawn from ``generator`` (or the device's default generator), so
      the same generator state gives the same tokens and every call advances it. On CUDA this stays
      on the device (no host synchronisation) and is safe under CUDA-graph capture.
    """
    device = torch.device(device)
    if seed is not None:
        if isinstance(seed, torch.Tensor):
            if seed.dtype != torch.int64 or seed.dim() != 1 or seed.numel() == 0:
                raise ValueError(f"seed: expected a 1-D int64 tensor, got {seed.dtype} of shape {tuple(seed.shape)}")
            if batch is not None and seed.numel() not in (1, batch):
                raise ValueError(f"seed: expected 1 or {batch} seeds (one per row), got {seed.numel()}")
            s = seed.to(device)
            return s, torch.zeros_like(s)
        s = _int(seed, "seed")
        # A fill kernel, not a host-to-device copy: capturable in a CUDA graph (the value is baked in).
        t = torch.full((1,), s, dtype=torch.int64, device=device)
        return t, torch.zeros_like(t)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(f"generator: on {generator.device}, but the inputs are on {device}")
    r = torch.randint(0, _SEED_MAX, (2,), dtype=torch.int64, device=device, generator=generator)
    return r[0:1], r[1:2]


# ----------------------------------------------------------------------------- public ops
_INVALID_DOC = """
    ``invalid`` says what a row with bad data does: ``"raise"`` (default) raises an error naming
    the argument (NaN or +inf logits, a row with no finite logit, a non-finite tilted score
    at a column that is used); ``"mark"`` gives that row id -1 and NaN log-probabilities instead, so
    that one bad request does not take down the batch. The validity mask is ``ids >= 0``; every
    other row is exactly what it would be without the bad ones (same tokens for the same seeds).
    Argument errors (shapes, dtypes, weights, k/top_k, top_p, temperature) raise in both modes."""


def topk_candidates(logits: torch.Tensor, k: int, *, temperature: float = 1.0, invalid: str = "raise"):
    """Top-k of ``logits / temperature`` (sorted, ties to the lower id) and the full-row logsumexp.

    Returns ``(cand_logits [B, k] fp32, cand_ids [B, k] int64, lse [B] fp32)``;
    ``log pi_ref(cand) = cand_logits - lse``. Columns with equal values are ranked by id, the lower
    first, so the k-th place of a tie goes to the lowest ids. With ``invalid="mark"`` a row with
    NaN/+inf logits or no finite logit gets ids -1 and NaN values and lse instead of an error
    (validity mask: ``cand_ids[:, 0] >= 0``); the other rows are unchanged. A row with fewer than k
    finite logits is valid: its last entries are -inf, with the lowest unused ids.
    """
    logits = _float_tensor(logits, "logits", 2)
    _check_batch(logits)
    k = _int(k, "k")
    if not (1 <= k <= logits.shape[1]):
        raise ValueError(f"k: must satisfy 1 <= k <= V={logits.shape[1]}, got {k}")
    temperature = _positive_float(temperature, "temperature")
    mark = _mark_invalid(invalid)
    return _backend.op("topk_candidates")(logits, k, temperature, mark)


def value_heads(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: Optional[torch.Tensor] = None,
    *,
    candidate_ids: Optional[torch.Tensor] = None,
    weights=None,
):
    """Value heads in prefix mode (``hidden [B,N,d]``, ``head_weight [m,d]``) -> ``[B,m,N]``, or
    Q-head mode (``hidden [B,d]``, ``head_weight [m,V,d]``, ``candidate_ids [B,K]``) -> ``[B,m,K]``
    reading only the K candidate rows. With ``weights`` ([m] or [B,m]) returns the combination
    ``sum_i w[b,i] * value[b,i,:]`` of shape [B,N] / [B,K]. Outputs are float32."""
    q_mode = candidate_ids is not None
    hidden = _float_tensor(hidden, "hidden", 2 if q_mode else 3)
    if hidden.shape[0] == 0:
        raise ValueError("hidden: empty batch (B == 0)")
    head_weight = _float_tensor(head_weight, "head_weight", 3 if q_mode else 2)
    _same_device(head_weight, hidden, "head_weight", "hidden")
    d = hidden.shape[-1]
    if head_weight.shape[-1] != d:
        raise ValueError(f"head_weight: last dimension {head_weight.shape[-1]} != hidden size d={d}")
    m = head_weight.shape[0]
    if m == 0:
        raise ValueError("head_weight: no objectives (m == 0)")
    B = hidden.shape[0]
    if head_bias is not None:
        head_bias = _float_tensor(head_bias, "head_bias", 2 if q_mode else 1)
        _same_device(head_bias, hidden, "head_bias", "hidden")
        want = tuple(head_weight.shape[:-1])
        if tuple(head_bias.shape) != want:
            raise ValueError(f"head_bias: expected shape {list(want)}, got {tuple(head_bias.shape)}")
    if q_mode:
        candidate_ids = _tensor(candidate_ids, "candidate_ids")
        if candidate_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"candidate_ids: expected int64 or int32, got {candidate_ids.dtype}")
        if candidate_ids.dim() != 2 or candidate_ids.shape[0] != B:
            raise ValueError(f"candidate_ids: expected shape [B={B}, K], got {tuple(candidate_ids.shape)}")
        if candidate_ids.shape[1] == 0:
            raise ValueError("candidate_ids: K == 0")
        _same_device(candidate_ids, hidden, "candidate_ids", "hidden")
        candidate_ids = candidate_ids.to(torch.int64)
    if weights is not None:
        weights = _weights(weights, B, m, hidden)
    return _backend.op("value_heads")(hidden, head_weight, head_bias, candidate_ids, weights)


def _values_3d(values, logits: torch.Tensor, name: str = "values") -> torch.Tensor:
    values = _float_tensor(values, name, (2, 3))
    _same_device(values, logits, name, "logits")
    if values.dim() == 2:  # already combined: one "objective"
        values = values.unsqueeze(1)
    B, N = logits.shape
    if values.shape[0] != B or values.shape[2] != N:
        raise ValueError(f"{name}: expected shape [B={B}, m, N={N}] (or [B, N]), got {tuple(values.shape)}")
    if values.shape[1] == 0:
        raise ValueError(f"{name}: no objectives (m == 0)")
    return values


def tilt_logits(logits: torch.Tensor, values: torch.Tensor, weights=None, *, beta: float, temperature: float = 1.0):
    """``logits / temperature + beta * sum_i w[b,i] * values[b,i,:]`` as float32 ``[B, N]``."""
    logits = _float_tensor(logits, "logits", 2)
    _check_batch(logits)
    values = _values_3d(values, logits)
    weights = _weights(weights, logits.shape[0], values.shape[1], logits)
    beta = _finite_float(beta, "beta")
    temperature = _positive_float(temperature, "temperature")
    return _backend.op("tilt_logits")(logits, values, weights, beta, temperature)


def tilted_sample(
    logits: torch.Tensor,
    values: Optional[torch.Tensor] = None,
    weights=None,
    *,
    beta: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    topk_on: str = "base",
    candidate_ids: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    seed: Union[None, int, torch.Tensor] = None,
    return_logprobs: bool = False,
    invalid: str = "raise",
):
    """Sample one column per row from ``softmax(tilt_logits(...))`` restricted to the keep set.

    Keep set: every column if ``top_k == 0``, else the ``top_k`` columns of the base ``logits``
    (``topk_on="base"``) or of the tilted scores (``topk_on="tilted"``), equal scores ranked by the
    lower column; then nucleus ``top_p`` over the tilted distribution inside it: a column is kept
    when the probability mass ranked strictly before it is < ``top_p`` (so the column that crosses
    ``top_p`` is kept, and equal scores are again ranked by the lower column). Returns ids ``[B]``
    int64 (mapped through ``candidate_ids`` when given) and, with ``return_logprobs=True``,
    ``logp_tilted [B]`` (under the distribution actually sampled) and ``logp_base [B]``
    (``log_softmax(logits / temperature)`` over all N columns).
    ``seed`` (int, or int64 tensor of one seed per row) overrides ``generator``: the same seed gives
    the same tokens, and with one seed per row a row's token does not depend on the rest of the batch.
    The draw is exact for the full vocabulary (``top_k=0``): Gumbel-max with 52-bit float64 noise.
    """
    logits = _float_tensor(logits, "logits", 2)
    _check_batch(logits)
    B, N = logits.shape
    if values is not None:
        values = _values_3d(values, logits)
        weights = _weights(weights, B, values.shape[1], logits)
    elif weights is not None:
        raise ValueError("weights: given without values")
    beta = _finite_float(beta, "beta")
    temperature = _positive_float(temperature, "temperature")
    top_k = _int(top_k, "top_k")
    if not (0 <= top_k <= N):
        raise ValueError(f"top_k: must satisfy 0 <= top_k <= N={N} (0 keeps every column), got {top_k}")
    top_p = _top_p(top_p)
    if topk_on not in ("base", "tilted"):
        raise ValueError(f'topk_on: must be "base" or "tilted", got {topk_on!r}')
    if candidate_ids is not None:
        candidate_ids = _tensor(candidate_ids, "candidate_ids")
        if candidate_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"candidate_ids: expected int64 or int32, got {candidate_ids.dtype}")
        if tuple(candidate_ids.shape) != (B, N):
            raise ValueError(f"candidate_ids: expected shape [B={B}, N={N}], got {tuple(candidate_ids.shape)}")
        _same_device(candidate_ids, logits, "candidate_ids", "logits")
        candidate_ids = candidate_ids.to(torch.int64)
    mark = _mark_invalid(invalid)
    s, o = make_seed(generator, logits.device, seed, B)
    ids, logp_t, logp_b = _backend.op("tilted_sample")(
        logits, values, weights, beta, temperature, top_k, top_p, topk_on == "tilted", candidate_ids, s, o, mark
    )
    return (ids, logp_t, logp_b) if return_logprobs else ids


def guided_sample(
    logits: torch.Tensor,
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: Optional[torch.Tensor],
    weights,
    *,
    beta: float,
    top_k: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: Optional[torch.Generator] = None,
    seed: Union[None, int, torch.Tensor] = None,
    return_logprobs: bool = False,
    invalid: str = "raise",
):
    """The fused MAVIS step for Q-head value models: top-k of the base logits -> gather-GEMV of the
    K candidate rows of every head -> weighted tilt -> sample. Same as ``topk_candidates`` ->
    ``value_heads(..., candidate_ids, weights)`` -> ``tilted_sample(cand_logits, ...)``, except that
    ``logp_base`` is log pi_ref over the full vocabulary (what KL tracking needs). A non-finite
    tilted score here comes from ``hidden``, ``head_weight`` or ``head_bias``.
    """
    logits = _float_tensor(logits, "logits", 2)
    _check_batch(logits)
    B, V = logits.shape
    hidden = _float_tensor(hidden, "hidden", 2)
    _same_device(hidden, logits, "hidden", "logits")
    if hidden.shape[0] != B:
        raise ValueError(f"hidden: expected {B} rows (one per logits row), got {hidden.shape[0]}")
    head_weight = _float_tensor(head_weight, "head_weight", 3)
    _same_device(head_weight, logits, "head_weight", "logits")
    m = head_weight.shape[0]
    if m == 0:
        raise ValueError("head_weight: no objectives (m == 0)")
    if head_weight.shape[1] != V or head_weight.shape[2] != hidden.shape[1]:
        raise ValueError(
            f"head_weight: expected shape [m, V={V}, d={hidden.shape[1]}], got {tuple(head_weight.shape)}"
        )
    if head_bias is not None:
        head_bias = _float_tensor(head_bias, "head_bias", 2)
        _same_device(head_bias, logits, "head_bias", "logits")
        if tuple(head_bias.shape) != (m, V):
            raise ValueError(f"head_bias: expected shape [{m}, {V}], got {tuple(head_bias.shape)}")
    weights = _weights(weights, B, m, logits)
    beta = _finite_float(beta, "beta")
    top_k = _int(top_k, "top_k")
    if not (1 <= top_k <= V):
        raise ValueError(f"top_k: must satisfy 1 <= top_k <= V={V}, got {top_k}")
    temperature = _positive_float(temperature, "temperature")
    top_p = _top_p(top_p)
    mark = _mark_invalid(invalid)
    s, o = make_seed(generator, logits.device, seed, B)
    ids, logp_t, logp_b = _backend.op("guided_sample")(
        logits, hidden, head_weight, head_bias, weights, beta, top_k, temperature, top_p, s, o, mark
    )
    return (ids, logp_t, logp_b) if return_logprobs else ids


for _fn in (tilted_sample, guided_sample):
    if _fn.__doc__:  # None under python -OO
        _fn.__doc__ += _INVALID_DOC
