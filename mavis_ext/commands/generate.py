"""Guided generation with value models: print texts, KL to the base model, rewards and tokens/s.

Example::

    mavis generate --base-model ./base --value-model runs/hh/iter_1 --weights 0.7,0.3 --beta 2 \\
        --prompt "Human: hi. Assistant:" --reward help=hf:./rm-help --reward harm=rewards.py:harmless

Without ``--value-model`` (or with ``--beta 0``) this is plain top-k sampling of the base model.
``--weights`` is required with ``--value-model`` (one per objective, or name=w,...), as ``weights``
is for ``MavisGenerator.generate``. A model path that does not exist, a corrupted value model or a
bad argument ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time

from ..model_paths import check_model_source


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-model", required=True, help="hub id or local path of the base causal LM")
    p.add_argument("--tokenizer", default=None, help="tokenizer id/path (default: the base model's)")
    p.add_argument("--value-model", action="append", default=[], metavar="PATH",
                   help="saved value model or ensemble directory (repeat for several; objectives concatenate)")
    p.add_argument("--weights", default=None,
                   help="required with --value-model: comma-separated weights, one per objective in order, "
                        "or name=w,... (objectives not named get 0)")
    p.add_argument("--beta", type=float, default=1.0, help="tilt strength (>= 0; 0 = plain sampling)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", default=None, help="a prompt (repeat for several)")
    src.add_argument("--prompts-file", default=None,
                     help="text file with one prompt per line, or .jsonl with a 'prompt' field per line")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="model dtype (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--normalize-values", action="store_true", help="paper v1: min-max values over the K candidates")
    p.add_argument("--ban-eos-first", action="store_true", help="forbid EOS as the first new token")
    p.add_argument("--reward", action="append", default=[], metavar="NAME=SPEC",
                   help="score outputs: hf:PATH[:LOGIT], module:function or file.py:function (repeatable)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write one JSON line per prompt here ('-' = stdout)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (neither ours nor transformers' model-loading bars)")


def _read_prompts(args) -> list:
    if args.prompt is not None:
        return list(args.prompt)
    path = args.prompts_file
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            if path.endswith(".jsonl"):
                obj = json.loads(line)
                if "prompt" not in obj:
                    raise ValueError(f"--prompts-file: line {i + 1} of {path} has no 'prompt' field")
                out.append(obj["prompt"])
            else:
                out.append(line.rstrip("\n").replace("\\n", "\n"))
    if not out:
        raise ValueError(f"--prompts-file: {path} holds no prompts")
    return out


def _weights(text, objectives):
    if not objectives:
        if text:
            raise ValueError("--weights: given without --value-model")
        return None
    if text is None:
        m = len(objectives)
        raise ValueError(f"--weights: required with --value-model, one per objective ({', '.join(objectives)}), "
                         f"e.g. --weights {','.join([format(1 / m, '.4g')] * m)}")
    if "=" in text:
        w = {}
        for part in text.split(","):
            k, _, v = part.partition("=")
            if k.strip() not in objectives:
                raise ValueError(f"--weights: unknown objective {k.strip()!r}; objectives are {objectives}")
            try:
                w[k.strip()] = float(v)
            except ValueError:
                raise ValueError(f"--weights: {k.strip()}={v!r} is not a number") from None
        return [w.get(o, 0.0) for o in objectives]
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--weights: expected comma-separated numbers, got {text!r}") from None
    if len(vals) != len(objectives):
        raise ValueError(f"--weights: expected {len(objectives)} weights (objectives {objectives}), got {len(vals)}")
    return vals


def _rewards(specs, device):
    if not specs:
        return {}
    try:
        from ..rewards import load_reward
    except ImportError:
        print("note: mavis_ext.rewards is not available; --reward ignored", file=sys.stderr)
        return {}
    out = {}
    for s in specs:
        name, eq, spec = s.partition("=")
        if not eq or not name.strip() or not spec.strip():
            raise ValueError(f"--reward: expected NAME=SPEC, got {s!r}")
        out[name.strip()] = load_reward(spec.strip(), name.strip(), device=device)
    return out


class _LoadError(Exception):
    """A model folder that exists but cannot be loaded (corrupted or truncated files)."""


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _value_model_dirs(paths) -> list:
    """Every --value-model is a local folder (value models are never hub ids): check them all before
    loading anything."""
    out = []
    for p in paths:
        d = os.path.expanduser(p)
        if not os.path.isdir(d):
            what = "is a file, not a value model folder" if os.path.exists(d) else "no such directory"
            raise FileNotFoundError(f"--value-model: {what}: {p!r} (give the folder written by training, "
                                    "e.g. RUN/iter_001/model)")
        out.append(d)
    return out


def _load(what: str, path: str, fn, *a, **kw):
    """``fn(*a, **kw)``; any failure becomes one line naming the flag and the path."""
    try:
        return fn(*a, **kw)
    except (ValueError, TypeError, FileNotFoundError) as e:
        msg = _one_line(e)
        raise _LoadError(f"{what}: {msg}" if path in msg else f"{what} {path}: {msg}") from None
    except Exception as e:  # noqa: BLE001 -- corrupted files raise library-specific errors
        raise _LoadError(f"{what} {path}: cannot load ({type(e).__name__}: {_one_line(e)})") from None


@contextlib.contextmanager
def _quiet_loading(on: bool):
    """With --no-progress, silence transformers' / huggingface_hub's loading bars; restore after."""
    if not on:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as tf_logging

    tf_was_on, hub_was_off = tf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if tf_was_on:
            tf_logging.enable_progress_bar()
        (disable_progress_bars if hub_was_off else enable_progress_bars)()


def run(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..decoding import MavisGenerator
    from ..values import load_value_models

    try:
        prompts = _read_prompts(args)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(args.dtype)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        if args.batch_size < 1:
            raise ValueError(f"--batch-size: must be >= 1, got {args.batch_size}")
        # Cheap checks before any model is loaded (generate() checks them again, naming the argument)
        if not (args.beta >= 0.0) or math.isinf(args.beta):
            raise ValueError(f"--beta: must be a finite number >= 0, got {args.beta}")
        if not args.temperature > 0.0:
            raise ValueError(f"--temperature: must be > 0, got {args.temperature}")
        if not (0.0 < args.top_p <= 1.0):
            raise ValueError(f"--top-p: must be in (0, 1], got {args.top_p}")
        if args.max_new_tokens < 0:
            raise ValueError(f"--max-new-tokens: must be >= 0, got {args.max_new_tokens}")
        # Paths first, all of them: a typo fails at once, before any model is loaded.
        base_src = check_model_source(args.base_model, "--base-model")
        tok_src = check_model_source(args.tokenizer, "--tokenizer") if args.tokenizer else base_src
        vm_dirs = _value_model_dirs(args.value_model)
        with _quiet_loading(args.no_progress):
            tok = _load("--tokenizer" if args.tokenizer else "--base-model", tok_src, AutoTokenizer.from_pretrained,
                        tok_src)
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            base = _load("--base-model", base_src, AutoModelForCausalLM.from_pretrained, base_src, dtype=dtype)
            base = base.to(device).eval()
            vms = None
            if vm_dirs:
                # one folder at a time, so that an error names the folder it comes from
                vms = load_value_models([_load("--value-model", d, load_value_models, d, base_tokenizer=tok,
                                               torch_dtype=dtype, device=device) for d in vm_dirs])
                vms.eval()
            gen = MavisGenerator(base, vms, tok)
            weights = _weights(args.weights, gen.objectives)
            rewards = _rewards(args.reward, device)  # hf: reward models load here too
    except (ValueError, TypeError, FileNotFoundError, OSError, _LoadError) as e:
        print(f"mavis generate: error: {_one_line(e)}", file=sys.stderr)
        return 2

    results = []
    n_tokens, t_gen = 0, 0.0
    bar = None
    if not args.no_progress and len(prompts) > args.batch_size:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc="mavis generate", unit="prompt")
    try:
        for i in range(0, len(prompts), args.batch_size):
            chunk = prompts[i : i + args.batch_size]
            t0 = time.perf_counter()
            out = gen.generate(chunk, weights=weights, beta=args.beta, top_k=args.top_k, temperature=args.temperature,
                               top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed + i,
                               normalize_values=args.normalize_values, ban_eos_first=args.ban_eos_first,
                               progress=bar is None and not args.no_progress and args.max_new_tokens >= 256)
            t_gen += time.perf_counter() - t0
            n_tokens += int(out.lengths.sum())
            scores = {name: fn(chunk, out.texts) for name, fn in rewards.items()}
            for b, p in enumerate(chunk):
                results.append({"prompt": p, "response": out.texts[b], "new_tokens": int(out.lengths[b]),
                                "finished": bool(out.finished[b]), "kl": float(out.kl[b]),
                                "rewards": {k: float(v[b]) for k, v in scores.items()}})
            if bar is not None:
                bar.update(len(chunk))
    except (ValueError, TypeError) as e:
        print(f"mavis generate: error: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()

    if not args.quiet:
        for r in results:
            print(f"### prompt: {r['prompt']}")
            print(r["response"])
            extra = "".join(f"  {k}={v:.4f}" for k, v in r["rewards"].items())
            print(f"--- tokens={r['new_tokens']}  kl={r['kl']:.4f}{extra}\n")
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    summary = {"prompts": len(results), "objectives": gen.objectives, "weights": weights, "beta": args.beta,
               "mean_kl": mean([r["kl"] for r in results]), "new_tokens": n_tokens,
               "tokens_per_s": n_tokens / t_gen if t_gen > 0 else math.nan,
               "mean_rewards": {k: mean([r["rewards"][k] for r in results]) for k in rewards},
               "device": str(device), "dtype": str(dtype).replace("torch.", "")}
    rw = "".join(f"  mean {k}={v:.4f}" for k, v in summary["mean_rewards"].items())
    print(f"summary: {summary['prompts']} prompts, {n_tokens} new tokens, {summary['tokens_per_s']:.1f} tokens/s, "
          f"mean KL {summary['mean_kl']:.4f}{rw}")
    if args.json:
        lines = [json.dumps(r) for r in results] + [json.dumps({"summary": summary})]
        if args.json == "-":
            print("\n".join(lines))
        else:
            with open(args.json, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    return 0
