"""The in-place commit of the chosen candidate across transformers' cache layouts, and explicit
errors/warnings instead of a silent slow path.

transformers 4.45 - 4.53 keep a ``DynamicCache``'s tensors in ``key_cache`` / ``value_cache`` lists
(and count ``_seen_tokens``); 4.54 and later keep per-layer ``DynamicLayer`` objects. The engine
must keep the chosen candidate in place with both (these tests build the old layout by hand, since
one environment holds one transformers version; the README lists the versions the decoding tests
were run against).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from mavis_ext import _value_scoring, tiny
from mavis_ext._value_scoring import TrunkScorer, check_cache_support, commit_candidate
from mavis_ext.decoding import MavisGenerator
from mavis_ext.values import ValueModel


class DynamicCache:
    """The tensor layout of transformers 4.45 - 4.53's ``DynamicCache`` (the class name is what the
    engine checks, as it does for the real class)."""

    def __init__(self, keys, values, seen):
        self.key_cache, self.value_cache, self._seen_tokens = keys, values, seen


def _layers(B, H, T, D, n, g):
    return [torch.randn(B, H, T, D, generator=g) for _ in range(n)]


def test_commit_on_the_legacy_list_layout():
    g = torch.Generator().manual_seed(0)
    B, H, L, K, D = 3, 2, 5, 4, 3
    keys, values = _layers(B, H, L + K, D, 2, g), _layers(B, H, L + K, D, 2, g)
    want_k = [k.clone() for k in keys]
    want_v = [v.clone() for v in values]
    cache = DynamicCache(keys, values, L + K)
    col = torch.tensor([2, 0, 3])
    assert commit_candidate(cache, L, K, col)
    assert cache._seen_tokens == L + 1
    for got, want in ((cache.key_cache, want_k), (cache.value_cache, want_v)):
        for t, w in zip(got, want):
            assert t.shape == (B, H, L + 1, D)
            torch.testing.assert_close(t[:, :, :L], w[:, :, :L], rtol=0, atol=0)
            for b in range(B):
                torch.testing.assert_close(t[b, :, L], w[b, :, L + int(col[b])], rtol=0, atol=0)


def test_commit_refuses_other_caches():
    class OffloadedCache(DynamicCache):
        pass

    g = torch.Generator().manual_seed(1)
    other = OffloadedCache(_layers(1, 1, 3, 2, 1, g), _layers(1, 1, 3, 2, 1, g), 3)
    assert not commit_candidate(other, 1, 2, torch.tensor([0]))
    assert other.key_cache[0].shape[-2] == 3  # untouched


@pytest.fixture(scope="module")
def setup():
    tok = tiny.word_tokenizer(tiny.default_words(40))
    base = tiny.tiny_llama(len(tok), seed=1, tokenizer=tok)
    vm = ValueModel.from_trunk(tiny.tiny_llama(len(tok), hidden_size=16, seed=2), ["a"], "prefix", init_std=1.0)
    return tok, base, vm


def test_engine_commits_without_warning(setup):
    tok, base, vm = setup
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MavisGenerator(base, vm, tok).generate(["w1 w2", "w3"], weights=[1.0], beta=2.0, top_k=5,
                                               max_new_tokens=6, seed=0)


def test_fallback_is_correct_and_not_silent(setup, monkeypatch):
    """A cache the commit cannot handle: same tokens, one RuntimeWarning per scorer."""
    tok, base, vm = setup
    kw = dict(weights=[1.0], beta=2.0, top_k=5, max_new_tokens=8, seed=4, stop_at_eos=False)
    want = MavisGenerator(base, vm, tok).generate(["w1 w2", "w3"], **kw)
    monkeypatch.setattr(_value_scoring, "commit_candidate", lambda *a, **k: False)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = MavisGenerator(base, vm, tok).generate(["w1 w2", "w3"], **kw)
    assert torch.equal(got.sequences, want.sequences)
    slow = [w for w in rec if "cannot keep the chosen candidate in place" in str(w.message)]
    assert len(slow) == 1 and slow[0].category is RuntimeWarning


def test_model_without_cache_objects_is_refused(setup, monkeypatch):
    tok, base, vm = setup
    monkeypatch.setattr(type(vm.trunk), "_supports_cache_class", False, raising=False)
    with pytest.raises(ValueError, match=r"value_models: LlamaModel does not take a KV-cache object .* upgrade"):
        MavisGenerator(base, vm, tok)
    with pytest.raises(ValueError, match="value_models: LlamaModel does not take a KV-cache object"):
        TrunkScorer(vm)
    monkeypatch.setattr(type(base), "_supports_cache_class", False, raising=False)
    with pytest.raises(ValueError, match="base_model: LlamaForCausalLM does not take a KV-cache object"):
        check_cache_support(base, "base_model")
