"""The public wrappers trace under torch.compile(fullgraph=True) (fake kernels, no graph breaks) and
give the same outputs as eager."""

import pytest
import torch

import mavis_ext
from conftest import gen, randn

pytestmark = pytest.mark.skipif(not mavis_ext.HAS_C, reason="compiled extension not built")


def _step(logits, values, w, hidden, W, b, seeds):
    cl, ci, lse = mavis_ext.topk_candidates(logits, 8, temperature=0.9)
    comb = mavis_ext.value_heads(hidden, W, b, candidate_ids=ci, weights=w)
    tilted = mavis_ext.tilt_logits(logits, values, w, beta=1.5)
    a = mavis_ext.tilted_sample(logits, values, w, beta=1.5, top_k=20, top_p=0.9, seed=5, return_logprobs=True)
    g = mavis_ext.guided_sample(logits, hidden, W, b, w, beta=1.5, top_k=8, seed=seeds, return_logprobs=True)
    return cl, ci, lse, comb, tilted, *a, *g


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_matches_eager(device, backend):
    torch._dynamo.reset()
    B, V, m, d = 4, 300, 2, 16
    args = (
        randn((B, V), seed=1, scale=2.0, device=device),
        randn((B, m, V), seed=2, device=device),
        torch.rand(B, m, generator=gen(3)).to(device),
        randn((B, d), seed=4, device=device),
        randn((m, V, d), seed=5, device=device),
        randn((m, V), seed=6, device=device),
        torch.arange(B, device=device),
    )
    eager = _step(*args)
    compiled = torch.compile(_step, fullgraph=True, backend=backend)(*args)
    assert len(eager) == len(compiled)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=0, atol=0)
