"""The hard exact world: several prompts, held-out prompts, rewards that are not per-token sums,
top-k decoding, and still every response enumerable.

The demo's testbed (``testbed.py``) is deliberately easy: one prompt, 12 tokens, per-token-sum
rewards, rollouts that cover nearly all of the probability mass. This world is built to tell good
value learning from mediocre:

* **Vocabulary**: 15 words + EOS, nothing else. EOS doubles as the padding token, so no special
  token that carries no reward is ever a response token: every one of the 16 tokens is a word that
  the objectives see, or the end of the response.
* **Prompts**: ``"<opener> <topic>"`` for 3 openers (``good``, ``bad``, ``the``: they shift the
  base model's sentiment) and 4 topics (``cat``, ``dog``, ``bird``, ``fish``). 12 prompts, split per
  seed into 6 for training, 3 for validation (choosing an iteration) and 3 for the held-out test:
  every held-out prompt is a new combination of an opener and a topic that training saw.
* **Base model**: a 2-layer Llama trained for a few seconds on a corpus from a random,
  prompt-dependent word chain (Dirichlet rows, a length-dependent end probability, ``done`` usually
  ends a response), so pi_ref depends on the prompt and is far from uniform. The seed changes the
  chain, the base model, the prompt split and the training run.
* **Objectives** (all multiples of 1/4, so float32 and float64 hold them exactly):
  ``positive`` is the demo's per-token sum; ``brief`` has a bonus only at the end (the last word);
  ``topic`` depends on the prompt and on the order of the words (see ``OBJECTIVES``).
* **Top-k**: decoding keeps the base model's top-k tokens (k = 8 of 16 by default; they hold about
  96% of pi_ref's mass at a state, as a real LM's top-40 would). The world
  holds two exact trees: the *full* tree (every token at every state; for the full-vocabulary
  optimum and pi_ref) and the *top-k* tree cut from it (every state a top-k method can reach; for
  the top-k-restricted optimum and every MAVIS policy).

Reuse (e.g. for another kind of value model): ``world = build_hard_world(seed)``; a policy is a list
over depths of ``[N_t, A]`` log-probabilities over ``world.tree``'s actions (any per-state
distribution); ``world.tree.evaluate(policy, weights, beta).mean(world.roots("test"))`` is its exact
J on the held-out prompts; ``world.tree.optimal`` / ``world.full.optimal_value`` are the two optima;
``tree_values.value_table(world.tree, value_models)`` scores trained value models at every state and
``world.tree.tilted_policy(values, weights, beta)`` turns values into the MAVIS policy.

With horizon 5 the full tree has 54 241 states per prompt (650 892 for 12 prompts) and the top-8
tree about 2 800 per prompt (up to 8**5 = 32 768 complete responses); a rollout tree of the
training pipeline (4 root branches, then 2) has 64 leaves, so 8 trees per prompt sample 512
responses per objective and iteration: they cover about 40% of the probability mass of the
4-token prefixes and 20% of the 5-token ones (measured and reported by the benchmark).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .exact_tree import ExactTree, enumerate_tree, restrict_to_topk

__all__ = ["WORDS", "OBJECTIVES", "OBJECTIVE_SETS", "OPENERS", "TOPICS", "HardWorld", "build_hard_world",
           "hard_tokenizer", "score_words", "split_prompts"]

WORDS = ("good", "great", "nice", "bad", "awful", "cat", "dog", "bird", "fish", "the", "a", "very", "sat",
         "ran", "done")
POSITIVE = ("good", "great", "nice")
NEGATIVE = ("bad", "awful")
TOPICS = ("cat", "dog", "bird", "fish")
OPENERS = ("good", "bad", "the")
CLOSER = "done"
EOS = "</s>"

OBJECTIVES = {
    "positive": "0.5 * (#good + #great + #nice - #bad - #awful): a per-token sum; wants long, upbeat responses",
    "brief": "1 if the last word is 'done' (a bonus only at the end), minus 0.25 per word",
    "topic": "+1 if the prompt's topic word appears, +0.5 more if its first mention follows 'the', -0.5 if "
             "another topic word comes before it (or anywhere, when it never comes): order- and prompt-dependent",
}
# The evaluation settings: two objectives are the first two of the three.
OBJECTIVE_SETS = {2: ("positive", "brief"), 3: ("positive", "brief", "topic")}


# ---------------------------------------------------------------------- objectives
def _prompt_topic(prompt: str) -> Optional[str]:
    for w in prompt.split():
        if w in TOPICS:
            return w
    return None


def score_words(words: Sequence[str], topic: Optional[str], objectives: Sequence[str]) -> List[float]:
    """The objectives on one response's words (the text-level ground truth)."""
    out = []
    n = len(words)
    for name in objectives:
        if name == "positive":
            out.append(0.5 * (sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)))
        elif name == "brief":
            out.append((1.0 if n and words[-1] == CLOSER else 0.0) - 0.25 * n)
        elif name == "topic":
            first = next((i for i, w in enumerate(words) if w == topic), None) if topic else None
            other = [i for i, w in enumerate(words) if w in TOPICS and w != topic]
            s = 0.0
            if first is not None:
                s += 1.0 + (0.5 if first > 0 and words[first - 1] == "the" else 0.0)
            if other and (first is None or min(other) < first):
                s -= 0.5
            out.append(s)
        else:
            raise ValueError(f"objectives: unknown objective {name!r} (known: {sorted(OBJECTIVES)})")
    return out


