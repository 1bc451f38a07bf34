"""Sections of the Layer Analysis page. Everything is drawn from the stored result: moving the layer slider or the
head picker re-runs no model. Sections whose data is missing (None) are hidden or explained in one line.

Rendered images (GIFs, single-head PNGs) are cached with st.cache_data keyed on the result's cache key and the
options, so a slider move does not render them again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import streamlit as st

from app import charts
from app.state import Keys
from app.widgets import chart, shaded_text, show_caption
from core.analysis.result import AnalysisResult, has_map_source
from core.present import chart_spec, tables

log = logging.getLogger(__name__)

MEAN_HEADS = "mean over heads"


def _head_options(result: AnalysisResult) -> list[Any]:
    return [MEAN_HEADS, *range(result.n_heads)]


def _head_name(h: Any) -> str:
    return str(h) if h == MEAN_HEADS else f"head {h}"


def _valid_head(state: Any, key: str, options: list[Any]) -> None:
    if state.get(key) not in options:
        state[key] = MEAN_HEADS


def pickers(
    result: AnalysisResult, layer_key: str = Keys.LAYER, head_key: str = Keys.HEAD, what: str = ""
) -> tuple[int, int | None]:
    """Layer and head pickers of one tab (the Attention tab's by default): the layer as its block number 1 … L (the
    session keeps the array index 0 … L−1 under `layer_key`) and a head, or the mean over heads. `what` ends the
    labels ("of the query–key view"). Returns (layer index, head or None)."""
    state = st.session_state
    L = result.n_layers
    if not isinstance(state.get(layer_key), int) or not 0 <= state[layer_key] < L:
        state[layer_key] = 0
    options = _head_options(result)
    _valid_head(state, head_key, options)
    suffix = f" {what}" if what else ""
    c1, c2 = st.columns([3, 2])
    if L > 1:
        layer = c1.select_slider(
            f"Layer{suffix} (1 … {L})",
            options=list(range(L)),
            key=layer_key,
            format_func=lambda i: str(chart_spec.block_number(i)),
            help="Layer l is the attention of block l, which writes hidden-state layer l "
            "(layer 0 is the embeddings, which have no attention).",
        )
    else:
        c1.caption("The model has one attention layer (layer 1).")
        layer = 0
    head = c2.selectbox(f"Head{suffix}", options, key=head_key, format_func=_head_name)
    return int(layer), (None if head == MEAN_HEADS else int(head))


# ----------------------------------------------------------------------------------------------------------------
# Attention


#: Above this many tokens the attention heatmap shows a window of WINDOW tokens (an SVG of T² cells gets slow).
MAX_HEATMAP_TOKENS = 128
WINDOW = 96
#: The logit-lens grid shows at most this many positions at once (each cell writes its token).
LENS_COLUMNS = 16


def attention_window(result: AnalysisResult) -> tuple[int, int] | None:
    """A (start, stop) window of the token axis for long texts, chosen with a slider; None for short texts."""
    T = result.n_tokens
    if T <= MAX_HEATMAP_TOKENS:
        return None
    state = st.session_state
    last = T - WINDOW
    if not isinstance(state.get(Keys.ATT_WINDOW), int) or not 0 <= state[Keys.ATT_WINDOW] <= last:
        state[Keys.ATT_WINDOW] = last if result.family == "causal_lm" else 0
    start = st.slider(f"Token window ({WINDOW} of {T} tokens, first position)", 0, last, key=Keys.ATT_WINDOW)
    return int(start), int(start) + WINDOW


#: The colour-scale control's options: "auto" follows core.present.chart_spec.default_attention_scale.
SCALE_OPTIONS = ("auto", *chart_spec.ATTENTION_SCALES)
SCALE_NAMES = {"linear": "Linear", "row": "Per row", "log": "Log"}


def attention_scale(result: AnalysisResult) -> tuple[str, str]:
    """The colour-scale control of the attention heatmap (a view of the stored result: no model runs). Returns
    (the scale drawn, the option chosen: "auto" or the scale)."""
    state = st.session_state
    if state.get(Keys.ATT_SCALE) not in SCALE_OPTIONS:
        state[Keys.ATT_SCALE] = "auto"
    auto = chart_spec.default_attention_scale(result.n_tokens)
    chosen = st.radio(
        "Colour scale",
        SCALE_OPTIONS,
        key=Keys.ATT_SCALE,
        horizontal=True,
        format_func=lambda o: f"Automatic ({SCALE_NAMES[auto].lower()})" if o == "auto" else SCALE_NAMES[o],
        help=f"Automatic: linear below {chart_spec.LOG_SCALE_FROM} tokens, log from {chart_spec.LOG_SCALE_FROM} "
        "(weights near 1/T beside an attention sink are white on a linear scale). Per row: each query row divided "
        "by its largest weight.",
    )
    chosen = chosen if chosen in SCALE_OPTIONS else "auto"
    return (auto if chosen == "auto" else chosen), chosen


def attention_scale_line(scale: str, chosen: str, n_tokens: int) -> str:
    """The caption that names the heatmap's colour scale."""
    why = ""
    if chosen == "auto":
        rule = f"below {chart_spec.LOG_SCALE_FROM}" if scale == "linear" else f"from {chart_spec.LOG_SCALE_FROM}"
        why = f" (chosen automatically: {n_tokens} tokens, {scale} {rule} tokens)"
    return f"Colour scale: {SCALE_NAMES[scale].lower()}{why} — {chart_spec.attention_scale_caption(scale)}."


