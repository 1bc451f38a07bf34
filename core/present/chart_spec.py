"""What each chart shows and how, decided once: the app's Altair charts and the exported matplotlib figures both
read this module, so a PNG in the bundle and the chart on the page make the same choices.

- Metric axes (`METRIC_AXES`): which layer metrics are integers, where their y-axis starts (0 for ranks and
  dimensions, so that 13.4 → 15.6 does not look like a collapse), whether the token ceiling T − 1 is drawn, and the
  number format (never an exponent such as "1e+1"). `y_domain` and `reference_lines` turn a spec and the data into
  the axis range and the labelled lines; "zoom to data" is the same call with zoom=True.
- Layer numbering (`block_number`, `layer_title`): hidden states are numbered 0 (embeddings) … L (after block L);
  attention blocks, whose arrays are indexed 0 … L−1, are shown as layers 1 … L. Pages, GIF frame titles, CSVs and
  the PDF use these two functions, so "layer 3" always means the output of block 3.
- Words (`metric_tokens_phrase`, `target_phrase`, `timing_phrase`): the sentences the header, the sidebar and the
  PDF print about a result, built from its fields without internal keys.
- Degenerate data (`empty_reason`, `correlation_gap_reason`): the one line a chart shows instead of an empty frame.
- Attention colour scales (`ATTENTION_SCALES`, `default_attention_scale`, `scaled_attention`): linear, per-row or
  log, the same on the page's heatmap and in the bundle's figures.

Pure Python + numpy: no Streamlit, no Altair, no matplotlib.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: A token ceiling T − 1 joins the y-axis when it is at most this many times the largest value.
CEILING_REACH = 2.0
#: The reference that a metric's y-axis includes when not zoomed.
ZERO = "zero"  # the axis starts at 0
UNIT = "unit"  # the axis spans at least [0, 1] (cosines, probabilities)


@dataclass(frozen=True)
class MetricAxis:
    """The y-axis of one layer metric against layer.

    integer: the metric takes whole values only (integer ticks, "d" format).
    start: the reference the axis includes when not zoomed: ZERO or UNIT.
    token_ceiling: draw the dashed, labelled line at T − 1 (the spectral metrics cannot exceed it).
    unit: appended to the axis title ("" for counts).
    """

    metric: str
    integer: bool = False
    start: str = ZERO
    token_ceiling: bool = False
    unit: str = ""

    @property
    def number_format(self) -> str:
        """d3 format of the axis labels: integers as "d", otherwise fixed-point with trimmed zeros (no exponent)."""
        return "d" if self.integer else ",.4~f"

    @property
    def tooltip_format(self) -> str:
        return "d" if self.integer else ".4f"


METRIC_AXES: dict[str, MetricAxis] = {
    "effective_rank": MetricAxis("effective_rank", token_ceiling=True),
    "participation_ratio": MetricAxis("participation_ratio", token_ceiling=True),
    "intrinsic_dim_95": MetricAxis("intrinsic_dim_95", integer=True, token_ceiling=True),
    "activation_entropy": MetricAxis("activation_entropy", unit="nats"),
    "cosine_to_input": MetricAxis("cosine_to_input", start=UNIT),
}

#: The x-axis title of every chart against hidden-state layers.
LAYER_AXIS_TITLE = "layer (0 = embeddings)"
#: The axis title of every chart over attention blocks (layers 1 … L).
BLOCK_AXIS_TITLE = "layer"


@dataclass(frozen=True)
class ReferenceLine:
    value: float
    label: str


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def reference_lines(metric: str, token_bound: int) -> list[ReferenceLine]:
    """The labelled horizontal lines of a metric's chart: the token ceiling T − 1 for the spectral metrics (only
    when it is at least 1: with fewer than two tokens there is no spectrum to bound)."""
    spec = METRIC_AXES[metric]
    if spec.token_ceiling and token_bound >= 1:
        return [ReferenceLine(float(token_bound), f"T − 1 = {token_bound}")]
    return []


def y_domain(
    metric: str, values: Sequence[float] | np.ndarray, token_bound: int, zoom: bool = False
) -> tuple[float, float] | None:
    """The y range of a metric's chart, or None when no value is finite (nothing to draw).

    Not zoomed: from the metric's reference (0, or [0, 1] for cosines; lower when a value is negative) up to the
    largest of the data and the reference lines within CEILING_REACH of it, plus 5 % headroom. Zoomed: the data
    range alone with 10 % margins (reference lines that fall outside are left out of the chart by the caller).
    Integer metrics get whole-number
    ends.
    """
    spec = METRIC_AXES[metric]
    v = _finite(values)
    if v.size == 0:
        return None
    lo, hi = float(v.min()), float(v.max())
    if zoom:
        pad = (hi - lo) * 0.1 or max(abs(hi) * 0.05, 0.5 if spec.integer else 0.05)
        lo, hi = lo - pad, hi + pad
        if spec.start == ZERO and float(v.min()) >= 0:
            lo = max(lo, 0.0)
    else:
        # the ceiling joins the axis when it is within reach of the data; far above it (T − 1 = 511 for data
        # near 20) it would flatten every curve, so the chart names it in a corner instead (`ceiling_note`)
        tops = [hi] + [r.value for r in reference_lines(metric, token_bound) if r.value <= CEILING_REACH * hi]
        hi = max(tops)
        if spec.start == UNIT:
            hi = max(hi, 1.0)
        lo = min(0.0, lo)
        hi = hi + 0.05 * (hi - lo) if hi > lo else hi + 1.0
    if spec.integer:
        lo, hi = float(math.floor(lo)), float(math.ceil(hi))
    return lo, hi


def ceiling_note(metric: str, token_bound: int, domain: tuple[float, float] | None) -> str | None:
    """The words for a reference line above the axis ("T − 1 = 511, above the axis"), or None when every line is
    drawn (or there is none)."""
    if domain is None:
        return None
    above = [r for r in reference_lines(metric, token_bound) if r.value > domain[1]]
    return f"{above[0].label}, above the axis" if above else None


def visible_lines(metric: str, token_bound: int, domain: tuple[float, float] | None) -> list[ReferenceLine]:
    """The reference lines that lie inside `domain` (a zoomed axis leaves an outside ceiling out)."""
    if domain is None:
        return []
    return [r for r in reference_lines(metric, token_bound) if domain[0] <= r.value <= domain[1]]


# --------------------------------------------------------------------------------------------------------------
# Layer numbering
# --------------------------------------------------------------------------------------------------------------
def block_number(index: int) -> int:
    """Display number of an attention block whose array index is `index` (0 … L−1): 1 … L, the same number as the
    hidden-state layer that block writes (hidden states: 0 = embeddings, l = after block l)."""
    return int(index) + 1


def block_index(number: int) -> int:
    """Inverse of `block_number`."""
    return int(number) - 1


def layer_title(hidden_layer: int, n_layers: int) -> str:
    """ "Layer l of L" for a hidden-state layer l = 0 … L, with "(embeddings)" at 0: the GIF frame titles."""
    return f"Layer {hidden_layer} of {n_layers}" + (" (embeddings)" if hidden_layer == 0 else "")


# --------------------------------------------------------------------------------------------------------------
# Words about a result
# --------------------------------------------------------------------------------------------------------------
def metric_tokens_phrase(n_tokens: int, n_used: int, special_excluded: bool) -> str:
    """How many tokens entered the layer metrics, in words: "layer metrics over all 13 tokens" or "layer metrics
    over 11 of 13 tokens (special tokens left out)"."""
    if special_excluded:
        return f"layer metrics over {n_used} of {n_tokens} tokens (special tokens left out)"
    return f"layer metrics over all {n_tokens} tokens"


