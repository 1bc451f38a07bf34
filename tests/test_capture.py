"""Capture invariants on tiny random models, and real weights against a direct transformers call."""

import numpy as np
import pytest

from core import analyze
from core.infra.errors import InputError
from core.model.capture import apply_mask_word

TEXT = "The cat sat on the mat."


def test_shapes_and_invariants(tiny_any):
    r = analyze(tiny_any, TEXT)
    L, H, T = tiny_any.n_layers, tiny_any.n_heads, len(r.tokens)
    assert r.attentions.shape == (L, H, T, T)
    assert r.attentions.dtype == np.float32
    assert r.hidden_states.shape == (L + 1, T, tiny_any.hidden_size)
    np.testing.assert_allclose(r.attentions.sum(-1), 1.0, atol=1e-5)
    assert len(r.special_mask) == len(r.display_tokens) == len(r.token_ids) == T
    for name, values in r.layer_metrics.items():
        assert values.shape == (L + 1,), name
    assert r.layer_metrics["cosine_to_input"][0] == pytest.approx(1.0)


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_causal_models_have_zero_upper_triangle(request, fixture):
    loaded = request.getfixturevalue(fixture)
    r = analyze(loaded, TEXT)
    T = r.n_tokens
    upper = np.triu(np.ones((T, T), bool), k=1)
    assert np.all(r.attentions[:, :, upper] == 0)
    assert loaded.family == "causal_lm"
    assert r.final_norm  # GPT-2 ln_f / Llama norm: last hidden state captured before it


def test_bert_attends_both_ways_and_marks_specials(tiny_bert):
    r = analyze(tiny_bert, TEXT)
    T = r.n_tokens
    assert r.tokens[0] == "[CLS]" and r.tokens[-1] == "[SEP]"
    assert r.special_mask[0] and r.special_mask[-1] and not any(r.special_mask[1:-1])
    assert r.attentions[:, :, np.triu(np.ones((T, T), bool), k=1)].max() > 0
    assert not r.final_norm


def test_last_hidden_state_is_before_final_norm(tiny_gpt2):
    import torch

    r = analyze(tiny_gpt2, TEXT)
    m = tiny_gpt2.model
    with torch.no_grad():
        h = torch.from_numpy(r.hidden_states[-1])
        logits = m.lm_head(m.transformer.ln_f(h))
        ids = torch.tensor([r.token_ids])
        direct = m(input_ids=ids).logits[0]
    torch.testing.assert_close(logits, direct, atol=1e-5, rtol=1e-5)


def test_exclude_special_tokens_changes_metrics_and_is_recorded(tiny_bert):
    a = analyze(tiny_bert, TEXT)
    b = analyze(tiny_bert, TEXT, exclude_special_tokens=True)
    assert a.metric_tokens == "all tokens" and b.metric_tokens == "special tokens excluded"
    assert not np.allclose(a.layer_metrics["effective_rank"], b.layer_metrics["effective_rank"])
    from core.steps.metrics import layer_metrics

    keep = ~np.array(a.special_mask)
    expected = layer_metrics(a.hidden_states, keep)
    np.testing.assert_allclose(b.layer_metrics["participation_ratio"], expected["participation_ratio"])


def test_truncation_warns(tiny_gpt2):
    r = analyze(tiny_gpt2, "the cat sat on the mat " * 20, max_tokens=8)
    assert r.n_tokens == 8
    assert any("truncated" in w for w in r.warnings)


def test_target_positions_by_family(tiny_gpt2, tiny_bert, tiny_encoder):
    assert analyze(tiny_gpt2, TEXT).target_position == len(analyze(tiny_gpt2, TEXT).tokens) - 1
    rb = analyze(tiny_bert, "The cat sat on the [MASK].")
    assert rb.tokens[rb.target_position] == "[MASK]"
    assert analyze(tiny_encoder, TEXT).target_position == 0
    with pytest.raises(InputError):
        analyze(tiny_gpt2, TEXT, target_position=999)


