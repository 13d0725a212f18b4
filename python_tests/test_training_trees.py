"""Rollout-tree construction: branching, segment budgets, EOS leaves, batch-size independence, and
the per-node KL terms against log-ratios recomputed from scratch (base and MAVIS policies)."""

import numpy as np
import pytest
import torch

from mavis_ext.decoding import MavisGenerator
from mavis_ext.tiny import default_words, tiny_llama, word_tokenizer
from mavis_ext.training.seeds import rng_for
from mavis_ext.training.trees import grow_forest, segment_lengths
from mavis_ext.values import ValueModel

R, K, L, MAXNEW, TOPK = 3, 2, 4, 10, 6


@pytest.fixture(scope="module")
def lm():
    tok = word_tokenizer(default_words(9))
    model = tiny_llama(len(tok), tokenizer=tok, seed=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.05)      # flat next-token distribution: EOS (1 of 13) shows up often
    return model, tok


def _prompts(tok, n=5, seed=0):
    g = np.random.default_rng(seed)
    texts = [" ".join(f"w{j}" for j in g.integers(0, 9, size=g.integers(1, 4))) for _ in range(n)]
    return texts, list(range(n)), [tok(t)["input_ids"] for t in texts]


def _grow(gen, tok, **kw):
    texts, idx, ids = _prompts(tok)
    args = dict(root_branching=R, branching=K, depth=L, max_new_tokens=MAXNEW, top_k=TOPK, gen_batch_size=64,
                pad_token_id=tok.pad_token_id, seed_key=(4, 2))
    args.update(kw)
    return grow_forest(gen, texts, idx, ids, **args)


