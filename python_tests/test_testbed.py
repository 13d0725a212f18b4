"""The exact testbed: rewards, exact enumeration vs sampling, the backward-induction optimum, and
``tilted_sample`` reproducing the optimal policy when given the exact Q*."""

from __future__ import annotations

import math

import pytest
import torch

from mavis_ext import tilted_sample
from mavis_ext.evaluation import mod_mix_policy
from mavis_ext.testbed import build_testbed, entropy_per_state, text_rewards, token_rewards

scipy_stats = pytest.importorskip("scipy.stats")

BETA = 3.0


@pytest.fixture(scope="module")
def tb():
    # Horizon 4 keeps the tree at 1 464 states so every test runs in about a second.
    return build_testbed(("positive", "concise", "cats"), horizon=4, train_steps=120, seed=0)


def _random_policy(tb, g, temp=1.0):
    return [torch.log_softmax(torch.randn(lp.shape, generator=g, dtype=torch.float64) * temp, -1) for lp in tb.logp_ref]


def test_text_and_token_rewards_agree(tb):
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, tb.V, (400, 6), generator=g)
    ids[::7, 2] = tb.eos_id  # plenty of early EOS
    # as in generated output: nothing but padding after the first EOS
    after = torch.cumsum((ids == tb.eos_id).long(), 1) - (ids == tb.eos_id).long() > 0
    ids[after] = tb.tokenizer.pad_token_id
    tok = token_rewards(ids, tb.objectives, tb.tokenizer)
    fns = text_rewards(tb.objectives)
    for skip in (True, False):
        texts = [tb.tokenizer.decode(r, skip_special_tokens=skip) for r in ids.tolist()]
        for i, name in enumerate(tb.objectives):
            got = fns[name](["<s>"] * len(texts), texts).double()
            torch.testing.assert_close(got, tok[:, i], rtol=0, atol=1e-6)
    # the rewards are not trivial on random data
    assert tok.std(0).min() > 0.1


def test_base_model_is_far_from_uniform(tb):
    assert entropy_per_state(tb.logp_ref) < 0.75 * math.log(tb.V)
    for lp in tb.logp_ref:
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[0], dtype=torch.float64))


def test_enumeration_matches_sampling_from_the_real_generator(tb):
    """Exact expected rewards of pi_ref vs the mean over responses sampled by MavisGenerator (no
    value models, full vocabulary) and scored by the text reward callables: within 4.5 sigma."""
    from mavis_ext.decoding import MavisGenerator

    n = 3000
    gen = MavisGenerator(tb.model, None, tb.tokenizer)
    out = gen.generate([tb.prompt] * n, top_k=tb.V, max_new_tokens=tb.horizon, seed=1234)
    exact = tb.evaluate(tb.logp_ref).rewards
    for i, (name, fn) in enumerate(tb.reward_fns().items()):
        r = fn([tb.prompt] * n, out.texts).double()
        se = r.std() / math.sqrt(n)
        assert abs(float(r.mean()) - float(exact[i])) < 4.5 * float(se) + 1e-9, (name, float(r.mean()), float(exact[i]))
    # KL of pi_ref to itself is 0 exactly, and the generator's per-sequence estimate agrees
    assert float(out.kl.abs().max()) < 1e-5


def test_enumeration_matches_sampling_for_a_tilted_policy(tb):
    """Exact rewards and KL of the optimum vs Monte-Carlo over sequences drawn from its table."""
    w = [0.4, 0.3, 0.3]
    lp, _ = tb.optimal(w, BETA)
    ex = tb.evaluate(lp, w, BETA)
    g = torch.Generator().manual_seed(7)
    n = 20000
    seqs = tb.sample(lp, n, generator=g)
    r = token_rewards(seqs, tb.objectives, tb.tokenizer)
    for i in range(tb.m):
        se = r[:, i].std() / math.sqrt(n)
        assert abs(float(r[:, i].mean() - ex.rewards[i])) < 4.5 * float(se)
    # per-sequence log ratio, summed over the tokens actually written
    seq_lp, seq_lr = _seq_logprob(tb, lp, seqs), _seq_logprob(tb, tb.logp_ref, seqs)
    ratio = seq_lp - seq_lr
    assert abs(float(ratio.mean()) - ex.kl) < 4.5 * float(ratio.std() / math.sqrt(n))
    assert ex.kl > 0.05  # the tilt really moves the distribution


def _seq_logprob(tb, table, seqs):
    C = len(tb.cont)
    pos = torch.full((tb.V,), -1, dtype=torch.long)
    pos[tb.cont] = torch.arange(C)
    state = torch.zeros(seqs.shape[0], dtype=torch.long)
    alive = torch.ones(seqs.shape[0], dtype=torch.bool)
    out = torch.zeros(seqs.shape[0], dtype=torch.float64)
    for t in range(tb.horizon):
        a = seqs[:, t]
        out += torch.where(alive, table[t][state, a.clamp(0, tb.V - 1)], torch.zeros_like(out))
        alive = alive & (a != tb.eos_id)
        state = torch.where(alive, state * C + pos[a].clamp_min(0), torch.zeros_like(state))
    return out


