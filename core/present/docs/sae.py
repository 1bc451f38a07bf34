"""Sparse-autoencoder features (core.model.sae, core.steps.sae, core.figures.sae).

Add an entry beside its siblings (fields: core.present.docs.entry.DocEntry); a pitfall or reference used by more
than one module lives in core.present.docs.shared."""

from __future__ import annotations

from typing import Any

from core.present.docs.entry import DocEntry, _e

R_BRICKEN = "Bricken, T. et al. (2023). Towards monosemanticity: decomposing language models with dictionary learning."
R_CUNNINGHAM = (
    "Cunningham, H. et al. (2023). Sparse autoencoders find highly interpretable features in language models."
)
R_RAJAMANOHARAN = (
    "Rajamanoharan, S. et al. (2024). Jumping ahead: improving reconstruction fidelity with JumpReLU sparse "
    "autoencoders."
)
R_GAO = "Gao, L. et al. (2024). Scaling and evaluating sparse autoencoders."
R_BLOOM = "Bloom, J. et al. (2024). SAELens (software)."

P_RECONSTRUCTION = (
    "A feature view over an SAE that reconstructs poorly misleads: what the SAE misses (the error term x − x̂) is "
    "not in any feature. Read FVU and the cosine first; an SAE trained on another model, another hook or other "
    "text (a model-name warning) often reconstructs badly."
)

