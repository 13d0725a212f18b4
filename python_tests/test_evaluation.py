"""Exact evaluation machinery: value tables from value models, the MAVIS policy built with the
library's ops, the MOD mix, exact iterations, sweeps and their outputs."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mavis_ext import evaluation as ev
from mavis_ext.testbed import build_testbed

BETA = 3.0


@pytest.fixture(scope="module")
def tb():
    return build_testbed(("positive", "concise"), horizon=4, train_steps=120, seed=1)


@pytest.fixture(scope="module")
def tb3():
    return build_testbed(("positive", "concise", "cats"), horizon=3, train_steps=80, seed=2)


def test_weight_grid():
    g2 = ev.weight_grid(2, 11)
    assert len(g2) == 11 and g2[0] == (1.0, 0.0) and g2[-1] == (0.0, 1.0)
    g3 = ev.weight_grid(3, 5)
    assert len(g3) == 15 and len(set(g3)) == 15
    for w in g2 + g3:
        assert abs(sum(w) - 1) < 1e-9 and min(w) >= 0
    with pytest.raises(ValueError, match="points"):
        ev.weight_grid(2, 1)


@pytest.mark.parametrize("mode", ["prefix", "qhead"])
def test_value_table_matches_token_values(tb, mode):
    """Every entry of the exact value table is the value model's own ``token_values`` of s.a."""
    from mavis_ext.tiny import tiny_llama
    from mavis_ext.values import ValueModel

    vm = ValueModel.from_trunk(tiny_llama(tb.V, seed=4, tokenizer=tb.tokenizer), ["a", "b"], mode=mode, init_std=0.5)
    tab = ev.value_table_from_model(tb, vm, batch_size=500)
    g = torch.Generator().manual_seed(5)
    for _ in range(40):
        t = int(torch.randint(0, tb.horizon, (1,), generator=g))
        j = int(torch.randint(0, tb.states[t].shape[0], (1,), generator=g))
        a = int(torch.randint(0, tb.V, (1,), generator=g))
        ids = torch.tensor([tb.prompt_ids + tb.states[t][j].tolist() + [a]])
        with torch.no_grad():
            v = vm.token_values(ids)[0, :, -1].double()
        torch.testing.assert_close(tab[t][j, :, a], v, rtol=1e-4, atol=1e-5)
    assert tab[0].std() > 1e-3  # values are not constant


def test_mavis_policy_with_exact_values(tb):
    """Given Q*_w as a single value, the MAVIS policy is the optimum; given the per-objective Q*_i,
    it is exactly the MOD mix of the per-objective optima (weights on the simplex)."""
    w = [0.6, 0.4]
    opt, Qw = tb.optimal(w, BETA)
    pol = ev.mavis_policy(tb, [q[:, None, :] for q in Qw], [1.0], BETA)
    for a, b in zip(pol, opt):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5)
    per = [tb.optimal(e, BETA) for e in ([1.0, 0.0], [0.0, 1.0])]
    vt = [torch.stack([per[0][1][t], per[1][1][t]], 1) for t in range(tb.horizon)]
    mav = tb.evaluate(ev.mavis_policy(tb, vt, w, BETA), w, BETA)
    mod = tb.evaluate(ev.mod_mix_policy([p[0] for p in per], w), w, BETA)
    assert abs(mav.J - mod.J) < 1e-5
    assert mav.J <= tb.optimal_value(w, BETA) + 1e-9


def test_mavis_policy_top_k_restricts_support(tb):
    g = torch.Generator().manual_seed(0)
    vt = [torch.randn(s.shape[0], 2, tb.V, generator=g, dtype=torch.float64) for s in tb.states]
    pol = ev.mavis_policy(tb, vt, [0.5, 0.5], BETA, top_k=3)
    for t, lp in enumerate(pol):
        assert ((lp > -float("inf")).sum(-1) == 3).all()
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[0], dtype=torch.float64))
        top3 = tb.logp_ref[t].topk(3, -1).indices
        assert torch.isfinite(lp.gather(1, top3)).all()
    e = tb.evaluate(pol)
    assert e.kl > 0
    with pytest.raises(ValueError, match="weights"):
        ev.mavis_policy(tb, vt, [1.0], BETA)


