"""The deeper views' one forward pass (issue 24): the decomposition pass that DLA and flow read also records the
neuron activations and stands in for add_views's capture pass. The sections it gives are the ones of the separate
passes it replaced (a capture pass for the context, the shared decomposition pass, the neuron step's own hooked
pass), and add_views runs the model once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.analysis.pipeline import VIEWS, _context, add_views, analyze, logit_positions
from core.analysis.result import results_equal
from core.model.capture import capture, kept_positions, prepare
from core.model.hooks import hooked
from core.steps.dla import decomposition_pass
from core.steps.neurons import capture_mlp_activations

TEXT = "The cat sat on the mat because the mat was warm and the cat was tired."
SETTINGS = dict(compute_gradients=False, neuron_first_layer=2)  # head ablation: its own passes, not this one's


def separate_sections(loaded, result):
    """Every view as add_views computed it before the one pass: a capture pass builds the context, DLA and flow
    share the decomposition pass (core.steps.dla.shared_pass), the neuron factors run their own hooked pass."""
    st = result.settings
    cap = capture(loaded, result.analysed_text, st, logit_positions(loaded, st), hold_bytes=0)
    ctx, _ = _context(loaded, st, cap)
    ctx.warnings = []
    assert ctx.views_pass is None and ctx.mlp_activations is None
    with loaded.lock:
        return {name: step(ctx) for name, (_label, step) in VIEWS.items()}, ctx.warnings


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama", "tiny_bert", "tiny_encoder"])
def test_one_pass_gives_the_sections_of_the_separate_passes(name, request):
    loaded = request.getfixturevalue(name)
    core = analyze(loaded, TEXT, **SETTINGS)
    calls = []
    with hooked([(loaded.model, "pre_kwargs", lambda m, a, k: calls.append(k["input_ids"].shape[0]))]):
        merged = add_views(loaded, core, "all")
    assert calls == [1]  # one forward pass for every view
    sections, warnings = separate_sections(loaded, core)
    for view in VIEWS:
        assert results_equal(getattr(merged, view), sections[view]), (name, view)
    if loaded.family != "encoder":
        assert merged.dla is not None and merged.flow is not None and merged.neuron_factors is not None
        assert merged.neuron_factors.layers == tuple(range(1, loaded.n_layers))
    assert merged.warnings == [*core.warnings, *(w for w in warnings if w not in core.warnings)]


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama", "tiny_bert"])
def test_pass_records_what_the_separate_passes_record(name, request):
    """Hidden states as the capture holds them, the neuron activations as their own hooked pass records them, the
    logits at the kept positions as the full head gives them, and the decomposition itself unchanged."""
    loaded = request.getfixturevalue(name)
    core = analyze(loaded, TEXT, compute_gradients=False)
    st = core.settings
    prep = prepare(loaded, core.analysed_text, st)
    T = len(prep.tokens.ids)
    kept = kept_positions(lambda ids, special: [3, 1, T - 1, T + 5], prep)  # sorted, in range
    assert kept == [1, 3, T - 1]
    ids, mask = prep.input_ids, prep.attention_mask
    layers = [0, loaded.n_layers - 1]
    with loaded.lock:
        dec = decomposition_pass(loaded, ids, mask, logit_positions=kept, mlp_layers=layers)
        plain = decomposition_pass(loaded, ids, mask)
        acts = capture_mlp_activations(loaded.model, ids, mask, layers)
        cap = capture(loaded, core.analysed_text, st, lambda ids, special: kept, hold_bytes=0)
    np.testing.assert_array_equal(dec.hidden_states, cap.hidden_states)
    assert dec.final_norm == cap.final_norm
    np.testing.assert_array_equal(dec.mlp_acts, acts)
    assert dec.mlp_layers == tuple(layers) and plain.mlp_acts is None
    for field in ("embed", "resid_pre", "z", "attn_out", "values", "mlp_out", "resid_mid", "resid_post", "final_in"):
        torch.testing.assert_close(getattr(dec, field), getattr(plain, field), rtol=0, atol=0, msg=field)
    torch.testing.assert_close(dec.attentions, plain.attentions, rtol=0, atol=0)
    if plain.logits is not None:
        for p in kept:  # the head on the kept rows only: the same rows up to the product's rounding
            torch.testing.assert_close(dec.logits[p], plain.logits[p], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(dec.logits[p], cap.logits[p], rtol=1e-5, atol=1e-5)
        with pytest.raises(KeyError):
            dec.logits[2]
    with pytest.raises(ValueError, match="outside"):
        decomposition_pass(loaded, ids, mask, mlp_layers=[loaded.n_layers])


def test_only_views_without_the_pass_keep_the_capture(tiny_gpt2, monkeypatch):
    """Neuron factors or the query–key view alone run no decomposition (it would cost more than the capture)."""
    from core.analysis import pipeline

    core = analyze(tiny_gpt2, TEXT, compute_gradients=False)

    def no_pass(*a, **k):
        raise AssertionError("no decomposition pass expected")

    monkeypatch.setattr(pipeline, "decomposition_pass", no_pass)
    out = add_views(tiny_gpt2, core, ["neuron_factors", "query_key"])
    assert out.neuron_factors is not None and out.query_key is not None


def test_a_failing_pass_leaves_each_view_to_its_own(tiny_gpt2, monkeypatch):
    """The one pass failing (an unusual layout, offloaded weights, out of memory) is no failed add_views: the views
    run as they would alone, the same sections."""
    from core.analysis import pipeline

    core = analyze(tiny_gpt2, TEXT, compute_gradients=False)
    want = add_views(tiny_gpt2, core, "all")

    def fails(*a, **k):
        raise RuntimeError("the decomposition pass did not capture z of every block")

    monkeypatch.setattr(pipeline, "decomposition_pass", fails)
    got = add_views(tiny_gpt2, core, "all")
    for view in VIEWS:
        assert results_equal(getattr(got, view), getattr(want, view)), view
    at_once = analyze(tiny_gpt2, TEXT, compute_gradients=False, views=["dla", "neuron_factors"])
    assert results_equal(at_once.dla, want.dla) and results_equal(at_once.neuron_factors, want.neuron_factors)