def maps_attached(result: AnalysisResult) -> None:
    """A long text's maps were not kept with the result (core.analysis.pipeline.HOLD_ATTENTIONS_BYTES): its layers
    are recomputed with its model. A result read back from the cache in this process gets the app's loaded model
    attached (loading it if needed) before a section draws a map."""
    if result.maps_held or has_map_source(result.cache_key):
        return
    from app.widgets import _loaded_for
    from core.analysis.pipeline import attach_model

    with st.spinner(f"Loading {result.model.model_id} to recompute the attention maps of this long text …"):
        attach_model(result, _loaded_for(result))


def attention_section(result: AnalysisResult) -> None:
    """The Attention tab: its layer and head pickers, the heatmap (a token window for long texts) and, for a single
    head, its statistics. A long text's layer is recomputed by its model (one pass that stops after the layer)."""
    maps_attached(result)
    layer, head = pickers(result)
    title = f"Layer {chart_spec.block_number(layer)}, " + ("mean over heads" if head is None else f"head {head}")
    window = attention_window(result)
    scale, chosen = attention_scale(result)
    df = tables.attention_frame(result, result.display_tokens, layer, head, window, scale)
    st.altair_chart(charts.attention_heatmap(df, title, scale, result.n_tokens), width="content")
    st.caption(attention_scale_line(scale, chosen, result.n_tokens))
    n = int(df["qi"].nunique())
    if not charts.labels_fit(n):
        st.caption(
            f"{n} tokens are too many to label each one at this size: the axes show the labels that do not "
            "overlap; hover a cell for its query and key."
        )
    show_caption("fig_attention_heatmap")
    if head is not None:
        single_head_section(result, layer, head)


