"""Layer-metric figures: the data the Overall page plots, and matplotlib PNGs of the same for the export.

Data functions (pure numpy, used by the pages and the PNGs alike):
  metric_correlations(result, method) -> [M, M] correlation of the M = 5 layer metrics across the L+1 layers
  normalized_metrics(result)          -> [M, L+1] each metric min-max scaled to [0, 1] over the layers
  summary_figures(result)             -> dict of short summary numbers
PNG functions return bytes (Agg backend, figures closed). `figure_files` is the bundle writer.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable, Mapping

import numpy as np
from matplotlib.figure import Figure

from . import chart_spec, plotting
from .docs import metric_label
from .metrics import METRIC_NAMES
from .options import ExportOptions
from .result import AnalysisResult

log = logging.getLogger(__name__)

METHODS = ("pearson", "spearman")


MetricsLike = AnalysisResult | Mapping[str, np.ndarray]


def _metrics(result_or_metrics: MetricsLike) -> dict[str, np.ndarray]:
    m = result_or_metrics.layer_metrics if isinstance(result_or_metrics, AnalysisResult) else result_or_metrics
    return {name: np.asarray(m[name], dtype=np.float64) for name in METRIC_NAMES}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) of a 1-D array, ties sharing their mean rank; NaN stays NaN."""
    out = np.full(x.shape, np.nan)
    ok = ~np.isnan(x)
    v = x[ok]
    order = np.argsort(v, kind="mergesort")
    sv = v[order]
    ranks = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    out[ok] = ranks
    return out


