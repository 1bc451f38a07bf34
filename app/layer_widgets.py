"""Sections of the Layer Analysis page. Everything is drawn from the stored result: moving the layer slider or the
head picker re-runs no model. Sections whose data is missing (None) are hidden or explained in one line.

Rendered images (GIFs, single-head PNGs) are cached with st.cache_data keyed on the result's cache key and the
options, so a slider move does not render them again.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import streamlit as st

from app import charts
from app.state import Keys
from app.widgets import chart, md_escape, show_caption
from core import views
from core.result import AnalysisResult

log = logging.getLogger(__name__)

MEAN_HEADS = "mean over heads"


def pickers(result: AnalysisResult) -> tuple[int, int | None]:
    """Layer slider (0 = first block) and head picker (a head, or the mean over heads)."""
    state = st.session_state
    L, H = result.n_layers, result.n_heads
    if not isinstance(state.get(Keys.LAYER), int) or not 0 <= state[Keys.LAYER] < L:
        state[Keys.LAYER] = 0
    head_options: list[Any] = [MEAN_HEADS, *range(H)]
    if state.get(Keys.HEAD) not in head_options:
        state[Keys.HEAD] = MEAN_HEADS
    c1, c2 = st.columns([3, 2])
    if L > 1:
        layer = c1.slider("Layer (attention block, 0 = first)", 0, L - 1, key=Keys.LAYER)
    else:
        c1.caption("The model has one attention layer (layer 0).")
        layer = 0
    head = c2.selectbox("Head", head_options, key=Keys.HEAD,
                        format_func=lambda h: h if h == MEAN_HEADS else f"head {h}")
    return int(layer), (None if head == MEAN_HEADS else int(head))


# ----------------------------------------------------------------------------------------------------------------
# Attention


#: Above this many tokens the attention heatmap shows a window of WINDOW tokens (an SVG of T² cells gets slow).
MAX_HEATMAP_TOKENS = 128
WINDOW = 96


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


def attention_section(result: AnalysisResult, layer: int, head: int | None) -> None:
    title = f"Layer {layer}, " + ("mean over heads" if head is None else f"head {head}")
    window = attention_window(result)
    df = views.attention_frame(result.attentions, result.display_tokens, layer, head, window)
    st.altair_chart(charts.attention_heatmap(df, title), width="content")
    show_caption("fig_attention_heatmap")
    if head is not None:
        single_head_section(result, layer, head)


def single_head_section(result: AnalysisResult, layer: int, head: int) -> None:
    """The single-head view from core.attention_plots.single_head_stats: statistics, top pairs, row entropies."""
    from core.attention_plots import single_head_stats

    try:
        stats = single_head_stats(result, layer, head)
    except Exception:
        log.exception("single-head statistics failed")
        st.caption("The single-head statistics could not be computed for this head.")
        return
    st.markdown(f"**Single head: layer {layer}, head {head}**")
    cols = st.columns(5)
    for col, (key, label) in zip(cols, (("entropy", "Entropy (nats)"), ("normalized_entropy", "Normalised entropy"),
                                        ("mean_distance", "Mean distance"), ("role", "Role"),
                                        ("cluster", "Cluster"))):
        v = stats.get(key)
        if v is not None:
            col.metric(label, f"{v:.3f}" if isinstance(v, float) else str(v))
    left, right = st.columns([3, 2])
    with left:
        st.caption("Top attended pairs (query → key)")
        st.dataframe(stats.get("top_pairs", []), hide_index=True, width="stretch",
                     column_config={"weight": st.column_config.ProgressColumn(
                         "weight", format="%.4f", min_value=0.0, max_value=1.0)})
    with right:
        import pandas as pd

        rows = stats.get("row_entropy") or []
        if rows:
            labels = views.token_labels(result.display_tokens[:len(rows)])
            df = pd.DataFrame({"query": labels, "entropy": rows})
            chart(charts.row_entropy_bars(df))
            st.caption("Entropy of each query row (nats): low = the row looks at few tokens.")


# ----------------------------------------------------------------------------------------------------------------
# Heads: entropy grid, clustering, head attribution


def heads_section(result: AnalysisResult, layer: int, head: int | None) -> None:
    att = result.attention
    if att is None:
        st.info("The per-head attention analysis was not computed for this result.")
        return
    left, right = st.columns(2)
    with left:
        df = views.layer_head_frame(att.entropy, "entropy",
                                    {"normalized_entropy": att.normalized_entropy, "mean_distance": att.mean_distance})
        chart(charts.layer_head_heatmap(df, "entropy", "Attention entropy (nats)",
                                        extra_tooltips=("normalized_entropy", "mean_distance")))
        show_caption("attention_entropy")
    with right:
        chart(charts.cluster_scatter(views.cluster_frame(att)))
        sil = "–" if att.silhouette is None else f"{att.silhouette:.3f}"
        st.caption(f"{att.n_clusters} clusters · silhouette {sil}"
                   + (f" · {att.cluster_method}" if getattr(att, "cluster_method", "") else ""))
        show_caption("head_clustering")
    roles = att.role_grid()
    counts: dict[str, int] = {}
    for row in roles:
        for r in row:
            counts[r] = counts.get(r, 0) + 1
    st.caption("Head roles: " + ", ".join(f"{r} {n}" for r, n in sorted(counts.items(), key=lambda x: -x[1]))
               + f" · this layer: {', '.join(roles[layer]) if layer < len(roles) else '–'}")
    attr = result.attribution
    if attr is not None and getattr(attr, "head_scores", None) is not None:
        st.markdown("**Head attribution** for the prediction at the target position")
        df = views.layer_head_frame(attr.head_scores, "score")
        chart(charts.layer_head_heatmap(df, "score", "Head importance (red supports the prediction)", diverging=True))
        if getattr(attr, "head_method", ""):
            st.caption(attr.head_method)
        show_caption("head_attribution")


# ----------------------------------------------------------------------------------------------------------------
# Token attribution

ATTR_METHODS = {"rollout": "Attention rollout", "grad_x_input": "Gradient × input",
                "integrated_gradients": "Integrated gradients"}
ATTR_DOC = {"rollout": "attention_rollout", "grad_x_input": "gradient_x_input",
            "integrated_gradients": "integrated_gradients"}


def attribution_section(result: AnalysisResult) -> None:
    attr = result.attribution
    if attr is None:
        st.info("Token attribution was not computed for this result.")
        return
    tokens = result.display_tokens
    pred = (f" → predicted “{views.readable_token(attr.predicted_token)}”"
            if getattr(attr, "predicted_token", None) else "")
    pos = attr.target_position
    target = tokens[pos] if 0 <= pos < len(tokens) else views.readable_token(attr.target_token)
    st.text(f"Target: position {pos} (“{target}”){pred} · {result.target_reason}")
    available = {k: getattr(attr, k, None) for k in ATTR_METHODS}
    available = {k: v for k, v in available.items() if v is not None}
    if not available:
        st.caption("No token scores in this result.")
        return
    method = st.radio("Method", list(available), horizontal=True, key=Keys.ATTR_METHOD,
                      format_func=lambda k: ATTR_METHODS[k])
    method = method if method in available else next(iter(available))
    st.html(views.shaded_tokens_html(tokens, available[method], attr.target_position))
    show_caption(ATTR_DOC[method])
    if method == "integrated_gradients" and getattr(attr, "ig_completeness_gap", None) is not None:
        st.caption(f"Completeness gap |Σ IG − (f(x) − f(x′))| = {attr.ig_completeness_gap:.4g} "
                   f"({getattr(attr, 'ig_steps', '?')} steps)")
    df = views.attribution_frame(tokens, available)
    with st.expander("Scores per token"):
        chart(charts.attribution_bars(df, method))
        st.dataframe(df, hide_index=True, width="stretch")
    for note in getattr(attr, "notes", []) or []:
        st.caption(note)
    if not result.settings.compute_gradients:
        st.caption("Gradient methods are off (sidebar → Settings → Compute gradients).")
    elif attr.predicted_id is not None and not result.settings.integrated_gradients:
        st.caption("Integrated gradients are off: they cost one forward + backward pass per step "
                   "(sidebar → Settings → Integrated gradients).")


# ----------------------------------------------------------------------------------------------------------------
# Logit lens


def logit_lens_section(result: AnalysisResult) -> None:
    lens = result.logit_lens
    if lens is None:
        st.info("The logit lens is not available for this result (it needs a model with a language-model head).")
        return
    st.markdown(f"Position **{lens.position}** (“{md_escape(result.display_tokens[lens.position])}”) · final "
                f"prediction “{md_escape(lens.final_token)}”")
    grid = views.logit_lens_grid_frame(lens, result.display_tokens)
    chart(charts.logit_lens_heatmap(grid))
    shown = grid["pi"].nunique()
    if shown < result.n_tokens:
        st.caption(f"The grid decodes {shown} of {result.n_tokens} positions (a window around position "
                   f"{lens.position}, to bound the CPU cost; sidebar → Settings → Full logit-lens grid decodes all); the "
                   f"table below is complete for position {lens.position}.")
    import pandas as pd

    left, right = st.columns([2, 3])
    with left:
        st.markdown(f"P(“{md_escape(lens.final_token)}”) per layer")
        chart(charts.logit_lens_prob_line(pd.DataFrame({"layer": np.asarray(lens.layers, dtype=int),
                                                          "probability": np.asarray(lens.final_prob, dtype=float)})))
    with right:
        st.dataframe(views.logit_lens_table(lens), hide_index=True, width="stretch")
    show_caption("logit_lens")


# ----------------------------------------------------------------------------------------------------------------
# Animations


def animations_section(result: AnalysisResult, head: int | None) -> None:
    """The layer-transition GIFs of core.animations, rendered once per (result, head) and cached."""
    if not st.session_state.get(Keys.ANIMATIONS, True):
        st.caption("Animations are off (sidebar → Settings → Layer animations).")
        return
    ref = _ResultRef(result)
    which = "mean over heads" if head is None else f"head {head}"
    left, right = st.columns(2)
    with left:
        gif = _uncached_failure(lambda: _attention_gif(_key(result), head, ref), "attention animation")
        if gif:
            st.image(gif, caption=f"Attention across layers ({which})", width="stretch")
        else:
            st.caption("The attention animation could not be rendered.")
    with right:
        gif = _uncached_failure(lambda: _trajectories_gif(_key(result), ref), "token-trajectory animation")
        if gif:
            st.image(gif, caption="Token representations across layers (one common 2-D basis)", width="stretch")
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


_REF_HASH = {_ResultRef: lambda r: _key(r.result)}


@st.cache_data(max_entries=32, show_spinner="Rendering the attention animation…", hash_funcs=_REF_HASH)
def _attention_gif(cache_key: str, head: int | None, ref: _ResultRef) -> bytes | None:
    """GIF bytes of core.animations.attention_layers_gif, once per (result, head)."""
    from core.animations import attention_layers_gif

    return attention_layers_gif(ref.result, head=head)  # an exception is not cached by st.cache_data


@st.cache_data(max_entries=16, show_spinner="Rendering the token trajectories…", hash_funcs=_REF_HASH)
def _trajectories_gif(cache_key: str, ref: _ResultRef) -> bytes | None:
    """GIF bytes of core.animations.token_trajectories_gif, once per result."""
    from core.animations import token_trajectories_gif

    return token_trajectories_gif(ref.result)  # an exception is not cached by st.cache_data
