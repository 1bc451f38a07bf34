"""The Layer Analysis tabs of the routes through the model: direct logit attribution with the promoted and
suppressed tokens, and the information-flow routes.

Everything is drawn from the stored result (`result.dla`, `result.flow`): choosing a block, a head, a position, a
token or a threshold prunes or indexes stored arrays and runs no model. Token text is user text: it is shown in
tables, chart data and st.text, never as Markdown. A missing section shows its one "not available" line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from app.state import Keys
from app.widgets import chart, guarded, show_caption
from core.analysis.result import AnalysisResult
from core.figures.plotting import token_label
from core.figures.routes import (
    FLOW_CSV_HEADER,
    FLOW_LABEL_MAX,
    KIND_COLOURS,
    flow_edge_rows,
    unavailable_line,
)
from core.infra.formats import csv_bytes
from core.present import tables
from core.steps.dla import DLASection
from core.steps.flow import (
    DEFAULT_THRESHOLD,
    THRESHOLD_MAX,
    THRESHOLD_MIN,
    DrawEdge,
    DrawNode,
    FlowSection,
    layout,
)

#: The tab labels, in order; the page appends them to its own tabs and hands the tab containers to `draw_tabs`.
TABS = ("Logit attribution", "Flow routes")
UPDATES = ("attention update", "MLP update", "one head")


def draw_tabs(result: AnalysisResult, tabs: Sequence[Any]) -> None:
    """Draw the two tabs into the given containers (one per TABS entry)."""
    with tabs[0]:
        draw_dla(result)
    with tabs[1]:
        draw_flow(result)


def draw_dla(result: AnalysisResult) -> None:
    """The Logit attribution tab's content (into the current container)."""
    with guarded("direct logit attribution"):
        dla_section(result)


def draw_flow(result: AnalysisResult) -> None:
    """The Flow routes tab's content (into the current container)."""
    with guarded("information-flow routes"):
        flow_section(result)


