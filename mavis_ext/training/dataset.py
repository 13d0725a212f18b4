"""Regression examples from labelled forests: one example per root-to-leaf path.

One forward pass over a path gives the value at every position, so every node on the path is
supervised from the same pass. To count each node once per epoch, a node is *owned* by the leaf
reached by always following its first child; a path carries targets only for the nodes it owns.

- prefix mode (paper): a node's target sits at its segment's last token
  (``V(prompt + path through the node)``);
- qhead mode: every token of a node's segment gets the node's target (``Q(prefix, token)``).

Targets are ``[k, m]`` with a mask, so tree sets that supervise only some objectives (per-objective
rollouts) share one model with several heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch

from .trees import Forest

__all__ = ["PathExamples", "build_examples", "bottom_node_mask", "split_trees", "collate"]


@dataclass
class PathExamples:
    m: int
    ids: List[np.ndarray] = field(default_factory=list)        # full token sequence (prompt + response)
    pos: List[np.ndarray] = field(default_factory=list)        # [k] positions with a target
    tgt: List[np.ndarray] = field(default_factory=list)        # [k, m] float32
    mask: List[np.ndarray] = field(default_factory=list)       # [k, m] bool
    tree_key: List[int] = field(default_factory=list)          # prompt index of the path's tree

    def __len__(self) -> int:
        return len(self.ids)

    def n_targets(self) -> np.ndarray:
        return np.array([int(m.sum()) for m in self.mask], np.int64)

    def extend(self, other: "PathExamples") -> None:
        if other.m != self.m:
            raise ValueError("PathExamples.extend: different numbers of objectives")
        for f in ("ids", "pos", "tgt", "mask", "tree_key"):
            getattr(self, f).extend(getattr(other, f))

    def subset(self, idx: Sequence[int]) -> "PathExamples":
        out = PathExamples(self.m)
        for f in ("ids", "pos", "tgt", "mask", "tree_key"):
            src = getattr(self, f)
            setattr(out, f, [src[i] for i in idx])
        return out

    def select_objectives(self, cols: Sequence[int]) -> "PathExamples":
        """Keep only objective columns ``cols`` (drops paths left without targets)."""
        cols = list(cols)
        out = PathExamples(len(cols))
        for i in range(len(self)):
            mk = self.mask[i][:, cols]
            rows = mk.any(1)
            if not rows.any():
                continue
            out.ids.append(self.ids[i])
            out.pos.append(self.pos[i][rows])
            out.tgt.append(self.tgt[i][rows][:, cols])
            out.mask.append(mk[rows])
            out.tree_key.append(self.tree_key[i])
        return out

    def targets_flat(self) -> np.ndarray:
        """All supervised target values (for label statistics)."""
        if not self.tgt:
            return np.zeros(0)
        return np.concatenate([t[m] for t, m in zip(self.tgt, self.mask)])


def build_examples(forest: Forest, labels: np.ndarray, objective_mask: np.ndarray, *, mode: str,
                   keep_node: Optional[np.ndarray] = None, token_offset: Optional[np.ndarray] = None) -> PathExamples:
    """``labels`` [N, m]; ``objective_mask`` [m] bool: which objectives this forest supervises;
    ``keep_node`` [N] bool: nodes that get a target (default: every non-root node);
    ``token_offset`` (qhead only, aligned with ``forest.tokens``): added to each token's target."""
    if mode not in ("prefix", "qhead"):
        raise ValueError(f"mode: expected 'prefix' or 'qhead', got {mode!r}")
    N = forest.n_nodes
    labels = np.asarray(labels, np.float32)
    m = labels.shape[1]
    objective_mask = np.asarray(objective_mask, bool)
    keep = np.ones(N, bool) if keep_node is None else np.asarray(keep_node, bool).copy()
    keep &= forest.node_parent >= 0
    par, depth = forest.node_parent, forest.node_depth
    is_leaf = forest.is_leaf()
    # owner[n] = leaf reached by first children; processed bottom-up (children follow parents).
    first_child = np.full(N, -1, np.int64)
    ch = np.nonzero(par >= 0)[0][::-1]              # reversed so the smallest child id is written last
    first_child[par[ch]] = ch
    owner = np.where(is_leaf, np.arange(N), -1)
    for d in range(int(depth.max(initial=0)) - 1, 0, -1):
        idx = np.nonzero((depth == d) & ~is_leaf)[0]
        owner[idx] = owner[first_child[idx]]
    path_len = forest.path_len()
    out = PathExamples(m)
    for leaf in np.nonzero(is_leaf)[0]:
        chain = forest.path_nodes(int(leaf))
        tree = int(forest.node_tree[leaf])
        prompt = forest.prompt_tokens(tree)
        P = prompt.size
        ids = np.concatenate([prompt] + [forest.segment(n) for n in chain]).astype(np.int64)
        pos, nodes, toks = [], [], []
        for n in chain:
            if owner[n] != leaf or not keep[n]:
                continue
            end = P + int(path_len[n])                 # one past the node's last token
            if mode == "prefix":
                pos.append(end - 1)
                nodes.append(n)
            else:
                L = int(forest.node_tok_len[n])
                pos.extend(range(end - L, end))
                nodes.extend([n] * L)
                s0 = int(forest.node_tok_start[n])
                toks.extend(range(s0, s0 + L))
        if not pos:
            continue
        nodes = np.asarray(nodes, np.int64)
        out.ids.append(ids)
        out.pos.append(np.asarray(pos, np.int64))
        tgt = labels[nodes]
        if token_offset is not None and mode == "qhead":
            tgt = tgt + np.asarray(token_offset, np.float32)[np.asarray(toks, np.int64)][:, None]
        out.tgt.append(tgt.astype(np.float32))
        out.mask.append(np.broadcast_to(objective_mask, (nodes.size, m)).copy())
        out.tree_key.append(int(forest.prompt_index[tree]))
    return out


