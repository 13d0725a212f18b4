"""Reward adapters: everything becomes ``fn(prompts: list[str], responses: list[str]) -> Tensor[N]``.

Sources of a reward:
- a Python callable with that signature (returning a tensor, NumPy array or list of N numbers);
- a Hugging Face sequence classifier (hub id or local path): ``HFSequenceClassifierReward``;
- a spec string (CLI): ``hf:PATH_OR_ID[:LOGIT_INDEX]``, ``module.path:function`` or
  ``/path/to/file.py:function``.

Every output is validated (shape ``[N]``, finite) and a failure names the objective, so a broken
reward stops a run before hours of rollouts are labelled with garbage.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable, List, Optional, Sequence, Union

import torch

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

    def __init__(self, fn: Callable, name: str = "reward"):
        if not callable(fn):
            raise TypeError(f"reward {name!r}: expected a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name

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
    that classifiers that pool the last non-pad token read the right position."""

    def __init__(self, model: Union[str, "torch.nn.Module"], *, tokenizer=None, logit_index: int = 0,
                 template: str = "{prompt}{response}", batch_size: int = 16, device=None,
                 max_length: Optional[int] = None, torch_dtype=None, name: str = "reward"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = name
        try:
            template.format(prompt="", response="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"reward {name!r}: template {template!r} must only use {{prompt}} and {{response}} ({e})") from None
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"reward {name!r}: batch_size must be an int >= 1, got {batch_size!r}")
        self.template, self.batch_size, self.max_length = template, batch_size, max_length
        if isinstance(model, str):
            try:
                kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
                self.model = AutoModelForSequenceClassification.from_pretrained(model, **kw)
                self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model)
            except Exception as e:  # noqa: BLE001 - turn a long HF trace into one line naming the objective
                raise ValueError(f"reward {name!r}: cannot load Hugging Face sequence classifier {model!r}: "
                                 f"{type(e).__name__}: {e}") from e
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


def _load_function(spec: str, name: str) -> Callable:
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
    return fn


def load_reward(spec, name: str = "reward", *, device=None, batch_size: int = 16,
                template: str = "{prompt}{response}", max_length: Optional[int] = None) -> Callable:
    """A checked reward callable from a spec string, an ``HFSequenceClassifierReward`` or a callable."""
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
                                          device=device, max_length=max_length, name=name)
    return CallableReward(_load_function(spec, name), name)


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
