"""End-to-end decoding speed: MAVIS guided decoding vs plain ``model.generate(do_sample=True, top_k=40)``.

Every guided configuration is timed back to back with plain HF generate of the same base model, and
the ratio uses those adjacent runs (medians over ``--repeats``), so slow drifts of a shared machine
cancel. Configurations (m = number of objectives):

* ``engine-plain``: the engine without value models (its own overhead vs HF generate);
* ``qhead``: Q-head value models, one trunk token per step (fused ``guided_sample`` for one trunk);
* ``prefix-tree``: prefix value models, K candidates in one pass with a tree mask;
* ``prefix-copies``: the MAVIS authors' scheme, K cached copies of the sequence;
* layouts: ``shared`` (one trunk, m heads) or ``separate`` (m trunks with one head each).

Default shapes (CPU, fp32, 2 threads, random weights) are those the MAVIS authors' code was measured
on: base Llama vocab 32000, hidden 512, 8 layers, 8 heads, intermediate 1376; value trunks hidden 256,
4 layers, 4 heads, intermediate 688; prompt 32 tokens, 64 new tokens, top_k 40.
``--gpu``: base shaped like Llama-2-7B and trunks like TinyLlama-1.1B (bf16, B in {1, 8, 32}); runs only
when CUDA is available.

    OMP_NUM_THREADS=2 python benchmarks/bench_decoding.py [--quick] [--gpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

TARGETS = {  # (mode, layout, m) -> minimum ratio to plain generate (issue 4)
    ("qhead", "shared", 2): 0.75,
    ("prefix-tree", "shared", 2): 0.65,
    ("prefix-tree", "separate", 2): 0.60,
}
AUTHORS = {  # measured on this machine with the authors' code, B = 1
    ("prefix-copies", "shared", 1): 0.62,
    ("prefix-tree", "shared", 1): 0.73,
    ("prefix-copies", "separate", 2): 0.45,
    ("prefix-tree", "separate", 2): 0.60,
}


def llama(vocab, hidden, layers, heads, inter, seed, dtype, device, kv_heads=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads or heads, intermediate_size=inter, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=None, pad_token_id=0, tie_word_embeddings=False)
    old = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def build_value_models(trunks, mode, layout, m):
    from mavis_ext.values import ValueEnsemble, ValueModel

    d = trunks[0].config.hidden_size
    if layout == "shared":
        return ValueModel.from_trunk(trunks[0], [f"o{i}" for i in range(m)], mode, init_std=d ** -0.5)
    return ValueEnsemble([ValueModel.from_trunk(trunks[i], [f"o{i}"], mode, init_std=d ** -0.5) for i in range(m)])


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def run(args):
    from mavis_ext import HAS_C
    from mavis_ext.decoding import MavisGenerator

    gpu = args.gpu
    if gpu and not torch.cuda.is_available():
        print("--gpu: CUDA is not available here; nothing to run.")
        return {"skipped": "no CUDA"}
    device = torch.device("cuda" if gpu else "cpu")
    if not gpu:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if gpu else torch.float32
    if gpu:  # Llama-2-7B base, TinyLlama-1.1B trunks
        base = llama(32000, 4096, 32, 32, 11008, 0, dtype, device)
        tshape = dict(vocab=32000, hidden=2048, layers=22, heads=32, inter=5632, kv_heads=4)
        batches = [1, 8, 32] if not args.quick else [1, 8]
    else:
        base = llama(32000, 512, 8, 8, 1376, 0, dtype, device)
        tshape = dict(vocab=32000, hidden=256, layers=4, heads=4, inter=688)
        batches = [1, 8]
    max_m = 2 if (gpu or args.quick) else 3
    trunks = [llama(seed=1 + i, dtype=dtype, device=device, **tshape) for i in range(max_m)]
    new_tokens = 16 if args.quick else args.new_tokens
    repeats = 1 if args.quick else args.repeats
    K = 40

    configs = [("engine-plain", "-", 0)]
    if args.quick or gpu or args.targets:
        configs += [("qhead", "shared", 2), ("prefix-tree", "shared", 2), ("prefix-tree", "separate", 2),
                    ("prefix-copies", "shared", 1), ("prefix-copies", "separate", 2)]
    else:
        for m in (1, 2, 3):
            configs += [("qhead", "shared", m), ("prefix-tree", "shared", m)]
        for m in (2, 3):
            configs += [("qhead", "separate", m), ("prefix-tree", "separate", m)]
        configs += [("prefix-copies", "shared", 1), ("prefix-copies", "separate", 2),
                    ("prefix-copies", "shared", 2)]
    if args.only:
        configs = [c for c in configs if c[0] in args.only.split(",")]

    rows = []
    g = torch.Generator().manual_seed(1234)
    for B in batches:
        ids = torch.randint(4, 32000, (B, args.prompt_len), generator=g).to(device)
        mask = torch.ones_like(ids)

        def hf():
            base.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=K, max_new_tokens=new_tokens,
                          pad_token_id=0)

        timed(hf, device)  # warm-up
        for mode, layout, m in configs:
            vms = None if m == 0 else build_value_models(trunks, "qhead" if mode == "qhead" else "prefix", layout, m)
            gen = MavisGenerator(base, vms, None, prefix_scoring="copies" if mode == "prefix-copies" else "tree")
            w = None if m == 0 else [1.0 / m] * m

            def mav():
                return gen.generate(input_ids=ids, attention_mask=mask, weights=w, beta=1.0, top_k=K,
                                    max_new_tokens=new_tokens, seed=0, stop_at_eos=False, profile=True)

            mav()  # warm-up
            t_hf, t_mv, score, basems = [], [], [], []
            for _ in range(repeats):
                t_hf.append(timed(hf, device))
                box = {}
                t_mv.append(timed(lambda: box.update(out=mav()), device))
                tm = box["out"].timings  # profile=True only adds perf_counter calls on CPU
                score.append(1e3 * (tm.get("values", 0.0) + tm.get("advance", 0.0)) / new_tokens)
                basems.append(1e3 * tm.get("base", 0.0) / new_tokens)
            score_ms, base_ms = statistics.median(score), statistics.median(basems)
            mh, mm = statistics.median(t_hf), statistics.median(t_mv)
            row = {"B": B, "mode": mode, "layout": layout, "m": m, "tokens_per_s": B * new_tokens / mm,
                   "hf_tokens_per_s": B * new_tokens / mh, "ratio": mh / mm,
                   "ratio_per_repeat": [a / b for a, b in zip(t_hf, t_mv)],
                   "hf_spread": (max(t_hf) - min(t_hf)) / mh, "score_ms_per_step": score_ms,
                   "base_ms_per_step": base_ms, "target": TARGETS.get((mode, layout, m)),
                   "authors_B1": AUTHORS.get((mode, layout, m)) if B == 1 else None}
            rows.append(row)
            print(f"B={B:<3d} {mode:<14s} {layout:<8s} m={m}  {row['tokens_per_s']:8.1f} tok/s  "
                  f"HF {row['hf_tokens_per_s']:8.1f} tok/s  ratio {row['ratio']:.3f}  "
                  f"scoring {score_ms:6.2f} ms/step", flush=True)
            del gen, vms
    # Scoring time per step, tree mask vs K copies, measured back to back (pairs) so that the
    # machine's drift cancels; the ratio is the median over pairs.
    score_cmp = []
    for B in batches if args.compare else []:
        ids = torch.randint(4, 32000, (B, args.prompt_len), generator=g).to(device)
        for layout, m in [("shared", 1), ("separate", 2)]:
            vms = build_value_models(trunks, "prefix", layout, m)
            gens = {s: MavisGenerator(base, vms, None, prefix_scoring=s) for s in ("tree", "copies")}

            def score_ms(s):
                tm = gens[s].generate(input_ids=ids, weights=[1.0 / m] * m, beta=1.0, top_k=K,
                                      max_new_tokens=new_tokens, seed=0, stop_at_eos=False, profile=True).timings
                return 1e3 * (tm["values"] + tm["advance"]) / new_tokens

            score_ms("tree"), score_ms("copies")  # warm-up
            pairs = [(score_ms("tree"), score_ms("copies")) for _ in range(max(repeats, 3))]
            tr = statistics.median(p[0] for p in pairs)
            cp = statistics.median(p[1] for p in pairs)
            score_cmp.append({"B": B, "layout": layout, "m": m, "copies_ms": cp, "tree_ms": tr,
                              "speedup": statistics.median(p[1] / p[0] for p in pairs)})
            print(f"B={B} scoring {layout} m={m}: tree {tr:.2f} ms/step, copies {cp:.2f} ms/step, "
                  f"copies/tree {score_cmp[-1]['speedup']:.2f}", flush=True)
    meta = {"device": torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine(),
            "cpu": _cpu_name(), "threads": torch.get_num_threads() if not gpu else None,
            "dtype": str(dtype), "torch": torch.__version__, "transformers": _tf_version(),
            "mavis_compiled_ops": HAS_C, "new_tokens": new_tokens, "prompt_len": args.prompt_len, "top_k": K,
            "repeats": repeats, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None}
    return {"meta": meta, "rows": rows, "scoring_tree_vs_copies": score_cmp}


def _cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _tf_version():
    import transformers

    return transformers.__version__


def markdown(res) -> str:
    if "rows" not in res:
        return f"skipped: {res.get('skipped')}"
    m = res["meta"]
    out = [f"Machine: {m['cpu']} ({m['device']}), threads={m['threads']}, {m['dtype']}, torch {m['torch']}, "
           f"transformers {m['transformers']}, compiled ops={m['mavis_compiled_ops']}, {m['new_tokens']} new tokens, "
           f"prompt {m['prompt_len']}, top_k {m['top_k']}, median of {m['repeats']}, {m['date']}, "
           f"loadavg {m['loadavg']}", "",
           "| B | mode | trunks | m | tokens/s | plain HF tokens/s | ratio | target | authors (B=1) | scoring ms/step | HF spread |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        tgt = "" if r["target"] is None else (f"≥{r['target']:.2f} " + ("ok" if r["ratio"] >= r["target"] else "MISS"))
        au = "" if r["authors_B1"] is None else f"{r['authors_B1']:.2f}"
        out.append(f"| {r['B']} | {r['mode']} | {r['layout']} | {r['m']} | {r['tokens_per_s']:.1f} | "
                   f"{r['hf_tokens_per_s']:.1f} | {r['ratio']:.3f} | {tgt} | {au} | {r['score_ms_per_step']:.2f} | "
                   f"{100 * r['hf_spread']:.0f}% |")
    if res["scoring_tree_vs_copies"]:
        out += ["", "| B | trunks | m | K-copies scoring ms/step | tree-mask scoring ms/step | copies / tree, median of pairs (target ≥ 2.5) |",
                "|---|---|---|---|---|---|"]
        for s in res["scoring_tree_vs_copies"]:
            out.append(f"| {s['B']} | {s['layout']} | {s['m']} | {s['copies_ms']:.2f} | {s['tree_ms']:.2f} | "
                       f"{s['speedup']:.2f} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16 new tokens, 1 repeat, m <= 2, fewer configurations")
    p.add_argument("--gpu", action="store_true", help="Llama-2-7B / TinyLlama shapes in bf16 on CUDA")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--targets", action="store_true",
                   help="only the configurations with targets (and the K-copies baselines), full length")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--only", default=None, help="comma-separated modes to run (engine-plain,qhead,prefix-tree,prefix-copies)")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--no-compare", dest="compare", action="store_false",
                   help="skip the interleaved tree-vs-copies scoring-time comparison")
    args = p.parse_args(argv)
    res = run(args)
    print()
    print(markdown(res))
    print()
    print(json.dumps(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
