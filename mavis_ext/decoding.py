"""Guided decoding engine: a Hugging Face base model steered by value models.

Each step: one cached base-model forward -> ``topk_candidates`` -> values of the K candidates from
every value model (``value_heads``) -> ``tilted_sample``; or the fused ``guided_sample`` when the
only value model is a Q-head model. Batches are left-padded; every row has its own weight vector,
its own random stream, its own token budget and stops at its own EOS.

Randomness: row b of a request draws from a stream keyed only by its row seed (``row_seeds[b]``,
derived from ``seed`` and b, or given explicitly as a list) and the step number, so
``generate(prompts, seed=s)`` row b equals ``generate([prompts[b]], seed=[out.row_seeds[b]])``.
The same independence lets ``generate(invalid="mark")`` stop one row whose logits or values are not
finite (``out.valid[b]`` False) while every other row samples exactly what it would alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch

from . import ops
from . import pruning
from ._scorer_plan import plan_scorers, resolve_gemm_dtype
from ._value_scoring import StackedScorer, check_cache_support, new_cache
from .lean_llama import LeanCache
from .model_paths import check_model_source
from .values import ValueEnsemble, ValueModel, cache_kwarg, members_of, positions_from_mask

__all__ = ["GenerationOutput", "MavisGenerator", "row_seeds_from", "step_seeds"]

_MASK62 = (1 << 62) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64(x: int) -> int:
    x = (x + _GOLDEN) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def row_seeds_from(seed, B: int) -> torch.Tensor:
    """Per-row seeds ``[B]`` int64: an int ``seed`` gives ``hash(seed, b)``; a sequence/tensor of B
    ints is used as is (masked to 62 bits)."""
    if isinstance(seed, torch.Tensor):
        seed = seed.tolist() if seed.dim() == 1 else None
        if seed is None:
            raise ValueError("seed: a tensor seed must be 1-D (one per row)")
    if isinstance(seed, (list, tuple)):
        if len(seed) != B:
            raise ValueError(f"seed: expected {B} per-row seeds, got {len(seed)}")
        vals = []
        for i, s in enumerate(seed):
            if isinstance(s, bool) or not isinstance(s, int):
                raise TypeError(f"seed[{i}]: expected an int, got {type(s).__name__}")
            vals.append(s & _MASK62)
        return torch.tensor(vals, dtype=torch.int64)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int or a list of per-row ints, got {type(seed).__name__}")
    base = _splitmix64(seed & 0xFFFFFFFFFFFFFFFF)
    return torch.tensor([_splitmix64(base ^ b) & _MASK62 for b in range(B)], dtype=torch.int64)


def step_seeds(row_seeds: torch.Tensor, step: int) -> torch.Tensor:
    """The per-row seed tensor passed to the sampling ops at decoding step ``step``."""
    return row_seeds ^ (_splitmix64(step) & _MASK62)


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # [B, T_new] int64 new tokens, right-padded with pad_token_id after EOS/stop
    lengths: torch.Tensor  # [B] int64 real new tokens per row (EOS included)
    logp: torch.Tensor  # [B, T_new] fp32 log pi(token) under the distribution sampled (0 on padding)
    logp_ref: torch.Tensor  # [B, T_new] fp32 log pi_ref(token), full-vocab softmax of logits/T (0 on padding)
    kl: torch.Tensor  # [B] fp32 sum_t (logp - logp_ref)
    texts: Optional[list] = None  # decoded new tokens (when a tokenizer is known)
    finished: Optional[torch.Tensor] = None  # [B] bool: ended with EOS
    row_seeds: Optional[torch.Tensor] = None  # [B] int64: seed=[row_seeds[b]] reproduces row b alone
    valid: Optional[torch.Tensor] = None  # [B] bool: False where invalid="mark" stopped the row (non-finite logits/values)
    timings: dict = field(default_factory=dict)  # seconds per phase (with profile=True), and "total"


def _as_model(base_model, torch_dtype=None):
    if isinstance(base_model, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM

        kw = {"dtype": torch_dtype} if torch_dtype is not None else {}
        return AutoModelForCausalLM.from_pretrained(check_model_source(base_model, "base_model"), **kw).eval()
    if not isinstance(base_model, torch.nn.Module) or not hasattr(base_model, "config"):
        raise TypeError(f"base_model: expected a Hugging Face causal LM or an id/path, got {type(base_model).__name__}")
    return base_model


def _value_model_dir(p):
    """A saved value model's folder (``~`` expanded); value models are never hub ids, so a path that
    is not a directory fails here at once, naming it."""
    if not isinstance(p, (str, os.PathLike)):
        return p  # an already loaded ValueModel / ValueEnsemble
    d = os.path.expanduser(os.fspath(p))
    if not os.path.isdir(d):
        what = "is a file, not a value model folder" if os.path.exists(d) else "no such directory"
        raise FileNotFoundError(f"value_models: {what}: {os.fspath(p)!r} (give the folder written by "
                                "ValueModel.save_pretrained)")
    return d


def _eos_ids(tokenizer, model) -> list:
    ids = []
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if e is None:
            continue
        ids.extend(e if isinstance(e, (list, tuple)) else [e])
        if ids:
            break
    return sorted(set(int(i) for i in ids))


class MavisGenerator:
    """``MavisGenerator(base_model, value_models, tokenizer).generate(prompts, weights=..., beta=...)``.

    ``base_model``: a Hugging Face causal LM, or a local directory / hub id to load one from (a path
    that does not exist raises ``FileNotFoundError`` at once). ``value_models``: a ``ValueModel``, a
    ``ValueEnsemble``, a list of them, directories they were saved to, or None (plain top-k sampling).
    Objectives are ordered as in ``self.objectives``; weights follow that order.
    ``prefix_scoring``: "tree" (one pass with a tree mask, default) or "copies" (the authors'
    K-copies cache, a baseline for benchmarks and tests).
    ``stack_trunks``: "auto" (default) runs prefix-mode value models whose trunks share an
    architecture and shape as ONE batched pass per step (``mavis_ext.stacked_trunks``; same values
    up to float rounding, one extra copy of those trunks' projection weights), warning when a group
    cannot be stacked; True raises instead; False runs every trunk on its own.
    ``trunk_gemm_dtype``: None (default) or "bf16": run the prefix-mode trunks' linear layers in
    bfloat16 (an approximation: values move by about 1% of their scale; see the README).
    ``lean_forward``: False (default) or True: run the base model and the value trunks that are
    Llama-family models through ``mavis_ext.lean_llama`` (fused projections, preallocated
    KV buffers; same results up to float rounding, one extra copy of their projection weights);
    other architectures keep the Hugging Face forward (``self.lean_status`` says which run lean).
    """

    def __init__(self, base_model, value_models=None, tokenizer=None, *, prefix_scoring: str = "tree",
                 stack_trunks="auto", trunk_gemm_dtype=None, lean_forward: bool = False):
        self.base = _as_model(base_model)
        if tokenizer is None and isinstance(base_model, (str, os.PathLike)):
            try:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(check_model_source(base_model, "base_model"))
            except Exception:  # a model folder without tokenizer files: input_ids still work
                tokenizer = None
        self.tokenizer = tokenizer
        if prefix_scoring not in ("tree", "copies"):
            raise ValueError(f'prefix_scoring: must be "tree" or "copies", got {prefix_scoring!r}')
        self.prefix_scoring = prefix_scoring
        if not (stack_trunks is True or stack_trunks is False or (isinstance(stack_trunks, str) and stack_trunks == "auto")):
            raise ValueError(f'stack_trunks: must be "auto", True or False, got {stack_trunks!r}')
        self.stack_trunks = stack_trunks
        self.trunk_gemm_dtype = resolve_gemm_dtype(trunk_gemm_dtype)
        if self.trunk_gemm_dtype is not None and prefix_scoring != "tree":
            raise ValueError('trunk_gemm_dtype: needs prefix_scoring="tree"')
        self._stacks: dict = {}  # stacked trunks, reused across generate() calls
        if not isinstance(lean_forward, bool):
            raise ValueError(f"lean_forward: must be True or False, got {lean_forward!r}")
        self.lean_forward = lean_forward
        self._lean_base = None
        if isinstance(value_models, (str, os.PathLike)) or (isinstance(value_models, (list, tuple)) and value_models
                                                            and isinstance(value_models[0], (str, os.PathLike))):
            from .values import load_value_models

            items = [value_models] if isinstance(value_models, (str, os.PathLike)) else list(value_models)
            value_models = load_value_models([_value_model_dir(p) for p in items], base_tokenizer=tokenizer)
        self.members: list[ValueModel] = members_of(value_models)
        self.value_models = value_models
        self.vocab_size = int(self.base.get_output_embeddings().out_features
                              if self.base.get_output_embeddings() is not None else self.base.config.vocab_size)
        dev = self.device
        for i, vm in enumerate(self.members):
            if vm.vocab_size < self.vocab_size:
                raise ValueError(
                    f"value_models: value model {i} ({vm.objectives}) embeds {vm.vocab_size} tokens but the base "
                    f"model has {self.vocab_size}: it was not built on the base model's vocabulary")
            if vm.mode == "qhead" and vm.head_weight.shape[1] < self.vocab_size:
                raise ValueError(f"value_models: Q heads of value model {i} cover {vm.head_weight.shape[1]} tokens, "
                                 f"base model has {self.vocab_size}")
            if tokenizer is not None:
                vm.check_tokenizer(tokenizer, name="value_models")
            pdev = next(vm.parameters()).device
            if pdev != dev:
                raise ValueError(f"value_models: value model {i} is on {pdev}, the base model on {dev}; move them "
                                 "to the same device")
        check_cache_support(self.base, "base_model")
        for vm in self.members:
            check_cache_support(vm.trunk, "value_models")
        self.objectives = [o for vm in self.members for o in vm.objectives]
        self.lean_status = self._lean_status() if lean_forward else {}
        self._base_cache_kw = cache_kwarg(self.base)
        import inspect

        self._logits_to_keep = "logits_to_keep" in inspect.signature(self.base.forward).parameters
        self.eos_ids = _eos_ids(tokenizer, self.base)
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        if pad is None:
            pad = getattr(self.base.generation_config, "pad_token_id", None) if hasattr(self.base, "generation_config") else None
        if pad is None:
            pad = self.eos_ids[0] if self.eos_ids else 0
        self.pad_token_id = int(pad if not isinstance(pad, (list, tuple)) else pad[0])

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    # ------------------------------------------------------------------ input preparation
    def _inputs(self, prompts, input_ids, attention_mask):
        dev = self.device
        if prompts is not None and input_ids is not None:
            raise ValueError("prompts: give either prompts or input_ids, not both")
        if prompts is not None:
            if isinstance(prompts, str):
                prompts = [prompts]
            if not isinstance(prompts, (list, tuple)) or not prompts:
                raise ValueError("prompts: expected a non-empty list of strings")
            if self.tokenizer is None:
                raise ValueError("prompts: a tokenizer is needed to encode text prompts (or pass input_ids)")
            for i, p in enumerate(prompts):
                if not isinstance(p, str):
                    raise TypeError(f"prompts[{i}]: expected a string, got {type(p).__name__}")
            # Encode row by row and left-pad here: works for tokenizers without a pad token too.
            rows = self.tokenizer(list(prompts))["input_ids"]
            for i, r in enumerate(rows):
                if len(r) == 0:
                    raise ValueError(f"prompts: prompt {i} is empty (no tokens); every row needs at least one token")
            T = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), T), self.pad_token_id, dtype=torch.int64)
            attention_mask = torch.zeros((len(rows), T), dtype=torch.int64)
            for i, r in enumerate(rows):
                input_ids[i, T - len(r):] = torch.as_tensor(r, dtype=torch.int64)
                attention_mask[i, T - len(r):] = 1
        elif input_ids is None:
            raise ValueError("prompts: give prompts (list of str) or input_ids")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids: expected a [B, T] integer tensor, got {getattr(input_ids, 'shape', type(input_ids))}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids: empty (shape {tuple(input_ids.shape)}); every row needs at least one token")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
        input_ids = input_ids.to(dev, torch.int64)
        attention_mask = (attention_mask.to(dev) != 0).long()
        if (attention_mask.sum(1) == 0).any():
            b = int((attention_mask.sum(1) == 0).nonzero()[0])
            raise ValueError(f"attention_mask: row {b} has no tokens (empty prompt)")
        if (input_ids.min() < 0) or (input_ids.max() >= self.vocab_size):
            raise ValueError(f"input_ids: token ids must be in [0, {self.vocab_size})")
        # Right or mixed padding -> left padding (stable sort puts pads first, keeps token order).
        if (attention_mask[:, 1:] < attention_mask[:, :-1]).any():
            order = torch.sort(attention_mask, dim=1, stable=True).indices
            input_ids = input_ids.gather(1, order)
            attention_mask = attention_mask.gather(1, order)
        return input_ids, attention_mask

    def _weights(self, weights, B):
        m = len(self.objectives)
        if isinstance(weights, dict):
            unknown = set(weights) - set(self.objectives)
            if unknown:
                raise ValueError(f"weights: unknown objectives {sorted(unknown)}; known: {self.objectives}")
            weights = [float(weights.get(o, 0.0)) for o in self.objectives]
        w = torch.as_tensor(weights, dtype=torch.float32)
        if w.dim() == 1:
            if w.shape[0] != m:
                raise ValueError(f"weights: expected {m} weights (one per objective {self.objectives}), got {w.shape[0]}")
        elif w.dim() == 2:
            if tuple(w.shape) != (B, m):
                raise ValueError(f"weights: expected shape [{B}, {m}] (rows x objectives {self.objectives}), got {tuple(w.shape)}")
        else:
            raise ValueError(f"weights: expected [m] or [B, m], got shape {tuple(w.shape)}")
        if not torch.isfinite(w).all():
            raise ValueError("weights: contains NaN or inf")
        return w.to(self.device)

    def _lean_status(self) -> dict:
        """Which models run through ``lean_llama`` ("lean") and why the others do not."""
        from .lean_llama import unsupported_reason
        from .values import backbone_of

        def why(model):
            try:
                return unsupported_reason(backbone_of(model))
            except TypeError as e:
                return str(e)

        head = self.base.get_output_embeddings()
        base_why = why(self.base) or (None if type(head) is torch.nn.Linear else "no plain LM head")
        out = {"base_model": base_why or "lean"}
        for i, vm in enumerate(self.members):
            w = why(vm.trunk)
            if self.prefix_scoring != "tree" and vm.mode == "prefix" and w is None:
                w = 'needs prefix_scoring="tree"'
            out[f"value_models[{i}]"] = w or "lean"
        return out

    def _base_runner(self):
        """The base model's ``LeanLlama`` (rebuilt when its weights change), or None."""
        if not self.lean_forward or self.lean_status.get("base_model") != "lean":
            return None
        from .lean_llama import LeanLlama
        from .values import backbone_of

        bb, head = backbone_of(self.base), self.base.get_output_embeddings()
        if self._lean_base is None or not self._lean_base.is_current([bb], head):
            self._lean_base = LeanLlama([bb], lm_head=head)
        return self._lean_base

    # ------------------------------------------------------------------ base model
    def _base_forward(self, ids, mask, pos, cache):
        if isinstance(cache, LeanCache):
            return self._lean_base.logits_last(ids, mask, pos, cache)
        kw = {self._base_cache_kw: cache, "use_cache": True}
        if self._logits_to_keep:
            kw["logits_to_keep"] = 1
        out = self.base(input_ids=ids, attention_mask=mask, position_ids=pos, **kw)
        return out.logits[:, -1]

    # ------------------------------------------------------------------ generate
    @torch.no_grad()
    def generate(self, prompts=None, *, input_ids=None, attention_mask=None, weights=None, beta=1.0, top_k=40,
                 temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0, normalize_values=False,
                 ban_eos_first=False, stop_at_eos=True, max_new_tokens_per_row=None, eos_token_id=None,
                 invalid="raise", prune_tv=None, value_range=None, profile=False,
                 progress=False) -> GenerationOutput:
        """Sample up to ``max_new_tokens`` new tokens per row (see the module docstring and
        ``GenerationOutput``).

        ``weights``: required when the generator has value models (one per objective of
        ``self.objectives``, a ``[B, m]`` tensor/list for one row per prompt, or a dict
        ``{objective: w}`` with missing objectives at 0); ``None`` then raises. Without value models
        the weights are ignored (plain top-k sampling), so callers may pass them unconditionally.
        ``beta=0`` or all-zero weights sample the base model's top-k distribution.

        ``input_ids`` without ``attention_mask`` are taken as unpadded (every position a token).

        ``invalid``: what a row whose logits (or values) hold NaN / +inf, or no finite logit, does.
        ``"raise"`` (default): the whole call raises. ``"mark"``: that row stops before the bad step
        (like EOS, without emitting a token), ``out.valid[b]`` is False, and every other row goes on
        exactly as it would alone.

        ``prune_tv`` (certified candidate pruning, off by default): skip scoring the candidates of
        lowest base probability whose largest possible tilted mass, given ``value_range`` (bounds on
        every objective's value: ``(lo, hi)``, one pair per objective, or a dict), is at most
        ``prune_tv``; each step's distribution then differs from the exact one by at most
        ``prune_tv`` in total variation (``mavis_ext.pruning``). A scored value outside
        ``value_range`` raises. Needs ``top_p=1`` and ``normalize_values=False``.

        Extra options: ``eos_token_id`` (int or list; default: the base model's / tokenizer's),
        ``profile`` (wall time per phase in ``out.timings``), ``progress`` (tqdm bar)."""
        t_start = time.perf_counter()
        ids, mask = self._inputs(prompts, input_ids, attention_mask)
        B, T = ids.shape
        dev = self.device
        # ---- argument checks (clear errors naming the argument)
        try:
            beta = float(beta)
        except (TypeError, ValueError):
            raise TypeError(f"beta: expected a number, got {type(beta).__name__}") from None
        if not (beta >= 0.0) or beta == float("inf"):
            raise ValueError(f"beta: must be a finite number >= 0, got {beta}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not (1 <= top_k <= self.vocab_size):
            raise ValueError(f"top_k: must be an int in [1, {self.vocab_size}], got {top_k!r}")
        if not (float(temperature) > 0.0):
            raise ValueError(f"temperature: must be > 0, got {temperature}")
        if not (0.0 < float(top_p) <= 1.0):
            raise ValueError(f"top_p: must be in (0, 1], got {top_p}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: must be an int >= 0, got {max_new_tokens!r}")
        budget = torch.full((B,), max_new_tokens, dtype=torch.int64, device=dev)
        if max_new_tokens_per_row is not None:
            mb = torch.as_tensor(max_new_tokens_per_row, dtype=torch.int64)
            if tuple(mb.shape) != (B,):
                raise ValueError(f"max_new_tokens_per_row: expected shape [{B}], got {tuple(mb.shape)}")
            if (mb < 0).any():
                raise ValueError("max_new_tokens_per_row: budgets must be >= 0")
            budget = mb.to(dev)
            max_new_tokens = int(mb.max())
        if invalid not in ("raise", "mark"):
            raise ValueError(f'invalid: must be "raise" or "mark", got {invalid!r}')
        mark = invalid == "mark"  # the ops then return id -1 / NaN for the bad rows only
        row_seeds = row_seeds_from(seed, B).to(dev)
        if self.members and weights is None:
            m = len(self.objectives)
            raise ValueError(f"weights: required with value models, one per objective {self.objectives} (e.g. "
                             f"weights={[round(1 / m, 4)] * m}); for the base model alone use MavisGenerator(base, None)")
        guided = bool(self.members) and beta != 0.0
        w = self._weights(weights, B) if self.members else None
        prune = None
        if prune_tv is not None:
            if isinstance(prune_tv, bool) or not isinstance(prune_tv, (int, float)) or not (0.0 <= prune_tv < 1.0):
                raise ValueError(f"prune_tv: must be a number in [0, 1), got {prune_tv!r}")
            if top_p < 1.0:
                raise ValueError("prune_tv: needs top_p=1 (nucleus filtering of a pruned candidate set has no TV bound)")
            if normalize_values:
                raise ValueError("prune_tv: needs normalize_values=False (min-max normalisation depends on every candidate)")
            if self.members:
                ranges = pruning.parse_value_range(value_range, self.objectives)
                prune = (float(prune_tv),) + pruning.value_interval(w, ranges, B)
        elif value_range is not None:
            raise ValueError("value_range: only used with prune_tv")
        # (weights with no value models: plain sampling, so that iteration-0 rollouts can pass
        # weights unconditionally)
        if guided and not bool((w != 0).any()):
            guided = False  # all-zero weights: plain top-k sampling, skip the value models
        top_k = int(top_k)
        temperature, top_p = float(temperature), float(top_p)

        seqs = torch.full((B, max_new_tokens), self.pad_token_id, dtype=torch.int64, device=dev)
        logp_all = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=dev)
        logpr_all = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=dev)
        lengths = torch.zeros(B, dtype=torch.int64, device=dev)
        finished = torch.zeros(B, dtype=torch.bool, device=dev)
        valid = torch.ones(B, dtype=torch.bool, device=dev)
        done = budget <= 0
        timings = {"base": 0.0, "values": 0.0, "sample": 0.0, "advance": 0.0} if profile else {}
        if max_new_tokens == 0 or bool(done.all()):
            return self._output(seqs[:, :0], lengths, logp_all[:, :0], logpr_all[:, :0], finished, row_seeds, valid,
                                timings, t_start)

        # ---- prefill
        full_mask = torch.ones(B, T + max_new_tokens, dtype=torch.int64, device=dev)
        full_mask[:, :T] = mask
        pos0 = positions_from_mask(mask)
        next_pos = mask.sum(1)  # position id of the next token
        clock = _Clock(profile, dev)
        lean_base = self._base_runner()
        cache = lean_base.new_cache(B, T + max_new_tokens) if lean_base is not None else new_cache(self.base)
        logits = self._base_forward(ids, mask, pos0, cache)
        clock.add(timings, "base")
        scorers, plan = [], []
        fused = False
        if guided:
            offs, o = [], 0
            for vm in self.members:
                offs.append((o, o + vm.m))
                o += vm.m
            # Value models whose weights are zero in every row cannot change the distribution: skip
            # them (e.g. single-objective rollouts with an ensemble of per-objective models).
            active = [j for j, (a, b) in enumerate(offs) if bool((w[..., a:b] != 0).any())]
            plan = plan_scorers([self.members[j] for j in active], self.prefix_scoring, self.vocab_size,
                                self.stack_trunks, self.trunk_gemm_dtype, self._stacks, lean=self.lean_forward,
                                capacity=T + max_new_tokens + top_k)
            scorers = [sc for sc, _ in plan]
            w_split = [w[..., offs[j][0] : offs[j][1]] for j in active]
            for sc in scorers:
                sc.start(ids, mask, pos0)
            fused = len(scorers) == 1 and scorers[0].mode == "qhead" and not normalize_values
            clock.add(timings, "values")
        eos_list = self.eos_ids if eos_token_id is None else (
            [int(e) for e in eos_token_id] if isinstance(eos_token_id, (list, tuple)) else [int(eos_token_id)])
        eos = torch.tensor(eos_list, dtype=torch.int64, device=dev) if (stop_at_eos or ban_eos_first) and eos_list else None
        one_w = torch.ones(1, dtype=torch.float32, device=dev)
        pbar = _progress(progress, max_new_tokens)

        for t in range(max_new_tokens):
            if ban_eos_first and t == 0 and eos is not None:
                logits = logits.clone()
                logits[:, eos] = float("-inf")
            seeds_t = step_seeds(row_seeds, t)
            if fused:
                sc = scorers[0]
                tok, logp, logp_ref = ops.guided_sample(
                    logits, sc.hidden.to(sc.head_weight.dtype), sc.head_weight, sc.head_bias, w_split[0], beta=beta,
                    top_k=top_k, temperature=temperature, top_p=top_p, seed=seeds_t, return_logprobs=True, invalid=invalid)
                col = None
                bad = tok < 0
                clock.add(timings, "sample")
            else:
                cand_logits, cand_ids, lse = ops.topk_candidates(logits, top_k, temperature=temperature, invalid=invalid)
                bad = cand_ids[:, 0] < 0
                if mark:
                    # A marked row has candidate ids -1: score a harmless real id (0) in its place so
                    # the value models never index out of range; the row stays marked.
                    cand_ids = cand_ids.clamp(min=0)
                if guided:
                    mask_now = full_mask[:, : T + t]
                    scored_ids, scored_logits = cand_ids, cand_logits
                    if prune is not None:
                        scored_ids, scored_logits = _pruned(prune, cand_ids, cand_logits, beta)
                    vals = [None] * len(w_split)
                    for sc, idx in plan:
                        if isinstance(sc, StackedScorer):
                            got = sc.member_values(scored_ids, next_pos, mask_now, [w_split[i] for i in idx])
                            for i, v in zip(idx, got):
                                vals[i] = v
                        else:
                            vals[idx[0]] = sc.values(scored_ids, next_pos, mask_now, w_split[idx[0]])
                    comb = vals[0]
                    for v in vals[1:]:
                        comb = comb + v
                    if prune is not None:
                        pruning.check_values_in_range(comb, prune[1], prune[2])
                    if normalize_values:  # paper v1: min-max over the K candidates
                        lo = comb.amin(dim=1, keepdim=True)
                        hi = comb.amax(dim=1, keepdim=True)
                        comb = (comb - lo) / (hi - lo + 1e-6)
                    clock.add(timings, "values")
                    col, logp, _ = ops.tilted_sample(scored_logits, comb.unsqueeze(1), one_w, beta=beta, top_p=top_p,
                                                     seed=seeds_t, return_logprobs=True, invalid=invalid)
                else:
                    col, logp, _ = ops.tilted_sample(cand_logits, top_p=top_p, seed=seeds_t, return_logprobs=True, invalid=invalid)
                bad = bad | (col < 0)  # values that are not finite mark the row here
                col = col.clamp(min=0)  # a valid column for the cache commit of a marked (stopped) row
                tok = cand_ids.gather(1, col[:, None])[:, 0]
                logp_ref = cand_logits.gather(1, col[:, None])[:, 0] - lse
                clock.add(timings, "sample")
            if mark:
                valid &= ~(bad & ~done)
                done = done | bad  # a marked row stops here, before emitting a token
            live = ~done
            tok = torch.where(live, tok, torch.full_like(tok, self.pad_token_id))
            seqs[:, t] = tok
            logp_all[:, t] = torch.where(live, logp.float(), torch.zeros_like(logp, dtype=torch.float32))
            logpr_all[:, t] = torch.where(live, logp_ref.float(), torch.zeros_like(logp_ref, dtype=torch.float32))
            lengths += live.long()
            if stop_at_eos and eos is not None:
                hit = live & torch.isin(tok, eos)
                finished |= hit
                done = done | hit
            done = done | (lengths >= budget)
            if pbar is not None:
                pbar.update(1)
            if t == max_new_tokens - 1 or bool(done.all()):
                break
            # ---- advance every cache by the chosen token
            full_mask_now = full_mask[:, : T + t + 1]
            logits = self._base_forward(tok[:, None], full_mask_now, next_pos[:, None], cache)
            clock.add(timings, "base")
            for sc in scorers:
                sc.advance(tok, col, next_pos, full_mask_now)
            next_pos = next_pos + 1
            clock.add(timings, "advance")
        if pbar is not None:
            pbar.close()
        n = int(lengths.max()) if B else 0
        return self._output(seqs[:, :n], lengths, logp_all[:, :n], logpr_all[:, :n], finished, row_seeds, valid,
                            timings, t_start)

    def _output(self, seqs, lengths, logp, logp_ref, finished, row_seeds, valid, timings, t_start):
        texts = None
        if self.tokenizer is not None:
            texts = [self.tokenizer.decode(seqs[b, : int(lengths[b])].tolist(), skip_special_tokens=True)
                     for b in range(seqs.shape[0])]
        timings = dict(timings)
        timings["total"] = time.perf_counter() - t_start
        return GenerationOutput(sequences=seqs, lengths=lengths, logp=logp, logp_ref=logp_ref,
                                kl=(logp - logp_ref).sum(1), texts=texts, finished=finished, row_seeds=row_seeds,
                                valid=valid, timings=timings)


def _pruned(prune, cand_ids, cand_logits, beta):
    """The leading candidates every row must score under certified pruning (``prune`` = (tv, lo,
    hi)): ``[B, K']`` ids and logits, where K' is the largest count kept by any row and the
    columns a row drops are -inf logits (scored, never sampled)."""
    tv, lo, hi = prune
    keep = pruning.keep_counts(cand_logits, beta, hi - lo, tv).to(cand_logits.device)
    Kp = int(keep.max())
    logits = cand_logits[:, :Kp]
    if bool((keep < Kp).any()):
        cols = torch.arange(Kp, device=cand_logits.device)
        logits = logits.masked_fill(cols[None, :] >= keep[:, None], float("-inf"))
    return cand_ids[:, :Kp], logits


class _Clock:
    """Accumulates wall time per phase when profiling (synchronising CUDA so the split is real)."""

    def __init__(self, on: bool, device):
        self.on = on
        self.cuda = torch.device(device).type == "cuda"
        self.t = time.perf_counter()

    def add(self, timings: dict, key: str) -> None:
        if not self.on:
            return
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        timings[key] = timings.get(key, 0.0) + now - self.t
        self.t = now


def _progress(on, total):
    if not on:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="mavis generate", unit="tok", leave=False)