def _response_words(text: str) -> List[str]:
    """Words of a decoded response up to the first ``</s>`` (present when decoded without
    ``skip_special_tokens``). A word outside the vocabulary is an error: it cannot come from this
    world's tokenizer, so the caller is scoring the wrong text."""
    out = []
    for w in text.split():
        if w == EOS:
            break
        if w not in WORDS:
            raise ValueError(f"responses: {w!r} is not a word of the hard world (text {text!r})")
        out.append(w)
    return out


def text_rewards(objectives: Sequence[str]) -> Dict[str, Callable]:
    """Reward callables in the training pipeline's form, ``fn(prompts, responses) -> Tensor [N]``."""
    for o in objectives:
        if o not in OBJECTIVES:
            raise ValueError(f"objectives: unknown objective {o!r} (known: {sorted(OBJECTIVES)})")

    def make(name):
        def fn(prompts: list, responses: list) -> torch.Tensor:
            if len(prompts) != len(responses):
                raise ValueError(f"responses: got {len(responses)} responses for {len(prompts)} prompts")
            return torch.tensor([score_words(_response_words(r), _prompt_topic(p), [name])[0]
                                 for p, r in zip(prompts, responses)], dtype=torch.float32)

        fn.__name__ = f"hard_{name}"
        fn.__doc__ = OBJECTIVES[name]
        return fn

    return {name: make(name) for name in objectives}


