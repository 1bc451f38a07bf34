"""Figures of a comparison of two runs (core.studies.compare): the metrics overlaid, the layer × layer CKA, the
per-head entropy difference; matplotlib's object-oriented API, PNG bytes for the bundle and the PDF.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from core.analysis.result import AnalysisResult
from core.figures import plotting
from core.present import chart_spec
from core.present.compare import run_label, run_name
from core.steps.metrics import METRIC_NAMES
from core.studies.compare import MIN_TOKENS_CKA, ComparisonResult, RunSummary, layer_cka

#: The comparison's figures: bundle name → (title, caption). Written only where defined.
FIGURES: dict[str, tuple[str, str]] = {
    "plots/metrics_overlay.png": (
        "Layer metrics of run A and run B",
        (
            "The five layer metrics of both runs, on relative depth (layer / number of "
            "layers) when the layer counts differ, else on absolute layers."
        ),
    ),
    "plots/cka.png": (
        "Linear CKA between the layers of A and B",
        (
            "Linear CKA (centred, Kornblith et al. 2019) of every layer of A against every layer of B "
            "over the same tokens; 1 = same token geometry up to rotation and scale."
        ),
    ),
    "plots/cka_debiased.png": (
        "Debiased linear CKA between the layers of A and B",
        ("The same with the unbiased HSIC estimator: independent representations score near 0."),
    ),
    "plots/layer_cka_a.png": ("Layer × layer CKA within run A", "How far run A's representation moves between layers."),
    "plots/layer_cka_b.png": ("Layer × layer CKA within run B", "How far run B's representation moves between layers."),
    "plots/entropy_difference.png": (
        "Attention entropy, B − A",
        ("Per-head attention entropy of B minus A (nats; red: B spreads its attention more). Same architecture only."),
    ),
}


def overlay_figure(cmp: ComparisonResult, axis: str | None = None) -> Figure:
    """Five panels (2 × 3 grid), one per layer metric, both runs overlaid."""
    from core.present.docs import metric_label

    axis = axis or cmp.default_axis
    fig = plotting.figure(11.0, 6.2)
    axes = fig.subplots(2, 3).ravel()
    for ax, m in zip(axes, METRIC_NAMES):
        for s, style, colour in zip(cmp.runs, ("o-", "s--"), ("#1f5fa8", "#d6604d")):
            xs = s.depth if axis == "relative" else s.layers
            ax.plot(xs, s.metrics[m], style, ms=3.5, lw=1.4, label=legend_label(cmp, s), color=colour)
        domain = chart_spec.y_domain(m, np.concatenate([s.metrics[m] for s in cmp.runs]), 0)
        if domain is not None:  # the metric's axis rule, as on the Overall page (from 0; [0, 1] for cosines)
            ax.set_ylim(*domain)
        ax.set_title(metric_label(m), fontsize=9)
        ax.set_xlabel("relative depth (layer / layers)" if axis == "relative" else "layer (0 = embeddings)", fontsize=8)
        if axis == "absolute":
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[-1].axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    # in the free sixth panel, each name wrapped to the panel's width: nothing cut, nothing outside the figure
    axes[-1].legend(handles, labels, loc="center", fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.94, bottom=0.08, hspace=0.42, wspace=0.25)
    return fig


#: The overlay's legend wraps a run's label at this many characters (the free panel is ~3.3 in wide; 8 pt text).
LEGEND_CHARS = 34


def legend_label(cmp: ComparisonResult, s: RunSummary) -> str:
    """run_label of run `s`, safe for matplotlib (no mathtext, no missing glyph) and wrapped to LEGEND_CHARS."""
    import textwrap

    return "\n".join(textwrap.wrap(plotting.token_label(run_label(cmp, s)), LEGEND_CHARS, break_on_hyphens=False))


def axis_name(cmp: ComparisonResult, s: RunSummary) -> str:
    """ "layer of A (<name>)" for the CKA heatmap's axes, safe for matplotlib."""
    return plotting.token_label(f"layer of {s.label} ({run_name(cmp, s)})")


