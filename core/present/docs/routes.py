"""Direct logit attribution, promoted/suppressed tokens and information-flow routes.

Add an entry with `_e(...)` beside its siblings (fields: core.present.docs.entry.DocEntry); a pitfall or
reference used by more than one module lives in core.present.docs.shared."""

from __future__ import annotations

from core.present.docs.entry import DocEntry, _e
from core.present.docs.shared import R_NOSTALGEBRAIST

R_ELHAGE = "Elhage, N. et al. (2021). A mathematical framework for transformer circuits."
R_FERRANDO = (
    "Ferrando, J. & Voita, E. (2024). Information flow routes: automatically interpreting language models at scale."
)
R_LLMTT = "Tufanov, I. et al. (2024). LM Transparency Tool: interactive tool for analyzing transformer language models."
R_GEVA = (
    "Geva, M. et al. (2022). Transformer feed-forward layers build predictions by promoting concepts in the "
    "vocabulary space."
)
P_FROZEN = (
    "The norms' statistics are frozen at this run (LayerNorm's mean and σ, RMSNorm's rms): a part's value is "
    "its direct effect given the normalisation the whole residual received. Removing the part would change "
    "that normalisation and everything downstream, so DLA is not the effect of ablating it (see patching and "
    "ablation for that)."
)
P_POST_LN = (
    "Post-LN models (BERT, RoBERTa, DistilBERT, MiniLM) renormalise the residual stream after every sublayer: "
    "each part passes every later LayerNorm (frozen), and the masked-LM head's GELU is read as u·g(u) with "
    "the gate g(u) = GELU(u)/u frozen at the actual pre-activation (exact because GELU(u) = u·Φ(u)). The "
    "parts still sum to the logit exactly, but they depend on the frozen statistics and the frozen gate "
    "more than in a pre-LN model (GPT-2, Llama), where only the final norm is frozen."
)