def single_head_section(result: AnalysisResult, layer: int, head: int) -> None:
    """The single-head view from core.figures.attention.single_head_stats: statistics, top pairs, row entropies."""
    from core.figures.attention import single_head_stats

    try:
        stats = single_head_stats(result, layer, head)
    except Exception:
        log.exception("single-head statistics failed")
        st.caption("The single-head statistics could not be computed for this head.")
        return
    st.markdown(f"**Single head: layer {chart_spec.block_number(layer)}, head {head}**")
    cols = st.columns(5)
    for col, (key, label) in zip(
        cols,
        (
            ("entropy", "Entropy (nats)"),
            ("normalized_entropy", "Normalised entropy"),
            ("mean_distance", "Mean distance"),
            ("role", "Role"),
            ("cluster", "Cluster"),
        ),
    ):
        v = stats.get(key)
        if v is not None:
            col.metric(label, f"{v:.3f}" if isinstance(v, float) else str(v))
    left, right = st.columns([3, 2])
    with left:
        st.caption("Top attended pairs (query → key)")
        st.dataframe(
            stats.get("top_pairs", []),
            hide_index=True,
            width="stretch",
            column_config={
                "query": "query",
                "query_token": "query token",
                "key": "key",
                "key_token": "key token",
                "weight": st.column_config.ProgressColumn("weight", format="%.4f", min_value=0.0, max_value=1.0),
            },
        )
    with right:
        import pandas as pd

        rows = stats.get("row_entropy") or []
        if rows:
            labels = tables.token_labels(result.display_tokens[: len(rows)])
            df = pd.DataFrame({"query": labels, "entropy": rows})
            shown = charts.top_rows(df, "entropy", largest_abs=False)
            chart(charts.row_entropy_bars(shown))
            if len(shown) < len(df):
                st.caption(
                    f"Entropy of the {len(shown)} most focused query rows of {len(df)} (lowest entropy, in "
                    "text order), in nats: low = the row looks at few tokens."
                )
                with st.expander(f"All {len(df)} rows"):
                    st.dataframe(df, hide_index=True, width="stretch", height=320)
            else:
                st.caption("Entropy of each query row (nats): low = the row looks at few tokens.")


# ----------------------------------------------------------------------------------------------------------------
# Heads: entropy grid, clustering, head attribution


def heads_section(result: AnalysisResult) -> None:
    """The Heads tab: every layer × head at once (no picker: nothing here depends on one layer or head)."""
    att = result.attention
    if att is None:
        st.info("The per-head attention analysis was not computed for this result.")
        return
    left, right = st.columns(2)
    with left:
        df = tables.layer_head_frame(
            att.entropy, "entropy", {"normalized_entropy": att.normalized_entropy, "mean_distance": att.mean_distance}
        )
        chart(
            charts.layer_head_heatmap(
                df, "entropy", "Attention entropy (nats)", extra_tooltips=("normalized_entropy", "mean_distance")
            )
        )
        show_caption("attention_entropy")
    with right:
        chart(charts.cluster_scatter(tables.cluster_frame(att)))
        sil = "–" if att.silhouette is None else f"{att.silhouette:.3f}"
        st.caption(
            f"{att.n_clusters} clusters · silhouette {sil}" + (f" · {att.cluster_method}" if att.cluster_method else "")
        )
        show_caption("head_clustering")
    counts: dict[str, int] = {}
    for row in att.role_grid():
        for r in row:
            counts[r] = counts.get(r, 0) + 1
    st.caption("Head roles: " + ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda x: -x[1])))
    attr = result.attribution
    if attr is not None and attr.head_scores is not None:
        st.markdown("**Head attribution** for the prediction at the target position")
        df = tables.layer_head_frame(attr.head_scores, "score")
        chart(charts.layer_head_heatmap(df, "score", "Head importance (red supports the prediction)", diverging=True))
        if attr.head_method:
            st.caption(attr.head_method)
        show_caption("head_attribution")


# ----------------------------------------------------------------------------------------------------------------
# Token attribution

ATTR_METHODS = {
    "rollout": "Attention rollout",
    "grad_x_input": "Gradient × input",
    "integrated_gradients": "Integrated gradients",
}
ATTR_DOC = {
    "rollout": "attention_rollout",
    "grad_x_input": "gradient_x_input",
    "integrated_gradients": "integrated_gradients",
}


