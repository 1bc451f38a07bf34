"""Exact head ablation (core/steps/ablation.py) against forward passes with one head's slice replaced by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.steps import ablation
from core.steps.ablation import HeadAblationSection, head_ablation, spearman

TEXTS = {"gpt2": "The dog sat on the log", "llama": "The dog sat on the log", "bert": "The dog sat on the [MASK]."}


def _proj(kind, model, layer):
    if kind == "gpt2":
        return model.transformer.h[layer].attn.c_proj
    if kind == "llama":
        return model.model.layers[layer].self_attn.o_proj
    return model.bert.encoder.layer[layer].attention.output.dense


def _inputs(loaded, kind):
    enc = loaded.tokenizer(TEXTS[kind], return_tensors="pt")
    ids = enc["input_ids"]
    pos = ids.shape[1] - 1 if kind != "bert" else ids[0].tolist().index(loaded.tokenizer.mask_token_id)
    with torch.no_grad():
        logits = loaded.model(**enc).logits[0, pos]
    return enc, pos, int(logits.argmax())


def _by_hand(loaded, kind, layer, head, variant):
    """log p(y*) − log p(y*) with head `head` of `layer` replaced by hand (no core code involved)."""
    model, H = loaded.model, loaded.n_heads
    enc, pos, y = _inputs(loaded, kind)
    proj = _proj(kind, model, layer)
    seen = {}
    g = proj.register_forward_pre_hook(lambda m, a: seen.setdefault("z", a[0].clone()))
    try:
        with torch.no_grad():
            base = torch.log_softmax(model(**enc).logits[0, pos], -1)[y]
    finally:
        g.remove()
    z = seen["z"][0]
    dh = z.shape[-1] // H
    sl = slice(head * dh, (head + 1) * dh)
    value = z[:, sl].mean(0) if variant == "mean" else torch.zeros(dh)

    def hook(_m, args):
        x = args[0].clone()
        x[:, :, sl] = value
        return (x,)

    h = proj.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            after = torch.log_softmax(model(**enc).logits[0, pos], -1)[y]
    finally:
        h.remove()
    return float(after - base)


@pytest.fixture(scope="module")
def tables(tiny_gpt2, tiny_bert, tiny_llama):
    out = {}
    for kind, loaded in {"gpt2": tiny_gpt2, "bert": tiny_bert, "llama": tiny_llama}.items():
        enc, pos, y = _inputs(loaded, kind)
        out[kind] = (loaded, head_ablation(loaded, enc["input_ids"], enc["attention_mask"], pos, y))
    return out


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
@pytest.mark.parametrize("variant", ["mean", "zero"])
def test_one_head_matches_a_hand_replaced_slice(tables, kind, variant):
    loaded, (mean, zero, _) = tables[kind]
    got = mean if variant == "mean" else zero
    assert got.shape == (loaded.n_layers, loaded.n_heads)
    for layer, head in [(0, 1), (1, 3)]:
        want = _by_hand(loaded, kind, layer, head, variant)
        assert got[layer, head] == pytest.approx(want, abs=1e-5)
    assert np.ptp(got) > 1e-6  # the heads differ: a constant table would pass the check above by luck


def test_chunked_equals_batched(tiny_llama):
    enc, pos, y = _inputs(tiny_llama, "llama")
    a = head_ablation(tiny_llama, enc["input_ids"], enc["attention_mask"], pos, y)
    b = head_ablation(tiny_llama, enc["input_ids"], enc["attention_mask"], pos, y, chunk=3)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_hooks_removed(tiny_gpt2):
    before = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in tiny_gpt2.model.modules())
    enc, pos, y = _inputs(tiny_gpt2, "gpt2")
    head_ablation(tiny_gpt2, enc["input_ids"], enc["attention_mask"], pos, y)
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in tiny_gpt2.model.modules()) == before


def test_section_rows_and_agreement():
    mean = np.array([[-1.0, 0.5], [0.0, -2.0]])
    sec = HeadAblationSection(
        target_position=3, token_id=7, token="x", logprob=-1.0, mean_ablation=mean, zero_ablation=2 * mean
    )
    assert sec.rows()[1] == (1, 1, 0.5, 1.0) and len(sec.rows()) == 4  # layer 1 = array row 0, heads from 0
    scores = np.array([[1.0, -0.5], [0.1, 2.0]])  # same order as the drop −Δ
    assert sec.agreement(scores) == {"mean_ablation": pytest.approx(1.0), "zero_ablation": pytest.approx(1.0)}
    assert sec.agreement(None) == {}
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.ones(3), np.arange(3)))


def test_encoder_gets_no_section(tiny_encoder):
    from core.model.capture import capture
    from core.run.settings import AnalysisSettings

    cap = capture(tiny_encoder, "The dog sat.", AnalysisSettings())
    assert ablation.ablate_heads(tiny_encoder, cap, 0) is None


def test_section_from_a_capture(tiny_gpt2):
    from core.model.capture import capture
    from core.run.settings import AnalysisSettings

    cap = capture(tiny_gpt2, TEXTS["gpt2"], AnalysisSettings())
    sec = ablation.ablate_heads(tiny_gpt2, cap, len(cap.tokens) - 1)
    _, pos, y = _inputs(tiny_gpt2, "gpt2")
    assert sec is not None and sec.token_id == y and sec.target_position == pos
    assert sec.zero_ablation[1, 3] == pytest.approx(_by_hand(tiny_gpt2, "gpt2", 1, 3, "zero"), abs=1e-5)
