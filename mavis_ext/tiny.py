"""Tiny Hugging Face models and tokenizers built locally (no hub), for tests, demos and the testbed.

Everything here goes through the real loading path: models are saved with ``save_pretrained`` and
can be loaded back by path with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer``.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch


def word_tokenizer(words: Sequence[str]):
    """A whitespace word-level ``PreTrainedTokenizerFast``: ids 0..3 are <pad>, <s>, </s>, <unk>,
    then one id per word in order. ``decode`` joins words with spaces. Left padding (decoder-style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for w in words:
        if w in vocab:
            raise ValueError(f"words: duplicate or reserved word {w!r}")
        vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins tokens with single spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        padding_side="left",
    )
    return tok


def default_words(n: int) -> list[str]:
    """n distinct short words: w0, w1, ..."""
    return [f"w{i}" for i in range(n)]


def tiny_llama(
    vocab_size: int,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: Optional[int] = None,
    seed: int = 0,
    tokenizer=None,
    max_position_embeddings: int = 512,
):
    """A randomly initialised ``LlamaForCausalLM`` (fp32, eval mode). Special-token ids follow
    ``tokenizer`` when given (else pad=0, bos=1, eos=2, as ``word_tokenizer`` makes them)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=getattr(tokenizer, "pad_token_id", 0),
        bos_token_id=getattr(tokenizer, "bos_token_id", 1),
        eos_token_id=getattr(tokenizer, "eos_token_id", 2),
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model.eval()


def tiny_gpt2(vocab_size: int, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4, seed: int = 0,
              tokenizer=None, n_positions: int = 512):
    """A randomly initialised ``GPT2LMHeadModel`` (fp32, eval mode)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=num_heads,
        n_positions=n_positions,
        pad_token_id=getattr(tokenizer, "pad_token_id", 0),
        bos_token_id=getattr(tokenizer, "bos_token_id", 1),
        eos_token_id=getattr(tokenizer, "eos_token_id", 2),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
    return model.eval()


def save_local(model, tokenizer, path: str) -> str:
    """``save_pretrained`` both to ``path`` (created) and return it, to be loaded back by path."""
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
