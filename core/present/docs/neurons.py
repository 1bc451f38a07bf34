"""Neuron factors and the query-key view.

Add an entry with `_e(...)` beside its siblings (fields: core.present.docs.entry.DocEntry); a pitfall or
reference used by more than one module lives in core.present.docs.shared."""

from __future__ import annotations

from core.present.docs.entry import DocEntry, _e
from core.present.docs.shared import P_NOT_EXPLANATION

R_VASWANI = "Vaswani, A. et al. (2017). Attention is all you need."
R_ALAMMAR = "Alammar, J. (2021). Ecco: an open source library for the explainability of transformer language models."
R_LEE_SEUNG = "Lee, D. D. & Seung, H. S. (1999). Learning the parts of objects by non-negative matrix factorization."
R_OLAH_BUILDING = "Olah, C. et al. (2018). The building blocks of interpretability."
R_VIG_TOOL = "Vig, J. (2019). A multiscale visualization of attention in the transformer model."
R_SU = "Su, J. et al. (2021). RoFormer: enhanced transformer with rotary position embedding."
R_AINSLIE = (
    "Ainslie, J. et al. (2023). GQA: training generalized multi-query transformer models from multi-head checkpoints."
)

_NEURONS: list[DocEntry] = [
    _e(
        key="neuron_factors",
        title="Neuron factors (NMF of MLP activations)",
        kind="neurons",
        short="NMF of the MLP neuron activations over the tokens: which tokens fire which groups of neurons together.",
        formula_latex=(
            r"A_{t,(l,n)} = \max(a^{l}_{t,n}, 0) \qquad A \approx W H,\; "
            r"W \in \mathbb{R}_{\ge 0}^{T\times k},\;"
            r" H \in \mathbb{R}_{\ge 0}^{k\times N} \qquad \min_{W,H \ge 0} \lVert A - WH \rVert_F"
        ),
        formula_plain=(
            "A[t, (l, n)] = max(a_l[t, n], 0);  A ≈ W H with W ≥ 0 (T × k), H ≥ 0 (k × N);  minimise ‖A − WH‖_F"
        ),
        definition=(
            "a_l[t] is the vector the MLP of block l feeds its output projection at token t: act(W_in x) for "
            "GPT-2 (gelu_new), BERT/MiniLM (gelu), act(gate x) ⊙ (up x) for Llama-style gated MLPs. The "
            "activations of the chosen layers are laid side by side (N = layers × neurons), negative values "
            "clipped to 0, and factorised by scikit-learn's NMF algorithm (coordinate descent, NNDSVDa start; its "
            "products computed by torch) into k factors (default 6, seeded). Column f "
            "of W shades the tokens (how strongly each token expresses factor f); row f of H ranks the neurons "
            "that make up the factor. The relative error ‖A − WH‖/‖A‖ and the clipped share of the activation "
            "mass are reported with the factors."
        ),
        high=(
            "A token dark in factor f strongly activates the neurons of f; factors that light up tokens of one kind "
            "(determiners, punctuation, a topic, the first token) are groups of neurons that fire together."
        ),
        low=(
            "A token pale in every factor is poorly explained by k factors (raise k) or activates mostly neurons the "
            "clipping removed."
        ),
        encoder_vs_decoder=(
            "Encoders see both sides, so a factor can mark a token by its right context too; in a "
            "causal model a factor at token t can only depend on tokens ≤ t. The first token of a "
            "causal model and [CLS]/[SEP] often form a factor of their own (huge-norm positions)."
        ),
        pitfalls=[
            "NMF is not unique: another seed or k can split or merge factors; compare factors within one run.",
            "Negative activations are clipped (as Ecco does). For GELU most neurons sit slightly below zero, so "
            "the clipped share of the mass is large even though each clipped value is small; for gated MLPs "
            "(SwiGLU) negative values are as informative as positive ones and are lost.",
            "A factor is a pattern over the tokens of ONE text, not a property of the model; top neurons are "
            "candidates to study, not proven features.",
            "W and H trade scale (WH = (Wc)(H/c)): read shading within a factor, not across factors.",
        ],
        references=[R_ALAMMAR, R_LEE_SEUNG, R_OLAH_BUILDING],
        sources=[
            "neuron_factors.layers",
            "neuron_factors.d_ff",
            "neuron_factors.n_factors",
            "neuron_factors.seed",
            "neuron_factors.token_factors",
            "neuron_factors.top_layer",
            "neuron_factors.top_neuron",
            "neuron_factors.top_weight",
            "neuron_factors.error",
            "neuron_factors.relative_error",
            "neuron_factors.clipped_fraction",
            "neuron_factors.n_iter",
        ],
    ),
    _e(
        key="query_key",
        title="Query–key view",
        kind="attention",
        short="For one head and query token: q, every key k_j, q ⊙ k_j, the scores and the softmax weights.",
        formula_latex=(
            r"s_j = c\,\langle q_i, k_j\rangle + m_{ij} = c \sum_d (q_i \odot k_j)_d + m_{ij} \qquad "
            r"w_j = \frac{e^{s_j}}{\sum_{j'} e^{s_{j'}}} \qquad c = 1/\sqrt{d_{head}}"
        ),
        formula_plain=(
            "s_j = c · Σ_d (q_i ⊙ k_j)_d + m_ij;  w_j = exp(s_j) / Σ_j' exp(s_j');  c = 1/√d_head, "
            "m_ij = −∞ for masked keys"
        ),
        definition=(
            "q_i and k_j are the head's query and key vectors (the q/k projections of the block's attention "
            "input; rotary models after the rotation, exactly as the model applies it). Grouped-query models "
            "(Llama, Mistral, Qwen2) share one key head among H/H_kv query heads. The elementwise product "
            "q ⊙ k_j shows which dimensions add up to the score; the softmaxed scores are the attention "
            "weights of that row (tested equal to the captured weights). GPT-2 configured with "
            "scale_attn_by_inverse_layer_idx divides c by l + 1."
        ),
        high=(
            "A large score comes from dimensions where q and k_j agree in sign and are both large: a few dark cells "
            "in q ⊙ k_j often carry the whole weight."
        ),
        low=(
            "A low score (or −∞) means disagreeing dimensions, or a masked key: later tokens in a causal model, "
            "padding, or positions outside a sliding window."
        ),
        encoder_vs_decoder=(
            "Causal models mask every key after the query (weight 0, score −∞); encoders score all "
            "keys. Rotary models' q and k depend on position, so the same token at another position "
            "has another key."
        ),
        pitfalls=[
            "Scores are shift-invariant under the softmax: adding a constant to every s_j changes no weight, so "
            "compare scores within one row only.",
            "q and k are recomputed from the captured block inputs with the model's own norm and projections "
            "(no second forward pass), and the view is computed in float64: it matches a float32 model to "
            "1e-5, a bfloat16/float16 model (or float16 storage of long texts) to about 1e-3.",
            P_NOT_EXPLANATION,
        ],
        references=[R_VIG_TOOL, R_VASWANI, R_SU, R_AINSLIE],
        sources=[
            "query_key.queries",
            "query_key.keys",
            "query_key.scaling",
            "query_key.key_mask",
            "query_key.causal",
            "query_key.window",
            "query_key.rotary",
        ],
    ),
    _e(
        key="fig_neuron_factors",
        title="Neuron-factor shading",
        kind="figure",
        short="The text once per factor, each token shaded by the factor's strength; top neurons listed per factor.",
        definition=(
            "One block per NMF factor: the tokens shaded by W[t, f] / max_t W[t, f], the target token "
            "outlined, and the factor's heaviest neurons as L<layer>·N<neuron>; neuron_factor_neurons.png "
            "shows the ten heaviest neurons of every factor with their weights in H."
        ),
        how_to_read=(
            "Look for factors that light up one kind of token (function words, punctuation, a topic, "
            "positions); then look up their top neurons. Compare shades within a factor, not across."
        ),
        files=["plots/neuron_factors.png", "plots/neuron_factor_neurons.png"],
    ),
    _e(
        key="fig_query_key",
        title="Query–key view",
        kind="figure",
        short="q, the keys and q ⊙ k as heatmaps (rows = keys), with the scores and softmax weights as bars.",
        definition=(
            "For one layer, head and query: the query vector on top, each key vector and its elementwise "
            "product with the query (rows = key tokens, columns = dimensions, red positive, blue negative), "
            "and per key the score c·q·k and the attention weight. Texts longer than 40 tokens show the 40 "
            "keys with the largest weights. The bundle draws the target token's query in the last layer, "
            "head 0."
        ),
        how_to_read=(
            "Find the key with the largest weight, then the dark cells in its q ⊙ k row: those dimensions "
            "make the score. Red cells add to the score, blue cells subtract."
        ),
        files=["plots/query_key.png"],
    ),
]

ENTRIES: list[DocEntry] = [*_NEURONS]
