"""KV-cached candidate scoring for one value model during decoding (used by ``decoding.py`` and
``hf.py``).

``TrunkScorer`` owns a value trunk's KV cache for one batch and turns the base model's K candidate
tokens of a step into values:

* prefix mode, ``scoring="tree"`` (default): the K candidates go through the trunk in ONE forward
  pass of K extra tokens with a tree attention mask: candidate j sees the cached prefix and itself,
  all K at the same position id. After sampling, the chosen candidate's keys/values (computed
  exactly as if it had been appended on its own) are moved to the first new slot and the cache is
  trimmed back, so the trunk never runs a separate step for the chosen token.
* prefix mode, ``scoring="copies"``: the scheme of the MAVIS authors' ``ValueGeneratorWithCache``,
  kept as a baseline: K copies of the sequence (cache batch B*K); each step feeds (previous chosen
  token, candidate) and drops the candidate afterwards.
* qhead mode: the trunk consumes one token per step (like the base model); the K candidates are
  scored by gathering K rows of the Q heads.

``StackedScorer`` does the "tree" steps for several prefix-mode value models at once, their trunks
run as one pass of a ``StackedTrunk`` (``stacked_trunks.py``) or a ``LeanLlama`` (``lean_llama.py``).
"""

from __future__ import annotations

from typing import Optional

import torch

from .values import ValueModel

__all__ = ["TrunkScorer", "StackedScorer", "new_cache", "commit_candidate", "tree_mask", "check_cache_support"]


def new_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


def check_cache_support(model, what: str) -> None:
    """Raise a one-line ``ValueError`` naming ``what`` when ``model`` cannot take a KV-cache object
    (``DynamicCache``): transformers before 4.52 marks GPT-2 style models so, and they would fail
    deep inside their forward."""
    if getattr(model, "_supports_cache_class", True) is False:
        import transformers

        raise ValueError(f"{what}: {type(model).__name__} does not take a KV-cache object in transformers "
                         f"{transformers.__version__}, which decoding needs; upgrade transformers (GPT-2 style "
                         "models take one from 4.52 on)")


def commit_candidate(cache, base_len: int, n_cand: int, col: torch.Tensor) -> bool:
    """Keep candidate ``col[b]`` of the ``n_cand`` slots appended after ``base_len`` cached tokens:
    its keys/values move to slot ``base_len`` and the cache is cut to ``base_len + 1``. Works on the
    dynamic caches of every supported transformers version: per-layer ``DynamicLayer`` objects
    (>= 4.54) and the ``key_cache`` / ``value_cache`` lists of a ``DynamicCache`` (4.45 - 4.53).
    Returns False (cache untouched) for any other cache, so the caller can fall back."""
    rows = torch.arange(col.shape[0], device=col.device)
    src = base_len + col

    def moved(t):
        if t.shape[-2] != base_len + n_cand:
            raise RuntimeError(f"value cache: expected {base_len + n_cand} slots, found {t.shape[-2]}")
        t[:, :, base_len] = t[rows, :, src]
        return t[:, :, : base_len + 1]

    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            if type(layer).__name__ != "DynamicLayer" or getattr(layer, "keys", None) is None:
                return False
        for layer in layers:
            layer.keys = moved(layer.keys)
            layer.values = moved(layer.values)
        return True
    keys, values = getattr(cache, "key_cache", None), getattr(cache, "value_cache", None)
    if type(cache).__name__ != "DynamicCache" or not isinstance(keys, list) or not isinstance(values, list):
        return False
    if not keys or any(not isinstance(t, torch.Tensor) for t in keys + values):
        return False
    for i in range(len(keys)):
        keys[i] = moved(keys[i])
        values[i] = moved(values[i])
    if hasattr(cache, "_seen_tokens"):
        cache._seen_tokens = base_len + 1
    return True


def _warn_slow_commit(cache) -> None:
    import warnings

    warnings.warn(f"value cache of type {type(cache).__name__} cannot keep the chosen candidate in place: every step "
                  "runs one extra value-trunk forward for it (same results, slower)", RuntimeWarning, stacklevel=3)