def bottom_node_mask(forest: Forest, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Keep every non-leaf node and ``round(fraction * n_leaves)`` leaves chosen at random (the
    paper's ``fraction_bottom_nodes_to_keep``: complete sequences would otherwise dominate)."""
    keep = np.ones(forest.n_nodes, bool)
    if fraction >= 1.0:
        return keep
    leaves = np.nonzero(forest.is_leaf())[0]
    n_keep = int(round(fraction * leaves.size))
    drop = rng.permutation(leaves)[n_keep:]
    keep[drop] = False
    return keep


def split_trees(prompt_indices: Sequence[int], val_fraction: float, rng: np.random.Generator) -> set:
    """Prompt indices whose trees form the validation set (whole trees, never split)."""
    keys = np.unique(np.asarray(list(prompt_indices), np.int64))
    if val_fraction <= 0 or keys.size < 2:
        return set()
    n_val = min(max(1, int(math.ceil(val_fraction * keys.size))), keys.size - 1)
    return set(int(k) for k in rng.permutation(keys)[:n_val])


def collate(ex: PathExamples, idx: Sequence[int], pad_id: int, device=None):
    """Right-padded batch: ``ids [B, T]``, ``attention_mask [B, T]``, ``tgt [B, T, m]``, ``tmask [B, T, m]``."""
    B = len(idx)
    T = max(ex.ids[i].size for i in idx)
    ids = torch.full((B, T), int(pad_id), dtype=torch.long)
    am = torch.zeros((B, T), dtype=torch.long)
    tgt = torch.zeros((B, T, ex.m), dtype=torch.float32)
    tm = torch.zeros((B, T, ex.m), dtype=torch.bool)
    for b, i in enumerate(idx):
        s = ex.ids[i]
        ids[b, :s.size] = torch.from_numpy(s)
        am[b, :s.size] = 1
        p = torch.from_numpy(ex.pos[i])
        tgt[b, p] = torch.from_numpy(ex.tgt[i])
        tm[b, p] = torch.from_numpy(ex.mask[i])
    if device is not None:
        ids, am, tgt, tm = ids.to(device), am.to(device), tgt.to(device), tm.to(device)
    return ids, am, tgt, tm
