"""Hugging Face drop-in: a ``LogitsProcessor`` that makes ``model.generate`` sample MAVIS.

    enc = tok(prompts, return_tensors="pt", padding=True)            # tok.padding_side == "left"
    proc = MavisLogitsProcessor(value_models, weights=[0.7, 0.3], beta=2.0, top_k=40,
                                attention_mask=enc["attention_mask"])  # or tokenizer=tok
    model.generate(**enc, do_sample=True, top_k=0, temperature=1.0, logits_processor=[proc])

The processor returns ``-inf`` outside the base model's top-k and ``logits/T + beta * sum_i w_i V_i``
inside, so HF's sampler draws exactly from the MAVIS distribution. Pass the temperature to the
processor (keep HF's at 1.0) and HF's ``top_k`` at 0 or >= the processor's ``top_k`` (HF's
``top_p`` is fine: it applies nucleus filtering to the tilted distribution, as the engine does).

Padding. A processor only sees ``input_ids``, never the ``attention_mask`` given to ``generate``,
so it must be told which prompt positions are padding (value models must not read them as text):

* ``attention_mask=`` (constructor) or ``set_attention_mask(mask)`` before a ``generate`` call: the
  mask of the prompts being generated from, one row per prompt. It follows HF's expansion for
  ``num_return_sequences`` (each row repeated in place). It is bound to the prompts of the first
  generation it is used for; a later generation from other prompts raises until
  ``set_attention_mask`` is called with their mask.
* otherwise the padding is inferred as the leading pad ids of each row (pad id from ``pad_token_id``,
  else ``tokenizer``, else ``model``'s generation config / config). That reading is refused with a
  clear error when it is ambiguous: a padded row while the pad id is also the bos/eos/unk token
  (e.g. ``tok.pad_token = tok.eos_token``) or occurs inside a prompt, or different prompts with no
  pad id known at all.
Padding must be on the left (decoder-only generation).

``weights`` is required: one weight per objective of the value models (or one such row per prompt,
expanded like the mask for ``num_return_sequences``). ``None`` raises; for unguided sampling do not
add the processor.

A row whose logits or values are not finite raises (HF's sampler cannot skip one row); serving loops
that must drop a bad request and keep the others use ``MavisGenerator.generate(invalid="mark")``.

The value models keep their own KV caches across steps; a call whose ``input_ids`` does not extend
the previous call's by one token starts a new generation (caches rebuilt from the prompt).
"""

from __future__ import annotations

from typing import Optional

import torch

from . import ops
from ._padding import fit_mask_to_batch, infer_left_padding, pad_id_of, special_token_ids
from ._value_scoring import TrunkScorer
from .values import members_of, positions_from_mask

try:  # transformers is a hard dependency of the value models, but keep the import error clear
    from transformers import LogitsProcessor
except ImportError as e:  # pragma: no cover
    raise ImportError("mavis_ext.hf needs transformers") from e

__all__ = ["MavisLogitsProcessor"]

_HINT = ("pass attention_mask=enc['attention_mask'] to MavisLogitsProcessor (or call "
         "proc.set_attention_mask(mask) before generate)")


