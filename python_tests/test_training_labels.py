"""Labels on a small hand-built forest (values, KL terms, labels against hand-computed numbers),
regression examples (each node supervised once, at the right positions), shard storage."""

import numpy as np
import pytest
import torch

from mavis_ext.training.dataset import bottom_node_mask, build_examples, collate, split_trees
from mavis_ext.training.labeling import (cumulative_logratio, expected_path_logratio, node_labels, node_values,
                                         score_leaves, token_suffix_logratio)
from mavis_ext.training.seeds import rng_for
from mavis_ext.training.storage import load_forest, load_leaf_rewards, save_forest, save_leaf_rewards
from mavis_ext.training.trees import Forest


def _fixed_forest():
    """tree 0: root 0 -> {2, 3}; 2 -> {6, 7}; 3 is an EOS leaf.  tree 1: root 1 -> {4, 5} (leaves).
    Segments (token ids) and per-node log-ratios chosen by hand."""
    segs = {2: [11, 12], 3: [13, 2], 4: [14], 5: [15, 16, 17], 6: [18], 7: [19, 20]}
    parent = [-1, -1, 0, 0, 1, 1, 2, 2]
    depth = [0, 0, 1, 1, 1, 1, 2, 2]
    tree = [0, 1, 0, 0, 1, 1, 0, 0]
    lr = [0.0, 0.0, 0.5, 0.25, 1.0, 0.0, 0.125, 2.0]
    tok_lr = {2: [0.25, 0.25], 3: [0.5, -0.25], 4: [1.0], 5: [0.5, -1.0, 0.5], 6: [0.125], 7: [1.5, 0.5]}
    lens = [len(segs.get(i, [])) for i in range(8)]
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    tokens = np.concatenate([np.asarray(segs.get(i, []), np.int64) for i in range(8)])
    return Forest(prompts=["w1 w2", "w3"], prompt_index=np.array([7, 9]), prompt_ids=np.array([5, 6, 7]),
                  prompt_offsets=np.array([0, 2, 3]), node_tree=np.array(tree), node_parent=np.array(parent),
                  node_depth=np.array(depth), node_tok_start=starts.astype(np.int64),
                  node_tok_len=np.array(lens, np.int64), node_logratio=np.array(lr),
                  node_eos=np.array([0, 0, 0, 1, 0, 0, 0, 0], bool), tokens=tokens,
                  token_logratio=np.concatenate([np.asarray(tok_lr.get(i, []), np.float32) for i in range(8)]))


LEAVES = np.array([3, 4, 5, 6, 7])
REW = np.array([[1.0, 0.0], [0.5, 0.5], [1.5, -0.5], [2.0, 1.0], [4.0, -1.0]])


def test_values_kl_and_labels_by_hand():
    f = _fixed_forest()
    f.validate()
    assert list(np.nonzero(f.is_leaf())[0]) == list(LEAVES)
    v = node_values(f, LEAVES, REW)
    # node 2 = mean(6, 7); root 0 = mean(2, 3); root 1 = mean(4, 5)
    want = {2: [3.0, 0.0], 0: [2.0, 0.0], 1: [1.0, 0.0], 3: [1.0, 0.0], 6: [2.0, 1.0], 7: [4.0, -1.0]}
    for n, w in want.items():
        np.testing.assert_allclose(v[n], w)
    cum = cumulative_logratio(f)
    np.testing.assert_allclose(cum, [0, 0, 0.5, 0.25, 1.0, 0.0, 0.625, 2.5])
    E = expected_path_logratio(f)
    # leaves: whole-path sums; node 2: mean(0.625, 2.5); root 0: mean(E2, 0.25); root 1: mean(1.0, 0.0)
    np.testing.assert_allclose(E, [(1.5625 + 0.25) / 2, 0.5, 1.5625, 0.25, 1.0, 0.0, 0.625, 2.5])
    lab = node_labels(f, v, zeta=0.5, kl_label="path")
    np.testing.assert_allclose(lab[2], [3.0 - 0.5 * 1.5625, 0.0 - 0.5 * 1.5625])
    np.testing.assert_allclose(lab[7], [4.0 - 1.25, -1.0 - 1.25])
    fut = node_labels(f, v, zeta=0.5, kl_label="future")
    np.testing.assert_allclose(fut[2], [3.0 - 0.5 * (1.5625 - 0.5), -0.5 * (1.5625 - 0.5)])
    np.testing.assert_allclose(fut[LEAVES], REW)         # nothing left to spend after a leaf
    np.testing.assert_allclose(node_labels(f, v, zeta=0.0), v)
    with pytest.raises(ValueError, match="leaves"):
        node_values(f, LEAVES[:-1], REW[:-1])


def test_examples_supervise_each_node_once_at_its_last_token():
    f = _fixed_forest()
    lab = node_labels(f, node_values(f, LEAVES, REW), zeta=0.5)
    ex = build_examples(f, lab, np.array([True, True]), mode="prefix")
    assert len(ex) == 5                                    # one path per leaf
    # the path to leaf 6 (first child of 2) also carries node 2; the path to 7 only node 7
    i6 = [k for k, ids in enumerate(ex.ids) if list(ids[-1:]) == [18]][0]
    assert ex.pos[i6].size == 2
    seen = []
    path_len = f.path_len()
    for ids, pos, tgt in zip(ex.ids, ex.pos, ex.tgt):
        for p, t in zip(pos, tgt):
            matches = [n for n in range(8) if f.node_parent[n] >= 0 and np.allclose(lab[n], t)]
            assert len(matches) == 1
            n = matches[0]
            P = f.prompt_offsets[f.node_tree[n] + 1] - f.prompt_offsets[f.node_tree[n]]
            assert p == P + path_len[n] - 1                 # the node's last token
            assert ids[p] == f.segment(n)[-1]
            seen.append(n)
    assert sorted(seen) == [2, 3, 4, 5, 6, 7]               # every non-root node exactly once


