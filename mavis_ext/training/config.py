"""TrainConfig: every knob of value-model training (soft policy iteration), with checks.

Defaults follow the authors' code: trees with 4 root branches, then 2,
5 layers, top-k 40; Adafactor, lr 2e-5, weight decay 2e-3, 100 warmup steps (none when warm-
starting), batch 32, 2 epochs, half of the bottom nodes kept. Small worlds (the testbed) want a
larger lr and smaller trees; set them explicitly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

__all__ = ["TrainConfig"]

# Fields that may differ between a run and its resumption without changing any result:
# where the run lives and how long it goes on, logging and checkpoint frequency (resuming from a
# checkpoint is exact), and fields whose effect the run record covers in another way: the value
# trunk by its weights (not its path), the reward batch size inside each reward's description, the
# device in the record's environment (rounding only: a change warns, training/fingerprint.py).
_RESUME_FREE = {"out_dir", "iterations", "device", "log_every", "save_every", "reward_batch_size", "value_trunk"}


@dataclass
class TrainConfig:
    out_dir: str = "mavis_train"
    iterations: int = 1
    # --- policy used to collect iteration n >= 1 (pi ∝ pi_ref exp(beta * sum_i w_i V_i^{n-1}))
    beta: Union[float, Dict[str, float]] = 1.0      # one beta, or one per objective (per-objective rollouts)
    zeta: float = 0.0                                # KL weight in the labels: label = value - zeta * logratio
    kl_penalty_iteration0: bool = False              # paper: iteration 0 (pi_ref data) has no penalty
    # "future" (default): log-ratio of the tokens after the node, the soft value of soft policy
    # iteration, so each iteration improves J. "path": whole-path sum (the authors' code); with
    # zeta*beta = 1 it cancels the previous tilt and the iterates oscillate (measured on the testbed).
    kl_label: str = "future"
    rollout_weights: Optional[List[float]] = None    # None: one single-objective policy per objective (paper)
    normalize_values: bool = False
    # --- rollout trees
    root_branching: int = 4
    branching: int = 2
    depth: int = 5
    top_k: int = 40
    temperature: float = 1.0
    max_new_tokens: int = 64
    ban_eos_first: bool = False                      # forbid EOS as the first response token (layer 0)
    prompts_per_shard: int = 16                      # unit of resumption and of prompt sharding across ranks
    gen_batch_size: int = 256                        # rows per generate() call
    prompts_per_iteration: Optional[int] = None      # None: every iteration uses all prompts
    # --- value models
    value_trunk: Optional[str] = None                # None: the base model's weights
    mode: str = "prefix"                             # "prefix" | "qhead"
    shared_trunk: bool = True                        # one model with m heads, or one model per objective
    lora: Optional[Dict[str, Any]] = None
    # --- regression
    optimizer: str = "adafactor"                     # "adafactor" | "adamw"
    lr: float = 2e-5
    weight_decay: float = 2e-3
    epochs: int = 2
    batch_size: int = 32                             # paths per forward
    grad_accum: int = 1                              # forwards per optimizer step (global batch = batch_size*grad_accum, any world size)
    warmup: int = 100
    warmup_warm_start: int = 0                       # warmup steps when initialised from the previous iteration
    max_grad_norm: float = 1.0
    fraction_bottom_nodes_to_keep: float = 0.5
    val_fraction: float = 0.1
    eval_every: int = 50
    save_every: int = 50
    log_every: int = 10
    bf16: bool = True                                # autocast on CUDA only
    reward_batch_size: int = 16
    seed: int = 0
    device: Optional[str] = None

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        def pos_int(name, minimum=1):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"TrainConfig.{name}: expected an int >= {minimum}, got {v!r}")

        def num(name, lo=None, hi=None, lo_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
                raise ValueError(f"TrainConfig.{name}: expected a number, got {v!r}")
            if lo is not None and (v < lo or (lo_open and v == lo)):
                raise ValueError(f"TrainConfig.{name}: must be {'>' if lo_open else '>='} {lo}, got {v!r}")
            if hi is not None and v > hi:
                raise ValueError(f"TrainConfig.{name}: must be <= {hi}, got {v!r}")

        for n in ("iterations", "root_branching", "branching", "depth", "top_k", "max_new_tokens",
                  "prompts_per_shard", "gen_batch_size", "epochs", "batch_size", "grad_accum",
                  "eval_every", "save_every", "log_every", "reward_batch_size"):
            pos_int(n)
        for n in ("warmup", "warmup_warm_start", "seed"):
            pos_int(n, 0)
        if self.prompts_per_iteration is not None:
            pos_int("prompts_per_iteration")
        num("temperature", 0, lo_open=True)
        num("zeta", 0)
        num("lr", 0, lo_open=True)
        num("weight_decay", 0)
        num("max_grad_norm", 0)
        num("fraction_bottom_nodes_to_keep", 0, 1, lo_open=True)
        num("val_fraction", 0, 0.9)
        if isinstance(self.beta, dict):
            for k, v in self.beta.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
                    raise ValueError(f"TrainConfig.beta[{k!r}]: expected a number >= 0, got {v!r}")
        else:
            num("beta", 0)
        if self.kl_label not in ("path", "future"):
            raise ValueError(f"TrainConfig.kl_label: expected 'path' or 'future', got {self.kl_label!r}")
        if self.mode not in ("prefix", "qhead"):
            raise ValueError(f"TrainConfig.mode: expected 'prefix' or 'qhead', got {self.mode!r}")
        if self.optimizer not in ("adafactor", "adamw"):
            raise ValueError(f"TrainConfig.optimizer: expected 'adafactor' or 'adamw', got {self.optimizer!r}")
        if self.rollout_weights is not None:
            w = list(self.rollout_weights)
            if not w or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x != x or x < 0 for x in w):
                raise ValueError(f"TrainConfig.rollout_weights: expected non-negative numbers, got {self.rollout_weights!r}")
            self.rollout_weights = [float(x) for x in w]
        if self.lora is not None and not isinstance(self.lora, dict):
            raise ValueError(f"TrainConfig.lora: expected a dict of LoRA settings or None, got {self.lora!r}")
        return self

    def check_objectives(self, objectives: List[str]) -> None:
        if self.rollout_weights is not None and len(self.rollout_weights) != len(objectives):
            raise ValueError(f"TrainConfig.rollout_weights: {len(self.rollout_weights)} weights for "
                             f"{len(objectives)} objectives {objectives}")
        if isinstance(self.beta, dict):
            if self.rollout_weights is not None:
                raise ValueError("TrainConfig.beta: with rollout_weights (one mixed policy) beta must be one number")
            missing = [o for o in objectives if o not in self.beta]
            if missing:
                raise ValueError(f"TrainConfig.beta: no beta for objectives {missing}")

    def beta_for(self, objective: Optional[str]) -> float:
        if isinstance(self.beta, dict):
            if objective is None:
                raise ValueError("TrainConfig.beta: a per-objective dict needs rollout_weights=None")
            return float(self.beta[objective])
        return float(self.beta)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"TrainConfig: unknown fields {sorted(unknown)}")
        return cls(**d)

    def fingerprint(self) -> Dict[str, Any]:
        """Every field that changes results (compared on resume; see ``_RESUME_FREE``)."""
        return {k: v for k, v in self.to_dict().items() if k not in _RESUME_FREE}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
