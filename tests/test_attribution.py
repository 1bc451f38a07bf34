"""Attribution: rollout against a hand computation; gradient × input against finite differences and a plain
autograd pass; integrated gradients' completeness; per-head scores against a finite difference of a head gate,
hooks removed afterwards; encoders and switched-off gradients; the section's round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.model.capture import capture
from core.run.settings import AnalysisSettings
from core.steps.attribution import (
    AttributionSection,
    attention_rollout,
    gradient_x_input,
    head_projection_modules,
    integrated_gradients,
    token_embeddings,
)

TEXT = "The cat sat on the mat."
MASKED = "The cat sat on the [MASK]."


def test_rollout_equals_hand_computation_on_two_layers():
    # layer 1: heads [[1,0],[.5,.5]] and [[1,0],[.1,.9]] → mean [[1,0],[.3,.7]]; + I → [[2,0],[.3,1.7]];
    #          rows normalised → Â1 = [[1,0],[.15,.85]]
    # layer 2: heads [[1,0],[.6,.4]] and [[1,0],[.2,.8]] → mean [[1,0],[.4,.6]]; + I → [[2,0],[.4,1.6]];
    #          rows normalised → Â2 = [[1,0],[.2,.8]]
    # R = Â2 Â1 = [[1, 0], [.2·1 + .8·.15, .8·.85]] = [[1, 0], [.32, .68]]
    att = np.array([[[[1, 0], [0.5, 0.5]], [[1, 0], [0.1, 0.9]]], [[[1, 0], [0.6, 0.4]], [[1, 0], [0.2, 0.8]]]])
    R = attention_rollout(att)
    np.testing.assert_allclose(R, [[1, 0], [0.32, 0.68]], atol=1e-12)


def test_rollout_order_matters_and_rows_sum_to_one():
    rng = np.random.default_rng(0)
    att = rng.random((3, 2, 5, 5))
    att /= att.sum(-1, keepdims=True)
    R = attention_rollout(att)
    np.testing.assert_allclose(R.sum(1), 1.0)
    eye = np.eye(5)
    hats = [(a.mean(0) + eye) / (a.mean(0) + eye).sum(1, keepdims=True) for a in att]
    np.testing.assert_allclose(R, hats[2] @ hats[1] @ hats[0])
    with pytest.raises(ValueError):
        attention_rollout(att[0])


def _setup(loaded, text):
    cap = capture(loaded, text, AnalysisSettings())
    if loaded.family == "masked_lm":
        pos = cap.input_ids[0].tolist().index(loaded.tokenizer.mask_token_id)
    else:
        pos = len(cap.tokens) - 1
    pred = int(cap.logits[pos].argmax())
    return cap, pos, pred


def _f_full(loaded, cap, pos, pred):
    """Independent f(embeds): the whole model on inputs_embeds, full logits, pick the position."""

    def f(emb):
        out = loaded.model(inputs_embeds=emb, attention_mask=cap.attention_mask.expand(emb.shape[0], -1))
        return torch.log_softmax(out.logits[:, pos].float(), -1)[:, pred]

    return f


@pytest.fixture(params=["gpt2", "bert", "llama"])
def lm(request, tiny_gpt2, tiny_bert, tiny_llama):
    return {"gpt2": tiny_gpt2, "bert": tiny_bert, "llama": tiny_llama}[request.param]


def test_grad_x_input_matches_plain_autograd_and_finite_difference(lm):
    torch.manual_seed(0)
    text = MASKED if lm.family == "masked_lm" else TEXT
    cap, pos, pred = _setup(lm, text)
    with lm.lock:
        gxi, _, fx = gradient_x_input(lm, cap.input_ids, cap.attention_mask, pos, pred, heads=False)
        f = _f_full(lm, cap, pos, pred)
        x = token_embeddings(lm, cap.input_ids)
        with torch.enable_grad():
            e = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(f(e).sum(), [e])
        ref = (g * x)[0].sum(-1).double().numpy()
        # finite difference along x itself: d/dε f((1+ε)x) at 0 = Σ_t gxi_t
        eps = 1e-2
        with torch.no_grad():
            fd = float((f((1 + eps) * x) - f((1 - eps) * x))[0]) / (2 * eps)
            f_ref = float(torch.log_softmax(cap.logits[pos], -1)[pred])
    np.testing.assert_allclose(gxi, ref, rtol=1e-3, atol=1e-6)
    assert gxi.sum() == pytest.approx(fd, rel=2e-2, abs=1e-4)
    assert fx == pytest.approx(f_ref, abs=1e-4)
    assert all(p.grad is None and not p.requires_grad for p in lm.model.parameters())


def test_integrated_gradients_nearly_complete(lm):
    text = MASKED if lm.family == "masked_lm" else TEXT
    cap, pos, pred = _setup(lm, text)
    with lm.lock:
        ig, fx, f0 = integrated_gradients(lm, cap.input_ids, cap.attention_mask, pos, pred, steps=64)
    assert ig.shape == (len(cap.tokens),)
    gap = abs(ig.sum() - (fx - f0))
    assert gap / abs(fx - f0) < 1e-2


def test_integrated_gradients_converge_with_steps(tiny_gpt2):
    cap, pos, pred = _setup(tiny_gpt2, TEXT)
    with tiny_gpt2.lock:
        gaps = []
        for steps in (2, 32):
            ig, fx, f0 = integrated_gradients(tiny_gpt2, cap.input_ids, cap.attention_mask, pos, pred, steps=steps)
            gaps.append(abs(ig.sum() - (fx - f0)))
    assert gaps[1] < gaps[0]


def _all_pre_hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_head_scores_shape_hooks_removed_and_match_a_head_gate(lm):
    text = MASKED if lm.family == "masked_lm" else TEXT
    cap, pos, pred = _setup(lm, text)
    before = _all_pre_hooks(lm.model)
    with lm.lock:
        _, scores, _ = gradient_x_input(lm, cap.input_ids, cap.attention_mask, pos, pred, heads=True)
    L, H = lm.n_layers, lm.n_heads
    assert scores.shape == (L, H) and np.all(np.isfinite(scores))
    mods = head_projection_modules(lm.model, L)
    assert len(mods) == L and all(len(m._forward_pre_hooks) == 0 for m in mods)
    assert _all_pre_hooks(lm.model) == before

    # independent check: scaling head h of layer l by (1 + δ) changes f at rate score[l, h]
    l, h = L - 1, 1
    f = _f_full(lm, cap, pos, pred)
    x = token_embeddings(lm, cap.input_ids)

    def f_gated(scale):
        def gate(_m, args):
            z = args[0].clone()
            d = z.shape[-1] // H
            z[..., h * d : (h + 1) * d] *= scale
            return (z,)

        handle = mods[l].register_forward_pre_hook(gate)
        try:
            with torch.no_grad():
                return float(f(x)[0])
        finally:
            handle.remove()

    delta = 1e-2
    with lm.lock:
        fd = (f_gated(1 + delta) - f_gated(1 - delta)) / (2 * delta)
    assert scores[l, h] == pytest.approx(fd, rel=5e-2, abs=1e-4)
    assert _all_pre_hooks(lm.model) == before


def test_hooks_removed_when_the_forward_fails(tiny_gpt2, monkeypatch):
    cap, pos, pred = _setup(tiny_gpt2, TEXT)
    import core.steps.attribution as A

    def boom(*a, **k):
        def f(emb):
            raise RuntimeError("boom")

        return f

    before = _all_pre_hooks(tiny_gpt2.model)  # transformers keeps a few hooks of its own
    monkeypatch.setattr(A, "target_logprob_fn", boom)
    with pytest.raises(RuntimeError, match="boom"):
        gradient_x_input(tiny_gpt2, cap.input_ids, cap.attention_mask, pos, pred, heads=True)
    assert _all_pre_hooks(tiny_gpt2.model) == before
    assert all(len(m._forward_pre_hooks) == 0 for m in head_projection_modules(tiny_gpt2.model, 2))


def test_step_results_on_tiny_models(tiny_any):
    from core.analysis.pipeline import analyze
    from core.analysis.result import AnalysisResult, results_equal

    res = analyze(tiny_any, MASKED if tiny_any.family == "masked_lm" else TEXT, ig_steps=16, integrated_gradients=True)
    a = res.attribution
    assert isinstance(a, AttributionSection)
    T = res.n_tokens
    assert a.target_position == res.target_position and a.target_token == res.tokens[res.target_position]
    assert a.rollout.shape == (T,) and a.rollout_matrix.shape == (T, T)
    np.testing.assert_allclose(a.rollout, a.rollout_matrix[a.target_position])
    assert a.rollout.sum() == pytest.approx(1.0)
    assert a.grad_x_input.shape == a.integrated_gradients.shape == (T,)
    assert a.head_scores.shape == (res.n_layers, res.n_heads)
    assert a.ig_steps == 16 and a.ig_completeness_gap is not None and a.ig_completeness_gap_relative < 0.05
    assert "gradient x head output" in a.head_method
    assert results_equal(AnalysisResult.from_bytes(res.to_bytes()).attribution, a)


def test_predicted_token_is_the_models_top_prediction(tiny_gpt2):
    from core.analysis.pipeline import analyze

    res = analyze(tiny_gpt2, TEXT, compute_gradients=False)
    cap = capture(tiny_gpt2, TEXT, AnalysisSettings())
    assert res.attribution.predicted_id == int(cap.logits[-1].argmax())
    assert res.attribution.grad_x_input is None and res.attribution.head_scores is None
    assert any("switched off" in n for n in res.attribution.notes)


def test_causal_target_before_the_end_zeroes_later_tokens(tiny_gpt2):
    from core.analysis.pipeline import analyze

    res = analyze(tiny_gpt2, TEXT, target_position=2, ig_steps=8, integrated_gradients=True)
    a = res.attribution
    assert a.target_position == 2
    assert np.all(a.grad_x_input[3:] == 0) and np.all(a.integrated_gradients[3:] == 0)
    assert np.any(a.grad_x_input[:3] != 0)


def test_encoder_gets_rollout_and_a_note(tiny_encoder):
    from core.analysis.pipeline import analyze

    res = analyze(tiny_encoder, TEXT)
    a = res.attribution
    assert a.target_position == 0
    assert a.grad_x_input is None and a.integrated_gradients is None and a.head_scores is None
    assert a.predicted_token is None
    assert a.notes and "no language-model head" in a.notes[0]
    assert a.rollout.shape == (res.n_tokens,)


def test_integrated_gradients_are_opt_in(tiny_gpt2):
    """The default analysis runs gradient × input and head scores (one backward pass), not the IG loop."""
    from core.analysis.pipeline import analyze

    res = analyze(tiny_gpt2, TEXT)
    a = res.attribution
    assert a.grad_x_input is not None and a.head_scores is not None
    assert a.integrated_gradients is None and a.ig_steps == 0 and a.ig_completeness_gap is None
    assert set(a.methods()) == {"rollout", "grad_x_input"}


def test_predicted_token_label_reads_the_decoded_prediction(tiny_gpt2):
    """A byte-level token holding part of a UTF-8 character is stored raw ("âĢ"); the label takes the predictions
    section's decoding of the same id at the same position, and falls back to the raw token read like a table's."""
    import dataclasses

    from core.analysis.pipeline import analyze
    from core.present.tables import predicted_token_label, readable_token

    res = analyze(tiny_gpt2, TEXT, compute_gradients=False)
    a, p = res.attribution, res.predictions
    assert a.target_position in p.positions and p.candidates[0][0]["token_id"] == a.predicted_id
    assert predicted_token_label(res) == readable_token(p.candidates[0][0]["token"])
    cands = [dict(c) for c in p.candidates[0]]
    cands[0]["token"] = "<0xE2><0x80>"
    odd = res.replace(
        attribution=dataclasses.replace(a, predicted_token="\u00e2\u0122"),
        predictions=dataclasses.replace(p, candidates=[cands]),
    )
    assert predicted_token_label(odd) == "<0xE2><0x80>"
    elsewhere = odd.replace(attribution=dataclasses.replace(odd.attribution, target_position=0))
    assert predicted_token_label(elsewhere) == readable_token("\u00e2\u0122")
    assert predicted_token_label(res.replace(attribution=None)) is None
    # the Compare page's attribution tab reads the same decoding (the comparison stores it for each run)
    from core.studies.compare import compare

    cmp = compare(odd, res)
    assert cmp.attribution_a is not None and cmp.attribution_a.predicted_token == "<0xE2><0x80>"
