"""`mavis generate` end to end on tiny local models."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from mavis_ext import cli, tiny
from mavis_ext.values import ValueModel


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = tiny.word_tokenizer(tiny.default_words(30))
    V = len(tok)
    base = tiny.save_local(tiny.tiny_llama(V, seed=1, tokenizer=tok), tok, str(root / "base"))
    trunk = tiny.save_local(tiny.tiny_llama(V, hidden_size=16, seed=2, tokenizer=tok), tok, str(root / "trunk"))
    vm = ValueModel.from_trunk(trunk, ["help", "harm"], "prefix", init_std=1.0)
    vm.save_pretrained(str(root / "vm"))
    q = ValueModel.from_trunk(trunk, ["humor"], "qhead", init_std=1.0)
    q.save_pretrained(str(root / "q"))
    (root / "prompts.txt").write_text("w1 w2 w3\nw4\n\nw5 w6\n")
    (root / "rw.py").write_text(textwrap.dedent("""
        import torch
        def length(prompts, responses):
            return torch.tensor([float(len(r.split())) for r in responses])
    """))
    return root


def test_generate_prints_texts_kl_rewards_and_speed(paths, capsys, tmp_path):
    out_json = tmp_path / "out.jsonl"
    rc = cli.main(["generate", "--base-model", str(paths / "base"), "--value-model", str(paths / "vm"),
                   "--value-model", str(paths / "q"), "--weights", "0.5,0.3,0.2", "--beta", "2",
                   "--prompts-file", str(paths / "prompts.txt"), "--top-k", "5", "--max-new-tokens", "6",
                   "--batch-size", "2", "--reward", f"len={paths / 'rw.py'}:length", "--json", str(out_json),
                   "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "tokens/s" in text and "mean KL" in text and "mean len=" in text
    lines = [json.loads(x) for x in out_json.read_text().splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    assert [r["prompt"] for r in rows] == ["w1 w2 w3", "w4", "w5 w6"]
    assert summary["objectives"] == ["help", "harm", "humor"] and summary["weights"] == [0.5, 0.3, 0.2]
    for r in rows:
        assert r["rewards"]["len"] == len(r["response"].split())
        assert r["kl"] == r["kl"]  # finite, not NaN
        assert 1 <= r["new_tokens"] <= 6


def test_generate_same_seed_same_output_and_plain_mode(paths, capsys):
    args = ["generate", "--base-model", str(paths / "base"), "--prompt", "w1 w2", "--prompt", "w3",
            "--top-k", "4", "--max-new-tokens", "5", "--seed", "3", "--json", "-", "--quiet"]
    assert cli.main(args) == 0
    a = capsys.readouterr().out
    assert cli.main(args) == 0
    b = capsys.readouterr().out
    resp = lambda s: [json.loads(x)["response"] for x in s.splitlines() if x.startswith('{"prompt"')]  # noqa: E731
    assert resp(a) == resp(b) and len(resp(a)) == 2


def test_generate_bad_arguments(paths, capsys):
    rc = cli.main(["generate", "--base-model", str(paths / "base"), "--value-model", str(paths / "vm"),
                   "--weights", "1,2,3", "--prompt", "w1"])
    assert rc == 2 and "--weights" in capsys.readouterr().err
    rc = cli.main(["generate", "--base-model", str(paths / "base"), "--value-model", str(paths / "vm"),
                   "--beta", "-1", "--prompt", "w1"])
    assert rc == 2 and "beta" in capsys.readouterr().err
    rc = cli.main(["generate", "--base-model", str(paths / "base"), "--prompt", ""])
    assert rc == 2 and "prompts" in capsys.readouterr().err
