"""Damaged files on resume: what can be rebuilt is rebuilt (and the rebuilt run is byte-identical to
an undamaged one), what cannot is a one-line error naming the file.

Damage is done the way disks and killed copies do it: truncation, a flipped byte, garbage JSON."""

import json
import logging
import os
import shutil

import pytest
import torch

from mavis_ext.integrity import CorruptFileError
from mavis_ext.tiny import default_words, tiny_llama, word_tokenizer
from mavis_ext.training import TrainConfig, train_value_models
from mavis_ext.training import regression as regression_mod


def count_w3(prompts, responses):
    return torch.tensor([r.split().count("w3") for r in responses], dtype=torch.float32)


def length(prompts, responses):
    return torch.tensor([0.3 * len(r.split()) + ("w1" in p.split()) for p, r in zip(prompts, responses)])


REWARDS = {"a": count_w3, "b": length}
PROMPTS = ["w1 w2", "w3", "w4 w5", "w6", "w7 w1", "w2"]


def _cfg(out, **kw):
    d = dict(out_dir=str(out), iterations=2, beta=2.0, zeta=0.1, root_branching=2, branching=2, depth=2, top_k=6,
             max_new_tokens=4, prompts_per_shard=3, gen_batch_size=16, lr=3e-3, optimizer="adamw", epochs=2,
             batch_size=2, warmup=1, eval_every=3, save_every=3, val_fraction=0.2, seed=4)
    d.update(kw)
    return TrainConfig(**d)


@pytest.fixture(scope="module")
def lm():
    tok = word_tokenizer(default_words(8))
    return tiny_llama(len(tok), tokenizer=tok, seed=1), tok


def _train(lm, out, **kw):
    model, tok = lm
    return train_value_models(model, tok, PROMPTS, REWARDS, _cfg(out, **kw), progress=False)


@pytest.fixture(scope="module")
def reference(lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("corrupt") / "ref"
    _train(lm, out)
    return out


def _snapshot(root, under=""):
    """relative path -> bytes of every output file (train.log aside: timestamps)."""
    out = {}
    for d, _, files in os.walk(os.path.join(root, under)):
        for f in files:
            if f != "train.log":
                p = os.path.join(d, f)
                out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def _assert_same_bytes(a, b, under=""):
    sa, sb = _snapshot(a, under), _snapshot(b, under)
    assert sorted(sa) == sorted(sb)
    differ = [k for k in sa if sa[k] != sb[k]]
    assert not differ, differ


def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:int(len(data) * keep)])


def _flip_last_byte(path):
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0x5A
    open(path, "wb").write(bytes(data))


