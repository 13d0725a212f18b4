"""The hard exact world: objectives (text vs token level, hand-checked cases), the exact trees
(probabilities, the top-k subtree, both optima, value tables of the optimum), exact enumeration
against the real sampler, and the prompt split."""

from __future__ import annotations

import math

import pytest
import torch

from mavis_ext.hard_world import (OBJECTIVE_SETS, OPENERS, TOPICS, WORDS, build_hard_world, default_prompts,
                                  score_words, split_prompts, text_rewards, token_rewards)
from mavis_ext.exact_tree import enumerate_tree

scipy_stats = pytest.importorskip("scipy.stats")

OBJS = list(OBJECTIVE_SETS[3])


@pytest.fixture(scope="module")
def world():
    # Horizon 3 and top-4: 2 892 full-tree and ~200 top-k states over 12 prompts, built in seconds.
    return build_hard_world(3, horizon=3, top_k=4, train_steps=120, corpus_per_prompt=150)


def _random_policy(tree, g):
    return [torch.log_softmax(torch.randn(lp.shape, generator=g, dtype=torch.float64) * 2, -1) for lp in tree.logp_ref]


# ---------------------------------------------------------------------- objectives
def test_objectives_on_hand_checked_responses():
    cases = [
        ("good cat", "the cat sat done", [0.0, 0.0, 1.5]),
        ("good cat", "good great bad", [0.5, -0.75, 0.0]),
        ("the dog", "cat dog", [0.0, -0.5, 0.5]),          # another topic before the prompt's
        ("the dog", "dog the cat", [0.0, -0.75, 1.0]),     # ... after it: no penalty
        ("bad fish", "fish", [0.0, -0.25, 1.0]),           # first word: nothing before it
        ("bad fish", "the bird", [0.0, -0.5, -0.5]),       # only another topic
        ("the bird", "", [0.0, 0.0, 0.0]),                 # EOS at once
        ("the bird", "done done", [0.0, 0.5, 0.0]),
        ("the bird", "nice awful the bird the bird", [0.0, -1.5, 1.5]),
    ]
    fns = text_rewards(OBJS)
    for prompt, resp, want in cases:
        assert score_words(resp.split(), prompt.split()[1], OBJS) == want, (prompt, resp)
        for text in (resp, resp + " </s>", resp + " </s> </s>"):
            got = [float(fns[o]([prompt], [text])[0]) for o in OBJS]
            assert got == want, (prompt, text)


def test_text_and_token_rewards_agree(world):
    tok = world.tokenizer
    vocab = tok.get_vocab()
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, world.V, (600, 6), generator=g)
    ids[::5, 3] = tok.eos_token_id  # plenty of early EOS
    # as in generated output: nothing but padding (= EOS here) after the first EOS
    after = torch.cumsum((ids == tok.eos_token_id).long(), 1) > 0
    ids[after] = tok.eos_token_id
    roots = torch.randint(0, len(world.prompts), (600,), generator=g)
    topic = torch.tensor([vocab[p.split()[1]] for p in world.prompts])[roots]
    want = token_rewards(ids, topic, OBJS, vocab)
    fns = text_rewards(OBJS)
    prompts = [world.prompts[int(r)] for r in roots]
    for skip in (True, False):
        texts = [tok.decode(r, skip_special_tokens=skip) for r in ids.tolist()]
        for i, o in enumerate(OBJS):
            torch.testing.assert_close(fns[o](prompts, texts).double(), want[:, i], rtol=0, atol=0)
    assert want.std(0).min() > 0.2                      # not trivial on random data
    assert torch.equal(want * 4, (want * 4).round())     # multiples of 1/4: exact in float32 too


def test_reward_callables_reject_foreign_text():
    fns = text_rewards(["positive"])
    with pytest.raises(ValueError, match="responses: 'hello' is not a word"):
        fns["positive"](["good cat"], ["good hello"])
    with pytest.raises(ValueError, match="objectives: unknown objective"):
        text_rewards(["nope"])


