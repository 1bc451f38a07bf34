"""Streaming capture (issue 24): the attention features and rollout folded in layer by layer as the forward pass
produces each layer's maps, the maps held only below core.analysis.pipeline.HOLD_ATTENTIONS_BYTES and a layer's
maps recomputed on demand past it. Everything a page, figure, CSV or the cache shows must equal the non-streaming
path: tests/attention_reference.py (the whole-array computation as it was) and a run that holds its maps."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from attention_reference import attention_rollout_reference, head_features_reference
from tiny_models import FAMILIES, tiny_family_loaded

from core import AnalysisSettings, analyze
from core.analysis import pipeline
from core.analysis import result as result_module
from core.analysis.result import AnalysisResult, results_equal
from core.export.bundle import foundation_files
from core.figures.attention import attention_bundle_files
from core.infra.errors import InputError
from core.infra.formats import NpyMember, member_bytes, write_files
from core.infra.options import ExportOptions
from core.model.capture import capture, layer_attentions
from core.run.cache import ResultCache
from core.steps.attention import AttentionFolder, causal_flag
from core.steps.attribution import RolloutFolder

TEXT = "The quick brown fox jumps over the lazy dog. The cat sat on the mat and watched the birds."
#: default settings less the gradient methods (the same in both runs; they never read the maps): light tests
SETTINGS = AnalysisSettings(compute_gradients=False)
#: what may differ between two runs of the same analysis (timestamps and clocks)
VOLATILE = ("cache_hit", "timings", "duration_s", "created_at", "attentions")


@pytest.fixture(scope="module", params=("gpt2", "bert", "llama", *FAMILIES))
def pair(request):
    """(loaded, held result, streamed result) of one tiny family: the same analysis with and without its maps."""
    loaded = tiny_family_loaded(request.param)
    held = analyze(loaded, TEXT, settings=SETTINGS)
    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline, "HOLD_ATTENTIONS_BYTES", 0)
    try:
        streamed = analyze(loaded, TEXT, settings=SETTINGS)
    finally:
        mp.undo()
    return loaded, held, streamed


def test_streamed_run_equals_the_held_run(pair):
    """Every section, metric and number of the streamed run equals the run that held its maps, bit for bit; the
    streamed result holds no maps ([L, H, 0, 0]) and gives each layer's maps back, equal to the held ones."""
    _, held, streamed = pair
    assert held.maps_held and not streamed.maps_held
    L, H, T = held.n_layers, held.n_heads, held.n_tokens
    assert streamed.attentions.shape == (L, H, 0, 0) and (streamed.n_layers, streamed.n_heads) == (L, H)
    assert results_equal(held, streamed, ignore=VOLATILE)
    for layer in range(L):
        maps = streamed.attention_maps(layer)
        assert maps.shape == (H, T, T) and maps.dtype == held.attentions.dtype
        assert np.array_equal(maps, held.attentions[layer])
    assert np.array_equal(streamed.attention_maps(-1), held.attention_maps(-1))


def test_folded_features_equal_the_whole_array_reference(pair):
    """The section (features, entropies, visible keys) and the rollout equal the pre-streaming computation over
    the whole held array."""
    loaded, held, streamed = pair
    causal = causal_flag(loaded.family)
    feats, names, extras = head_features_reference(held.attentions, held.special_mask, causal)
    for r in (held, streamed):
        assert r.attention is not None and r.attribution is not None
        assert np.array_equal(r.attention.features, feats) and r.attention.feature_names == names
        assert np.array_equal(r.attention.entropy, extras["entropy"])
        assert np.array_equal(r.attention.normalized_entropy, extras["normalized_entropy"], equal_nan=True)
        assert np.array_equal(r.attention.n_visible, extras["n_visible"])
        assert np.array_equal(r.attribution.rollout_matrix, attention_rollout_reference(held.attentions))


def test_bundle_files_are_equal_and_attentions_npy_is_written_layer_by_layer(pair, tmp_path):
    """Every bundle member drawn from the maps or the attention sections (attentions.npy, the attention CSVs, the
    mean and entropy heatmaps, the clusters, the attention GIF) of the streamed run equals the held run's, byte for
    byte (the other writers read sections that test_streamed_run_equals_the_held_run compares); attentions.npy is
    a layer-by-layer member whose bytes are np.save's, and a folder export writes it through open_memmap."""
    loaded, held, streamed = pair
    if loaded.model_id not in ("tiny-gpt2", "tiny-bert", "tiny-llama"):
        pytest.skip("the bundle is compared on one family of each kind (figures take a second each)")
    opts = ExportOptions()
    a = {**foundation_files(held, opts), **attention_bundle_files(held, opts)}
    b = {**foundation_files(streamed, opts), **attention_bundle_files(streamed, opts)}
    assert a.keys() == b.keys() and "animations/attention_layers.gif" in a
    assert "plots/attention_mean_last_layer.png" in a
    assert isinstance(b["attentions.npy"], NpyMember)
    for name in a:
        if name != "manifest.json":  # timings, dates
            assert member_bytes(a[name]) == member_bytes(b[name]), name
    arr = np.load(io.BytesIO(member_bytes(b["attentions.npy"])), allow_pickle=False)
    assert arr.dtype == np.float32 and np.array_equal(arr, held.attentions.astype(np.float32))
    write_files({"attentions.npy": b["attentions.npy"]}, tmp_path / "out")
    assert np.array_equal(np.load(tmp_path / "out" / "attentions.npy"), arr)
    write_files({"attentions.npy": b["attentions.npy"]}, tmp_path / "out.zip")
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        assert np.array_equal(np.load(io.BytesIO(zf.read("attentions.npy"))), arr)


