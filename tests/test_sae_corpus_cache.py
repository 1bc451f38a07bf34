"""The result cache of SAE corpus runs (core.studies.sae_corpus.sae_corpus_cached): a repeat is a hit that runs no
model and equals the computed result; changed SAE weights, texts or settings miss."""

from __future__ import annotations

import numpy as np
from test_app_pages import ForwardCounter
from test_sae_app import _sae

from core.run.cache import ResultCache
from core.studies.sae_corpus import sae_corpus_cached

TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "Dogs bark."]


def test_hit_runs_no_model_and_changed_weights_miss(tiny_gpt2, tmp_path):
    folder = _sae(tmp_path / "s", hook="blocks.0.hook_resid_post", d_sae=12)
    cache = ResultCache(tmp_path / "cache")
    try:
        first = sae_corpus_cached(tiny_gpt2, TEXTS, [folder], cache=cache, top_n=2)
        with ForwardCounter() as fc:
            again = sae_corpus_cached(tiny_gpt2, TEXTS, [folder], cache=cache, top_n=2)
        assert not first.cache_hit and again.cache_hit and fc.calls == 0 and again.cache_key == first.cache_key
        a, b = first.saes[0], again.saes[0]
        np.testing.assert_array_equal(a.fire_count, b.fire_count)
        np.testing.assert_array_equal(a.ex_activation, b.ex_activation)
        np.testing.assert_array_equal(a.ex_marks, b.ex_marks)
        assert a.ex_context == b.ex_context and a.hook_name == b.hook_name
        assert not sae_corpus_cached(tiny_gpt2, TEXTS[:2], [folder], cache=cache, top_n=2).cache_hit
        assert not sae_corpus_cached(tiny_gpt2, TEXTS, [folder], cache=cache, top_n=3).cache_hit
        assert not sae_corpus_cached(tiny_gpt2, TEXTS, [folder], cache=cache, top_n=2, include_special=True).cache_hit
        _sae(tmp_path / "s", hook="blocks.0.hook_resid_post", d_sae=12, seed=1)  # new weights, same folder
        moved = sae_corpus_cached(tiny_gpt2, TEXTS, [folder], cache=cache, top_n=2)
        assert not moved.cache_hit and moved.cache_key != first.cache_key
    finally:
        cache.close()