def test_mask_word(tiny_bert):
    r = analyze(tiny_bert, "The cat sat on the mat.", mask_word="mat")
    assert r.analysed_text == "The cat sat on the [MASK]."
    assert r.text == "The cat sat on the mat."
    assert r.tokens[r.target_position] == "[MASK]"
    assert apply_mask_word("Cat, cat!", "cat", "<m>") == "<m>, cat!"
    with pytest.raises(InputError):
        apply_mask_word("no such word", "dog", "[MASK]")


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_text_is_an_input_error(tiny_gpt2, text):
    with pytest.raises(InputError):
        analyze(tiny_gpt2, text)


def test_minilm_attentions_equal_a_direct_transformers_call(minilm):
    """Real trained weights: our capture equals an independent plain transformers call."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from core.model.loading import bundled_model_path

    text = "The quick brown fox jumps over the lazy dog."
    r = analyze(minilm, text)
    path = bundled_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_attentions=True, output_hidden_states=True)
    direct = torch.stack([a[0] for a in out.attentions]).numpy()
    assert r.tokens == tok.convert_ids_to_tokens(enc["input_ids"][0])
    assert r.attentions.shape == (6, 12, len(r.tokens), len(r.tokens))
    np.testing.assert_allclose(r.attentions, direct, atol=1e-6)
    np.testing.assert_allclose(r.hidden_states, torch.stack([h[0] for h in out.hidden_states]).numpy(), atol=1e-5)
    assert minilm.family == "encoder" and r.model.source == "bundled"


def test_text_longer_than_the_context_is_truncated_to_it(tiny_gpt2):
    # the tiny GPT-2 has 128 positions
    r = analyze(tiny_gpt2, "the cat sat on the mat " * 60, compute_gradients=False, max_tokens=256)
    assert r.n_tokens == 128
    assert any("context length" in w for w in r.warnings)


def test_one_tokenisation_path_for_one_text_and_for_many(tiny_any):
    """core.model.tokens: `encode_texts` (corpus) gives each text exactly what `tokenize` (analysis, patching) gives
    it — ids, special flags (a typed special token included), truncation — under the same limit."""
    from core.model.tokens import context_length, encode_texts, token_limit, tokenize

    tok = tiny_any.tokenizer
    typed_special = f"The cat {tok.eos_token or tok.sep_token} sat."
    texts = ["The cat sat on the mat.", typed_special, "the dog ran " * 40, "A."]
    many = encode_texts(tiny_any, texts, 24)
    for text, enc in zip(texts, many):
        one = tokenize(tiny_any, text, 24)
        assert one.ids == enc.ids and one.special == enc.special and one.truncated == enc.truncated
        assert one.input_ids[0].tolist() == one.ids and one.limit == 24
        full = tok(text)["input_ids"]
        assert one.truncated == (len(full) > 24) and len(one.ids) == min(len(full), 24)
        # the flags are the tokenizer's own special-tokens mask, plus special ids typed in the text
        added = tok(text, truncation=True, max_length=24, return_special_tokens_mask=True)["special_tokens_mask"]
        specials = set(tok.all_special_ids) - ({tok.unk_token_id} if tok.unk_token_id != tok.eos_token_id else set())
        assert one.special == [bool(a) or i in specials for i, a in zip(one.ids, added)]
    assert many[2].truncated and not many[0].truncated
    assert any(many[1].special[1:-1])  # the typed special token is flagged inside the text
    assert tokenize(tiny_any, texts[2], 24).warning == "the text was truncated to 24 tokens (the Max tokens setting)"
    ctx = context_length(tiny_any)
    assert ctx == tiny_any.model.config.max_position_embeddings
    assert token_limit(tiny_any, ctx + 1) == (ctx, "the model's context length")
    assert token_limit(tiny_any, ctx) == (ctx, "the Max tokens setting")
