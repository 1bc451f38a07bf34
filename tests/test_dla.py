"""Direct logit attribution and promoted / suppressed tokens (core/steps/dla.py) on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.model.arch import model_parts
from core.steps.dla import block_update_rows, carry, compute_dla, decomposition_pass
from tests.tiny_models import FAMILIES, tiny_family_loaded

TEXT = "The quick brown fox jumps over the lazy dog."


def _setup(kind):
    loaded = tiny_family_loaded(kind)
    enc = loaded.tokenizer(TEXT, return_tensors="pt")
    dec = decomposition_pass(loaded, enc["input_ids"], enc["attention_mask"])
    return loaded, enc, dec


@pytest.fixture(scope="module", params=("gpt2", "bert", "llama", *FAMILIES))
def setup(request):
    return request.param, *_setup(request.param)


def test_parts_sum_to_the_model_logit(setup):
    kind, loaded, enc, dec = setup
    T = enc["input_ids"].shape[1]
    for pos in (0, T // 2, T - 1):
        y = int(dec.logits[pos].argmax())
        sec = compute_dla(dec, pos, y, loaded.tokenizer, k=5)
        total = float(sec.values.sum())
        assert abs(total - sec.logit) <= 1e-4 * max(1.0, abs(sec.logit)), (kind, pos, total, sec.logit)
        assert sec.sum_abs_error <= 1e-4 * max(1.0, abs(sec.logit))
        # a token that is not the top one: the sum holds for any token
        y2 = int(dec.logits[pos].argmin())
        sec2 = compute_dla(dec, pos, y2, loaded.tokenizer, k=5)
        assert abs(float(sec2.values.sum()) - float(dec.logits[pos, y2])) <= 1e-4 * max(1.0, abs(sec2.logit))
    L, H = loaded.n_layers, loaded.n_heads
    assert sec.head_matrix().shape == (L, H) and sec.mlp_column().shape == (L,)
    assert set(sec.components) <= {"embedding", "attention", "mlp", "bias"}
    assert sum(c == "attention" for c in sec.components) == L * H
    assert sec.components.count("embedding") == 1 and sec.components.count("mlp") == L
    assert all(h == -1 for c, h in zip(sec.components, sec.heads) if c != "attention")


def test_logit_matches_the_capture(setup):
    """The decomposition pass's own logits are the model's (same forward)."""
    _kind, loaded, enc, dec = setup
    with torch.inference_mode():
        ref = loaded.model(**{k: enc[k] for k in ("input_ids", "attention_mask")}).logits[0]
    torch.testing.assert_close(dec.logits, ref.float(), atol=1e-5, rtol=1e-5)


def test_one_head_against_a_hand_computation():
    """GPT-2, layer 2 head 1 at the last position: (z_h W_O^h) centred, times γ/σ of ln_f's input, dotted with
    W_U[y]; computed from plain hooks, independently of core.steps.dla."""
    loaded, enc, dec = _setup("gpt2")
    model = loaded.model
    layer, head, pos = 1, 1, enc["input_ids"].shape[1] - 1
    grab = {}
    h1 = model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(lambda m, a: grab.setdefault("z", a[0]))
    h2 = model.transformer.ln_f.register_forward_pre_hook(lambda m, a: grab.setdefault("x", a[0]))
    try:
        with torch.inference_mode():
            logits = model(**{k: enc[k] for k in ("input_ids", "attention_mask")}).logits[0]
    finally:
        h1.remove()
        h2.remove()
    y = int(logits[pos].argmax())
    dh = 32 // 4
    with torch.no_grad():
        expected = _hand_dla(model, grab, layer, head, pos, y, dh)
    sec = compute_dla(dec, pos, y, loaded.tokenizer, k=3)
    assert sec.head_matrix()[layer, head] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert expected != 0


def _hand_dla(model, grab, layer, head, pos, y, dh):
    z = grab["z"][0, pos, head * dh : (head + 1) * dh]
    W = model.transformer.h[layer].attn.c_proj.weight  # Conv1D [in, out]
    c = z @ W[head * dh : (head + 1) * dh]
    x = grab["x"][0, pos]
    sigma = torch.sqrt(x.var(unbiased=False) + model.transformer.ln_f.eps)
    return float(((c - c.mean()) * model.transformer.ln_f.weight / sigma) @ model.lm_head.weight[y])


def test_csv_rows_have_the_columns():
    loaded, _enc, dec = _setup("llama")
    sec = compute_dla(dec, 3, 7, loaded.tokenizer, k=3)
    rows = sec.table_rows()
    assert rows[0] == (0, "embedding", -1, pytest.approx(sec.values[0]))
    assert {r[1] for r in rows} == {"embedding", "attention", "mlp"}  # Llama: no biases, RMSNorm has no shift


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_promoted_tokens_equal_topk_of_the_update(kind):
    """Promoted / suppressed tokens of a block update and of a head = top-k of that update read through the frozen
    final maps and the unembedding (computed here from the carried vectors, independently of the table code)."""
    loaded, enc, dec = _setup(kind)
    P = model_parts(loaded.model)
    W_U = P.unembed.weight.detach().float()
    pos = enc["input_ids"].shape[1] - 1
    y = int(dec.logits[pos].argmax())
    sec = compute_dla(dec, pos, y, loaded.tokenizer, k=4)
    c = carry(dec, pos)
    L, H = loaded.n_layers, loaded.n_heads
    rows = block_update_rows(c, L)
    pi = sec.promote_positions.index(pos)
    for layer in range(L):
        for kind_i in (0, 1):
            logit = rows[layer, kind_i] @ W_U.t()
            assert sec.promote_block_ids[pi, layer, kind_i].tolist() == torch.topk(logit, 4).indices.tolist()
            assert sec.demote_block_ids[pi, layer, kind_i].tolist() == torch.topk(-logit, 4).indices.tolist()
            np.testing.assert_allclose(
                sec.promote_block_logits[pi, layer, kind_i], torch.topk(logit, 4).values, rtol=1e-5, atol=1e-6
            )
    head_rows = [i for i, comp in enumerate(c.components) if comp == "attention"]
    i = head_rows[H + 2]  # layer 2, head 2
    logit = c.vectors[i] @ W_U.t()
    assert sec.promote_head_ids[1, 2].tolist() == torch.topk(logit, 4).indices.tolist()
    # the MLP update of a pre-LN model read directly: W_U (γ/σ ⊙ centred/plain m)
    if kind == "llama":
        x = dec.final_in[pos]
        rms = torch.sqrt(x.pow(2).mean() + P.final_norm.variance_epsilon)
        direct = (dec.mlp_update[0, pos] * P.final_norm.weight.detach() / rms) @ W_U.t()
        assert sec.promote_block_ids[pi, 0, 1].tolist() == torch.topk(direct, 4).indices.tolist()


def test_block_updates_sum_to_the_actual_update():
    """Pre-LN: the attention rows of block l carried back (before the final norm) equal the captured update."""
    _loaded, _enc, dec = _setup("gpt2")
    P = dec.parts
    H, dh = P.heads.n_heads, P.heads.head_dim
    pos = 2
    W = P.head_out_weights(P.blocks[0]).detach()
    heads = torch.einsum("hd,hde->e", dec.z[0, pos].reshape(H, dh), W) + P.out_bias(P.blocks[0]).detach()
    torch.testing.assert_close(heads, dec.attn_update[0, pos], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_bfloat16_model_decomposes_within_its_precision(kind):
    """A 16-bit model: the pass keeps float32 CPU copies, the norms are checked in the model's dtype; the parts sum
    to the model's (bfloat16) logit within bfloat16 precision."""
    import dataclasses

    loaded = tiny_family_loaded(kind)
    loaded.model.to(torch.bfloat16)
    loaded = dataclasses.replace(loaded, dtype="bfloat16")
    enc = loaded.tokenizer(TEXT, return_tensors="pt")
    dec = decomposition_pass(loaded, enc["input_ids"], enc["attention_mask"])
    pos = enc["input_ids"].shape[1] - 1
    y = int(dec.logits[pos].argmax())
    sec = compute_dla(dec, pos, y, loaded.tokenizer, k=3)
    assert abs(float(sec.values.sum()) - sec.logit) <= 3e-2 * max(1.0, abs(sec.logit))
