"""mavis_ext.safetensors_io: standard safetensors files, byte-identical for identical inputs (also
across processes, where the safetensors library orders metadata keys by hash), and every damaged
byte detected with an error naming the file."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mavis_ext.integrity import CorruptFileError
from mavis_ext.safetensors_io import load_checked, save_deterministic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f64": torch.randn(4, generator=g, dtype=torch.float64),
        "bf16": torch.randn(2, 3, generator=g).to(torch.bfloat16),
        "f16": torch.randn(7, generator=g).to(torch.float16),
        "i64": torch.randint(-2**40, 2**40, (6,), generator=g),
        "i32": torch.randint(-1000, 1000, (2, 2), generator=g, dtype=torch.int32),
        "u8": torch.randint(0, 255, (9,), generator=g, dtype=torch.uint8),
        "bool": torch.rand(5, generator=g) > 0.5,
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5),
        "strided": torch.randn(4, 6, generator=g)[:, ::2],
    }


META = {"format": "x", "prompts": '["p\\u00e9", "q"]', "extra": "{}", "zz": "1"}


def test_round_trip_and_standard_reader(tmp_path):
    t = _tensors(0)
    p = str(tmp_path / "a.safetensors")
    save_deterministic(t, p, META)
    got, meta = load_checked(p, "fix it")
    assert meta == META
    std = load_file(p)                               # the safetensors library reads it too
    for k, v in t.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
        assert torch.equal(std[k], v), k


WRITER = r'''
import sys, torch
sys.path.insert(0, sys.argv[2])
from mavis_ext.safetensors_io import save_deterministic
g = torch.Generator().manual_seed(1)
t = {f"t{i}": torch.randn(3, generator=g) for i in range(5)}
save_deterministic(t, sys.argv[1], {f"key{i}": str(i) for i in range(8)})
'''


def test_identical_bytes_across_processes(tmp_path):
    digests = set()
    for i in range(3):
        p = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", WRITER, str(p), REPO], check=True, env=dict(os.environ, PYTHONHASHSEED=str(i)))
        digests.add(hashlib.sha256(p.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_every_damaged_byte_is_detected(tmp_path):
    t = {"w": torch.arange(6, dtype=torch.float32), "b": torch.tensor([1, 2], dtype=torch.int64)}
    p = tmp_path / "s.safetensors"
    save_deterministic(t, str(p), {"format": "f", "objectives": '["a"]'})
    good = p.read_bytes()
    for pos in range(len(good)):
        for mask in (0x01, 0x80):
            bad = bytearray(good)
            bad[pos] ^= mask
            p.write_bytes(bytes(bad))
            with pytest.raises(CorruptFileError) as e:
                load_checked(str(p), "rebuild it", require_checksum=True)
            assert str(p) in str(e.value) and "\n" not in str(e.value), (pos, mask)
    for n in range(len(good)):
        p.write_bytes(good[:n])
        with pytest.raises(CorruptFileError, match="s.safetensors"):
            load_checked(str(p), "rebuild it", require_checksum=True)
    p.write_bytes(good + b"\x00")
    with pytest.raises(CorruptFileError, match="trailing bytes"):
        load_checked(str(p), "rebuild it")


def test_files_from_other_writers_are_read(tmp_path):
    from safetensors.torch import save_file

    t = _tensors(2)
    t["strided"] = t["strided"].contiguous()
    p = str(tmp_path / "lib.safetensors")
    save_file(t, p, metadata={"a": "b"})
    got, meta = load_checked(p, "x")
    assert meta == {"a": "b"} and all(torch.equal(got[k], v) for k, v in t.items())


def test_missing_file(tmp_path):
    with pytest.raises(CorruptFileError, match="file is missing; do this"):
        load_checked(str(tmp_path / "none.safetensors"), "do this")