def token_rewards(ids: torch.Tensor, topic_ids: torch.Tensor, objectives: Sequence[str], vocab: Dict[str, int]
                  ) -> torch.Tensor:
    """Vectorised objectives on response token ids ``[N, L]`` (EOS ends a response; what follows is
    ignored) with each row's prompt topic id ``[N]`` (-1: none): ``[N, m]`` float64, the same numbers
    as ``text_rewards`` on the decoded text."""
    if ids.dim() != 2:
        raise ValueError(f"ids: expected [N, L], got shape {tuple(ids.shape)}")
    eos = vocab[EOS]
    N, L = ids.shape
    vis = torch.cumprod((ids != eos).long(), dim=1).bool()          # before the first EOS
    n = vis.sum(1)

    def isin(ws):
        m = torch.zeros(N, L, dtype=torch.bool)
        for w in ws:
            m |= ids == vocab[w]
        return m & vis

    cols = []
    pos_idx = torch.arange(L).expand(N, L)
    for name in objectives:
        if name == "positive":
            cols.append(0.5 * (isin(POSITIVE).sum(1) - isin(NEGATIVE).sum(1)).double())
        elif name == "brief":
            last = ids.gather(1, (n - 1).clamp_min(0)[:, None])[:, 0]
            cols.append(((n > 0) & (last == vocab[CLOSER])).double() - 0.25 * n.double())
        elif name == "topic":
            is_topic = (ids == topic_ids[:, None]) & vis & (topic_ids[:, None] >= 0)
            first = torch.where(is_topic, pos_idx, torch.full_like(pos_idx, L)).min(1).values
            has = first < L
            prev = ids.gather(1, (first - 1).clamp(0, L - 1)[:, None])[:, 0]
            after_the = has & (first > 0) & (prev == vocab["the"])
            other = isin(TOPICS) & ~is_topic
            first_other = torch.where(other, pos_idx, torch.full_like(pos_idx, L)).min(1).values
            penal = (first_other < L) & (first_other < first)
            cols.append(has.double() + 0.5 * after_the.double() - 0.5 * penal.double())
        else:
            raise ValueError(f"objectives: unknown objective {name!r} (known: {sorted(OBJECTIVES)})")
    return torch.stack(cols, 1)


