"""End-to-end decoding speed: MAVIS guided decoding vs plain ``model.generate(do_sample=True, top_k=40)``
and, with ``--authors-src``, vs the MAVIS authors' own implementation on identical weights.

Sections (m = number of objectives):

1. vs plain HF generate. Every guided configuration is timed back to back with plain HF generate
   of the same base model and the ratio uses those adjacent runs (medians over ``--repeats``), so
   slow drifts of a shared machine cancel. Configurations: ``engine-plain`` (no value models),
   ``qhead`` (one trunk token per step), ``prefix-tree`` (K candidates in one tree-masked pass;
   ``separate`` trunks of one shape run stacked, as one batched pass), ``prefix-copies`` (the
   authors' K-copies scheme); ``-lean``: with ``lean_forward=True``; layouts ``shared`` (one
   trunk, m heads) or ``separate`` (m trunks). Then the scoring time per step, tree mask vs K
   copies (interleaved pairs).
2. vs the authors (``--authors-src PATH``, a checkout of github.com/5-Jeremy/MAVIS; never a
   dependency): their ``ValueGeneratorBatched`` tree-mask scoring and decoding loop, loaded with
   OUR value models' weights. Before timing, the tilted distributions of both are compared step by
   step (must agree to 1e-6, else exit 4). Then interleaved rounds (order rotating each round):
   theirs, ours (fp32 defaults), ours with ``lean_forward=True``, ours with bf16 trunk GEMMs, and
   (m = 2) ours with the trunks one after the other (the engine before stacking). Ratio = their
   time / ours, median over rounds. Their B = 8 is 8 copies of one prompt, ours 8 different
   prompts. Their code needs the transformers they pinned (4.49.0): run this script with that
   version first on PYTHONPATH (see ``authors_mavis.py``).
3. Certified pruning (``prune_tv``) vs exact scoring, on the benchmark's flat base model and on a
   peaked one (LM head scaled by ``--peak-scale``), with the mean number of candidates scored.
4. The targets table.

Default shapes (CPU, fp32, 2 threads, random weights): base Llama vocab 32000, hidden 512, 8 layers,
8 heads, intermediate 1376; value trunks hidden 256, 4 layers, 4 heads, intermediate 688; prompt
32 tokens, 64 new tokens, top_k 40. ``--gpu``: Llama-2-7B / TinyLlama-1.1B shapes in bf16 on CUDA.

Nothing is timed on an oversubscribed machine (``load_guard.py`` states the rule; exit 3).
``--smoke`` runs tiny shapes end to end without that guard; its numbers are not measurements.

    OMP_NUM_THREADS=2 python benchmarks/bench_decoding.py [--quick] [--targets] [--authors-src PATH] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import load_guard  # noqa: E402

TARGETS = {  # (mode, layout, m) -> minimum ratio to plain generate
    ("qhead", "shared", 2): 1.0,
    ("prefix-tree", "shared", 2): 0.65,
    ("prefix-tree", "separate", 2): 0.60,
}
AUTHOR_TARGETS = {(2, 1): 1.3, (2, 8): 1.2, (1, 1): 1.2, (1, 8): 1.2}  # (m, B) -> ours / authors


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


class Setup:
    """Models and shapes of one benchmark run."""

    def __init__(self, args):
        self.gpu, self.smoke = args.gpu, args.smoke
        self.device = torch.device("cuda" if self.gpu else "cpu")
        self.dtype = torch.bfloat16 if self.gpu else torch.float32
        if self.gpu:  # Llama-2-7B base, TinyLlama-1.1B trunks
            self.V = 32000
            self.base = llama(32000, 4096, 32, 32, 11008, 0, self.dtype, self.device)
            tshape = dict(vocab=32000, hidden=2048, layers=22, heads=32, inter=5632, kv_heads=4)
            self.batches = [1, 8, 32] if not args.quick else [1, 8]
        elif self.smoke:
            self.V = 1000
            self.base = llama(1000, 64, 2, 4, 128, 0, self.dtype, self.device)
            tshape = dict(vocab=1000, hidden=32, layers=2, heads=4, inter=64)
            self.batches = [1, 2]
        else:
            self.V = 32000
            self.base = llama(32000, 512, 8, 8, 1376, 0, self.dtype, self.device)
            tshape = dict(vocab=32000, hidden=256, layers=4, heads=4, inter=688)
            self.batches = [1, 8]
        self.max_m = 2 if (self.gpu or args.quick or self.smoke or args.targets) else 3
        self.trunks = [llama(seed=1 + i, dtype=self.dtype, device=self.device, **tshape) for i in range(self.max_m)]
        self.new_tokens = 4 if self.smoke else (16 if args.quick else args.new_tokens)
        self.prompt_len = 8 if self.smoke else args.prompt_len
        self.repeats = 1 if (args.quick or self.smoke) else args.repeats
        self.rounds = 1 if self.smoke else args.rounds
        self.K = 40
        g = torch.Generator().manual_seed(1234)
        self.prompts = {B: torch.randint(4, self.V, (B, self.prompt_len), generator=g).to(self.device)
                        for B in self.batches}


# ----------------------------------------------------------------------------- 1. vs plain HF generate
def vs_hf(S, args, guard):
    from mavis_ext.decoding import MavisGenerator

    configs = [("engine-plain", "-", 0)]
    if args.quick or S.gpu or args.targets or S.smoke:
        configs += [("qhead", "shared", 2), ("qhead-lean", "shared", 2), ("prefix-tree", "shared", 2),
                    ("prefix-tree", "separate", 2), ("prefix-tree-lean", "separate", 2),
                    ("prefix-copies", "shared", 1), ("prefix-copies", "separate", 2)]
    else:
        for m in (1, 2, 3):
            configs += [("qhead", "shared", m), ("prefix-tree", "shared", m)]
        for m in (2, 3):
            configs += [("qhead", "separate", m), ("prefix-tree", "separate", m)]
        configs += [("prefix-copies", "shared", 1), ("prefix-copies", "separate", 2), ("prefix-copies", "shared", 2),
                    ("qhead-lean", "shared", 2), ("prefix-tree-lean", "separate", 2)]
    if args.only:
        configs = [c for c in configs if c[0] in args.only.split(",")]
    rows = []
    for B in S.batches:
        ids = S.prompts[B]
        mask = torch.ones_like(ids)

        def hf():
            S.base.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=S.K,
                            max_new_tokens=S.new_tokens, pad_token_id=0)

        timed(hf, S.device)  # warm-up
        for mode, layout, m in configs:
            guard()
            vms = None if m == 0 else build_value_models(S.trunks, "qhead" if mode.startswith("qhead") else "prefix",
                                                         layout, m)
            gen = MavisGenerator(S.base, vms, None, prefix_scoring="copies" if mode == "prefix-copies" else "tree",
                                 lean_forward=mode.endswith("-lean"))
            w = None if m == 0 else [1.0 / m] * m

            def mav():
                return gen.generate(input_ids=ids, attention_mask=mask, weights=w, beta=1.0, top_k=S.K,
                                    max_new_tokens=S.new_tokens, seed=0, stop_at_eos=False, profile=True)

            mav()  # warm-up (builds a stack once)
            t_hf, t_mv, score, basems = [], [], [], []
            for _ in range(S.repeats):
                t_hf.append(timed(hf, S.device))
                box = {}
                t_mv.append(timed(lambda: box.update(out=mav()), S.device))
                tm = box["out"].timings
                score.append(1e3 * (tm.get("values", 0.0) + tm.get("advance", 0.0)) / S.new_tokens)
                basems.append(1e3 * tm.get("base", 0.0) / S.new_tokens)
            mh, mm = statistics.median(t_hf), statistics.median(t_mv)
            row = {"B": B, "mode": mode, "layout": layout, "m": m, "tokens_per_s": B * S.new_tokens / mm,
                   "hf_tokens_per_s": B * S.new_tokens / mh, "ratio": mh / mm,
                   "ratio_per_repeat": [a / b for a, b in zip(t_hf, t_mv)],
                   "hf_spread": (max(t_hf) - min(t_hf)) / mh, "score_ms_per_step": statistics.median(score),
                   "base_ms_per_step": statistics.median(basems), "target": TARGETS.get((mode, layout, m))}
            rows.append(row)
            print(f"B={B:<3d} {mode:<14s} {layout:<8s} m={m}  {row['tokens_per_s']:8.1f} tok/s  "
                  f"HF {row['hf_tokens_per_s']:8.1f} tok/s  ratio {row['ratio']:.3f}  "
                  f"scoring {row['score_ms_per_step']:6.2f} ms/step", flush=True)
            del gen, vms
    return rows


# ----------------------------------------------------------------------------- 2. vs the authors
def vs_authors(S, gu, guard):
    import authors_mavis
    from mavis_ext.decoding import MavisGenerator
    from mavis_ext.values import members_of

    out = {"rows": [], "checks": []}
    for m in (1, 2):
        vms = build_value_models(S.trunks, "prefix", "separate", m)  # m = 1: one trunk, one head
        theirs = authors_mavis.their_value_models(gu, members_of(vms))
        weights = [1.0 / m] * m
        gens = {"ours": MavisGenerator(S.base, vms, None),
                "ours-lean": MavisGenerator(S.base, vms, None, lean_forward=True),
                "ours-bf16": MavisGenerator(S.base, vms, None, trunk_gemm_dtype="bf16")}
        if m == 2:
            gens["ours-unstacked"] = MavisGenerator(S.base, vms, None, stack_trunks=False)
        gap = authors_mavis.distribution_gap(gu, gens["ours"], theirs, weights, S.prompts[S.batches[0]][:1],
                                             steps=min(8, S.new_tokens), beta=1.0, top_k=S.K)
        print(f"m={m}: tilted distributions, ours vs theirs, max |dp| over 8 steps = {gap:.2e}", flush=True)
        out["checks"].append({"m": m, "max_abs_dp": gap})
        if not gap <= 1e-6:
            sys.stderr.write(f"bench_decoding: ours and the authors' tilted distributions differ by {gap:.2e} "
                             "(> 1e-6) on identical weights; not timing a comparison of different things.\n")
            sys.exit(4)
        for B in S.batches:
            ids = S.prompts[B]
            kw = dict(input_ids=ids, weights=weights, beta=1.0, top_k=S.K, max_new_tokens=S.new_tokens, seed=0,
                      stop_at_eos=False)
            toks = {name: g.generate(**kw).sequences for name, g in gens.items()}  # also warm-up
            ref = toks["ours-unstacked"] if m == 2 else toks["ours"]  # the engine before stacking / lean
            same_fp32 = bool(torch.equal(toks["ours"], ref))
            same_lean = bool(torch.equal(toks["ours-lean"], ref))
            bf16_same = float((toks["ours-bf16"] == toks["ours"]).float().mean())
            dec = authors_mavis.AuthorsDecoder(gu, S.base, theirs, dict(zip(theirs, weights)), beta=1.0, top_k=S.K,
                                               max_new_tokens=S.new_tokens, B=B, device=S.device)
            their_prompt = ids[:1]
            runs = {"theirs": lambda: dec(their_prompt)}
            for name, g in gens.items():
                runs[name] = (lambda g=g: g.generate(**kw))
            runs["theirs"]()  # warm-up
            names = list(runs)
            times = {n: [] for n in names}
            for r in range(S.rounds):
                guard()
                order = names[r % len(names):] + names[: r % len(names)]
                for n in order:
                    times[n].append(timed(runs[n], S.device))
            med = {n: statistics.median(v) for n, v in times.items()}
            row = {"m": m, "B": B, "rounds": S.rounds, "theirs_tokens_per_s": B * S.new_tokens / med["theirs"],
                   "identical_tokens_stacked_vs_unstacked": same_fp32, "identical_tokens_lean": same_lean,
                   "bf16_same_token_fraction": bf16_same}
            for n in names[1:]:
                row[f"{n}_tokens_per_s"] = B * S.new_tokens / med[n]
                ratios = [a / b for a, b in zip(times["theirs"], times[n])]
                row[f"{n}_ratio"] = statistics.median(ratios)
                row[f"{n}_ratio_range"] = (min(ratios), max(ratios))
            out["rows"].append(row)
            print(f"m={m} B={B}: theirs {row['theirs_tokens_per_s']:.1f} tok/s; " + "; ".join(
                f"{n} {row[n + '_tokens_per_s']:.1f} tok/s = {row[n + '_ratio']:.2f}x" for n in names[1:]), flush=True)
        del gens, vms, theirs
    return out


# ----------------------------------------------------------------------------- 3. certified pruning
def value_range_for(vms, S):
    """Per-objective (lo, hi) from V(prefix) of every prefix of random token sequences, widened by
    half its width on each side. Not a proof, a calibration: the engine raises if a scored value
    falls outside, and this benchmark then reports that instead of a number."""
    from mavis_ext.values import members_of

    g = torch.Generator().manual_seed(99)
    ids = torch.randint(4, S.V, (8, S.prompt_len + S.new_tokens), generator=g).to(S.device)
    with torch.no_grad():
        vals = torch.cat([vm.token_values(ids) for vm in members_of(vms)], 1)  # [8, m, T]
    lo, hi = vals.amin((0, 2)).tolist(), vals.amax((0, 2)).tolist()
    return [(a - 0.5 * (b - a), b + 0.5 * (b - a)) for a, b in zip(lo, hi)]


def pruning_section(S, args, guard):
    from mavis_ext._value_scoring import StackedScorer
    from mavis_ext.decoding import MavisGenerator

    vms = build_value_models(S.trunks, "prefix", "separate", 2)  # two same-shape trunks: one StackedScorer
    with torch.no_grad():  # value spread like a trained model's (std --prune-value-std over prefixes)
        for vm in vms.models:
            vm.head_weight.mul_(args.prune_value_std)
    vr = value_range_for(vms, S)
    peaked = copy.deepcopy(S.base)
    with torch.no_grad():
        peaked.lm_head.weight.mul_(args.peak_scale)
    rows, widths = [], []
    orig = StackedScorer.member_values

    def counting(self, cand_ids, *a, **k):  # how many candidates each step scores
        widths.append(cand_ids.shape[1])
        return orig(self, cand_ids, *a, **k)

    for label, base in (("flat", S.base), (f"peaked (LM head x{args.peak_scale:g})", peaked)):
        gen = MavisGenerator(base, vms, None)
        for B in S.batches:
            kw = dict(input_ids=S.prompts[B], weights=[0.5, 0.5], beta=1.0, top_k=S.K, max_new_tokens=S.new_tokens,
                      seed=0, stop_at_eos=False)
            pkw = dict(kw, prune_tv=args.prune_tv, value_range=vr)
            widths.clear()
            StackedScorer.member_values = counting
            try:
                gen.generate(**pkw)
            except ValueError as e:
                print(f"pruning {label} B={B}: not measured ({e})", flush=True)
                continue
            finally:
                StackedScorer.member_values = orig
            mean_k = statistics.mean(widths)
            gen.generate(**kw)  # warm-up
            t_ex, t_pr = [], []
            for r in range(S.rounds):
                guard()
                pair = [(t_ex, kw), (t_pr, pkw)] if r % 2 == 0 else [(t_pr, pkw), (t_ex, kw)]
                for acc, k in pair:
                    acc.append(timed(lambda k=k: gen.generate(**k), S.device))
            sp = statistics.median([a / b for a, b in zip(t_ex, t_pr)])
            rows.append({"base": label, "B": B, "prune_tv": args.prune_tv, "mean_scored": mean_k, "K": S.K,
                         "speedup": sp, "value_range": vr})
            print(f"pruning {label} B={B} tv={args.prune_tv:g}: {mean_k:.1f} of {S.K} candidates scored per step, "
                  f"speed-up {sp:.2f}x", flush=True)
    return rows


# ----------------------------------------------------------------------------- 1b. tree mask vs K copies
def tree_vs_copies(S, guard):
    """Scoring time per step, tree mask vs K copies, measured back to back (pairs) so that the
    machine's drift cancels; the ratio is the median over pairs."""
    from mavis_ext.decoding import MavisGenerator

    out = []
    for B in S.batches:
        ids = S.prompts[B]
        for layout, m in [("shared", 1), ("separate", 2)]:
            vms = build_value_models(S.trunks, "prefix", layout, m)
            gens = {s: MavisGenerator(S.base, vms, None, prefix_scoring=s) for s in ("tree", "copies")}

            def score_ms(s):
                tm = gens[s].generate(input_ids=ids, weights=[1.0 / m] * m, beta=1.0, top_k=S.K,
                                      max_new_tokens=S.new_tokens, seed=0, stop_at_eos=False, profile=True).timings
                return 1e3 * (tm["values"] + tm["advance"]) / S.new_tokens

            score_ms("tree"), score_ms("copies")  # warm-up
            guard()
            pairs = [(score_ms("tree"), score_ms("copies")) for _ in range(max(S.repeats, 3))]
            tr = statistics.median(p[0] for p in pairs)
            cp = statistics.median(p[1] for p in pairs)
            out.append({"B": B, "layout": layout, "m": m, "copies_ms": cp, "tree_ms": tr,
                        "speedup": statistics.median(p[1] / p[0] for p in pairs)})
            print(f"B={B} scoring {layout} m={m}: tree {tr:.2f} ms/step, copies {cp:.2f} ms/step, "
                  f"copies/tree {out[-1]['speedup']:.2f}", flush=True)
    return out


