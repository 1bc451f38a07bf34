"""The one architecture map (core/model/arch.py) on tiny models of every family the app loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.model.arch import ArchitectureNotSupported, frozen_norm, model_parts
from tests.tiny_models import FAMILIES, tiny_family, tiny_family_loaded

ALL = ("gpt2", "bert", "llama", *FAMILIES)
TEXT = "The cat sat on the mat."


@pytest.fixture(scope="module", params=ALL)
def fam(request):
    return request.param, tiny_family(request.param)


def _run(model, tok, **kw):
    enc = tok(TEXT, return_tensors="pt")
    with torch.inference_mode():
        return enc, model(
            **{k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")},
            output_attentions=True,
            output_hidden_states=True,
            **kw,
        )


def test_map_finds_every_part(fam):
    kind, (model, _tok) = fam
    parts = model_parts(model)
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    assert parts.n_layers == L and parts.heads.n_heads == H
    mods = {id(m) for m in model.modules()}
    for b in parts.blocks:
        for m in (b.module, b.attention, b.out_proj, b.value_module, b.mlp, b.mlp_out):
            assert id(m) in mods
        W = parts.head_out_weights(b)
        assert W.shape == (H, parts.heads.head_dim, model.config.hidden_size)
    assert id(parts.embed_tokens) in mods and id(parts.unembed) in mods
    assert parts.residual == ("post_ln" if kind in ("bert", "roberta", "distilbert") else "pre_ln")
    assert (parts.logit_softcap is not None) == (kind == "gemma2")
    assert model_parts(model) is parts  # cached on the model


def test_head_layout_rebuilds_the_attention_update(fam):
    """Σ_j A_h[i, j] v_j^{kv(h)} (captured attention × the values read through the map) equals the input of the
    output projection, and Σ_h z_h W_O^h + b_O its output: the head slices, GQA mapping and W_O layout are right."""
    _kind, (model, tok) = fam
    parts = model_parts(model)
    got: dict[str, list[torch.Tensor]] = {"v": [], "z": [], "o": []}
    hs = []

    def grab_zo(_m, args, output):
        got["z"].append(args[0][0])
        got["o"].append(output[0])

    for b in parts.blocks:
        hs.append(b.value_module.register_forward_hook(lambda m, a, o: got["v"].append(o[0])))
        hs.append(b.out_proj.register_forward_hook(grab_zo))
    try:
        _, out = _run(model, tok)
    finally:
        for h in hs:
            h.remove()
    hl = parts.heads
    for layer, b in enumerate(parts.blocks):
        v = parts.values(got["v"][layer])  # [T, KV, dh]
        A = out.attentions[layer][0]  # [H, T, T]
        z = torch.stack([A[h] @ v[:, hl.kv_head(h)] for h in range(hl.n_heads)], 1).reshape(v.shape[0], -1)
        torch.testing.assert_close(z, got["z"][layer], atol=1e-5, rtol=1e-4)
        W = parts.head_out_weights(b)
        o = sum(z[:, hl.head_slice(h)] @ W[h] for h in range(hl.n_heads))
        bias = parts.out_bias(b)
        o = o + (bias if bias is not None else 0)
        torch.testing.assert_close(o, got["o"][layer], atol=1e-5, rtol=1e-4)


def test_decode_of_last_state_equals_model_logits(fam):
    """The map's head (final norm, MLM transform, unembedding, Gemma-2 soft-cap) reproduces the model's logits."""
    kind, (model, tok) = fam
    parts = model_parts(model)
    grab = {}
    h = (
        parts.final_norm.register_forward_pre_hook(lambda m, a: grab.setdefault("x", a[0]))
        if parts.final_norm is not None
        else None
    )
    try:
        _, out = _run(model, tok)
    finally:
        if h is not None:
            h.remove()
    last = grab["x"] if h is not None else out.hidden_states[-1]
    with torch.inference_mode():
        z = parts.decode(last)
    torch.testing.assert_close(z, out.logits, atol=1e-5, rtol=1e-5)
    if kind == "gemma2":  # without the cap it would differ: the test can fail
        raw = parts.unembed(parts.head_transform(last))
        assert float((raw - out.logits).abs().max()) > 1e-2


def test_logit_lens_last_layer_equals_logits(fam):
    from core.model.capture import capture
    from core.run.settings import AnalysisSettings
    from core.steps.logit_lens import compute_logit_lens

    kind, _ = fam
    loaded = tiny_family_loaded(kind)
    cap = capture(loaded, TEXT, AnalysisSettings())
    lens = compute_logit_lens(loaded, cap.hidden_states, 1, 3, final_logits=cap.logits)
    assert lens is not None
    assert lens.last_layer_max_abs_diff < 1e-4


def test_head_attribution_exists_for_every_family(fam):
    from core.steps.attribution import gradient_x_input

    kind, _ = fam
    loaded = tiny_family_loaded(kind)
    enc = loaded.tokenizer(TEXT, return_tensors="pt")
    _gxi, heads, _ = gradient_x_input(loaded, enc["input_ids"], enc["attention_mask"], 2, 5, heads=True)
    assert heads is not None and heads.shape == (2, 4) and np.isfinite(heads).all()
    assert np.abs(heads).sum() > 0


def test_frozen_norm_is_exact_for_each_norm_kind():
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(1)
    x = torch.randn(5, 16) * 3
    parts = [torch.randn(5, 16) for _ in range(3)]
    parts.append(x - sum(parts))
    for norm in (torch.nn.LayerNorm(16), LlamaRMSNorm(16), Gemma2RMSNorm(16)):
        with torch.no_grad():
            norm.weight.copy_(torch.randn(16))
            if getattr(norm, "bias", None) is not None:
                norm.bias.copy_(torch.randn(16))
        scale, shift, centre = frozen_norm(norm, x)
        assert centre == isinstance(norm, torch.nn.LayerNorm)
        total = sum((p - p.mean(-1, keepdim=True) if centre else p) * scale for p in parts) + shift
        torch.testing.assert_close(total, norm(x).detach(), atol=1e-5, rtol=1e-5)


def test_unknown_architecture_says_not_available():
    from transformers import GPTJConfig, GPTJForCausalLM

    model = GPTJForCausalLM(GPTJConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, rotary_dim=4))
    with pytest.raises(ArchitectureNotSupported, match="not available for GPTJForCausalLM"):
        model_parts(model)


def test_unknown_architecture_reaches_attribution_notes():
    """No silent gap: per-head attribution on an unmapped model says why it is missing."""
    from transformers import GPTJConfig, GPTJForCausalLM

    from core.steps.attribution import head_projection_modules

    model = GPTJForCausalLM(GPTJConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, rotary_dim=4))
    assert head_projection_modules(model, 1) is None


def test_not_available_line_from_a_stored_architecture_name():
    from core.model.arch import not_available_line

    for kind in ALL:
        model, _ = tiny_family(kind)
        assert not_available_line(model.config.architectures[0], "DLA") is None
    line = not_available_line("GPTJForCausalLM", "Direct logit attribution")
    assert line is not None and line.startswith("Direct logit attribution is not available for GPTJForCausalLM")


# ----------------------------------------------------------------------------------------------------------------
# The query–key side of the map


def test_query_key_side_of_every_family(fam):
    """The map's q/k fields on every tiny family: shapes, causal flag, window, rotary, the one refusal (Gemma-2)."""
    kind, (model, _tok) = fam
    parts = model_parts(model)
    hl = parts.heads
    encoders = ("bert", "roberta", "distilbert")
    assert parts.causal == (kind not in encoders)
    assert (parts.rotary is not None) == (kind in ("llama", "qwen2", "mistral", "phi3", "gemma2", "gpt_neox"))
    window = getattr(model.config, "sliding_window", None) or 0 if kind in ("mistral", "phi3") else 0
    assert parts.window == window
    if kind == "gemma2":
        assert parts.qk_refusal is not None and "soft-capping" in parts.qk_refusal
        with pytest.raises(ArchitectureNotSupported, match="the query–key view is not available for Gemma2"):
            parts.query_key()
        return
    assert parts.qk_refusal is None
    mods = {id(m) for m in model.modules()}
    x = torch.randn(1, 5, model.config.hidden_size)
    for side in parts.query_key():
        assert (side.pre_norm is None) == (kind in encoders)
        assert side.pre_norm is None or id(side.pre_norm) in mods
        assert side.scaling > 0
        with torch.inference_mode():
            q, k = side.project(x)
        assert q.shape == (1, 5, hl.n_heads * hl.head_dim) and k.shape == (1, 5, hl.n_kv_heads * hl.head_dim)


