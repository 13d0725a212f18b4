"""The exact testbed (DESIGN.md section 6): a world small enough to solve exactly.

A tiny neural base LM (a 2-layer Llama over a word vocabulary, trained for a few seconds on a
synthetic corpus so that pi_ref is far from uniform) writes responses of at most ``horizon`` tokens
after a fixed prompt; EOS ends a response early. Every response is enumerable (12 tokens, horizon 5:
16 105 decision states), so for any policy we get, with no sampling error,

* the expected reward of every objective and the sequence-level KL(pi || pi_ref),
* the KL-regularized optimum for any weights ``w`` and ``beta`` by backward induction
  (terminal ``V* = sum_i w_i r_i``, ``Q*(s,a) = V*(s.a)``,
  ``V*(s) = (1/beta) log sum_a pi_ref(a|s) exp(beta Q*(s,a))``, ``pi* ∝ pi_ref exp(beta Q*)``),
* the per-objective soft values of any policy (what MAVIS value models try to learn).

The objectives are deterministic functions of the response's visible words, exposed twice: as
reward callables ``fn(prompts, responses) -> Tensor`` on decoded text (what the training pipeline
calls) and as a vectorised token-level function used for the enumeration. Special tokens other
than EOS (``<pad>``, ``<s>``, ``<unk>``) carry no reward, so text decoded with or without
``skip_special_tokens`` scores the same.

Tables. The tree is stored by depth ``t = 0..H-1`` (number of response tokens already written).
Depth ``t`` holds every response prefix made of non-EOS tokens, ``N_t = C**t`` of them with
``C = V - 1``; state ``j`` at depth ``t`` writes ``j`` in base ``C`` (most significant digit = first
token) over ``cont`` (the non-EOS token ids, ascending). A *policy table* is a list over depths of
``[N_t, V]`` float64 log-probabilities of the next token; a *value table* is a list of
``[N_t, m, V]`` values of the child ``s.a`` (one per objective).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

__all__ = [
    "DEFAULT_WORDS",
    "OBJECTIVES",
    "Testbed",
    "PolicyEval",
    "build_testbed",
    "token_rewards",
    "text_rewards",
]

# The vocabulary: sentiment words, a small topic, filler. Ids 4..11 after the 4 specials.
DEFAULT_WORDS = ("good", "great", "bad", "the", "cat", "dog", "sat", "very")
_POSITIVE = ("good", "great")
_NEGATIVE = ("bad",)

# Objective name -> one-line description (the definitions are in _score_words).
OBJECTIVES = {
    "positive": "0.5 * (#good + #great - #bad): wants long, upbeat responses",
    "concise": "1 - 0.3 * #words: wants short responses (ending with EOS early)",
    "cats": "0.5 * #cat, +0.5 more for each 'the cat': a topic/pattern bonus that spends words",
}


def _score_words(words: Sequence[str], objectives: Sequence[str]) -> list[float]:
    """The objectives on one response's visible words (the text-level ground truth)."""
    out = []
    for name in objectives:
        if name == "positive":
            out.append(0.5 * (sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)))
        elif name == "concise":
            out.append(1.0 - 0.3 * len(words))
        elif name == "cats":
            s = 0.0
            for i, w in enumerate(words):
                if w == "cat":
                    s += 0.5 + (0.5 if i > 0 and words[i - 1] == "the" else 0.0)
            out.append(s)
        else:
            raise ValueError(f"objectives: unknown objective {name!r} (known: {sorted(OBJECTIVES)})")
    return out


def _visible_words(text: str, vocab_words: Sequence[str]) -> list[str]:
    """Words of a decoded response up to the first ``</s>``; special and unknown tokens dropped."""
    out = []
    for w in text.split():
        if w == "</s>":
            break
        if w in vocab_words:
            out.append(w)
    return out


def text_rewards(objectives: Sequence[str], words: Sequence[str] = DEFAULT_WORDS) -> dict[str, Callable]:
    """Reward callables in the training pipeline's form, ``fn(prompts, responses) -> Tensor [N]``."""
    words = tuple(words)

    def make(name):
        def fn(prompts: list, responses: list) -> torch.Tensor:
            if len(prompts) != len(responses):
                raise ValueError(f"responses: got {len(responses)} responses for {len(prompts)} prompts")
            return torch.tensor([_score_words(_visible_words(r, words), [name])[0] for r in responses],
                                dtype=torch.float32)

        fn.__name__ = f"testbed_{name}"
        fn.__doc__ = OBJECTIVES[name]
        return fn

    return {name: make(name) for name in objectives}


