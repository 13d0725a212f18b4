"""Without the compiled extension the package still imports and the ops run on the pure-PyTorch
reference: forced with MAVIS_USE_REFERENCE=1 (silently), or with mavis_ext._C missing (exactly one
RuntimeWarning). Each case runs in a fresh interpreter, because the choice is made at import."""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_BODY = textwrap.dedent(
    """
    import warnings
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import mavis_ext
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning) and "mavis_ext" in str(w.message)]
    import torch
    assert not mavis_ext.HAS_C
    from mavis_ext import _backend, reference
    assert _backend.op("tilted_sample") is reference.tilted_sample
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 50, generator=g)
    v = torch.randn(4, 2, 50, generator=g)
    w = torch.tensor([0.5, 0.5])
    ids, lt, lb = mavis_ext.tilted_sample(x, v, w, top_k=5, seed=3, return_logprobs=True)
    assert ids.shape == (4,) and bool(((ids >= 0) & (ids < 50)).all())
    cl, ci, lse = mavis_ext.topk_candidates(x, 5)
    assert torch.equal(ci, x.topk(5).indices)
    h = torch.randn(4, 8, generator=g)
    W = torch.randn(2, 50, 8, generator=g)
    assert mavis_ext.guided_sample(x, h, W, None, w, beta=1.0, top_k=5, seed=1).shape == (4,)
    assert mavis_ext.value_heads(h, W, candidate_ids=ci).shape == (4, 2, 5)
    assert mavis_ext.tilt_logits(x, v, w, beta=1.0).shape == (4, 50)
    try:
        mavis_ext.topk_candidates(x, 0)
    except ValueError as e:
        assert "k" in str(e)
    else:
        raise AssertionError("bad k accepted")
    print("RUNTIME_WARNINGS", len(runtime))
    """
)

# Hides the compiled module: a None entry in sys.modules makes `from . import _C` raise ImportError.
_HIDE_C = "import sys; sys.modules['mavis_ext._C'] = None\n"


def _run(code: str, env_extra: dict) -> str:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MAVIS_USE_REFERENCE", None)
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_forced_reference_runs_without_warning():
    out = _run(_BODY, {"MAVIS_USE_REFERENCE": "1"})
    assert "RUNTIME_WARNINGS 0" in out


def test_missing_extension_warns_once():
    out = _run(_HIDE_C + _BODY, {})
    assert "RUNTIME_WARNINGS 1" in out
