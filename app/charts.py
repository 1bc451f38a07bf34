"""Altair chart builders: DataFrames from core.present.tables in, alt.Chart out (no Streamlit calls, so tests can build
them).

Every chart carries tooltips with the exact values and fits the page's main column from 1 280 to 1 920 px wide:
token axes are windowed by the page (`MAX_HEATMAP_SIDE` bounds the attention map, `top_rows` bounds the per-token
bars) and the colour legend sits beside a chart that is narrow enough to show it. Axis choices (start at zero, the
T − 1 ceiling, integer ticks, number formats) come from core.present.chart_spec, the same module the exported PNGs read.
Attention blocks are shown as layers 1 … L (core.present.chart_spec.block_number); hidden-state layers as 0 … L.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from core.present import chart_spec
from core.present.chart_spec import BLOCK_AXIS_TITLE, LAYER_AXIS_TITLE, METRIC_AXES
from core.present.docs import metric_label
from core.steps.metrics import METRIC_NAMES

#: The attention heatmap is a square of at most this many pixels (plus labels and legend: ~800 px, which fits the
#: main column of a 1 280 px window with the sidebar open).
MAX_HEATMAP_SIDE = 540
#: A token label needs about this many pixels of cell height to be drawn without overlap.
LABEL_PX = 11
#: Per-token bar charts show at most this many rows; the page offers the full table in an expander.
TOP_ROWS = 20
BAR_PX = 18
#: Bar charts fill the column's width and give every row BAR_PX pixels (Streamlit's default "fit" would squeeze
#: the rows into a fixed height and drop every other label).
_FIT_WIDTH = alt.AutoSizeParams(type="fit-x", contains="padding")
#: Cell side of the metric × metric correlation matrix.
CELL_PX = 56


def token_axis(**kw: object) -> alt.Axis:
    """An axis of band (token, layer, position) labels. Streamlit's Vega theme sets labelFlush, which moves the
    first label of a band axis half a label inwards (on the 16-token attention map it sat on the second one): every
    band axis of the app turns it off."""
    return alt.Axis(labelFlush=False, **kw)  # type: ignore[arg-type]


def metric_title(name: str) -> str:
    """Display title of a metric: the documentation registry's title (one source for every label)."""
    return metric_label(name)


