"""Labels of tree nodes (as in the authors' code).

- Leaves are scored by every reward function on (prompt text, decoded response text).
- An internal node's value is the mean of its children's values: the Monte-Carlo estimate of the
  expected reward from that prefix under the collecting policy.
- KL term, paper definition: a leaf's is the sum of ``log(pi/pi_ref)`` over the whole path from the
  root; an internal node's is the mean of its children's. ``kl_label="future"`` subtracts what was
  already spent up to the end of the node (only the part the node's choices still control).
- label = value - zeta * KL term.

All functions are vectorised over nodes with one pass per depth (nodes are breadth-first).
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

from ..rewards import check_reward_output
from .trees import Forest

__all__ = ["score_leaves", "node_values", "cumulative_logratio", "expected_path_logratio", "node_labels",
           "token_suffix_logratio"]


def _mean_up(forest: Forest, x: np.ndarray) -> np.ndarray:
    """Fill every node that has children with the mean of its children's rows of ``x`` (leaves keep
    theirs). ``x``: [N] or [N, m]."""
    x = np.array(x, dtype=np.float64, copy=True)
    par, depth = forest.node_parent, forest.node_depth
    nchild = forest.num_children()
    for d in range(int(depth.max(initial=0)), 0, -1):
        idx = np.nonzero(depth == d)[0]
        if idx.size == 0:
            continue
        parents = par[idx]
        acc = np.zeros((forest.n_nodes,) + x.shape[1:], np.float64)
        np.add.at(acc, parents, x[idx])
        up = np.unique(parents)
        x[up] = acc[up] / (nchild[up].reshape((-1,) + (1,) * (x.ndim - 1)))
    return x


def cumulative_logratio(forest: Forest) -> np.ndarray:
    """Sum of log(pi/pi_ref) from the root through the end of each node's segment."""
    cum = forest.node_logratio.astype(np.float64).copy()
    for d in range(1, int(forest.node_depth.max(initial=0)) + 1):
        idx = np.nonzero(forest.node_depth == d)[0]
        cum[idx] += cum[forest.node_parent[idx]]
    return cum


def expected_path_logratio(forest: Forest) -> np.ndarray:
    """Leaves: whole-path log-ratio; internal nodes: mean of children (paper's
    ``expected_log_prob_ratio``). The root's entry is the policy's KL estimate for that prompt."""
    return _mean_up(forest, cumulative_logratio(forest))


def node_values(forest: Forest, leaf_nodes: np.ndarray, leaf_rewards: np.ndarray) -> np.ndarray:
    """[N, m] values: leaf rewards, averaged up the tree."""
    leaf_rewards = np.asarray(leaf_rewards, np.float64)
    if leaf_rewards.ndim != 2 or leaf_rewards.shape[0] != len(leaf_nodes):
        raise ValueError(f"node_values: leaf_rewards must be [{len(leaf_nodes)}, m], got {leaf_rewards.shape}")
    is_leaf = forest.is_leaf()
    if not np.array_equal(np.sort(leaf_nodes), np.nonzero(is_leaf)[0]):
        raise ValueError("node_values: leaf_nodes are not exactly the forest's leaves")
    x = np.zeros((forest.n_nodes, leaf_rewards.shape[1]), np.float64)
    x[leaf_nodes] = leaf_rewards
    return _mean_up(forest, x)


def node_labels(forest: Forest, values: np.ndarray, zeta: float, kl_label: str = "future") -> np.ndarray:
    """[N, m] regression targets ``value - zeta * KL term`` (same KL term for every objective)."""
    if zeta == 0:
        return np.asarray(values, np.float64).copy()
    kl = expected_path_logratio(forest)
    if kl_label == "future":
        kl = kl - cumulative_logratio(forest)
    elif kl_label != "path":
        raise ValueError(f"kl_label: expected 'path' or 'future', got {kl_label!r}")
    return np.asarray(values, np.float64) - float(zeta) * kl[:, None]


def token_suffix_logratio(forest: Forest) -> np.ndarray:
    """For each token (aligned with ``forest.tokens``): the sum of log(pi/pi_ref) of the *later*
    tokens of the same segment. Q-head targets with ``kl_label="future"`` subtract ``zeta`` times
    this from the node label, so a mid-segment token's target also pays for the rest of its segment."""
    lr = forest.token_logratio.astype(np.float64)
    out = np.zeros_like(lr)
    for n in np.nonzero(forest.node_tok_len > 0)[0]:
        s, L = int(forest.node_tok_start[n]), int(forest.node_tok_len[n])
        seg = lr[s:s + L]
        out[s:s + L] = seg[::-1].cumsum()[::-1] - seg
    return out


def score_leaves(forest: Forest, rewards: Dict[str, Callable], tokenizer, *,
                 batch_size: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """Score every leaf with every reward. Returns ``(leaf_nodes [n], rewards [n, m])``, objectives
    in ``rewards`` order. Each reward sees ``prompts`` (the prompt texts) and ``responses`` (the
    leaf's response tokens decoded with ``skip_special_tokens=True``)."""
    leaf_nodes = np.nonzero(forest.is_leaf())[0]
    prompts = [forest.prompts[int(t)] for t in forest.node_tree[leaf_nodes]]
    responses = tokenizer.batch_decode([forest.response_tokens(int(n)).tolist() for n in leaf_nodes],
                                       skip_special_tokens=True)
    out = np.zeros((leaf_nodes.size, len(rewards)), np.float32)
    for j, (name, fn) in enumerate(rewards.items()):
        for lo in range(0, leaf_nodes.size, batch_size):
            hi = min(leaf_nodes.size, lo + batch_size)
            r = check_reward_output(fn(prompts[lo:hi], responses[lo:hi]), hi - lo, name)
            out[lo:hi, j] = r.numpy()
    return leaf_nodes, out
