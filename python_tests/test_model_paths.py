"""A model argument that looks like a path but is not a directory fails at once with "no such
directory" (never huggingface_hub's "Repo id must be in the form ..." or a minute of hub retries);
hub ids pass through untouched. Checked for the helper, the engine and `mavis generate`."""

from __future__ import annotations

import os
import time

import pytest

from mavis_ext import cli, tiny
from mavis_ext.model_paths import check_model_source, looks_like_path


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # if anything still reached the hub, fail fast instead of retrying for a minute
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("arg", ["/no/such/model", "./nope", "../nope", "nope/", "runs/hh/iter_1", "a\\b"])
def test_missing_paths_say_no_such_directory(tmp_path, monkeypatch, arg):
    monkeypatch.chdir(tmp_path)
    assert looks_like_path(arg)
    with pytest.raises(FileNotFoundError, match=r"^--base-model: no such directory: "):
        check_model_source(arg, "--base-model")


def test_home_relative_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "base").mkdir(parents=True)
    assert check_model_source("~/models/base", "base_model") == str(tmp_path / "models" / "base")
    with pytest.raises(FileNotFoundError, match="base_model: no such directory: '~/models/nope'"):
        check_model_source("~/models/nope", "base_model")


def test_existing_directories_and_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "runs" / "x").mkdir(parents=True)
    assert check_model_source(str(tmp_path / "m"), "x") == str(tmp_path / "m")  # absolute
    assert check_model_source("m", "x") == "m"  # relative, exists
    assert check_model_source("./m", "x") == "./m"
    assert check_model_source(tmp_path / "m", "x") == str(tmp_path / "m")  # os.PathLike
    for hub_id in ("gpt2", "meta-llama/Llama-2-7b-hf", "org/name"):
        assert not looks_like_path(hub_id)
        assert check_model_source(hub_id, "x") == hub_id  # untouched
    # "runs/model" where ./runs is a local folder: a path, not a hub id
    assert looks_like_path("runs/model")
    with pytest.raises(FileNotFoundError, match="no such directory: 'runs/model'"):
        check_model_source("runs/model", "--value-model")


def test_a_file_instead_of_a_directory(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="base_model: .* is a file, not a model directory"):
        check_model_source(str(f), "base_model")


def test_engine_checks_paths_first(tmp_path):
    from mavis_ext.decoding import MavisGenerator

    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError, match="base_model: no such directory: "):
        MavisGenerator(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="base_model: no such directory: 'nope/'"):
        MavisGenerator("nope/")
    tok = tiny.word_tokenizer(tiny.default_words(8))
    base = tiny.tiny_llama(len(tok), tokenizer=tok)
    with pytest.raises(FileNotFoundError, match="value_models: no such directory: "):
        MavisGenerator(base, str(tmp_path / "vm"), tok)
    (tmp_path / "f").write_text("")
    with pytest.raises(FileNotFoundError, match="value_models: is a file"):
        MavisGenerator(base, [str(tmp_path / "f")], tok)
    assert time.monotonic() - t0 < 30  # "at once": no hub retries


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    tok = tiny.word_tokenizer(tiny.default_words(8))
    return tiny.save_local(tiny.tiny_llama(len(tok), tokenizer=tok), tok, str(root / "base"))


@pytest.mark.parametrize("flag", ["--base-model", "--value-model", "--tokenizer"])
@pytest.mark.parametrize("kind", ["absolute", "relative", "file"])
def test_cli_missing_paths_one_line(base_dir, tmp_path, monkeypatch, capsys, flag, kind):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    bad = {"absolute": str(tmp_path / "nope"), "relative": "./nope", "file": "afile"}[kind]
    args = {"--base-model": base_dir}
    args[flag] = bad
    argv = ["generate", "--prompt", "w1", "--no-progress"] + [x for k, v in args.items() for x in (k, v)]
    t0 = time.monotonic()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 30
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mavis generate: error: {flag}"), err
    assert ("is a file" if kind == "file" else "no such directory") in lines[0] and bad in lines[0]