def test_cached_streamed_result_recomputes_its_maps_in_a_new_process(tiny_llama, tmp_path, monkeypatch):
    """A streamed result survives the cache without its maps; read back where no model is attached (a new
    process) a layer's maps raise one clear InputError, and after attach_model (or the cache hit of analyze) they
    equal the maps of a held run."""
    monkeypatch.setattr(pipeline, "HOLD_ATTENTIONS_BYTES", 0)
    cache = ResultCache(tmp_path / "cache")
    first = analyze(tiny_llama, TEXT, settings=SETTINGS, cache=cache)
    held = capture(tiny_llama, first.analysed_text, SETTINGS).attentions
    back = cache.get(first.cache_key, AnalysisResult)
    assert back is not None and not back.maps_held
    assert results_equal(first, back, ignore=VOLATILE)
    monkeypatch.setattr(result_module, "_MAP_SOURCES", {})  # a new process: nothing attached
    monkeypatch.setattr(result_module, "_LAST_MAPS", [])
    with pytest.raises(InputError, match="load"):
        back.attention_maps(0)
    pipeline.attach_model(back, tiny_llama)
    assert np.array_equal(back.attention_maps(1), held[1])
    monkeypatch.setattr(result_module, "_MAP_SOURCES", {})
    monkeypatch.setattr(result_module, "_LAST_MAPS", [])
    hit = analyze(tiny_llama, TEXT, settings=SETTINGS, cache=cache)
    assert hit.cache_hit and np.array_equal(hit.attention_maps(0), held[0])
    cache.close()


def test_attach_model_refuses_another_model(tiny_llama, tiny_gpt2, monkeypatch):
    monkeypatch.setattr(pipeline, "HOLD_ATTENTIONS_BYTES", 0)
    r = analyze(tiny_llama, TEXT, settings=SETTINGS)
    with pytest.raises(InputError, match="the model this result was made with"):
        pipeline.attach_model(r, tiny_gpt2)


def test_capture_hands_over_each_layer_and_holds_nothing_past_the_bound(tiny_gpt2):
    """The sink sees each layer once, in order, with the values the held capture keeps; past hold_bytes the
    capture keeps an empty [L, H, 0, 0] array; layer_attentions gives any single layer back."""
    full = capture(tiny_gpt2, TEXT, SETTINGS)
    seen: list[tuple[int, np.ndarray]] = []

    def sink(ids, special):
        assert len(ids) == len(special) == full.attentions.shape[-1]
        return lambda layer, maps: seen.append((layer, maps.copy()))

    part = capture(tiny_gpt2, TEXT, SETTINGS, attention_sink=sink, hold_bytes=0)
    L, H = full.attentions.shape[:2]
    assert part.attentions.shape == (L, H, 0, 0)
    assert [l for l, _ in seen] == list(range(L))
    for layer, maps in seen:
        assert np.array_equal(maps, full.attentions[layer])
        ids, mask = full.input_ids, full.attention_mask
        assert np.array_equal(layer_attentions(tiny_gpt2, ids, mask, layer), full.attentions[layer])
    np.testing.assert_array_equal(part.hidden_states, full.hidden_states)


def test_folders_equal_the_reference_on_float16_maps_with_special_tokens():
    """Random float16 maps with structural zeros (a padded key), special tokens and no causal flag: the folders
    equal the reference, and refuse layers out of order."""
    rng = np.random.default_rng(0)
    L, H, T = 3, 2, 7
    logits = rng.normal(size=(L, H, T, T))
    logits[..., 5] = -np.inf  # key 5 never seen: read from the structural zeros
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att = (att / att.sum(-1, keepdims=True)).astype(np.float16)
    special = [True, False, False, False, False, False, True]
    folder, rollout = AttentionFolder(T, special, None), RolloutFolder()
    for layer in range(L):
        folder.add(layer, att[layer])
        rollout.add(layer, att[layer])
    feats, names, extras = folder.result()
    ref, ref_names, ref_extras = head_features_reference(att, special, None)
    assert np.array_equal(feats, ref) and names == ref_names
    assert np.array_equal(extras["n_visible"], ref_extras["n_visible"]) and extras["n_visible"][0] == T - 1
    assert np.array_equal(rollout.result(), attention_rollout_reference(att))
    with pytest.raises(ValueError, match="out of order"):
        folder.add(L + 1, att[0])
    with pytest.raises(ValueError, match="out of order"):
        rollout.add(0, att[0])
