"""Reward adapters: everything becomes ``fn(prompts: list[str], responses: list[str]) -> Tensor[N]``.

Sources of a reward:
- a Python callable with that signature (returning a tensor, NumPy array or list of N numbers);
- a Hugging Face sequence classifier (hub id or local path): ``HFSequenceClassifierReward``;
- a spec string (CLI): ``hf:PATH_OR_ID[:LOGIT_INDEX]``, ``module.path:function`` or
  ``/path/to/file.py:function``.

Every output is validated (shape ``[N]``, finite) and a failure names the objective, so a broken
reward stops a run before hours of rollouts are labelled with garbage. A Hugging Face model whose
score head is not in its checkpoint (e.g. a causal LM given as ``hf:``) would score at random: it is
refused unless ``allow_untrained_head=True`` (CLI: ``--allow-untrained-reward-head``).

``describe()`` of every adapter says what the reward computes, for the resume fingerprint of
training (weights and settings of a model; name and source text of a Python function).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
from typing import Callable, List, Optional, Sequence, Union

import torch

from .model_paths import check_model_source

__all__ = [
    "HFSequenceClassifierReward", "CallableReward", "load_reward", "load_rewards", "check_reward_output",
    "parse_objectives",
]

RewardFn = Callable[[List[str], List[str]], torch.Tensor]


def check_reward_output(out, n: int, name: str) -> torch.Tensor:
    """Validate one reward call's output: returns a float32 CPU tensor of shape [n]."""
    if not isinstance(out, torch.Tensor):
        try:
            out = torch.as_tensor(out, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - report what came back
            raise TypeError(f"reward {name!r}: expected a tensor of {n} numbers, got {type(out).__name__} ({e})") from None
    if out.dim() == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if tuple(out.shape) != (n,):
        raise ValueError(f"reward {name!r}: expected shape [{n}] (one score per response), got {tuple(out.shape)}")
    if not (out.dtype.is_floating_point or out.dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)):
        raise TypeError(f"reward {name!r}: expected numbers, got dtype {out.dtype}")
    out = out.detach().to("cpu", torch.float32)
    bad = ~torch.isfinite(out)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"reward {name!r}: returned a non-finite score ({float(out[i])}) at index {i} "
                         f"({int(bad.sum())} of {n} non-finite)")
    return out


class CallableReward:
    """Wraps ``fn(prompts, responses)`` with argument and output checks."""

    def __init__(self, fn: Callable, name: str = "reward", *, origin_file: Optional[str] = None):
        if not callable(fn):
            raise TypeError(f"reward {name!r}: expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name
        # The file a spec string loaded ``fn`` from: its whole content identifies the reward (helpers
        # that ``fn`` calls included).
        self.origin_file = origin_file

    def describe(self) -> dict:
        """What this reward computes, for the training resume fingerprint: the function's module and
        name, and the SHA-256 of the file it came from (spec strings) or of its source text. Data a
        function closes over is not covered."""
        fn = self.fn
        target = fn if (inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isclass(fn)) else type(fn)
        name = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(fn).__name__)}"
        if self.origin_file is not None:
            with open(self.origin_file, "rb") as f:
                return {"kind": "python", "function": name, "file_sha256": hashlib.sha256(f.read()).hexdigest()}
        try:
            src = inspect.getsource(target)
        except (OSError, TypeError):
            src = None
        return {"kind": "python", "function": name,
                "source_sha256": None if src is None else hashlib.sha256(src.encode("utf-8")).hexdigest()}

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"reward {self.name!r}: {len(prompts)} prompts but {len(responses)} responses")
        return check_reward_output(self.fn(prompts, responses), len(prompts), self.name)

    def __repr__(self) -> str:
        return f"CallableReward({self.name!r}, {getattr(self.fn, '__qualname__', self.fn)!r})"


