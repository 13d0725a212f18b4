"""Value models: the decoder stack of a Hugging Face causal LM (the trunk) plus value heads for m objectives.

Two modes:

* ``prefix`` (paper-faithful): one scalar head per objective, ``V_i(prefix)`` read from the trunk's
  last hidden state at the prefix's last token. Heads: ``head_weight [m, d]``, ``head_bias [m]``.
  The decoding engine scores the K candidates of a step in one forward pass with a tree mask.
* ``qhead``: one V-wide head per objective, ``Q_i(s, a) = h(s) . W_i[a] + b_i[a]`` read from the
  hidden state of the prefix s. Heads: ``head_weight [m, V, d]``, ``head_bias [m, V]``. One trunk
  token per step; only the K candidate rows are read (``mavis_ext.value_heads`` / ``guided_sample``).

One ``ValueModel`` = one trunk shared by its m heads. Several ``ValueModel`` s (one per objective, or
any mix of modes and trunks) form a ``ValueEnsemble`` whose objectives are the concatenation.

The trunk is the decoder stack only (``LlamaModel``, ``GPT2Model``, ...): a causal LM given as
trunk loses its LM head, which a value model never uses. Keeping it would carry a large parameter
with no gradient: optimizers treat such a parameter differently depending on whether its gradient is
``None`` or zeros (which is what a gradient all-reduce across processes produces), and it would be
saved for nothing.

Saved layout (``save_pretrained``, written to a temporary directory and renamed into place)::

    path/mavis_value_config.json   mode, objectives, hidden/vocab size, trunk source, tokenizer
                                   fingerprint, and the size and SHA-256 of every other file
    path/heads.safetensors         head_weight, head_bias
    path/trunk/                    the trunk (HF save_pretrained: config.json + safetensors [+ tokenizer])

An ensemble is saved as ``path/mavis_ensemble.json`` plus one such directory per member. Loading
checks every file against the manifest first, so a truncated or damaged file is reported as
``CorruptFileError`` (a ``ValueError``) naming that file. Format 1 (older releases: the trunk saved
with its LM head, no manifest) still loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Optional, Sequence, Union

import torch
from torch import nn

from . import ops
from .integrity import CorruptFileError, dir_manifest, one_line, read_json, verify_manifest
from .model_paths import check_model_source
from .safetensors_io import load_checked

__all__ = [
    "ValueModel",
    "ValueEnsemble",
    "load_value_models",
    "verify_saved",
    "CorruptFileError",
    "tokenizer_fingerprint",
    "positions_from_mask",
    "MODES",
]

MODES = ("prefix", "qhead")
CONFIG_NAME = "mavis_value_config.json"
ENSEMBLE_NAME = "mavis_ensemble.json"
HEADS_NAME = "heads.safetensors"
TRUNK_DIR = "trunk"
FORMAT_VERSION = 2      # 2: trunk saved without LM head, file manifest in the config
REMEDY = ("restore the folder from a copy, or rerun the training command that wrote it (a resumed training run "
          "rebuilds a damaged iteration model)")


# ----------------------------------------------------------------------------- small helpers
def tokenizer_fingerprint(tokenizer) -> Optional[dict]:
    """``{"size", "sha256"}`` of a tokenizer's token -> id map (None if no tokenizer): two tokenizers
    with the same fingerprint give every token the same id, which is what value models need."""
    if tokenizer is None:
        return None
    vocab = tokenizer.get_vocab()
    items = sorted(vocab.items(), key=lambda kv: (kv[1], kv[0]))
    h = hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()
    return {"size": len(vocab), "sha256": h}


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left (or right) padded rows: 0, 1, ... over the real tokens (pads get 0)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)


def _resolve_dtype(torch_dtype):
    if torch_dtype is None or isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    if isinstance(torch_dtype, str):
        name = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}.get(torch_dtype, torch_dtype)
        dt = getattr(torch, name, None)
        if isinstance(dt, torch.dtype) and dt.is_floating_point:
            return dt
    raise ValueError(f"torch_dtype: expected a torch floating dtype or its name, got {torch_dtype!r}")


def _load_causal_lm(source: str, torch_dtype=None):
    from transformers import AutoModelForCausalLM

    kw = {}
    if torch_dtype is not None:
        kw["dtype"] = torch_dtype
    return AutoModelForCausalLM.from_pretrained(source, **kw)


def _load_saved_trunk(trunk_dir: str, format_version: int, torch_dtype=None):
    """The trunk of a saved value model: a decoder stack (format 2) or, from format 1, a causal LM
    whose LM head is dropped. Any loading failure names the folder."""
    try:
        if format_version >= 2:
            from transformers import AutoModel

            kw = {"dtype": torch_dtype} if torch_dtype is not None else {}
            return AutoModel.from_pretrained(trunk_dir, **kw)
        return _strip_lm_head(_load_causal_lm(trunk_dir, torch_dtype))
    except Exception as e:  # noqa: BLE001 -- HF/safetensors raise many types for a damaged folder
        raise CorruptFileError(trunk_dir, f"the trunk cannot be loaded ({type(e).__name__}: {one_line(e)[:300]})",
                               REMEDY) from None


def _maybe_tokenizer(source):
    if not isinstance(source, str):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source)
    except Exception:  # a trunk without tokenizer files is fine; vocab size is still checked
        return None


def _unwrap_peft(trunk):
    """The transformers model under a peft wrapper (LoRA layers are injected in place, so calling
    its submodules runs the adapters)."""
    get_base = getattr(trunk, "get_base_model", None)
    return get_base() if callable(get_base) and type(trunk).__name__.startswith("Peft") else trunk


def backbone_of(trunk) -> nn.Module:
    """The decoder stack of a causal LM (``LlamaModel``, ``GPT2Model``, ...), without the LM head:
    its ``last_hidden_state`` is what the value heads read. A decoder stack is its own backbone."""
    model = _unwrap_peft(trunk)
    if getattr(model, "base_model", None) is model:
        return model
    prefix = getattr(model, "base_model_prefix", "")
    bb = getattr(model, prefix, None) if prefix else None
    if bb is None or bb is model:
        get_dec = getattr(model, "get_decoder", None)
        bb = get_dec() if callable(get_dec) else None
    if bb is None:
        raise TypeError(f"trunk: cannot find the decoder stack of {type(model).__name__} (no base_model_prefix)")
    return bb


def _strip_lm_head(trunk):
    """``trunk`` without its LM head (the decoder stack, sharing its weights). A peft-wrapped trunk
    is kept whole: peft already freezes everything but the adapters, so its head is not trained."""
    if _unwrap_peft(trunk) is not trunk:
        return trunk
    bb = backbone_of(trunk)
    if not hasattr(bb, "config") or not callable(getattr(bb, "save_pretrained", None)):
        raise TypeError(f"trunk: the decoder stack of {type(trunk).__name__} is not a Hugging Face model")
    return bb


def cache_kwarg(module) -> str:
    """Name of the KV-cache argument of a HF forward (``cache`` in transformers >= 5.x, else
    ``past_key_values``)."""
    import inspect

    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


# ----------------------------------------------------------------------------- ValueModel
class ValueModel(nn.Module):
    """A HF causal-LM trunk with value heads for ``objectives`` in ``mode`` ("prefix" | "qhead")."""

    def __init__(self, trunk, objectives: Sequence[str], mode: str = "prefix", *, head_weight=None,
                 head_bias=None, init_std: Optional[float] = None, tokenizer=None, trunk_source=None,
                 lora_config: Optional[dict] = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f'mode: must be "prefix" or "qhead", got {mode!r}')
        if isinstance(objectives, str):
            objectives = [objectives]
        objectives = [str(o) for o in objectives]
        if not objectives:
            raise ValueError("objectives: need at least one objective name")
        if len(set(objectives)) != len(objectives):
            raise ValueError(f"objectives: duplicate names in {objectives}")
        if not isinstance(trunk, nn.Module) or not hasattr(trunk, "config"):
            raise TypeError(f"trunk: expected a Hugging Face PreTrainedModel, got {type(trunk).__name__}")
        trunk = _strip_lm_head(trunk)      # the LM head is never used (see the module docstring)
        self.trunk = trunk
        self.mode = mode
        self.objectives = objectives
        self.tokenizer = tokenizer
        self.trunk_source = trunk_source
        self.lora_config = lora_config
        cfg = _unwrap_peft(trunk).config
        d = cfg.get_text_config().hidden_size if hasattr(cfg, "get_text_config") else cfg.hidden_size
        V = trunk.get_input_embeddings().num_embeddings
        self.hidden_size, self.vocab_size = int(d), int(V)
        m = len(objectives)
        p = next(trunk.parameters())
        shape_w = (m, d) if mode == "prefix" else (m, V, d)
        if head_weight is None:
            std = float(init_std) if init_std is not None else float(getattr(cfg, "initializer_range", 0.02))
            head_weight = torch.randn(shape_w, device=p.device, dtype=torch.float32) * std
            head_weight = head_weight.to(p.dtype)
        if head_bias is None:
            head_bias = torch.zeros(shape_w[:-1], device=p.device, dtype=head_weight.dtype)
        if tuple(head_weight.shape) != shape_w:
            raise ValueError(f"head_weight: expected shape {list(shape_w)} for {mode} mode, got {tuple(head_weight.shape)}")
        if tuple(head_bias.shape) != shape_w[:-1]:
            raise ValueError(f"head_bias: expected shape {list(shape_w[:-1])}, got {tuple(head_bias.shape)}")
        self.head_weight = nn.Parameter(head_weight.detach().clone())
        self.head_bias = nn.Parameter(head_bias.detach().clone())
        self._cache_kw = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_trunk(cls, trunk, objectives, mode="prefix", *, torch_dtype=None, lora=None, init_std=None,
                   tokenizer=None) -> "ValueModel":
        """A fresh value model on ``trunk`` (hub id, local path, or a ``PreTrainedModel``; a model
        object is used as is, not copied). ``lora``: a dict of ``peft.LoraConfig`` arguments (or a
        ``LoraConfig``) to train adapters instead of the full trunk; needs ``peft`` installed."""
        torch_dtype = _resolve_dtype(torch_dtype)
        source = trunk if isinstance(trunk, (str, os.PathLike)) else getattr(getattr(trunk, "config", None), "_name_or_path", None)
        if isinstance(trunk, (str, os.PathLike)):
            trunk_path = check_model_source(trunk, "trunk")
            if tokenizer is None:
                tokenizer = _maybe_tokenizer(trunk_path)
            trunk = _load_causal_lm(trunk_path, torch_dtype)
        elif torch_dtype is not None:
            trunk = trunk.to(torch_dtype)
        trunk = _strip_lm_head(trunk)   # before LoRA, so adapters wrap the decoder stack only
        lora_dict = None
        if lora is not None:
            trunk, lora_dict = _apply_lora(trunk, lora)
        vm = cls(trunk, objectives, mode, init_std=init_std, tokenizer=tokenizer, trunk_source=source,
                 lora_config=lora_dict)
        return vm

    @classmethod
    def from_pretrained(cls, path, *, base_tokenizer=None, torch_dtype=None, device=None,
                        verify: bool = True) -> "ValueModel":
        """Load a value model saved by ``save_pretrained``. With ``base_tokenizer`` given, checks that
        the value model was trained with the same vocabulary and raises ``ValueError`` if not.
        ``verify``: check every file's SHA-256 against the manifest first (about a second per GB;
        sizes are always checked). A missing folder raises ``FileNotFoundError``, a damaged file
        ``CorruptFileError``; both messages are one line naming the path."""
        path = check_model_source(path, "path")
        cfg_path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(cfg_path):
            if os.path.isfile(os.path.join(path, ENSEMBLE_NAME)):
                raise ValueError(f"path: {path} holds a ValueEnsemble; load it with load_value_models()")
            raise FileNotFoundError(f"path: no {CONFIG_NAME} in {path!r} (not a saved ValueModel)")
        cfg = _read_config(path, verify)
        torch_dtype = _resolve_dtype(torch_dtype)
        trunk_dir = os.path.join(path, TRUNK_DIR)
        trunk = _load_saved_trunk(trunk_dir, int(cfg.get("format_version", 1)), torch_dtype)
        tokenizer = _maybe_tokenizer(trunk_dir) if cfg.get("tokenizer_saved") else None
        heads, _ = load_checked(os.path.join(path, HEADS_NAME), REMEDY,
                                require_checksum=int(cfg.get("format_version", 1)) >= 2)
        if "head_weight" not in heads or "head_bias" not in heads:
            raise CorruptFileError(os.path.join(path, HEADS_NAME), "has no head_weight/head_bias", REMEDY)
        w, b = heads["head_weight"], heads["head_bias"]
        if torch_dtype is not None:
            w, b = w.to(torch_dtype), b.to(torch_dtype)
        else:
            dt = next(trunk.parameters()).dtype
            w, b = w.to(dt), b.to(dt)
        try:
            vm = cls(trunk, cfg["objectives"], cfg["mode"], head_weight=w, head_bias=b, tokenizer=tokenizer,
                     trunk_source=cfg.get("trunk_source"))
        except (ValueError, TypeError) as e:
            raise CorruptFileError(path, f"its files do not fit together ({one_line(e)})", REMEDY) from None
        # A LoRA checkpoint is saved merged: the loaded trunk is plain (train it fully or add new adapters).
        vm.merged_lora_config = cfg.get("lora")
        vm._saved_fingerprint = cfg.get("tokenizer")
        if vm.vocab_size != cfg["vocab_size"] or vm.hidden_size != cfg["hidden_size"]:
            raise CorruptFileError(path, f"trunk (vocab {vm.vocab_size}, hidden {vm.hidden_size}) does not match "
                                   f"{CONFIG_NAME} (vocab {cfg['vocab_size']}, hidden {cfg['hidden_size']})", REMEDY)
        if base_tokenizer is not None:
            vm.check_tokenizer(base_tokenizer, name="base_tokenizer")
        if device is not None:
            vm.to(device)
        return vm.eval()

    # ------------------------------------------------------------------ save
    def _config_dict(self) -> dict:
        fp = tokenizer_fingerprint(self.tokenizer) or getattr(self, "_saved_fingerprint", None)
        return {
            "format_version": FORMAT_VERSION,
            "kind": "ValueModel",
            "mode": self.mode,
            "objectives": list(self.objectives),
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "trunk_source": None if self.trunk_source is None else str(self.trunk_source),
            "trunk_class": type(_unwrap_peft(self.trunk)).__name__,
            "trunk_dir": TRUNK_DIR,
            "tokenizer": fp,
            "tokenizer_saved": self.tokenizer is not None,
            "lora": self.lora_config,
            "head_dtype": str(self.head_weight.dtype).replace("torch.", ""),
        }

    def _write(self, tmp: str) -> None:
        from .safetensors_io import save_deterministic

        trunk = self.trunk
        if self.lora_config is not None:
            # Save the trunk with adapters merged, so the checkpoint loads without peft. The live
            # model keeps its adapters (merge on a copy of the state, not in place).
            trunk = _merged_copy(trunk)
        trunk.save_pretrained(os.path.join(tmp, TRUNK_DIR))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(os.path.join(tmp, TRUNK_DIR))
        save_deterministic({"head_weight": self.head_weight, "head_bias": self.head_bias},
                           os.path.join(tmp, HEADS_NAME))
        cfg = self._config_dict()
        if self.lora_config is not None:
            cfg["lora_merged"] = True
        cfg["files"] = dir_manifest(tmp)          # written last: covers every other file
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")

    def save_pretrained(self, path) -> None:
        """Write to ``path`` atomically: a sibling temporary directory, then rename into place (an
        existing ``path`` is replaced only once the new copy is complete)."""
        _atomic_write_dir(os.fspath(path), self._write)

    # ------------------------------------------------------------------ checks
    def check_tokenizer(self, tokenizer, name: str = "tokenizer") -> None:
        """Raise ``ValueError`` (naming ``name``) if ``tokenizer``'s vocabulary differs from the one
        this value model was built with (or, if that is unknown, if it does not fit the trunk)."""
        theirs = tokenizer_fingerprint(tokenizer)
        mine = tokenizer_fingerprint(self.tokenizer) or getattr(self, "_saved_fingerprint", None)
        if mine is not None and theirs is not None and mine["sha256"] != theirs["sha256"]:
            raise ValueError(
                f"{name}: vocabulary does not match the value model's ({self.objectives}): "
                f"{theirs['size']} tokens vs {mine['size']} (token -> id maps differ); value models must "
                "be trained on the base model's tokenizer")
        if theirs is not None and theirs["size"] > self.vocab_size:
            raise ValueError(
                f"{name}: has {theirs['size']} tokens but the value model's trunk only embeds {self.vocab_size}")

    # ------------------------------------------------------------------ forward helpers
    @property
    def m(self) -> int:
        return len(self.objectives)

    @property
    def backbone(self) -> nn.Module:
        return backbone_of(self.trunk)

    def backbone_forward(self, input_ids, attention_mask=None, position_ids=None, cache=None,
                         use_cache=None) -> torch.Tensor:
        """Last hidden state ``[B, T, d]`` of the trunk (no LM head). ``attention_mask`` may be 2-D
        padding or a custom 4-D mask (additive float, ``[B, 1, T, past + T]``)."""
        bb = self.backbone
        if self._cache_kw is None:
            self._cache_kw = cache_kwarg(bb)
        kw = {self._cache_kw: cache} if cache is not None else {}
        out = bb(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                 use_cache=cache is not None if use_cache is None else use_cache, **kw)
        return out.last_hidden_state

    def heads(self, hidden, candidate_ids=None, weights=None):
        """Apply the heads with the op library. prefix: ``hidden [B,N,d]`` -> ``[B,m,N]``; qhead:
        ``hidden [B,d]`` + ``candidate_ids [B,K]`` -> ``[B,m,K]`` (combined ``[B,N]``/``[B,K]`` with
        ``weights``)."""
        w, b = self.head_weight, self.head_bias
        hidden = hidden.to(w.dtype)
        if self.mode == "prefix":
            return ops.value_heads(hidden, w, b, weights=weights)
        if candidate_ids is None:
            raise ValueError("candidate_ids: required in qhead mode")
        return ops.value_heads(hidden, w, b, candidate_ids=candidate_ids, weights=weights)

    def token_values(self, input_ids, attention_mask=None) -> torch.Tensor:
        """Training entry point (full sequences, no cache, differentiable). Returns ``[B, m, T]`` fp32:
        prefix: ``V_i(input_ids[b, :t+1])``; qhead: ``Q_i(input_ids[b, :t], input_ids[b, t])`` for
        t >= 1 (t = 0 is 0). Positions under ``attention_mask == 0`` are garbage: mask them."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected a [B, T] tensor, got {getattr(input_ids, 'shape', type(input_ids))}")
        if input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
            raise ValueError("input_ids: empty batch or empty sequences")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
        pos = positions_from_mask(attention_mask)
        h = self.backbone_forward(input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=False)
        h = h.float()
        W, b = self.head_weight.float(), self.head_bias.float()
        if self.mode == "prefix":
            # Plain differentiable einsum (the op library's kernels are inference-only).
            return torch.einsum("btd,md->bmt", h, W) + b.view(1, -1, 1)
        B, T = input_ids.shape
        out = h.new_zeros(B, self.m, T)
        if T > 1:
            nxt = input_ids[:, 1:]
            rows = W[:, nxt]  # [m, B, T-1, d]
            q = torch.einsum("mbtd,btd->bmt", rows, h[:, :-1]) + b[:, nxt].permute(1, 0, 2)
            out = torch.cat([out[:, :, :1], q], dim=2)
        return out

    def forward(self, input_ids, attention_mask=None):
        return self.token_values(input_ids, attention_mask)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, objectives={self.objectives}, d={self.hidden_size}, V={self.vocab_size}"


