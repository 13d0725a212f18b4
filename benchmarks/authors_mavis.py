"""Run the MAVIS authors' decoding code (github.com/5-Jeremy/MAVIS, ``Mavis/utils/gen_utils.py``)
side by side with ours, for ``bench_decoding.py --authors-src PATH``.

Nothing of theirs is part of this repository: the user passes the path of a checkout, and their
module is imported from there. Their code needs the transformers they pinned (4.49.0: it assigns
``DynamicCache.key_cache`` and calls ``LlamaModel._prepare_4d_causal_attention_mask_with_cache_position``);
``load_authors`` says so clearly when the running transformers lacks either.

Their value model (``LlamaValueModel``, a ``LlamaForSequenceClassification`` whose ``score`` layer
has no bias) is built from OUR value models' weights, so both implementations score with identical
weights; ``distribution_gap`` then checks that both give the same tilted distributions, step by
step along one token path, before anything is timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import torch

__all__ = ["load_authors", "their_value_models", "AuthorsDecoder", "distribution_gap"]


def load_authors(src: str):
    """Their ``gen_utils`` module from a checkout at ``src`` (the repository root or its ``Mavis``
    folder). Exits with a one-line reason when it cannot run here."""
    cands = [os.path.join(src, "Mavis", "utils", "gen_utils.py"), os.path.join(src, "utils", "gen_utils.py")]
    path = next((p for p in cands if os.path.isfile(p)), None)
    if path is None:
        sys.exit(f"--authors-src: no Mavis/utils/gen_utils.py under {src!r} (give a checkout of the MAVIS "
                 "authors' repository)")
    import transformers
    from transformers import DynamicCache, LlamaModel

    missing = []
    if not hasattr(LlamaModel, "_prepare_4d_causal_attention_mask_with_cache_position"):
        missing.append("LlamaModel._prepare_4d_causal_attention_mask_with_cache_position")
    if not isinstance(getattr(DynamicCache(), "key_cache", None), list):
        missing.append("DynamicCache.key_cache lists")
    if missing:
        sys.exit(f"--authors-src: the authors' code cannot run with transformers {transformers.__version__} "
                 f"(it needs {', '.join(missing)}; their requirements pin 4.49.0). Put such a transformers first "
                 "on PYTHONPATH, e.g. pip install --target /tmp/tf449 transformers==4.49.0 tokenizers==0.21.1 "
                 "huggingface-hub==0.30.2 requests, then PYTHONPATH=/tmp/tf449 python benchmarks/bench_decoding.py ...")
    spec = importlib.util.spec_from_file_location("mavis_authors_gen_utils", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@torch.no_grad()
def their_value_models(gu, value_models) -> dict:
    """``{objective: LlamaValueModel}`` carrying the weights of our prefix-mode value models (one
    objective each, Llama trunks, zero head bias: their score layer has none)."""
    from transformers import LlamaConfig

    out = {}
    for vm in value_models:
        if vm.mode != "prefix" or vm.m != 1:
            raise ValueError("their value models have one scalar head each: give prefix-mode, one-objective models")
        if bool((vm.head_bias != 0).any()):
            raise ValueError("their value models' score layer has no bias: give models with head_bias = 0")
        trunk = vm.backbone
        cfg = LlamaConfig(**{k: v for k, v in trunk.config.to_dict().items()
                             if k not in ("architectures", "_name_or_path", "transformers_version")})
        cfg.num_labels = 1
        cfg.problem_type = "regression"
        cfg.use_cache = True
        p = next(trunk.parameters())
        theirs = gu.LlamaValueModel(cfg).to(p.device, p.dtype).eval()
        theirs.model.load_state_dict(trunk.state_dict())
        theirs.score.weight.copy_(vm.head_weight.detach().to(p.dtype))
        out[vm.objectives[0]] = theirs
    return out


class AuthorsDecoder:
    """Their ``ValueGeneratorBatched`` (one pass with a tree mask per value model) and
    ``get_mavis_alg`` decoding loop, configured like ours: top-k 40, temperature 1, beta, no EOS
    (their loop stops on ``eos_token_id``; -1 never occurs), ``B`` copies of one prompt."""

    def __init__(self, gu, base, theirs: dict, weights: dict, *, beta: float, top_k: int, max_new_tokens: int,
                 B: int, device):
        dtype = next(base.parameters()).dtype
        self.vg = gu.ValueGeneratorBatched(theirs, None, device, weights, dtype=dtype)
        args = argparse.Namespace(device=device, no_cache=False, topk=top_k, temperature=1.0, beta=beta)

        class _Tok:  # what their loop reads from a tokenizer
            eos_token_id = -1
            pad_token_id = 0

        self.alg = gu.get_mavis_alg(_Tok(), base, self.vg, max_new_tokens, args, device=device, num_parallel=B)

    def __call__(self, prompt_ids: torch.Tensor):
        """``prompt_ids [1, T]`` -> their sequences (prompt + new tokens)."""
        seqs, _ = self.alg(prompt_ids)
        return seqs


@torch.no_grad()
def distribution_gap(gu, gen, theirs: dict, weights, prompt_ids: torch.Tensor, steps: int, beta: float,
                     top_k: int) -> float:
    """Largest |p_ours - p_theirs| over the K candidates' tilted probabilities, along ``steps``
    steps of one token path (B = 1). Candidates come from their top-k; both sides score them with
    their incremental caches (ours: the engine's own scorers, stacked or not, committing the chosen
    candidate; theirs: ``ValueGeneratorBatched.get_values``)."""
    from mavis_ext._scorer_plan import plan_scorers
    from mavis_ext._value_scoring import StackedScorer
    from mavis_ext.values import positions_from_mask

    device = prompt_ids.device
    vg = gu.ValueGeneratorBatched(theirs, None, device, dict(zip(theirs, weights)),
                                  dtype=next(gen.base.parameters()).dtype)
    vg.reset()
    plan = plan_scorers(gen.members, "tree", gen.vocab_size, gen.stack_trunks, gen.trunk_gemm_dtype, gen._stacks)
    w = torch.tensor(weights, dtype=torch.float32, device=device)
    offs = [0]
    for vm in gen.members:
        offs.append(offs[-1] + vm.m)
    ids = prompt_ids
    mask = torch.ones_like(ids)
    for sc, _ in plan:
        sc.start(ids, mask, positions_from_mask(mask))
    worst = 0.0
    g = torch.Generator().manual_seed(0)
    for t in range(steps):
        logits = gen.base(input_ids=ids).logits
        top_logits, top_ids = gu.get_top_k_logits(logits, top_k, 1.0)
        p_theirs = gu.get_combined_probs(top_logits, beta, vg.get_values(ids, top_ids).to(device))
        vals = [None] * len(gen.members)
        for sc, idx in plan:
            if isinstance(sc, StackedScorer):
                got = sc.member_values(top_ids, mask.sum(1), mask, [w[offs[i]:offs[i + 1]] for i in idx])
                for i, v in zip(idx, got):
                    vals[i] = v
            else:
                vals[idx[0]] = sc.values(top_ids, mask.sum(1), mask, w[offs[idx[0]]:offs[idx[0] + 1]])
        comb = sum(vals[1:], vals[0])
        p_ours = torch.softmax(top_logits.float() + beta * comb, -1)
        worst = max(worst, (p_ours.double() - p_theirs.double()).abs().max().item())
        col = torch.multinomial(p_ours, 1, generator=g)[:, 0]
        tok = top_ids.gather(1, col[:, None])
        new_mask = torch.cat([mask, torch.ones_like(tok)], 1)
        for sc, _ in plan:
            sc.advance(tok[:, 0], col, mask.sum(1), new_mask)
        ids, mask = torch.cat([ids, tok], 1), new_mask
    return worst