class HFSequenceClassifierReward:
    """A Hugging Face ``AutoModelForSequenceClassification`` used as a reward.

    ``template`` joins prompt and response into the text that is classified (``str.format`` with
    ``{prompt}`` and ``{response}``; e.g. ``"{response} </s></s> {prompt}"`` for a summary
    faithfulness detector). The score is ``logits[:, logit_index]``. Inputs are right-padded so
    that classifiers that pool the last non-pad token read the right position.

    A checkpoint without trained weights for some of the classifier's parameters (typically the
    score head of a causal LM or base-model checkpoint, which HF initialises at random with only a
    warning) raises ``ValueError`` unless ``allow_untrained_head=True``; the random initialisation
    is then seeded, so every run (and every resume) scores the same way."""

    def __init__(self, model: Union[str, "torch.nn.Module"], *, tokenizer=None, logit_index: int = 0,
                 template: str = "{prompt}{response}", batch_size: int = 16, device=None,
                 max_length: Optional[int] = None, torch_dtype=None, name: str = "reward",
                 allow_untrained_head: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = name
        try:
            template.format(prompt="", response="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"reward {name!r}: template {template!r} must only use {{prompt}} and {{response}} ({e})") from None
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"reward {name!r}: batch_size must be an int >= 1, got {batch_size!r}")
        self.template, self.batch_size, self.max_length = template, batch_size, max_length
        self.untrained = []
        if isinstance(model, (str, os.PathLike)):
            src = check_model_source(model, f"reward {name!r}")
            try:
                kw = {"dtype": torch_dtype} if torch_dtype is not None else {}
                with torch.random.fork_rng(devices=[]), _hf_report_silenced():
                    torch.manual_seed(0)      # weights missing from the checkpoint: the same on every run
                    self.model, info = AutoModelForSequenceClassification.from_pretrained(
                        src, output_loading_info=True, **kw)
                self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(src)
            except Exception as e:  # noqa: BLE001 - turn a long HF trace into one line naming the objective
                msg = " ".join(str(e).split())[:300]
                raise ValueError(f"reward {name!r}: cannot load Hugging Face sequence classifier {os.fspath(model)!r}: "
                                 f"{type(e).__name__}: {msg}") from e
            self.untrained = sorted(set(info.get("missing_keys") or ()) |
                                    {k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()})
            if self.untrained and not allow_untrained_head:
                shown = ", ".join(self.untrained[:3]) + (", ..." if len(self.untrained) > 3 else "")
                raise ValueError(
                    f"reward {name!r}: {os.fspath(model)!r} has no trained weights for {shown} (newly initialised: not a "
                    "trained sequence-classification reward model, e.g. a causal LM checkpoint), so its scores would "
                    "be random; give a trained reward model, or pass --allow-untrained-reward-head "
                    "(allow_untrained_head=True) to use it anyway")
        else:
            if tokenizer is None:
                raise ValueError(f"reward {name!r}: a tokenizer is required when passing a model object")
            self.model, self.tokenizer = model, tokenizer
        n_labels = int(getattr(self.model.config, "num_labels", 1))
        if not (-n_labels <= logit_index < n_labels):
            raise ValueError(f"reward {name!r}: logit_index {logit_index} out of range for a classifier with "
                             f"{n_labels} logits")
        self.logit_index = logit_index
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(f"reward {name!r}: the classifier's tokenizer has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = torch.device(device) if device is not None else next(self.model.parameters()).device
        self.model.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError(f"reward {self.name!r}: {len(prompts)} prompts but {len(responses)} responses")
        texts = [self.template.format(prompt=p, response=r) for p, r in zip(prompts, responses)]
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "right"
        try:
            outs = []
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                     truncation=self.max_length is not None, max_length=self.max_length)
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                logits = self.model(**enc).logits
                outs.append(logits[:, self.logit_index].float().cpu())
        finally:
            self.tokenizer.padding_side = side
        out = torch.cat(outs) if outs else torch.zeros(0)
        return check_reward_output(out, len(texts), self.name)

    def __repr__(self) -> str:
        return f"HFSequenceClassifierReward({self.name!r}, logit_index={self.logit_index})"

    def describe(self) -> dict:
        """What this reward computes, for the training resume fingerprint (not the folder path)."""
        from .training.fingerprint import model_fingerprint
        from .values import tokenizer_fingerprint

        return {"kind": "hf_sequence_classifier", "weights": model_fingerprint(self.model),
                "tokenizer": tokenizer_fingerprint(self.tokenizer), "logit_index": self.logit_index,
                "template": self.template, "max_length": self.max_length, "batch_size": self.batch_size,
                "untrained": list(self.untrained)}


@contextlib.contextmanager
def _hf_report_silenced():
    """Hide transformers' multi-line load report while a reward model loads: missing weights are
    turned into one clear error (or accepted on request) right after."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _load_function(spec: str, name: str):
    """``(function, file it was defined in or None)`` for a ``module:function`` / ``file.py:function`` spec."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ValueError(f"reward {name!r}: spec {spec!r} must be 'hf:PATH_OR_ID[:LOGIT]', "
                         f"'module.path:function' or 'file.py:function'")
    try:
        if target.endswith(".py"):
            if not os.path.isfile(target):
                raise FileNotFoundError(f"no such file {target!r}")
            mod_name = "_mavis_reward_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(target))
            s = importlib.util.spec_from_file_location(mod_name, target)
            mod = importlib.util.module_from_spec(s)
            s.loader.exec_module(mod)
        else:
            mod = importlib.import_module(target)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"reward {name!r}: cannot import {target!r} from spec {spec!r}: {type(e).__name__}: {e}") from e
    fn = mod
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ValueError(f"reward {name!r}: {target!r} has no attribute {attr!r} (spec {spec!r})")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(f"reward {name!r}: {spec!r} is not callable")
    origin = getattr(mod, "__file__", None)
    return fn, (origin if origin and os.path.isfile(origin) else None)


