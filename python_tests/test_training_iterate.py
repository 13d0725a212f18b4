"""Soft policy iteration: iteration n's trees come from iteration n-1's MAVIS policy, warm starts,
per-objective vs mixed rollouts, shared vs separate trunks, and idempotent reruns."""

import json
import os

import numpy as np
import pytest
import torch

from mavis_ext.decoding import MavisGenerator
from mavis_ext.tiny import default_words, tiny_llama, word_tokenizer
from mavis_ext.training import TrainConfig, plan_tree_sets, train_value_models
from mavis_ext.training.storage import load_forest
from mavis_ext.training.trees import grow_forest
from mavis_ext.values import ValueEnsemble, ValueModel, load_value_models


def count_w3(prompts, responses):
    return torch.tensor([r.split().count("w3") for r in responses], dtype=torch.float32)


def count_w5(prompts, responses):
    return torch.tensor([r.split().count("w5") - 0.1 * len(r.split()) for r in responses], dtype=torch.float32)


PROMPTS = [f"w{i % 8} w{(i * 3) % 8}" for i in range(16)]


def _cfg(out, **kw):
    base = dict(out_dir=str(out), iterations=2, beta=3.0, zeta=0.2, root_branching=3, branching=2, depth=3,
                top_k=8, max_new_tokens=6, prompts_per_shard=8, gen_batch_size=32, lr=5e-3, optimizer="adamw",
                epochs=4, batch_size=16, warmup=3, eval_every=8, save_every=8, fraction_bottom_nodes_to_keep=0.6,
                val_fraction=0.2, seed=2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def lm():
    tok = word_tokenizer(default_words(8))
    return tiny_llama(len(tok), tokenizer=tok, seed=0), tok


@pytest.fixture(scope="module")
def run(lm, tmp_path_factory):
    model, tok = lm
    out = tmp_path_factory.mktemp("iterate") / "run"
    cfg = _cfg(out)
    dirs = train_value_models(model, tok, PROMPTS, {"a": count_w3, "b": count_w5}, cfg, progress=False)
    return cfg, dirs


def test_iteration_1_samples_come_from_iteration_0_policy(lm, run):
    model, tok = lm
    cfg, dirs = run
    it1 = os.path.join(cfg.out_dir, "iter_001")
    stored, _ = load_forest(os.path.join(it1, "trees", "a", "shard_00000.safetensors"))
    ids = [tok(p)["input_ids"] for p in stored.prompts]
    kw = dict(root_branching=cfg.root_branching, branching=cfg.branching, depth=cfg.depth,
              max_new_tokens=cfg.max_new_tokens, top_k=cfg.top_k, gen_batch_size=cfg.gen_batch_size,
              pad_token_id=tok.pad_token_id, seed_key=(cfg.seed, 1, 0, 0))
    # set "a" of iteration 1 = MAVIS policy with iteration 0's value model, weights (1, 0), beta 3
    vm0 = load_value_models(dirs[0])
    again = grow_forest(MavisGenerator(model, vm0, tok), stored.prompts, stored.prompt_index, ids,
                        weights=[1.0, 0.0], beta=3.0, **kw)
    np.testing.assert_array_equal(again.tokens, stored.tokens)
    np.testing.assert_allclose(again.node_logratio, stored.node_logratio, atol=1e-6)
    # the same seeds under the base policy give other samples: the policy really changed
    plain = grow_forest(MavisGenerator(model, None, tok), stored.prompts, stored.prompt_index, ids, **kw)
    assert plain.tokens.size != stored.tokens.size or not np.array_equal(plain.tokens, stored.tokens)
    # ... and iteration 1's value model differs from iteration 0's (it was trained further)
    vm1 = load_value_models(dirs[1])
    assert not torch.equal(vm0.head_weight, vm1.head_weight)


def test_metrics_and_policy_improvement(run):
    cfg, dirs = run
    lines = [json.loads(l) for l in open(os.path.join(cfg.out_dir, "metrics.jsonl"))]
    assert [m["iteration"] for m in lines] == [0, 1]
    m0, m1 = lines
    assert m0["policy"] == {"base": {"weights": None, "beta": 0.0, "objectives": ["a", "b"]}}
    assert m1["policy"]["a"]["weights"] == [1.0, 0.0] and m1["policy"]["b"]["weights"] == [0.0, 1.0]
    assert m0["zeta"] == 0.0 and m1["zeta"] == 0.2            # no KL penalty on pi_ref's own data
    # the value-guided single-objective policies earn more of their objective than pi_ref, at a KL cost
    assert m1["reward"]["a"] > m0["reward"]["a"] + 0.2 and m1["reward"]["b"] > m0["reward"]["b"] + 0.1
    assert m1["kl"]["a"] > m0["kl"]["base"]
    for m in lines:
        assert all(np.isfinite(v) for v in m["val_mse"].values())


def test_rerun_is_a_no_op_and_config_changes_are_refused(lm, run):
    model, tok = lm
    cfg, dirs = run
    stamp = {d: os.path.getmtime(os.path.join(d, "heads.safetensors")) for d in dirs}
    again = train_value_models(model, tok, PROMPTS, {"a": count_w3, "b": count_w5}, cfg, progress=False)
    assert again == dirs
    assert stamp == {d: os.path.getmtime(os.path.join(d, "heads.safetensors")) for d in dirs}
    with pytest.raises(ValueError, match=r"different settings.*config.zeta: 0.2 -> 0.5"):
        train_value_models(model, tok, PROMPTS, {"a": count_w3, "b": count_w5}, _cfg(cfg.out_dir, zeta=0.5),
                           progress=False)
    with pytest.raises(ValueError, match=r"prompts\.sha256"):
        train_value_models(model, tok, PROMPTS[:-1], {"a": count_w3, "b": count_w5}, cfg, progress=False)
    # the reward functions are part of what is compared: swapping them is refused, naming them
    with pytest.raises(ValueError, match=r"rewards\.a\.function: .*count_w3.* -> .*count_w5"):
        train_value_models(model, tok, PROMPTS, {"a": count_w5, "b": count_w5}, cfg, progress=False)


def test_separate_trunks_and_mixed_rollouts(lm, tmp_path):
    model, tok = lm
    cfg = _cfg(tmp_path / "sep", shared_trunk=False, rollout_weights=[0.5, 0.5], mode="qhead", epochs=2,
               prompts_per_shard=16)
    dirs = train_value_models(model, tok, PROMPTS, {"a": count_w3, "b": count_w5}, cfg, progress=False)
    ens = load_value_models(dirs[1])
    assert isinstance(ens, ValueEnsemble) and ens.objectives == ["a", "b"]
    assert all(vm.mode == "qhead" for vm in ens.models)
    assert sorted(os.listdir(os.path.join(cfg.out_dir, "iter_001", "trees"))) == ["mix"]
    m1 = json.loads(open(os.path.join(cfg.out_dir, "metrics.jsonl")).read().splitlines()[1])
    assert m1["policy"]["mix"]["weights"] == [0.5, 0.5] and set(m1["val_mse"]) == {"a", "b"}
    assert not any(n.startswith("value_") or n == "train_state" for n in os.listdir(os.path.join(cfg.out_dir, "iter_001")))


def test_plan_tree_sets():
    cfg = TrainConfig(beta={"a": 2.0, "b": 4.0})
    sets = plan_tree_sets(1, ["a", "b"], cfg)
    assert [(s.name, s.weights, s.beta, s.supervises) for s in sets] == [
        ("a", [1.0, 0.0], 2.0, [0]), ("b", [0.0, 1.0], 4.0, [1])]
    assert plan_tree_sets(0, ["a", "b"], cfg)[0].weights is None
    with pytest.raises(ValueError, match="no beta for objectives"):
        cfg.check_objectives(["a", "c"])
    with pytest.raises(ValueError, match="rollout_weights.*3 weights for 2"):
        TrainConfig(rollout_weights=[1, 1, 1]).check_objectives(["a", "b"])