# ----------------------------------------------------------------------------- 4. targets
def targets_table(res):
    lines = ["| target | B | measured | met |", "|---|---|---|---|"]
    auth = {(r["m"], r["B"]): r for r in (res.get("authors") or {}).get("rows", [])}
    for (m, B), tgt in AUTHOR_TARGETS.items():
        what = ("prefix, two separate value models" if m == 2 else "prefix, one objective") + f", ours / authors ≥ {tgt}"
        r = auth.get((m, B))
        if r is None:
            why = "B not in this run" if auth else "give --authors-src"
            lines.append(f"| {what} | {B} | not run ({why}) | |")
            continue
        yes = lambda ok: "yes" if ok else "NO"  # noqa: E731
        v, vl = r["ours_ratio"], r["ours-lean_ratio"]
        lines.append(f"| {what} | {B} | default {v:.2f}x (identical tokens: {yes(r['identical_tokens_stacked_vs_unstacked'])}); "
                     f"lean_forward {vl:.2f}x (identical tokens: {yes(r['identical_tokens_lean'])}); bf16 trunk GEMMs "
                     f"{r['ours-bf16_ratio']:.2f}x (same tokens {100 * r['bf16_same_token_fraction']:.0f}%) | "
                     f"default {'yes' if v >= tgt else 'MISS'}, lean {'yes' if vl >= tgt else 'MISS'} |")
    for r in res.get("rows", []):
        if (r["mode"], r["layout"], r["m"]) in (("qhead", "shared", 2), ("qhead-lean", "shared", 2)):
            lines.append(f"| Q-head, two objectives, shared trunk{', lean_forward' if r['mode'] == 'qhead-lean' else ''}, "
                         f"ours / plain generate ≥ 1.0 | {r['B']} | {r['ratio']:.2f}x | "
                         f"{'yes' if r['ratio'] >= 1.0 else 'MISS'} |")
    return "\n".join(lines)