_PEERS: list[DocEntry] = [
    _e(
        key="direct_logit_attribution",
        title="Direct logit attribution",
        kind="attribution",
        short=(
            "Direct logit attribution: the token's logit split into embedding, heads, MLPs and biases, read through "
            "the frozen final norm and the unembedding."
        ),
        formula_latex=(
            r"z_y = \sum_{c} W_U[y]\cdot\big(s \odot P(c)\big) + \beta\cdot W_U[y] + b_U[y],\qquad "
            r"c \in \{\,e_t,\ z^{l,h}_t W_O^{l,h},\ b_O^{l},\ m^{l}_t\,\},\qquad s = \gamma/\sigma_t"
        ),
        formula_plain=(
            "z_y = Σ_c W_U[y] · (s ⊙ P(c)) + β·W_U[y] + b_U[y]; parts c = the embedding output e_t, each head's "
            "output z_t^{l,h} W_O^{l,h} (its slice of the output projection's input), the output biases "
            "b_O^l, the MLP outputs m_t^l; s = γ/σ_t the final norm's scale frozen at the final state "
            "(LayerNorm also centres: P(c) = c − mean(c); RMSNorm: P = identity, s = γ/rms_t)"
        ),
        definition=(
            "Because every map after the residual stream is linear once the norms' statistics are frozen, "
            "the logit of the attributed token (the model's top prediction at the target position) is exactly "
            "the sum of one number per part of the residual stream: the embedding output (token + position "
            "embeddings), every head's output, every attention output bias, every MLP output (its own bias "
            "included) and each norm's shift β, plus the unembedding bias. Layer 0 is the embedding, 1…L the "
            "blocks, L+1 the head (final norm shift, masked-LM head biases, unembedding bias). The page shows "
            "layers × heads with an MLP column; the result records how far the sum is from the model's own logit. "
            "Gemma-2's final soft-cap c·tanh(z/c) multiplies every part by the same frozen ratio cap(z)/z."
        ),
        high="A large positive part writes directly in the direction of the token's unembedding: it promotes it.",
        low="A large negative part suppresses the token directly (e.g. anti-induction or copy-suppression heads).",
        encoder_vs_decoder=(
            "Exact on both. On pre-LN decoders only the final norm is frozen; on post-LN encoders every "
            "later LayerNorm and the masked-LM head's GELU gate are frozen too (see the pitfalls). Not "
            "available for an encoder without a language-model head."
        ),
        pitfalls=[
            P_FROZEN,
            P_POST_LN,
            "Direct effects only: a head whose output is read by later heads or MLPs (indirect effect) can matter "
            "a lot and still have a small DLA.",
            "The MLP column is the whole MLP (its output bias included); per-neuron attribution is not shown.",
        ],
        references=[R_ELHAGE, R_NOSTALGEBRAIST],
        sources=[
            "dla.position",
            "dla.token_id",
            "dla.token",
            "dla.logit",
            "dla.n_layers",
            "dla.n_heads",
            "dla.layers",
            "dla.components",
            "dla.heads",
            "dla.values",
            "dla.sum_abs_error",
            "dla.residual",
            "dla.method",
            "dla.notes",
        ],
    ),
    _e(
        key="promoted_tokens",
        title="Promoted and suppressed tokens",
        kind="attribution",
        short=(
            "Promoted / suppressed tokens: the vocabulary entries a block's or head's update raises and lowers most, "
            "read through the frozen final norm and the unembedding."
        ),
        formula_latex=r"\Delta z = W_U\,\big(s_t \odot P(u)\big),\qquad \text{top-}k\ \Delta z\ \text{and}\ \text{top-}k\ (-\Delta z)",
        formula_plain=(
            "Δz = W_U (s_t ⊙ P(u)) for an update u (a block's attention or MLP update, or one head's output) "
            "at position t, s_t the final norm's scale frozen at that position; the k largest and the k "
            "smallest Δz"
        ),
        definition=(
            "Reads an update in vocabulary space, as the LLM Transparency Tool does for blocks and heads: "
            "which tokens it pushes up and which it pushes down, directly. Block updates are stored for the "
            "positions of the text (all positions, or on a CPU a window around the target bounded by a "
            "compute budget: each row costs one product with the whole vocabulary), each head at the "
            "target position; choosing among them on the page runs nothing."
        ),
        high="Tokens at the top of the promoted list are what the update argues for.",
        low="Tokens at the top of the suppressed list are what it argues against.",
        encoder_vs_decoder="Post-LN models read the update through every later (frozen) LayerNorm and the MLM head.",
        pitfalls=[
            P_FROZEN,
            "Logit differences, not probabilities: a promoted token can stay improbable.",
            "Read before Gemma-2's soft-cap (the cap only rescales).",
        ],
        references=[R_GEVA, R_LLMTT],
        sources=[
            "dla.promote_positions",
            "dla.promote_block_ids",
            "dla.promote_block_logits",
            "dla.demote_block_ids",
            "dla.demote_block_logits",
            "dla.promote_head_ids",
            "dla.promote_head_logits",
            "dla.demote_head_ids",
            "dla.demote_head_logits",
            "dla.token_texts",
        ],
    ),
    _e(
        key="flow_routes",
        title="Information-flow routes",
        kind="attribution",
        short=(
            "Information-flow routes: the graph of residual states the chosen token's prediction is built from, "
            "edges = contributions above a threshold."
        ),
        formula_latex=(
            r"\mathrm{prox}(c, y) = \max(\lVert y\rVert_1 - \lVert y - c\rVert_1,\ 0),\qquad "
            r"w(c \to y) = \frac{\mathrm{prox}(c, y)}{\sum_{c'} \mathrm{prox}(c', y)},\qquad "
            r"c_{j\to i} = \sum_h A^{l,h}_{ij}\, v^{l,h}_j W_O^{l,h}"
        ),
        formula_plain=(
            "prox(c, y) = max(‖y‖₁ − ‖y − c‖₁, 0); w(c → y) = prox(c, y) / Σ_c' prox(c', y); the parts of the "
            "state after attention y_i are the residual x_i, one vector per source token "
            "c_{j→i} = Σ_h A_ij^{l,h} v_j^{l,h} W_O^{l,h} and the output bias; after the MLP: the residual "
            "and the MLP update"
        ),
        definition=(
            "Ferrando & Voita (2024) build, from one forward pass, a graph whose nodes are residual states "
            "(layer, position) and whose edges carry how much of a state comes from each earlier state: "
            "attention edges j → i (through all heads of a block), residual edges and MLP edges. Each state's "
            "contributions are in [0, 1] and sum to 1. Keeping the edges above a threshold (default 0.04, as in "
            "the LLM Transparency Tool) and walking back from the chosen token's last state gives its routes. "
            "The result holds every contribution (attention [L, T, T]; residual, attention bias, MLP and MLP "
            "residual [L, T]) and, for edges of at least 0.005, each head's own proximity share (the "
            "tooltips). "
            "Changing the token or the threshold only prunes these arrays."
        ),
        high="A thick edge: the state is mostly made of that source (a token it attends to, the MLP, or the residual).",
        low="Thin or pruned edges: minor contributions; below the threshold they disappear from the graph.",
        encoder_vs_decoder=(
            "Decoders attend only to earlier tokens, so routes run left to right; encoders route from "
            "both sides. Post-LN models split the sum their residual LayerNorm receives."
        ),
        pitfalls=[
            "Proximity is a heuristic share of a sum, not a causal effect; a part opposite to the whole gets 0.",
            "Per-head rows are proximities of sub-parts under the same normaliser and need not add up to the "
            "edge weight; the edge is the proximity of the token's summed vector, as in the paper (the LLM "
            "Transparency Tool makes every token-head pair a part, H times the cost).",
            "The residual edge usually dominates; a low threshold shows more routes but a dense, hard-to-read graph.",
        ],
        references=[R_FERRANDO, R_LLMTT],
        sources=[
            "flow.n_layers",
            "flow.n_heads",
            "flow.tokens",
            "flow.attn",
            "flow.attn_residual",
            "flow.attn_bias",
            "flow.mlp",
            "flow.mlp_residual",
            "flow.head_layer",
            "flow.head_target",
            "flow.head_source",
            "flow.head_index",
            "flow.head_weight",
            "flow.position",
            "flow.threshold",
            "flow.notes",
        ],
    ),
    _e(
        key="fig_dla",
        title="Direct logit attribution map",
        kind="figure",
        short="Each head's and each MLP's direct contribution to the attributed token's logit.",
        definition="Layers (rows, first block at the bottom) × heads, plus one MLP column, in diverging colours.",
        how_to_read=(
            "Red cells push the token up, blue cells push it down; white is no direct effect. The title gives "
            "the embedding's and the biases' totals, which complete the sum to the logit."
        ),
        files=["plots/direct_logit_attribution.png"],
    ),
    _e(
        key="fig_flow_routes",
        title="Information-flow routes graph",
        kind="figure",
        short="The routes to the chosen token: states as dots, contributions above the threshold as edges.",
        definition=(
            "A layered drawing: x = token position, y = stage (embeddings at the bottom; per block the state "
            "after attention, the MLP (red dot) and the block output)."
        ),
        how_to_read=(
            "Follow the thick lines down from the top: blue edges are attention from another token, grey the "
            "residual stream, red the MLP. A route that jumps to another token shows where the information "
            "was moved from."
        ),
        files=["plots/flow_routes.png"],
    ),
]

ENTRIES: list[DocEntry] = [*_PEERS]
