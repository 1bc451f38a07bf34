"""The Details page's methodology section: how the numbers are made (one forward pass, eager attention, centring, the
cache key, precision ...), as (title, paragraph) pairs."""

from __future__ import annotations

METHODOLOGY: list[tuple[str, str]] = [
    (
        "One forward pass",
        "The text is tokenised (truncated to the Max tokens setting, special tokens included) and run once through the model with "
        "output_hidden_states and output_attentions, under torch inference mode and the model's lock (one loaded model "
        "serves every session). Every page, chart and export is computed from this one capture; only the gradient "
        "attributions and the optional generation run the model again.",
    ),
    (
        "Eager attention",
        "Models are loaded with attn_implementation='eager'. Fused kernels (SDPA, FlashAttention) never materialise the "
        "attention matrix, so they cannot return attention weights; eager attention gives the exact softmax weights "
        "[L, H, T, T] whose rows sum to 1.",
    ),
    (
        "Last hidden state before the final norm",
        "Libraries return the last hidden state after the model's final norm (GPT-2 ln_f, Llama RMSNorm) but the "
        "others before it. A hook captures the input of the final norm instead, so all L+1 states are raw residual "
        "stream: the layer metrics compare like with like, and the logit lens applies the final norm uniformly (its "
        "last layer equals the model's logits). Models without a final norm (BERT) are unaffected.",
    ),
    (
        "Centring",
        "The spectral metrics (effective rank, participation ratio, intrinsic dimensionality) subtract the mean token "
        "vector of the layer first and use the eigenvalues of the smaller Gram matrix of the centred T×D matrix "
        "(exact, in float64). After centring the rank is at most T−1, so none of these metrics can exceed the token "
        "count minus one. Activation entropy and cosine to input use the raw states.",
    ),
    (
        "Special tokens",
        "Special tokens ([CLS], [SEP], BOS, EOS) are marked by the tokenizer. With 'exclude special tokens' their rows "
        "are removed before the layer metrics; attention analyses and attributions always see every token, since the "
        "model attends to them.",
    ),
    (
        "Target position for attribution",
        "Masked LMs: the first [MASK] token (or the last non-special token when there is none). Causal LMs: the last "
        "token (the next-token prediction). Encoders without an LM head: position 0. A position set by the user "
        "overrides this; the reason is written into the manifest. The attributed quantity f is the log-probability "
        "of the model's top prediction at the target position.",
    ),
    (
        "What the cache key holds",
        "A SHA-256 over the core version (bumped whenever a formula changes), the model id, its resolved revision (or "
        "a fingerprint of a local folder), dtype, device, the exact text and every analysis setting. A change to any "
        "of them computes a new result; the cache is bounded and evicts the least recently used entries.",
    ),
    (
        "Precision and dtype",
        "Weights run in the chosen dtype (float32 on CPU by default, bfloat16 on CUDA). Captured states and attentions "
        "are converted to float32 for storage, and all metrics are computed in float64. Half precision can shift "
        "small eigenvalues (and so intrinsic dimensionality by a component or two) and the low-probability tail of "
        "predictions; use float32 for exact comparisons. hidden_states.npz in the export is float16 to save space.",
    ),
    (
        "Reproducibility",
        "Models run in eval mode (no dropout); results depend only on the key above. The manifest.json of every "
        "export records the model, revision, settings, package versions and timings.",
    ),
    (
        "Integrated gradients across tools",
        "Our convention: attribution to the token embeddings only (the tensor passed as inputs_embeds; position "
        "embeddings are added inside the model and are not interpolated), a zero baseline, the log-probability of the "
        "predicted token as the target, and the signed sum over the hidden dimension per token. The integral uses "
        "Gauss–Legendre nodes in u with α = u³ (measured: on a tiny Llama with realistic weights 32 nodes leave a 25 % "
        "completeness gap with α = u and under 0.01 % with α = u³), doubled until the gap is at most 1 %. captum's "
        "IntegratedGradients defaults to 50 Gauss–Legendre steps in α, and its LayerIntegratedGradients on the "
        "embedding layer attributes the full embedding output (token + position + type embeddings); inseq's common "
        "defaults aggregate each token's attribution vector by its L2 norm (unsigned), take the probability (not the "
        "log-probability) of the generated token, and many setups use an UNK or PAD token embedding as the baseline. "
        "Each choice changes the numbers: to compare, align all four (captum with forward_func = inputs_embeds → "
        "log p, baselines = 0, method 'gausslegendre', attributions summed over the last dimension gives exactly our "
        "α = u rule).",
    ),
    (
        "Causal evidence",
        "Activation patching and head ablation intervene on the model: they change an activation and run the rest "
        "of the network, so they say what the prediction needs, not where the model looks. Every patched or ablated "
        "variant of one layer runs as one batched forward pass (the batch rows differ only in what is replaced); "
        "hooks exist only during that pass and are removed in a finally block, so a later analysis gives identical "
        "numbers. Patching results are cached like analyses, keyed on the model revision, both texts, the answers, "
        "the settings and the core version.",
    ),
]
