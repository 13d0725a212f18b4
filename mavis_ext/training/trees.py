"""Rollout trees (forests) from the current policy, grown layer by layer in batches.

A forest holds many trees in flat NumPy arrays (no per-node Python objects): node ``i`` has a
parent (``-1`` for the root, which is the prompt and holds no tokens), a depth (root 0), a token
segment ``tokens[tok_start : tok_start + tok_len]``, the sum of ``log(pi/pi_ref)`` over that
segment, and whether the segment ended with EOS. Nodes are stored breadth-first (every parent
precedes its children), which lets labeling run bottom-up with one vectorised pass per depth.

Growth (as in the authors' code): layer ``l = 0 .. depth-1`` gives each live node ``root_branching`` (l = 0) or
``branching`` children. A child's segment length is uniform in
``[1, 2*floor(tokens_left/(depth-l)) - 1]`` for ``l < depth-1`` and ``tokens_left`` at the last
layer (the remaining budget, or fewer on EOS). A node that ended with EOS or used up the budget is a
leaf. All children of one layer are generated together, ``gen_batch_size`` rows per ``generate``
call, with per-row budgets (``max_new_tokens_per_row``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..decoding import row_seeds_from
from .seeds import derive_seed, rng_for

__all__ = ["Forest", "grow_forest", "segment_lengths"]


@dataclass
class Forest:
    prompts: List[str]
    prompt_index: np.ndarray      # [n_trees] int64, index of the prompt in the run's prompt list
    prompt_ids: np.ndarray        # flat int64 token ids of all prompts
    prompt_offsets: np.ndarray    # [n_trees + 1] int64
    node_tree: np.ndarray         # [N] int64
    node_parent: np.ndarray       # [N] int64, -1 for roots
    node_depth: np.ndarray        # [N] int64, 0 for roots
    node_tok_start: np.ndarray    # [N] int64 into tokens
    node_tok_len: np.ndarray      # [N] int64
    node_logratio: np.ndarray     # [N] float64, sum of log(pi/pi_ref) over the node's segment
    node_eos: np.ndarray          # [N] bool
    tokens: np.ndarray            # flat int64
    token_logratio: np.ndarray    # flat float32, log(pi/pi_ref) of each token (aligned with tokens)

    ARRAYS = ("prompt_index", "prompt_ids", "prompt_offsets", "node_tree", "node_parent", "node_depth",
              "node_tok_start", "node_tok_len", "node_logratio", "node_eos", "tokens", "token_logratio")

    @property
    def n_trees(self) -> int:
        return len(self.prompts)

    @property
    def n_nodes(self) -> int:
        return int(self.node_parent.shape[0])

    def prompt_tokens(self, tree: int) -> np.ndarray:
        return self.prompt_ids[self.prompt_offsets[tree]:self.prompt_offsets[tree + 1]]

    def segment(self, node: int) -> np.ndarray:
        s = self.node_tok_start[node]
        return self.tokens[s:s + self.node_tok_len[node]]

    def num_children(self) -> np.ndarray:
        c = np.zeros(self.n_nodes, dtype=np.int64)
        p = self.node_parent[self.node_parent >= 0]
        np.add.at(c, p, 1)
        return c

    def is_leaf(self) -> np.ndarray:
        leaf = self.num_children() == 0
        leaf[self.node_parent < 0] = False   # a root with no children (nothing generated) is not a sample
        return leaf

    def path_len(self) -> np.ndarray:
        """Response tokens from the root through the end of each node's segment."""
        out = self.node_tok_len.astype(np.int64).copy()
        for d in range(1, int(self.node_depth.max(initial=0)) + 1):
            idx = np.nonzero(self.node_depth == d)[0]
            out[idx] += out[self.node_parent[idx]]
        return out

    def path_nodes(self, node: int) -> List[int]:
        """Non-root nodes from the top down to ``node``."""
        chain = []
        while self.node_parent[node] >= 0:
            chain.append(int(node))
            node = self.node_parent[node]
        return chain[::-1]

    def response_tokens(self, node: int) -> np.ndarray:
        segs = [self.segment(n) for n in self.path_nodes(node)]
        return np.concatenate(segs) if segs else np.zeros(0, dtype=np.int64)

    def validate(self) -> None:
        n = self.n_nodes
        for name in self.ARRAYS[3:10]:
            if getattr(self, name).shape != (n,):
                raise ValueError(f"Forest: {name} has shape {getattr(self, name).shape}, expected ({n},)")
        if self.prompt_offsets.shape != (self.n_trees + 1,) or self.prompt_index.shape != (self.n_trees,):
            raise ValueError("Forest: prompt arrays do not match the number of prompts")
        par = self.node_parent
        if np.any(par >= np.arange(n)):
            raise ValueError("Forest: nodes are not in breadth-first order (a parent follows its child)")
        nonroot = par >= 0
        if np.any(self.node_depth[nonroot] != self.node_depth[par[nonroot]] + 1):
            raise ValueError("Forest: inconsistent depths")
        if np.any(self.node_tok_start + self.node_tok_len > self.tokens.shape[0]):
            raise ValueError("Forest: token segment out of range")
        if self.token_logratio.shape != self.tokens.shape:
            raise ValueError("Forest: token_logratio does not match tokens")