SAE_ENTRIES: list[dict[str, Any]] = [
    dict(
        key="sae_features",
        title="Sparse-autoencoder features",
        kind="neurons",
        short="Which features of a sparse autoencoder fire at each token (SAELens folders, read at the SAE's hook).",
        formula_latex=(
            r"x' = n_{in}(x) - b_{dec}[\text{apply}] \qquad p = x' W_{enc} + b_{enc} \qquad "
            r"f = \mathrm{ReLU}(p) \;|\; \mathrm{ReLU}(p)\,[p > \theta] \;|\; \mathrm{TopK}_k(\mathrm{ReLU}(p)) "
            r"\qquad L_0 = \#\{i: f_i > 0\}"
        ),
        formula_plain=(
            "x' = norm_in(x) − b_dec·[apply_b_dec_to_input];  p = x' W_enc + b_enc;  f = ReLU(p) (standard) | "
            "ReLU(p)·[p > θ] (JumpReLU) | ReLU(p) on the k largest p, 0 elsewhere (TopK);  L0 = #{i : f_i > 0}"
        ),
        definition=(
            "A sparse autoencoder (SAE) rewrites one activation x of the model (the residual stream entering or "
            "leaving a block, an attention or MLP update, or the per-head attention output z) as a sparse, "
            "non-negative combination of many learned directions: x ≈ x̂ = Σ_i f_i W_dec[i] + b_dec. Each i is a "
            "feature; f_i is how strongly it is present at the token. The folder is read as SAELens writes it "
            "(cfg.json + sae_weights.safetensors, never a pickle); hook names follow TransformerLens "
            "(blocks.l.hook_resid_pre …) and are mapped onto the model through the architecture map. The "
            "activation comes from the same forward pass as every other view. Every active feature of a token is "
            "kept, up to its 64 strongest; L0 counts them all. normalize_activations: constant_norm_rescale "
            "scales x to norm √d_in, layer_norm standardises it (x̂ is mapped back); none and "
            "expected_average_only_in leave x as it is (SAELens folds the latter's factor into the weights)."
        ),
        high=(
            "A large activation: the feature's direction is strongly present. A feature that fires on tokens of "
            "one kind across the strip is a candidate concept; its logit effect says what it writes."
        ),
        low=(
            "Zero: the feature is off (most are, at every token). A token with a small L0 is explained by few "
            "features; a large L0 (hundreds) usually means the SAE is out of its training distribution there."
        ),
        encoder_vs_decoder=(
            "Public SAEs are trained on decoders (GPT-2, Pythia, Gemma, Llama); an encoder's activations are read "
            "the same way, but its features see both sides of the token. The first token of a causal model "
            "(BOS, huge norm) is usually excluded from SAE training: its features and error are atypical."
        ),
        pitfalls=[
            P_RECONSTRUCTION,
            "Dead features never fire and dense features fire on most tokens: neither says much about one text.",
            "Feature splitting: a wider SAE splits one concept into several narrower features, so a feature's "
            "meaning depends on the SAE's width; compare features within one SAE.",
            "A feature is a direction the SAE found useful, not a proven mechanism: test it (ablate it) before "
            "relying on it.",
        ],
        references=[R_BRICKEN, R_CUNNINGHAM, R_RAJAMANOHARAN, R_GAO, R_BLOOM],
        sources=["sae.saes", "core.model.sae:load_sae"],
    ),
    dict(
        key="sae_reconstruction",
        title="SAE reconstruction: FVU and cosine",
        kind="neurons",
        short="How much of the activation the SAE misses: fraction of variance unexplained (0 = perfect) and cosine.",
        formula_latex=(
            r"\mathrm{FVU}_t = \frac{\lVert x_t - \hat x_t \rVert^2}{\frac{1}{n}\sum_{s \in S} \lVert x_s - \bar x \rVert^2}"
            r" \qquad \mathrm{FVU} = \frac{1}{n}\sum_{t \in S} \mathrm{FVU}_t \qquad "
            r"\cos_t = \frac{x_t \cdot \hat x_t}{\lVert x_t\rVert \lVert \hat x_t \rVert}"
        ),
        formula_plain=(
            "FVU_t = ‖x_t − x̂_t‖² / ((1/n) Σ_{s∈S} ‖x_s − x̄‖²);  FVU = (1/n) Σ_{t∈S} FVU_t;  "
            "cos_t = x_t·x̂_t / (‖x_t‖ ‖x̂_t‖)"
        ),
        definition=(
            "S is the text's n ordinary tokens: special tokens (BOS, CLS, SEP, …) are left out of x̄ and of the "
            "overall FVU, as SAELens's evaluations leave them out (a decoder's BOS state has a norm tens of times "
            "the others' and SAEs are trained without it, so it would decide the whole text's FVU); their FVU_t is "
            "still given, against the same denominator (S is every token when fewer than 2 are ordinary). x̄ is "
            "the mean activation over S. The overall FVU is the share of the text's activation variance that the "
            "reconstruction leaves unexplained (SAELens reports 1 − FVU as explained variance); the per-token "
            "values over S average to it, so a token with FVU_t far above the mean is where the SAE fails. A "
            "one-token text has no variance: FVU is undefined (NaN)."
        ),
        high="FVU near or above 1: the SAE explains nothing of this text; its features should not be read.",
        low="FVU near 0 and cosine near 1: the features account for the activation.",
        encoder_vs_decoder=(
            "Same for both; a decoder's first token (BOS) usually has a far larger norm and error, one reason the "
            "special tokens are left out of the overall FVU."
        ),
        pitfalls=[
            P_RECONSTRUCTION,
            "The denominator is this text's variance: a short or repetitive text has little variance, which "
            "inflates FVU. Compare FVU across SAEs on the same text.",
        ],
        references=[R_BRICKEN, R_GAO],
        sources=["sae.saes"],
    ),
    dict(
        key="sae_logit_effect",
        title="SAE feature logit effect",
        kind="neurons",
        short="What a feature writes: its decoder row through the frozen final norm and the unembedding, per unit.",
        formula_latex=(
            r"\Delta z_{f} = W_U\,\big(\gamma / \sigma_{t^*} \odot P(d_f)\big), \quad "
            r"d_f = W_{dec}[f]\;(\text{hook\_z: } W_{dec}[f]\,W_O), \quad t^* = \arg\max_t f_t"
        ),
        formula_plain=(
            "Δz_f = W_U (γ/σ_t* ⊙ P(d_f)) with d_f = W_dec[f] (hook_z: W_dec[f] W_O), P = centring for LayerNorm, "
            "σ frozen at t* = the position where f is strongest"
        ),
        definition=(
            "The direct effect of one unit of feature f on the logits, read as the direct logit attribution view "
            "reads a head or an MLP: the decoder direction enters the residual stream, passes the final norm with "
            "its statistics frozen at the feature's strongest position, and the unembedding. Multiply by the "
            "activation for the feature's contribution at a token. The top 10 promoted and suppressed tokens are "
            "kept for the strongest features (always those of the target position) within a fixed compute budget."
        ),
        high="Tokens with a large positive effect are those the feature pushes the model to predict.",
        low="Large negative effects: tokens it suppresses. Features of early layers often have no readable effect.",
        encoder_vs_decoder=(
            "Only pre-LN models with a language-model head: in a post-LN encoder every later LayerNorm rescales "
            "the direction, so there is no direct path (the page says so)."
        ),
        pitfalls=[
            "A direct effect ignores everything the later layers do with the direction: a feature can matter "
            "through later heads and MLPs while its direct effect is small. Ablate it to see the total effect.",
            "The frozen σ is that of one position; at another position the same direction is scaled differently "
            "(the ranking of tokens does not change, the sizes do).",
        ],
        references=[R_BRICKEN, R_BLOOM],
        sources=["sae.saes"],
    ),
    dict(
        key="sae_feature_ablation",
        title="SAE feature ablation and steering",
        kind="causal",
        short="Remove or rescale one feature's contribution a_f · W_dec[f] at its hook, or the SAE's error term.",
        formula_latex=(
            r"x_t \gets x_t + (s - 1)\,c_t, \quad c_t = \hat x(f_t) - \hat x(f_t \text{ with } f_{t,f}=0)"
            r" \;(= f_{t,f}\,W_{dec}[f]) \qquad \text{error: } x_t \gets \hat x_t"
        ),
        formula_plain=(
            "x_t ← x_t + (s − 1)·c_t with c_t = x̂(f_t) − x̂(f_t with feature f set to 0) (= a_f · W_dec[f] "
            "without normalisation); s = 0 ablates; removing the error term sets x_t ← x̂_t"
        ),
        definition=(
            "One forward pass with the SAE's site changed by a hook at the named module: the feature's "
            "contribution is removed (s = 0) or scaled (s = 2 doubles it) at every position or the chosen ones, "
            "and the change of the logits is the feature's total causal effect through the rest of the model."
        ),
        high="A large drop of the prediction's logit: the feature matters for it.",
        low="No change: the prediction does not go through this feature (or other features make up for it).",
        encoder_vs_decoder="Same for both; in a causal model only positions ≥ the changed one are affected.",
        pitfalls=[
            "Removing the error term changes the input by x − x̂ at every token: with a poor SAE that alone moves "
            "the logits a lot, so compare a feature's effect with the error term's.",
        ],
        references=[R_BRICKEN, R_CUNNINGHAM],
        sources=["core.steps.sae:intervene"],
    ),
    dict(
        key="sae_feature_patching",
        title="SAE feature patching",
        kind="causal",
        short="Patch one feature (or the SAE's error term) from the clean run into the corrupted run: restored share.",
        formula_latex=(
            r"x_t^{\text{corr}} \gets x_t^{\text{corr}} + (c_t^{\text{clean}} - c_t^{\text{corr}}), \quad "
            r"c_t = \hat x(f_t) - \hat x(f_t \text{ with } f_{t,F}=0) \;(= f_{t,F}\,W_{dec}[F]) \qquad "
            r"\text{restored} = \frac{m_{\text{patched}} - m_{\text{corr}}}{m_{\text{clean}} - m_{\text{corr}}}"
        ),
        formula_plain=(
            "x_t^corr ← x_t^corr + (c_t^clean − c_t^corr) with c_t = x̂(f_t) − x̂(f_t with feature F set to 0) "
            "(= a_F · W_dec[F] without normalisation); error term e_t = x_t − x̂_t likewise; restored = "
            "(m_patched − m_corr) / (m_clean − m_corr), m = logit(A) − logit(B) at the target; ablation: "
            "Δm = m(clean with x_t ← x_t − c_t^clean) − m_clean"
        ),
        definition=(
            "Activation patching with a sparse-autoencoder feature as the site: the corrupted run is repeated with "
            "the feature's contribution at the SAE's hook replaced by the clean run's, at one position at a time "
            "and at every position at once, and scored like every patching row (1 = the clean answer is fully "
            "restored, 0 = no effect). The SAE's error term x − x̂ is patched the same way, and the whole hook "
            "activation at every position for comparison: for an SAE without normalisation, the error term plus "
            "every feature is exactly the whole activation (b_dec cancels). Ablation removes the feature (or the "
            "error term) from the clean run and reports the change Δm of the metric: the feature's total effect "
            "on this answer."
        ),
        high=(
            "A restored share near the whole site's: this one feature carries what the hook carries for the "
            "answer. A large negative Δm on ablation: the clean answer needs it."
        ),
        low=(
            "Near 0 while the whole site restores much: the answer is carried by other features or by the error "
            "term (compare the error row)."
        ),
        encoder_vs_decoder=(
            "Same for both; in a causal model positions after the target cannot change it (they keep m_corrupted)."
        ),
        pitfalls=[
            P_RECONSTRUCTION,
            "A large restored share for the error term means the SAE misses what matters here: no feature "
            "reading of this hook explains the answer.",
            "Patching a feature keeps every other feature at its corrupted value; features that split one concept "
            "(feature splitting) can each restore little while together they restore much.",
            "The feature's activation in the corrupted run is read with the SAE's encoder; a feature off in both "
            "runs restores 0 by construction (the page warns).",
        ],
        references=[R_BRICKEN, R_CUNNINGHAM, R_BLOOM],
        sources=["core.studies.sae_patching:run_sae_patching"],
    ),
    dict(
        key="fig_sae_heatmap",
        title="SAE features × positions",
        kind="figure",
        short="The strongest features of the text (rows) over its tokens (columns), shaded by activation.",
        definition="The 20 features with the largest activation anywhere in the text; one SAE per figure.",
        how_to_read=(
            "A row lit on one token is a specific feature; a row lit on most tokens is a dense feature; "
            "columns with many lit rows are tokens of high L0. The title gives the SAE's FVU on this text."
        ),
        pitfalls=[P_RECONSTRUCTION],
        files=["plots/sae*_heatmap.png"],
    ),
    dict(
        key="fig_sae_strips",
        title="SAE feature token strips",
        kind="figure",
        short="The text once per strong feature, each token shaded by the feature's activation there.",
        definition="The six strongest features; each strip is scaled to the feature's maximum in the text.",
        how_to_read="Dark tokens are where the feature fires; the framed token is the target position.",
        files=["plots/sae*_strips.png"],
    ),
    dict(
        key="fig_sae_target",
        title="SAE features of the target token",
        kind="figure",
        short="The strongest features at the target position, with the tokens each promotes (+) and suppresses (−).",
        definition="Bars: activations at the target position; text: top three promoted and suppressed tokens.",
        how_to_read=(
            "The longest bars are what the SAE says the activation is made of at this token; the + and − lists "
            "are the features' direct logit effects per unit activation."
        ),
        files=["plots/sae*_target.png"],
    ),
]

ENTRIES: list[DocEntry] = [_e(**kw) for kw in SAE_ENTRIES]
