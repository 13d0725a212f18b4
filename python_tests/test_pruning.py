"""Certified candidate pruning (mavis_ext.pruning, generate(prune_tv=..., value_range=...)).

The claim: with every combined value in a known interval, dropping the candidates ``keep_counts``
drops moves each step's tilted distribution by at most ``prune_tv`` in total variation. Tested on
exact float64 distributions over random cases, including the adversarial value assignment that
attains the bound, and on the engine (tokens from the kept set only, log-probabilities and a
chi-squared test of the sampled distribution against the pruned one).
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from mavis_ext import pruning, tiny
from mavis_ext.decoding import MavisGenerator
from mavis_ext.values import ValueEnsemble, ValueModel


def _tilted(logits, values, beta):
    return torch.softmax(logits + beta * values, -1)


def _tv(p, q):
    return 0.5 * (p - q).abs().sum(-1)


def _pruned_dist(logits, values, beta, keep):
    K = logits.shape[-1]
    masked = logits.masked_fill(torch.arange(K)[None, :] >= keep[:, None], float("-inf"))
    return _tilted(masked, values, beta)


def _cases(seed, n=300):
    """Random sorted candidate logits: flat, peaked and very peaked rows; random beta, ranges."""
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        K = int(torch.randint(2, 50, (1,), generator=g))
        scale = [0.3, 2.0, 8.0, 25.0][i % 4]
        logits = (torch.randn(1, K, generator=g, dtype=torch.float64) * scale).sort(-1, descending=True).values
        beta = float(torch.rand(1, generator=g)) * 4
        lo = float(torch.randn(1, generator=g))
        spread = float(torch.rand(1, generator=g)) * 3
        tv = [1e-4, 1e-3, 1e-2, 0.1][i % 4 if scale > 1 else (i // 4) % 4]
        yield logits, beta, lo, lo + spread, tv


@pytest.mark.parametrize("seed", [0, 1])
def test_tv_within_bound_for_random_and_adversarial_values(seed):
    n_pruned = 0
    for logits, beta, lo, hi, tv in _cases(seed):
        K = logits.shape[1]
        sp = torch.tensor([hi - lo], dtype=torch.float64)
        keep = pruning.keep_counts(logits, beta, sp, tv)
        k = int(keep[0])
        assert 1 <= k <= K
        n_pruned += K - k
        bound = float(pruning.tail_bounds(logits, beta, sp)[0, k]) if k < K else 0.0
        assert bound <= tv
        g = torch.Generator().manual_seed(K)
        trials = [torch.rand(1, K, generator=g, dtype=torch.float64) * (hi - lo) + lo for _ in range(20)]
        hi_t, lo_t = torch.tensor(hi, dtype=torch.float64), torch.tensor(lo, dtype=torch.float64)
        trials += [torch.where(torch.rand(1, K, generator=g) < 0.5, hi_t, lo_t) for _ in range(5)]
        adversarial = torch.full((1, K), lo, dtype=torch.float64)
        adversarial[:, k:] = hi  # the pruned tail at the top, the kept ones at the bottom
        trials.append(adversarial)
        for v in trials:
            exact = _tilted(logits, v, beta)
            tvd = float(_tv(exact, _pruned_dist(logits, v, beta, keep)))
            assert tvd <= bound + 1e-12 <= tv + 1e-12
            # every dropped candidate could never have had tilted probability above tv
            assert float(exact[0, k:].max()) <= tv + 1e-12 if k < K else True
        if k < K:  # the bound is attained (tight) by the adversarial values
            tvd = float(_tv(_tilted(logits, adversarial, beta), _pruned_dist(logits, adversarial, beta, keep)))
            assert tvd == pytest.approx(bound, rel=1e-9, abs=1e-15)
    assert n_pruned > 0  # the peaked cases do prune


def test_keep_counts_is_maximal():
    """Keeping one candidate fewer would break the bound (the pruning is not needlessly timid)."""
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        K = 30
        logits = (torch.randn(1, K, generator=g, dtype=torch.float64) * 6).sort(-1, descending=True).values
        sp = torch.tensor([1.5], dtype=torch.float64)
        keep = int(pruning.keep_counts(logits, 1.0, sp, 1e-3)[0])
        if keep > 1:
            assert float(pruning.tail_bounds(logits, 1.0, sp)[0, keep - 1]) > 1e-3


def test_value_interval_and_range_parsing():
    r = pruning.parse_value_range({"a": (-1, 2), "b": (0, 1)}, ["a", "b"])
    lo, hi = pruning.value_interval(torch.tensor([[0.5, -2.0], [1.0, 1.0]]), r, 2)
    assert lo.tolist() == [-0.5 - 2.0, -1.0] and hi.tolist() == [1.0, 3.0]
    assert pruning.parse_value_range((0, 1), ["a", "b"]).tolist() == [[0, 1], [0, 1]]
    for bad, msg in [((1, 0), "lo <= hi"), ([(0, 1)] * 3, "one per objective"), ({"a": (0, 1)}, "missing"),
                     ((0, float("inf")), "finite"), ("x", "expected")]:
        with pytest.raises(ValueError, match=msg):
            pruning.parse_value_range(bad, ["a", "b"])


def test_non_finite_rows_keep_everything():
    logits = torch.tensor([[float("nan")] * 4, [3.0, 1.0, -5.0, float("-inf")]])
    keep = pruning.keep_counts(logits, 1.0, torch.tensor([0.1, 0.1]), 0.01)
    assert keep.tolist()[0] == 4 and keep.tolist()[1] == 2  # -inf (and tiny) candidates are free to drop


# ----------------------------------------------------------------------------- engine
WORDS = tiny.default_words(40)


@pytest.fixture(scope="module")
def world():
    tok = tiny.word_tokenizer(WORDS)
    V = len(tok)
    base = tiny.tiny_llama(V, seed=1, tokenizer=tok)
    with torch.no_grad():  # a peaked base distribution, where pruning has something to skip
        base.lm_head.weight.mul_(60.0)
    vms = [ValueModel.from_trunk(tiny.tiny_llama(V, hidden_size=16, seed=s), [f"o{s}"], "prefix", init_std=0.05)
           for s in (2, 3)]
    return tok, base, ValueEnsemble(vms)


@torch.no_grad()
def _first_step(world, prompt, weights, beta, top_k):
    """Exact first-step candidates, base logits and combined values (no pruning)."""
    from mavis_ext import ops
    from mavis_ext._value_scoring import TrunkScorer

    tok, base, ens = world
    ids = torch.tensor([tok(prompt)["input_ids"]])
    logits = base(ids).logits[:, -1]
    cl, ci, lse = ops.topk_candidates(logits, top_k)
    comb = 0
    for vm, w in zip(ens.models, weights):
        sc = TrunkScorer(vm)
        sc.start(ids, torch.ones_like(ids), torch.arange(ids.shape[1])[None])
        comb = comb + w * sc.values(ci, torch.tensor([ids.shape[1]]), torch.ones_like(ids))[:, 0]
    return cl, ci, comb


def test_engine_samples_the_pruned_distribution(world):
    tok, base, ens = world
    prompt, W, beta, K, tv = "w7 w8", [0.8, -0.6], 1.0, 30, 0.02
    vr = (-1.0, 1.0)
    cl, ci, comb = _first_step(world, prompt, W, beta, K)
    lo, hi = pruning.value_interval(torch.tensor(W), pruning.parse_value_range(vr, ["o2", "o3"]), 1)
    keep = int(pruning.keep_counts(cl, beta, hi - lo, tv)[0])
    assert 1 < keep < K  # the case really prunes, and keeps a choice
    exact = _tilted(cl.double(), comb.double(), beta)[0]
    pruned = _pruned_dist(cl.double(), comb.double(), beta, torch.tensor([keep]))[0]
    assert float(_tv(exact, pruned)) <= tv
    N = 4000
    gen = MavisGenerator(base, ens, tok)
    out = gen.generate([prompt] * N, weights=W, beta=beta, top_k=K, max_new_tokens=1, seed=0, prune_tv=tv,
                       value_range=vr, stop_at_eos=False)
    first = out.sequences[:, 0]
    pos = {int(t): j for j, t in enumerate(ci[0])}
    cols = torch.tensor([pos[int(t)] for t in first])
    assert int(cols.max()) < keep  # only kept candidates are ever sampled
    torch.testing.assert_close(out.logp[:, 0].double(), pruned[cols].log(), rtol=1e-4, atol=1e-4)
    counts = torch.bincount(cols, minlength=keep)[:keep].double()
    expected = pruned[:keep] * N
    big = expected >= 5  # pool the rare candidates into one cell
    obs = torch.cat([counts[big], counts[~big].sum(0, keepdim=True)]) if (~big).any() else counts[big]
    exp = torch.cat([expected[big], expected[~big].sum(0, keepdim=True)]) if (~big).any() else expected[big]
    assert chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue > 1e-3


def test_engine_scores_fewer_candidates_and_zero_tv_is_exact(world, monkeypatch):
    from mavis_ext._value_scoring import StackedScorer

    tok, base, ens = world
    kw = dict(weights=[0.8, -0.6], beta=1.0, top_k=30, max_new_tokens=8, seed=1, stop_at_eos=False)
    prompts = ["w3 w4 w5", "w1", "w7 w8"]
    exact = MavisGenerator(base, ens, tok).generate(prompts, **kw)
    same = MavisGenerator(base, ens, tok).generate(prompts, prune_tv=0.0, value_range=(-1, 1), **kw)
    assert torch.equal(exact.sequences, same.sequences)  # tv = 0 drops only impossible candidates
    widths = []
    orig = StackedScorer.member_values

    def spy(self, cand_ids, *a, **k):
        widths.append(cand_ids.shape[1])
        return orig(self, cand_ids, *a, **k)

    monkeypatch.setattr(StackedScorer, "member_values", spy)
    MavisGenerator(base, ens, tok).generate(prompts, prune_tv=0.01, value_range=(-1, 1), **kw)
    assert max(widths) < 30 and len(widths) == 8


def test_value_outside_range_raises(world):
    tok, base, ens = world
    with pytest.raises(ValueError, match="value_range: row 0 scored a combined value .* widen value_range"):
        MavisGenerator(base, ens, tok).generate(["w1 w2"], weights=[0.8, -0.6], beta=2.0, top_k=10,
                                               max_new_tokens=3, prune_tv=0.01, value_range=(-1e-4, 1e-4))


def test_bad_pruning_arguments(world):
    tok, base, ens = world
    gen = MavisGenerator(base, ens, tok)
    kw = dict(weights=[0.5, 0.5], max_new_tokens=2)
    for extra, msg in [(dict(prune_tv=1.5, value_range=(0, 1)), r"prune_tv: must be a number in \[0, 1\)"),
                       (dict(prune_tv=True, value_range=(0, 1)), "prune_tv: must be a number"),
                       (dict(prune_tv=0.01), "value_range: required with prune_tv"),
                       (dict(prune_tv=0.01, value_range=(0, 1), top_p=0.9), "prune_tv: needs top_p=1"),
                       (dict(prune_tv=0.01, value_range=(0, 1), normalize_values=True), "normalize_values=False"),
                       (dict(value_range=(0, 1)), "value_range: only used with prune_tv")]:
        with pytest.raises(ValueError, match=msg):
            gen.generate(["w1"], **kw, **extra)
    assert math.isfinite(float(gen.generate(["w1"], prune_tv=0.01, value_range=(-9, 9), **kw).logp[0, 0]))