def token_rewards(ids: torch.Tensor, objectives: Sequence[str], tokenizer, words: Sequence[str] = DEFAULT_WORDS
                  ) -> torch.Tensor:
    """Vectorised objectives on response token ids ``[N, L]`` (tokens after the first EOS ignored;
    non-word tokens carry nothing): ``[N, m]`` float64. Same numbers as ``text_rewards``."""
    if ids.dim() != 2:
        raise ValueError(f"ids: expected [N, L], got shape {tuple(ids.shape)}")
    vocab = tokenizer.get_vocab()
    wid = {w: vocab[w] for w in words}
    eos = tokenizer.eos_token_id
    N, L = ids.shape
    alive = torch.cumprod((ids != eos).long(), dim=1).bool()  # before the first EOS
    is_word = torch.zeros(N, L, dtype=torch.bool)
    for w in words:
        is_word |= ids == wid[w]
    visible = alive & is_word

    def count(ws):
        c = torch.zeros(N, dtype=torch.float64)
        for w in ws:
            c += ((ids == wid[w]) & visible).sum(1).double()
        return c

    cols = []
    for name in objectives:
        if name == "positive":
            cols.append(0.5 * (count(_POSITIVE) - count(_NEGATIVE)))
        elif name == "concise":
            cols.append(1.0 - 0.3 * visible.sum(1).double())
        elif name == "cats":
            # "the cat" adjacency is over visible words (specials in between are invisible in text).
            prev = torch.full((N,), -1, dtype=torch.long)
            s = torch.zeros(N, dtype=torch.float64)
            for j in range(L):
                v = visible[:, j]
                cat = v & (ids[:, j] == wid["cat"])
                s += cat.double() * (0.5 + 0.5 * (prev == wid["the"]).double())
                prev = torch.where(v, ids[:, j], prev)
            cols.append(s)
        else:
            raise ValueError(f"objectives: unknown objective {name!r} (known: {sorted(OBJECTIVES)})")
    return torch.stack(cols, dim=1)


@dataclass
class PolicyEval:
    """Exact evaluation of one policy: expected reward per objective, sequence KL to pi_ref, and
    (when weights/beta were given) ``J = w . rewards - kl / beta``."""

    rewards: torch.Tensor  # [m] float64
    kl: float
    J: Optional[float] = None

    def as_dict(self, objectives: Sequence[str]) -> dict:
        d = {f"r_{n}": float(r) for n, r in zip(objectives, self.rewards)}
        d["kl"] = float(self.kl)
        if self.J is not None:
            d["J"] = float(self.J)
        return d