def test_segment_length_rule():
    rng = rng_for(1, 2, 3)
    left = np.array([64] * 4000 + [3] * 100 + [1] * 100)
    for layer in range(L - 1):
        seg = segment_lengths(rng, left, layer, L)
        hi = np.maximum(2 * (left // (L - layer)) - 1, 1)
        assert np.all(seg >= 1) and np.all(seg <= np.minimum(hi, left))
        assert seg[:4000].min() == 1 and seg[:4000].max() == hi[0]     # uniform over the whole range
        assert abs(seg[:4000].mean() - (1 + hi[0]) / 2) < 0.1 * hi[0]
    assert np.array_equal(segment_lengths(rng, left, L - 1, L), left)   # last layer: the whole budget


def test_tree_structure_budgets_and_eos(lm):
    model, tok = lm
    f = _grow(MavisGenerator(model, None, tok), tok)
    eos_id = tok.eos_token_id
    nchild = f.num_children()
    roots = np.nonzero(f.node_parent < 0)[0]
    assert roots.size == 5 and np.all(nchild[roots] == R)
    path_len = f.path_len()
    leaf = f.is_leaf()
    nonroot = f.node_parent >= 0
    inner = nonroot & ~leaf
    assert np.all(nchild[inner] == K)                       # every inner node branches exactly K ways
    assert not f.node_eos[inner].any() and np.all(path_len[inner] < MAXNEW)
    # a leaf either ended with EOS, used the whole budget, or sits at the last layer (which runs to the budget)
    assert np.all(f.node_eos[leaf] | (path_len[leaf] == MAXNEW))
    assert np.all(f.node_depth <= L)
    assert f.node_eos.any() and (leaf & ~f.node_eos).any()   # both kinds of leaf occur
    for n in np.nonzero(nonroot)[0]:
        seg = f.segment(n)
        assert seg.size == f.node_tok_len[n] >= 1
        assert (eos_id in seg[:-1]) is False                # EOS only ever ends a segment
        assert bool(seg[-1] == eos_id) == bool(f.node_eos[n])
        layer = f.node_depth[n] - 1
        left = MAXNEW - path_len[f.node_parent[n]]
        if layer < L - 1:
            assert seg.size <= max(1, 2 * (left // (L - layer)) - 1)
        else:
            assert seg.size == left or f.node_eos[n]


def test_forest_independent_of_batch_size(lm):
    model, tok = lm
    gen = MavisGenerator(model, None, tok)
    a = _grow(gen, tok, gen_batch_size=5)
    b = _grow(gen, tok, gen_batch_size=1000)
    for name in a.ARRAYS:   # same tokens; log-ratios equal up to padding-dependent rounding
        if name in ("node_logratio", "token_logratio"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-5)
        else:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    c = _grow(gen, tok, seed_key=(4, 3))
    assert not np.array_equal(a.tokens, c.tokens) or a.tokens.size != c.tokens.size


def _recompute_logratios(f, model, vm=None, weights=None, beta=0.0):
    """Sum over each node's segment of log pi(tok) - log pi_ref(tok), from full forwards:
    pi_ref = softmax(logits) over the vocabulary, pi = softmax over the base top-k of
    logits + beta * sum_i w_i V_i(s.a)."""
    out = np.zeros(f.n_nodes)
    per_token = np.zeros(f.tokens.size)
    leaf = f.is_leaf()
    done = np.zeros(f.n_nodes, bool)
    for lf in np.nonzero(leaf)[0]:
        chain = f.path_nodes(int(lf))
        prompt = f.prompt_tokens(int(f.node_tree[lf]))
        ids = np.concatenate([prompt] + [f.segment(n) for n in chain])
        with torch.no_grad():
            logits = model(torch.tensor(ids)[None]).logits[0].double()
        pos = prompt.size
        for n in chain:
            seg = f.segment(n)
            total = 0.0
            for j, tkn in enumerate(seg):
                z = logits[pos + j - 1]
                logp_ref = torch.log_softmax(z, -1)[tkn]
                cand = torch.topk(z, TOPK).indices
                assert tkn in cand.tolist()
                tilt = z[cand].clone()
                if vm is not None:
                    prefix = torch.tensor(ids[:pos + j])
                    batch = torch.cat([prefix.repeat(TOPK, 1), cand[:, None]], 1)
                    with torch.no_grad():
                        v = vm.token_values(batch)[:, :, -1].double()          # [K, m]
                    tilt = tilt + beta * (v @ torch.tensor(weights, dtype=torch.float64))
                logp = torch.log_softmax(tilt, -1)[cand.tolist().index(tkn)]
                total += float(logp - logp_ref)
                per_token[f.node_tok_start[n] + j] = float(logp - logp_ref)
            if not done[n]:
                out[n] = total
                done[n] = True
            pos += seg.size
    return out, per_token


def test_kl_terms_equal_recomputed_logratios_base_policy(lm):
    model, tok = lm
    f = _grow(MavisGenerator(model, None, tok), tok)
    want, want_tok = _recompute_logratios(f, model)
    np.testing.assert_allclose(f.node_logratio, want, atol=2e-4)
    np.testing.assert_allclose(f.token_logratio, want_tok, atol=1e-4)
    assert np.all(f.node_logratio[f.node_parent >= 0] >= -1e-6)    # top-k truncation: log(1/sum_topk p) >= 0


def test_kl_terms_equal_recomputed_logratios_mavis_policy(lm):
    model, tok = lm
    torch.manual_seed(0)
    vm = ValueModel.from_trunk(tiny_llama(len(tok), tokenizer=tok, seed=7), ["a", "b"], "prefix", init_std=0.5,
                               tokenizer=tok).eval()
    w = [0.3, 0.7]
    gen = MavisGenerator(model, vm, tok)
    f = _grow(gen, tok, weights=w, beta=3.0, max_new_tokens=6, depth=3)
    want, want_tok = _recompute_logratios(f, model, vm, w, 3.0)
    np.testing.assert_allclose(f.node_logratio, want, atol=1e-3)
    np.testing.assert_allclose(f.token_logratio, want_tok, atol=1e-3)
    # the tilt is real: the same tokens under the untilted top-k policy have other log-ratios
    untilted, _ = _recompute_logratios(f, model)
    assert np.abs(untilted - f.node_logratio).max() > 0.05


def test_rejects_empty_prompt(lm):
    model, tok = lm
    with pytest.raises(ValueError, match="zero tokens"):
        grow_forest(MavisGenerator(model, None, tok), ["", "w1"], [0, 1], [[], [5]], root_branching=2,
                    branching=2, depth=2, max_new_tokens=4, top_k=4)
