"""Trained value models scored at every (state, action) of an ``ExactTree``: the value table that
turns a checkpoint into an exactly evaluable MAVIS policy (``ExactTree.tilted_policy``).

Prefix mode: ``V_i(prompt + s + a)``, the trunk's value at token ``a`` after ``prompt + s``. As in
decoding, all actions of a state are scored in one pass with a tree attention mask (each candidate
sees the prefix and itself, at the same position), which equals scoring ``prompt + s + a`` alone up
to float rounding (tested). Q-head mode: one trunk pass over ``prompt + s`` and the heads' rows
of the actions (the library's ``value_heads`` op, as in decoding).
"""

from __future__ import annotations

import torch

from .exact_tree import ExactTree

__all__ = ["value_table"]


def _prompt_block(tree: ExactTree):
    P = max(len(p) for p in tree.prompt_ids)
    ids = torch.zeros(tree.n_roots, P, dtype=torch.long)
    mask = torch.zeros(tree.n_roots, P, dtype=torch.long)
    for r, p in enumerate(tree.prompt_ids):
        ids[r, P - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, P - len(p):] = 1
    return ids, mask


def _hidden_last(vm, ids: torch.Tensor, mask: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The trunk's last hidden state at the final position of each row ``[N, d]``."""
    from .values import positions_from_mask

    dev = next(vm.parameters()).device
    out = []
    for lo in range(0, ids.shape[0], batch_size):
        x, am = ids[lo:lo + batch_size].to(dev), mask[lo:lo + batch_size].to(dev)
        h = vm.backbone_forward(x, attention_mask=am, position_ids=positions_from_mask(am), use_cache=False)
        out.append(h[:, -1].float())
    return torch.cat(out) if out else torch.zeros(0, vm.hidden_size)


def _tree_hidden(vm, ids: torch.Tensor, prefix_mask: torch.Tensor, K: int, batch_size: int) -> torch.Tensor:
    """Trunk hidden states of the last ``K`` tokens of each row of ``ids [N, L + K]``, where the first
    ``L`` are a (left-padded, ``prefix_mask``) causal prefix and the last K are candidates that see
    the prefix and themselves only, each at the position right after the prefix."""
    from .values import positions_from_mask

    dev = next(vm.parameters()).device
    dtype = next(vm.trunk.parameters()).dtype
    neg = torch.finfo(dtype).min
    N, L = prefix_mask.shape
    T = L + K
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    allowed = torch.zeros(T, T, dtype=torch.bool)
    allowed[:L, :L] = causal
    allowed[L:, :L] = True
    allowed[L:, L:] = torch.eye(K, dtype=torch.bool)
    out = []
    step = max(1, batch_size // max(1, K))
    for lo in range(0, N, step):
        pm = prefix_mask[lo:lo + step]
        B = pm.shape[0]
        keep = allowed[None].expand(B, T, T).clone()
        keep[:, :, :L] &= pm[:, None, :].bool()             # nobody attends to padding
        keep[:, torch.arange(T), torch.arange(T)] = True     # a padding row sees itself (no empty rows)
        mask = torch.zeros(B, 1, T, T, dtype=dtype).masked_fill(~keep[:, None], neg)
        pos_pre = positions_from_mask(pm)
        nxt = pm.sum(1, keepdim=True)
        pos = torch.cat([pos_pre, nxt.expand(B, K)], 1)
        h = vm.backbone_forward(ids[lo:lo + step].to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                                use_cache=False)
        out.append(h[:, L:].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, K, vm.hidden_size)


@torch.no_grad()
def _member_table(tree: ExactTree, vm, batch_size: int) -> list:
    pids, pmask = _prompt_block(tree)
    dev = next(vm.parameters()).device
    out = []
    for t in range(tree.horizon):
        N, A = tree.states_at(t), tree.A
        if N == 0:
            out.append(torch.zeros(0, vm.m, A, dtype=torch.float64))
            continue
        root, pre, acts = tree.root[t], tree.tokens[t], tree.actions[t]
        if vm.mode == "qhead":
            ids = torch.cat([pids[root], pre], 1)
            mask = torch.cat([pmask[root], torch.ones_like(pre)], 1)
            h = _hidden_last(vm, ids, mask, batch_size)
            vals = [vm.heads(h[lo:lo + batch_size], candidate_ids=acts[lo:lo + batch_size].to(dev)).double().cpu()
                    for lo in range(0, N, batch_size)]
            out.append(torch.cat(vals))
            continue
        # One row per state: prompt + prefix, then the A candidates with a tree mask (each sees the
        # prefix and itself, all at the same position): the decoding engine's scoring, batched.
        ids = torch.cat([pids[root], pre, acts], 1)
        pm = torch.cat([pmask[root], torch.ones_like(pre)], 1)          # [N, L] real prefix tokens
        L = pm.shape[1]
        h = _tree_hidden(vm, ids, pm, A, batch_size)                   # [N, A, d]
        v = torch.cat([vm.heads(h[lo:lo + batch_size].to(dev)).double().cpu()
                       for lo in range(0, N, batch_size)])             # [N, m, A]
        out.append(v)
    return out


def value_table(tree: ExactTree, value_models, batch_size: int = 8192) -> list:
    """``V_i(s.a)`` for every state and action of the tree from trained value models (a
    ``ValueModel``, a ``ValueEnsemble`` or a list of them; objectives in their order): a list over
    depths of ``[N_t, m, A]`` float64."""
    from .values import members_of

    members = members_of(value_models)
    if not members:
        raise ValueError("value_models: no ValueModel given")
    if any(vm.vocab_size < tree.vocab_size for vm in members if getattr(vm, "vocab_size", None)):
        raise ValueError(f"value_models: a trunk embeds fewer tokens than the tree's vocabulary ({tree.vocab_size})")
    parts = [_member_table(tree, vm, batch_size) for vm in members]
    return [torch.cat([p[t] for p in parts], dim=1) for t in range(tree.horizon)]
