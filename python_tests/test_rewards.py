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
    with pytest.raises(FileNotFoundError, match="reward 'help': no such directory: .*no_model_here"):
        load_reward("hf:" + str(tmp_path / "no_model_here"), "help")
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(ValueError, match="reward 'help': cannot load Hugging Face sequence classifier .*not_a_model"):
        load_reward("hf:" + str(tmp_path / "not_a_model"), "help")
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


# ----------------------------------------------------------------------------- untrained heads
@pytest.fixture(scope="module")
def causal_lm_dir(tmp_path_factory):
    from mavis_ext.tiny import save_local, tiny_llama

    tok = word_tokenizer(default_words(10))
    return save_local(tiny_llama(len(tok), hidden_size=16, tokenizer=tok), tok, str(tmp_path_factory.mktemp("lm")))


def test_reward_model_with_untrained_head_is_refused_unless_allowed(causal_lm_dir):
    """A causal-LM checkpoint has no score head: HF initialises it at random with only a warning."""
    with pytest.raises(ValueError) as e:
        load_reward(f"hf:{causal_lm_dir}", "help")
    msg = str(e.value)
    assert "\n" not in msg and "reward 'help'" in msg and "score.weight" in msg
    assert "--allow-untrained-reward-head" in msg and "allow_untrained_head=True" in msg
    a = load_reward(f"hf:{causal_lm_dir}", "help", allow_untrained_head=True)
    b = HFSequenceClassifierReward(causal_lm_dir, name="help", allow_untrained_head=True)
    assert a.untrained == ["score.weight"]
    # opted in: the random head is seeded, so runs and resumes score identically
    out = a(["w1", "w2 w3"], ["w4", "w5 w6"])
    assert torch.equal(out, b(["w1", "w2 w3"], ["w4", "w5 w6"]))
    assert a.describe() == b.describe() and a.describe()["untrained"] == ["score.weight"]


def test_trained_classifier_is_accepted_without_opt_in(classifier_dir):
    path, _, _ = classifier_dir
    assert load_reward(f"hf:{path}", "h").untrained == []


# ----------------------------------------------------------------------------- describe(): the resume fingerprint
def test_describe_identifies_what_a_reward_computes(tmp_path, classifier_dir, causal_lm_dir):
    f = tmp_path / "rw.py"
    f.write_text("import torch\ndef score(p, r):\n    return torch.tensor([1.0] * len(r))\n")
    d1 = load_reward(f"{f}:score", "a").describe()
    assert load_reward(f"{f}:score", "a").describe() == d1          # stable
    f.write_text("import torch\ndef helper():\n    return 2.0\ndef score(p, r):\n    return torch.tensor([1.0] * len(r))\n")
    d2 = load_reward(f"{f}:score", "a").describe()
    assert d2["function"] == d1["function"] and d2["file_sha256"] != d1["file_sha256"]   # the whole file counts
    assert load_reward(_len_reward, "x").describe() != load_reward(lambda p, r: [0.0] * len(r), "x").describe()
    path, _, _ = classifier_dir
    h0, h2 = load_reward(f"hf:{path}:0", "h").describe(), load_reward(f"hf:{path}:2", "h").describe()
    assert h0 != h2 and h0["weights"] == h2["weights"]
    assert load_reward(f"hf:{path}", "h", template="{response}").describe()["template"] == "{response}"
    other = load_reward(f"hf:{causal_lm_dir}", "h", allow_untrained_head=True).describe()
    assert other["weights"] != h0["weights"]
