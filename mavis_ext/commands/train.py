"""Train MAVIS value models by iterative KL-regularized soft policy iteration.

Example::

    mavis train --base-model ./base --objectives help=hf:./rm-help,harm=rewards.py:harmless \\
        --prompts prompts.jsonl --iterations 2 --beta 2 --zeta 0.5 --out runs/hh

Rerunning the same command after an interruption continues where it stopped (and rebuilds any
damaged file it can). Works unchanged under ``torchrun --nproc_per_node N -m mavis_ext.cli train ...``.
Every user error is one line on stderr naming the flag, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from ..training.config import TrainConfig

_D = TrainConfig()


def _floats(text):
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _beta(text):
    """``2.0`` or ``help=3,harm=2.5``."""
    if "=" not in text:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or name=number,..., got {text!r}") from None
    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot parse beta {part!r}") from None
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-model", required=True, help="base causal LM (hub id or local path)")
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: the base model's)")
    p.add_argument("--objectives", required=True,
                   help="name=REWARD_SPEC[,name=REWARD_SPEC...]; REWARD_SPEC: hf:PATH_OR_ID[:LOGIT_INDEX], "
                        "module.path:function or file.py:function (function(prompts, responses) -> tensor [N])")
    p.add_argument("--reward-template", default="{prompt}{response}",
                   help="how hf: reward models see the text (str.format with {prompt} and {response})")
    p.add_argument("--reward-max-length", type=int, default=None, help="truncate hf: reward inputs to this many tokens")
    p.add_argument("--allow-untrained-reward-head", action="store_true",
                   help="accept an hf: reward model whose score head is not in its checkpoint (randomly initialised, "
                        "e.g. a causal LM path): refused by default, since its scores are random")
    p.add_argument("--prompts", required=True, help="text file (one prompt per line) or JSONL ({\"prompt\": ...})")
    p.add_argument("--out", required=True, help="output directory (resumes if it holds a run)")
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--beta", type=_beta, default=_D.beta, help="tilt strength of the collection policy: a number or name=value,...")
    p.add_argument("--zeta", type=float, default=_D.zeta, help="KL weight in the labels")
    p.add_argument("--kl-label", choices=["path", "future"], default=_D.kl_label)
    p.add_argument("--rollout-weights", type=_floats, default=None,
                   help="collect iterations >= 1 with this weight vector (default: one policy per objective)")
    p.add_argument("--value-trunk", default=None, help="value-model backbone (default: a copy of the base model)")
    p.add_argument("--mode", choices=["prefix", "qhead"], default=_D.mode)
    p.add_argument("--shared-trunk", action=argparse.BooleanOptionalAction, default=_D.shared_trunk,
                   help="one value model with a head per objective (default) or one model per objective")
    p.add_argument("--lora", default=None, help='LoRA settings as JSON, e.g. \'{"r": 16, "lora_alpha": 32}\' (needs peft)')
    g = p.add_argument_group("rollout trees")
    g.add_argument("--root-branching", type=int, default=_D.root_branching)
    g.add_argument("--branching", type=int, default=_D.branching)
    g.add_argument("--depth", type=int, default=_D.depth)
    g.add_argument("--top-k", type=int, default=_D.top_k)
    g.add_argument("--temperature", type=float, default=_D.temperature)
    g.add_argument("--max-new-tokens", type=int, default=_D.max_new_tokens)
    g.add_argument("--ban-eos-first", action="store_true")
    g.add_argument("--prompts-per-shard", type=int, default=_D.prompts_per_shard)
    g.add_argument("--gen-batch-size", type=int, default=_D.gen_batch_size)
    g.add_argument("--prompts-per-iteration", type=int, default=None)
    g = p.add_argument_group("regression")
    g.add_argument("--optimizer", choices=["adafactor", "adamw"], default=_D.optimizer)
    g.add_argument("--lr", type=float, default=_D.lr)
    g.add_argument("--weight-decay", type=float, default=_D.weight_decay)
    g.add_argument("--epochs", type=int, default=_D.epochs)
    g.add_argument("--batch-size", type=int, default=_D.batch_size)
    g.add_argument("--grad-accum", type=int, default=_D.grad_accum)
    g.add_argument("--warmup", type=int, default=_D.warmup)
    g.add_argument("--warmup-warm-start", type=int, default=_D.warmup_warm_start)
    g.add_argument("--max-grad-norm", type=float, default=_D.max_grad_norm)
    g.add_argument("--fraction-bottom-nodes-to-keep", type=float, default=_D.fraction_bottom_nodes_to_keep)
    g.add_argument("--val-fraction", type=float, default=_D.val_fraction)
    g.add_argument("--eval-every", type=int, default=_D.eval_every)
    g.add_argument("--save-every", type=int, default=_D.save_every)
    g.add_argument("--log-every", type=int, default=_D.log_every)
    g.add_argument("--no-bf16", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--reward-batch-size", type=int, default=_D.reward_batch_size)
    p.add_argument("--seed", type=int, default=_D.seed)
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


# Library messages name Python arguments; on the command line the flags are what the user typed.
_FLAG_NAMES = (("value_trunk", "--value-trunk"), ("base_model", "--base-model"), ("tokenizer", "--tokenizer"),
               ("out_dir", "--out"), ("device", "--device"), ("lora", "--lora"), ("prompts", "--prompts"))


def _as_flags(msg: str) -> str:
    for name, flag in _FLAG_NAMES:
        if msg.startswith(name + ":") or msg.startswith(name + " "):
            return flag + msg[len(name):]
    return msg


def _lora(text):
    if not text:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--lora: not valid JSON ({e.msg} at character {e.pos}): {text!r}; expected e.g. "
                         "'{\"r\": 16, \"lora_alpha\": 32}'") from None
    if not isinstance(obj, dict):
        raise ValueError(f"--lora: expected a JSON object of LoRA settings, got {text!r}")
    return obj


def _checked_paths(args):
    """Local paths first: a typo fails at once, naming the flag, not after minutes of loading."""
    from ..model_paths import check_model_source
    from ..training.preflight import check_out_dir

    check_model_source(args.base_model, "--base-model")
    if args.tokenizer is not None:
        check_model_source(args.tokenizer, "--tokenizer")
    if args.value_trunk is not None:
        check_model_source(args.value_trunk, "--value-trunk")
    if not os.path.isfile(args.prompts):
        raise FileNotFoundError(f"--prompts: no such file: {args.prompts!r}")
    check_out_dir(args.out, "--out")


@contextlib.contextmanager
def _hf_bars(enabled: bool):
    """With --no-progress, also no transformers / huggingface_hub bars (loading and saving models);
    the previous state is restored afterwards."""
    if enabled:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    tf_on, hub_off = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    try:
        yield
    finally:
        if tf_on:
            hf_logging.enable_progress_bar()
        if not hub_off:
            enable_progress_bars()


def run(args) -> int:
    with _hf_bars(not args.no_progress):
        return _run(args)


def _run(args) -> int:
    from ..rewards import load_reward, parse_objectives
    from ..training import train_value_models
    from ..training.distributed import resolve_device

    try:
        lora = _lora(args.lora)
        device = resolve_device(args.device, "--device")
        _checked_paths(args)
        cfg = TrainConfig(
            out_dir=args.out, iterations=args.iterations, beta=args.beta, zeta=args.zeta, kl_label=args.kl_label,
            rollout_weights=args.rollout_weights, root_branching=args.root_branching, branching=args.branching,
            depth=args.depth, top_k=args.top_k, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
            ban_eos_first=args.ban_eos_first, prompts_per_shard=args.prompts_per_shard,
            gen_batch_size=args.gen_batch_size, prompts_per_iteration=args.prompts_per_iteration,
            value_trunk=args.value_trunk, mode=args.mode, shared_trunk=args.shared_trunk, lora=lora,
            optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, epochs=args.epochs,
            batch_size=args.batch_size, grad_accum=args.grad_accum, warmup=args.warmup,
            warmup_warm_start=args.warmup_warm_start, max_grad_norm=args.max_grad_norm,
            fraction_bottom_nodes_to_keep=args.fraction_bottom_nodes_to_keep, val_fraction=args.val_fraction,
            eval_every=args.eval_every, save_every=args.save_every, log_every=args.log_every, bf16=not args.no_bf16,
            reward_batch_size=args.reward_batch_size, seed=args.seed, device=args.device)
        specs = parse_objectives(args.objectives)
        if args.device is None and device.type == "cuda":
            # under torchrun every rank scores on its own GPU
            import torch

            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        rewards = {name: load_reward(spec, name, batch_size=args.reward_batch_size, template=args.reward_template,
                                     max_length=args.reward_max_length, device=device,
                                     allow_untrained_head=args.allow_untrained_reward_head)
                   for name, spec in specs.items()}
        dirs = train_value_models(args.base_model, args.tokenizer, args.prompts, rewards, cfg,
                                  progress=not args.no_progress)
    except (ValueError, TypeError, ImportError) as e:
        print(f"mavis train: error: {_as_flags(' '.join(str(e).split()))}", file=sys.stderr)
        return 2
    except OSError as e:   # FileNotFoundError from path checks, or the disk (full, gone read-only)
        msg = e.strerror if e.strerror and e.filename else str(e)
        where = f" ({e.filename})" if e.filename else ""
        print(f"mavis train: error: {_as_flags(' '.join(msg.split()))}{where}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    for it, d in enumerate(dirs):
        print(f"iteration {it}: {d}")
    return 0
