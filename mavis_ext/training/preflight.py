"""Checks that run before any rollout: the output folder can be written, and the value trunk reads
the base model's vocabulary. Each failure is one line naming the argument, raised before anything
is written (so a bad argument is never recorded in ``run.json``)."""

from __future__ import annotations

import os
import shutil
import tempfile
import torch

__all__ = ["check_out_dir", "base_vocab_size", "check_value_trunk_vocab"]


def check_out_dir(out_dir: str, what: str = "out_dir") -> None:
    """``out_dir`` is an existing writable folder or can be created. Probes by really creating (and
    at once removing) a temporary entry: permission bits alone do not tell (root, read-only mounts)."""
    path = os.path.abspath(os.path.expanduser(os.fspath(out_dir)))
    anc = path
    while not os.path.lexists(anc):
        anc = os.path.dirname(anc)
    if not os.path.isdir(anc):
        if anc == path:
            raise ValueError(f"{what}: {out_dir!r} exists and is not a directory; give a folder path")
        raise ValueError(f"{what}: cannot create {out_dir!r}: {anc!r} is a file, not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".mavis-write-probe-", dir=anc)
    except OSError as e:
        where = f"{out_dir!r}" if anc == path else f"{out_dir!r} (in {anc!r})"
        raise ValueError(f"{what}: cannot write to {where}: {e.strerror or e}; choose a writable folder") from None
    shutil.rmtree(probe, ignore_errors=True)


def base_vocab_size(model) -> int:
    """How many token ids the base model can emit (the width of its logits)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and getattr(out, "out_features", None) is not None:
        return int(out.out_features)
    if out is not None and getattr(out, "weight", None) is not None:
        return int(out.weight.shape[0])
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(cfg.vocab_size)


def _trunk_vocab_and_tokenizer(value_trunk):
    """(vocab size, tokenizer or None) of a trunk path/id or model object, without loading weights."""
    if isinstance(value_trunk, torch.nn.Module):
        emb = value_trunk.get_input_embeddings() if hasattr(value_trunk, "get_input_embeddings") else None
        if emb is None:
            raise TypeError(f"value_trunk: {type(value_trunk).__name__} has no input embeddings")
        return int(emb.num_embeddings), None
    from transformers import AutoConfig

    from ..values import _maybe_tokenizer

    src = os.fspath(value_trunk)
    try:
        cfg = AutoConfig.from_pretrained(src)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"value_trunk: cannot load {src!r}: {type(e).__name__}: {' '.join(str(e).split())[:300]}") from e
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return int(text.vocab_size), _maybe_tokenizer(src)


def check_value_trunk_vocab(value_trunk, base_model, tokenizer, what: str = "value_trunk") -> None:
    """The trunk must embed every id the base model emits (``trunk vocab >= base vocab``), and give
    each the same meaning: when the trunk has its own tokenizer, its token -> id map must be the base
    tokenizer's; when it has none, the sizes must be equal (a larger trunk without a tokenizer is a
    different vocabulary as far as anyone can tell)."""
    if value_trunk is None:
        return
    from ..values import tokenizer_fingerprint

    v_trunk, trunk_tok = _trunk_vocab_and_tokenizer(value_trunk)
    v_base = base_vocab_size(base_model)
    if v_trunk < v_base:
        raise ValueError(f"{what}: the trunk embeds {v_trunk} tokens but the base model emits {v_base}; use a trunk "
                         "built on the base model's tokenizer (or omit it to copy the base model)")
    if trunk_tok is not None:
        mine, theirs = tokenizer_fingerprint(trunk_tok), tokenizer_fingerprint(tokenizer)
        if theirs is not None and mine["sha256"] != theirs["sha256"]:
            raise ValueError(f"{what}: the trunk's tokenizer ({mine['size']} tokens, trunk vocab {v_trunk}) differs from "
                             f"the base tokenizer ({theirs['size']} tokens, base vocab {v_base}); value models must "
                             "read the base model's token ids")
    elif v_trunk != v_base:
        raise ValueError(f"{what}: the trunk's vocabulary has {v_trunk} tokens, the base model's {v_base}; a trunk with "
                         "a different vocabulary size is only accepted with tokenizer files showing it is the base "
                         "tokenizer (save the base tokenizer into the trunk folder if it is)")