def _valid(key: str, options: Sequence[Any], default: Any) -> None:
    """Reset a widget's stored value when it is not an option of this result (a new result, fewer layers …)."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = default


# ----------------------------------------------------------------------------------------------------------------
# Direct logit attribution and promoted / suppressed tokens


def dla_frame(dla: DLASection) -> pd.DataFrame:
    """Long frame for the layers × (heads + MLP) heatmap: block, column ("0" … "H-1", "MLP"), logit."""
    heads, mlp = dla.head_matrix(), dla.mlp_column()
    rows = [
        {"block": l + 1, "column": str(h), "logit": float(heads[l, h])}
        for l in range(dla.n_layers)
        for h in range(dla.n_heads)
    ]
    rows += [{"block": l + 1, "column": "MLP", "logit": float(mlp[l])} for l in range(dla.n_layers)]
    return pd.DataFrame(rows)


def dla_chart(dla: DLASection) -> alt.Chart:
    df = dla_frame(dla)
    vmax = max(float(df["logit"].abs().max()), 1e-9)
    order = [str(h) for h in range(dla.n_heads)] + ["MLP"]
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X("column:O", sort=order, title="head (last column: the block's MLP)"),
            y=alt.Y("block:O", sort="descending", title="block"),
            color=alt.Color(
                "logit:Q", scale=alt.Scale(scheme="redblue", reverse=True, domain=[-vmax, vmax]), title="direct logit"
            ),
            tooltip=[
                alt.Tooltip("block:O"),
                alt.Tooltip("column:N", title="head / MLP"),
                alt.Tooltip("logit:Q", format=".4f"),
            ],
        )
        .properties(height=alt.Step(22), title="Direct logit attribution: heads and MLPs")
    )


def dla_section(result: AnalysisResult) -> None:
    dla = result.dla
    if dla is None:
        st.info(unavailable_line(result, "dla") or "", icon=":material/info:")
        return
    show_caption("direct_logit_attribution")
    st.text(
        f"Token {token_label(dla.token, 24)!r} at position {dla.position}: logit {dla.logit:.4f} = "
        f"{float(dla.values.sum()):.4f} (sum of {len(dla.values)} parts; |difference| {dla.sum_abs_error:.2g})"
    )
    for note in dla.notes:
        st.caption(note)
    chart(dla_chart(dla))
    totals = pd.DataFrame([{"part": c, "logit": dla.total(c)} for c in ("embedding", "attention", "mlp", "bias")])
    st.dataframe(totals, hide_index=True)
    promoted_section(dla, result.n_tokens)


def promoted_section(dla: DLASection, n_tokens: int) -> None:
    """Promoted / suppressed tokens of the chosen update (block attention, block MLP, or one head)."""
    st.subheader("Promoted and suppressed tokens")
    show_caption("promoted_tokens")
    L, H = dla.n_layers, dla.n_heads
    _valid(Keys.DLA_UPDATE, UPDATES, UPDATES[0])
    _valid(Keys.DLA_BLOCK, list(range(1, L + 1)), L)
    _valid(Keys.DLA_HEAD, list(range(H)), 0)
    c1, c2, c3, c4 = st.columns(4)
    update = c1.selectbox("Update", UPDATES, key=Keys.DLA_UPDATE)
    block = int(c2.selectbox("Block", list(range(1, L + 1)), key=Keys.DLA_BLOCK))
    if update == "one head":
        head = int(c3.selectbox("Head", list(range(H)), key=Keys.DLA_HEAD))
        c4.text(f"position {dla.position}")
        ids_up, val_up = dla.promote_head_ids[block - 1, head], dla.promote_head_logits[block - 1, head]
        ids_dn, val_dn = dla.demote_head_ids[block - 1, head], dla.demote_head_logits[block - 1, head]
        st.caption("Heads are stored at the target position only.")
    else:
        positions = list(dla.promote_positions)
        _valid(Keys.DLA_POSITION, positions, dla.position)
        pos = int(c4.selectbox("Position", positions, key=Keys.DLA_POSITION))
        pi, k = positions.index(pos), (0 if update == "attention update" else 1)
        ids_up, val_up = dla.promote_block_ids[pi, block - 1, k], dla.promote_block_logits[pi, block - 1, k]
        ids_dn, val_dn = dla.demote_block_ids[pi, block - 1, k], dla.demote_block_logits[pi, block - 1, k]
        if len(positions) < n_tokens:
            st.caption(
                f"Block updates are stored for positions {positions[0]}–{positions[-1]} (each costs products "
                "with the whole vocabulary); for another position, analyse again with it as the target."
            )
    up = pd.DataFrame({"promoted token": [tables.readable_token(dla.text_of(i)) for i in ids_up], "Δ logit": val_up})
    dn = pd.DataFrame({"suppressed token": [tables.readable_token(dla.text_of(i)) for i in ids_dn], "Δ logit": val_dn})
    a, b = st.columns(2)
    a.dataframe(up, hide_index=True)
    b.dataframe(dn, hide_index=True)


# ----------------------------------------------------------------------------------------------------------------
# Information-flow routes


def flow_chart(flow: FlowSection, position: int, threshold: float) -> alt.LayerChart:
    """Layered graph: x = token position (numbered along the top), y = stage; edges as rules (width = weight, colour
    = kind) with tooltips; token labels as a text layer under the graph (chart data, not markup)."""
    nodes, recs = layout(flow, flow.routes(position, threshold))
    T, L = len(flow.tokens), flow.n_layers
    # the positions' numbers on top: below the graph the rotated token labels reach into the axis and covered them
    x = alt.X(
        "x:Q",
        title="token position",
        scale=alt.Scale(domain=[-0.7, T - 0.3]),
        axis=alt.Axis(tickMinStep=1, orient="top"),
    )
    y = alt.Y(  # ticks at the stages only: the token labels sit below stage 0, and no stage −1 is drawn
        "y:Q",
        title="stage (0 = embeddings, 2l = after block l)",
        scale=alt.Scale(domain=[-1.6, 2 * L + 0.6]),
        axis=alt.Axis(values=[2 * l for l in range(L + 1)]),
    )
    colour = alt.Color(
        "kind:N", scale=alt.Scale(domain=list(KIND_COLOURS), range=list(KIND_COLOURS.values())), title="edge"
    )
    edge_cols = [f.name for f in dataclasses.fields(DrawEdge)]
    node_cols = [f.name for f in dataclasses.fields(DrawNode)]
    edges = (
        alt.Chart(pd.DataFrame([dataclasses.astuple(r) for r in recs], columns=edge_cols))
        .mark_rule(opacity=0.75)
        .encode(
            x=x,
            y=y,
            x2="x2:Q",
            y2="y2:Q",
            color=colour,
            strokeWidth=alt.StrokeWidth("weight:Q", scale=alt.Scale(domain=[0, 1], range=[0.5, 7]), legend=None),
            tooltip=[
                alt.Tooltip("kind:N"),
                alt.Tooltip("weight:Q", format=".3f"),
                alt.Tooltip("layer:O", title="block"),
                alt.Tooltip("source:N"),
                alt.Tooltip("target:N"),
                alt.Tooltip("tooltip:N", title="detail"),
            ],
        )
    )
    dots = (
        alt.Chart(pd.DataFrame([dataclasses.astuple(n) for n in nodes], columns=node_cols))
        .mark_circle(size=40, color="#333333")
        .encode(x=x, y=y, tooltip=[alt.Tooltip("label:N", title="state")])
    )
    # every token up to FLOW_LABEL_MAX, then every n-th (as the bundle's PNG) and the chosen one: 512 labels overlapped
    shown = sorted(set(range(0, T, max(1, T // FLOW_LABEL_MAX))) | {position})
    labels = (
        alt.Chart(
            pd.DataFrame(
                {"x": shown, "y": [-1.0] * len(shown), "token": [token_label(flow.tokens[t], 10) for t in shown]}
            )
        )
        .mark_text(angle=270, align="right", fontSize=9)
        .encode(x=x, y=y, text="token:N")
    )
    width = int(min(max(420, 28 * T), 3000))
    # at least 320 px: the y title ("stage (0 = embeddings, …)", ~250 px) was cut at 260 px for a 2-block model
    return alt.layer(edges, dots, labels).properties(  # type: ignore[return-value]  # properties() of a layer
        width=width, height=max(320, 70 * L + 80)
    )


def flow_section(result: AnalysisResult) -> None:
    flow = result.flow
    if flow is None:
        st.info(unavailable_line(result, "flow") or "", icon=":material/info:")
        return
    show_caption("flow_routes")
    for note in flow.notes:
        st.caption(note)
    T = len(flow.tokens)
    _valid(Keys.FLOW_POSITION, list(range(T)), flow.position)
    thr0 = st.session_state.get(Keys.FLOW_THRESHOLD)
    if not isinstance(thr0, float) or not THRESHOLD_MIN <= thr0 <= THRESHOLD_MAX:
        st.session_state[Keys.FLOW_THRESHOLD] = DEFAULT_THRESHOLD
    c1, c2 = st.columns([2, 3])
    pos = int(
        c1.selectbox(
            "Token",
            list(range(T)),
            key=Keys.FLOW_POSITION,
            format_func=lambda t: f"{t}: {token_label(flow.tokens[t], 16)}",
        )
    )
    thr = float(c2.slider("Edge threshold", THRESHOLD_MIN, THRESHOLD_MAX, step=0.01, key=Keys.FLOW_THRESHOLD))
    edges = flow.routes(pos, thr)
    st.text(f"{len(edges)} edges of weight ≥ {thr:g} on the routes to position {pos}")
    st.altair_chart(flow_chart(flow, pos, thr))
    st.download_button(
        "flow_edges.csv (this token and threshold)",
        csv_bytes(FLOW_CSV_HEADER, flow_edge_rows(flow, pos, thr)),
        file_name="flow_edges.csv",
        mime="text/csv",
        key=Keys.FLOW_DOWNLOAD,
    )
