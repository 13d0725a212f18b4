"""Exactly enumerated response trees over several prompts, and exact quantities on them.

An ``ExactTree`` holds every decision state of a horizon-``H`` response, for one or more prompts
(the roots), together with the base model's next-token log-probabilities and the reward of every
complete response. Each state ``s`` at depth ``t`` (``t`` response tokens written) has ``A``
actions: every token of the vocabulary (a *full* tree, ``A = V``) or the base model's top-k tokens
at ``s`` (a *top-k* tree: the states any top-k decoding method can reach, and only those). Action
``a`` of ``s`` either ends the response (EOS, or any token at depth ``H-1``) or leads to the child
state ``s.a`` at depth ``t+1``.

Per depth ``t`` (``N_t`` states, all prompts together, states of one prompt contiguous):

* ``actions[t]``  ``[N_t, A]`` int64 token ids;
* ``logp_ref[t]`` ``[N_t, A]`` float64 ``log pi_ref(a | prompt, s)`` over the FULL vocabulary (so a
  top-k policy's KL is measured against the real base model, as decoding measures it);
* ``child[t]``    ``[N_t, A]`` int64 index of ``s.a`` at depth ``t+1``, ``-1`` when ``s.a`` ends;
* ``rewards[t]``  ``[N_t, A, m]`` float64 reward of the complete response ``s.a`` (0 where it continues);
* ``root[t]``     ``[N_t]`` prompt index; ``tokens[t]`` ``[N_t, t]`` the response prefix.

A *policy table* is a list over depths of ``[N_t, A]`` float64 log-probabilities over the state's
actions (``-inf`` = never chosen; each row sums to 1). A *value table* is a list of
``[N_t, m, A]`` per-objective values of the children ``s.a``. Everything here is exact: sums over
every state with its exact visitation probability, no sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch

__all__ = ["ExactTree", "TreeEval", "enumerate_tree", "restrict_to_topk"]


@dataclass
class TreeEval:
    """Exact evaluation of one policy, per prompt (root): expected rewards ``[R, m]``, sequence
    KL(pi || pi_ref) ``[R]`` and, when weights and beta were given, ``J = w.r - KL/beta`` ``[R]``."""

    rewards: torch.Tensor
    kl: torch.Tensor
    J: Optional[torch.Tensor] = None

    def mean(self, roots: Optional[Sequence[int]] = None) -> dict:
        """Averages over a set of prompts (a uniform prompt distribution): ``{"rewards": [m],
        "kl": float, "J": float or None}``."""
        idx = slice(None) if roots is None else torch.as_tensor(list(roots), dtype=torch.long)
        out = {"rewards": self.rewards[idx].mean(0), "kl": float(self.kl[idx].mean())}
        out["J"] = None if self.J is None else float(self.J[idx].mean())
        return out


@dataclass
class ExactTree:
    horizon: int
    vocab_size: int
    eos_id: int
    m: int
    prompt_ids: list          # per root: list of prompt token ids
    actions: list
    logp_ref: list
    child: list
    rewards: list
    root: list
    tokens: list
    top_k: int = 0            # 0: full tree (every token is an action)

    # ------------------------------------------------------------------ shape
    @property
    def n_roots(self) -> int:
        return len(self.prompt_ids)

    @property
    def A(self) -> int:
        return int(self.actions[0].shape[1])

    @property
    def num_states(self) -> int:
        return sum(int(r.shape[0]) for r in self.root)

    def states_at(self, t: int) -> int:
        return int(self.root[t].shape[0])

    def terminal(self, t: int) -> torch.Tensor:
        return self.child[t] < 0

    # ------------------------------------------------------------------ checks
    def check_policy(self, policy: Sequence[torch.Tensor], name: str = "policy", atol: float = 1e-6) -> None:
        """A list of ``H`` tensors ``[N_t, A]`` of log-probabilities whose rows sum to 1."""
        if not isinstance(policy, (list, tuple)) or len(policy) != self.horizon:
            raise ValueError(f"{name}: expected a list of {self.horizon} per-depth [N_t, A] log-prob tensors")
        for t, lp in enumerate(policy):
            want = (self.states_at(t), self.A)
            if not isinstance(lp, torch.Tensor) or tuple(lp.shape) != want:
                raise ValueError(f"{name}[{t}]: expected shape {want}, got {tuple(getattr(lp, 'shape', ()))}")
            if torch.isnan(lp).any() or (lp == math.inf).any():
                raise ValueError(f"{name}[{t}]: holds NaN or +inf log-probabilities")
            tot = torch.logsumexp(lp.double(), -1).exp()
            bad = (tot - 1).abs().max().item() if tot.numel() else 0.0
            if bad > atol:
                raise ValueError(f"{name}[{t}]: rows must sum to 1 (worst row off by {bad:.2e})")

    def _check_values(self, values, name="values") -> int:
        if not isinstance(values, (list, tuple)) or len(values) != self.horizon:
            raise ValueError(f"{name}: expected a list of {self.horizon} per-depth [N_t, m, A] tensors")
        m = None
        for t, v in enumerate(values):
            if v.dim() != 3 or v.shape[0] != self.states_at(t) or v.shape[2] != self.A:
                raise ValueError(f"{name}[{t}]: expected shape [{self.states_at(t)}, m, {self.A}], got {tuple(v.shape)}")
            m = v.shape[1] if m is None else m
            if v.shape[1] != m:
                raise ValueError(f"{name}: the number of objectives changes with depth")
        return m

    def _weights(self, weights, m: Optional[int] = None) -> torch.Tensor:
        m = self.m if m is None else m
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if w.numel() != m or not torch.isfinite(w).all():
            raise ValueError(f"weights: expected {m} finite weights, got {weights!r}")
        return w

    # ------------------------------------------------------------------ policies
    def base_policy(self) -> list:
        """pi_ref renormalised over each state's actions: the base model itself on a full tree,
        its top-k sampling on a top-k tree."""
        return [torch.log_softmax(lp, -1) for lp in self.logp_ref]

    def tilted_policy(self, values: Sequence[torch.Tensor], weights, beta: float) -> list:
        """The MAVIS policy: at every state, the actions' base logits tilted by
        ``beta * sum_i w_i V_i(s.a)`` with the library's own op (``tilt_logits``, float32 as in
        decoding), softmax over the actions."""
        from . import ops

        m = self._check_values(values)
        w = self._weights(weights, m).float()
        out = []
        for t in range(self.horizon):
            lp = self.logp_ref[t]
            if lp.shape[0] == 0:
                out.append(lp.clone())
                continue
            tilted = ops.tilt_logits(lp.float(), values[t].float(), w, beta=float(beta))
            out.append(torch.log_softmax(tilted.double(), -1))
        return out

    # ------------------------------------------------------------------ exact quantities
    def visitation(self, policy: Sequence[torch.Tensor]) -> list:
        """Probability of reaching each state (``[N_t]`` per depth)."""
        d = [torch.ones(self.states_at(0), dtype=torch.float64)]
        for t in range(self.horizon - 1):
            p = policy[t].exp()
            cont = self.child[t] >= 0
            nxt = torch.zeros(self.states_at(t + 1), dtype=torch.float64)
            nxt.index_put_((self.child[t][cont],), (d[t][:, None] * p)[cont])
            d.append(nxt)
        return d

    def evaluate(self, policy: Sequence[torch.Tensor], weights=None, beta: Optional[float] = None) -> TreeEval:
        """Exact expected rewards and sequence KL(pi || pi_ref) per prompt; with ``weights`` and
        ``beta`` also ``J_w = E[w.r] - KL / beta`` per prompt."""
        self.check_policy(policy)
        R = self.n_roots
        rew = torch.zeros(R, self.m, dtype=torch.float64)
        kl = torch.zeros(R, dtype=torch.float64)
        d = self.visitation(policy)
        for t in range(self.horizon):
            if self.states_at(t) == 0:
                continue
            p = policy[t].exp()
            diff = torch.where(p > 0, policy[t] - self.logp_ref[t], torch.zeros_like(p))
            kl.index_add_(0, self.root[t], d[t] * (p * diff).sum(-1))
            term = self.terminal(t)
            r = torch.einsum("sa,sam->sm", torch.where(term, p, torch.zeros_like(p)), self.rewards[t])
            rew.index_add_(0, self.root[t], d[t][:, None] * r)
        J = None
        if weights is not None:
            if beta is None or not beta > 0:
                raise ValueError(f"beta: a positive number is required with weights, got {beta!r}")
            J = rew @ self._weights(weights) - kl / beta
        return TreeEval(rewards=rew, kl=kl, J=J)

    def _backward(self, weights, beta: float, keep_policy: bool):
        if not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(beta)):
            raise ValueError(f"beta: must be a finite number > 0, got {beta!r}")
        w = self._weights(weights)
        pol, Qs = [None] * self.horizon, [None] * self.horizon
        v_next = None
        for t in reversed(range(self.horizon)):
            Q = torch.zeros(self.child[t].shape, dtype=torch.float64)
            for i in range(self.m):
                if w[i] != 0:
                    Q += w[i] * self.rewards[t][..., i]
            if v_next is not None:
                cont = self.child[t] >= 0
                Q[cont] = v_next[self.child[t][cont]]
            z = self.logp_ref[t] + beta * Q
            v_next = torch.logsumexp(z, -1) / beta
            if keep_policy:
                pol[t] = torch.log_softmax(z, -1)
                Qs[t] = Q
        return pol, Qs, v_next

    def optimal(self, weights, beta: float) -> tuple:
        """Exact KL-regularised optimum of ``w.r`` at ``beta`` over the tree's actions, by backward
        induction: ``Q*(s,a) = w.r(s.a)`` if ``s.a`` ends, else ``V*(s.a)``;
        ``V*(s) = (1/beta) log sum_a pi_ref(a|s) exp(beta Q*(s,a))``; ``pi* ∝ pi_ref exp(beta Q*)``.
        On a top-k tree this is the best any method restricted to pi_ref's top-k can do.
        Returns ``(policy_table, Q_table)`` (Q as ``[N_t, A]``)."""
        pol, Qs, _ = self._backward(weights, beta, True)
        return pol, Qs

    def optimal_value(self, weights, beta: float) -> torch.Tensor:
        """``V*(root)`` per prompt, which equals ``J_w(pi*)`` (no tables kept: cheap on a full tree)."""
        return self._backward(weights, beta, False)[2]

    def soft_values(self, policy: Sequence[torch.Tensor], zeta: float) -> list:
        """Per-objective soft values of a policy, a value table:
        ``Q_i(s,a) = E_pi[r_i - zeta * sum_{later steps} log(pi/pi_ref) | s.a]``."""
        self.check_policy(policy)
        Qs = [None] * self.horizon
        v_next = None
        for t in reversed(range(self.horizon)):
            Q = self.rewards[t].permute(0, 2, 1).clone()  # [N, m, A]
            if v_next is not None:
                cont = self.child[t] >= 0
                Qp = Q.permute(0, 2, 1)  # view [N, A, m]
                Qp[cont] = v_next[self.child[t][cont]]
            p = policy[t].exp()
            ratio = torch.where(p > 0, policy[t] - self.logp_ref[t], torch.zeros_like(p))
            v_next = torch.einsum("na,nma->nm", p, Q) - zeta * (p * ratio).sum(-1, keepdim=True)
            Qs[t] = Q
        return Qs

    # ------------------------------------------------------------------ rollouts vs the tree
    def lookup(self, roots: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The state index (at depth ``lengths[i]``) of each response prefix ``tokens[i, :lengths[i]]``
        of prompt ``roots[i]``: ``-1`` when the prefix leaves the tree (a token outside the state's
        actions, or a prefix that ended earlier)."""
        n = roots.shape[0]
        state = roots.clone().long()
        ok = torch.ones(n, dtype=torch.bool)
        for t in range(int(lengths.max()) if n else 0):
            step = ok & (lengths > t)
            if not step.any():
                break
            idx = torch.nonzero(step).flatten()
            acts = self.actions[t][state[idx]]
            hit = acts == tokens[idx, t:t + 1]
            found = hit.any(-1)
            col = hit.long().argmax(-1)
            nxt = self.child[t][state[idx], col]
            good = found & (nxt >= 0)
            state[idx] = torch.where(good, nxt, torch.full_like(nxt, -1))
            ok[idx[~good]] = False
        state[~ok] = -1
        return state


