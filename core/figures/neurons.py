"""Figures, bundle files and the PDF section of the neuron factors (core.steps.neurons): the factor shading over the
tokens, the top neurons of a factor, neuron_factors.csv and neuron_factor_neurons.csv.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from core.steps.neurons import NeuronFactorSection

FACTOR_HEADER = ["factor", "position", "token", "activation"]
TOP_HEADER = ["factor", "rank", "layer", "neuron", "weight"]

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from core.analysis.result import AnalysisResult
    from core.infra.options import ExportOptions


def factor_figure(
    section: NeuronFactorSection,
    tokens: Sequence[str],
    factors: Sequence[int] | None = None,
    *,
    width_chars: int = 90,
    target: int | None = None,
) -> Figure:
    """The text once per factor, each token shaded by the factor's strength W[t, f] / max_t W[t, f]; the block
    title lists the factor's five heaviest neurons (L<block 1…L>·N<neuron>). Returns a matplotlib Figure."""
    from core.figures import plotting

    chosen = list(range(section.n_factors)) if factors is None else [int(f) for f in factors]
    strips = []
    for f in chosen:
        col = section.token_factors[:, f]
        neurons = ", ".join(section.neuron_name(f, r) for r in range(min(5, section.top_layer.shape[1])))
        strips.append((f"Factor {f}  (max {float(col.max()) or 1.0:.3g}; top neurons {neurons})", col))
    return plotting.token_strips(tokens, strips, width_chars=width_chars, target=target)


def top_neuron_figure(section: NeuronFactorSection, n: int = 10) -> Figure:
    """Bar charts of the n heaviest neurons of every factor (weight in H), one small panel per factor."""
    from core.figures import plotting

    k = section.n_factors
    n = min(n, section.top_layer.shape[1])
    cols = min(3, k)
    rows = (k + cols - 1) // cols
    fig = plotting.figure(3.3 * cols, 0.18 * n * rows + 0.9 * rows)
    for f in range(k):
        ax = fig.add_subplot(rows, cols, f + 1)
        names = [section.neuron_name(f, r) for r in range(n)]
        ax.barh(range(n), section.top_weight[f, :n], color="tab:orange")
        # the neuron names as plain texts beside the bars: matplotlib's Tick objects (two lines, a grid line and
        # two labels each) were half of this figure's cost
        ax.set_yticks([])
        ax.set_ylim(n - 0.5, -0.5)  # first (heaviest) neuron on top
        for r, name in enumerate(names):
            ax.text(-0.03, r, name, transform=ax.get_yaxis_transform(), ha="right", va="center", fontsize=7)
        ax.set_title(f"Factor {f}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.subplots_adjust(
        left=0.09,
        right=0.98,
        top=1 - 0.35 / fig.get_figheight(),
        bottom=0.3 / fig.get_figheight(),
        wspace=0.55,
        hspace=0.9 / max(n * 0.18, 1.0),
    )
    return fig


def neuron_factor_files(result: AnalysisResult, options: ExportOptions) -> dict[str, bytes]:
    """Bundle writer: neuron_factors.csv (factor, position, token, activation = W[position, factor]),
    neuron_factor_neurons.csv (factor, rank, layer, neuron, weight = H[factor, neuron]) and two plots."""
    from core.figures import plotting
    from core.infra.formats import csv_bytes

    sec = result.neuron_factors
    if sec is None:
        return {}
    return {
        "neuron_factors.csv": csv_bytes(FACTOR_HEADER, sec.factor_rows(result.tokens)),
        "neuron_factor_neurons.csv": csv_bytes(TOP_HEADER, sec.top_rows()),
        "plots/neuron_factors.png": plotting.png(
            factor_figure(sec, result.display_tokens, target=result.target_position)
        ),
        "plots/neuron_factor_neurons.png": plotting.png(top_neuron_figure(sec)),
    }


def report_section(result: AnalysisResult) -> list[tuple[str, list[str], list[list[object]]]]:
    """What the PDF prints about the neuron factors: (paragraph, table header, table rows) blocks; the PDF module
    lays them out. The strongest tokens and the five heaviest neurons of every factor."""
    sec = result.neuron_factors
    if sec is None:
        return []
    intro = (
        f"Layers {sec.blocks[0]}–{sec.blocks[1]}, {sec.d_ff} neurons each, k = {sec.n_factors} factors "
        f"(seed {sec.seed}); relative error ‖A − WH‖/‖A‖ = {sec.relative_error:.3f} after {sec.n_iter} "
        f"iterations; negative activations clipped ({100 * sec.clipped_fraction:.0f} % of the mass)."
    )
    rows: list[list[object]] = []
    for f in range(sec.n_factors):
        col = sec.token_factors[:, f]
        top_t = np.argsort(-col, kind="stable")[:5]
        toks = ", ".join(f"{result.display_tokens[t]!r}@{int(t)}" for t in top_t if col[t] > 0)
        neurons = ", ".join(sec.neuron_name(f, r) for r in range(min(5, sec.top_layer.shape[1])))
        rows.append([f, toks, neurons])
    return [(intro, ["factor", "strongest tokens (token@position)", "heaviest neurons"], rows)]
