"""Logit lens on tiny random models: the exact last-layer invariant, independent per-layer decoding, chunking,
positions, encoders, round trip, bundle files and figures."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.analysis.pipeline import analyze
from core.analysis.result import AnalysisResult, results_equal
from core.export.bundle import bundle_files
from core.figures.plotting import token_label as label
from core.figures.predictions import (
    LOGIT_LENS_CSV_HEADER,
    logit_lens_heatmap_png,
    logit_lens_layers_png,
    predictions_png,
)
from core.steps.logit_lens import LensSection, compute_logit_lens

FAST = {"compute_gradients": False}
TEXTS = {
    "tiny_gpt2": "The cat sat on the mat.",
    "tiny_llama": "The cat sat on the mat.",
    "tiny_bert": "The cat [MASK] on the mat.",
}
PNG = b"\x89PNG\r\n\x1a\n"


def run(loaded, text, **kw):
    return analyze(loaded, text, **FAST, **kw)


def own_logits(loaded, token_ids) -> torch.Tensor:
    """The model's logits [T, V] from a separate plain forward pass."""
    with torch.inference_mode():
        return loaded.model(input_ids=torch.tensor([token_ids])).logits[0].float()


def decode_independently(loaded, h: torch.Tensor) -> torch.Tensor:
    """Layer read-out written out by hand from the weights (functional ops), h [N, D] -> logits [N, V]."""
    m = loaded.model
    if loaded.architecture == "GPT2LMHeadModel":
        ln = m.transformer.ln_f
        x = F.layer_norm(h, (h.shape[-1],), ln.weight, ln.bias, ln.eps)
        return x @ m.transformer.wte.weight.T  # GPT-2 ties the unembedding to the input embedding
    if loaded.architecture == "LlamaForCausalLM":
        norm = m.model.norm
        x = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight
        return x @ m.lm_head.weight.T
    if loaded.architecture == "BertForMaskedLM":
        t = m.cls.predictions.transform
        x = F.gelu(h @ t.dense.weight.T + t.dense.bias)
        x = F.layer_norm(x, (x.shape[-1],), t.LayerNorm.weight, t.LayerNorm.bias, t.LayerNorm.eps)
        dec = m.cls.predictions.decoder
        return x @ dec.weight.T + dec.bias
    raise AssertionError(loaded.architecture)


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama", "tiny_bert"])
def test_last_layer_reproduces_the_models_own_logits(name, request):
    loaded = request.getfixturevalue(name)
    r = run(loaded, TEXTS[name])
    lens = r.logit_lens
    assert isinstance(lens, LensSection)
    z = own_logits(loaded, r.token_ids)
    # the lens applies norm + head to the stored last hidden state (before the final norm): exact
    assert lens.last_layer_max_abs_diff <= 1e-5
    from core.steps.logit_lens import lens_decoder

    decode, _ = lens_decoder(loaded)
    with torch.inference_mode():
        last = decode(torch.from_numpy(r.hidden_states[-1]))
    torch.testing.assert_close(last, z, atol=1e-5, rtol=0)
    p = torch.softmax(z.double(), -1)
    pos = lens.position
    np.testing.assert_allclose(lens.top_probs[-1], torch.topk(p[pos], lens.top_probs.shape[1]).values, atol=1e-6)
    assert lens.final_token_id == int(torch.argmax(z[pos]))
    np.testing.assert_allclose(lens.final_prob[-1], float(p[pos].max()), atol=1e-6)
    np.testing.assert_allclose(lens.grid_probs[-1], p.max(-1).values.numpy(), atol=1e-6)
    assert lens.grid_ids[-1].tolist() == torch.argmax(z, -1).tolist()


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama", "tiny_bert"])
def test_every_layer_matches_an_independent_decoding(name, request):
    loaded = request.getfixturevalue(name)
    r = run(loaded, TEXTS[name], top_k=6)
    lens = r.logit_lens
    L1, T = r.hidden_states.shape[:2]
    assert lens.layers.tolist() == list(range(L1)) and lens.top_ids.shape == (L1, 6) and lens.top_probs.shape == (L1, 6)
    assert lens.grid_probs.shape == (L1, T) and lens.grid_ids.shape == (L1, T)
    assert len(lens.grid_tokens) == L1 and all(len(row) == T for row in lens.grid_tokens)
    assert len(lens.top_tokens) == L1 and all(len(row) == 6 for row in lens.top_tokens)
    with torch.inference_mode():
        z = decode_independently(loaded, torch.from_numpy(r.hidden_states).reshape(L1 * T, -1)).reshape(L1, T, -1)
    p = torch.softmax(z.double(), -1)
    pos = lens.position
    np.testing.assert_allclose(lens.grid_probs, p.max(-1).values.numpy(), atol=1e-6)
    ref_top = torch.topk(p[:, pos], 6, dim=-1).values.numpy()
    np.testing.assert_allclose(lens.top_probs, ref_top, atol=1e-6)
    np.testing.assert_allclose(lens.top_probs, np.take_along_axis(p[:, pos].numpy(), lens.top_ids, 1), atol=1e-6)
    assert np.all(np.diff(lens.top_probs, axis=1) <= 0) and np.all((lens.top_probs >= 0) & (lens.top_probs <= 1))
    np.testing.assert_allclose(lens.final_prob, p[:, pos, lens.final_token_id].numpy(), atol=1e-6)
    ent = -(p[:, pos] * torch.log(p[:, pos])).sum(-1).numpy()
    np.testing.assert_allclose(lens.entropy, ent, atol=1e-6)
    assert np.all(lens.entropy >= 0) and np.all(lens.entropy <= np.log(lens.vocab_size) + 1e-9)
    from core.model.tokens import token_text

    tok = loaded.tokenizer
    assert lens.top_tokens[0][0] == token_text(tok, int(lens.top_ids[0, 0]))  # decode, partial bytes by value
    assert lens.final_token == token_text(tok, lens.final_token_id)