def cka_figure(matrix: np.ndarray, y_label: str, x_label: str, title: str) -> Figure:
    """Heatmap of a CKA matrix (rows: y_label layers, bottom to top; columns: x_label layers)."""
    M = np.asarray(matrix, dtype=np.float64)
    side = 1.2 + 0.32 * max(M.shape)
    fig = plotting.figure(min(max(side * M.shape[1] / max(M.shape) + 1.4, 4.5), 11.0), min(max(side, 3.6), 9.0))
    ax = fig.add_subplot(1, 1, 1)
    low = float(min(0.0, np.nanmin(M))) if np.isfinite(M).any() else 0.0
    im = ax.imshow(M, origin="lower", cmap="viridis", vmin=low, vmax=1.0, aspect="auto", interpolation="nearest")
    if max(M.shape) <= 16:
        for i in range(M.shape[0]):
            for j in range(M.shape[1]):
                if np.isfinite(M[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{M[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="black" if M[i, j] > 0.6 else "white",
                    )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(x_label, fontsize=8)
    ax.set_ylabel(y_label, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("CKA", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.14, right=0.86, top=0.9, bottom=0.13)
    return fig


def entropy_difference_figure(diff: np.ndarray, title: str) -> Figure:
    """Layers (attention blocks, numbered 1 … L) × heads heatmap of a signed difference, white at 0."""
    D = np.asarray(diff, dtype=np.float64)
    fig = plotting.figure(min(max(3.0 + 0.35 * D.shape[1], 5.0), 11.0), min(max(2.0 + 0.3 * D.shape[0], 3.2), 9.0))
    ax = fig.add_subplot(1, 1, 1)
    lim = float(np.nanmax(np.abs(D))) if np.isfinite(D).any() else 0.0
    lim = lim if lim > 0 else 1.0
    L, H = D.shape  # attention blocks 0 … L−1 are shown as layers 1 … L (core.present.chart_spec.block_number)
    im = ax.imshow(
        D,
        origin="upper",
        cmap="RdBu_r",
        vmin=-lim,
        vmax=lim,
        aspect="auto",
        interpolation="nearest",
        extent=(-0.5, H - 0.5, chart_spec.block_number(L - 1) + 0.5, chart_spec.block_number(0) - 0.5),
    )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("head", fontsize=8)
    ax.set_ylabel("layer", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("B − A (nats)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.12, right=0.86, top=0.9, bottom=0.14)
    return fig


def comparison_plots(
    cmp: ComparisonResult, result_a: AnalysisResult | None = None, result_b: AnalysisResult | None = None
) -> dict[str, bytes]:
    """{bundle name: PNG bytes} of every comparison figure that is defined (the layer × layer CKA of each run
    only when its result, with hidden states, is given)."""
    out = {"plots/metrics_overlay.png": plotting.png(overlay_figure(cmp))}
    a, b = axis_name(cmp, cmp.a), axis_name(cmp, cmp.b)
    if cmp.cka is not None:
        out["plots/cka.png"] = plotting.png(cka_figure(cmp.cka, a, b, "Linear CKA, A × B"))
    if cmp.cka_debiased is not None:
        out["plots/cka_debiased.png"] = plotting.png(cka_figure(cmp.cka_debiased, a, b, "Debiased linear CKA, A × B"))
    for name, r, label in (("plots/layer_cka_a.png", result_a, "A"), ("plots/layer_cka_b.png", result_b, "B")):
        if r is not None and r.n_tokens >= MIN_TOKENS_CKA:
            out[name] = plotting.png(cka_figure(layer_cka(r), "layer", "layer", f"Linear CKA within run {label}"))
    if cmp.entropy_diff is not None:
        out["plots/entropy_difference.png"] = plotting.png(
            entropy_difference_figure(cmp.entropy_diff, "Attention entropy, B − A")
        )
    return out
