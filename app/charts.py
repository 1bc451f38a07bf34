"""Altair chart builders: DataFrames from core.views in, alt.Chart out (no Streamlit calls, so tests can build them).

Every chart carries tooltips with the exact values. Charts render as SVG in the app (see `SVG` in pages).
"""

from __future__ import annotations

import altair as alt

from core.docs import metric_label
from core.metrics import METRIC_NAMES

def metric_title(name: str) -> str:
    """Display title of a metric: the documentation registry's title (one source for every label)."""
    return metric_label(name)


def metric_line(df, metric: str, height: int = 220) -> alt.Chart:
    """Line + points of one metric against layer; df from core.views.metrics_long."""
    d = df[df.metric == metric]
    base = alt.Chart(d).encode(
        x=alt.X("layer:Q", title="layer", axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False), axis=alt.Axis(format="~g")),
        tooltip=[alt.Tooltip("layer:Q", format="d"), alt.Tooltip("value:Q", title=metric_title(metric), format=".4f")],
    )
    # no chart title: the page writes the metric's name above the chart (a Vega title gets clipped in columns)
    return (base.mark_line() + base.mark_point(filled=True, size=50)).properties(height=height)


def correlation_heatmap(long_df, method: str) -> alt.Chart:
    """Metric × metric correlation (long: row, column, r), diverging colours in [−1, 1], values written in cells."""
    d = long_df.assign(row=long_df["row"].map(metric_title), column=long_df["column"].map(metric_title))
    order = [metric_title(m) for m in METRIC_NAMES]
    base = alt.Chart(d).encode(
        x=alt.X("column:N", sort=order, title=None, axis=alt.Axis(labelAngle=-35, labelOverlap=False, labelLimit=180)),
        y=alt.Y("row:N", sort=order, title=None, axis=alt.Axis(labelLimit=180)))
    rect = base.mark_rect().encode(
        color=alt.Color("r:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True),
                        title=f"{method} r"),
        tooltip=[alt.Tooltip("row:N"), alt.Tooltip("column:N"), alt.Tooltip("r:Q", format=".3f")])
    text = base.mark_text(fontSize=11).encode(text=alt.Text("r:Q", format=".2f")).transform_filter(
        "isValid(datum.r) && isFinite(datum.r)")  # empty cell, not "null", where r is undefined
    return (rect + text).properties(height=300)


def normalised_heatmap(df) -> alt.Chart:
    """Metrics (rows) × layers (columns), colour = min-max normalised value; tooltip has the raw value."""
    d = df.assign(metric=df["metric"].map(metric_title))
    return alt.Chart(d).mark_rect().encode(
        x=alt.X("layer:O", title="layer"),
        y=alt.Y("metric:N", sort=[metric_title(m) for m in METRIC_NAMES], title=None, axis=alt.Axis(labelLimit=180)),
        color=alt.Color("normalised:Q", scale=alt.Scale(scheme="viridis", domain=[0, 1]), title="normalised"),
        tooltip=[alt.Tooltip("metric:N"), alt.Tooltip("layer:O"), alt.Tooltip("value:Q", format=".4f"),
                 alt.Tooltip("normalised:Q", format=".3f")],
    ).properties(height=300)