def _copy(reference, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(reference, work)
    return work


def test_damaged_shards_of_an_unfinished_iteration_are_recomputed(lm, reference, tmp_path, caplog):
    work = _copy(reference, tmp_path)
    it1 = work / "iter_001"
    # iteration 1 as a run killed after collection left it: shards there, nothing trained yet
    for name in ("DONE", "metrics.json", "train_summary_all.json"):
        os.unlink(it1 / name)
    shutil.rmtree(it1 / "model")
    _truncate(it1 / "trees" / "a" / "shard_00000.safetensors")
    _flip_last_byte(it1 / "labels" / "b" / "shard_00001.safetensors")
    with caplog.at_level(logging.WARNING, logger="mavis_ext.training"):
        _train(lm, work)
    text = caplog.text
    assert "trees/a/shard_00000.safetensors" in text and "discarding it and growing the trees again" in text
    assert "labels/b/shard_00001.safetensors" in text and "checksum mismatch" in text
    _assert_same_bytes(reference, work)


@pytest.mark.parametrize("damage", ["heads_flip", "trunk_truncate", "config_garbage", "metrics_garbage",
                                    "done_empty"])
def test_damaged_finished_iteration_is_rebuilt(lm, reference, tmp_path, caplog, damage):
    work = _copy(reference, tmp_path)
    it0 = work / "iter_000"
    target = {"heads_flip": it0 / "model" / "heads.safetensors",
              "trunk_truncate": it0 / "model" / "trunk" / "model.safetensors",
              "config_garbage": it0 / "model" / "mavis_value_config.json",
              "metrics_garbage": it0 / "metrics.json",
              "done_empty": it0 / "DONE"}[damage]
    if damage == "heads_flip":
        _flip_last_byte(target)
    elif damage == "trunk_truncate":
        _truncate(target)
    elif damage == "done_empty":
        open(target, "wb").close()
    else:
        open(target, "w").write('{"mode": "prefix", "obje')
    later = os.path.getmtime(work / "iter_001" / "model" / "heads.safetensors")
    with caplog.at_level(logging.WARNING, logger="mavis_ext.training"):
        with pytest.warns(RuntimeWarning, match="rebuilding this iteration"):
            _train(lm, work)
    assert str(target.relative_to(work)) in caplog.text or damage == "config_garbage"
    _assert_same_bytes(reference, work)
    # the later iteration was intact and is kept as it was (it depends on bytes that came back equal)
    assert os.path.getmtime(work / "iter_001" / "model" / "heads.safetensors") == later


class _Interrupted(BaseException):
    """Stands in for SIGKILL inside this process (the e2e test kills real processes)."""


def _interrupt_at_train_step(monkeypatch, k):
    count = {"n": 0}

    def fake(stage):
        if stage == "train":
            count["n"] += 1
            if count["n"] >= k:
                raise _Interrupted()

    monkeypatch.setattr(regression_mod, "maybe_kill", fake)


@pytest.mark.parametrize("damage", ["trainable_flip", "optim_truncate", "latest_garbage", "state_truncate"])
def test_damaged_training_checkpoint_is_discarded_and_recomputed(lm, reference, tmp_path, monkeypatch, caplog,
                                                                  damage):
    work = tmp_path / "work"
    _interrupt_at_train_step(monkeypatch, 4)
    with pytest.raises(_Interrupted):
        _train(lm, work, iterations=1)
    monkeypatch.undo()
    state = work / "iter_000" / "train_state" / "all"
    latest = json.load(open(state / "latest.json"))
    assert latest["step"] == 3
    ckpt = state / latest["dir"]
    if damage == "trainable_flip":
        _flip_last_byte(ckpt / "trainable.safetensors")
    elif damage == "optim_truncate":
        _truncate(ckpt / "optim.pt")
    elif damage == "latest_garbage":
        open(state / "latest.json", "w").write("\x00\x00")
    else:
        _truncate(ckpt / "state.json", 0.3)
    with caplog.at_level(logging.WARNING, logger="mavis_ext.training"):
        _train(lm, work, iterations=1)
    assert "discarding it and training this stage again from step 0" in caplog.text
    # the same bytes as iteration 0 of the uninterrupted run
    _assert_same_bytes(reference, work, "iter_000")
    assert open(reference / "run.json", "rb").read() == open(work / "run.json", "rb").read()


def test_intact_checkpoint_is_resumed_not_recomputed(lm, reference, tmp_path, monkeypatch, caplog):
    """The counterpart of the test above: an intact checkpoint is used (no discarding)."""
    work = tmp_path / "work"
    _interrupt_at_train_step(monkeypatch, 4)
    with pytest.raises(_Interrupted):
        _train(lm, work, iterations=1)
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="mavis_ext.training"):
        _train(lm, work, iterations=1)
    assert "resumed at step 3" in caplog.text and "discarding" not in caplog.text
    _assert_same_bytes(reference, work, "iter_000")


def test_damaged_run_json_is_a_clear_error(lm, reference, tmp_path):
    work = _copy(reference, tmp_path)
    _truncate(work / "run.json", 0.4)
    before = _snapshot(work)
    with pytest.raises(CorruptFileError) as e:
        _train(lm, work)
    msg = str(e.value)
    assert "\n" not in msg and str(work / "run.json") in msg
    assert "not valid JSON" in msg and "cannot be rebuilt" in msg and "delete run.json" in msg
    assert not e.value.rebuildable
    assert _snapshot(work) == before


def test_damaged_member_of_separate_trunks_is_rebuilt(lm, tmp_path, caplog):
    ref, work = tmp_path / "ref", tmp_path / "work"
    _train(lm, ref, iterations=1, shared_trunk=False)
    shutil.copytree(ref, work)
    heads = work / "iter_000" / "model" / "member_1" / "heads.safetensors"
    _truncate(heads, 0.9)
    with caplog.at_level(logging.WARNING, logger="mavis_ext.training"):
        with pytest.warns(RuntimeWarning, match="rebuilding this iteration"):
            _train(lm, work, iterations=1, shared_trunk=False)
    assert "member_1/heads.safetensors" in caplog.text
    _assert_same_bytes(ref, work)


def test_damaged_previous_model_of_an_unfinished_iteration_is_rebuilt_first(lm, reference, tmp_path, caplog):
    """Iteration 1 rolls out with iteration 0's value model: a damaged one is rebuilt before use."""
    work = _copy(reference, tmp_path)
    it1 = work / "iter_001"
    for name in ("DONE", "metrics.json", "train_summary_all.json"):
        os.unlink(it1 / name)
    shutil.rmtree(it1 / "model")
    shutil.rmtree(it1 / "trees")
    shutil.rmtree(it1 / "labels")
    _truncate(work / "iter_000" / "model" / "trunk" / "model.safetensors", 0.99)
    with caplog.at_level(logging.WARNING, logger="mavis_ext.training"):
        with pytest.warns(RuntimeWarning, match="iter_000: .*model.safetensors.*rebuilding this iteration"):
            _train(lm, work)
    _assert_same_bytes(reference, work)