def test_exact_iteration_is_monotone_and_mixture_step_helps(tb):
    vts = ev.exact_iteration_values(tb, BETA, 4)
    mono = ev.monotonicity(tb, vts, BETA)
    for name, r in mono.items():
        assert r["nondecreasing"], (name, r)
        assert r["J"][-1] > r["J"][0]
    # the mixture-aware step (rollouts from the mixed policy) moves toward the optimum of the mix
    w = [0.5, 0.5]
    J = lambda vt: tb.evaluate(ev.mavis_policy(tb, vt, w, BETA), w, BETA).J
    steps = ev.exact_mixture_iteration(tb, vts[-1], w, BETA, 3)
    Js = [J(vts[-1])] + [J(s) for s in steps]
    assert all(b >= a - 1e-12 for a, b in zip(Js, Js[1:]))
    assert tb.optimal_value(w, BETA) - Js[-1] < 0.1 * (tb.optimal_value(w, BETA) - Js[0]) + 1e-9


def test_sweep_tables_and_plots(tb3, tmp_path):
    pols = ev.standard_policies(tb3, BETA)
    pols.update(ev.mavis_policies(tb3, ev.exact_iteration_values(tb3, BETA, 2), BETA, prefix="exactQ_it"))
    grid = ev.weight_grid(3, 3)
    rows = ev.sweep(tb3, pols, grid, BETA)
    assert len(rows) == len(grid)
    for r in rows:
        p = r["policies"]
        assert abs(p["optimum"]["recovered"] - 1) < 1e-9 and abs(p["base"]["recovered"]) < 1e-9
        for n in p:
            assert p[n]["J"] <= p["optimum"]["J"] + 1e-9
    summ = ev.summarize(rows)
    assert summ["mod_mix"]["min_recovered"] <= 1 + 1e-9
    md = ev.markdown_table(rows, tb3.objectives)
    assert md.count("\n") == len(grid) + 1 and "J optimum" in md
    jp, mp = ev.write_results(str(tmp_path), "res", {"rows": rows, "summary": summ}, md)
    assert json.load(open(jp))["rows"][0]["weights"] == list(grid[0])
    pytest.importorskip("matplotlib")
    png = ev.plot_fronts(rows, tb3.objectives, str(tmp_path / "front.png"))
    assert png and os.path.getsize(png) > 5000


@pytest.mark.parametrize("mode,top_k", [("prefix", 0), ("qhead", 5)])
def test_decoding_engine_samples_the_exact_mavis_policy(mode, top_k):
    """MavisGenerator with value models draws responses from exactly the distribution that the
    exact evaluation assigns to the MAVIS policy of those value models (chi-squared over all
    responses), in both value-model modes and with a top-k cut."""
    from scipy.stats import chisquare

    from mavis_ext.decoding import MavisGenerator
    from mavis_ext.tiny import tiny_llama
    from mavis_ext.values import ValueModel

    tb = build_testbed(("positive", "concise"), horizon=3, train_steps=80, seed=3)
    # The heads are drawn from the global RNG: pin it, so the policy (and how many responses carry
    # enough mass for the chi-squared bins) does not depend on which tests ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vm = ValueModel.from_trunk(tiny_llama(tb.V, seed=8, tokenizer=tb.tokenizer), tb.objectives, mode=mode,
                                   init_std=0.3, tokenizer=tb.tokenizer)
    w, beta = [0.7, 0.3], 2.0
    k = tb.V if top_k == 0 else top_k
    pol = ev.mavis_policy(tb, ev.value_table_from_model(tb, vm), w, beta, top_k=k)
    n = 6000
    out = MavisGenerator(tb.model, vm, tb.tokenizer).generate([tb.prompt] * n, weights=w, beta=beta, top_k=k,
                                                               max_new_tokens=tb.horizon, seed=17)
    seqs, logp = tb.sequence_logprobs(pol)
    index = {tuple(s): i for i, s in enumerate(seqs)}
    counts = torch.zeros(len(seqs))
    for b in range(n):
        counts[index[tuple(out.sequences[b, : int(out.lengths[b])].tolist())]] += 1
    expected = logp.exp() * n
    assert float(counts[expected == 0].sum()) == 0  # nothing outside the top-k support
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().view(1)]).numpy()
    exp = torch.cat([expected[big], expected[~big].sum().view(1)]).double().numpy()
    _, p = chisquare(obs, exp * obs.sum() / exp.sum())
    assert big.sum() > 10 and p > 1e-4, p
    # per-sequence KL estimates average to the exact KL
    e = tb.evaluate(pol)
    assert abs(float(out.kl.double().mean()) - e.kl) < 4.5 * float(out.kl.double().std()) / n ** 0.5 + 1e-6