def test_examples_qhead_every_token_and_masks():
    f = _fixed_forest()
    lab = node_labels(f, node_values(f, LEAVES, REW), zeta=0.0)
    ex = build_examples(f, lab, np.array([False, True]), mode="qhead")
    n_tok = sum(int(f.node_tok_len[n]) for n in range(2, 8))
    assert sum(p.size for p in ex.pos) == n_tok
    assert all(m[:, 1].all() and not m[:, 0].any() for m in ex.mask)
    keep = np.ones(8, bool)
    keep[[6, 7]] = False
    ex2 = build_examples(f, lab, np.array([True, True]), mode="qhead", keep_node=keep)
    assert sum(p.size for p in ex2.pos) == n_tok - 3
    ids, am, tgt, tm = collate(ex, list(range(len(ex))), pad_id=0)
    assert ids.shape[0] == len(ex) and int(tm.sum()) == n_tok
    for b in range(len(ex)):
        assert int(am[b].sum()) == ex.ids[b].size
        np.testing.assert_allclose(tgt[b, ex.pos[b], 1].numpy(), ex.tgt[b][:, 1])


def test_bottom_node_fraction_and_tree_split():
    f = _fixed_forest()
    keep = bottom_node_mask(f, 0.4, rng_for(1))
    assert keep[[0, 1, 2]].all() and keep[LEAVES].sum() == 2
    assert bottom_node_mask(f, 1.0, rng_for(1)).all()
    keys = list(range(100))
    val = split_trees(keys, 0.1, rng_for(3))
    assert len(val) == 10 and val == split_trees(keys, 0.1, rng_for(3)) and val != split_trees(keys, 0.1, rng_for(4))
    assert split_trees([1, 2], 0.5, rng_for(0)) and len(split_trees([1, 2], 0.9, rng_for(0))) == 1
    assert split_trees([1], 0.5, rng_for(0)) == set() and split_trees(keys, 0.0, rng_for(0)) == set()


def test_storage_roundtrip_and_rejects_foreign_files(tmp_path):
    f = _fixed_forest()
    save_forest(str(tmp_path / "s.safetensors"), f, extra={"k": 1})
    g, extra = load_forest(str(tmp_path / "s.safetensors"))
    assert extra == {"k": 1} and g.prompts == f.prompts
    for name in f.ARRAYS:
        np.testing.assert_array_equal(getattr(f, name), getattr(g, name))
    save_leaf_rewards(str(tmp_path / "l.safetensors"), LEAVES, REW, ["a", "b"])
    ln, lr, objs = load_leaf_rewards(str(tmp_path / "l.safetensors"))
    assert objs == ["a", "b"] and np.array_equal(ln, LEAVES) and np.allclose(lr, REW)
    with pytest.raises(ValueError, match="not a"):
        load_forest(str(tmp_path / "l.safetensors"))
    with pytest.raises(FileNotFoundError):
        load_forest(str(tmp_path / "nope.safetensors"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_score_leaves_sees_prompt_and_decoded_response():
    from mavis_ext.tiny import default_words, word_tokenizer

    tok = word_tokenizer(default_words(20))
    f = _fixed_forest()
    calls = []

    def rec(prompts, responses):
        calls.append((list(prompts), list(responses)))
        return torch.arange(len(prompts), dtype=torch.float32)

    leaves, r = score_leaves(f, {"x": rec, "y": lambda p, q: [len(s) for s in q]}, tok)
    assert list(leaves) == list(LEAVES) and r.shape == (5, 2)
    prompts, responses = calls[0]
    assert prompts == ["w1 w2", "w3", "w3", "w1 w2", "w1 w2"]
    # leaf 7's response: segments of node 2 then 7; eos (id 2) is dropped from leaf 3's text
    assert responses[list(LEAVES).index(7)] == tok.decode([11, 12, 19, 20])
    assert responses[list(LEAVES).index(3)] == tok.decode([13])
    with pytest.raises(ValueError, match="reward 'bad'.*shape"):
        score_leaves(f, {"bad": lambda p, q: torch.zeros(len(p), 2)}, tok)


def test_token_level_kl_for_qhead_future_labels():
    f = _fixed_forest()
    for n in range(2, 8):                                   # token log-ratios add up to the node's
        assert abs(f.token_logratio[f.node_tok_start[n]:f.node_tok_start[n] + f.node_tok_len[n]].sum()
                   - f.node_logratio[n]) < 1e-6
    suf = token_suffix_logratio(f)
    # node 5's tokens have log-ratios (0.5, -1.0, 0.5): what is left after each is (-0.5, 0.5, 0)
    s5 = f.node_tok_start[5]
    np.testing.assert_allclose(suf[s5:s5 + 3], [-0.5, 0.5, 0.0])
    lab = node_labels(f, node_values(f, LEAVES, REW), zeta=0.5, kl_label="future")
    ex = build_examples(f, lab, np.array([True, True]), mode="qhead", token_offset=-0.5 * suf)
    i5 = [k for k, ids in enumerate(ex.ids) if list(ids[-3:]) == [15, 16, 17]][0]
    np.testing.assert_allclose(ex.tgt[i5][:, 0], REW[2, 0] + 0.5 * np.array([0.5, -0.5, 0.0]), rtol=1e-6)