# ---------------------------------------------------------------------- tokenizer, prompts
def hard_tokenizer():
    """Word-level tokenizer: id 0 is ``</s>`` (EOS, also the padding token), then the 15 words. No
    BOS and no unknown token: a word outside the vocabulary is an error."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0}
    for w in WORDS:
        vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins tokens with single spaces
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=EOS, eos_token=EOS, padding_side="left")


def default_prompts() -> List[str]:
    return [f"{o} {t}" for o in OPENERS for t in TOPICS]


def split_prompts(seed: int) -> Dict[str, List[int]]:
    """Train / validation / test indices into ``default_prompts()``: with the topics in a seeded
    order pi, test = (opener i, topic pi(i)), validation = (opener i, topic pi(i+1)), i = 0..2;
    train = the other 6. Every opener and every topic of a held-out prompt occurs in training."""
    g = torch.Generator().manual_seed(int(seed) + 7919)
    perm = torch.randperm(len(TOPICS), generator=g).tolist()
    idx = {(o, t): i for i, (o, t) in enumerate((o, t) for o in range(len(OPENERS)) for t in range(len(TOPICS)))}
    test = [idx[(i, perm[i])] for i in range(len(OPENERS))]
    val = [idx[(i, perm[i + 1])] for i in range(len(OPENERS))]
    train = [j for j in range(len(idx)) if j not in test and j not in val]
    return {"train": train, "val": val, "test": test}


# ---------------------------------------------------------------------- base model
def _corpus(prompts: Sequence[str], horizon: int, per_prompt: int, seed: int, alpha: float) -> List[tuple]:
    """(prompt index, response words) pairs from a random prompt-dependent word chain."""
    W = len(WORDS)
    wi = {w: i for i, w in enumerate(WORDS)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trans = torch.distributions.Dirichlet(torch.full((W,), float(alpha))).sample((W,)).double()
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for pi, p in enumerate(prompts):
        opener, topic = p.split()
        mod = torch.ones(W, dtype=torch.float64)
        for t in TOPICS:
            mod[wi[t]] = 3.0 if t == topic else 0.5
        for w in POSITIVE:
            mod[wi[w]] *= 0.5 * (2.5 if opener == "good" else 0.4 if opener == "bad" else 1.0)
        for w in NEGATIVE:
            mod[wi[w]] *= 2.5 if opener == "bad" else 0.4 if opener == "good" else 1.0
        mod[wi[CLOSER]] *= 0.7
        rows = trans * mod
        rows = rows / rows.sum(1, keepdim=True)
        for _ in range(per_prompt):
            prev, words = wi[topic], []
            for t in range(horizon):
                p_end = 0.03 if t == 0 else (0.8 if WORDS[prev] == CLOSER else min(0.04 + 0.09 * t, 0.6))
                if float(torch.rand((), generator=g, dtype=torch.float64)) < p_end:
                    break
                prev = int(torch.multinomial(rows[prev], 1, generator=g))
                words.append(WORDS[prev])
            out.append((pi, words))
    return out


def _train_base(model, tok, prompts, corpus, horizon, steps, seed) -> float:
    """Adam on next-token cross-entropy of the response tokens (and the EOS) given the prompt."""
    vocab = tok.get_vocab()
    eos = vocab[EOS]
    P = max(len(p.split()) for p in prompts)
    L = P + horizon + 1
    ids = torch.full((len(corpus), L), eos, dtype=torch.long)
    labels = torch.full((len(corpus), L), -100, dtype=torch.long)
    mask = torch.zeros((len(corpus), L), dtype=torch.long)
    for i, (pi, words) in enumerate(corpus):
        ptoks = [vocab[w] for w in prompts[pi].split()]
        toks = ptoks + [vocab[w] for w in words] + ([eos] if len(words) < horizon else [])
        ids[i, :len(toks)] = torch.tensor(toks)
        mask[i, :len(toks)] = 1
        labels[i, len(ptoks):len(toks)] = torch.tensor(toks[len(ptoks):])
    g = torch.Generator().manual_seed(seed + 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    loss = torch.zeros(())
    for _ in range(steps):
        idx = torch.randint(0, len(corpus), (128,), generator=g)
        logits = model(input_ids=ids[idx], attention_mask=mask[idx]).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[idx, 1:].reshape(-1),
                                                 ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


# ---------------------------------------------------------------------- the world
@dataclass
class HardWorld:
    """The hard world of one seed: base model, tokenizer, prompts and their split, the exact trees.

    ``tree`` is the top-k tree (every MAVIS policy and the restricted optimum live on it);
    ``full`` the full tree (the full-vocabulary optimum and pi_ref), or None when built without it.
    Both hold all three objectives; a two-objective evaluation uses weights ``(w1, w2, 0)``."""

    model: torch.nn.Module
    tokenizer: object
    prompts: List[str]
    split: Dict[str, List[int]]
    horizon: int
    top_k: int
    seed: int
    tree: ExactTree
    full: Optional[ExactTree] = None
    objectives: List[str] = field(default_factory=lambda: list(OBJECTIVE_SETS[3]))
    base_loss: float = float("nan")

    @property
    def V(self) -> int:
        return self.tree.vocab_size

    def roots(self, name: str) -> List[int]:
        """Prompt indices of a set: ``train``, ``val``, ``test`` or ``all``."""
        if name == "all":
            return list(range(len(self.prompts)))
        if name not in self.split:
            raise ValueError(f"prompt set: expected one of {sorted(self.split) + ['all']}, got {name!r}")
        return list(self.split[name])

    def training_prompts(self, trees_per_prompt: int) -> List[str]:
        """The prompt list given to the training pipeline: each TRAIN prompt ``trees_per_prompt``
        times (one rollout tree each). Validation and test prompts never appear."""
        return [self.prompts[i] for i in self.split["train"] for _ in range(trees_per_prompt)]

    def weights(self, w: Sequence[float]) -> List[float]:
        """Pad a 2- or 3-objective weight vector to the world's 3 objectives (zeros at the end)."""
        w = [float(x) for x in w]
        if not 1 <= len(w) <= len(self.objectives):
            raise ValueError(f"weights: expected 1 to {len(self.objectives)} weights, got {w}")
        return w + [0.0] * (len(self.objectives) - len(w))

    def reward_fns(self, objectives: Optional[Sequence[str]] = None) -> Dict[str, Callable]:
        return text_rewards(list(objectives or self.objectives))

    def describe(self) -> dict:
        d = {"seed": self.seed, "vocab": self.V, "horizon": self.horizon, "top_k": self.top_k,
             "prompts": self.prompts, "split": self.split, "objectives": {o: OBJECTIVES[o] for o in self.objectives},
             "topk_tree_states": self.tree.num_states, "base_train_loss": self.base_loss}
        if self.full is not None:
            d["full_tree_states"] = self.full.num_states
        return d