def metric_line(
    df: pd.DataFrame, metric: str, token_bound: int, zoom: bool = False, height: int = 220
) -> alt.LayerChart | None:
    """Line + points of one metric against layer (df from core.present.tables.metrics_long), or None when the metric
    has no finite value (the page then says why, see core.present.chart_spec.empty_reason).

    Not zoomed, the y-axis starts at the metric's reference (0, or [0, 1] for cosines) and the spectral metrics show
    the dashed, labelled T − 1 ceiling; zoomed, it spans the data (the ceiling only when it falls inside).
    """
    spec = METRIC_AXES[metric]
    d = df[df.metric == metric]
    domain = chart_spec.y_domain(metric, d["value"].to_numpy(), token_bound, zoom)
    if domain is None:
        return None
    last = int(d["layer"].max()) if len(d) else 0
    x_scale = alt.Scale(domain=[0, max(last, 1)], nice=False)
    y_axis = alt.Axis(format=spec.number_format, tickMinStep=1) if spec.integer else alt.Axis(format=spec.number_format)
    base = alt.Chart(d).encode(
        x=alt.X("layer:Q", title=LAYER_AXIS_TITLE, scale=x_scale, axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y(
            "value:Q",
            title=spec.unit or None,
            scale=alt.Scale(domain=list(domain), nice=False, zero=False),
            axis=y_axis,
        ),
        tooltip=[
            alt.Tooltip("layer:Q", format="d"),
            alt.Tooltip("value:Q", title=metric_title(metric), format=spec.tooltip_format),
        ],
    )
    layers: list[alt.Chart] = [base.mark_line(), base.mark_point(filled=True, size=50)]
    lines = chart_spec.visible_lines(metric, token_bound, domain)
    if lines:
        ref = pd.DataFrame(
            {"y": [r.value for r in lines], "label": [r.label for r in lines], "x": [max(last, 1)] * len(lines)}
        )
        rule = alt.Chart(ref).mark_rule(strokeDash=[5, 4], color="#888888").encode(y="y:Q")
        text = (
            alt.Chart(ref)
            .mark_text(align="right", baseline="bottom", dy=-3, fontSize=11, color="#666666")
            .encode(x="x:Q", y="y:Q", text="label:N")
        )
        layers += [rule, text]
    note = chart_spec.ceiling_note(metric, token_bound, domain)
    if note:
        # above the plot area, where no data point can be
        layers.append(
            alt.Chart(pd.DataFrame({"x": [max(last, 1)], "y": [domain[1]], "label": [f"↑ {note}"]}))
            .mark_text(align="right", baseline="bottom", dy=-4, fontSize=11, color="#666666")
            .encode(x="x:Q", y="y:Q", text="label:N")
        )
    # no chart title: the page writes the metric's name above the chart (a Vega title gets clipped in columns)
    return alt.layer(*layers).properties(height=height)  # type: ignore[return-value]  # properties() of a layer


def correlation_heatmap(long_df: pd.DataFrame, method: str) -> alt.LayerChart:
    """Metric × metric correlation (long: row, column, r), diverging colours in [−1, 1], values written in cells."""
    d = long_df.assign(row=long_df["row"].map(metric_title), column=long_df["column"].map(metric_title))
    order = [metric_title(m) for m in METRIC_NAMES]
    base = alt.Chart(d).encode(
        x=alt.X(
            "column:N", sort=order, title=None, axis=token_axis(labelAngle=-35, labelOverlap=False, labelLimit=180)
        ),
        y=alt.Y("row:N", sort=order, title=None, axis=token_axis(labelLimit=180)),
    )
    rect = base.mark_rect().encode(
        color=alt.Color(
            "r:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True), title=f"{method.capitalize()} r"
        ),
        tooltip=[alt.Tooltip("row:N"), alt.Tooltip("column:N"), alt.Tooltip("r:Q", format=".3f")],
    )
    text = (
        base.mark_text(fontSize=11)
        .encode(
            text=alt.Text("r:Q", format=".2f"),
            color=alt.condition("abs(datum.r) > 0.6", alt.value("white"), alt.value("black")),
        )
        .transform_filter("isValid(datum.r) && isFinite(datum.r)")
    )  # empty cell, not "null", where r is undefined
    side = CELL_PX * len(order)  # square cells; names and legend around them (~600 px in all): draw it with
    # Streamlit's width="content", since "stretch" would widen the cells to the column
    return (rect + text).properties(width=side, height=side, autosize=alt.AutoSizeParams(type="pad"))


def normalised_heatmap(df: pd.DataFrame) -> alt.Chart:
    """Metrics (rows) × layers (columns), colour = min-max normalised value; tooltip has the raw value."""
    d = df.assign(metric=df["metric"].map(metric_title))
    return (
        alt.Chart(d)
        .mark_rect()
        .encode(
            x=alt.X("layer:O", title=LAYER_AXIS_TITLE, axis=token_axis(labelAngle=0)),
            y=alt.Y(
                "metric:N", sort=[metric_title(m) for m in METRIC_NAMES], title=None, axis=token_axis(labelLimit=180)
            ),
            color=alt.Color("normalised:Q", scale=alt.Scale(scheme="viridis", domain=[0, 1]), title="normalised"),
            tooltip=[
                alt.Tooltip("metric:N"),
                alt.Tooltip("layer:O"),
                alt.Tooltip("value:Q", format=".4f"),
                alt.Tooltip("normalised:Q", format=".3f"),
            ],
        )
        .properties(height=alt.Step(36))
    )


def heatmap_side(n: int) -> int:
    """Pixel side of the square attention heatmap for n tokens: 14 px a token, between 240 and MAX_HEATMAP_SIDE."""
    return int(min(MAX_HEATMAP_SIDE, max(240, 14 * n)))


def labels_fit(n: int, side: int | None = None) -> bool:
    """Whether all n token labels fit along a heatmap axis of `side` pixels without overlapping."""
    side = heatmap_side(n) if side is None else side
    return n == 0 or side / n >= LABEL_PX


#: The colour-legend title of each attention colour scale.
SCALE_TITLES = {"linear": "weight", "row": "weight / row max", "log": "weight (log)"}


def attention_heatmap(df: pd.DataFrame, title: str, scale: str = "linear", n_tokens: int | None = None) -> alt.Chart:
    """Query (rows) × key (columns) attention; df from core.present.tables.attention_frame (made with the same
    `scale`, core.present.chart_spec.ATTENTION_SCALES; n_tokens: T of the whole map, for the log floor). A square
    of `heatmap_side` pixels: every token is labelled when the labels fit, otherwise the axes keep the labels that
    do not overlap and the tooltip names each cell's tokens; the tooltip always gives the weight itself."""
    order = list(dict.fromkeys(df.sort_values("qi")["query"]))
    n = len(order)
    side = heatmap_side(n)
    fits = labels_fit(n, side)
    font = label_font(n, side)
    hint = "" if fits else " — hover a cell for its tokens"
    low, high = chart_spec.attention_domain(scale, float(df.weight.max()) if len(df) else 0.0, n_tokens or n)
    colour_scale = (
        alt.Scale(type="log", scheme="blues", domain=[low, high], clamp=True)
        if scale == "log"
        else alt.Scale(scheme="blues", domain=[low, high])
    )
    tooltip = [alt.Tooltip("query:N"), alt.Tooltip("key:N"), alt.Tooltip("weight:Q", format=".4f")]
    if scale == "row":
        tooltip.append(alt.Tooltip("shown:Q", title="weight / row max", format=".3f"))
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X(
                "key:N",
                sort=order,
                title="key (attended to)" + hint,
                axis=token_axis(labelAngle=-60, labelLimit=110, labelOverlap=not fits, labelFontSize=font),
            ),
            y=alt.Y(
                "query:N",
                sort=order,
                title="query (attending)",
                axis=token_axis(labelLimit=110, labelOverlap=not fits, labelFontSize=font),
            ),
            color=alt.Color(
                "shown:Q",
                scale=colour_scale,
                title=SCALE_TITLES[scale],
                legend=alt.Legend(gradientLength=min(side, 300)),
            ),
            tooltip=tooltip,
        )
        .properties(width=side, height=side, title=title, autosize=alt.AutoSizeParams(type="pad"))
    )  # the square is `side`; labels and legend go around it


