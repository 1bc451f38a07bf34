"""Layer metrics (core/steps/metrics.py): one entry per name in METRIC_NAMES.

Add an entry with `_e(...)` beside its siblings (fields: core.present.docs.entry.DocEntry); a pitfall or
reference used by more than one module lives in core.present.docs.shared."""

from __future__ import annotations

from core.present.docs.entry import DocEntry, _e
from core.present.docs.shared import (
    P_CENTRING,
    P_LAST_PRE_NORM,
    P_RANDOM_BASELINE,
    P_SPECIAL,
    P_TOKEN_BOUND,
    R_ETHAYARAJH,
    R_PR,
    R_ROY,
)

R_RECANATESI = "Recanatesi, S. et al. (2019). Dimensionality compression and expansion in deep neural networks."
R_ANSUINI = "Ansuini, A. et al. (2019). Intrinsic dimension of data representations in deep neural networks."
R_JOLLIFFE = "Jolliffe, I. T. (2002). Principal Component Analysis (2nd ed.)."
R_SHANNON = "Shannon, C. E. (1948). A mathematical theory of communication."

_LAYER: list[DocEntry] = [
    _e(
        key="effective_rank",
        title="Effective rank",
        kind="layer_metric",
        short="Effective rank: exp of the entropy of the normalised singular values of the token-centred states.",
        formula_latex=(
            r"\mathrm{erank}(H^{l}) = \exp\Big(-\sum_{k} p_k \ln p_k\Big),\qquad "
            r"p_k = \frac{\sigma_k}{\sum_j \sigma_j},\quad \sigma = \mathrm{svd}\big(H^{l} - \mathbf{1}\bar h^{l\top}\big)"
        ),
        formula_plain="erank(H) = exp(−Σ_k p_k ln p_k),  p_k = σ_k / Σ_j σ_j,  σ = singular values of H centred over tokens",
        definition=(
            "How many directions the token representations of a layer really spread over: the exponential of "
            "the Shannon entropy of the singular-value distribution of the T×D layer matrix, after "
            "subtracting the mean token vector. It lies between 1 and min(T−1, D)."
        ),
        high=("The tokens use many directions with similar strength: a rich, spread-out, isotropic representation."),
        low=(
            "A few directions dominate: tokens collapse onto a low-dimensional subspace (e.g. rank collapse in deep "
            "layers, or one outlier direction)."
        ),
        encoder_vs_decoder=(
            "Encoders (BERT) usually keep a fairly high effective rank through the middle layers and "
            "drop in the last ones; decoders (GPT-2) often show a sharp drop after the first blocks "
            "because a few outlier dimensions and the first-token sink dominate the residual stream."
        ),
        pitfalls=[P_TOKEN_BOUND, P_CENTRING, P_SPECIAL, P_LAST_PRE_NORM, P_RANDOM_BASELINE],
        references=[R_ROY, R_ETHAYARAJH],
        sources=["metric:effective_rank"],
    ),
    _e(
        key="participation_ratio",
        title="Participation ratio",
        kind="layer_metric",
        short="Participation ratio: (Σλ)²/Σλ² of the covariance eigenvalues; how many directions carry the variance.",
        formula_latex=(
            r"\mathrm{PR}(H^{l}) = \frac{\big(\sum_k \lambda_k\big)^2}{\sum_k \lambda_k^2},\qquad "
            r"\lambda_k \propto \sigma_k^2 \text{ (eigenvalues of the covariance of the centred } H^{l})"
        ),
        formula_plain="PR(H) = (Σ_k λ_k)² / Σ_k λ_k²,  λ_k ∝ σ_k² the covariance eigenvalues of H centred over tokens",
        definition=(
            "A variance-weighted count of dimensions: 1 when all variance lies on one axis, and equal to the "
            "number of axes when the variance is spread evenly over them. It is scale-free and weighs large "
            "eigenvalues more than the effective rank does (it uses σ², not σ)."
        ),
        high="Variance is spread over many principal directions.",
        low="Variance is concentrated in one or two principal directions (often a single outlier dimension).",
        encoder_vs_decoder=(
            "Decoders with massive activations (GPT-2 dims 138/378/447) often show a participation "
            "ratio close to 1-3 in the middle layers even when the effective rank is moderate; "
            "encoders usually stay higher."
        ),
        pitfalls=[
            P_TOKEN_BOUND,
            P_CENTRING,
            P_SPECIAL,
            "Very sensitive to a single large eigenvalue: compare it with the effective rank before concluding.",
        ],
        references=[R_PR, R_RECANATESI],
        sources=["metric:participation_ratio"],
    ),
    _e(
        key="intrinsic_dim_95",
        title="Intrinsic dimensionality (PCA, 95 %)",
        kind="layer_metric",
        short="Intrinsic dimensionality: the number of principal components that explain 95 % of the variance.",
        formula_latex=(
            r"d_{95}(H^{l}) = \min\Big\{k : \sum_{i=1}^{k} \lambda_i \ge 0.95 \sum_{j} \lambda_j\Big\},"
            r"\qquad \lambda_1 \ge \lambda_2 \ge \dots"
        ),
        formula_plain="d95(H) = min{k : λ_1 + … + λ_k ≥ 0.95 · Σ_j λ_j},  λ sorted descending (covariance eigenvalues of centred H)",
        definition=(
            "The smallest number of principal components of the token-centred layer matrix whose variance "
            "adds up to 95 % of the total. An integer between 1 and min(T−1, D)."
        ),
        high="Many components are needed to describe the token cloud: a high-dimensional representation.",
        low="A few components describe nearly all variation between the tokens.",
        encoder_vs_decoder=(
            "Follows the effective rank in shape; in decoders it can stay high while the participation "
            "ratio is near 1, because the 5 % tail spans many small directions."
        ),
        pitfalls=[
            P_TOKEN_BOUND,
            P_CENTRING,
            P_SPECIAL,
            "A linear (PCA) estimate: curved manifolds of low true dimension read as higher here.",
            "An integer count: it moves in steps, so small texts give a jagged curve.",
        ],
        references=[R_JOLLIFFE, R_ANSUINI],
        sources=["metric:intrinsic_dim_95"],
    ),
    _e(
        key="activation_entropy",
        title="Activation entropy",
        kind="layer_metric",
        short="Activation entropy: mean over tokens of the entropy of |h| normalised over the hidden units (nats).",
        formula_latex=(
            r"\mathcal{H}_{\mathrm{act}}(H^{l}) = \frac{1}{T}\sum_{t=1}^{T}\Big(-\sum_{j=1}^{D} p_{tj}\ln p_{tj}\Big),"
            r"\qquad p_{tj} = \frac{|h^{l}_{tj}|}{\sum_{i}|h^{l}_{ti}|}"
        ),
        formula_plain="H_act(H) = (1/T) Σ_t (−Σ_j p_tj ln p_tj),  p_tj = |h_tj| / Σ_i |h_ti|   (not centred; nats)",
        definition=(
            "How evenly each token's activation magnitude is spread over the hidden units, averaged over "
            "tokens. Computed on the raw (not centred) states, in nats; at most ln D."
        ),
        high="Activations are spread over many units (dense code).",
        low="A few units carry most of the magnitude (sparse code, or massive-activation outlier dimensions).",
        encoder_vs_decoder=(
            "Decoders often show a dip in the middle layers where a few outlier dimensions grow very "
            "large; encoders are usually flatter."
        ),
        pitfalls=[
            "Depends on the basis: it measures spread over the model's own hidden units, not over directions.",
            P_SPECIAL,
            "Its maximum ln D grows with the width, so compare models of equal width only.",
        ],
        references=[R_SHANNON],
        sources=["metric:activation_entropy"],
    ),
    _e(
        key="cosine_to_input",
        title="Cosine similarity to input",
        kind="layer_metric",
        short="Cosine to input: mean over tokens of cos(h_t at layer l, h_t at the embedding layer).",
        formula_latex=(
            r"\cos^{l} = \frac{1}{T}\sum_{t=1}^{T} \frac{\langle h^{l}_t, h^{0}_t\rangle}"
            r"{\lVert h^{l}_t\rVert\,\lVert h^{0}_t\rVert}"
        ),
        formula_plain="cos_l = (1/T) Σ_t ⟨h_t^l, h_t^0⟩ / (‖h_t^l‖ ‖h_t^0‖)   (h^0 = embedding output)",
        definition=(
            "How much each token's representation still points in the direction of its own input embedding, "
            "averaged over tokens. 1 at layer 0 by construction."
        ),
        high="The layer has changed the token little: the residual stream is still dominated by the embedding.",
        low="The layer has rewritten the token (contextualised it); near 0 means unrelated to the input direction.",
        encoder_vs_decoder=(
            "In residual decoders the value decays slowly and can rise again near the top (the "
            "unembedding is tied to the embedding in GPT-2); encoders move away faster in mid layers."
        ),
        pitfalls=[
            "Not centred: a large shared direction added by every layer lowers it for all tokens at once.",
            P_SPECIAL,
            P_LAST_PRE_NORM,
        ],
        references=[R_ETHAYARAJH],
        sources=["metric:cosine_to_input"],
    ),
]

ENTRIES: list[DocEntry] = [*_LAYER]