def test_backward_induction_is_the_optimum(tb):
    g = torch.Generator().manual_seed(3)
    per_obj = [tb.optimal(e, BETA)[0] for e in torch.eye(tb.m).tolist()]
    for w in ([1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.5, 0.0, 0.5]):
        lp, Q = tb.optimal(w, BETA)
        best = tb.evaluate(lp, w, BETA).J
        # J(pi*) equals V*(root), the soft maximum at the root
        assert abs(best - tb.optimal_value(w, BETA)) < 1e-10
        others = [tb.logp_ref, mod_mix_policy(per_obj, w)] + per_obj + [_random_policy(tb, g) for _ in range(3)]
        # small perturbations of the optimum itself
        for scale in (0.05, 0.3):
            others.append([torch.log_softmax(x + scale * torch.randn(x.shape, generator=g, dtype=torch.float64), -1) for x in lp])
        # the optimum at another beta (more or less greedy)
        others += [tb.optimal(w, BETA * 2)[0], tb.optimal(w, BETA / 2)[0]]
        for o in others:
            assert tb.evaluate(o, w, BETA).J < best + 1e-12
        assert best > tb.evaluate(tb.logp_ref, w, BETA).J + 1e-3


def test_soft_values_of_the_optimum_are_q_star(tb):
    """For pi* of w at beta, the soft values with zeta = 1/beta combine to Q*: w . Q^{pi*} = Q*."""
    w = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    lp, Qstar = tb.optimal(w, BETA)
    Q, V = tb.soft_values(lp, 1.0 / BETA)
    for t in range(tb.horizon):
        torch.testing.assert_close(torch.einsum("m,nma->na", w, Q[t]), Qstar[t], rtol=0, atol=1e-10)
    torch.testing.assert_close(float(V[0][0] @ w), tb.optimal_value(w, BETA), rtol=0, atol=1e-10)


def test_tilted_sample_with_exact_q_star_reproduces_the_optimum(tb):
    """Decoding with Q* as the values and top_k=0 through the library's sampler gives the optimal
    policy's sequence distribution (chi-squared over all complete responses)."""
    w = [0.5, 0.5, 0.0]
    lp, Q = tb.optimal(w, BETA)
    n = 40000
    C = len(tb.cont)
    pos = torch.full((tb.V,), -1, dtype=torch.long)
    pos[tb.cont] = torch.arange(C)
    state = torch.zeros(n, dtype=torch.long)
    alive = torch.ones(n, dtype=torch.bool)
    seqs = torch.full((n, tb.horizon), tb.tokenizer.pad_token_id, dtype=torch.long)
    gen = torch.Generator().manual_seed(99)
    for t in range(tb.horizon):
        logits = tb.logp_ref[t][state].float() + torch.randn(1, generator=gen).item()  # any shift: softmax-invariant
        values = Q[t][state].float()[:, None, :]
        a = tilted_sample(logits, values, torch.ones(1), beta=BETA, top_k=0, generator=gen)
        seqs[:, t] = torch.where(alive, a, seqs[:, t])
        alive = alive & (a != tb.eos_id)
        state = torch.where(alive, state * C + pos[a].clamp_min(0), torch.zeros_like(state))
    all_seqs, logp = tb.sequence_logprobs(lp)
    index = {tuple(s): i for i, s in enumerate(all_seqs)}
    counts = torch.zeros(len(all_seqs))
    for row in seqs.tolist():
        key = row[: row.index(tb.eos_id) + 1] if tb.eos_id in row else row
        counts[index[tuple(key)]] += 1
    expected = logp.exp() * n
    torch.testing.assert_close(float(expected.sum()), float(n), rtol=1e-9, atol=1e-6)
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)]).double()
    exp = exp * (obs.sum() / exp.sum())
    chi2, p = scipy_stats.chisquare(obs.numpy(), exp.numpy())
    assert big.sum() > 20  # the test has power: many distinct frequent responses
    assert p > 1e-4, (chi2, p)
    # and the test can fail: the same counts against pi_ref's distribution are rejected
    _, lref = tb.sequence_logprobs(tb.logp_ref)
    eref = lref.exp() * n
    bigr = eref >= 5
    _, p_ref = scipy_stats.chisquare(torch.cat([counts[bigr], counts[~bigr].sum().view(1)]).numpy(),
                                     torch.cat([eref[bigr], eref[~bigr].sum().view(1)]).double().numpy() * 1.0)
    assert p_ref < 1e-10


def test_bad_arguments_raise_naming_them(tb):
    with pytest.raises(ValueError, match="weights"):
        tb.optimal([1.0, 0.0], BETA)
    with pytest.raises(ValueError, match="beta"):
        tb.optimal([1.0, 0.0, 0.0], 0.0)
    with pytest.raises(ValueError, match="logp"):
        tb.evaluate(tb.logp_ref[:-1])
    with pytest.raises(ValueError, match="objectives"):
        build_testbed(("positive", "nonsense"), horizon=2, train_steps=1)
    with pytest.raises(ValueError, match="horizon"):
        build_testbed(("positive",), horizon=9, train_steps=1)
    with pytest.raises(ValueError, match="responses"):
        tb.reward_fns()["positive"](["<s>"], ["good", "bad"])


def test_build_is_deterministic():
    a = build_testbed(("positive",), horizon=2, train_steps=30, corpus_size=256, seed=5)
    b = build_testbed(("positive",), horizon=2, train_steps=30, corpus_size=256, seed=5)
    c = build_testbed(("positive",), horizon=2, train_steps=30, corpus_size=256, seed=6)
    torch.testing.assert_close(a.logp_ref[1], b.logp_ref[1], rtol=0, atol=0)
    assert (a.logp_ref[1] - c.logp_ref[1]).abs().max() > 1e-3