FAMILY_WORDS = {
    "causal_lm": "causal language model",
    "masked_lm": "masked language model",
    "encoder": "encoder without a language-model head",
}


def family_words(family: str) -> str:
    """A model family in words ("causal_lm" → "causal language model")."""
    return FAMILY_WORDS.get(family, family.replace("_", " "))


_POSITION_PREFIX = re.compile(r"^\s*position\s+\d+\s*(\((.*)\))?\s*$", re.IGNORECASE)


def target_phrase(position: int, reason: str, token: str | None = None) -> str:
    """ "position 0 ("[CLS]"): encoder without a language-model head" — the reason once, even when the stored reason
    already starts with "position N (…)" (results computed before this wording)."""
    why = (reason or "").strip()
    m = _POSITION_PREFIX.match(why)
    if m:
        why = (m.group(2) or "").strip()
    tok = f" (“{token}”)" if token is not None else ""
    return f"position {position}{tok}" + (f": {why}" if why else "")


def timing_phrase(duration_s: float, cache_hit: bool, load_s: float | None = None) -> str:
    """One timing per analysis: "computed in 1.8 s" ("in 40 ms" under a tenth of a second, where "0.0 s" read as
    nothing computed), "from cache", with "model loaded in 8.2 s (first time only)" in front when this click loaded
    the model."""

    def took(s: float) -> str:
        return f"{s * 1000:.0f} ms" if s < 0.1 else f"{s:.1f} s"

    core = "from cache" if cache_hit else f"computed in {took(duration_s)}"
    if load_s is not None:
        return f"model loaded in {took(load_s)} (first time only) · {core}"
    return core