def markdown(res) -> str:
    if "rows" not in res:
        return f"skipped: {res.get('skipped')}"
    m = res["meta"]
    out = []
    if m.get("smoke"):
        out += ["**SMOKE RUN (tiny shapes, load guard off): these numbers are not measurements.**", ""]
    out += [f"Machine: {m['cpu']} ({m['device']}), threads={m['threads']}, {m['dtype']}, torch {m['torch']}, "
            f"transformers {m['transformers']}, compiled ops={m['mavis_compiled_ops']}, {m['new_tokens']} new tokens, "
            f"prompt {m['prompt_len']}, top_k {m['top_k']}, {m['date']}, loadavg at start {m['loadavg']}; "
            f"{m['load_rule']}", "",
            "| B | mode | trunks | m | tokens/s | plain HF tokens/s | ratio | target | scoring ms/step | HF spread |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        tgt = "" if r["target"] is None else (f"≥{r['target']:.2f} " + ("ok" if r["ratio"] >= r["target"] else "MISS"))
        out.append(f"| {r['B']} | {r['mode']} | {r['layout']} | {r['m']} | {r['tokens_per_s']:.1f} | "
                   f"{r['hf_tokens_per_s']:.1f} | {r['ratio']:.3f} | {tgt} | {r['score_ms_per_step']:.2f} | "
                   f"{100 * r['hf_spread']:.0f}% |")
    if res.get("scoring_tree_vs_copies"):
        out += ["", "| B | trunks | m | K-copies scoring ms/step | tree-mask scoring ms/step | copies / tree, median of pairs |",
                "|---|---|---|---|---|---|"]
        for s in res["scoring_tree_vs_copies"]:
            out.append(f"| {s['B']} | {s['layout']} | {s['m']} | {s['copies_ms']:.2f} | {s['tree_ms']:.2f} | "
                       f"{s['speedup']:.2f} |")
    a = res.get("authors")
    if a:
        out += ["", "Against the authors' implementation (same weights; ratio = their time / ours, median of "
                    f"{a['rows'][0]['rounds'] if a['rows'] else 0} interleaved rounds, [min, max]); distribution "
                    "check: " + ", ".join(f"m={c['m']} max |dp| {c['max_abs_dp']:.1e}" for c in a["checks"]), "",
                "| m | B | authors tokens/s | ours tokens/s | ours / authors | ours, lean_forward | ours, trunks one by one | ours, bf16 trunk GEMMs | bf16: same tokens |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in a["rows"]:
            def cell(n):
                if f"{n}_ratio" not in r:
                    return "-"
                lo, hi = r[f"{n}_ratio_range"]
                return f"{r[n + '_ratio']:.2f}x [{lo:.2f}, {hi:.2f}]"
            out.append(f"| {r['m']} | {r['B']} | {r['theirs_tokens_per_s']:.1f} | {r['ours_tokens_per_s']:.1f} | "
                       f"{cell('ours')} | {cell('ours-lean')} | {cell('ours-unstacked')} | {cell('ours-bf16')} | "
                       f"{100 * r['bf16_same_token_fraction']:.0f}% |")
    if res.get("pruning"):
        out += ["", "| certified pruning | B | prune_tv | candidates scored per step (of K) | speed-up vs exact |",
                "|---|---|---|---|---|"]
        for r in res["pruning"]:
            out.append(f"| {r['base']} | {r['B']} | {r['prune_tv']:g} | {r['mean_scored']:.1f} of {r['K']} | "
                       f"{r['speedup']:.2f}x |")
    out += ["", targets_table(res)]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16 new tokens, 1 repeat, m <= 2, fewer configurations")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes, 4 tokens, no load guard: checks that everything runs; not a measurement")
    p.add_argument("--gpu", action="store_true", help="Llama-2-7B / TinyLlama shapes in bf16 on CUDA")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds against the authors and for pruning")
    p.add_argument("--targets", action="store_true",
                   help="only the configurations with targets (and the K-copies baselines), full length")
    p.add_argument("--authors-src", default=None, help="checkout of github.com/5-Jeremy/MAVIS to compare against")
    p.add_argument("--prune-tv", type=float, default=1e-3)
    p.add_argument("--peak-scale", type=float, default=40.0, help="section 3: LM head scale of the peaked base")
    p.add_argument("--prune-value-std", type=float, default=0.25,
                   help="section 3: scale of the value heads (values' std over prefixes, about)")
    p.add_argument("--no-pruning", dest="pruning", action="store_false", help="skip section 3")
    p.add_argument("--no-compare", dest="compare", action="store_false",
                   help="skip the interleaved tree-vs-copies scoring-time comparison")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--only", default=None, help="comma-separated modes for section 1 (engine-plain,qhead,prefix-tree,prefix-copies)")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        print("--gpu: CUDA is not available here; nothing to run.")
        return 0
    if not args.gpu:
        torch.set_num_threads(args.threads)
    rule = load_guard.rule(args.threads) if not args.gpu else "GPU run: CPU load not checked"
    print(("SMOKE RUN, load guard off. " if args.smoke else "") + rule, flush=True)
    load0 = os.getloadavg()[0]
    if not (args.smoke or args.gpu):
        load_guard.require_quiet(args.threads, started=False)

    def guard():
        if not (args.smoke or args.gpu):
            load_guard.require_quiet(args.threads, started=True)

    from mavis_ext import HAS_C

    gu = None
    if args.authors_src:  # fail before any timing when their code cannot run here
        import authors_mavis

        gu = authors_mavis.load_authors(args.authors_src)
    S = Setup(args)
    res = {"rows": vs_hf(S, args, guard)}
    res["scoring_tree_vs_copies"] = tree_vs_copies(S, guard) if args.compare else []
    if args.authors_src:
        res["authors"] = vs_authors(S, gu, guard)
    if args.pruning and not S.gpu:
        res["pruning"] = pruning_section(S, args, guard)
    res["meta"] = {"device": torch.cuda.get_device_name() if S.gpu else platform.processor() or platform.machine(),
                   "cpu": _cpu_name(), "threads": torch.get_num_threads() if not S.gpu else None,
                   "dtype": str(S.dtype), "torch": torch.__version__, "transformers": _tf_version(),
                   "mavis_compiled_ops": HAS_C, "new_tokens": S.new_tokens, "prompt_len": S.prompt_len, "top_k": S.K,
                   "repeats": S.repeats, "rounds": S.rounds, "smoke": args.smoke, "load_rule": rule,
                   "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "loadavg": round(load0, 2)}
    print()
    print(markdown(res))
    print()
    print(json.dumps(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