def test_query_key_side_rebuilds_the_attention(fam):
    """softmax((q · k) · c + mask) from the map's fields alone (pre-norm, projection, rotary, GQA, causal mask,
    window) equals the attention weights the model returns, every layer, head and query (torch, independent of
    core.steps.qk)."""
    kind, (model, tok) = fam
    parts = model_parts(model)
    if parts.qk_refusal is not None:
        pytest.skip(parts.qk_refusal)
    _, out = _run(model, tok)
    hl = parts.heads
    T = out.attentions[0].shape[-1]
    j = torch.arange(T)
    allowed = torch.ones(T, T, dtype=torch.bool)
    if parts.causal:
        allowed &= j[None, :] <= j[:, None]
    if parts.window:
        allowed &= (j[:, None] - j[None, :]) < parts.window
    with torch.inference_mode():
        for layer, side in enumerate(parts.query_key()):
            x = out.hidden_states[layer]
            x = side.pre_norm(x) if side.pre_norm is not None else x
            q, k = side.project(x)
            q = q.view(1, T, hl.n_heads, hl.head_dim).transpose(1, 2)
            k = k.view(1, T, hl.n_kv_heads, hl.head_dim).transpose(1, 2)
            if parts.rotary is not None:
                q, k = parts.rotary.apply(q, k, *parts.rotary.embedding(x, torch.arange(T)[None]))
            k = k.repeat_interleave(hl.n_heads // hl.n_kv_heads, dim=1)  # query head h reads kv head h // group
            s = (q @ k.transpose(-1, -2))[0] * side.scaling
            w = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1)
            torch.testing.assert_close(w, out.attentions[layer][0], atol=1e-5, rtol=1e-4)


def test_mlp_width_is_the_neuron_count(fam):
    """d_ff read from the MLP output projection's weight (GPT-2 Conv1D [in, out], nn.Linear [out, in]) equals the
    width of that projection's input in a forward pass."""
    kind, (model, tok) = fam
    parts = model_parts(model)
    seen = []
    h = parts.blocks[0].mlp_out.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]))
    try:
        _run(model, tok)
    finally:
        h.remove()
    assert parts.mlp_width == seen[0] == (4 * 32 if kind == "gpt2" else 64)  # GPT-2: n_inner = 4·D