def label_font(n: int, side: int | None = None) -> int:
    """Font size (px) of the token labels of an n-token heatmap axis of `side` pixels: 11 when a label has 14 px,
    else 9 (both stay below the LABEL_PX a label needs, so labels that are all drawn never touch)."""
    side = heatmap_side(n) if side is None else side
    return 11 if side / max(n, 1) >= 14 else 9


def layer_head_heatmap(
    df: pd.DataFrame,
    value: str,
    title: str,
    scheme: str = "viridis",
    extra_tooltips: tuple[str, ...] = (),
    diverging: bool = False,
) -> alt.Chart:
    """Layers (rows, numbered 1 … L) × heads (columns); df from core.present.tables.layer_head_frame, whose `layer`
    column is the array index. diverging: signed values, white at 0."""
    d = df.assign(layer=df["layer"].map(chart_spec.block_number))
    scale = alt.Scale(scheme="redblue", reverse=True, domainMid=0) if diverging else alt.Scale(scheme=scheme)  # type: ignore[arg-type]
    return (
        alt.Chart(d)
        .mark_rect()
        .encode(
            x=alt.X("head:O", title="head", axis=token_axis(labelAngle=0)),
            y=alt.Y("layer:O", title=BLOCK_AXIS_TITLE, axis=token_axis()),
            color=alt.Color(f"{value}:Q", scale=scale, title=value.replace("_", " ")),
            tooltip=[
                alt.Tooltip("layer:O"),
                alt.Tooltip("head:O"),
                alt.Tooltip(f"{value}:Q", format=".4f"),
                *[alt.Tooltip(f"{c}:Q", title=c.replace("_", " "), format=".4f") for c in extra_tooltips],
            ],
        )
        .properties(height=alt.Step(26), title=title)
    )


def cluster_scatter(df: pd.DataFrame) -> alt.Chart:
    """Heads in the 2-D projection, coloured by cluster, shaped by role; layer (1 … L), role and entropy in the
    tooltip."""
    d = df.assign(layer=df["layer"].map(chart_spec.block_number))
    return (
        alt.Chart(d)
        .mark_point(filled=True, size=90, opacity=0.85)
        .encode(
            x=alt.X("x:Q", title="projection 1", scale=alt.Scale(zero=False)),
            y=alt.Y("y:Q", title="projection 2", scale=alt.Scale(zero=False)),
            color=alt.Color("cluster:N", title="cluster"),
            shape=alt.Shape("role:N", title="role"),
            tooltip=[
                alt.Tooltip("layer:Q", format="d"),
                alt.Tooltip("head:Q", format="d"),
                alt.Tooltip("cluster:N"),
                alt.Tooltip("role:N"),
                alt.Tooltip("entropy:Q", format=".3f"),
            ],
        )
        .properties(height=360, title="Head clustering")
    )