# --------------------------------------------------------------------------------------------------------------
# Degenerate data
# --------------------------------------------------------------------------------------------------------------
def empty_reason(metric: str, values: Sequence[float] | np.ndarray, n_used: int, special_excluded: bool) -> str | None:
    """The one line shown instead of an empty chart, or None when the metric has a finite value to draw."""
    if _finite(values).size:
        return None
    left_out = " (special tokens left out)" if special_excluded else ""
    if n_used == 0:
        return f"Nothing to draw: no token entered the layer metrics{left_out}."
    if METRIC_AXES[metric].token_ceiling and n_used < 2:
        return (
            f"Nothing to draw: only {n_used} token entered the layer metrics{left_out}, and a spectrum needs "
            "at least 2 tokens."
        )
    return "Nothing to draw: the metric is undefined at every layer for this text."


def correlation_gap_reason(values: Sequence[float] | np.ndarray) -> str | None:
    """Why a metric has no correlation with the others across layers, or None when it has one:
    "missing values" (fewer than 2 layers with a value) or "constant" (the same value at every layer)."""
    v = _finite(values)
    if v.size < 2:
        return "missing values"
    if float(v.max() - v.min()) == 0.0:
        return "constant"
    return None


# --------------------------------------------------------------------------------------------------------------
# Point labels without overlap (token labels in the trajectory animation)
# --------------------------------------------------------------------------------------------------------------
def place_labels(
    xy: np.ndarray,
    widths: Sequence[float],
    height: float,
    gap: float = 3.0,
    bounds: tuple[float, float, float, float] | None = None,
) -> list[tuple[float, float] | None]:
    """Greedy label placement in pixel space: for each point i (in the given order, so the first points win), the
    lower-left corner of its label box, taken from four slots around the point (right-above, right-below,
    left-above, left-below), the first whose box overlaps no box placed before and stays inside `bounds`
    (x0, y0, x1, y1); None when no slot is free (the label is left out rather than drawn over another).

    xy: [N, 2] point positions (y up); widths: [N] label widths; height: the label height (all equal).
    """
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    placed: list[tuple[float, float, float, float]] = []
    out: list[tuple[float, float] | None] = []
    for (x, y), w in zip(pts, widths):
        spot: tuple[float, float] | None = None
        if np.isfinite(x) and np.isfinite(y):
            for dx, dy in ((gap, gap), (gap, -gap - height), (-gap - w, gap), (-gap - w, -gap - height)):
                box = (x + dx, y + dy, x + dx + w, y + dy + height)
                if bounds is not None and (
                    box[0] < bounds[0] or box[1] < bounds[1] or box[2] > bounds[2] or box[3] > bounds[3]
                ):
                    continue
                if all(box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3] for b in placed):
                    placed.append(box)
                    spot = (float(box[0]), float(box[1]))
                    break
        out.append(spot)
    return out