class MavisLogitsProcessor(LogitsProcessor):
    """See the module docstring. ``model``: the base model ``generate`` is called on (optional; its
    generation config supplies the pad / special-token ids when no tokenizer is given)."""

    def __init__(self, value_models, weights, beta: float = 1.0, top_k: int = 40, *, temperature: float = 1.0,
                 normalize_values: bool = False, pad_token_id: Optional[int] = None,
                 attention_mask: Optional[torch.Tensor] = None, tokenizer=None, model=None):
        self.members = members_of(value_models)
        if not self.members:
            raise ValueError("value_models: need at least one value model")
        self.objectives = [o for vm in self.members for o in vm.objectives]
        m = len(self.objectives)
        if weights is None:
            raise ValueError(f"weights: required, one per objective {self.objectives} (e.g. weights={[round(1 / m, 4)] * m}); "
                             "for unguided sampling do not add the processor")
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
        sources = [tokenizer]
        if model is not None:
            sources += [getattr(model, "generation_config", None), getattr(model, "config", None)]
        self.pad_token_id = int(pad_token_id) if pad_token_id is not None else pad_id_of(*sources)
        self._special_ids = special_token_ids(*sources)
        self.set_attention_mask(attention_mask)

    def set_attention_mask(self, attention_mask: Optional[torch.Tensor]) -> None:
        """Padding mask ``[B, T]`` of the prompt batch of the next generation (``None``: infer it)."""
        if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2):
            raise ValueError(f"attention_mask: expected a [batch, prompt length] tensor, got "
                             f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}")
        self._user_mask = attention_mask
        self._mask_prompts = None  # the prompt rows the mask was first applied to
        self.reset()

    def reset(self) -> None:
        """Forget the caches: the next call starts a new generation."""
        self._scorers = None
        self._last_ids = None
        self._cand_ids = None

    # ------------------------------------------------------------------ internals
    def _prompt_mask(self, input_ids):
        if self._user_mask is None:
            try:
                return infer_left_padding(input_ids, self.pad_token_id, self._special_ids, _HINT)
            except ValueError as e:
                raise ValueError(f"MavisLogitsProcessor: {e}") from None
        mask = fit_mask_to_batch(self._user_mask, input_ids, self.pad_token_id, "attention_mask")
        rows = input_ids.view(self._user_mask.shape[0], -1, input_ids.shape[1])[:, 0]  # one row per prompt
        if self._mask_prompts is None:
            self._mask_prompts = rows.clone()
        elif self._mask_prompts.shape != rows.shape or not torch.equal(self._mask_prompts, rows):
            raise ValueError("attention_mask: was given for the prompts of an earlier generate() call; call "
                             "proc.set_attention_mask(mask) with this batch's mask before each generate")
        return mask

    def _weights_for(self, N: int, dev) -> torch.Tensor:
        w = self.weights.to(dev)
        if w.dim() == 2 and w.shape[0] != N:
            if w.shape[0] == 0 or N % w.shape[0] != 0:
                raise ValueError(f"weights: {w.shape[0]} rows but generate() passed {N} rows; give one row per prompt")
            w = w.repeat_interleave(N // w.shape[0], 0)  # num_return_sequences: rows repeated in place
        return w

    def _start(self, input_ids):
        mask = self._prompt_mask(input_ids)
        self._w = self._weights_for(input_ids.shape[0], input_ids.device)
        self._scorers = [TrunkScorer(vm, "tree") for vm in self.members]
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
            self._scorers = None  # a failed start must not leave half-built caches behind
            self._start(input_ids)
        self._last_ids = input_ids
        for vm in self.members:
            if vm.vocab_size < V:
                raise ValueError(f"value_models: a value model embeds {vm.vocab_size} tokens, the scores have {V}")
        k = min(self.top_k, V)
        cand_logits, cand_ids, _ = ops.topk_candidates(scores, k, temperature=self.temperature)
        self._cand_ids = cand_ids
        comb, o = None, 0
        for sc, vm in zip(self._scorers, self.members):
            v = sc.values(cand_ids, self._next_pos, self._mask, self._w[..., o : o + vm.m])
            comb = v if comb is None else comb + v
            o += vm.m
        if self.normalize_values:
            lo, hi = comb.amin(1, keepdim=True), comb.amax(1, keepdim=True)
            comb = (comb - lo) / (hi - lo + 1e-6)
        tilted = ops.tilt_logits(cand_logits, comb.unsqueeze(1), torch.ones(1, device=dev), beta=self.beta)
        out = torch.full((B, V), float("-inf"), dtype=torch.float32, device=dev)
        out.scatter_(1, cand_ids, tilted)
        return out.to(scores.dtype) if scores.dtype != torch.float32 else out
