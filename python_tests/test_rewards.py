"""Reward adapters: callables, spec strings, Hugging Face sequence classifiers, output checks."""

import pytest
import torch

from mavis_ext.rewards import (CallableReward, HFSequenceClassifierReward, check_reward_output, load_reward,
                               load_rewards, parse_objectives)
from mavis_ext.tiny import default_words, word_tokenizer


def test_check_reward_output():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, generator=g, dtype=torch.float64)
    out = check_reward_output(x, 5, "help")
    assert out.dtype == torch.float32 and torch.allclose(out, x.float())
    assert check_reward_output([1, 2, 3], 3, "h").tolist() == [1.0, 2.0, 3.0]
    assert check_reward_output(x[:, None], 5, "h").shape == (5,)
    with pytest.raises(ValueError, match=r"reward 'help': expected shape \[5\].*\(4,\)"):
        check_reward_output(x[:4], 5, "help")
    with pytest.raises(ValueError, match=r"reward 'harm'.*\(5, 2\)"):
        check_reward_output(torch.randn(5, 2), 5, "harm")
    bad = x.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="reward 'harm': returned a non-finite score.*index 3"):
        check_reward_output(bad, 5, "harm")
    bad[3] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        check_reward_output(bad, 5, "harm")
    with pytest.raises(TypeError, match="reward 'h'"):
        check_reward_output("abc", 3, "h")


def _len_reward(prompts, responses):
    return torch.tensor([float(len(r.split())) for r in responses])


def test_callable_and_spec_strings(tmp_path, monkeypatch):
    fn = load_reward(_len_reward, "len")
    assert isinstance(fn, CallableReward)
    assert fn(["p", "q"], ["a b", "c"]).tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        fn(["p", "q"], ["a"])
    f = tmp_path / "myrewards.py"
    f.write_text("import torch\ndef score(p, r):\n    return torch.tensor([len(x) for x in r], dtype=torch.float32)\n")
    fn = load_reward(f"{f}:score", "s")
    assert fn(["x"], ["abc"]).tolist() == [3.0]
    # "module:function" resolves through sys.path (not only the repository root).
    (tmp_path / "rewmod_q.py").write_text(
        "import torch\ndef words(p, r):\n    return torch.tensor([len(x.split()) for x in r], dtype=torch.float32)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_reward("rewmod_q:words", "m")
    assert fn(["x"], ["a b c"]).tolist() == [3.0]
    with pytest.raises(ValueError, match="reward 'm'.*cannot import 'no_such_mod_q'"):
        load_reward("no_such_mod_q:f", "m")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        load_reward(f"{f}:nope", "m")
    with pytest.raises(ValueError, match="no such file"):
        load_reward(str(tmp_path / "missing.py") + ":f", "m")
    with pytest.raises(ValueError, match="must be 'hf:"):
        load_reward("justaname", "m")
    with pytest.raises(ValueError, match="reward 'help': cannot load Hugging Face"):
        load_reward("hf:" + str(tmp_path / "no_model_here"), "help")
    with pytest.raises(TypeError):
        load_reward(3, "x")
    rs = load_rewards({"a": _len_reward, "b": f"{f}:score"})
    assert list(rs) == ["a", "b"]
    with pytest.raises(ValueError, match="non-empty dict"):
        load_rewards({})


def test_parse_objectives():
    assert parse_objectives("help=hf:a/b:1,harm=mod.x:f") == {"help": "hf:a/b:1", "harm": "mod.x:f"}
    assert parse_objectives("a=x.py:f") == {"a": "x.py:f"}
    with pytest.raises(ValueError, match="given twice"):
        parse_objectives("a=x:f,a=y:g")
    with pytest.raises(ValueError, match="expected name=REWARD_SPEC"):
        parse_objectives("a")
    with pytest.raises(ValueError, match="empty"):
        parse_objectives("")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = word_tokenizer(default_words(10))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=3, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg).eval()
    d = tmp_path_factory.mktemp("rm")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d), model, tok


def test_hf_sequence_classifier_reward(classifier_dir):
    path, model, tok = classifier_dir
    prompts = ["w1 w2", "w3", "w4 w5 w6"]
    responses = ["w7", "w8 w9 w0 w1", ""]
    rw = load_reward(f"hf:{path}:2", "help", batch_size=2)
    assert isinstance(rw, HFSequenceClassifierReward) and rw.logit_index == 2
    got = rw(prompts, responses)
    assert got.shape == (3,) and torch.isfinite(got).all()
    # each row scored alone (no padding) equals the batched score: padding is handled right
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids = tok([p + r], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            want = model(input_ids=ids).logits[0, 2]
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)
    # the template decides what the classifier sees
    rw2 = HFSequenceClassifierReward(path, logit_index=0, template="{response} {prompt}", name="t")
    ids = tok(["w7 w1 w2"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = model(input_ids=ids).logits[0, 0]
    torch.testing.assert_close(rw2(["w1 w2"], ["w7"])[0], want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="logit_index 5 out of range"):
        HFSequenceClassifierReward(path, logit_index=5, name="x")
    with pytest.raises(ValueError, match="template"):
        HFSequenceClassifierReward(path, template="{foo}", name="x")