# ----------------------------------------------------------------------------- ValueEnsemble
class ValueEnsemble(nn.Module):
    """Several ``ValueModel`` s (any modes, own or shared trunks); ``objectives`` is their
    concatenation in order, and per-row weights are split across members in that order."""

    def __init__(self, models: Sequence[ValueModel]):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("models: need at least one ValueModel")
        for i, vm in enumerate(models):
            if not isinstance(vm, ValueModel):
                raise TypeError(f"models[{i}]: expected a ValueModel, got {type(vm).__name__}")
        names = [o for vm in models for o in vm.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"models: duplicate objective names across members: {names}")
        self.models = nn.ModuleList(models)

    @property
    def objectives(self) -> list[str]:
        return [o for vm in self.models for o in vm.objectives]

    @property
    def m(self) -> int:
        return len(self.objectives)

    def token_values(self, input_ids, attention_mask=None) -> torch.Tensor:
        return torch.cat([vm.token_values(input_ids, attention_mask) for vm in self.models], dim=1)

    def forward(self, input_ids, attention_mask=None):
        return self.token_values(input_ids, attention_mask)

    def check_tokenizer(self, tokenizer, name: str = "tokenizer") -> None:
        for vm in self.models:
            vm.check_tokenizer(tokenizer, name)

    def save_pretrained(self, path) -> None:
        def write(tmp):
            names = []
            for i, vm in enumerate(self.models):
                sub = f"member_{i}"
                os.makedirs(os.path.join(tmp, sub))
                vm._write(os.path.join(tmp, sub))
                names.append(sub)
            with open(os.path.join(tmp, ENSEMBLE_NAME), "w") as f:
                json.dump({"format_version": FORMAT_VERSION, "kind": "ValueEnsemble", "members": names,
                           "objectives": self.objectives}, f, indent=2)
                f.write("\n")

        _atomic_write_dir(os.fspath(path), write)

    @classmethod
    def from_pretrained(cls, path, *, base_tokenizer=None, torch_dtype=None, device=None,
                        verify: bool = True) -> "ValueEnsemble":
        path = check_model_source(path, "path")
        members = _ensemble_members(path)
        return cls([ValueModel.from_pretrained(os.path.join(path, s), base_tokenizer=base_tokenizer,
                                               torch_dtype=torch_dtype, device=device, verify=verify)
                    for s in members])