def load_reward(spec, name: str = "reward", *, device=None, batch_size: int = 16,
                template: str = "{prompt}{response}", max_length: Optional[int] = None,
                allow_untrained_head: bool = False) -> Callable:
    """A checked reward callable from a spec string, an ``HFSequenceClassifierReward`` or a callable.
    ``allow_untrained_head``: accept an ``hf:`` model whose score head is not in its checkpoint."""
    if isinstance(spec, (HFSequenceClassifierReward, CallableReward)):
        return spec
    if callable(spec):
        return CallableReward(spec, name)
    if not isinstance(spec, str) or not spec.strip():
        raise TypeError(f"reward {name!r}: expected a callable or a spec string, got {spec!r}")
    spec = spec.strip()
    if spec.startswith("hf:"):
        body = spec[3:]
        logit_index = 0
        head, sep, tail = body.rpartition(":")
        if sep and tail.lstrip("-").isdigit():
            body, logit_index = head, int(tail)
        if not body:
            raise ValueError(f"reward {name!r}: spec {spec!r} names no model")
        return HFSequenceClassifierReward(body, logit_index=logit_index, template=template, batch_size=batch_size,
                                          device=device, max_length=max_length, name=name,
                                          allow_untrained_head=allow_untrained_head)
    fn, origin = _load_function(spec, name)
    return CallableReward(fn, name, origin_file=origin)


def load_rewards(rewards, **kwargs) -> "dict[str, Callable]":
    """``{name: spec_or_callable}`` -> ``{name: checked callable}`` (order kept)."""
    if not isinstance(rewards, dict) or not rewards:
        raise ValueError(f"rewards: expected a non-empty dict of objective name -> reward, got {rewards!r}")
    out = {}
    for name, spec in rewards.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"rewards: objective names must be non-empty strings, got {name!r}")
        out[name] = load_reward(spec, name, **kwargs)
    return out


def parse_objectives(text: str) -> "dict[str, str]":
    """``"help=SPEC,harm=SPEC"`` -> ``{"help": "SPEC", "harm": "SPEC"}``. A comma only separates
    objectives when followed by ``name=``, so specs may contain commas elsewhere."""
    import re

    if not text or not text.strip():
        raise ValueError("objectives: empty; expected name=REWARD_SPEC[,name=REWARD_SPEC...]")
    parts = re.split(r",(?=\s*[A-Za-z_][\w\-]*=)", text.strip())
    out = {}
    for p in parts:
        name, eq, spec = p.partition("=")
        name, spec = name.strip(), spec.strip()
        if not eq or not name or not spec:
            raise ValueError(f"objectives: cannot parse {p!r}; expected name=REWARD_SPEC")
        if name in out:
            raise ValueError(f"objectives: objective {name!r} given twice")
        out[name] = spec
    return out