def test_chunking_does_not_change_the_result(tiny_gpt2):
    r = run(tiny_gpt2, "The quick brown fox jumps over the lazy dog.")
    z = own_logits(tiny_gpt2, r.token_ids)
    ref = compute_logit_lens(tiny_gpt2, r.hidden_states, 3, 5, final_logits=z)
    V = ref.vocab_size
    for chunk in (1, V, 3 * V + 1):
        got = compute_logit_lens(tiny_gpt2, r.hidden_states, 3, 5, final_logits=z, chunk_floats=chunk)
        assert got.grid_ids.tolist() == ref.grid_ids.tolist() and got.top_ids.tolist() == ref.top_ids.tolist()
        for f in ("grid_probs", "top_probs", "final_prob", "entropy"):
            np.testing.assert_allclose(getattr(got, f), getattr(ref, f), atol=1e-6)
        assert got.last_layer_max_abs_diff <= 1e-5


def test_lens_position_setting(tiny_gpt2):
    r = run(tiny_gpt2, "The cat sat on the mat.", lens_position=2)
    assert r.logit_lens.position == 2
    z = own_logits(tiny_gpt2, r.token_ids)
    assert r.logit_lens.final_token_id == int(torch.argmax(z[2]))
    far = run(tiny_gpt2, "The cat sat.", lens_position=99)
    assert far.logit_lens.position == far.target_position
    assert any("lens_position 99" in w for w in far.warnings)


def test_default_position_is_the_target(tiny_bert, tiny_gpt2):
    rb = run(tiny_bert, "The cat [MASK] on the mat.")
    assert rb.logit_lens.position == rb.token_ids.index(tiny_bert.tokenizer.mask_token_id) == rb.target_position
    rg = run(tiny_gpt2, "The cat sat")
    assert rg.logit_lens.position == rg.n_tokens - 1


@pytest.mark.parametrize("name", ["minilm", "tiny_encoder"])
def test_encoder_has_no_lens_and_no_warning(name, request):
    r = run(request.getfixturevalue(name), "Paris is the capital of France.")
    assert r.logit_lens is None
    assert not any("lens" in w.lower() for w in r.warnings)


def test_lens_survives_round_trip(tiny_llama):
    r = run(tiny_llama, "Hello world")
    back = AnalysisResult.from_bytes(r.to_bytes())
    assert isinstance(back.logit_lens, LensSection)
    assert results_equal(r.logit_lens, back.logit_lens)
    assert results_equal(r, back)


def test_bundle_files(tiny_bert):
    r = run(tiny_bert, "The cat [MASK] on the mat.", top_k=4)
    files = bundle_files(r)
    text = files["logit_lens.csv"].decode("utf-8")
    assert text.splitlines()[0] == "layer,position,rank,token,probability,final_token_probability,entropy"
    assert LOGIT_LENS_CSV_HEADER == text.splitlines()[0].split(",")
    rows = list(csv.DictReader(io.StringIO(text)))
    lens = r.logit_lens
    L1, T = lens.grid_probs.shape
    assert len(rows) == L1 * (T - 1 + 4)
    at = [row for row in rows if int(row["position"]) == lens.position]
    assert len(at) == L1 * 4
    for row in at:
        l, rank = int(row["layer"]), int(row["rank"])
        assert row["token"] == lens.top_tokens[l][rank - 1]
        assert float(row["probability"]) == pytest.approx(lens.top_probs[l, rank - 1], rel=1e-6)
        assert float(row["final_token_probability"]) == pytest.approx(lens.final_prob[l], rel=1e-6)
        assert float(row["entropy"]) == pytest.approx(lens.entropy[l], rel=1e-6)
    other = [row for row in rows if int(row["position"]) != lens.position]
    assert all(row["rank"] == "1" and row["entropy"] == "" for row in other)
    doc = json.loads(files["predictions.json"])
    assert doc["kind"] == "mask_fill" and doc["settings"]["top_k"] == 4
    assert [p["position"] for p in doc["predictions"]] == r.predictions.positions
    assert doc["predictions"][0]["candidates"] == r.predictions.candidates[0]
    assert doc["logit_lens"]["final_token_id"] == lens.final_token_id
    for name in ("plots/logit_lens.png", "plots/logit_lens_layers.png", "plots/predictions.png"):
        assert files[name].startswith(PNG)


