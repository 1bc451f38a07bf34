"""Layer-metric figures: matplotlib PNGs of what the Overall page plots, for the export. The numbers come from
core.present.summaries (the page and the PNGs show the same). PNG functions return bytes (Agg backend, figures closed).
`figure_files` is the bundle writer.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable

import numpy as np
from matplotlib.figure import Figure

from core.analysis.result import AnalysisResult
from core.figures import plotting
from core.infra.options import ExportOptions
from core.present import chart_spec
from core.present.docs import metric_label
from core.present.summaries import metric_correlations, metric_token_count, normalized_metrics
from core.present.summaries import metrics_of as _metrics
from core.steps.metrics import METRIC_NAMES

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# PNGs (core.figures.plotting: object-oriented matplotlib, safe from any thread)
# --------------------------------------------------------------------------------------------------------------
def panel_grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, columns) of a grid holding n panels, at most max_cols per row."""
    cols = min(max(n, 1), max_cols)
    return -(-max(n, 1) // cols), cols


def layer_metrics_figure(result: AnalysisResult) -> Figure:
    """One panel per layer metric (METRIC_NAMES, laid out by panel_grid) against the layer (0 = embeddings … L),
    with the axes of core.present.chart_spec — the same as the app's charts: the y-axis from zero (cosine: 0 to 1), the
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
