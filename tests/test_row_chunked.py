"""Row-chunked eager attention (issue 24): past the hold bound, a model whose eager attention is the plain
softmax(q kᵀ · scaling + mask) v (Llama, Qwen2, Mistral, Phi-3) runs core.model.capture.row_chunked_attention, one
block of query rows at a time, so that one layer's scores and softmax are never whole. Its maps, hidden states,
features and CSVs must equal the model's own eager attention bit for bit (blocks of whole CPU tiles,
`row_blocks`); every other family, and every short text, keeps the model's own eager path."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import tiny_family_loaded

from core import AnalysisSettings, analyze
from core.analysis import pipeline
from core.export.bundle import foundation_files
from core.figures.attention import attention_bundle_files
from core.infra.formats import member_bytes
from core.infra.options import ExportOptions
from core.model import capture as capture_module
from core.model.arch import model_parts
from core.model.capture import ROW_CHUNKED, capture, layer_attentions, row_blocks

TEXT = "The quick brown fox jumps over the lazy dog. The cat sat on the mat and watched the birds."
SETTINGS = AnalysisSettings(compute_gradients=False)
PLAIN = ("llama", "qwen2", "mistral", "phi3")


def _rows_per_block(monkeypatch: pytest.MonkeyPatch, loaded, rows: int) -> int:
    """Blocks of `rows` query rows for TEXT (CHUNK_BYTES = the bytes of one float32 block [1, H, rows, T]); T."""
    T = capture(loaded, TEXT, SETTINGS).attentions.shape[-1]
    monkeypatch.setattr(capture_module, "CHUNK_BYTES", rows * loaded.n_heads * T * 4)
    assert len(row_blocks(T, rows)) >= 2
    return T


def test_row_blocks_are_whole_tiles_with_the_remainder_in_the_last_block():
    assert row_blocks(20, 8) == [(0, 8), (8, 20)]
    assert row_blocks(24, 8) == [(0, 8), (8, 16), (16, 24)]
    assert row_blocks(5, 1) == [(0, 5)]
    assert row_blocks(300, 130) == [(0, 128), (128, 300)]
    for n, rows in ((1, 8), (17, 3), (2048, 128), (2049, 128)):
        blocks = row_blocks(n, rows)
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assert all(b - a >= min(n, 8) and (b - a) % 8 == 0 for a, b in blocks[:-1])


def _streamed(loaded, **kwargs):
    """(capture, [(layer, maps, attention implementation during the pass)]) of a capture with a recording sink."""
    seen: list[tuple[int, np.ndarray, str]] = []

    def sink(_ids, _special):
        return lambda layer, maps: seen.append((layer, maps.copy(), loaded.model.config._attn_implementation))

    return capture(loaded, TEXT, SETTINGS, attention_sink=sink, **kwargs), seen


@pytest.mark.parametrize("kind", (*PLAIN, "gpt2", "gemma2"))
def test_row_chunked_maps_equal_the_eager_maps_and_only_plain_families_use_it(kind, monkeypatch):
    """Blocks of 8 rows: each layer's maps, the hidden states and a recomputed layer equal the model's own eager
    pass bit for bit; only the plain families switch (GPT-2's and Gemma-2's soft-capped attention keep their own
    eager path), the implementation is the model's again afterwards, and a held (short) capture never switches."""
    loaded = tiny_family_loaded(kind)
    if kind == "mistral":  # a window shorter than the text: the mask the function is handed carries it
        loaded.model.config.sliding_window = 5
    _rows_per_block(monkeypatch, loaded, 8)
    plain = model_parts(loaded.model).row_chunked
    assert plain == (kind in PLAIN)
    held, seen_held = _streamed(loaded)
    assert {impl for _, _, impl in seen_held} == {"eager"}
    part, seen = _streamed(loaded, hold_bytes=0)
    assert loaded.model.config._attn_implementation == "eager"
    assert {impl for _, _, impl in seen} == {ROW_CHUNKED if plain else "eager"}
    L, H, T, _ = held.attentions.shape
    assert [layer for layer, _, _ in seen] == list(range(L))
    for layer, maps, _ in seen:
        assert maps.shape == (H, T, T) and np.array_equal(maps, held.attentions[layer])
        again = layer_attentions(loaded, part.input_ids, part.attention_mask, layer)
        assert np.array_equal(again, maps)
    if kind == "mistral":
        assert np.all(held.attentions[:, :, 10, :5] == 0) and not np.any(held.attentions[:, :, 10, 6:11] == 0)
    assert np.array_equal(part.hidden_states, held.hidden_states)


@pytest.mark.parametrize("kind", ("gpt2", "llama"))
def test_short_texts_and_the_views_pass_below_the_bound_keep_the_eager_path(kind):
    """Below chunk_bytes (the views' pass of a short text: hold_bytes=0, chunk_bytes=the hold bound) no switch."""
    loaded = tiny_family_loaded(kind)
    _, seen = _streamed(loaded, hold_bytes=0, chunk_bytes=pipeline.HOLD_ATTENTIONS_BYTES)
    assert seen and {impl for _, _, impl in seen} == {"eager"}


def test_row_chunked_analysis_has_the_held_features_and_csvs(monkeypatch):
    """A streamed TinyLlama-family analysis in blocks of 8 rows: the attention section, entropies, rollout and
    every map equal the held run's bit for bit, and the attention and foundation CSVs are the same bytes."""
    loaded = tiny_family_loaded("llama")
    held = analyze(loaded, TEXT, settings=SETTINGS)
    _rows_per_block(monkeypatch, loaded, 8)
    monkeypatch.setattr(pipeline, "HOLD_ATTENTIONS_BYTES", 0)
    streamed = analyze(loaded, TEXT, settings=SETTINGS)
    assert held.maps_held and not streamed.maps_held
    a, b = held.attention, streamed.attention
    assert a is not None and b is not None and held.attribution is not None and streamed.attribution is not None
    assert np.array_equal(b.features, a.features) and np.array_equal(b.entropy, a.entropy)
    assert np.array_equal(b.n_visible, a.n_visible)
    assert np.array_equal(streamed.attribution.rollout_matrix, held.attribution.rollout_matrix)
    for layer in range(held.n_layers):
        assert np.array_equal(streamed.attention_maps(layer), held.attentions[layer])
    opts = ExportOptions()
    fa = {**foundation_files(held, opts), **attention_bundle_files(held, opts)}
    fb = {**foundation_files(streamed, opts), **attention_bundle_files(streamed, opts)}
    csvs = [name for name in fa if name.endswith(".csv")]
    assert any("attention" in name for name in csvs)
    for name in csvs:
        assert member_bytes(fa[name]) == member_bytes(fb[name]), name


def test_attention_function_is_restored_after_an_error():
    """The shared model's attention implementation comes back even when the pass inside raises."""
    from core.model.hooks import attention_function

    loaded = tiny_family_loaded("llama")
    with pytest.raises(RuntimeError, match="inside"):
        with attention_function(loaded.model, ROW_CHUNKED):
            assert loaded.model.config._attn_implementation == ROW_CHUNKED
            raise RuntimeError("inside")
    assert loaded.model.config._attn_implementation == "eager"
    with attention_function(loaded.model, None):
        assert loaded.model.config._attn_implementation == "eager"
