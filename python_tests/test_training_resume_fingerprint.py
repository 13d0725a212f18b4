"""Resuming compares everything that shapes the results (run.json, training/fingerprint.py): a
change is refused with one line naming what changed; paths alone may change; the environment
(device, world size, versions, threads) only warns."""

import dataclasses
import json
import shutil

import pytest

from mavis_ext.rewards import load_reward
from mavis_ext.tiny import default_words, save_local, tiny_llama, word_tokenizer
from mavis_ext.training import TrainConfig, train_value_models
from mavis_ext.training.config import _RESUME_FREE

PROMPTS = ["w1 w2", "w3", "w4 w5", "w6"]
REWARD_SRC = "import torch\ndef words(p, r):\n    return torch.tensor([float(len(x.split())) for x in r])\n"


def _cfg(out, **kw):
    d = dict(out_dir=str(out), iterations=1, root_branching=2, branching=2, depth=2, top_k=6, max_new_tokens=4,
             prompts_per_shard=2, lr=1e-3, optimizer="adamw", epochs=1, batch_size=8, warmup=0, val_fraction=0.25)
    d.update(kw)
    return TrainConfig(**d)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("fingerprint")
    tok = word_tokenizer(default_words(8))
    base = save_local(tiny_llama(len(tok), tokenizer=tok, seed=0), tok, str(d / "base"))
    trunk = save_local(tiny_llama(len(tok), hidden_size=16, tokenizer=tok, seed=9), tok, str(d / "trunk"))
    (d / "rw.py").write_text(REWARD_SRC)
    out = d / "run"
    train_value_models(base, None, PROMPTS, {"a": load_reward(f"{d / 'rw.py'}:words", "a")},
                       _cfg(out, value_trunk=trunk), progress=False)
    return d, base, trunk, out, tok


def _resume(world, **kw):
    d, base, trunk, out, _ = world
    args = dict(base=base, tok=None, rewards={"a": load_reward(f"{d / 'rw.py'}:words", "a")},
                cfg=_cfg(out, value_trunk=trunk))
    args.update(kw)
    return train_value_models(args["base"], args["tok"], PROMPTS, args["rewards"], args["cfg"], progress=False)


def test_unchanged_rerun_is_accepted(world):
    _resume(world)


def test_edited_reward_file_is_refused(world, tmp_path):
    d = world[0]
    (d / "rw.py").write_text(REWARD_SRC.replace("float(len(x.split()))", "2.0 * len(x.split())"))
    try:
        with pytest.raises(ValueError, match=r"different settings \(rewards\.a\.file_sha256: "):
            _resume(world)
    finally:
        (d / "rw.py").write_text(REWARD_SRC)


def test_other_base_weights_are_refused_but_a_moved_folder_is_not(world, tmp_path):
    d, base, *_ = world
    tok = world[4]
    other = save_local(tiny_llama(len(tok), tokenizer=tok, seed=1), tok, str(tmp_path / "other_base"))
    with pytest.raises(ValueError, match=r"base_model\.sha256"):
        _resume(world, base=other)
    moved = shutil.copytree(base, tmp_path / "moved_base")
    _resume(world, base=str(moved))


def test_changed_value_trunk_weights_are_refused(world, tmp_path):
    d, _, trunk, out, tok = world
    changed = save_local(tiny_llama(len(tok), hidden_size=16, tokenizer=tok, seed=10), tok, str(tmp_path / "t"))
    with pytest.raises(ValueError, match=r"value_trunk\.sha256"):
        _resume(world, cfg=_cfg(out, value_trunk=changed))
    moved = shutil.copytree(trunk, tmp_path / "moved_trunk")     # same files elsewhere: fine
    _resume(world, cfg=_cfg(out, value_trunk=str(moved)))


def test_other_tokenizer_is_refused(world):
    other = word_tokenizer([f"w{i}" for i in range(7, -1, -1)])  # same words, other ids
    # (with the trunk, the vocabulary check refuses it even earlier; without, the fingerprint does)
    with pytest.raises(ValueError, match=r"prompts\.token_ids_sha256: .*tokenizer\.sha256: "):
        _resume(world, tok=other, cfg=_cfg(world[3]))


@pytest.mark.parametrize("field,value", [("seed", 1), ("bf16", False), ("kl_penalty_iteration0", True),
                                         ("normalize_values", True), ("gen_batch_size", 7), ("eval_every", 3)])
def test_config_fields_are_compared(world, field, value):
    d, _, trunk, out, _ = world
    with pytest.raises(ValueError, match=rf"config\.{field}: "):
        _resume(world, cfg=_cfg(out, value_trunk=trunk, **{field: value}))


def test_every_result_changing_field_is_in_the_fingerprint():
    """The audit as a test: a field is left out only when it cannot change results or is covered
    by another part of the record; adding a field to TrainConfig puts it in by default."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert _RESUME_FREE == {"out_dir", "iterations", "device", "log_every", "save_every", "reward_batch_size",
                            "value_trunk"}
    assert set(TrainConfig().fingerprint()) == fields - _RESUME_FREE


def test_environment_change_only_warns(world):
    out = world[3]
    path = out / "run.json"
    original = path.read_bytes()
    rec = json.loads(original)
    rec["environment"]["cpu_threads"] = rec["environment"]["cpu_threads"] + 3
    path.write_text(json.dumps(rec))
    try:
        with pytest.warns(RuntimeWarning, match=r"different environment \(environment\.cpu_threads: "):
            _resume(world)
    finally:
        path.write_bytes(original)


def test_run_from_another_version_is_refused(world):
    out = world[3]
    path = out / "run.json"
    original = path.read_bytes()
    rec = json.loads(original)
    rec.pop("format")
    path.write_text(json.dumps(rec))
    try:
        with pytest.raises(ValueError, match=r"started by another version of mavis_ext"):
            _resume(world)
    finally:
        path.write_bytes(original)