@dataclass
class Testbed:
    model: torch.nn.Module  # the base LM (LlamaForCausalLM, eval mode)
    tokenizer: object
    objectives: list
    horizon: int
    prompt: str
    words: tuple = DEFAULT_WORDS
    # filled by _build_tree
    prompt_ids: list = field(default_factory=list)
    V: int = 0
    eos_id: int = 0
    cont: torch.Tensor = None  # [C] non-EOS token ids, ascending
    states: list = None  # depth t -> [N_t, t] int64 response tokens
    logp_ref: list = None  # depth t -> [N_t, V] float64
    rewards: list = None  # depth t -> [N_t, V, m] float64 reward of s.a where terminal, else 0
    terminal: list = None  # depth t -> [V] bool: is s.a a complete response

    # ------------------------------------------------------------------ construction
    def _build_tree(self):
        tok = self.tokenizer
        self.prompt_ids = tok(self.prompt, add_special_tokens=False)["input_ids"]
        if not self.prompt_ids:
            raise ValueError(f"prompt: {self.prompt!r} tokenizes to nothing")
        self.V = self.model.config.vocab_size
        self.eos_id = tok.eos_token_id
        self.cont = torch.tensor([a for a in range(self.V) if a != self.eos_id], dtype=torch.long)
        C, H = len(self.cont), self.horizon
        self.states = []
        for t in range(H):
            n = C**t
            j = torch.arange(n)
            digits = [(j // C ** (t - 1 - d)) % C for d in range(t)]
            self.states.append(torch.stack([self.cont[x] for x in digits], 1) if t else torch.zeros(1, 0, dtype=torch.long))
        self.terminal = []
        for t in range(H):
            term = torch.zeros(self.V, dtype=torch.bool)
            term[self.eos_id] = True
            if t == H - 1:
                term[:] = True
            self.terminal.append(term)
        self.rewards = []
        for t in range(H):
            s = self.states[t]
            n = s.shape[0]
            seqs = torch.cat([s.repeat_interleave(self.V, 0), torch.arange(self.V).repeat(n)[:, None]], 1)
            r = token_rewards(seqs, self.objectives, tok, self.words).view(n, self.V, -1)
            self.rewards.append(r * self.terminal[t].view(1, -1, 1).double())
        self.logp_ref = self.tabulate_model(self.model)

    # ------------------------------------------------------------------ helpers
    @property
    def m(self) -> int:
        return len(self.objectives)

    @property
    def num_states(self) -> int:
        return sum(s.shape[0] for s in self.states)

    def input_ids(self, t: int) -> torch.Tensor:
        """Prompt + response prefix of every depth-t state: ``[N_t, P + t]`` int64."""
        s = self.states[t]
        p = torch.tensor(self.prompt_ids, dtype=torch.long).expand(s.shape[0], -1)
        return torch.cat([p, s], 1)

    def full_rows(self, t: int) -> torch.Tensor:
        """For each depth-t state, the index of a deepest state (depth H-1) that extends it: its
        first response token in the padded extension is ``cont[0]``, so the row is ``j * C**(H-1-t)``."""
        C = len(self.cont)
        return torch.arange(self.states[t].shape[0]) * C ** (self.horizon - 1 - t)

    def child_index(self, t: int) -> torch.Tensor:
        """``[N_t, V]`` index at depth t+1 of the child s.a (-1 where s.a is terminal)."""
        C = len(self.cont)
        n = self.states[t].shape[0]
        out = torch.full((n, self.V), -1, dtype=torch.long)
        if t < self.horizon - 1:
            out[:, self.cont] = torch.arange(n)[:, None] * C + torch.arange(C)[None, :]
        return out

    @torch.no_grad()
    def tabulate_model(self, model, batch_size: int = 16384, temperature: float = 1.0) -> list:
        """The full-vocabulary next-token log-probs of a causal LM at every state, from one batched
        forward pass over the deepest prefixes (a causal model's logits at position P+t-1 are those
        of the depth-t prefix)."""
        H, P = self.horizon, len(self.prompt_ids)
        ids = self.input_ids(H - 1)
        chunks = []
        for i in range(0, ids.shape[0], batch_size):
            chunks.append(model(input_ids=ids[i:i + batch_size]).logits.float())
        logits = torch.cat(chunks)  # [N_{H-1}, P+H-1, V]
        logits = logits[..., : self.V] / temperature
        out = []
        for t in range(H):
            rows = self.full_rows(t)
            out.append(torch.log_softmax(logits[rows, P + t - 1].double(), dim=-1))
        return out

    def tabulate(self, policy_fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 16384) -> list:
        """A policy table from ``policy_fn(input_ids [B, P+t]) -> log-probs [B, V]`` (batched)."""
        out = []
        for t in range(self.horizon):
            ids = self.input_ids(t)
            parts = [policy_fn(ids[i:i + batch_size]).double() for i in range(0, ids.shape[0], batch_size)]
            lp = torch.cat(parts)
            if lp.shape != (ids.shape[0], self.V):
                raise ValueError(f"policy_fn: expected [B, V={self.V}] log-probs, got {tuple(lp.shape)}")
            out.append(lp)
        return out

    def _weights(self, weights) -> torch.Tensor:
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if w.numel() != self.m:
            raise ValueError(f"weights: expected {self.m} weights (objectives {self.objectives}), got {w.numel()}")
        return w

    # ------------------------------------------------------------------ exact quantities
    def evaluate(self, logp: list, weights=None, beta: Optional[float] = None) -> PolicyEval:
        """Exact expected rewards and sequence KL(pi || pi_ref) of a policy table; with ``weights``
        and ``beta`` also ``J_w = E[w.r] - KL / beta``."""
        self._check_table(logp, "logp")
        d = torch.ones(1, dtype=torch.float64)  # visitation probability of each depth-t state
        rew = torch.zeros(self.m, dtype=torch.float64)
        kl = torch.zeros((), dtype=torch.float64)
        for t in range(self.horizon):
            p = logp[t].exp()
            diff = torch.where(p > 0, logp[t] - self.logp_ref[t], torch.zeros_like(p))
            kl = kl + (d * (p * diff).sum(-1)).sum()
            term = self.terminal[t]
            rew = rew + torch.einsum("s,sa,sam->m", d, p[:, term], self.rewards[t][:, term])
            if t < self.horizon - 1:
                d = (d[:, None] * p[:, self.cont]).reshape(-1)
        J = None
        if weights is not None:
            if beta is None:
                raise ValueError("beta: required with weights")
            J = float(self._weights(weights) @ rew - kl / beta)
        return PolicyEval(rewards=rew, kl=float(kl), J=J)

    def optimal(self, weights, beta: float) -> tuple[list, list]:
        """Exact KL-regularized optimum of ``w . r`` at ``beta`` by backward induction.
        Returns ``(logp_table, Q_table)`` with Q as ``[N_t, V]`` float64."""
        if not beta > 0:
            raise ValueError(f"beta: must be > 0, got {beta}")
        w = self._weights(weights)
        logp, Qs = [None] * self.horizon, [None] * self.horizon
        v_next = None
        for t in reversed(range(self.horizon)):
            Q = self.rewards[t] @ w  # terminal children
            if t < self.horizon - 1:
                Q[:, self.cont] = v_next.view(-1, len(self.cont))
            z = self.logp_ref[t] + beta * Q
            v_next = torch.logsumexp(z, -1) / beta
            logp[t] = torch.log_softmax(z, -1)
            Qs[t] = Q
        return logp, Qs

    def optimal_value(self, weights, beta: float) -> float:
        """``V*(root)``, which equals ``J_w(pi*)``."""
        _, Q = self.optimal(weights, beta)
        return float(torch.logsumexp(self.logp_ref[0] + beta * Q[0], -1)[0] / beta)

    def soft_values(self, logp: list, zeta: float) -> tuple[list, list]:
        """Per-objective soft values of a policy: ``Q_i(s,a) = E_pi[r_i - zeta * sum_{later steps}
        log(pi/pi_ref) | s.a]`` and ``V_i(s) = sum_a pi(a|s) (Q_i(s,a) - zeta log(pi/pi_ref)(a|s))``.
        Returns ``(Q_table [N_t, m, V], V_table [N_t, m])``."""
        self._check_table(logp, "logp")
        Qs, Vs = [None] * self.horizon, [None] * self.horizon
        v_next = None
        for t in reversed(range(self.horizon)):
            Q = self.rewards[t].permute(0, 2, 1).clone()  # [N, m, V]
            if t < self.horizon - 1:
                Q[:, :, self.cont] = v_next.view(-1, len(self.cont), self.m).permute(0, 2, 1)
            p = logp[t].exp()
            ratio = torch.where(p > 0, logp[t] - self.logp_ref[t], torch.zeros_like(p))
            v = torch.einsum("na,nma->nm", p, Q) - zeta * (p * ratio).sum(-1, keepdim=True)
            Qs[t], Vs[t], v_next = Q, v, v
        return Qs, Vs

    def sequence_logprobs(self, logp: list) -> tuple[list, torch.Tensor]:
        """Every complete response (as a token list) and its probability under a policy table,
        by forward accumulation (for exact-vs-sampled distribution tests)."""
        seqs, probs = [], []
        lp_state = torch.zeros(1, dtype=torch.float64)
        for t in range(self.horizon):
            term = torch.nonzero(self.terminal[t]).flatten()
            lp = lp_state[:, None] + logp[t]
            for a in term.tolist():
                for j in range(self.states[t].shape[0]):
                    seqs.append(self.states[t][j].tolist() + [a])
                probs.append(lp[:, a])
            if t < self.horizon - 1:
                lp_state = lp[:, self.cont].reshape(-1)
        return seqs, torch.cat(probs)

    def sample(self, logp: list, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``n`` responses drawn from a policy table (ancestral sampling on the tree): ``[n, H]``
        token ids, EOS then ``pad`` after an early end."""
        pad = self.tokenizer.pad_token_id
        out = torch.full((n, self.horizon), pad, dtype=torch.long)
        state = torch.zeros(n, dtype=torch.long)
        alive = torch.ones(n, dtype=torch.bool)
        C = len(self.cont)
        pos_in_cont = torch.full((self.V,), -1, dtype=torch.long)
        pos_in_cont[self.cont] = torch.arange(C)
        for t in range(self.horizon):
            p = logp[t][state].exp()
            a = torch.multinomial(p, 1, generator=generator).flatten()
            out[:, t] = torch.where(alive, a, out[:, t])
            alive = alive & (a != self.eos_id)
            state = torch.where(alive, state * C + pos_in_cont[a].clamp_min(0), torch.zeros_like(state))
        return out

    def decode(self, ids: torch.Tensor) -> list:
        """Response token rows -> text, cut at the first EOS (kept as ``</s>``)."""
        out = []
        for row in ids.tolist():
            words = []
            for a in row:
                words.append(self.tokenizer.convert_ids_to_tokens(a))
                if a == self.eos_id:
                    break
            out.append(" ".join(words))
        return out

    def reward_fns(self) -> dict:
        """The reward callables ``fn(prompts, responses) -> Tensor [N]`` (training pipeline form)."""
        return text_rewards(self.objectives, self.words)

    def _check_table(self, table, name):
        if not isinstance(table, (list, tuple)) or len(table) != self.horizon:
            raise ValueError(f"{name}: expected a list of {self.horizon} per-depth tensors")
        for t, x in enumerate(table):
            if x.shape != (self.states[t].shape[0], self.V):
                raise ValueError(f"{name}[{t}]: expected shape {(self.states[t].shape[0], self.V)}, got {tuple(x.shape)}")


# ---------------------------------------------------------------------- the base LM
def _corpus(words: Sequence[str], horizon: int, n: int, seed: int) -> list:
    """A synthetic corpus from a fixed random bigram chain (Dirichlet(0.4) rows: peaked, far from
    uniform), with positive words made rare and an EOS probability that grows with length."""
    g = torch.Generator().manual_seed(seed)
    W = len(words)
    trans = torch.distributions.Dirichlet(torch.full((W,), 0.4)).sample((W + 1,))  # row W = start
    for i, w in enumerate(words):
        if w in _POSITIVE:
            trans[:, i] *= 0.25
    trans = trans / trans.sum(1, keepdim=True)
    p_eos = [0.08 + 0.12 * t for t in range(horizon)]
    out = []
    for _ in range(n):
        prev, sent = W, []
        for t in range(horizon):
            if t > 0 and torch.rand((), generator=g) < p_eos[t]:
                break
            prev = int(torch.multinomial(trans[prev], 1, generator=g))
            sent.append(words[prev])
        out.append(sent)
    return out


def _train_base(model, tokenizer, corpus, horizon, steps, seed):
    """A few hundred Adam steps of next-token cross-entropy (seconds on a CPU)."""
    eos, pad, bos = tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id
    vocab = tokenizer.get_vocab()
    L = horizon + 2
    ids = torch.full((len(corpus), L), pad, dtype=torch.long)
    labels = torch.full((len(corpus), L), -100, dtype=torch.long)
    for i, sent in enumerate(corpus):
        toks = [bos] + [vocab[w] for w in sent]
        if len(sent) < horizon:
            toks.append(eos)
        ids[i, : len(toks)] = torch.tensor(toks)
        labels[i, 1 : len(toks)] = torch.tensor(toks[1:])
    mask = (labels != -100) | (torch.arange(L) == 0)
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(corpus), (128,), generator=g)
        out = model(input_ids=ids[idx], attention_mask=mask[idx].long())
        logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
        loss = torch.nn.functional.cross_entropy(logits, labels[idx, 1:].reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()  # parameters keep requires_grad: a trainer may copy this model as a value trunk
    return float(loss.detach())


def build_testbed(
    objectives: Sequence[str] = ("positive", "concise"),
    *,
    horizon: int = 5,
    words: Sequence[str] = DEFAULT_WORDS,
    prompt: str = "<s>",
    seed: int = 0,
    train_steps: int = 150,
    corpus_size: int = 4096,
    hidden_size: int = 32,
    num_layers: int = 2,
) -> Testbed:
    """Build the testbed: tokenizer, base LM trained briefly (deterministic under ``seed``), the
    enumerated tree with pi_ref and the rewards. Nothing is written to disk."""
    from .tiny import tiny_llama, word_tokenizer

    objectives = list(objectives)
    if not 1 <= len(objectives) <= 3:
        raise ValueError(f"objectives: expected 1 to 3 objectives, got {objectives}")
    for o in objectives:
        if o not in OBJECTIVES:
            raise ValueError(f"objectives: unknown objective {o!r} (known: {sorted(OBJECTIVES)})")
    if not 1 <= horizon <= 6:
        raise ValueError(f"horizon: must be 1..6 (the tree has (V-1)**(horizon-1) leaves), got {horizon}")
    tok = word_tokenizer(list(words))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tiny_llama(len(tok), hidden_size=hidden_size, num_layers=num_layers, seed=seed, tokenizer=tok,
                           max_position_embeddings=64)
        corpus = _corpus(words, horizon, corpus_size, seed)
        _train_base(model, tok, corpus, horizon, train_steps, seed)
    tb = Testbed(model=model, tokenizer=tok, objectives=objectives, horizon=horizon, prompt=prompt, words=tuple(words))
    tb._build_tree()
    return tb


def entropy_per_state(logp: list) -> float:
    """Mean next-token entropy over the states of a table (a quick 'how far from uniform' check)."""
    ent = [-(lp.exp() * torch.where(lp > -math.inf, lp, torch.zeros_like(lp))).sum(-1) for lp in logp]
    return float(torch.cat(ent).mean())