def members_of(value_models) -> list[ValueModel]:
    """The ValueModels inside ``value_models`` (ValueModel | ValueEnsemble | list of either | None)."""
    if value_models is None:
        return []
    if isinstance(value_models, ValueModel):
        return [value_models]
    if isinstance(value_models, ValueEnsemble):
        return list(value_models.models)
    if isinstance(value_models, (list, tuple)):
        out = []
        for i, v in enumerate(value_models):
            if not isinstance(v, (ValueModel, ValueEnsemble)):
                raise TypeError(f"value_models[{i}]: expected a ValueModel or ValueEnsemble, got {type(v).__name__}")
            out.extend(members_of(v))
        return out
    raise TypeError(f"value_models: expected a ValueModel, ValueEnsemble, list or None, got {type(value_models).__name__}")


def load_value_models(paths_or_models, *, base_tokenizer=None, torch_dtype=None, device=None, verify: bool = True,
                      arg_name: str = "paths_or_models"):
    """One path / model -> that ``ValueModel`` (or the saved ``ValueEnsemble``); several -> a
    ``ValueEnsemble`` of all of them, objectives in the given order. A path that does not exist
    raises ``FileNotFoundError`` ("no such directory", naming ``arg_name``); a damaged file
    ``CorruptFileError`` naming the file; ``verify`` as in ``ValueModel.from_pretrained``."""
    items = paths_or_models if isinstance(paths_or_models, (list, tuple)) else [paths_or_models]
    if not items:
        raise ValueError(f"{arg_name}: empty")
    # every path is checked before anything is loaded: a typo in the last one fails at once
    resolved = []                          # (model object, None) or (None, folder)
    names = []
    for i, it in enumerate(items):
        if isinstance(it, (ValueModel, ValueEnsemble)):
            resolved.append((it, None))
            continue
        name = arg_name if len(items) == 1 and not isinstance(paths_or_models, (list, tuple)) else f"{arg_name}[{i}]"
        if not isinstance(it, (str, os.PathLike)):
            raise TypeError(f"{name}: expected a path or a ValueModel, got {type(it).__name__}")
        p = check_model_source(it, name)
        if not os.path.isdir(p):
            raise FileNotFoundError(f"{name}: no such directory: {os.fspath(it)!r} (value models are local folders)")
        resolved.append((None, p))
        names.append((name, p))
    for name, p in names:
        if not (os.path.isfile(os.path.join(p, ENSEMBLE_NAME)) or os.path.isfile(os.path.join(p, CONFIG_NAME))):
            raise FileNotFoundError(f"{name}: {p!r} is not a saved value model (no {CONFIG_NAME} or {ENSEMBLE_NAME})")
    loaded = []
    kw = dict(base_tokenizer=base_tokenizer, torch_dtype=torch_dtype, device=device, verify=verify)
    for obj, p in resolved:
        if p is None:
            loaded.append(obj)
        elif os.path.isfile(os.path.join(p, ENSEMBLE_NAME)):
            loaded.append(ValueEnsemble.from_pretrained(p, **kw))
        else:
            loaded.append(ValueModel.from_pretrained(p, **kw))
    if len(loaded) == 1:
        return loaded[0]
    return ValueEnsemble(members_of(loaded))