# ---------------------------------------------------------------------- construction
def _forward_logits(model, prompt_ids: list, root: torch.Tensor, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Next-token logits (float32 ``[N, V]``) of the base model after prompt + prefix, left-padded
    (positions from the mask) when prompts differ in length."""
    from .values import positions_from_mask

    N, t = tokens.shape
    P = max(len(p) for p in prompt_ids)
    pad = torch.zeros(len(prompt_ids), P, dtype=torch.long)
    pmask = torch.zeros(len(prompt_ids), P, dtype=torch.long)
    for r, p in enumerate(prompt_ids):
        pad[r, P - len(p):] = torch.tensor(p, dtype=torch.long)
        pmask[r, P - len(p):] = 1
    ragged = bool((pmask == 0).any())
    out = []
    with torch.no_grad():
        for lo in range(0, N, batch_size):
            rr = root[lo:lo + batch_size]
            ids = torch.cat([pad[rr], tokens[lo:lo + batch_size]], 1)
            if ragged:
                mask = torch.cat([pmask[rr], torch.ones(rr.shape[0], t, dtype=torch.long)], 1)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
            else:
                logits = model(input_ids=ids).logits
            out.append(logits[:, -1].float())
    return torch.cat(out) if out else torch.zeros(0, model.config.vocab_size)


def enumerate_tree(model, prompt_ids: Sequence[Sequence[int]], horizon: int, eos_id: int,
                   reward_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], m: int, *,
                   top_k: int = 0, keep_topk: Sequence[int] = (), batch_size: int = 8192):
    """Enumerate the tree of every prompt, depth by depth (one batched base-model forward per depth).

    ``reward_fn(roots [n], responses [n, L]) -> [n, m]`` scores complete responses (token ids; an EOS
    ends the response, what follows it is ignored). ``top_k`` > 0 builds the top-k tree directly;
    ``keep_topk`` (full trees only) also records each state's top-k ids for ``restrict_to_topk``, so
    the subtree is cut from the very same logits. Returns ``(tree, {k: topk_ids per depth})``."""
    V = int(model.config.vocab_size)
    if not 1 <= horizon:
        raise ValueError(f"horizon: must be >= 1, got {horizon}")
    if top_k and not 1 <= top_k <= V:
        raise ValueError(f"top_k: must be in 1..{V} (or 0 for the full vocabulary), got {top_k}")
    from . import ops

    R = len(prompt_ids)
    root = torch.arange(R, dtype=torch.long)
    tokens = torch.zeros(R, 0, dtype=torch.long)
    T = dict(actions=[], logp_ref=[], child=[], rewards=[], root=[], tokens=[])
    kept = {int(k): [] for k in keep_topk}
    for t in range(horizon):
        N = root.shape[0]
        logits = _forward_logits(model, [list(p) for p in prompt_ids], root, tokens, batch_size)[:, :V]
        logp = torch.log_softmax(logits.double(), -1)
        for k in kept:
            kept[k].append(ops.topk_candidates(logits, k)[1] if N else torch.zeros(0, k, dtype=torch.long))
        if top_k:
            actions = ops.topk_candidates(logits, top_k)[1] if N else torch.zeros(0, top_k, dtype=torch.long)
            lp = logp.gather(1, actions)
        else:
            actions = torch.arange(V).expand(N, V)     # a view: no memory for the full tree
            lp = logp
        A = actions.shape[1]
        last = t == horizon - 1
        term = torch.ones(N, A, dtype=torch.bool) if last else actions == eos_id
        rewards = torch.zeros(N, A, m, dtype=torch.float64)
        chunk = max(1, (1 << 18) // A)      # states per reward call: bounded memory on a full tree
        for lo in range(0, N, chunk):
            s_idx, a_idx = torch.nonzero(term[lo:lo + chunk], as_tuple=True)
            si = s_idx + lo
            seq = torch.cat([tokens[si], actions[si, a_idx][:, None]], 1)
            r = torch.as_tensor(reward_fn(root[si], seq), dtype=torch.float64)
            if tuple(r.shape) != (si.shape[0], m):
                raise ValueError(f"reward_fn: expected [{si.shape[0]}, {m}] rewards, got {tuple(r.shape)}")
            rewards[si, a_idx] = r
        if last:
            child = torch.full((1, 1), -1, dtype=torch.long).expand(N, A)
        else:
            cont = ~term
            child = torch.full((N, A), -1, dtype=torch.long)
            n_next = int(cont.sum())
            child[cont] = torch.arange(n_next)
            cs, ca = torch.nonzero(cont, as_tuple=True)   # row-major: the order of the children
        T["actions"].append(actions)
        T["logp_ref"].append(lp)
        T["child"].append(child)
        T["rewards"].append(rewards)
        T["root"].append(root)
        T["tokens"].append(tokens)
        if not last:
            tokens = torch.cat([tokens[cs], actions[cs, ca][:, None]], 1)
            root = root[cs]
    tree = ExactTree(horizon=horizon, vocab_size=V, eos_id=int(eos_id), m=m, prompt_ids=[list(p) for p in prompt_ids],
                     top_k=int(top_k), **T)
    return tree, kept


def restrict_to_topk(full: ExactTree, topk_ids: List[torch.Tensor]) -> ExactTree:
    """The subtree of a full tree that top-k decoding can reach: at every reachable state, only the
    base model's top-k tokens (``topk_ids[t]``, recorded by ``enumerate_tree(keep_topk=...)``)."""
    if full.top_k:
        raise ValueError("restrict_to_topk: expects a full tree (top_k = 0)")
    k = int(topk_ids[0].shape[1])
    idx = torch.arange(full.n_roots)          # kept full-tree states at the current depth
    T = dict(actions=[], logp_ref=[], child=[], rewards=[], root=[], tokens=[])
    for t in range(full.horizon):
        acts = topk_ids[t][idx]
        T["actions"].append(acts)
        T["logp_ref"].append(full.logp_ref[t][idx].gather(1, acts))
        T["rewards"].append(full.rewards[t][idx].gather(1, acts[:, :, None].expand(-1, -1, full.m)))
        T["root"].append(full.root[t][idx])
        T["tokens"].append(full.tokens[t][idx])
        fchild = full.child[t][idx].gather(1, acts)
        cont = fchild >= 0
        child = torch.full(acts.shape, -1, dtype=torch.long)
        child[cont] = torch.arange(int(cont.sum()))
        T["child"].append(child)
        idx = fchild[cont]
    return ExactTree(horizon=full.horizon, vocab_size=full.vocab_size, eos_id=full.eos_id, m=full.m,
                     prompt_ids=[list(p) for p in full.prompt_ids], top_k=k, **T)