def metric_correlations(result_or_metrics: MetricsLike, method: str = "pearson") -> np.ndarray:
    """Correlation of every pair of layer metrics across layers: [M, M], rows/cols in METRIC_NAMES order.

    pearson: r = Σ_l (x_l − x̄)(y_l − ȳ) / sqrt(Σ (x_l − x̄)² Σ (y_l − ȳ)²) over the L+1 layers.
    spearman: Pearson r of the average ranks. Layers where either metric is NaN are dropped for that pair;
    a pair with a constant metric or fewer than 2 common layers gives NaN (the diagonal is 1 where defined).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    m = _metrics(result_or_metrics)
    X = np.stack([m[n] for n in METRIC_NAMES])
    M = len(METRIC_NAMES)
    out = np.full((M, M), np.nan)
    for a in range(M):
        for b in range(a, M):
            ok = ~np.isnan(X[a]) & ~np.isnan(X[b])
            if ok.sum() < 2:
                continue
            x, y = X[a][ok], X[b][ok]
            if method == "spearman":
                x, y = _ranks(x), _ranks(y)
            x, y = x - x.mean(), y - y.mean()
            den = np.sqrt((x * x).sum() * (y * y).sum())
            if den > 0:
                out[a, b] = out[b, a] = float(np.clip((x * y).sum() / den, -1.0, 1.0))
    return out


def normalized_metrics(result_or_metrics: MetricsLike) -> np.ndarray:
    """[M, L+1]: each metric scaled to [0, 1] over the layers, (x − min) / (max − min); a constant metric is 0.5,
    NaN stays NaN."""
    m = _metrics(result_or_metrics)
    rows = []
    for n in METRIC_NAMES:
        x = m[n]
        if np.all(np.isnan(x)):
            rows.append(x.copy())
            continue
        lo, hi = np.nanmin(x), np.nanmax(x)
        rows.append(np.where(np.isnan(x), np.nan, (x - lo) / (hi - lo) if hi > lo else 0.5))
    return np.stack(rows)


def metric_token_count(result: AnalysisResult) -> int:
    """Tokens that entered the layer metrics (special tokens removed when the setting says so)."""
    if result.settings.exclude_special_tokens:
        return int(sum(1 for s in result.special_mask if not s))
    return int(result.n_tokens)


def summary_figures(result: AnalysisResult) -> dict[str, int | float | None]:
    """Short summary numbers for the Overall page.

    Keys: layers, tokens, metric_tokens, token_bound (= metric tokens − 1, the ceiling of the spectral metrics),
    for each metric <name>_first / <name>_last / <name>_min_layer / <name>_max_layer, largest_erank_drop_layer
    (the layer l with the largest fall erank[l-1] − erank[l]; None with fewer than 2 layers) and
    largest_erank_drop, final_cosine_to_input.
    """
    m = _metrics(result)
    n_used = metric_token_count(result)
    out: dict[str, int | float | None] = {
        "layers": int(result.n_layers),
        "tokens": int(result.n_tokens),
        "metric_tokens": n_used,
        "token_bound": max(n_used - 1, 0),
    }
    for n in METRIC_NAMES:
        x = m[n]
        ok = not np.all(np.isnan(x))
        out[f"{n}_first"] = float(x[0])
        out[f"{n}_last"] = float(x[-1])
        out[f"{n}_min_layer"] = int(np.nanargmin(x)) if ok else None
        out[f"{n}_max_layer"] = int(np.nanargmax(x)) if ok else None
    er = m["effective_rank"]
    drops = er[:-1] - er[1:]
    if len(drops) and not np.all(np.isnan(drops)):
        i = int(np.nanargmax(drops))
        out["largest_erank_drop_layer"] = i + 1
        out["largest_erank_drop"] = float(drops[i])
    else:
        out["largest_erank_drop_layer"] = None
        out["largest_erank_drop"] = None
    out["final_cosine_to_input"] = float(m["cosine_to_input"][-1])
    return out


# --------------------------------------------------------------------------------------------------------------
# PNGs (core.plotting: object-oriented matplotlib, safe from any thread)
# --------------------------------------------------------------------------------------------------------------
def panel_grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, columns) of a grid holding n panels, at most max_cols per row."""
    cols = min(max(n, 1), max_cols)
    return -(-max(n, 1) // cols), cols


def layer_metrics_figure(result: AnalysisResult) -> Figure:
    """One panel per layer metric (METRIC_NAMES, laid out by panel_grid) against the layer (0 = embeddings … L),
    with the axes of core.chart_spec — the same as the app's charts: the y-axis from zero (cosine: 0 to 1), the
    dashed, labelled ceiling T − 1 on the spectral panels (named above the axis when far above the data), integer
    ticks for integer metrics, plain numbers without offsets or exponents. A metric with nothing to draw says why
    inside its panel."""
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator, ScalarFormatter

    m = _metrics(result)
    n_used = metric_token_count(result)
    bound = max(n_used - 1, 0)
    excluded = bool(result.settings.exclude_special_tokens)
    rows, cols = panel_grid(len(METRIC_NAMES))
    fig = plotting.figure(11.0, 3.0 * rows)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)  # a list: the spare panels and the zip both read it
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.1, top=0.86, wspace=0.28, hspace=0.55)  # fixed layout
    for ax in axes[len(METRIC_NAMES) :]:
        ax.axis("off")
    layers = np.arange(len(m[METRIC_NAMES[0]]))
    for ax, n in zip(axes, METRIC_NAMES):
        spec = chart_spec.METRIC_AXES[n]
        ax.set_title(metric_label(n), fontsize=9, pad=12)
        ax.set_xlabel(chart_spec.LAYER_AXIS_TITLE, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        domain = chart_spec.y_domain(n, m[n], bound)
        if domain is None:
            ax.set_xticks([])
            ax.set_yticks([])
            why = textwrap.fill(chart_spec.empty_reason(n, m[n], n_used, excluded) or "", 44)
            ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=7, transform=ax.transAxes)
            continue
        ax.plot(layers, m[n], marker="o", ms=3, lw=1.5, color="#1f77b4")
        ax.set_xlim(-0.25, max(len(layers) - 1, 1) + 0.25)
        ax.set_ylim(*domain)
        for line in chart_spec.visible_lines(n, bound, domain):
            ax.axhline(line.value, ls="--", lw=1, color="#888888")
            ax.text(
                0.99,
                line.value,
                line.label,
                ha="right",
                va="bottom",
                fontsize=7,
                color="#666666",
                transform=ax.get_yaxis_transform(),
            )
        note = chart_spec.ceiling_note(n, bound, domain)
        if note:
            ax.text(
                1.0, 1.01, f"↑ {note}", ha="right", va="bottom", fontsize=7, color="#666666", transform=ax.transAxes
            )
        if spec.integer:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_formatter(FormatStrFormatter("%d"))
        else:
            fmt = ScalarFormatter(useOffset=False)
            fmt.set_scientific(False)
            ax.yaxis.set_major_formatter(fmt)
        if spec.unit:
            ax.set_ylabel(spec.unit, fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"Layer metrics - {result.model.model_id} · "
        f"{chart_spec.metric_tokens_phrase(result.n_tokens, n_used, excluded)}",
        fontsize=10,
    )
    return fig