def segment_lengths(rng: np.random.Generator, tokens_left: np.ndarray, layer: int, depth: int) -> np.ndarray:
    """Per-child segment budgets for layer ``layer`` (0-based) of ``depth`` layers."""
    tokens_left = np.asarray(tokens_left, dtype=np.int64)
    if layer >= depth - 1:
        return tokens_left.copy()
    hi = np.maximum(2 * (tokens_left // (depth - layer)) - 1, 1)
    seg = rng.integers(1, hi + 1)            # inclusive upper bound hi
    return np.minimum(seg, tokens_left).astype(np.int64)


def _left_pad(seqs: Sequence[np.ndarray], pad_id: int):
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, T - len(s):] = torch.from_numpy(np.asarray(s, dtype=np.int64))
            mask[i, T - len(s):] = 1
    return ids, mask


def grow_forest(generator, prompts: Sequence[str], prompt_index: Sequence[int], prompt_ids: Sequence[Sequence[int]], *,
                root_branching: int, branching: int, depth: int, max_new_tokens: int, top_k: int,
                temperature: float = 1.0, weights: Optional[Sequence[float]] = None, beta: float = 0.0,
                normalize_values: bool = False, ban_eos_first: bool = False, gen_batch_size: int = 256,
                pad_token_id: int = 0, seed_key: Sequence[int] = (0,), device=None) -> Forest:
    """Grow one tree per prompt with ``generator`` (a ``MavisGenerator``).

    ``weights``/``beta``: the MAVIS policy (``None``/``0``: the base model's top-k sampling).
    ``seed_key``: structured key; row r of layer l samples with its own seed derived from
    ``(seed_key, l, r)``, segment lengths from ``(seed_key, l)``, so the forest depends only on its
    prompts and the key (not on batch sizes, process count or interruptions)."""
    n = len(prompts)
    if not (len(prompt_index) == len(prompt_ids) == n) or n == 0:
        raise ValueError("grow_forest: prompts, prompt_index and prompt_ids must be non-empty and equally long")
    p_ids = [np.asarray(p, dtype=np.int64) for p in prompt_ids]
    for i, p in enumerate(p_ids):
        if p.size == 0:
            raise ValueError(f"grow_forest: prompt {int(prompt_index[i])} ({prompts[i]!r}) tokenizes to zero tokens")
    seed_key = tuple(int(k) for k in seed_key)

    # Node arrays as growing Python lists of per-layer NumPy chunks.
    parent = [np.full(n, -1, np.int64)]
    tree = [np.arange(n, dtype=np.int64)]
    dep = [np.zeros(n, np.int64)]
    tok_len = [np.zeros(n, np.int64)]
    logratio = [np.zeros(n, np.float64)]
    eos = [np.zeros(n, bool)]
    segs: List[np.ndarray] = [np.zeros(0, np.int64)] * n
    seg_lr: List[np.ndarray] = [np.zeros(0, np.float32)] * n

    # Frontier: live node ids, their full token sequence (prompt + path) and response length so far.
    front_ids = np.arange(n, dtype=np.int64)
    front_seq = list(p_ids)
    front_used = np.zeros(n, np.int64)
    next_id = n
    w_t = None if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)

    for layer in range(depth):
        if front_ids.size == 0:
            break
        fan = root_branching if layer == 0 else branching
        rows_parent = np.repeat(np.arange(front_ids.size), fan)          # index into the frontier
        left = max_new_tokens - front_used[rows_parent]
        seg_budget = segment_lengths(rng_for(*seed_key, layer, 1 << 20), left, layer, depth)
        R = rows_parent.size
        new_len = np.zeros(R, np.int64)
        new_lr = np.zeros(R, np.float64)
        new_eos = np.zeros(R, bool)
        new_segs: List[np.ndarray] = [None] * R
        new_seg_lr: List[np.ndarray] = [None] * R
        # One random stream per row of the layer, so a row's tokens do not depend on gen_batch_size.
        row_seeds = row_seeds_from(derive_seed(*seed_key, layer), R).tolist()
        for lo in range(0, R, gen_batch_size):
            hi = min(R, lo + gen_batch_size)
            seqs = [front_seq[rows_parent[r]] for r in range(lo, hi)]
            ids, mask = _left_pad(seqs, pad_token_id)
            budget = torch.from_numpy(seg_budget[lo:hi].copy())
            if device is not None:
                ids, mask, budget = ids.to(device), mask.to(device), budget.to(device)
            out = generator.generate(
                input_ids=ids, attention_mask=mask, weights=w_t, beta=float(beta), top_k=top_k,
                temperature=temperature, max_new_tokens=int(seg_budget[lo:hi].max()),
                seed=row_seeds[lo:hi], normalize_values=normalize_values,
                ban_eos_first=bool(ban_eos_first and layer == 0), stop_at_eos=True,
                max_new_tokens_per_row=budget)
            seq = out.sequences.detach().cpu().numpy()
            lens = out.lengths.detach().cpu().numpy().astype(np.int64)
            lr = (out.logp.detach().double() - out.logp_ref.detach().double()).cpu().numpy()
            fin = out.finished.detach().cpu().numpy().astype(bool)
            for j in range(hi - lo):
                L = int(lens[j])
                if L < 1 or L > seg_budget[lo + j]:
                    raise RuntimeError(f"grow_forest: generator returned {L} tokens for a row with budget "
                                       f"{int(seg_budget[lo + j])}")
                if not fin[j] and L != seg_budget[lo + j]:
                    raise RuntimeError(f"grow_forest: generator stopped a row after {L} of {int(seg_budget[lo + j])} "
                                       f"tokens without EOS")
                new_segs[lo + j] = seq[j, :L].astype(np.int64)
                new_seg_lr[lo + j] = lr[j, :L].astype(np.float32)
                new_lr[lo + j] = lr[j, :L].sum()
            new_len[lo:hi] = lens
            new_eos[lo:hi] = fin
        ids_new = np.arange(next_id, next_id + R, dtype=np.int64)
        next_id += R
        parent.append(front_ids[rows_parent])
        tree.append(np.concatenate(tree)[front_ids[rows_parent]])
        dep.append(np.full(R, layer + 1, np.int64))
        tok_len.append(new_len)
        logratio.append(new_lr)
        eos.append(new_eos)
        segs.extend(new_segs)
        seg_lr.extend(new_seg_lr)
        used = front_used[rows_parent] + new_len
        alive = (~new_eos) & (used < max_new_tokens)
        front_seq = [np.concatenate([front_seq[rows_parent[r]], new_segs[r]]) for r in np.nonzero(alive)[0]]
        front_ids = ids_new[alive]
        front_used = used[alive]

    tok_len_a = np.concatenate(tok_len)
    starts = np.zeros_like(tok_len_a)
    np.cumsum(tok_len_a[:-1], out=starts[1:])
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum([len(p) for p in p_ids], out=offsets[1:])
    f = Forest(
        prompts=list(prompts), prompt_index=np.asarray(prompt_index, np.int64),
        prompt_ids=np.concatenate(p_ids), prompt_offsets=offsets,
        node_tree=np.concatenate(tree), node_parent=np.concatenate(parent), node_depth=np.concatenate(dep),
        node_tok_start=starts, node_tok_len=tok_len_a, node_logratio=np.concatenate(logratio),
        node_eos=np.concatenate(eos),
        tokens=np.concatenate(segs) if segs else np.zeros(0, np.int64),
        token_logratio=np.concatenate(seg_lr) if seg_lr else np.zeros(0, np.float32),
    )
    f.validate()
    return f
