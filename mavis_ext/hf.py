"""Hugging Face drop-in: a ``LogitsProcessor`` that makes ``model.generate`` sample MAVIS.

    proc = MavisLogitsProcessor(value_models, weights=[0.7, 0.3], beta=2.0, top_k=40)
    model.generate(**enc, do_sample=True, top_k=0, temperature=1.0, logits_processor=[proc])

The processor returns ``-inf`` outside the base model's top-k and ``logits/T + beta * sum_i w_i V_i``
inside, so HF's sampler draws exactly from the MAVIS distribution. Pass the temperature to the
processor (keep HF's at 1.0) and HF's ``top_k`` at 0 or >= the processor's ``top_k`` (HF's
``top_p`` is fine: it applies nucleus filtering to the tilted distribution, as the engine does).

The value models keep their own KV caches across steps; a call whose ``input_ids`` does not extend
the previous call's by one token starts a new generation (caches rebuilt from the prompt). Prompt
padding must be on the left; the padding mask is taken from ``attention_mask`` (constructor or
``set_attention_mask``) or, failing that, inferred as the leading ``pad_token_id`` s of each row.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import ops
from ._value_scoring import TrunkScorer
from .values import members_of, positions_from_mask

try:  # transformers is a hard dependency of the value models, but keep the import error clear
    from transformers import LogitsProcessor
except ImportError as e:  # pragma: no cover
    raise ImportError("mavis_ext.hf needs transformers") from e

__all__ = ["MavisLogitsProcessor"]


class MavisLogitsProcessor(LogitsProcessor):
    def __init__(self, value_models, weights, beta: float = 1.0, top_k: int = 40, *, temperature: float = 1.0,
                 normalize_values: bool = False, pad_token_id: Optional[int] = None,
                 attention_mask: Optional[torch.Tensor] = None, tokenizer=None):
        self.members = members_of(value_models)
        if not self.members:
            raise ValueError("value_models: need at least one value model")
        self.objectives = [o for vm in self.members for o in vm.objectives]
        m = len(self.objectives)
        w = torch.as_tensor(weights, dtype=torch.float32)
        if w.dim() == 1 and w.shape[0] != m:
            raise ValueError(f"weights: expected {m} weights (one per objective {self.objectives}), got {w.shape[0]}")
        if w.dim() == 2 and w.shape[1] != m:
            raise ValueError(f"weights: expected [B, {m}] (objectives {self.objectives}), got {tuple(w.shape)}")
        if w.dim() not in (1, 2):
            raise ValueError(f"weights: expected [m] or [B, m], got shape {tuple(w.shape)}")
        if not torch.isfinite(w).all():
            raise ValueError("weights: contains NaN or inf")
        self.weights = w
        beta = float(beta)
        if not (beta >= 0.0) or beta == float("inf"):
            raise ValueError(f"beta: must be a finite number >= 0, got {beta}")
        self.beta = beta
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k: must be an int >= 1, got {top_k!r}")
        self.top_k = top_k
        if not float(temperature) > 0:
            raise ValueError(f"temperature: must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.normalize_values = bool(normalize_values)
        if tokenizer is not None:
            for vm in self.members:
                vm.check_tokenizer(tokenizer, name="value_models")
            if pad_token_id is None:
                pad_token_id = tokenizer.pad_token_id
        self.pad_token_id = pad_token_id
        self._user_mask = attention_mask
        self.reset()

    def set_attention_mask(self, attention_mask: Optional[torch.Tensor]) -> None:
        """Padding mask ``[B, T]`` of the prompt batch of the next generation."""
        self._user_mask = attention_mask
        self.reset()

    def reset(self) -> None:
        """Forget the caches: the next call starts a new generation."""
        self._scorers = None
        self._last_ids = None
        self._cand_ids = None

    # ------------------------------------------------------------------ internals
    def _prompt_mask(self, input_ids):
        um = self._user_mask
        if um is not None and tuple(um.shape) == tuple(input_ids.shape):
            return (um.to(input_ids.device) != 0).long()
        if self.pad_token_id is None:
            return torch.ones_like(input_ids)
        # leading pads only (left padding); a pad id inside the text counts as a token
        return ((input_ids != self.pad_token_id).long().cumsum(1) > 0).long()

    def _start(self, input_ids):
        self._scorers = [TrunkScorer(vm, "tree") for vm in self.members]
        mask = self._prompt_mask(input_ids)
        pos = positions_from_mask(mask)
        for sc in self._scorers:
            sc.start(input_ids, mask, pos)
        self._mask = mask
        self._next_pos = mask.sum(1)

    def _is_continuation(self, input_ids) -> bool:
        last = self._last_ids
        return (last is not None and input_ids.shape[0] == last.shape[0] and input_ids.shape[1] == last.shape[1] + 1
                and bool(torch.equal(input_ids[:, :-1], last)))

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B, V = scores.shape
        dev = scores.device
        if self._scorers is not None and self._is_continuation(input_ids):
            tok = input_ids[:, -1]
            col = None
            if self._cand_ids is not None:
                match = self._cand_ids == tok[:, None]
                if bool(match.any(1).all()):
                    col = match.float().argmax(1)
            self._mask = torch.cat([self._mask, self._mask.new_ones(B, 1)], 1)
            for sc in self._scorers:
                sc.advance(tok, col, self._next_pos, self._mask)
            self._next_pos = self._next_pos + 1
        else:
            self._start(input_ids)
        self._last_ids = input_ids
        for vm in self.members:
            if vm.vocab_size < V:
                raise ValueError(f"value_models: a value model embeds {vm.vocab_size} tokens, the scores have {V}")
        k = min(self.top_k, V)
        cand_logits, cand_ids, _ = ops.topk_candidates(scores, k, temperature=self.temperature)
        self._cand_ids = cand_ids
        w = self.weights.to(dev)
        if w.dim() == 2 and w.shape[0] != B:
            raise ValueError(f"weights: {w.shape[0]} rows but the batch has {B} (num_return_sequences expands it)")
        comb, o = None, 0
        for sc, vm in zip(self._scorers, self.members):
            v = sc.values(cand_ids, self._next_pos, self._mask, w[..., o : o + vm.m])
            comb = v if comb is None else comb + v
            o += vm.m
        if self.normalize_values:
            lo, hi = comb.amin(1, keepdim=True), comb.amax(1, keepdim=True)
            comb = (comb - lo) / (hi - lo + 1e-6)
        tilted = ops.tilt_logits(cand_logits, comb.unsqueeze(1), torch.ones(1, device=dev), beta=self.beta)
        out = torch.full((B, V), float("-inf"), dtype=torch.float32, device=dev)
        out.scatter_(1, cand_ids, tilted)
        return out.to(scores.dtype) if scores.dtype != torch.float32 else out