def correlation_figure(result: AnalysisResult, method: str = "pearson") -> Figure:
    """matplotlib Figure: the [M, M] correlation matrix of metric_correlations(result, method), annotated."""
    C = metric_correlations(result, method)
    labels = [metric_label(n) for n in METRIC_NAMES]
    fig = plotting.figure(6.4, 4.8)
    ax = fig.add_axes((0.36, 0.3, 0.5, 0.62))
    cax = fig.add_axes((0.88, 0.3, 0.025, 0.62))
    im = ax.imshow(np.ma.masked_invalid(C), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i in range(len(labels)):
        for j in range(len(labels)):
            txt = "–" if np.isnan(C[i, j]) else f"{C[i, j]:.2f}"
            ax.text(
                j,
                i,
                txt,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if not np.isnan(C[i, j]) and abs(C[i, j]) > 0.6 else "black",
            )
    fig.colorbar(im, cax=cax)
    name = "Pearson r" if method == "pearson" else "Spearman ρ"
    ax.set_title(f"Metric correlation across layers ({name})", fontsize=9)
    return fig


def normalized_figure(result: AnalysisResult) -> Figure:
    """matplotlib Figure: heatmap of normalized_metrics(result), metrics × layers, each row in [0, 1]."""
    N = normalized_metrics(result)
    width = max(6.0, 0.3 * N.shape[1] + 3.5)
    fig = plotting.figure(width, 2.8)
    ax = fig.add_axes((2.6 / width, 0.18, 1 - 3.6 / width, 0.72))
    cax = fig.add_axes((1 - 0.85 / width, 0.18, 0.12 / width, 0.72))
    im = ax.imshow(np.ma.masked_invalid(N), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(METRIC_NAMES)), [metric_label(n) for n in METRIC_NAMES], fontsize=7)
    step = max(1, N.shape[1] // 16)
    ax.set_xticks(range(0, N.shape[1], step))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel(chart_spec.LAYER_AXIS_TITLE, fontsize=8)
    fig.colorbar(im, cax=cax, label="min-max scaled")
    ax.set_title("Layer metrics, each scaled to [0, 1] over the layers", fontsize=9)
    return fig


def layer_metrics_png(result: AnalysisResult) -> bytes:
    """PNG bytes of `layer_metrics_figure` (dpi DPI)."""
    return plotting.png(layer_metrics_figure(result))


def correlation_png(result: AnalysisResult, method: str = "pearson") -> bytes:
    """PNG bytes of `correlation_figure` for "pearson" or "spearman"."""
    return plotting.png(correlation_figure(result, method))


def normalized_png(result: AnalysisResult) -> bytes:
    """PNG bytes of `normalized_figure`."""
    return plotting.png(normalized_figure(result))


#: bundle name -> figure function
FIGURES: dict[str, Callable[[AnalysisResult], bytes]] = {
    "plots/layer_metrics.png": layer_metrics_png,
    "plots/metric_correlation_pearson.png": lambda r: correlation_png(r, "pearson"),
    "plots/metric_correlation_spearman.png": lambda r: correlation_png(r, "spearman"),
    "plots/metrics_normalized.png": normalized_png,
}


def figure_files(result: AnalysisResult, options: ExportOptions) -> dict[str, bytes]:
    """Bundle writer: the layer-metric PNGs under plots/. A figure that fails is logged and left out (the rest of
    the bundle must still be written)."""
    out: dict[str, bytes] = {}
    for name, fn in FIGURES.items():
        try:
            out[name] = fn(result)
        except Exception as exc:  # a figure must never sink the export
            log.warning("could not draw %s: %s", name, exc)
    return out