def attribution_section(result: AnalysisResult) -> None:
    attr = result.attribution
    if attr is None:
        st.info("Token attribution was not computed for this result.")
        return
    tokens = result.display_tokens
    label = tables.predicted_token_label(result)
    pred = f" → predicted “{label}”" if label else ""
    pos = attr.target_position
    target = tokens[pos] if 0 <= pos < len(tokens) else tables.readable_token(attr.target_token)
    st.text(f"Target: {chart_spec.target_phrase(pos, result.target_reason, target)}{pred}")
    available = {k: v for k, v in attr.methods().items() if k in ATTR_METHODS}
    available = {k: v for k, v in available.items() if v is not None}
    if not available:
        st.caption("No token scores in this result.")
        return
    method = st.radio(
        "Method", list(available), horizontal=True, key=Keys.ATTR_METHOD, format_func=lambda k: ATTR_METHODS[k]
    )
    method = method if method in available else next(iter(available))
    shaded_text(tables.shaded_tokens_html(tokens, available[method], attr.target_position), len(tokens))
    show_caption(ATTR_DOC[method])
    if method == "integrated_gradients" and attr.ig_completeness_gap is not None:
        rel = attr.ig_completeness_gap_relative
        st.caption(
            f"Completeness gap |Σ IG − (f(x) − f(x′))| = {attr.ig_completeness_gap:.4g} nats"
            + (f" ({100 * rel:.2f} % of f(x) − f(x′))" if rel is not None else "")
            + f" with {attr.ig_steps} Gauss–Legendre steps"
            + (
                ""
                if attr.ig_converged is None
                else " — converged (≤ 1 %)"
                if attr.ig_converged
                else " — the 512-step cap was reached before 1 %: read the scores as approximate"
            )
        )
    df = tables.attribution_frame(tokens, available)
    shown = charts.top_rows(df, method)
    chart(charts.attribution_bars(shown, method))
    if len(shown) < len(df):
        st.caption(f"The {len(shown)} tokens of {len(df)} with the largest |score|, in text order.")
    with st.expander(f"All {len(df)} tokens, every method"):
        st.dataframe(df, hide_index=True, width="stretch", height=min(36 + 35 * len(df), 360))
    for note in attr.notes:
        st.caption(note)
    if not result.settings.compute_gradients:
        st.caption("Gradient methods are off (sidebar → Settings → Compute gradients).")
    elif attr.predicted_id is not None and not result.settings.integrated_gradients:
        st.caption(
            "Integrated gradients are off: they cost one forward + backward pass per step "
            "(sidebar → Settings → Integrated gradients)."
        )


# ----------------------------------------------------------------------------------------------------------------
# Logit lens