# --------------------------------------------------------------------------------------------------------------
# Colour scale of the token × token attention maps (the page's heatmap and the bundle's figures)
# --------------------------------------------------------------------------------------------------------------
#: "linear": 0 … the map's largest weight; "row": each query row divided by its own largest weight (0 … 1), so every
#: row's pattern is visible even beside an attention sink; "log": a log scale from LOG_FLOOR / T (a tenth of the
#: uniform weight 1/T; smaller weights drawn as the floor) to the largest weight, so that a weight of 1/T sits at a
#: visible shade whatever the sink beside it (1/T at 512 tokens next to a 0.75 sink: 28 % of the scale; linear: 0.3 %).
ATTENTION_SCALES = ("linear", "row", "log")
#: The log scale starts at LOG_FLOOR / T.
LOG_FLOOR = 0.1
#: From this many tokens on, the maps are drawn on the log scale by default.
LOG_SCALE_FROM = 64


def default_attention_scale(n_tokens: int) -> str:
    """The scale the page and the bundle draw by default: "log" from LOG_SCALE_FROM tokens on, "linear" below.
    Chosen by looking at renders of the bundled MiniLM: at 512 tokens the linear map is white but for a few cells
    (weights near 1/T ≈ 0.002 beside a largest weight of 0.3–0.75) and per-row normalisation stays pale too (the
    mean over heads is diffuse within a row), while the log scale shows the diagonals and the repeated-phrase bands;
    at 13 tokens the linear map reads well and the log map is saturated."""
    return "log" if n_tokens >= LOG_SCALE_FROM else "linear"


def attention_scale_caption(scale: str) -> str:
    """A few words naming the colour scale (under a figure's title, in the page's caption)."""
    return {
        "linear": "colour: weight, 0 … the largest in the map",
        "row": "colour: weight / its row's largest weight",
        "log": "colour: log scale, 1/(10·T) … the largest weight",
    }[scale]


def scaled_attention(
    weights: np.ndarray, scale: str, n_tokens: int, row_max: np.ndarray | None = None
) -> tuple[np.ndarray, float, float]:
    """(values to colour, low, high) of attention weights under `scale` (ATTENTION_SCALES).

    weights: [Q, K] (a map, or a window of one); n_tokens: T of the whole map (the log floor is LOG_FLOOR / T);
    row_max: [Q] the largest weight of each query's whole row (default: the largest within `weights`). "linear":
    the weights on [0, their largest]; "row": weight / row maximum on [0, 1]; "log": the weights raised to the floor
    min(LOG_FLOOR / T, largest / 10), on [floor, largest] (to be drawn on a log colour scale).
    """
    w = np.asarray(weights, dtype=np.float64)
    low, high = attention_domain(scale, float(w.max()) if w.size else 0.0, n_tokens)
    if scale == "row":
        peak = w.max(axis=-1) if row_max is None else np.asarray(row_max, dtype=np.float64)
        return w / np.maximum(peak, 1e-12)[..., None], low, high
    if scale == "log":
        return np.maximum(w, low), low, high
    return w, low, high


def attention_domain(scale: str, largest: float, n_tokens: int) -> tuple[float, float]:
    """The colour domain of an attention map under `scale`, given its largest weight and the whole map's T:
    linear [0, largest], row [0, 1], log [min(LOG_FLOOR / T, largest / 10), largest]."""
    if scale not in ATTENTION_SCALES:
        raise ValueError(f"unknown attention scale {scale!r}: one of {', '.join(ATTENTION_SCALES)}")
    top = max(float(largest), 1e-12)
    if scale == "row":
        return 0.0, 1.0
    if scale == "log":
        return min(LOG_FLOOR / max(int(n_tokens), 1), top / 10.0), top
    return 0.0, top