def attention_heatmap(df, title: str) -> alt.Chart:
    """Query (rows) × key (columns) attention; df from core.views.attention_frame."""
    order = list(dict.fromkeys(df.sort_values("qi")["query"]))
    step = int(max(12, min(32, 640 // max(len(order), 1))))
    return alt.Chart(df).mark_rect().encode(
        x=alt.X("key:N", sort=order, title="key (attended to)", axis=alt.Axis(labelAngle=-60, labelLimit=120)),
        y=alt.Y("query:N", sort=order, title="query (attending)", axis=alt.Axis(labelLimit=120)),
        color=alt.Color("weight:Q", scale=alt.Scale(scheme="blues", domain=[0, float(max(df.weight.max(), 1e-9))]),
                        title="weight"),
        tooltip=[alt.Tooltip("query:N"), alt.Tooltip("key:N"), alt.Tooltip("weight:Q", format=".4f")],
    ).properties(width=alt.Step(step), height=alt.Step(step), title=title)


def layer_head_heatmap(df, value: str, title: str, scheme: str = "viridis", extra_tooltips=(),
                       diverging: bool = False) -> alt.Chart:
    """Layers (rows) × heads (columns); df from core.views.layer_head_frame. diverging: signed values, white at 0."""
    scale = (alt.Scale(scheme="redblue", reverse=True, domainMid=0) if diverging else alt.Scale(scheme=scheme))
    return alt.Chart(df).mark_rect().encode(
        x=alt.X("head:O", title="head"),
        y=alt.Y("layer:O", title="layer"),
        color=alt.Color(f"{value}:Q", scale=scale, title=value.replace("_", " ")),
        tooltip=[alt.Tooltip("layer:O"), alt.Tooltip("head:O"), alt.Tooltip(f"{value}:Q", format=".4f"),
                 *[alt.Tooltip(f"{c}:Q", format=".4f") for c in extra_tooltips]],
    ).properties(height=alt.Step(26), title=title)


def cluster_scatter(df) -> alt.Chart:
    """Heads in the 2-D projection, coloured by cluster, shaped by role; role and entropy in the tooltip."""
    return alt.Chart(df).mark_point(filled=True, size=90, opacity=0.85).encode(
        x=alt.X("x:Q", title="projection 1", scale=alt.Scale(zero=False)),
        y=alt.Y("y:Q", title="projection 2", scale=alt.Scale(zero=False)),
        color=alt.Color("cluster:N", title="cluster"),
        shape=alt.Shape("role:N", title="role"),
        tooltip=[alt.Tooltip("layer:Q", format="d"), alt.Tooltip("head:Q", format="d"), alt.Tooltip("cluster:N"),
                 alt.Tooltip("role:N"), alt.Tooltip("entropy:Q", format=".3f")],
    ).properties(height=360, title="Head clustering")


def attribution_bars(df, column: str) -> alt.Chart:
    """Horizontal bars of one attribution score per token (positions in text order)."""
    d = df.assign(label=[f"{p}: {t}" for p, t in zip(df.position, df.token)])
    return alt.Chart(d).mark_bar().encode(
        y=alt.Y("label:N", sort=list(d.label), title=None),
        x=alt.X(f"{column}:Q", title=column.replace("_", " ")),
        color=alt.condition(f"datum['{column}'] >= 0", alt.value("#d6604d"), alt.value("#4393c3")),
        tooltip=[alt.Tooltip("position:Q", format="d"), alt.Tooltip("token:N"),
                 alt.Tooltip(f"{column}:Q", format=".4f")],
    ).properties(height=max(160, 18 * len(d)))


def logit_lens_heatmap(df) -> alt.Chart:
    """Layers × positions, colour = probability of the top decoded token, the token written in each cell."""
    order = list(dict.fromkeys(df.sort_values("pi")["position"]))
    base = alt.Chart(df).encode(
        x=alt.X("position:N", sort=order, title="position", axis=alt.Axis(labelAngle=-60, labelLimit=120)),
        y=alt.Y("layer:O", title="layer", sort="descending"))
    rect = base.mark_rect().encode(
        color=alt.Color("probability:Q", scale=alt.Scale(scheme="oranges", domain=[0, 1]), title="P(top token)"),
        tooltip=[alt.Tooltip("layer:O"), alt.Tooltip("position:N"), alt.Tooltip("top_token:N", title="top token"),
                 alt.Tooltip("probability:Q", format=".4f")])
    text = base.mark_text(fontSize=9, limit=60).encode(text="top_token:N")
    return (rect + text).properties(height=alt.Step(24), width=alt.Step(int(max(40, min(72, 1000 // max(len(order), 1))))),
                                    title="Logit lens: top token")


def logit_lens_prob_line(df) -> alt.Chart:
    """Probability of the model's final prediction per layer (df: layer, probability)."""
    base = alt.Chart(df).encode(
        x=alt.X("layer:Q", axis=alt.Axis(format="d", tickMinStep=1)),
        y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1])),
        tooltip=[alt.Tooltip("layer:Q", format="d"), alt.Tooltip("probability:Q", format=".4f")])
    return (base.mark_line() + base.mark_point(filled=True)).properties(height=220)


def row_entropy_bars(df) -> alt.Chart:
    """Entropy per query row of one head (df: query, entropy)."""
    return alt.Chart(df).mark_bar().encode(
        y=alt.Y("query:N", sort=list(df["query"]), title=None, axis=alt.Axis(labelLimit=120)),
        x=alt.X("entropy:Q", title="row entropy (nats)"),
        tooltip=[alt.Tooltip("query:N"), alt.Tooltip("entropy:Q", format=".4f")],
    ).properties(height=max(160, 18 * len(df)))