def test_no_reward_free_special_tokens(world):
    tok = world.tokenizer
    assert world.V == len(WORDS) + 1 == len(tok)
    assert tok.pad_token_id == tok.eos_token_id and tok.bos_token_id is None and tok.unk_token_id is None
    # every non-EOS token changes some objective when appended to some response
    vocab = tok.get_vocab()
    for w in WORDS:
        base = torch.tensor([[vocab["the"]]])
        ext = torch.tensor([[vocab["the"], vocab[w]]])
        t = torch.tensor([vocab["cat"]])
        assert not torch.equal(token_rewards(base, t, OBJS, vocab), token_rewards(ext, t, OBJS, vocab)), w


# ---------------------------------------------------------------------- prompts
@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_prompt_split(seed):
    prompts = default_prompts()
    sp = split_prompts(seed)
    allidx = sorted(sp["train"] + sp["val"] + sp["test"])
    assert allidx == list(range(len(prompts))) == list(range(len(OPENERS) * len(TOPICS)))
    assert len(sp["train"]) == 6 and len(sp["val"]) == 3 and len(sp["test"]) == 3
    seen = {w for i in sp["train"] for w in prompts[i].split()}
    for i in sp["val"] + sp["test"]:
        assert set(prompts[i].split()) <= seen  # a new combination of known parts
    assert split_prompts(seed) == sp


def test_training_prompts_are_the_train_split_only(world):
    got = world.training_prompts(3)
    train = [world.prompts[i] for i in world.split["train"]]
    assert sorted(set(got)) == sorted(train) and len(got) == 3 * len(train)
    held = {world.prompts[i] for i in world.split["val"] + world.split["test"]}
    assert not held & set(got)


# ---------------------------------------------------------------------- the trees
def test_tree_contents_match_the_model_and_the_rewards(world):
    full, tok = world.full, world.tokenizer
    fns = text_rewards(OBJS)
    g = torch.Generator().manual_seed(3)
    for _ in range(25):
        t = int(torch.randint(0, full.horizon, (1,), generator=g))
        j = int(torch.randint(0, full.states_at(t), (1,), generator=g))
        r = int(full.root[t][j])
        ids = torch.tensor([full.prompt_ids[r] + full.tokens[t][j].tolist()])
        with torch.no_grad():
            lp = torch.log_softmax(world.model(input_ids=ids).logits[0, -1].double(), -1)
        torch.testing.assert_close(full.logp_ref[t][j], lp, rtol=0, atol=1e-5)
        for a in range(full.A):
            if full.child[t][j, a] < 0:
                text = tok.decode(full.tokens[t][j].tolist() + [a], skip_special_tokens=True)
                want = [float(fns[o]([world.prompts[r]], [text])[0]) for o in OBJS]
                assert full.rewards[t][j, a].tolist() == want
            else:
                c = int(full.child[t][j, a])
                assert full.tokens[t + 1][c].tolist() == full.tokens[t][j].tolist() + [a]
                assert int(full.root[t + 1][c]) == r
    # the full tree is complete: (V-1)**t states per prompt at depth t
    for t in range(full.horizon):
        assert full.states_at(t) == len(world.prompts) * (world.V - 1) ** t