def test_bundle_files_for_an_encoder(minilm):
    r = run(minilm, "Paris is the capital of France.")
    files = bundle_files(r)
    doc = json.loads(files["predictions.json"])
    assert doc["kind"] == "unavailable" and doc["message"].startswith("Predictions are not available")
    assert doc["predictions"] == [] and doc["logit_lens"] is None
    assert (
        "logit_lens.csv" not in files and "plots/logit_lens.png" not in files and "plots/predictions.png" not in files
    )


def test_figures_render(tiny_gpt2):
    r = run(tiny_gpt2, "The price is $5 and\nmore")
    assert logit_lens_heatmap_png(r.logit_lens, r.display_tokens).startswith(PNG)
    assert logit_lens_layers_png(r.logit_lens).startswith(PNG)
    assert predictions_png(r.predictions, r.display_tokens).startswith(PNG)
    long = run(tiny_gpt2, " ".join(["The cat sat on the mat."] * 12), max_tokens=100)  # too many to annotate
    assert logit_lens_heatmap_png(long.logit_lens, long.display_tokens).startswith(PNG)
    assert label("$x$") == r"\$x\$" and label("\n") == "↵" and label(" the") == "␣the" and label("") == "∅"


def test_no_streamlit_in_these_modules():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "core"
    for name in ("steps/predictions.py", "steps/logit_lens.py", "figures/predictions.py"):
        assert "streamlit" not in (root / name).read_text()


def test_grid_window_bounds_the_decoded_columns(tiny_gpt2):
    from core.figures.predictions import prediction_bundle_files
    from core.infra.options import ExportOptions
    from core.steps.logit_lens import grid_window

    assert grid_window(10, 9, None) == (0, 10) and grid_window(10, 9, 4) == (6, 10)
    assert grid_window(10, 0, 4) == (0, 4) and grid_window(10, 5, 4) == (3, 7) and grid_window(3, 1, 8) == (0, 3)
    r = run(tiny_gpt2, "The quick brown fox jumps over the lazy dog.", lens_position=4)
    full = r.logit_lens
    assert full.grid_positions == list(range(r.n_tokens))
    z = own_logits(tiny_gpt2, r.token_ids)
    win = compute_logit_lens(tiny_gpt2, r.hidden_states, 4, r.settings.top_k, final_logits=z, grid_max_positions=3)
    assert win.grid_positions == [3, 4, 5]
    np.testing.assert_allclose(win.grid_probs[:, 3:6], full.grid_probs[:, 3:6], atol=1e-6)
    assert np.isnan(win.grid_probs[:, :3]).all() and np.isnan(win.grid_probs[:, 6:]).all()
    assert (win.grid_ids[:, 6:] == -1).all() and win.grid_tokens[0][0] == ""
    assert win.top_ids.tolist() == full.top_ids.tolist() and win.last_layer_max_abs_diff <= 1e-5
    np.testing.assert_allclose(win.entropy, full.entropy, atol=1e-9)
    files = prediction_bundle_files(r.replace(logit_lens=win), ExportOptions())
    rows = list(csv.DictReader(io.StringIO(files["logit_lens.csv"].decode())))
    L1 = len(win.layers)
    assert len(rows) == L1 * (2 + r.settings.top_k) and {int(x["position"]) for x in rows} == {3, 4, 5}
    assert files["plots/logit_lens.png"].startswith(PNG)


def test_analysis_step_bounds_the_grid_on_cpu(tiny_gpt2, monkeypatch):
    import core.steps.logit_lens as LL

    r = run(tiny_gpt2, "The quick brown fox jumps over the lazy dog.")
    assert r.logit_lens.grid_positions == list(range(r.n_tokens))  # tiny models: always the full grid
    L1, T, D = r.hidden_states.shape
    per_column = L1 * D * r.logit_lens.vocab_size
    monkeypatch.setattr(LL, "GRID_MAX_MACS_CPU", 4 * per_column)
    assert LL.grid_max_positions(tiny_gpt2, L1, T, D) == 4
    assert LL.grid_max_positions(tiny_gpt2, L1, 4, D) is None
    w = run(tiny_gpt2, "The quick brown fox jumps over the lazy dog.", top_k=3)
    lens = w.logit_lens
    assert lens.grid_positions == list(range(T - 4, T)) and lens.position == T - 1
    assert np.isnan(lens.grid_probs[:, 0]).all() and not np.isnan(lens.grid_probs[:, T - 4 :]).any()
    assert lens.last_layer_max_abs_diff <= 1e-5 and not any("lens" in x.lower() for x in w.warnings)
    full = run(tiny_gpt2, "The quick brown fox jumps over the lazy dog.", top_k=3, lens_full_grid=True)
    assert full.logit_lens.grid_positions == list(range(T)) and not np.isnan(full.logit_lens.grid_probs).any()
    np.testing.assert_array_equal(full.logit_lens.grid_probs[:, T - 4 :], lens.grid_probs[:, T - 4 :])
    monkeypatch.setattr(LL, "GRID_MAX_MACS_CPU", None)
    assert LL.grid_max_positions(tiny_gpt2, L1, T, D) is None