def top_rows(df: pd.DataFrame, column: str, k: int = TOP_ROWS, largest_abs: bool = True) -> pd.DataFrame:
    """At most k rows of a per-token frame, in their original (text) order: those with the largest |column|
    (largest_abs) or the smallest column value. All rows when there are no more than k."""
    if len(df) <= k:
        return df
    key = df[column].abs() if largest_abs else -df[column]
    keep = key.fillna(float("-inf")).nlargest(k).index
    return df.loc[sorted(keep)]


def attribution_bars(df: pd.DataFrame, column: str) -> alt.Chart:
    """Horizontal bars of one attribution score per token (positions in text order). Pass `top_rows(df, column)`
    for long texts: the height is BAR_PX a row."""
    d = df.assign(label=[f"{p}: {t}" for p, t in zip(df.position, df.token)])
    return (
        alt.Chart(d)
        .mark_bar()
        .encode(
            y=alt.Y("label:N", sort=list(d.label), title=None, axis=token_axis(labelLimit=160, labelOverlap=False)),
            x=alt.X(f"{column}:Q", title=column.replace("_", " ")),
            color=alt.condition(f"datum['{column}'] >= 0", alt.value("#d6604d"), alt.value("#4393c3")),
            tooltip=[
                alt.Tooltip("position:Q", format="d"),
                alt.Tooltip("token:N"),
                alt.Tooltip(f"{column}:Q", format=".4f"),
            ],
        )
        .properties(height=alt.Step(BAR_PX), autosize=_FIT_WIDTH)
    )


def logit_lens_heatmap(df: pd.DataFrame) -> alt.LayerChart:
    """Layers × positions, colour = probability of the top decoded token, the token written in each cell. The page
    passes a window of positions so that the cells stay wide enough for their token; the chart fills the column."""
    order = list(dict.fromkeys(df.sort_values("pi")["position"]))
    base = alt.Chart(df).encode(
        x=alt.X("position:N", sort=order, title="position", axis=token_axis(labelAngle=-45, labelLimit=100)),
        y=alt.Y("layer:O", title=LAYER_AXIS_TITLE, sort="descending", axis=token_axis()),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("probability:Q", scale=alt.Scale(scheme="oranges", domain=[0, 1]), title="P(top token)"),
        tooltip=[
            alt.Tooltip("layer:O"),
            alt.Tooltip("position:N"),
            alt.Tooltip("top_token:N", title="top token"),
            alt.Tooltip("probability:Q", format=".4f"),
        ],
    )
    text = base.mark_text(fontSize=9, limit=60).encode(text="top_token:N")
    return (rect + text).properties(height=alt.Step(24), title="Logit lens: top token")


def logit_lens_prob_line(df: pd.DataFrame) -> alt.LayerChart:
    """Probability of the model's final prediction per layer (df: layer, probability)."""
    base = alt.Chart(df).encode(
        x=alt.X("layer:Q", title=LAYER_AXIS_TITLE, axis=alt.Axis(format="d", tickMinStep=1)),
        y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1])),
        tooltip=[alt.Tooltip("layer:Q", format="d"), alt.Tooltip("probability:Q", format=".4f")],
    )
    return (base.mark_line() + base.mark_point(filled=True)).properties(height=220)


def row_entropy_bars(df: pd.DataFrame) -> alt.Chart:
    """Entropy per query row of one head (df: query, entropy); pass `top_rows(df, "entropy", largest_abs=False)`
    for long texts: the height is BAR_PX a row."""
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            y=alt.Y("query:N", sort=list(df["query"]), title=None, axis=token_axis(labelLimit=120, labelOverlap=False)),
            x=alt.X("entropy:Q", title="row entropy (nats)"),
            tooltip=[alt.Tooltip("query:N"), alt.Tooltip("entropy:Q", format=".4f")],
        )
        .properties(height=alt.Step(BAR_PX), autosize=_FIT_WIDTH)
    )
