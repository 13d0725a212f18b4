"""Which prompt positions are padding, for the Hugging Face drop-in (``hf.py``). (The engine in
``decoding.py`` pads text prompts itself and takes ``input_ids`` with their ``attention_mask``.)

Why this exists: value models must never read padding as text, or they score every candidate of a
padded row from a different prefix and the sampled distribution is silently wrong. A
``LogitsProcessor`` only ever sees ``input_ids`` (Hugging Face keeps ``attention_mask`` to itself and
expands the batch for ``num_return_sequences``), so the padding is either given as a mask that must
be checked against the batch it is applied to, or inferred from the pad id, which is only safe when
the pad id cannot also be a real token of a prompt. Every case either gives the right mask or raises
a one-line error that says what to pass.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

__all__ = ["special_token_ids", "pad_id_of", "infer_left_padding", "fit_mask_to_batch", "check_left_padded"]


def _ids(value) -> list:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(x) for x in value.flatten().tolist()]
    if isinstance(value, (list, tuple, set)):
        return [int(x) for x in value if x is not None]
    return [int(value)]


def special_token_ids(*sources) -> set:
    """bos/eos/unk ids of tokenizers, generation configs or model configs (``None`` skipped): tokens
    that also occur as real text, so a pad id equal to one of them cannot mark padding by itself."""
    out = set()
    for src in sources:
        if src is None:
            continue
        for name in ("bos_token_id", "eos_token_id", "unk_token_id"):
            out.update(_ids(getattr(src, name, None)))
    return out


def pad_id_of(*sources) -> Optional[int]:
    """The first pad id found on ``sources`` (tokenizer, generation config, model config), or None."""
    for src in sources:
        ids = _ids(getattr(src, "pad_token_id", None)) if src is not None else []
        if ids:
            return ids[0]
    return None


def check_left_padded(mask: torch.Tensor, what: str) -> None:
    """Every row: zeros (padding) then ones (tokens), at least one token."""
    if (mask.sum(1) == 0).any():
        b = int((mask.sum(1) == 0).nonzero()[0])
        raise ValueError(f"{what}: row {b} has no tokens (empty prompt)")
    if (mask[:, 1:] < mask[:, :-1]).any():
        b = int((mask[:, 1:] < mask[:, :-1]).any(1).nonzero()[0])
        raise ValueError(f"{what}: row {b} is not left-padded (padding must come before the prompt: "
                         "use tokenizer.padding_side = 'left' for decoder-only generation)")


def infer_left_padding(input_ids: torch.Tensor, pad_token_id: Optional[int], special_ids: Iterable[int],
                       hint: str) -> torch.Tensor:
    """The padding mask ``[B, T]`` (1 = token) of a left-padded batch with no mask given.

    Leading ``pad_token_id`` s of a row are padding. Raises when that reading is not safe: the pad id
    is unknown and the rows are not all the same, or some row starts with the pad id while the pad id
    is also a real token (bos/eos/unk, or it occurs inside a prompt). ``hint`` says what to pass.
    """
    B, T = input_ids.shape
    if pad_token_id is None:
        if B > 1 and not bool((input_ids == input_ids[:1]).all()):
            raise ValueError("padding is unknown: the batch holds different prompts but no pad id is known (give "
                             f"tokenizer=, pad_token_id= or model=); or {hint}")
        return torch.ones_like(input_ids)
    is_pad = input_ids == int(pad_token_id)
    leading = is_pad.long().cumprod(1).bool()  # the run of pad ids at the start of each row
    if not bool(leading[:, 0].any()):
        return torch.ones_like(input_ids)  # no row starts with the pad id: nothing is padded
    if bool(leading.all(1).any()):
        b = int(leading.all(1).nonzero()[0])
        raise ValueError(f"row {b} holds only pad ids ({int(pad_token_id)}): empty prompt, or the pad id is a "
                         f"real token here; {hint}")
    if int(pad_token_id) in set(int(i) for i in special_ids):
        raise ValueError(f"padding is ambiguous: the pad id {int(pad_token_id)} is also the bos/eos/unk token, so a "
                         f"leading {int(pad_token_id)} may be text; {hint}")
    if bool((is_pad & ~leading).any()):
        raise ValueError(f"padding is ambiguous: the pad id {int(pad_token_id)} also occurs inside a prompt, so "
                         f"leading ones may be text; {hint}")
    return (~leading).long()


def fit_mask_to_batch(mask: torch.Tensor, input_ids: torch.Tensor, pad_token_id: Optional[int], what: str) -> torch.Tensor:
    """A given padding mask ``[B, T]`` fitted to the batch ``input_ids [N, T]`` it is applied to.

    ``N = B * n`` with ``n > 1`` is Hugging Face's expansion for ``num_return_sequences`` (each prompt
    row repeated n times in place, ``repeat_interleave``); the mask is expanded the same way after
    checking that the rows really are repeated so. A mask that cannot belong to ``input_ids`` (other
    length, other batch, or a position it marks as padding that does not hold the pad id) raises:
    it was given for another batch.
    """
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise ValueError(f"{what}: expected a [batch, prompt length] tensor, got {getattr(mask, 'shape', type(mask))}")
    B, T = mask.shape
    N, L = input_ids.shape
    if T != L or B == 0 or N % B != 0:
        raise ValueError(f"{what}: shape {tuple(mask.shape)} does not fit the prompt batch {tuple(input_ids.shape)} "
                         "that generate() passed: give the attention_mask of the very prompts being generated from")
    mask = (mask.to(input_ids.device) != 0).long()
    n = N // B
    if n > 1:
        groups = input_ids.view(B, n, T)
        if not bool((groups == groups[:, :1]).all()):
            raise ValueError(f"{what}: {B} mask rows for {N} prompt rows, but the rows are not {n} copies of each "
                             "prompt in turn (num_return_sequences): give a mask with one row per prompt row")
        mask = mask.repeat_interleave(n, 0)
    check_left_padded(mask, what)
    if pad_token_id is not None and bool(((mask == 0) & (input_ids != int(pad_token_id))).any()):
        raise ValueError(f"{what}: marks as padding a position that does not hold the pad id {int(pad_token_id)}: "
                         "the mask belongs to another batch (call set_attention_mask before each generate)")
    return mask
