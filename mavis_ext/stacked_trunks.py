"""Several value trunks of the same architecture and shape run as ONE forward pass.

With one prefix-mode value model per objective (the MAVIS paper's setup), every decoding step
scores the same K candidate tokens with m trunks that differ only in their weights. Running them
one after the other pays the framework's per-layer overhead m times and issues m small GEMMs per
projection. ``StackedTrunk`` instead runs the Hugging Face forward ONCE on a batch of m * B rows
(member-major: rows ``i*B .. i*B+B-1`` belong to trunk i), where every linear layer is replaced by
one batched GEMM over the members' stacked weights (``bmm`` with ``[m, in, out]``), and every other
layer that holds weights (embeddings, norms) runs each member's own module on its slice of rows.
Attention, rotary embeddings and the KV cache hold no weights, so they run unchanged on the m * B
rows. The result equals running each trunk alone up to float rounding (tested; fp32 values agree
to ~1e-6).

``gemm_dtype=torch.bfloat16`` keeps a bf16 copy of the linear weights and runs those GEMMs in bf16
(activations cast to bf16, results back to the trunk's dtype; norms, attention and the KV cache
stay in the trunk's dtype). This is an opt-in approximation: values move by about 1% of their scale.

The stacked linear weights are a copy (one extra copy of the trunks' projection weights).
``StackedTrunk.is_current()`` notices when a member's parameters were replaced or changed in place
(``Tensor._version``), so a cached stack is rebuilt rather than run with stale weights.
A new stack runs a small self-check (prefill plus one tree-masked step, against each trunk run
alone) before it is used; an architecture whose layers do not fit this scheme fails that check and
is not stacked (``build_stack`` returns the reason).
"""

from __future__ import annotations

import copy
import json
from typing import Optional, Sequence

import torch
from torch import nn

from .values import backbone_of, cache_kwarg

__all__ = ["StackedTrunk", "build_stack", "stack_signature", "StackError"]

# config fields that do not change what a trunk computes
_VOLATILE_CONFIG = {"_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype",
                    "_commit_hash", "name_or_path"}


class StackError(RuntimeError):
    """The trunks cannot run as one stacked pass (the message says why)."""


def _config_key(cfg) -> str:
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    d = {k: v for k, v in d.items() if k not in _VOLATILE_CONFIG}
    return json.dumps(d, sort_keys=True, default=str)


def stack_signature(backbone: nn.Module) -> tuple:
    """Hashable description of everything two trunks must share to be stacked: class, config
    (up to names/paths) and the name, shape, dtype and device of every parameter."""
    params = tuple((n, tuple(p.shape), str(p.dtype), str(p.device)) for n, p in backbone.named_parameters())
    buffers = tuple((n, tuple(b.shape), str(b.dtype)) for n, b in backbone.named_buffers())
    return (type(backbone).__qualname__, _config_key(backbone.config), params, buffers)


def _is_conv1d(mod) -> bool:
    # transformers' GPT-2 style Conv1D: y = x @ weight + bias with weight [in, out]
    return type(mod).__name__ == "Conv1D" and type(mod).__module__.startswith("transformers")


