"""mark_invalid=True on CUDA equals the CPU kernel: a row with bad data (NaN or +inf logit, no finite
logit, non-finite tilted score from its values or head outputs) gets id -1 and NaN log-probs
(topk_candidates: ids -1, NaN logits, NaN lse) on both backends, on every code path, and the other
rows are the ones a batch without the bad rows gives. Skipped without a GPU.
"""

import pytest
import torch

import mavis_ext
from conftest import gen, randn

CUDA = torch.cuda.is_available() and mavis_ext.has_cuda_kernels()
pytestmark = pytest.mark.skipif(not CUDA, reason="needs a GPU and the CUDA kernels")
ops = torch.ops.mavis

B, V, M, D = 8, 2500, 2, 24
BAD = [1, 2, 4, 6]
GOOD = [0, 3, 5, 7]


def _batch():
    logits = randn((B, V), seed=1, scale=2.5)
    values = randn((B, M, V), seed=2)
    hidden = randn((B, D), seed=3)
    W = randn((M, V, D), seed=4, scale=0.2)
    logits[1, 17] = float("nan")  # NaN logit
    logits[2, 3] = float("inf")  # +inf logit
    logits[4] = float("-inf")  # no finite logit
    values[6, 0] = float("nan")  # row 6: non-finite tilted scores everywhere
    hidden[6] = float("nan")  # ... and non-finite head outputs (guided_sample)
    w = (torch.rand(B, M, generator=gen(5)) + 0.1)
    return dict(logits=logits, values=values, hidden=hidden, W=W, w=w, seed=torch.arange(B) + 40,
                offset=torch.zeros(B, dtype=torch.int64))


def _on(x, dev):
    return {k: v.to(dev) for k, v in x.items()}


def _check(cpu, gpu, id_index=0):
    for c, g in zip(cpu, gpu):
        g = g.cpu()
        if c.dtype.is_floating_point:
            assert torch.equal(torch.isnan(c), torch.isnan(g))
            torch.testing.assert_close(g[GOOD], c[GOOD], rtol=1e-4, atol=1e-4)
        else:
            assert torch.equal(g, c)
    ids = cpu[id_index]
    assert (ids[BAD] == -1).all() and (ids[GOOD] >= 0).all()


TILTED = [  # (top_k, top_p, topk_on_tilted): fused full / top-k base / top-k tilted / both slow paths
    (0, 1.0, False), (40, 0.9, False), (40, 1.0, True), (300, 1.0, False), (0, 0.9, False),
]


@pytest.mark.parametrize("top_k,top_p,on_tilted", TILTED)
def test_tilted_sample_marks_like_cpu(top_k, top_p, on_tilted):
    x = _batch()
    run = lambda y: ops.tilted_sample(y["logits"], y["values"], y["w"], 1.5, 0.9, top_k, top_p, on_tilted, None,
                                      y["seed"], y["offset"], True)
    cpu, gpu = run(x), run(_on(x, "cuda"))
    _check(cpu, gpu)
    # good rows as in a batch of good rows only (per-row seeds: a row's draw is batch-invariant)
    clean = {k: (v if k == "W" else v[GOOD]) for k, v in _on(x, "cuda").items()}
    ref = run(clean)
    assert torch.equal(gpu[0][GOOD], ref[0])


@pytest.mark.parametrize("top_k", [8, 300])
def test_guided_sample_marks_like_cpu(top_k):
    x = _batch()
    run = lambda y: ops.guided_sample(y["logits"], y["hidden"], y["W"], None, y["w"], 1.5, top_k, 0.9, 0.9,
                                      y["seed"], y["offset"], True)
    _check(run(x), run(_on(x, "cuda")))


@pytest.mark.parametrize("k", [16, 300])
def test_topk_candidates_marks_like_cpu(k):
    x = _batch()
    cpu = ops.topk_candidates(x["logits"], k, 0.9, True)
    gpu = ops.topk_candidates(x["logits"].cuda(), k, 0.9, True)
    bad_logit_rows = [1, 2, 4]  # row 6's logits are fine: only its values are bad
    for c, g in zip(cpu, gpu):
        g = g.cpu()
        if c.dtype.is_floating_point:
            assert torch.equal(torch.isnan(c), torch.isnan(g))
            assert torch.isnan(g[bad_logit_rows]).all()
        else:
            assert torch.equal(g, c)
            assert (g[bad_logit_rows] == -1).all()
    torch.testing.assert_close(gpu[0].cpu()[[0, 3, 5, 6, 7]], cpu[0][[0, 3, 5, 6, 7]], rtol=1e-6, atol=0)


def test_default_still_raises_on_cuda():
    x = _on(_batch(), "cuda")
    with pytest.raises(RuntimeError, match="logits: contains NaN"):
        ops.tilted_sample(x["logits"], x["values"], x["w"], 1.5, 0.9, 40, 1.0, False, None, x["seed"], x["offset"])