def _reward_fn_for(tok, prompts, objectives):
    vocab = tok.get_vocab()
    topic = torch.tensor([vocab[_prompt_topic(p)] if _prompt_topic(p) else -1 for p in prompts], dtype=torch.long)

    def fn(roots: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        return token_rewards(seqs, topic[roots], objectives, vocab)

    return fn


def build_hard_world(seed: int = 0, *, horizon: int = 5, top_k: int = 8, full_tree: bool = True,
                     train_steps: int = 400, corpus_per_prompt: int = 400, alpha: float = 0.6,
                     hidden_size: int = 32, num_layers: int = 2, batch_size: int = 8192) -> HardWorld:
    """Build the world of one seed (deterministic under ``seed`` and the torch thread count): the
    tokenizer, the base model trained on the seed's corpus, the prompt split and the exact trees.
    ``full_tree=False`` skips the full tree (then the top-k tree is enumerated directly: cheaper,
    but the full-vocabulary optimum is not available). Nothing is written to disk."""
    from .tiny import tiny_llama

    if not 1 <= horizon <= 6:
        raise ValueError(f"horizon: must be 1..6 (the full tree has 15**(horizon-1) * 16 leaves per prompt), got {horizon}")
    V = len(WORDS) + 1
    if not 1 <= top_k <= V:
        raise ValueError(f"top_k: must be 1..{V}, got {top_k}")
    if train_steps < 0 or corpus_per_prompt < 1:
        raise ValueError("train_steps: must be >= 0 and corpus_per_prompt >= 1")
    tok = hard_tokenizer()
    prompts = default_prompts()
    objectives = list(OBJECTIVE_SETS[3])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tiny_llama(V, hidden_size=hidden_size, num_layers=num_layers, seed=seed, tokenizer=tok,
                           max_position_embeddings=32)
        corpus = _corpus(prompts, horizon, corpus_per_prompt, seed, alpha)
        loss = _train_base(model, tok, prompts, corpus, horizon, train_steps, seed)
    prompt_ids = [tok(p)["input_ids"] for p in prompts]
    rfn = _reward_fn_for(tok, prompts, objectives)
    eos = tok.eos_token_id
    full = None
    if full_tree:
        full, kept = enumerate_tree(model, prompt_ids, horizon, eos, rfn, len(objectives), keep_topk=(top_k,),
                                    batch_size=batch_size)
        tree = restrict_to_topk(full, kept[top_k])
    else:
        tree, _ = enumerate_tree(model, prompt_ids, horizon, eos, rfn, len(objectives), top_k=top_k,
                                 batch_size=batch_size)
    return HardWorld(model=model, tokenizer=tok, prompts=prompts, split=split_prompts(seed), horizon=horizon,
                     top_k=top_k, seed=seed, tree=tree, full=full, objectives=objectives, base_loss=loss)


def world_fingerprint(world: HardWorld) -> str:
    """sha256 of the base model's weights and the world's description (checks that a saved world
    and a rebuilt one are the same)."""
    h = hashlib.sha256(json.dumps(world.describe(), sort_keys=True, default=str).encode())
    for k, v in sorted(world.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def entropy_per_state(tree: ExactTree) -> float:
    """Mean entropy (nats) of pi_ref over the states of a full tree (how far from uniform)."""
    ent = []
    for lp in tree.logp_ref:
        ent.append(-(lp.exp() * lp).sum(-1))
    return float(torch.cat(ent).mean()) if ent else math.nan
