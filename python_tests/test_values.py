"""Value models (mavis_ext.values): token_values semantics, gradients, save/load, checks."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mavis_ext import tiny
from mavis_ext.values import ValueEnsemble, ValueModel, load_value_models

WORDS = tiny.default_words(30)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("values")
    tok = tiny.word_tokenizer(WORDS)
    V = len(tok)
    llama = tiny.save_local(tiny.tiny_llama(V, hidden_size=16, seed=2, tokenizer=tok), tok, str(root / "llama"))
    gpt2 = tiny.save_local(tiny.tiny_gpt2(V, hidden_size=16, seed=3, tokenizer=tok), tok, str(root / "gpt2"))
    return {"tok": tok, "V": V, "llama": llama, "gpt2": gpt2, "root": root}


def _rand_heads(vm, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        vm.head_weight.copy_(torch.randn(vm.head_weight.shape, generator=g))
        vm.head_bias.copy_(torch.randn(vm.head_bias.shape, generator=g))
    return vm


def _batch(tok, padding_side="left"):
    enc = tok(["w1 w2 w3 w4 w5 w6", "w7 w8", "w9 w10 w11 w12"], return_tensors="pt", padding=True,
              padding_side=padding_side)
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("trunk", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["prefix", "qhead"])
def test_token_values_match_per_prefix_forwards(setup, trunk, mode):
    vm = _rand_heads(ValueModel.from_trunk(setup[trunk], ["a", "b"], mode), 1)
    for side in ("left", "right"):
        ids, mask = _batch(setup["tok"], side)
        out = vm.token_values(ids, mask)
        assert out.shape == (3, 2, ids.shape[1]) and out.dtype == torch.float32
        for b in range(3):
            pos = mask[b].nonzero().flatten().tolist()
            real = ids[b, pos]
            for j, t in enumerate(pos):
                if mode == "prefix":
                    h = vm.backbone_forward(real[None, : j + 1], use_cache=False)[:, -1]
                    want = vm.heads(h[:, None])[0, :, 0]
                else:
                    if j == 0:
                        continue
                    h = vm.backbone_forward(real[None, :j], use_cache=False)[:, -1]
                    want = vm.heads(h, candidate_ids=real[None, j : j + 1])[0, :, 0]
                torch.testing.assert_close(out[b, :, t], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["prefix", "qhead"])
def test_token_values_are_differentiable(setup, mode):
    vm = _rand_heads(ValueModel.from_trunk(setup["llama"], ["a"], mode), 2)
    ids, mask = _batch(setup["tok"])
    out = vm.token_values(ids, mask)
    target = torch.randn_like(out)
    loss = ((out - target) ** 2 * mask[:, None, :]).mean()
    loss.backward()
    assert vm.head_weight.grad is not None and vm.head_weight.grad.abs().sum() > 0
    trunk_grads = [p.grad for p in vm.trunk.parameters() if p.grad is not None]
    assert trunk_grads and sum(float(g.abs().sum()) for g in trunk_grads) > 0


@pytest.mark.parametrize("mode", ["prefix", "qhead"])
def test_save_load_round_trip(setup, mode, tmp_path):
    tok = setup["tok"]
    vm = ValueModel.from_trunk(setup["gpt2"], ["help", "harm"], mode)
    _rand_heads(vm, 3)
    assert vm.tokenizer is not None  # picked up from the trunk path
    path = tmp_path / "vm"
    vm.save_pretrained(str(path))
    cfg = json.load(open(path / "mavis_value_config.json"))
    assert cfg["mode"] == mode and cfg["objectives"] == ["help", "harm"]
    assert cfg["vocab_size"] == setup["V"] and cfg["trunk_source"] == setup["gpt2"]
    assert cfg["tokenizer"]["size"] == len(tok)
    assert os.path.isfile(path / "heads.safetensors") and os.path.isfile(path / "trunk" / "config.json")
    back = ValueModel.from_pretrained(str(path), base_tokenizer=tok)
    ids, mask = _batch(tok)
    torch.testing.assert_close(back.token_values(ids, mask), vm.token_values(ids, mask))
    # overwrite in place: atomic swap, no temporary directories left behind
    _rand_heads(vm, 4)
    vm.save_pretrained(str(path))
    assert sorted(os.listdir(tmp_path)) == ["vm"]
    again = load_value_models(str(path))
    torch.testing.assert_close(again.token_values(ids, mask), vm.token_values(ids, mask))


def test_ensemble_save_load_and_order(setup, tmp_path):
    a = _rand_heads(ValueModel.from_trunk(setup["llama"], ["help"], "prefix"), 5)
    b = _rand_heads(ValueModel.from_trunk(setup["gpt2"], ["harm", "humor"], "qhead"), 6)
    ens = ValueEnsemble([a, b])
    assert ens.objectives == ["help", "harm", "humor"]
    ens.save_pretrained(str(tmp_path / "ens"))
    back = load_value_models(str(tmp_path / "ens"), base_tokenizer=setup["tok"])
    assert isinstance(back, ValueEnsemble) and back.objectives == ens.objectives
    assert [m.mode for m in back.models] == ["prefix", "qhead"]
    ids, mask = _batch(setup["tok"])
    torch.testing.assert_close(back.token_values(ids, mask), ens.token_values(ids, mask))
    # several paths -> one ensemble in the given order
    a.save_pretrained(str(tmp_path / "a"))
    b.save_pretrained(str(tmp_path / "b"))
    mixed = load_value_models([str(tmp_path / "b"), str(tmp_path / "a")])
    assert mixed.objectives == ["harm", "humor", "help"]


def test_tokenizer_mismatch_on_load_is_clear(setup, tmp_path):
    vm = ValueModel.from_trunk(setup["llama"], ["a"], "prefix")
    vm.save_pretrained(str(tmp_path / "vm"))
    other = tiny.word_tokenizer([f"x{i}" for i in range(30)])
    with pytest.raises(ValueError, match="base_tokenizer: vocabulary does not match"):
        ValueModel.from_pretrained(str(tmp_path / "vm"), base_tokenizer=other)
    bigger = tiny.word_tokenizer(tiny.default_words(60))
    with pytest.raises(ValueError, match="base_tokenizer"):
        ValueModel.from_pretrained(str(tmp_path / "vm"), base_tokenizer=bigger)


def test_bad_arguments(setup, tmp_path):
    with pytest.raises(ValueError, match="mode"):
        ValueModel.from_trunk(setup["llama"], ["a"], "value")
    with pytest.raises(ValueError, match="objectives"):
        ValueModel.from_trunk(setup["llama"], [], "prefix")
    with pytest.raises(ValueError, match="objectives"):
        ValueModel.from_trunk(setup["llama"], ["a", "a"], "prefix")
    with pytest.raises(ValueError, match="torch_dtype"):
        ValueModel.from_trunk(setup["llama"], ["a"], "prefix", torch_dtype="int8")
    vm = ValueModel.from_trunk(setup["llama"], ["a"], "prefix")
    with pytest.raises(ValueError, match="models: duplicate"):
        ValueEnsemble([vm, vm])
    with pytest.raises(FileNotFoundError, match="paths_or_models"):
        load_value_models(str(tmp_path))
    with pytest.raises(ValueError, match="input_ids"):
        vm.token_values(torch.zeros(2, 0, dtype=torch.int64))
    with pytest.raises(ValueError, match="attention_mask"):
        vm.token_values(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 4))


def test_dtype_and_init_std(setup):
    vm = ValueModel.from_trunk(setup["llama"], ["a", "b"], "qhead", torch_dtype="bf16", init_std=0.5)
    assert vm.head_weight.dtype == torch.bfloat16 and next(vm.trunk.parameters()).dtype == torch.bfloat16
    assert vm.head_weight.shape == (2, setup["V"], 16)
    assert 0.4 < float(vm.head_weight.detach().float().std()) < 0.6


def test_lora_adapters(setup, tmp_path):
    pytest.importorskip("peft")
    vm = ValueModel.from_trunk(setup["llama"], ["a"], "prefix",
                               lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    trainable = [n for n, p in vm.trunk.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    ids, mask = _batch(setup["tok"])
    want = vm.token_values(ids, mask)
    vm.save_pretrained(str(tmp_path / "lora"))
    back = ValueModel.from_pretrained(str(tmp_path / "lora"))  # merged: loads without peft
    torch.testing.assert_close(back.token_values(ids, mask), want, rtol=1e-4, atol=1e-4)
    back.save_pretrained(str(tmp_path / "again"))
    torch.testing.assert_close(ValueModel.from_pretrained(str(tmp_path / "again")).token_values(ids, mask), want,
                               rtol=1e-4, atol=1e-4)
