"""A lean decoding forward for Llama-family models (Llama, Qwen2 without sliding windows), used
by ``MavisGenerator(..., lean_forward=True)`` for the base model and for prefix-mode value trunks.

Small models on CPU spend much of a decoding step in framework code (module calls, mask building,
a ``torch.cat`` of the whole KV cache per layer per step) rather than in arithmetic. This forward
computes the same function with:

* fused projections: q|k|v in one GEMM and gate|up in one GEMM (weights concatenated once);
* m models of one shape at once (``bmm`` over stacked weights, rows member-major), like
  ``stacked_trunks``; m = 1 for the base model;
* preallocated KV buffers written in place (``LeanCache``), with the tree-scoring commit (keep one
  of the K candidate slots) as a copy of one slot;
* the models' own rotary-embedding module for cos/sin (every RoPE scaling variant) and their own
  LM head for the last position's logits.

It runs only where ``unsupported_reason`` finds nothing outside that scope; everything else keeps
the Hugging Face forward. Tested against the Hugging Face forward (hidden states within float
rounding, and the engine samples the same tokens). Opt-in: the fused weights are a copy.
``gemm_dtype=torch.bfloat16`` runs the projection GEMMs in bf16, as in ``stacked_trunks``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LeanLlama", "LeanCache", "unsupported_reason"]

_TYPES = {"LlamaModel", "Qwen2Model"}


def unsupported_reason(backbone: nn.Module) -> Optional[str]:
    """None when ``backbone`` (a decoder stack) is inside this forward's scope, else why not."""
    name = type(backbone).__name__
    if name not in _TYPES:
        return f"{name} is not one of {sorted(_TYPES)}"
    cfg = backbone.config
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    if getattr(cfg, "mlp_bias", False):
        return "mlp_bias"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp != 1"
    if name == "Qwen2Model" and getattr(cfg, "use_sliding_window", False):
        return "sliding-window attention"
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return "layers other than full attention"
    if not hasattr(backbone, "rotary_emb") or not hasattr(backbone, "layers") or not hasattr(backbone, "norm"):
        return "no model-level rotary embedding (transformers too old)"
    for lyr in backbone.layers:
        a = lyr.self_attn
        if not all(type(getattr(a, p, None)) is nn.Linear for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return "attention projections are not plain nn.Linear (adapters?)"
        if not all(type(getattr(lyr.mlp, p, None)) is nn.Linear for p in ("gate_proj", "up_proj", "down_proj")):
            return "MLP projections are not plain nn.Linear (adapters?)"
    return None


class LeanCache:
    """Preallocated keys/values ``[layers][rows, kv_heads, capacity, head_dim]`` and the number of
    slots in use (the same for every row: rows are left-padded)."""

    def __init__(self, layers: int, rows: int, kv_heads: int, head_dim: int, capacity: int, dtype, device):
        self.shape = (rows, kv_heads, max(1, capacity), head_dim)
        self.k = [torch.empty(self.shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.empty(self.shape, dtype=dtype, device=device) for _ in range(layers)]
        self.length = 0

    def reserve(self, n: int) -> None:
        cap = self.shape[2]
        if n <= cap:
            return
        new = max(n, 2 * cap)
        for buf in (self.k, self.v):
            for i, t in enumerate(buf):
                grown = t.new_empty(t.shape[0], t.shape[1], new, t.shape[3])
                grown[:, :, : self.length] = t[:, :, : self.length]
                buf[i] = grown
        self.shape = (self.shape[0], self.shape[1], new, self.shape[3])

    def get_seq_length(self) -> int:
        return self.length

    def commit(self, base_len: int, n_cand: int, col: torch.Tensor) -> None:
        """Keep candidate slot ``base_len + col[r]`` of each row at ``base_len``; drop the rest."""
        if self.length != base_len + n_cand:
            raise RuntimeError(f"lean cache: expected {base_len + n_cand} slots, found {self.length}")
        rows = torch.arange(col.shape[0], device=col.device)
        src = base_len + col
        for buf in (self.k, self.v):
            for t in buf:
                t[:, :, base_len] = t[rows, :, src]
        self.length = base_len + 1

    def crop(self, n: int) -> None:
        self.length = n if n >= 0 else self.length + n


class LeanLlama:
    """m Llama-family decoder stacks of one shape (m >= 1) as one lean forward (module docstring).
    ``forward`` returns the final hidden states ``[m, B, T, d]``; ``logits_last`` (m = 1, with
    ``lm_head``) the last position's logits ``[B, V]``."""

    def __init__(self, backbones: Sequence[nn.Module], lm_head: Optional[nn.Module] = None,
                 gemm_dtype: Optional[torch.dtype] = None):
        backbones = list(backbones)
        for bb in backbones:
            why = unsupported_reason(bb)
            if why is not None:
                raise ValueError(f"lean_forward: {why}")
        from .stacked_trunks import stack_signature

        if any(stack_signature(bb) != stack_signature(backbones[0]) for bb in backbones[1:]):
            raise ValueError("lean_forward: the models differ in class, config or shapes")
        bb0 = backbones[0]
        cfg = bb0.config
        self.backbones, self.m, self.lm_head = backbones, len(backbones), lm_head
        self.H = cfg.num_attention_heads
        self.KV = getattr(cfg, "num_key_value_heads", None) or self.H
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.d = cfg.hidden_size
        self.eps = bb0.norm.variance_epsilon
        self.rotary = bb0.rotary_emb
        p = next(bb0.parameters())
        self.dtype, self.device = p.dtype, p.device
        self.scale = getattr(bb0.layers[0].self_attn, "scaling", self.hd ** -0.5)
        self.gemm_dtype = gemm_dtype if gemm_dtype not in (None, self.dtype) else None
        gd = self.gemm_dtype or self.dtype
        st = lambda ts: torch.stack([t.detach() for t in ts]).contiguous()  # noqa: E731
        sg = lambda ts: st(ts).to(gd)  # noqa: E731 -- GEMM weights (bf16 with gemm_dtype)
        with torch.no_grad():
            self.embed = [bb.embed_tokens.weight for bb in backbones]
            self.layers = []
            for i in range(len(bb0.layers)):
                ls = [bb.layers[i] for bb in backbones]
                a = [lyr.self_attn for lyr in ls]
                qkv = sg([torch.cat([x.q_proj.weight, x.k_proj.weight, x.v_proj.weight]) for x in a])
                qkv_b = None
                if a[0].q_proj.bias is not None:
                    qkv_b = st([torch.cat([x.q_proj.bias, x.k_proj.bias, x.v_proj.bias]) for x in a]).unsqueeze(1)
                o_b = st([x.o_proj.bias for x in a]).unsqueeze(1) if a[0].o_proj.bias is not None else None
                self.layers.append(dict(
                    ln1=st([lyr.input_layernorm.weight for lyr in ls]).unsqueeze(1),
                    ln2=st([lyr.post_attention_layernorm.weight for lyr in ls]).unsqueeze(1),
                    qkv=qkv, qkv_b=qkv_b, o=sg([x.o_proj.weight for x in a]), o_b=o_b,
                    gu=sg([torch.cat([lyr.mlp.gate_proj.weight, lyr.mlp.up_proj.weight]) for lyr in ls]),
                    down=sg([lyr.mlp.down_proj.weight for lyr in ls])))
            self.norm = st([bb.norm.weight for bb in backbones]).unsqueeze(1)
        self._fingerprint = self.fingerprint()

    # ------------------------------------------------------------------ bookkeeping
    def fingerprint(self) -> tuple:
        mods = list(self.backbones) + ([self.lm_head] if self.lm_head is not None else [])
        return tuple((id(p), p.data_ptr(), p._version) for mod in mods for p in mod.parameters())

    def is_current(self, backbones, lm_head=None) -> bool:
        return (len(backbones) == self.m and all(a is b for a, b in zip(backbones, self.backbones))
                and lm_head is self.lm_head and self.fingerprint() == self._fingerprint)

    def new_cache(self, B: int, capacity: int) -> LeanCache:
        return LeanCache(len(self.layers), self.m * B, self.KV, self.hd, capacity, self.dtype, self.device)

    @staticmethod
    def commit(cache: LeanCache, base_len: int, n_cand: int, col: torch.Tensor) -> bool:
        cache.commit(base_len, n_cand, col)
        return True

    # ------------------------------------------------------------------ forward
    def _rms(self, x, w):
        xf = x.to(torch.float32)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

    def _lin(self, x, w, b=None):
        if self.gemm_dtype is not None:
            y = torch.bmm(x.to(self.gemm_dtype), w.transpose(1, 2)).to(x.dtype)
        else:
            y = torch.bmm(x, w.transpose(1, 2))
        return y if b is None else y + b

    def _mask(self, attention_mask, B, T, L):
        """Additive mask ``[m*B, 1, T, L + T]``: a 2-D padding mask ``[B, L + T]`` gives causal
        attention over the real tokens; a 4-D additive mask ``[B, 1, T, L + T]`` is used as is."""
        if attention_mask.dim() == 4:
            mask = attention_mask.to(self.dtype)
        else:
            neg = torch.finfo(self.dtype).min
            j = torch.arange(L + T, device=attention_mask.device)
            i = torch.arange(T, device=attention_mask.device)
            ok = (attention_mask[:, None, None, :] != 0) & (j[None, None, None, :] <= L + i[None, None, :, None])
            mask = torch.zeros(ok.shape, dtype=self.dtype, device=ok.device).masked_fill_(~ok, neg)
        return mask.repeat(self.m, 1, 1, 1) if self.m > 1 else mask

    @torch.no_grad()
    def forward(self, input_ids, attention_mask, position_ids, cache: LeanCache) -> torch.Tensor:
        B, T = input_ids.shape
        m, H, KV, hd = self.m, self.H, self.KV, self.hd
        L = cache.length
        cache.reserve(L + T)
        x = torch.stack([F.embedding(input_ids, e) for e in self.embed]).view(m, B * T, self.d)
        cos, sin = self.rotary(x, position_ids)  # [B, T, hd]
        cos, sin = cos[:, None].repeat(m, 1, 1, 1), sin[:, None].repeat(m, 1, 1, 1)  # [m*B, 1, T, hd]
        mask = self._mask(attention_mask, B, T, L)
        gqa = H != KV
        for li, w in enumerate(self.layers):
            h = self._rms(x, w["ln1"])
            qkv = self._lin(h, w["qkv"], w["qkv_b"]).view(m * B, T, H + 2 * KV, hd).transpose(1, 2)
            q, k, v = qkv[:, :H], qkv[:, H:H + KV], qkv[:, H + KV:]
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kb, vb = cache.k[li], cache.v[li]
            kb[:, :, L:L + T] = k
            vb[:, :, L:L + T] = v
            att = F.scaled_dot_product_attention(q, kb[:, :, :L + T], vb[:, :, :L + T], attn_mask=mask,
                                                 scale=self.scale, enable_gqa=gqa)
            att = att.transpose(1, 2).reshape(m, B * T, H * hd)
            x = x + self._lin(att, w["o"], w["o_b"])
            h = self._rms(x, w["ln2"])
            gate, up = self._lin(h, w["gu"]).chunk(2, dim=-1)
            x = x + self._lin(F.silu(gate) * up, w["down"])
        cache.length = L + T
        return self._rms(x, self.norm).view(m, B, T, self.d)

    @torch.no_grad()
    def logits_last(self, input_ids, attention_mask, position_ids, cache: LeanCache) -> torch.Tensor:
        h = self.forward(input_ids, attention_mask, position_ids, cache)[0, :, -1]
        return self.lm_head(h)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