def lens_window(positions: list[int], centre: int) -> list[int]:
    """The grid columns to draw: all when there are at most LENS_COLUMNS, else a window of LENS_COLUMNS chosen with
    a slider (it starts around the decoded position)."""
    if len(positions) <= LENS_COLUMNS:
        return positions
    state = st.session_state
    last = len(positions) - LENS_COLUMNS
    if not isinstance(state.get(Keys.LENS_WINDOW), int) or not 0 <= state[Keys.LENS_WINDOW] <= last:
        at = positions.index(centre) if centre in positions else 0
        state[Keys.LENS_WINDOW] = int(min(max(at - LENS_COLUMNS // 2, 0), last))
    start = st.slider(
        f"Positions shown ({LENS_COLUMNS} of {len(positions)}, first column)", 0, last, key=Keys.LENS_WINDOW
    )
    return positions[int(start) : int(start) + LENS_COLUMNS]


def logit_lens_section(result: AnalysisResult) -> None:
    lens = result.logit_lens
    if lens is None:
        st.info("The logit lens is not available for this result (it needs a model with a language-model head).")
        return
    st.text(
        f"Position {lens.position} (“{result.display_tokens[lens.position]}”) · final prediction “{lens.final_token}”"
    )
    grid = tables.logit_lens_grid_frame(lens, result.display_tokens)
    decoded = sorted(int(p) for p in grid["pi"].unique())
    cols = lens_window(decoded, int(lens.position))
    chart(charts.logit_lens_heatmap(grid[grid["pi"].isin(cols)]))
    if len(decoded) < result.n_tokens:
        st.caption(
            f"The grid decodes {len(decoded)} of {result.n_tokens} positions (a window around position "
            f"{lens.position}, to bound the CPU cost; sidebar → Settings → Full logit-lens grid decodes all); "
            f"the table below is complete for position {lens.position}."
        )
    import pandas as pd

    left, right = st.columns([2, 3])
    with left:
        st.text(f"P(“{lens.final_token}”) per layer")
        chart(
            charts.logit_lens_prob_line(
                pd.DataFrame(
                    {
                        "layer": np.asarray(lens.layers, dtype=int),
                        "probability": np.asarray(lens.final_prob, dtype=float),
                    }
                )
            )
        )
    with right:
        st.dataframe(tables.logit_lens_table(lens), hide_index=True, width="stretch")
    show_caption("logit_lens")


# ----------------------------------------------------------------------------------------------------------------
# Animations


#: The tab of the layer × layer CKA of one run.
LAYER_CKA_TAB = "Layer similarity (CKA)"


def layer_cka_tab(result: AnalysisResult) -> None:
    """The layer × layer linear CKA of the run (how far the representation moves between layers), in its own tab."""
    from app.compare_widgets import layer_cka_section

    layer_cka_section(result)


def animations_section(result: AnalysisResult) -> None:
    """The Animations tab: its own head picker, and the layer-transition GIFs of core.figures.animations, rendered once
    per (result, head) and cached. The captions name the head that is shown."""
    if not st.session_state.get(Keys.ANIMATIONS, True):
        st.caption("Animations are off (sidebar → Settings → Layer animations).")
        return
    maps_attached(result)
    state = st.session_state
    options = _head_options(result)
    _valid_head(state, Keys.ANIM_HEAD, options)
    choice = st.selectbox("Head of the attention animation", options, key=Keys.ANIM_HEAD, format_func=_head_name)
    head = None if choice == MEAN_HEADS else int(choice)
    which = "mean over heads" if head is None else f"head {head}"
    ref = _ResultRef(result)
    left, right = st.columns(2)
    with left:
        gif = _uncached_failure(lambda: _attention_gif(_key(result), head, ref), "attention animation")
        if gif:
            st.image(gif, caption=f"Attention across layers 1 … {result.n_layers} ({which})", width="stretch")
        else:
            st.caption("The attention animation could not be rendered.")
    with right:
        gif = _uncached_failure(lambda: _trajectories_gif(_key(result), ref), "token-trajectory animation")
        if gif:
            st.image(
                gif,
                caption=f"Token representations across layers 0 (embeddings) … {result.n_layers}, in one "
                "common 2-D basis",
                width="stretch",
            )
        else:
            st.caption("The token-trajectory animation could not be rendered.")
    show_caption("anim_layer_transitions")


def _uncached_failure(render: Any, what: str) -> bytes | None:
    """Call a cached renderer; a failure raises inside it (so st.cache_data keeps nothing) and is logged here, so
    a later session with the same text renders again instead of inheriting the failure."""
    try:
        return render()
    except Exception:
        log.exception("%s failed", what)
        return None


def _key(result: AnalysisResult) -> str:
    return result.cache_key or f"id-{id(result)}"


class _ResultRef:
    """Wraps the result so st.cache_data does not hash its arrays: the cache key (passed too) stands for it."""

    def __init__(self, result: AnalysisResult):
        self.result = result


_REF_HASH: dict[str | type[Any], Callable[[Any], Any]] = {_ResultRef: lambda r: _key(r.result)}


@st.cache_data(max_entries=32, show_spinner="Rendering the attention animation…", hash_funcs=_REF_HASH)
def _attention_gif(cache_key: str, head: int | None, ref: _ResultRef) -> bytes | None:
    """GIF bytes of core.figures.animations.attention_layers_gif, once per (result, head)."""
    from core.figures.animations import attention_layers_gif

    return attention_layers_gif(ref.result, head=head)  # an exception is not cached by st.cache_data


@st.cache_data(max_entries=16, show_spinner="Rendering the token trajectories…", hash_funcs=_REF_HASH)
def _trajectories_gif(cache_key: str, ref: _ResultRef) -> bytes | None:
    """GIF bytes of core.figures.animations.token_trajectories_gif, once per result."""
    from core.figures.animations import token_trajectories_gif

    return token_trajectories_gif(ref.result)  # an exception is not cached by st.cache_data
