"""Query–key view: the scores rebuilt from the stored queries and keys, softmaxed with the mask, equal the
attention weights the model itself returned (every layer, head and query), for GPT-2, BERT, Llama with grouped-query
attention, Mistral (sliding window), Qwen2, Phi-3, GPT-NeoX (partial rotary), OPT (pre- and post-LN), DistilBERT,
RoBERTa and the bundled MiniLM; plus the memory bound and the view's own arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from core.steps.qk import QK_MAX_BYTES, QKSection, bounded, compute_qk, qk_view

TEXT = "The quick brown fox jumps over the lazy dog. The cat sat on the mat."


def _capture(loaded, text=TEXT):
    from core.model.capture import capture
    from core.run.settings import AnalysisSettings

    return capture(loaded, text, AnalysisSettings())


def _check_all_heads(model, cap, atol=1e-5):
    _q, _k, section = compute_qk(model, cap.hidden_states, cap.attention_mask[0].cpu().numpy())
    L, H, T, _ = cap.attentions.shape
    assert section.queries.shape[:3] == (L, H, T)
    worst = 0.0
    for layer in range(L):
        for head in range(H):
            for i in range(T):
                v = qk_view(section, layer, head, i)
                worst = max(worst, float(np.abs(v.weights - cap.attentions[layer, head, i]).max()))
    assert worst <= atol, worst
    return section


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_scores_softmaxed_equal_captured_attention(kind, tiny_gpt2, tiny_bert, tiny_llama):
    loaded = {"gpt2": tiny_gpt2, "bert": tiny_bert, "llama": tiny_llama}[kind]
    section = _check_all_heads(loaded.model, _capture(loaded))
    assert section.causal == (kind != "bert")
    assert section.rotary == (kind == "llama")
    if kind == "llama":  # the tiny Llama has 4 query heads on 2 key-value heads
        assert section.keys.shape[1] == 2 and section.group == 2


def test_gqa_heads_map_to_their_kv_head(tiny_llama):
    cap = _capture(tiny_llama)
    _q, _k, section = compute_qk(tiny_llama.model, cap.hidden_states)
    assert [qk_view(section, 0, h, 3).kv_head for h in range(4)] == [0, 0, 1, 1]
    # mapping query head 1 to the wrong key-value head breaks the equality: the test above can fail
    wrong = QKSection(
        section.queries,
        section.keys[:, ::-1].copy(),
        section.scaling,
        section.key_mask,
        section.causal,
        section.window,
        section.rotary,
    )
    T = cap.attentions.shape[2]
    diffs = [np.abs(qk_view(wrong, 0, 1, i).weights - cap.attentions[0, 1, i]).max() for i in range(T)]
    assert max(diffs) > 1e-3


def test_gpt2_inverse_layer_scaling(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    cfg = GPT2Config(
        n_layer=3,
        n_head=2,
        n_embd=16,
        vocab_size=50,
        n_positions=32,
        scale_attn_by_inverse_layer_idx=True,
        attn_implementation="eager",
    )
    model = GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 50, (1, 9))
    with torch.inference_mode():
        out = model(ids, output_hidden_states=True, output_attentions=True)
    hs = torch.stack(out.hidden_states)[:, 0].numpy()
    att = torch.stack(out.attentions)[:, 0].numpy()
    _q, _k, section = compute_qk(model, hs)
    assert section.scaling[2] == pytest.approx(8**-0.5 / 3)
    for layer in range(3):
        for head in range(2):
            for i in range(9):
                np.testing.assert_allclose(qk_view(section, layer, head, i).weights, att[layer, head, i], atol=1e-5)


def tiny_model(arch: str):
    """A tiny random model of `arch` built from its config (eager attention, eval mode)."""
    import torch
    import transformers as tf

    torch.manual_seed(2)
    llama_like = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "vocab_size": 60,
        "max_position_embeddings": 64,
    }
    cfgs = {
        "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(sliding_window=4, **llama_like)),
        "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**llama_like)),
        "phi3": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(sliding_window=5, pad_token_id=0, **llama_like)),
        "gpt_neox": lambda: tf.GPTNeoXForCausalLM(
            tf.GPTNeoXConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                vocab_size=60,
                max_position_embeddings=64,
                rotary_pct=0.5,
            )
        ),
        "opt": lambda: tf.OPTForCausalLM(
            tf.OPTConfig(
                hidden_size=32,
                ffn_dim=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                vocab_size=60,
                max_position_embeddings=64,
                word_embed_proj_dim=32,
            )
        ),
        "opt-post-ln": lambda: tf.OPTForCausalLM(
            tf.OPTConfig(
                hidden_size=32,
                ffn_dim=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                vocab_size=60,
                max_position_embeddings=64,
                word_embed_proj_dim=32,
                do_layer_norm_before=False,
            )
        ),
        "distilbert": lambda: tf.DistilBertModel(
            tf.DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=4, vocab_size=60, max_position_embeddings=64)
        ),
        "roberta": lambda: tf.RobertaModel(
            tf.RobertaConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                vocab_size=60,
                max_position_embeddings=70,
            )
        ),
    }
    model = cfgs[arch]()
    model.config._attn_implementation = "eager"
    return model.eval()


@pytest.mark.parametrize(
    "arch", ["mistral", "qwen2", "phi3", "gpt_neox", "opt", "opt-post-ln", "distilbert", "roberta"]
)
def test_other_architectures(arch):
    import torch

    model = tiny_model(arch)
    ids = torch.randint(3, 60, (1, 11))
    with torch.inference_mode():
        out = model(input_ids=ids, output_hidden_states=True, output_attentions=True)
    hs = torch.stack(out.hidden_states)[:, 0].numpy()
    att = torch.stack(out.attentions)[:, 0].numpy()
    _q, _k, section = compute_qk(model, hs)
    assert section.window == {"mistral": 4, "phi3": 5}.get(arch, 0)
    assert section.rotary == (arch in ("mistral", "qwen2", "phi3", "gpt_neox"))
    L, H = att.shape[:2]
    for layer in range(L):
        for head in range(H):
            for i in range(11):
                np.testing.assert_allclose(qk_view(section, layer, head, i).weights, att[layer, head, i], atol=1e-5)


def test_minilm_real_weights(minilm):
    _check_all_heads(minilm.model, _capture(minilm))


def test_view_arithmetic_by_hand():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(1, 2, 3, 4)).astype(np.float32)
    k = rng.normal(size=(1, 1, 3, 4)).astype(np.float32)
    s = QKSection(q, k, np.array([0.5]), np.array([True, True, False]), causal=True, window=0, rotary=False)
    v = qk_view(s, 0, 1, 2)
    assert v.kv_head == 0
    np.testing.assert_allclose(v.products, k[0, 0] * q[0, 1, 2], rtol=1e-6)
    expect = np.array([q[0, 1, 2] @ k[0, 0, 0], q[0, 1, 2] @ k[0, 0, 1]]) * 0.5
    np.testing.assert_allclose(v.scores[:2], expect, rtol=1e-6)
    assert v.scores[2] == -np.inf and v.weights[2] == 0.0  # padding key masked
    np.testing.assert_allclose(v.weights[:2], np.exp(expect) / np.exp(expect).sum(), rtol=1e-6)
    assert qk_view(s, 0, 0, 0).weights.tolist() == [1.0, 0.0, 0.0]  # causal: the first query sees only itself


def test_memory_bound():
    q = np.zeros((2, 4, 64, 16), np.float32)
    k = np.zeros((2, 2, 64, 16), np.float32)
    s = QKSection(q, k, np.ones(2), np.ones(64, bool), True, 0, False)
    size = q.nbytes + k.nbytes
    same, warn = bounded(s, size)
    assert same is s and warn is None
    half, warn = bounded(s, size // 2)
    assert half is not None and half.queries.dtype == np.float16 and "float16" in warn
    none, warn = bounded(s, size // 2 - 1)
    assert none is None and "off" in warn
    assert QK_MAX_BYTES == 64 * 2**20


def test_unsupported_architecture_says_so():
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from core.model.arch import model_parts
    from core.steps.qk import query_key_parts

    torch.manual_seed(0)
    model = Gemma2ForCausalLM(
        Gemma2Config(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            intermediate_size=32,
            vocab_size=40,
        )
    )
    with pytest.raises(ValueError, match="not available for Gemma2ForCausalLM: attention-logit soft-capping"):
        query_key_parts(model)
    with pytest.raises(ValueError, match="not available for Gemma2ForCausalLM: attention-logit soft-capping"):
        compute_qk(model, np.zeros((2, 3, 16), np.float32))
    assert model_parts(model).n_layers == 1  # the refusal is the q/k side's only: the rest of the map serves it


def test_architecture_outside_the_map_says_so():
    from transformers import GPTJConfig, GPTJForCausalLM

    model = GPTJForCausalLM(GPTJConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=50, rotary_dim=4))
    with pytest.raises(ValueError, match="the query–key view is not available for GPTJForCausalLM: its architecture"):
        compute_qk(model, np.zeros((2, 3, 16), np.float32))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"use_sliding_window": True, "max_window_layers": 1}, "per-layer sliding windows"),
        ({}, None),
    ],
)
def test_qwen2_per_layer_windows_are_refused(change, why):
    import transformers as tf

    from core.model.arch import model_parts

    cfg = tf.Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=60,
        **change,
    )
    parts = model_parts(tf.Qwen2ForCausalLM(cfg))
    assert (parts.qk_refusal is None) == (why is None)
    if why:
        assert why in parts.qk_refusal