def verify_saved(path) -> None:
    """Check a saved ``ValueModel`` or ``ValueEnsemble`` folder without loading it: every config
    parses and every file matches its manifest (size and SHA-256). Raises ``CorruptFileError``
    naming the first bad file, ``FileNotFoundError`` when ``path`` holds no value model."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, ENSEMBLE_NAME)):
        for m in _ensemble_members(path):
            verify_saved(os.path.join(path, m))
        return
    if not os.path.isfile(os.path.join(path, CONFIG_NAME)):
        raise FileNotFoundError(f"path: no {CONFIG_NAME} in {path!r} (not a saved ValueModel)")
    _read_config(path, verify=True)


# ----------------------------------------------------------------------------- internals
def _read_config(path: str, verify: bool) -> dict:
    """The parsed ``mavis_value_config.json`` of ``path`` after checking the folder's files against
    its manifest (format >= 2; format 1 has none)."""
    cfg_path = os.path.join(path, CONFIG_NAME)
    cfg = read_json(cfg_path, REMEDY)
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"path: {path} was saved by a newer mavis_ext (format {cfg['format_version']}); "
                         "upgrade mavis_ext to load it")
    missing = [k for k in ("mode", "objectives", "vocab_size", "hidden_size") if k not in cfg]
    if missing:
        raise CorruptFileError(cfg_path, f"is missing fields {missing}", REMEDY)
    verify_manifest(path, cfg.get("files"), REMEDY, checksums=verify)
    return cfg


def _ensemble_members(path: str) -> list:
    epath = os.path.join(path, ENSEMBLE_NAME)
    cfg = read_json(epath, REMEDY)
    members = cfg.get("members")
    if not isinstance(members, list) or not members or not all(
            isinstance(m, str) and m and "/" not in m and "\\" not in m and m not in (".", "..") for m in members):
        raise CorruptFileError(epath, "has no valid member list", REMEDY)
    for m in members:
        if not os.path.isdir(os.path.join(path, m)):
            raise CorruptFileError(os.path.join(path, m), "member folder is missing", REMEDY)
    return members


def _atomic_write_dir(path: str, write) -> None:
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        write(tmp)
        if os.path.exists(path):
            old = os.path.join(parent, f".{os.path.basename(path)}.old-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _apply_lora(trunk, lora):
    try:
        import peft  # noqa: F401
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError("lora: needs the optional `peft` package (pip install peft)") from e
    if isinstance(lora, dict):
        cfg = LoraConfig(**lora)
        as_dict = dict(lora)
    else:
        cfg = lora
        as_dict = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, list, bool, type(None)))}
    as_dict = json.loads(json.dumps(as_dict, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))
    return get_peft_model(trunk, cfg), as_dict


def _merged_copy(trunk):
    import copy

    return copy.deepcopy(trunk).merge_and_unload()