def tree_mask(attention_mask: torch.Tensor, K: int, eye: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask ``[B, 1, K, L + K]`` for K candidates scored after the cached prefix: the row's
    padding over the prefix, ``eye`` (0 on the diagonal, the dtype's min elsewhere) over the
    candidates, so each candidate sees the prefix and itself only."""
    B, L = attention_mask.shape
    mask = attention_mask.new_zeros((B, 1, K, L + K), dtype=dtype)
    mask[:, 0, :, :L] = (attention_mask[:, None, :] == 0).to(dtype) * torch.finfo(dtype).min
    mask[:, 0, :, L:] = eye
    return mask


class TrunkScorer:
    """Scoring state of one ``ValueModel`` for one batch of B rows (see module docstring)."""

    def __init__(self, vm: ValueModel, scoring: str = "tree", vocab_limit: Optional[int] = None, *,
                 runner=None, capacity: int = 0):
        """``runner``: a one-model ``LeanLlama`` that runs a Q-head trunk instead of its Hugging Face
        forward (``capacity``: tokens its cache will hold)."""
        if scoring not in ("tree", "copies"):
            raise ValueError(f'scoring: must be "tree" or "copies", got {scoring!r}')
        if runner is not None and vm.mode != "qhead":
            raise ValueError("runner: only for Q-head value models (prefix mode uses StackedScorer)")
        self.runner, self.capacity = runner, capacity
        check_cache_support(vm.trunk, "value_models")
        self.vm = vm
        self.mode = vm.mode
        self.scoring = scoring
        self.cache = None
        self.hidden = None  # qhead: trunk state of the current prefix, [B, d]
        self.pending = 0  # prefix/tree: candidate slots appended and not yet committed
        self.dtype = next(vm.trunk.parameters()).dtype
        self.neg = torch.finfo(self.dtype).min
        self._eye_add = None
        self._warned = False
        # Q heads restricted to the base model's vocabulary (guided_sample needs V equal to logits').
        w, b = vm.head_weight.detach(), vm.head_bias.detach()
        if vm.mode == "qhead" and vocab_limit is not None and vocab_limit != w.shape[1]:
            w, b = w[:, :vocab_limit].contiguous(), b[:, :vocab_limit].contiguous()
        self.head_weight, self.head_bias = w, b

    # ------------------------------------------------------------------ start
    @torch.no_grad()
    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> None:
        """Prefill with the (left-padded) prompt."""
        self.B = input_ids.shape[0]
        self.cache = new_cache(self.vm.trunk) if self.runner is None else \
            self.runner.new_cache(self.B, max(self.capacity, input_ids.shape[1]))
        self.pending = 0
        self.prev_token = None
        if self.mode == "prefix" and self.scoring == "copies":
            self._K = None
            self._prompt = (input_ids, attention_mask, position_ids)
            return  # K is known at the first step
        h = self._trunk(input_ids, attention_mask, position_ids)
        if self.mode == "qhead":
            self.hidden = h[:, -1]

    # ------------------------------------------------------------------ score
    @torch.no_grad()
    def values(self, cand_ids: torch.Tensor, next_pos: torch.Tensor, attention_mask: torch.Tensor,
               weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Values of the K candidates ``cand_ids [B, K]``: ``[B, m, K]`` fp32, or ``[B, K]`` combined
        with ``weights`` ([m] / [B, m]). ``next_pos [B]``: position id of the next token;
        ``attention_mask [B, L]``: padding mask of the tokens already in the sequence."""
        if self.mode == "qhead":
            return _heads(self.hidden, self.head_weight, self.head_bias, cand_ids, weights)
        B, K = cand_ids.shape
        if self.scoring == "copies":
            h = self._copies_forward(cand_ids, next_pos, attention_mask)
        else:
            mask = tree_mask(attention_mask, K, self._eye(K, cand_ids.device), self.dtype)
            pos = next_pos[:, None].expand(B, K)
            h = self.vm.backbone_forward(cand_ids, mask, pos, self.cache)
            self.pending = K
        return _heads(h, self.head_weight, self.head_bias, None, weights)

    def _trunk(self, ids, mask, pos):
        if self.runner is not None:
            return self.runner.forward(ids, mask, pos, self.cache)[0]
        return self.vm.backbone_forward(ids, mask, pos, self.cache)

    def _eye(self, K: int, device) -> torch.Tensor:
        if self._eye_add is None or self._eye_add.shape[0] != K or self._eye_add.device != device:
            e = torch.full((K, K), self.neg, dtype=self.dtype, device=device)
            e.fill_diagonal_(0.0)
            self._eye_add = e
        return self._eye_add

    def _copies_forward(self, cand_ids, next_pos, attention_mask):
        B, K = cand_ids.shape
        flat = cand_ids.reshape(B * K, 1)
        if self._K is None:  # first step: prefill K copies of the prompt
            self._K = K
            ids, am, pos = self._prompt
            self._prompt = None
            self.vm.backbone_forward(ids.repeat_interleave(K, 0), am.repeat_interleave(K, 0),
                                     pos.repeat_interleave(K, 0), self.cache)
        am = attention_mask.repeat_interleave(K, 0)
        p = next_pos.repeat_interleave(K, 0)[:, None]
        if self.prev_token is None:
            h = self.vm.backbone_forward(flat, torch.cat([am, am.new_ones(B * K, 1)], 1), p, self.cache)
        else:  # (previous chosen token, candidate): 2 tokens per copy, then drop the candidate
            prev = self.prev_token.repeat_interleave(K, 0)[:, None]
            h = self.vm.backbone_forward(torch.cat([prev, flat], 1), torch.cat([am, am.new_ones(B * K, 1)], 1),
                                         torch.cat([p - 1, p], 1), self.cache)
            h = h[:, -1:]
        self.cache.crop(-1)  # transformers >= 5: a negative count of tokens to remove
        return h.reshape(B, K, -1)

    # ------------------------------------------------------------------ advance
    @torch.no_grad()
    def advance(self, token: torch.Tensor, col: Optional[torch.Tensor], pos: torch.Tensor,
                attention_mask: torch.Tensor) -> None:
        """Append the chosen ``token [B]`` (candidate column ``col [B]`` of the last ``values`` call
        if known). ``pos [B]``: its position id; ``attention_mask [B, L + 1]`` includes it."""
        if self.mode == "prefix" and self.scoring == "copies":
            if self._K is None:  # no scoring yet (cannot happen in the engine): plain prompt growth
                ids, am, p = self._prompt
                self._prompt = (torch.cat([ids, token[:, None]], 1), attention_mask, torch.cat([p, pos[:, None]], 1))
            self.prev_token = token
            return
        if self.mode == "prefix" and self.pending:
            L = attention_mask.shape[1] - 1
            if col is not None and commit_candidate(self.cache, L, self.pending, col):
                self.pending = 0
                return
            if col is not None and not self._warned:
                self._warned = True
                _warn_slow_commit(self.cache)
            self.cache.crop(-self.pending)  # generic fallback: drop the candidates, run the token normally
            self.pending = 0
        h = self._trunk(token[:, None], attention_mask, pos[:, None])
        if self.mode == "qhead":
            self.hidden = h[:, -1]


class StackedScorer:
    """Tree-mask scoring state of prefix-mode ``ValueModel`` s whose trunks run as one pass of a
    runner: a ``StackedTrunk`` (``mavis_ext.stacked_trunks``) or a ``LeanLlama``
    (``mavis_ext.lean_llama``). The same steps as ``TrunkScorer`` in "tree" mode, on one cache of
    m * B rows. ``member_values`` returns one ``[B, K]`` (weighted) or ``[B, m_i, K]`` tensor per
    value model, in the order given. ``capacity``: tokens the cache will hold (a hint)."""

    mode = "prefix"
    scoring = "tree"

    def __init__(self, vms, stack, capacity: int = 0):
        self.vms = list(vms)
        self.stack = stack
        self.capacity = capacity
        self.cache = None
        self.pending = 0
        self.dtype = stack.dtype
        self._eye_add = None
        self._warned = False
        self.heads = [(vm.head_weight.detach(), vm.head_bias.detach()) for vm in self.vms]

    @torch.no_grad()
    def start(self, input_ids, attention_mask, position_ids) -> None:
        self.B = input_ids.shape[0]
        self.cache = self.stack.new_cache(self.B, max(self.capacity, input_ids.shape[1]))
        self.pending = 0
        self.stack.forward(input_ids, attention_mask, position_ids, self.cache)

    @torch.no_grad()
    def member_values(self, cand_ids, next_pos, attention_mask, weights=None) -> list:
        """``weights``: None or one weight tensor per value model (``[m_i]`` / ``[B, m_i]``)."""
        B, K = cand_ids.shape
        mask = tree_mask(attention_mask, K, self._eye(K, cand_ids.device), self.dtype)
        h = self.stack.forward(cand_ids, mask, next_pos[:, None].expand(B, K), self.cache)  # [m, B, K, d]
        self.pending = K
        ws = weights if weights is not None else [None] * len(self.vms)
        return [_heads(h[i], w, b, None, wi) for i, ((w, b), wi) in enumerate(zip(self.heads, ws))]

    def _eye(self, K, device):
        if self._eye_add is None or self._eye_add.shape[0] != K or self._eye_add.device != device:
            self._eye_add = torch.full((K, K), torch.finfo(self.dtype).min, dtype=self.dtype,
                                       device=device).fill_diagonal_(0.0)
        return self._eye_add

    @torch.no_grad()
    def advance(self, token, col, pos, attention_mask) -> None:
        if self.pending:
            L = attention_mask.shape[1] - 1
            if col is not None and self.stack.commit(self.cache, L, self.pending, col.repeat(self.stack.m)):
                self.pending = 0
                return
            if col is not None and not self._warned:
                self._warned = True
                _warn_slow_commit(self.cache)
            self.cache.crop(-self.pending)
            self.pending = 0
        self.stack.forward(token[:, None], attention_mask, pos[:, None], self.cache)


def _heads(hidden, w, b, cand_ids, weights):
    from . import ops

    hidden = hidden.to(w.dtype)
    if cand_ids is None:
        return ops.value_heads(hidden, w, b, weights=weights)
    return ops.value_heads(hidden, w, b, candidate_ids=cand_ids, weights=weights)
