"""`mavis generate`: the rule for --weights, quiet loading with --no-progress, and one-line errors for
corrupted value models."""

from __future__ import annotations

import os
import shutil

import pytest

from mavis_ext import cli, tiny
from mavis_ext.values import ValueModel


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    tok = tiny.word_tokenizer(tiny.default_words(12))
    V = len(tok)
    base = tiny.save_local(tiny.tiny_llama(V, seed=1, tokenizer=tok), tok, str(root / "base"))
    trunk = tiny.save_local(tiny.tiny_llama(V, hidden_size=16, seed=2, tokenizer=tok), tok, str(root / "trunk"))
    ValueModel.from_trunk(trunk, ["help", "harm"], "prefix", init_std=1.0).save_pretrained(str(root / "vm"))
    return root


def _run(argv, capfd):
    rc = cli.main(argv)
    out, err = capfd.readouterr()
    return rc, out, err


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mavis generate: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_weights_required_with_value_models(paths, capfd):
    rc, out, err = _run(["generate", "--base-model", str(paths / "base"), "--value-model", str(paths / "vm"),
                         "--prompt", "w1", "--no-progress"], capfd)
    line = _one_line_error(err)
    assert rc == 2 and "--weights: required with --value-model" in line and "help, harm" in line
    rc, out, err = _run(["generate", "--base-model", str(paths / "base"), "--value-model", str(paths / "vm"),
                         "--weights", "help=x", "--prompt", "w1", "--no-progress"], capfd)
    assert rc == 2 and "--weights: help='x' is not a number" in _one_line_error(err)
    # the same run with weights given works
    rc, out, err = _run(["generate", "--base-model", str(paths / "base"), "--value-model", str(paths / "vm"),
                         "--weights", "0.5,0.5", "--prompt", "w1", "--max-new-tokens", "2", "--top-k", "4", "--no-progress"], capfd)
    assert rc == 0, err


def test_no_progress_silences_the_loading_bars(paths, capfd):
    from transformers.utils import logging as tf_logging

    base = ["generate", "--base-model", str(paths / "base"), "--value-model", str(paths / "vm"), "--weights", "1,0",
            "--prompt", "w1", "--max-new-tokens", "2", "--top-k", "4", "--quiet"]
    assert tf_logging.is_progress_bar_enabled()
    rc, out, err = _run(base, capfd)
    assert rc == 0 and "Loading weights" in err  # the bars this flag is about (the test has power)
    rc, out, err = _run(base + ["--no-progress"], capfd)
    assert rc == 0 and err == "", err
    assert tf_logging.is_progress_bar_enabled()  # restored afterwards


@pytest.mark.parametrize("victim", ["heads.safetensors", "trunk/model.safetensors", "trunk/config.json",
                                    "mavis_value_config.json"])
def test_corrupted_value_model_one_line_naming_it(paths, tmp_path, capfd, victim):
    vm = tmp_path / "vm"
    shutil.copytree(paths / "vm", vm)
    f = vm / victim
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or an interrupted copy
    rc, out, err = _run(["generate", "--base-model", str(paths / "base"), "--value-model", str(vm),
                         "--weights", "0.5,0.5", "--prompt", "w1", "--no-progress"], capfd)
    line = _one_line_error(err)
    assert rc == 2 and "--value-model" in line and str(f) in line, line  # names the damaged file
