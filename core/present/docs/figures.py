"""Figures and animations of the bundle: each entry names its files and says how to read it.

Add an entry with `_e(...)` beside its siblings (fields: core.present.docs.entry.DocEntry); a pitfall or
reference used by more than one module lives in core.present.docs.shared."""

from __future__ import annotations

from core.present.docs.entry import DocEntry, _e
from core.present.docs.shared import (
    P_NOT_EXPLANATION,
    P_RANDOM_BASELINE,
    P_TOKEN_BOUND,
    R_ABNAR,
    R_CLARK,
    R_JAIN,
    R_MICHEL,
    R_NOSTALGEBRAIST,
    R_SPEARMAN,
    R_SUNDARARAJAN,
    R_VIG,
    R_WIEGREFFE,
)

_FIGURES: list[DocEntry] = [
    _e(
        key="fig_layer_metrics",
        title="Layer metrics vs layer",
        kind="figure",
        short="The five layer metrics against the layer (0 = embeddings, last = before the final norm).",
        definition="One panel per layer metric, plotted against the layer index.",
        how_to_read=(
            "Read the shape, not the absolute values: a drop in effective rank or participation ratio "
            "marks a layer where the token cloud collapses onto few directions; a falling cosine to input "
            "marks where tokens are rewritten. The dashed line on the spectral panels is the token bound "
            "T−1 that they cannot exceed. The y-axes start at zero (the cosine axis spans 0 to 1), so a "
            'change looks as large as it is; the app\'s "Zoom to data" switch spans the data only.'
        ),
        pitfalls=[P_TOKEN_BOUND],
        files=["plots/layer_metrics.png"],
    ),
    _e(
        key="fig_metric_correlation",
        title="Metric correlation across layers",
        kind="figure",
        short="Correlation between the layer metrics across layers (Pearson: linear; Spearman: rank).",
        definition=(
            "The correlation of every pair of metrics computed over the L+1 layer values: Pearson r "
            "(linear) or Spearman ρ (Pearson on ranks, robust to monotone rescaling)."
        ),
        how_to_read=(
            "+1: two metrics rise and fall together through the layers; −1: one rises as the other falls; "
            "0: unrelated. With few layers (a 2-layer model has 3 points) correlations are very noisy. "
            "A blank cell means a metric has no correlation: it is constant over the layers, or it has "
            "missing values (the spectral metrics need at least 2 tokens)."
        ),
        pitfalls=["Computed over only L+1 points: not significance-tested.", P_RANDOM_BASELINE],
        references=[R_SPEARMAN],
        files=["plots/metric_correlation_pearson.png", "plots/metric_correlation_spearman.png"],
    ),
    _e(
        key="fig_metrics_normalized",
        title="Normalised metrics heatmap",
        kind="figure",
        short="Each metric min-max scaled to [0, 1] over the layers, so all five share one colour scale.",
        definition="A heatmap with metrics as rows and layers as columns; each row is scaled to [0, 1] on its own.",
        how_to_read=(
            "Compare where in depth each metric peaks or dips; the colours are not comparable between "
            "rows in absolute terms (each row has its own min and max)."
        ),
        files=["plots/metrics_normalized.png"],
    ),
    _e(
        key="fig_attention_heatmap",
        title="Attention heatmaps",
        kind="figure",
        short="Attention weights: rows are query tokens, columns the key tokens they read from; each row sums to 1.",
        definition=(
            "The matrix A^{l,h} of one head of layer l = 1 … L (Layer Analysis page, with its statistics "
            "and top attended pairs), or the mean over the heads of the last layer "
            "(plots/attention_mean_last_layer.png). Long texts show a window of tokens; every token is "
            "labelled when the labels fit, otherwise a cell's tooltip names its tokens. Colour scale: linear "
            "(0 … the largest weight) below 64 tokens; from 64 tokens the page and the PNG use a log scale from a "
            "tenth of the uniform weight, 1/(10·T), to the largest weight, because weights near 1/T beside an "
            "attention sink of 0.3–0.75 would be white on a linear scale; 'row' (each row divided by its largest "
            "weight) is the third option (core.present.chart_spec.ATTENTION_SCALES). The page's 'Colour scale' "
            "control picks one (it redraws the stored result, no model runs); the scale is named in the page's "
            "caption and under each figure's title."
        ),
        how_to_read=(
            "Each row sums to 1. A bright sub-diagonal is a previous-token head; a bright first column is "
            "a sink head; a bright diagonal a self head; an even spread a broad head. In causal models the "
            "upper triangle is empty (future tokens are masked). A head average blurs distinct heads "
            "together: look at single heads before concluding."
        ),
        pitfalls=[P_NOT_EXPLANATION],
        references=[R_CLARK, R_VIG, R_JAIN, R_WIEGREFFE],
        files=["plots/attention_mean_last_layer.png"],
    ),
    _e(
        key="fig_attention_entropy",
        title="Attention entropy maps",
        kind="figure",
        short="Attention entropy per head as a layer × head grid (nats, or normalised to 0…1).",
        definition="Heatmaps of the attention entropy and of the normalised entropy, layers as rows and heads as columns.",
        how_to_read=(
            "Dark (low entropy) cells are focused heads, bright cells diffuse ones. Use the normalised map "
            "to compare across models and text lengths; look for layers where the pattern changes."
        ),
        pitfalls=[P_NOT_EXPLANATION],
        files=["plots/attention_entropy.png", "plots/attention_entropy_normalized.png"],
    ),
    _e(
        key="fig_head_clusters",
        title="Head clusters",
        kind="figure",
        short="Heads projected to 2-D (PCA of their features), coloured by cluster, marker by role, labelled LlHh.",
        definition="A scatter of the 2-D projection of the head features, one point per head, coloured by cluster.",
        how_to_read=(
            "Nearby points are heads with similar attention statistics. Tight, separate groups with a high "
            "silhouette are real head types; overlapping colours mean a continuum. The marker gives the "
            "rule-based role, which need not agree with the cluster."
        ),
        files=["plots/head_clusters.png"],
    ),
    _e(
        key="fig_attribution",
        title="Token attributions",
        kind="figure",
        short="The text with each token shaded by its score, one block per method (rollout, gradient × input, IG).",
        definition=(
            "Each method is scaled by its largest |score|; signed methods use red (positive) / blue "
            "(negative), rollout (never negative) a single green scale; the target token is outlined. The "
            "Layer Analysis page shows the same scores as bars."
        ),
        how_to_read=(
            "Compare methods: tokens that all methods rank high are the most trustworthy explanations; "
            "tokens high in rollout only are usually attention sinks. For the gradient methods red pushes "
            "the prediction up, blue down. Colours are relative within a block, not across blocks."
        ),
        pitfalls=[P_NOT_EXPLANATION],
        references=[R_ABNAR, R_SUNDARARAJAN],
        files=["plots/token_attribution.png"],
    ),
    _e(
        key="fig_head_attribution",
        title="Head attribution map",
        kind="figure",
        short="Per-head importance for the target prediction (layer × head, diverging colours centred at 0).",
        definition="A layer × head heatmap of the head attribution scores (gradient × head output).",
        how_to_read=(
            "Red heads support the prediction, blue heads work against it; usually only a handful stand "
            "out. Pale cells matter little for this text and target."
        ),
        references=[R_MICHEL],
        files=["plots/head_attribution.png"],
    ),
    _e(
        key="fig_predictions",
        title="Prediction bars",
        kind="figure",
        short="Top-k candidate tokens and their probabilities at the predicted position(s).",
        definition="Horizontal bars of the top-k candidates' probabilities, one panel per predicted position.",
        how_to_read="The longer the first bar relative to the others, the more confident the model.",
        files=["plots/predictions.png"],
    ),
    _e(
        key="fig_logit_lens",
        title="Logit-lens plots",
        kind="figure",
        short="Top token per layer and position decoded through the model's own head, and p(final token) by layer.",
        definition=(
            "A grid of the top decoded token at every layer (rows) and position (columns), coloured by its "
            "probability, and a line of the final prediction's probability (and entropy) through the layers."
        ),
        how_to_read=(
            "Read the target column from bottom to top to see when the final prediction emerges; "
            "rows where the token stops changing mark where the prediction is settled."
        ),
        references=[R_NOSTALGEBRAIST],
        files=["plots/logit_lens.png", "plots/logit_lens_layers.png"],
    ),
    _e(
        key="anim_layer_transitions",
        title="Layer-transition animations",
        kind="animation",
        short=(
            "GIFs stepping through the layers: the attention of one head or the mean over heads (layers 1 … L), "
            "and the tokens in one common 2-D basis (layers 0 … L)."
        ),
        definition=(
            "attention_layers.gif: one frame per layer 1 … L of the attention averaged over heads (the app "
            "can show a single head instead), all frames on one colour scale. token_trajectories.gif: every "
            "token's hidden state projected on ONE 2-D PCA basis fitted on all layers together, one frame "
            "per layer 0 (embeddings) … L, fixed axes, earlier layers faint. Frame titles number layers as "
            "the pages and CSV files do."
        ),
        how_to_read=(
            "Watch for the layer where the picture changes abruptly: attention concentrating on the first "
            "token, or tokens drifting together (collapse) or apart. Because the basis and the axes are "
            "shared by all frames, movement between frames is real movement in that plane."
        ),
        pitfalls=[
            "Two PCA components show only part of the variance (the ratio is in the frame); points that "
            "overlap in 2-D may be far apart in the full space."
        ],
        files=["animations/attention_layers.gif", "animations/token_trajectories.gif"],
    ),
]

ENTRIES: list[DocEntry] = [*_FIGURES]
