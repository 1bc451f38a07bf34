"""Predictions (next token, mask fill, generation) and the logit lens.

Add an entry with `_e(...)` beside its siblings (fields: core.present.docs.entry.DocEntry); a pitfall or
reference used by more than one module lives in core.present.docs.shared."""

from __future__ import annotations

from core.present.docs.entry import DocEntry, _e
from core.present.docs.shared import P_LAST_PRE_NORM, R_NOSTALGEBRAIST

R_DEVLIN = "Devlin, J. et al. (2019). BERT: pre-training of deep bidirectional transformers for language understanding."
R_RADFORD = "Radford, A. et al. (2019). Language models are unsupervised multitask learners."
R_HOLTZMAN = "Holtzman, A. et al. (2020). The curious case of neural text degeneration."
R_BELROSE = "Belrose, N. et al. (2023). Eliciting latent predictions from transformers with the tuned lens."

_PREDICTION: list[DocEntry] = [
    _e(
        key="mask_fill",
        title="Mask filling",
        kind="prediction",
        short="Mask filling: top-k tokens by softmax probability at each mask position.",
        formula_latex=r"p(w \mid x_{\setminus i}) = \mathrm{softmax}(z_i)_w,\qquad z_i = \mathrm{head}_{\mathrm{MLM}}(h^{L}_i)",
        formula_plain="p(w | context) = softmax(z_i)_w at each mask position i;  the top-k words are listed",
        definition=(
            "For a masked language model, the probability distribution over the vocabulary at each [MASK] "
            "position, given the whole (bidirectional) context. The top-k candidates are listed."
        ),
        high="A confident fill: one candidate takes most of the probability.",
        low="Many plausible fills, or the context does not constrain the word.",
        encoder_vs_decoder=(
            "Only masked LMs (BERT family); encoders without an LM head show a calm 'unavailable' message instead."
        ),
        pitfalls=[
            "Word pieces: a candidate may be a fragment of a word.",
            "Probabilities are calibrated only roughly; compare the ranking rather than absolute values.",
        ],
        references=[R_DEVLIN],
        sources=[
            "predictions.kind",
            "predictions.message",
            "predictions.positions",
            "predictions.candidates",
            "predictions.top_k",
        ],
    ),
    _e(
        key="next_token",
        title="Next-token prediction",
        kind="prediction",
        short="Next-token prediction: top-k tokens by softmax probability at the last position.",
        formula_latex=r"p(w \mid x_{\le T}) = \mathrm{softmax}(z_T)_w,\qquad z_T = W_U\,\mathrm{norm}(h^{L}_T)",
        formula_plain="p(w | x_1..x_T) = softmax(z_T)_w,  z_T = W_U · norm(h_T^L)   (top-k listed)",
        definition=(
            "For a causal language model, the distribution of the next token after the text, from the "
            "logits at the last position."
        ),
        high="A confident continuation.",
        low="An open continuation: many tokens are plausible.",
        encoder_vs_decoder="Only causal LMs (GPT-2, Llama).",
        pitfalls=[
            "Token strings may start with a space marker (Ġ or ▁).",
            "Chat models expect their chat template; raw text may give odd predictions.",
        ],
        references=[R_RADFORD],
        sources=["predictions.kind", "predictions.candidates"],
    ),
    _e(
        key="generation",
        title="Text generation",
        kind="prediction",
        short="Generation: tokens sampled one at a time from the (temperature / top-p) next-token distribution.",
        formula_latex=(
            r"x_{T+1} \sim \mathrm{softmax}(z_T/\tau)\ \text{restricted to the top-}p\text{ nucleus},"
            r"\qquad \tau = \text{temperature}"
        ),
        formula_plain="x_(T+1) ~ softmax(z_T / τ) restricted to the top-p nucleus (greedy when sampling is off)",
        definition=(
            "Continues the text token by token with the causal model (streamed), using the generation "
            "settings: maximum new tokens, temperature, top-p, greedy or sampled, chat template when the "
            "model has one. Not part of the analysis result."
        ),
        high="High temperature: more varied, less likely text.",
        low="Low temperature / greedy: deterministic, often repetitive text.",
        encoder_vs_decoder="Causal LMs only.",
        pitfalls=[
            "Sampling is random: two runs differ unless seeded.",
            "Greedy decoding tends to repeat itself (Holtzman et al. 2020).",
        ],
        references=[R_HOLTZMAN, R_RADFORD],
        sources=["core.steps.predictions:generate_stream"],
    ),
]

_LENS: list[DocEntry] = [
    _e(
        key="logit_lens",
        title="Logit lens",
        kind="logit_lens",
        short="Logit lens: each layer's residual state decoded with the final norm and the unembedding.",
        formula_latex=(
            r"p^{l}(w) = \mathrm{softmax}\big(W_U\,\mathrm{norm}(h^{l}_{t})\big)_w\ \text{(causal)},\ "
            r"\mathrm{softmax}\big(\mathrm{head}_{\mathrm{MLM}}(h^{l}_{t})\big)_w\ \text{(masked)},\qquad "
            r"\mathcal{H}^{l} = -\sum_w p^{l}(w)\ln p^{l}(w)"
        ),
        formula_plain=(
            "p_l(w) = softmax(W_U · norm(h_t^l))_w (causal LMs; masked LMs: the MLM head) for every layer l;  "
            "entropy_l = −Σ_w p_l(w) ln p_l(w)"
        ),
        definition=(
            "Reads the model's 'current guess' at each layer by applying the final norm and the output "
            "embedding to the intermediate residual stream. Because the captured last state is taken before "
            "the final norm, the last lens layer equals the model's own prediction. The probability of the "
            "final prediction is followed through the layers; the grid shows the top token for every layer "
            "and decoded position (all positions, unless a long text bounds them to a window). The result "
            "names the head that was applied and checks that the last layer reproduces the model's logits; "
            "ln of the vocabulary size is the entropy of a uniform guess."
        ),
        high="P(final prediction) high early: the prediction is formed in early layers.",
        low="P(final prediction) low until the last layers: the prediction appears late.",
        encoder_vs_decoder=(
            "Works well on decoders (GPT-2); on masked LMs the middle layers decode poorly because the "
            "LM head expects last-layer features. Not available without an LM head."
        ),
        pitfalls=[
            "Early layers are not trained to be decoded this way: noise there is expected (the tuned lens "
            "corrects for it; Belrose et al. 2023).",
            P_LAST_PRE_NORM,
            "On a CPU the grid of a long text is decoded only in a window of positions around the lens position "
            "(each decoded cell costs one product with the whole vocabulary: the full grid is ~4× a forward pass "
            "for GPT-2 at 128 tokens; the window costs about 5 % of one, at least 4 positions); the Full "
            "logit-lens grid setting decodes all of them. The last layer's row is read from the model's own "
            "logits, which equal its decoding.",
        ],
        references=[R_NOSTALGEBRAIST, R_BELROSE],
        sources=[
            "logit_lens.position",
            "logit_lens.layers",
            "logit_lens.top_tokens",
            "logit_lens.top_ids",
            "logit_lens.top_probs",
            "logit_lens.final_token",
            "logit_lens.final_token_id",
            "logit_lens.final_prob",
            "logit_lens.entropy",
            "logit_lens.grid_tokens",
            "logit_lens.grid_probs",
            "logit_lens.grid_ids",
            "logit_lens.grid_positions",
            "logit_lens.method",
            "logit_lens.last_layer_max_abs_diff",
            "logit_lens.vocab_size",
        ],
    ),
]

ENTRIES: list[DocEntry] = [*_PREDICTION, *_LENS]
