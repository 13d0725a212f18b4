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


# ----------------------------------------------------------------------------- no LM head
@pytest.mark.parametrize("trunk", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["prefix", "qhead"])
def test_every_trainable_parameter_gets_a_gradient(setup, trunk, mode, tmp_path):
    """A value model has no parameter the loss cannot reach (a causal LM's LM head was one): with
    one, N-process training (gradients all-reduced) and one process would update it differently."""
    vm = _rand_heads(ValueModel.from_trunk(setup[trunk], ["a", "b"], mode), 7)
    names = [n for n, _ in vm.named_parameters()]
    assert not any("lm_head" in n for n in names)
    ids, mask = _batch(setup["tok"])
    ((vm.token_values(ids, mask) * mask[:, None, :]) ** 2).sum().backward()
    missing = [n for n, p in vm.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    # and the saved trunk holds no LM head either
    vm.save_pretrained(str(tmp_path / "vm"))
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "vm" / "trunk" / "model.safetensors"))
    assert saved and not any("lm_head" in k for k in saved)


def test_trunk_object_keeps_its_weights_without_the_head(setup):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(setup["llama"])
    vm = ValueModel.from_trunk(lm, ["a"], "prefix")
    assert vm.trunk is lm.model                      # the decoder stack itself, not a copy
    ids, mask = _batch(setup["tok"])
    want = lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(vm.backbone_forward(ids, attention_mask=mask,
                                                   position_ids=(mask.cumsum(-1) - 1).clamp(min=0)),
                               lm.model(input_ids=ids, attention_mask=mask,
                                        position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state)
    assert want.shape[-1] == vm.hidden_size


def test_format_1_checkpoints_still_load(setup, tmp_path):
    """Older releases saved the whole causal LM as trunk and no file manifest."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(setup["gpt2"])
    path = tmp_path / "old"
    lm.save_pretrained(str(path / "trunk"))
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(2, 16, generator=g), torch.randn(2, generator=g)
    save_file({"head_weight": w, "head_bias": b}, str(path / "heads.safetensors"))
    json.dump({"format_version": 1, "kind": "ValueModel", "mode": "prefix", "objectives": ["a", "b"],
               "hidden_size": 16, "vocab_size": setup["V"], "trunk_dir": "trunk", "tokenizer": None,
               "tokenizer_saved": False}, open(path / "mavis_value_config.json", "w"))
    vm = load_value_models(str(path))
    assert not any("lm_head" in n for n, _ in vm.named_parameters())
    ids, mask = _batch(setup["tok"], "right")
    want = torch.einsum("btd,md->bmt", lm.transformer(input_ids=ids, attention_mask=mask).last_hidden_state, w)
    want = want + b.view(1, -1, 1)
    got = vm.token_values(ids, mask)
    for r in range(ids.shape[0]):
        n = int(mask[r].sum())
        torch.testing.assert_close(got[r, :, :n], want[r, :, :n], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- damaged / missing folders
def _saved(setup, tmp_path, name="vm"):
    vm = _rand_heads(ValueModel.from_trunk(setup["llama"], ["a", "b"], "prefix"), 8)
    vm.save_pretrained(str(tmp_path / name))
    return tmp_path / name


def _one_line_naming(exc, path):
    msg = str(exc.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    return msg


@pytest.mark.parametrize("damage", ["heads_truncated", "heads_flipped", "trunk_truncated", "trunk_flipped",
                                    "trunk_config_missing", "config_garbage", "config_empty"])
def test_damaged_value_model_names_the_file(setup, tmp_path, damage):
    path = _saved(setup, tmp_path)
    target = {"heads_truncated": path / "heads.safetensors", "heads_flipped": path / "heads.safetensors",
              "trunk_truncated": path / "trunk" / "model.safetensors",
              "trunk_flipped": path / "trunk" / "model.safetensors",
              "trunk_config_missing": path / "trunk" / "config.json",
              "config_garbage": path / "mavis_value_config.json",
              "config_empty": path / "mavis_value_config.json"}[damage]
    data = bytearray(open(target, "rb").read())
    if damage.endswith("truncated"):
        open(target, "wb").write(bytes(data[: len(data) // 2]))
    elif damage.endswith("flipped"):
        data[len(data) - 5] ^= 0x01
        open(target, "wb").write(bytes(data))
    elif damage == "trunk_config_missing":
        os.unlink(target)
    elif damage == "config_garbage":
        open(target, "w").write('{"mode": "prefix", "objecti')
    else:
        open(target, "w").close()
    from mavis_ext.values import CorruptFileError, verify_saved

    for load in (lambda: load_value_models(str(path)), lambda: ValueModel.from_pretrained(str(path)),
                 lambda: verify_saved(str(path))):
        with pytest.raises(CorruptFileError) as e:
            load()
        msg = _one_line_naming(e, target)
        assert isinstance(e.value, ValueError) and e.value.path == str(target)
        assert "restore the folder from a copy" in msg


def test_damaged_ensemble_file_names_it(setup, tmp_path):
    a = _rand_heads(ValueModel.from_trunk(setup["llama"], ["help"], "prefix"), 5)
    b = _rand_heads(ValueModel.from_trunk(setup["gpt2"], ["harm"], "qhead"), 6)
    ValueEnsemble([a, b]).save_pretrained(str(tmp_path / "ens"))
    target = tmp_path / "ens" / "mavis_ensemble.json"
    open(target, "w").write("[1, 2")
    from mavis_ext.values import CorruptFileError

    with pytest.raises(CorruptFileError) as e:
        load_value_models(str(tmp_path / "ens"))
    _one_line_naming(e, target)
    # a damaged member is named too, inside the ensemble folder
    ValueEnsemble([a, b]).save_pretrained(str(tmp_path / "ens2"))
    heads = tmp_path / "ens2" / "member_1" / "heads.safetensors"
    open(heads, "wb").write(open(heads, "rb").read()[:40])
    with pytest.raises(CorruptFileError) as e:
        load_value_models(str(tmp_path / "ens2"))
    _one_line_naming(e, heads)


def test_missing_value_model_path_says_no_such_directory(tmp_path):
    for p in (str(tmp_path / "nope"), "./surely_not_here/vm"):
        with pytest.raises(FileNotFoundError, match=r"no such directory: .*(nope|surely_not_here)"):
            load_value_models(p)
        with pytest.raises(FileNotFoundError, match="no such directory"):
            ValueModel.from_pretrained(p)
    with pytest.raises(FileNotFoundError, match=r"--value-model\[1\]: no such directory"):
        load_value_models([str(tmp_path), str(tmp_path / "gone")], arg_name="--value-model")
    with pytest.raises(FileNotFoundError, match=r"--value-model\[0\]: .* is not a saved value model"):
        load_value_models([str(tmp_path)], arg_name="--value-model")


def test_save_is_byte_deterministic(setup, tmp_path):
    vm = _rand_heads(ValueModel.from_trunk(setup["gpt2"], ["a", "b"], "qhead"), 9)
    vm.save_pretrained(str(tmp_path / "one"))
    vm.save_pretrained(str(tmp_path / "two"))
    files = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "one")
                   for d, _, fs in os.walk(tmp_path / "one") for f in fs)
    assert "heads.safetensors" in files and "trunk/model.safetensors" in files
    for f in files:
        assert open(tmp_path / "one" / f, "rb").read() == open(tmp_path / "two" / f, "rb").read(), f
