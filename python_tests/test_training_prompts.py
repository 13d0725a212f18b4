"""Prompt loading: text, JSONL, iterables, and clear errors."""

import pytest

from mavis_ext.training.prompts import load_prompts


def test_text_jsonl_and_iterables(tmp_path):
    t = tmp_path / "p.txt"
    t.write_text("first prompt\n\n  second one \r\nthird\n")
    assert load_prompts(str(t)) == ["first prompt", "  second one ", "third"]
    j = tmp_path / "p.jsonl"
    j.write_text('{"prompt": "a\\nb"}\n\n"bare"\n{"prompt": "c", "x": 1}\n')
    assert load_prompts(j) == ["a\nb", "bare", "c"]
    assert load_prompts(p for p in ["x", "y"]) == ["x", "y"]


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_prompts(str(tmp_path / "missing.txt"))
    j = tmp_path / "bad.jsonl"
    j.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_prompts(str(j))
    j.write_text('{"text": "no prompt key"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected an object with a 'prompt' field"):
        load_prompts(str(j))
    j.write_text('{"prompt": 3}\n')
    with pytest.raises(ValueError, match="must be a string"):
        load_prompts(str(j))
    e = tmp_path / "empty.txt"
    e.write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(str(e))
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        load_prompts(["a", 3])
    with pytest.raises(TypeError):
        load_prompts(5)
    with pytest.raises(ValueError, match="not a file"):
        load_prompts(str(tmp_path))
    b = tmp_path / "bin.txt"
    b.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_prompts(str(b))
