"""Neuron factors (Ecco) and the query–key view (BertViz) on the Layer Analysis page.

Drawn only from the stored result: `result.neuron_factors` (the NMF factors and their top neurons) and
`result.query_key` (queries and keys of every layer and head). Choosing a factor, a head or a query token computes
the view from those arrays (core.steps.qk.qk_view) and re-runs no model. The page calls `draw(result, layer, head)`
once. The factor shading is HTML (escaped tokens, core.present.tables.shaded_tokens_html): drawing 6 × T token boxes
with matplotlib takes about a second at 128 tokens, so the PNG version (core.figures.neurons.factor_figure) is for the
bundle and the PDF only.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.state import Keys
from app.widgets import LONG_TEXT_TOKENS, SHADED_TEXT_PX, guarded, shaded_text, show_caption
from core.analysis.result import AnalysisResult
from core.figures import plotting
from core.figures.neurons import top_neuron_figure
from core.figures.qk import qk_figure, shown_keys
from core.present import tables
from core.steps.qk import qk_view


def draw(result: AnalysisResult, layer: int, head: int | None) -> None:
    """Two sections (no nested tabs): neuron factors, then the query–key view of (layer, head) at a query token."""
    draw_neurons(result)
    draw_query_key(result, layer, head)


def draw_neurons(result: AnalysisResult) -> None:
    """The neuron-factors section under its heading."""
    st.subheader("Neuron factors")
    with guarded("neuron factors"):
        neuron_factors_section(result)


def draw_query_key(result: AnalysisResult, layer: int, head: int | None) -> None:
    """The query–key view of (layer, head) under its heading."""
    st.subheader("Query–key view")
    with guarded("query–key view"):
        query_key_section(result, layer, head)


@st.cache_data(max_entries=8, show_spinner=False)
def _top_png(_result: AnalysisResult, key: str) -> bytes:
    sec = _result.neuron_factors
    assert sec is not None
    return plotting.png(top_neuron_figure(sec))


def neuron_factors_section(result: AnalysisResult) -> None:
    sec = result.neuron_factors
    if sec is None:
        st.info(
            "No neuron factors in this result (switched off in the settings, or not available for this "
            "architecture: see the warnings)."
        )
        return
    first, last = sec.blocks  # blocks 1…L
    st.caption(
        f"NMF of the MLP neuron activations of layers {first}–{last} ({sec.d_ff} neurons in each of {len(sec.layers)}) "
        f"over {result.n_tokens} tokens into {sec.n_factors} factors. Relative error "
        f"‖A − WH‖/‖A‖ = {sec.relative_error:.3f}; negative activations clipped to 0 "
        f"({100 * sec.clipped_fraction:.0f} % of the activation mass)."
    )
    options = list(range(sec.n_factors))
    chosen = st.multiselect(
        "Factors", options, default=options, key=Keys.NF_FACTORS, format_func=lambda f: f"factor {f}"
    )
    # a long text scrolls inside its box, and more than two long factors share one bounded box of their own
    # (6 factors × 512 tokens would otherwise make the tab several thousand pixels tall)
    long_many = result.n_tokens > LONG_TEXT_TOKENS and len(chosen) > 2
    with st.container(height=2 * SHADED_TEXT_PX + 80) if long_many else st.container():
        for f in sorted(chosen):
            neurons = ", ".join(sec.neuron_name(f, r) for r in range(min(5, sec.top_layer.shape[1])))
            st.caption(f"Factor {f} · max {float(sec.token_factors[:, f].max()):.3g} · top neurons {neurons}")
            shaded_text(
                tables.shaded_tokens_html(result.display_tokens, sec.token_factors[:, f], result.target_position),
                result.n_tokens,
            )
    if chosen:
        show_caption("fig_neuron_factors")
    with st.expander("Top neurons per factor"):
        st.image(_top_png(result, result.cache_key))
        rows = [r for r in sec.top_rows() if not chosen or r[0] in chosen]
        st.dataframe(pd.DataFrame(rows, columns=["factor", "rank", "layer", "neuron", "weight"]), hide_index=True)


@st.cache_data(max_entries=32, show_spinner=False)
def _qk_png(_result: AnalysisResult, key: str, layer: int, head: int, query: int) -> bytes:
    sec = _result.query_key
    assert sec is not None
    return plotting.png(qk_figure(qk_view(sec, layer, head, query), _result.display_tokens))


def query_key_section(result: AnalysisResult, layer: int, head: int | None) -> None:
    sec = result.query_key
    if sec is None:
        st.info(
            "No query–key vectors in this result (not available for this architecture, or over the memory "
            "bound: see the warnings)."
        )
        return
    if head is None:
        st.caption(
            "The head picker above shows the mean over heads; the query–key view needs one head: head 0 is shown."
        )
        head = 0
    T = result.n_tokens
    state = st.session_state
    if not isinstance(state.get(Keys.QK_QUERY), int) or not 0 <= state[Keys.QK_QUERY] < T:
        state[Keys.QK_QUERY] = result.target_position
    toks = result.display_tokens
    query = st.selectbox(
        "Query token",
        list(range(T)),
        key=Keys.QK_QUERY,
        format_func=lambda i: f"{i}: {plotting.token_label(toks[i], max_len=24)}",
    )
    view = qk_view(sec, layer, head, int(query))
    notes = [
        f"key-value head {view.kv_head} (grouped-query attention, {sec.group} query heads each)"
        if sec.group > 1
        else "",
        "rotary applied as the model applies it" if sec.rotary else "",
        "vectors stored in float16: scores approximate" if sec.queries.dtype.name == "float16" else "",
    ]
    if any(notes):
        st.caption("; ".join(n for n in notes if n))
    st.image(_qk_png(result, result.cache_key, layer, head, int(query)))
    show_caption("fig_query_key")
    keys = shown_keys(view, max_keys=T)
    st.dataframe(
        pd.DataFrame(
            {
                "key": keys,
                "token": [toks[j] for j in keys],
                "q·k": view.products.sum(axis=1),
                "score": view.scores,
                "weight": view.weights,
            }
        ),
        hide_index=True,
    )
