"""Adaptive integrated gradients (core/steps/attribution.py): Gauss–Legendre nodes in u with α = u³, doubled until the
completeness gap is ≤ 1 %, checked against captum on the same inputs_embeds function."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from core.steps.attribution import (
    IG_MAX_STEPS,
    adaptive_integrated_gradients,
    ig_nodes,
    integrated_gradients,
    target_logprob_fn,
    token_embeddings,
)


def _setup(lm, text):
    enc = lm.tokenizer(text, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    pos = ids.shape[1] - 1 if lm.family == "causal_lm" else ids[0].tolist().index(lm.tokenizer.mask_token_id)
    with torch.no_grad():
        y = int(lm.model(**enc).logits[0, pos].argmax())
    return ids, mask, pos, y


@pytest.mark.parametrize("power", [1.0, 3.0])
def test_nodes_integrate_polynomials_exactly(power):
    alphas, weights = ig_nodes(8, power)
    assert np.all((alphas > 0) & (alphas < 1)) and np.all(weights > 0)
    for k in range(4):  # integrand in u has degree 3k + 2 ≤ 2·8 − 1
        assert float(np.sum(weights * alphas**k)) == pytest.approx(1.0 / (k + 1), rel=1e-12)


def test_adaptive_doubles_until_the_gap_is_one_percent(tiny_llama):
    """Tiny Llama: RMSNorm of a near-zero input makes the integrand steep at the baseline; 2 nodes are far off."""
    ids, mask, pos, y = _setup(tiny_llama, "Paris is the capital of")
    run = adaptive_integrated_gradients(tiny_llama, ids, mask, pos, y, steps=2)
    steps = [m for m, _ in run.history]
    assert steps[0] == 2 and all(b == 2 * a for a, b in itertools.pairwise(steps)) and len(steps) > 1
    assert run.history[0][1] > 0.01  # the first try was not good enough (else the test shows nothing)
    assert run.converged and run.gap_relative <= 0.01 and run.steps == steps[-1]
    assert abs(run.scores.sum() - (run.fx - run.f0)) == pytest.approx(run.gap)


def test_adaptive_stops_at_the_cap(tiny_llama):
    ids, mask, pos, y = _setup(tiny_llama, "Paris is the capital of")
    run = adaptive_integrated_gradients(tiny_llama, ids, mask, pos, y, steps=1, max_steps=2, power=1.0)
    assert run.steps == 2 and not run.converged and [m for m, _ in run.history] == [1, 2]
    assert IG_MAX_STEPS == 512


def test_analysis_reports_the_achieved_gap_and_steps(tiny_llama):
    from core.analysis.pipeline import analyze

    a = analyze(tiny_llama, "Paris is the capital of", integrated_gradients=True, ig_steps=2).attribution
    assert a.ig_steps >= 4 and a.ig_converged and a.ig_completeness_gap_relative <= 0.01
    assert [int(m) for m, _ in a.ig_history][-1] == a.ig_steps


captum = pytest.importorskip("captum")


def _captum_ig(lm, ids, mask, pos, y, steps):
    from captum.attr import IntegratedGradients

    x = token_embeddings(lm, ids)
    f = target_logprob_fn(lm, mask, pos, y)
    with torch.inference_mode(False), torch.enable_grad():
        attr = IntegratedGradients(f).attribute(
            x.clone(), baselines=torch.zeros_like(x), n_steps=steps, method="gausslegendre"
        )
    return attr[0].sum(-1).double().numpy()  # our convention: signed sum over the hidden dimension


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_same_rule_as_captum_gauss_legendre(kind, tiny_gpt2, tiny_bert, tiny_llama):
    """α = u (power 1) with m nodes is exactly captum's `gausslegendre` rule with n_steps = m."""
    lm = {"gpt2": tiny_gpt2, "bert": tiny_bert, "llama": tiny_llama}[kind]
    text = "Paris is the [MASK] of France." if kind == "bert" else "Paris is the capital of"
    ids, mask, pos, y = _setup(lm, text)
    ours, _, _ = integrated_gradients(lm, ids, mask, pos, y, steps=16, power=1.0)
    theirs = _captum_ig(lm, ids, mask, pos, y, 16)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6 * np.abs(theirs).max())


def test_adaptive_matches_captum_with_many_steps(tiny_llama):
    """Our adaptive α = u³ estimate agrees with captum's 512-step Gauss–Legendre estimate (both converged here)."""
    ids, mask, pos, y = _setup(tiny_llama, "Paris is the capital of")
    run = adaptive_integrated_gradients(tiny_llama, ids, mask, pos, y, steps=8)
    ref = _captum_ig(tiny_llama, ids, mask, pos, y, 512)
    assert run.converged
    np.testing.assert_allclose(run.scores, ref, atol=5e-3 * np.abs(ref).max())
