"""N processes (gloo) compute the same regression update as one process.

The case that used to break it: a trainable parameter that no loss touches (a causal LM's unused
LM head was one). With one process its gradient stays ``None`` and optimizers skip it; the gradient
all-reduce used to turn it into zeros on N processes, so weight decay shrank it there only. Value
models no longer carry the LM head at all, and the all-reduce keeps ``None`` where every rank has
``None``; this test adds such a parameter on purpose and uses a large weight decay so the old
behaviour would be far outside the tolerance.
"""

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r'''
import sys
import numpy as np
import torch
from safetensors.torch import save_file
from mavis_ext.tiny import default_words, tiny_llama, word_tokenizer
from mavis_ext.values import ValueModel
from mavis_ext.training.dataset import PathExamples
from mavis_ext.training.distributed import init_distributed
from mavis_ext.training.regression import train_regression

out, state = sys.argv[1], sys.argv[2]
info = init_distributed("cpu")
tok = word_tokenizer(default_words(8))
table = np.random.default_rng(123).normal(size=(len(tok), 2)).astype(np.float32)
g = np.random.default_rng(0)
train = PathExamples(2)
for _ in range(40):
    ids = g.integers(4, len(tok), size=g.integers(3, 7))
    pos = np.arange(1, ids.size)
    train.ids.append(ids); train.pos.append(pos); train.tgt.append(table[ids[pos]])
    train.mask.append(np.ones((pos.size, 2), bool)); train.tree_key.append(0)
result = {}
for opt in ("adamw", "adafactor"):
    torch.manual_seed(0)
    vm = ValueModel.from_trunk(tiny_llama(len(tok), tokenizer=tok, seed=2), ["a", "b"], "prefix", tokenizer=tok)
    vm.spare = torch.nn.Parameter(torch.ones(5))      # trainable, never in the loss
    train_regression(vm, train, PathExamples(2), info=info, state_dir=f"{state}/{opt}", optimizer=opt, lr=1e-2,
                     weight_decay=0.2, epochs=2, batch_size=5, grad_accum=2, warmup=0, max_grad_norm=1.0,
                     eval_every=100, save_every=100, log_every=100, pad_id=0, seed_key=(0,), bf16=False,
                     progress=False)
    for n, p in vm.named_parameters():
        result[f"{opt}/{n}"] = p.detach().clone().contiguous()
if info.is_main:
    save_file(result, out)
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, world):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / f"params_{world}.safetensors"
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WORLD_SIZE=str(world),
                   RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(script), str(out), str(tmp_path / f"state_{world}")],
                                      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        errs.append((p.returncode, err[-3000:]))
    assert all(rc == 0 for rc, _ in errs), errs
    return load_file(out)


@pytest.fixture(scope="module")
def updates(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    return _run(d, 1), _run(d, 2)


def test_two_processes_take_the_same_steps_as_one(updates):
    one, two = updates
    assert sorted(one) == sorted(two)
    assert not any("lm_head" in k for k in one)             # value models carry no LM head
    for k in one:
        if k.endswith("/spare"):
            # untouched by the loss: no decay, no moment update, with one process or two
            assert torch.equal(one[k], torch.ones(5)) and torch.equal(two[k], torch.ones(5)), (k, one[k], two[k])
        else:
            # the same update up to float summation order (the batch is split differently)
            torch.testing.assert_close(two[k], one[k], atol=2e-5, rtol=1e-4, msg=k)


def test_training_moved_the_weights(updates, tmp_path):
    """Guards the comparison above against a vacuous pass (nothing trained)."""
    one, _ = updates
    from mavis_ext.tiny import default_words, tiny_llama, word_tokenizer

    tok = word_tokenizer(default_words(8))
    init = tiny_llama(len(tok), tokenizer=tok, seed=2).model.state_dict()
    moved = [k for k, v in init.items() if not torch.allclose(one[f"adamw/trunk.{k}"], v, atol=1e-4)]
    assert len(moved) > len(init) // 2