@pytest.mark.parametrize("which", ["full", "tree"])
def test_probabilities_sum_to_one(world, which):
    tree = getattr(world, which)
    g = torch.Generator().manual_seed(4)
    for pol in (tree.base_policy(), _random_policy(tree, g)):
        tree.check_policy(pol, atol=1e-12)
        d = tree.visitation(pol)
        ended = torch.zeros(tree.n_roots, dtype=torch.float64)
        for t in range(tree.horizon):
            p = pol[t].exp() * tree.terminal(t)
            ended.index_add_(0, tree.root[t], d[t] * p.sum(-1))
        torch.testing.assert_close(ended, torch.ones(tree.n_roots, dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="rows must sum to 1"):
        tree.check_policy([lp + 0.1 for lp in tree.base_policy()])


def test_topk_tree_is_the_reachable_subtree(world):
    full, tree, k = world.full, world.tree, world.top_k
    assert tree.A == k
    for t in range(tree.horizon):
        for j in range(tree.states_at(t)):
            r = int(tree.root[t][j])
            fj = int(full.lookup(torch.tensor([r]), tree.tokens[t][j:j + 1], torch.tensor([t]))[0])
            assert fj >= 0
            top = torch.topk(full.logp_ref[t][fj], k).indices
            assert set(tree.actions[t][j].tolist()) == set(top.tolist())
            torch.testing.assert_close(tree.logp_ref[t][j], full.logp_ref[t][fj][tree.actions[t][j]], rtol=0, atol=0)
    # the same subtree enumerated directly, top-k tokens chosen by the library's topk_candidates
    direct, _ = enumerate_tree(world.model, tree.prompt_ids, tree.horizon, tree.eos_id,
                               lambda r, s: torch.zeros(s.shape[0], 3), 3, top_k=k)
    for t in range(tree.horizon):
        assert torch.equal(direct.tokens[t], tree.tokens[t]) and torch.equal(direct.actions[t], tree.actions[t])
        torch.testing.assert_close(direct.logp_ref[t], tree.logp_ref[t], rtol=0, atol=1e-5)


@pytest.mark.parametrize("beta", [1.0, 3.0, 8.0])
def test_optima(world, beta):
    full, tree = world.full, world.tree
    g = torch.Generator().manual_seed(int(beta))
    for w in ([1, 0, 0], [0.5, 0.5, 0], [0.25, 0.25, 0.5], [0, 0, 1]):
        opt_f, opt_k = full.optimal_value(w, beta), tree.optimal_value(w, beta)
        assert (opt_k <= opt_f + 1e-9).all()                                   # restricting cannot help
        assert (opt_f >= full.evaluate(full.base_policy(), w, beta).J - 1e-12).all()   # beats pi_ref
        assert (opt_k >= tree.evaluate(tree.base_policy(), w, beta).J - 1e-12).all()   # beats top-k sampling
        # V*(root) is the J of the backward-induction policy, and no other policy beats it
        pol_k, _ = tree.optimal(w, beta)
        torch.testing.assert_close(tree.evaluate(pol_k, w, beta).J, opt_k, rtol=0, atol=1e-10)
        for _ in range(3):
            assert (tree.evaluate(_random_policy(tree, g), w, beta).J <= opt_k + 1e-12).all()
            assert (full.evaluate(_random_policy(full, g), w, beta).J <= opt_f + 1e-12).all()
    # a strict top-k: the full optimum is strictly better somewhere
    assert (full.optimal_value([0.5, 0.5, 0], beta) - tree.optimal_value([0.5, 0.5, 0], beta)).max() > 1e-3


@pytest.mark.parametrize("which", ["full", "tree"])
def test_value_tables_of_the_optimum_reproduce_it(world, which):
    tree = getattr(world, which)
    beta, w = 3.0, [0.3, 0.5, 0.2]
    pol, Q = tree.optimal(w, beta)
    # Q* as a one-objective value table through the MAVIS tilt (float32 op) gives pi*
    got = tree.tilted_policy([q[:, None, :] for q in Q], [1.0], beta)
    for a, b in zip(got, pol):
        torch.testing.assert_close(a.exp(), b.exp(), rtol=0, atol=2e-6)
    # the per-objective soft values of pi* (zeta = 1/beta) mix back to Q* (weights sum to 1)
    for q_i, q in zip(tree.soft_values(pol, 1.0 / beta), Q):
        torch.testing.assert_close(torch.einsum("nma,m->na", q_i, torch.tensor(w, dtype=torch.float64)), q,
                                   rtol=0, atol=1e-10)


def test_exact_expectations_match_the_real_sampler(world):
    """Exact expected rewards of top-k sampling on held-out prompts vs MavisGenerator (top_k = k,
    no value models) scored by the text reward callables; and a chi-squared test of the complete
    responses of one prompt against the exact sequence probabilities."""
    from mavis_ext.decoding import MavisGenerator

    tree, tok = world.tree, world.tokenizer
    gen = MavisGenerator(world.model, None, tok)
    fns = text_rewards(OBJS)
    base = tree.base_policy()
    ex = tree.evaluate(base)
    r = world.split["test"][0]
    n = 3000
    out = gen.generate([world.prompts[r]] * n, top_k=world.top_k, max_new_tokens=tree.horizon, seed=123)
    for i, o in enumerate(OBJS):
        x = fns[o]([world.prompts[r]] * n, out.texts).double()
        se = float(x.std()) / math.sqrt(n) + 1e-12
        assert abs(float(x.mean()) - float(ex.rewards[r, i])) < 4.5 * se, o
    # complete responses of prompt r and their exact probabilities
    d = tree.visitation(base)
    probs = {}
    for t in range(tree.horizon):
        rows = torch.nonzero(tree.root[t] == r).flatten()
        for j in rows.tolist():
            for a in range(tree.A):
                if tree.child[t][j, a] < 0:
                    seq = tuple(tree.tokens[t][j].tolist() + [int(tree.actions[t][j, a])])
                    probs[seq] = float(d[t][j] * base[t][j, a].exp())
    assert abs(sum(probs.values()) - 1) < 1e-12
    keys = sorted(probs)
    counts = dict.fromkeys(keys, 0)
    for b in range(n):
        L = int(out.lengths[b])
        counts[tuple(out.sequences[b, :L].tolist())] += 1   # KeyError = a response outside the top-k tree
    exp = torch.tensor([probs[k] for k in keys], dtype=torch.float64) * n
    obs = torch.tensor([counts[k] for k in keys], dtype=torch.float64)
    big = exp >= 5
    obs_b = torch.cat([obs[big], obs[~big].sum(0, keepdim=True)])
    exp_b = torch.cat([exp[big], exp[~big].sum(0, keepdim=True)])
    assert scipy_stats.chisquare(obs_b.numpy(), exp_b.numpy() * obs_b.sum().item() / exp_b.sum().item()).pvalue > 1e-3


@pytest.mark.parametrize("mode", ["prefix", "qhead"])
def test_value_table_matches_token_values(world, mode):
    from mavis_ext.tiny import tiny_llama
    from mavis_ext.tree_values import value_table
    from mavis_ext.values import ValueModel

    tree = world.tree
    vm = ValueModel.from_trunk(tiny_llama(world.V, seed=4, tokenizer=world.tokenizer), ["a", "b"], mode=mode,
                               init_std=0.5)
    tab = value_table(tree, vm, batch_size=50)
    g = torch.Generator().manual_seed(5)
    for _ in range(30):
        t = int(torch.randint(0, tree.horizon, (1,), generator=g))
        j = int(torch.randint(0, tree.states_at(t), (1,), generator=g))
        a = int(torch.randint(0, tree.A, (1,), generator=g))
        ids = torch.tensor([tree.prompt_ids[int(tree.root[t][j])] + tree.tokens[t][j].tolist()
                            + [int(tree.actions[t][j, a])]])
        with torch.no_grad():
            v = vm.token_values(ids)[0, :, -1].double()
        torch.testing.assert_close(tab[t][j, :, a], v, rtol=1e-4, atol=1e-5)
    assert tab[0].std() > 1e-3


def test_build_is_deterministic_and_checks_arguments():
    from mavis_ext.hard_world import world_fingerprint

    a = build_hard_world(9, horizon=2, top_k=3, train_steps=20, corpus_per_prompt=20)
    b = build_hard_world(9, horizon=2, top_k=3, train_steps=20, corpus_per_prompt=20)
    assert world_fingerprint(a) == world_fingerprint(b)
    c = build_hard_world(10, horizon=2, top_k=3, train_steps=20, corpus_per_prompt=20)
    assert world_fingerprint(a) != world_fingerprint(c)
    with pytest.raises(ValueError, match="horizon"):
        build_hard_world(0, horizon=7)
    with pytest.raises(ValueError, match="top_k"):
        build_hard_world(0, horizon=2, top_k=17)
    with pytest.raises(ValueError, match="weights"):
        a.tree.evaluate(a.tree.base_policy(), [1.0, 0.0], 3.0)
    with pytest.raises(ValueError, match="beta"):
        a.tree.optimal([1, 0, 0], 0.0)


@pytest.mark.parametrize("mode", ["prefix", "qhead"])
def test_prompts_of_different_lengths(world, mode):
    """Left-padded prompts: the tree's pi_ref and the value table equal unpadded single-row passes."""
    from mavis_ext.tiny import tiny_llama
    from mavis_ext.tree_values import value_table
    from mavis_ext.values import ValueModel

    vocab = world.tokenizer.get_vocab()
    prompts = [[vocab["cat"]], [vocab["good"], vocab["the"], vocab["dog"]]]
    tree, _ = enumerate_tree(world.model, prompts, 2, world.tokenizer.eos_token_id,
                             lambda r, s: torch.zeros(s.shape[0], 1), 1, top_k=3)
    vm = ValueModel.from_trunk(tiny_llama(world.V, seed=6, tokenizer=world.tokenizer), ["a"], mode=mode, init_std=0.5)
    tab = value_table(tree, vm, batch_size=7)
    for t in range(tree.horizon):
        for j in range(tree.states_at(t)):
            pre = prompts[int(tree.root[t][j])] + tree.tokens[t][j].tolist()
            with torch.no_grad():
                lp = torch.log_softmax(world.model(input_ids=torch.tensor([pre])).logits[0, -1].double(), -1)
                torch.testing.assert_close(tree.logp_ref[t][j], lp[tree.actions[t][j]], rtol=0, atol=1e-5)
                for a in range(tree.A):
                    v = vm.token_values(torch.tensor([pre + [int(tree.actions[t][j, a])]]))[0, 0, -1].double()
                    torch.testing.assert_close(tab[t][j, 0, a], v, rtol=1e-4, atol=1e-5)


def test_coverage_of_a_known_forest(world):
    """Two rollout paths of one prompt: the covered mass per depth is their exact probability over
    the depth's total, computed by hand from the tree."""
    import numpy as np

    from mavis_ext.quality_protocol import coverage
    from mavis_ext.training.trees import Forest

    tree = world.tree
    pol = tree.base_policy()
    r = world.split["train"][0]
    eos = tree.eos_id
    a_col = next(c for c in range(tree.A) if int(tree.actions[0][r, c]) != eos)
    a = int(tree.actions[0][r, a_col])
    s1 = int(tree.child[0][r, a_col])
    b_col = next(c for c in range(tree.A) if int(tree.child[1][s1, c]) >= 0)
    b = int(tree.actions[1][s1, b_col])
    # nodes: root, a, a.b, and a second branch a (the same prefix again: counted once)
    f = Forest(prompts=[world.prompts[r]], prompt_index=np.array([0]), prompt_ids=np.array(tree.prompt_ids[r]),
               prompt_offsets=np.array([0, len(tree.prompt_ids[r])]), node_tree=np.zeros(4, np.int64),
               node_parent=np.array([-1, 0, 1, 0]), node_depth=np.array([0, 1, 2, 1]),
               node_tok_start=np.array([0, 0, 1, 2]), node_tok_len=np.array([0, 1, 1, 1]),
               node_logratio=np.zeros(4), node_eos=np.zeros(4, bool), tokens=np.array([a, b, a]),
               token_logratio=np.zeros(3, np.float32))
    f.validate()
    got = coverage(tree, [(f, [r])], pol)
    p_a = float(pol[0][r, a_col].exp())
    p_ab = p_a * float(pol[1][s1, b_col].exp())
    alive1 = float(sum(pol[0][r, c].exp() for c in range(tree.A) if tree.child[0][r, c] >= 0))
    assert got[0] == pytest.approx(p_a, abs=1e-12)
    assert got[1] == pytest.approx(p_ab / alive1, abs=1e-12)
    assert got[2] == 0.0