class _StackedLinear(nn.Module):
    """m linear layers (``nn.Linear`` or transformers' ``Conv1D``) as one batched GEMM over rows
    grouped member-major ([m*B, ..., in] -> [m, B*..., in])."""

    def __init__(self, mods: Sequence[nn.Module], gemm_dtype: Optional[torch.dtype]):
        super().__init__()
        self.m = len(mods)
        conv = _is_conv1d(mods[0])
        with torch.no_grad():
            w = torch.stack([mod.weight.detach() for mod in mods])  # Linear: [m, out, in]; Conv1D: [m, in, out]
            if gemm_dtype is not None:
                w = w.to(gemm_dtype)
            # keep each layout as the single-trunk kernels read it: F.linear multiplies by weight.T
            self.register_buffer("w", w.contiguous(), persistent=False)
            self.transposed = not conv
            b = None
            if mods[0].bias is not None:
                b = torch.stack([mod.bias.detach() for mod in mods]).unsqueeze(1).contiguous()  # [m, 1, out]
            self.register_buffer("b", b, persistent=False)
        self.gemm_dtype = gemm_dtype
        self.out_features = w.shape[1] if self.transposed else w.shape[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n % self.m:
            raise StackError(f"a stacked linear layer got {n} rows, not a multiple of {self.m} trunks")
        x3 = x.reshape(self.m, -1, x.shape[-1])
        w = self.w.transpose(1, 2) if self.transposed else self.w
        if self.gemm_dtype is not None and self.gemm_dtype != x.dtype:
            y = torch.bmm(x3.to(self.gemm_dtype), w).to(x.dtype)
            if self.b is not None:
                y = y + self.b.to(x.dtype)
        elif self.b is not None:
            y = torch.baddbmm(self.b, x3, w)
        else:
            y = torch.bmm(x3, w)
        return y.reshape(*x.shape[:-1], self.out_features)


class _SlicedLeaf(nn.Module):
    """Any other layer with weights (embeddings, norms): member i's own module on rows
    ``i*B .. i*B+B-1`` (exactly what the trunk computes alone; these layers are cheap)."""

    def __init__(self, mods: Sequence[nn.Module]):
        super().__init__()
        # plain list, not a ModuleList: the members' modules stay owned by their trunks
        self._mods = list(mods)

    def forward(self, *args, **kwargs):
        m = len(self._mods)
        n = args[0].shape[0]
        if n % m:
            raise StackError(f"a stacked layer got {n} rows, not a multiple of {m} trunks")
        per = n // m

        def part(a, i):
            return a[i * per:(i + 1) * per] if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n else a

        outs = [mod(*[part(a, i) for a in args], **{k: part(v, i) for k, v in kwargs.items()})
                for i, mod in enumerate(self._mods)]
        if not all(isinstance(o, torch.Tensor) for o in outs):
            raise StackError(f"{type(self._mods[0]).__name__} returns {type(outs[0]).__name__}, not a tensor")
        return torch.cat(outs, 0)


class StackedTrunk:
    """m value trunks (decoder stacks of identical architecture and shape) run as one pass.

    ``forward(input_ids [B, T], attention_mask, position_ids, cache)`` feeds the same tokens to
    every trunk and returns the last hidden states ``[m, B, T, d]``; the cache (from
    ``new_cache(stack.shell)``) holds m * B rows, member-major. A 2-D ``attention_mask`` is
    ``[B, T_total]``, a 4-D one ``[B, 1, T, T_total]`` (additive); both are repeated per trunk."""

    def __init__(self, backbones: Sequence[nn.Module], gemm_dtype: Optional[torch.dtype] = None):
        backbones = list(backbones)
        if not backbones:
            raise StackError("no trunks to stack")
        sig = stack_signature(backbones[0])
        for i, bb in enumerate(backbones[1:], 1):
            if stack_signature(bb) != sig:
                raise StackError(f"trunk {i} differs from trunk 0 in class, config or parameter shapes")
        for (name, b0) in backbones[0].named_buffers():
            for bb in backbones[1:]:
                if not torch.equal(b0, bb.get_buffer(name)):
                    raise StackError(f"buffer {name!r} differs between trunks")
        self.backbones = backbones
        self.m = len(backbones)
        self.gemm_dtype = gemm_dtype
        self.dtype = next(backbones[0].parameters()).dtype
        self.shell = self._build_shell()
        self.cache_kw = cache_kwarg(self.shell)
        self._fingerprint = self.fingerprint()

    # ------------------------------------------------------------------ construction
    def _build_shell(self) -> nn.Module:
        """A copy of trunk 0's module tree without its weights (parameters on the meta device),
        whose weight-holding layers are replaced by stacked / sliced versions of all m trunks."""
        bb0 = self.backbones[0]
        memo = {id(p): nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=False)
                for p in bb0.parameters()}
        shell = copy.deepcopy(bb0, memo)
        for name, mod in list(shell.named_modules()):
            own = list(mod.named_parameters(recurse=False))
            if not own:
                continue
            if name == "":
                raise StackError(f"{type(mod).__name__} holds weights outside its layers")
            mods = [bb.get_submodule(name) for bb in self.backbones]
            if type(mod) is nn.Linear or _is_conv1d(mod):
                new = _StackedLinear(mods, self.gemm_dtype)
            elif next(mod.children(), None) is None:
                new = _SlicedLeaf(mods)
            else:
                raise StackError(f"layer {name!r} ({type(mod).__name__}) holds weights and sub-layers")
            parent_name, _, child = name.rpartition(".")
            setattr(shell.get_submodule(parent_name) if parent_name else shell, child, new)
        leftover = [n for n, p in shell.named_parameters() if p.device.type == "meta"]
        if leftover:
            raise StackError(f"weights not covered by the stacked layers: {leftover[:3]}")
        dev = next(bb0.parameters()).device
        return shell.to(dev).eval()

    def fingerprint(self) -> tuple:
        return tuple((id(p), p.data_ptr(), p._version, p.device, p.dtype)
                     for bb in self.backbones for p in bb.parameters())

    def is_current(self, backbones: Sequence[nn.Module]) -> bool:
        """True while ``backbones`` are the stacked trunks and none of their weights changed."""
        return (len(backbones) == self.m and all(a is b for a, b in zip(backbones, self.backbones))
                and self.fingerprint() == self._fingerprint)

    # ------------------------------------------------------------------ runner interface
    def new_cache(self, B: int, capacity: int):
        from ._value_scoring import new_cache

        return new_cache(self.shell)

    @staticmethod
    def commit(cache, base_len: int, n_cand: int, col: torch.Tensor) -> bool:
        from ._value_scoring import commit_candidate

        return commit_candidate(cache, base_len, n_cand, col)

    # ------------------------------------------------------------------ forward
    def repeat_rows(self, t: torch.Tensor) -> torch.Tensor:
        return t.repeat(self.m, *([1] * (t.dim() - 1)))

    @torch.no_grad()
    def forward(self, input_ids, attention_mask, position_ids, cache=None) -> torch.Tensor:
        B = input_ids.shape[0]
        kw = {self.cache_kw: cache} if cache is not None else {}
        out = self.shell(input_ids=self.repeat_rows(input_ids), attention_mask=self.repeat_rows(attention_mask),
                         position_ids=self.repeat_rows(position_ids), use_cache=cache is not None, **kw)
        h = out.last_hidden_state
        return h.view(self.m, B, *h.shape[1:])

    # ------------------------------------------------------------------ self-check
    @torch.no_grad()
    def self_check(self, vocab: int) -> None:
        """Prefill 3 tokens (one row left-padded) and one tree-masked step of 2 candidates, stacked
        and trunk by trunk; raise ``StackError`` if the hidden states disagree beyond rounding."""
        from ._value_scoring import new_cache

        dev = next(self.backbones[0].parameters()).device
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (2, 3), generator=g).to(dev)
        mask = torch.tensor([[1, 1, 1], [0, 1, 1]], device=dev)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cand = torch.randint(0, vocab, (2, 2), generator=g).to(dev)
        neg = torch.finfo(self.dtype).min
        tree = torch.zeros(2, 1, 2, 5, dtype=self.dtype, device=dev)
        tree[:, 0, :, :3] = (mask[:, None, :] == 0).to(self.dtype) * neg
        tree[:, 0, :, 3:] = torch.full((2, 2), neg, dtype=self.dtype, device=dev).fill_diagonal_(0.0)
        cpos = mask.sum(1, keepdim=True).expand(2, 2)
        try:
            cache = new_cache(self.shell)
            got = [self.forward(ids, mask, pos, cache), self.forward(cand, tree, cpos, cache)]
        except StackError:
            raise
        except Exception as e:  # noqa: BLE001 -- any failure means this architecture does not stack
            raise StackError(f"the stacked forward fails ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        kw_name = cache_kwarg(self.backbones[0])
        tol = 1e-3 if self.gemm_dtype in (None, self.dtype) and self.dtype == torch.float32 else 1e-1
        for i, bb in enumerate(self.backbones):
            c = new_cache(bb)
            want = [bb(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{kw_name: c}),
                    bb(input_ids=cand, attention_mask=tree, position_ids=cpos, use_cache=True, **{kw_name: c})]
            for a, w in zip(got, want):
                w = w.last_hidden_state.float()
                err = (a[i].float() - w).abs().max().item()
                if not err <= tol * max(1.0, w.abs().max().item()):
                    raise StackError(f"stacked hidden states differ from trunk {i} alone by {err:.3g}")


def build_stack(value_models, gemm_dtype: Optional[torch.dtype] = None, vocab: Optional[int] = None) -> StackedTrunk:
    """A checked ``StackedTrunk`` over the trunks of ``value_models`` (``ValueModel`` s). Raises
    ``StackError`` naming the reason when they cannot be stacked."""
    bbs = [backbone_of(vm.trunk) for vm in value_models]
    st = StackedTrunk(bbs, gemm_dtype)
    st.self_check(vocab if vocab is not None else min(vm.vocab_size for vm in value_models))
    return st
