"""Figures and bundle files of direct logit attribution and the information-flow routes (issue 16).

Figures come from core.figures.plotting (object-oriented matplotlib on an Agg canvas, no pyplot), so several sessions
may draw at once. `peer_bundle_files` is a bundle writer (core.export.bundle.WRITERS): direct_logit_attribution.csv,
flow_edges.csv and their PNGs. `unavailable_line` is the one line the page and the PDF show when a section is
missing.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from core.analysis.result import AnalysisResult
from core.figures.plotting import figure, png, token_label
from core.infra.formats import csv_bytes
from core.infra.options import ExportOptions
from core.model.arch import not_available_line
from core.steps.dla import PEER_VIEWS, DLASection
from core.steps.flow import FlowSection, layout, line_width, node_position

DLA_CSV_HEADER = ["layer", "component", "head", "logit"]
FLOW_CSV_HEADER = ["layer", "source", "target", "kind", "head", "weight"]
KIND_COLOURS = {"attention": "#1f77b4", "residual": "#9a9a9a", "mlp": "#d62728"}
#: Above this many tokens the flow drawing labels only every n-th position.
FLOW_LABEL_MAX = 48


def unavailable_line(result: AnalysisResult, section: str) -> str | None:
    """Why `section` ("dla" or "flow") is missing from `result`, in one line, or None when it is there."""
    if getattr(result, section) is not None:
        return None
    what, verb = ("Direct logit attribution", "is") if section == "dla" else ("Information-flow routes", "are")
    if section not in result.views:
        return (
            f"{what} {'was' if verb == 'is' else 'were'} not computed in this run: the deeper views are computed "
            "on request (the Layer Analysis page, the export, `python -m core analyze`, core.add_views)"
        )
    line = not_available_line(result.model.architecture, what, verb)
    if line:
        return line
    if section == "dla" and result.family == "encoder":
        return f"{what} needs a language-model head: {result.model.model_id} is an encoder without one"
    for w in result.warnings:
        if PEER_VIEWS in w:
            return w
    return (
        f"{what} {'was' if verb == 'is' else 'were'} not computed for this result "
        "(it predates the feature or the step failed; see the warnings)"
    )


def dla_figure(dla: DLASection) -> Figure:
    """Layers (rows, first block at the bottom) × heads, plus an MLP column: each part's direct logit contribution
    to the attributed token (diverging colours, white = 0). The title gives the embedding and bias totals."""
    heads = dla.head_matrix()
    mlp = dla.mlp_column()
    L, H = heads.shape
    vmax = float(max(np.abs(heads).max(initial=0.0), np.abs(mlp).max(initial=0.0), 1e-9))
    fig = figure(min(max(5.0, 0.45 * H + 3.5), 16.0), max(3.0, 0.32 * L + 1.8))
    gs = fig.add_gridspec(1, 2, width_ratios=[H, 1.2], wspace=0.08)
    ax = fig.add_subplot(gs[0, 0])
    ax_m = fig.add_subplot(gs[0, 1], sharey=ax)
    im = ax.imshow(heads, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax_m.imshow(
        mlp[:, None], aspect="auto", origin="lower", cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest"
    )
    ax.set_xticks(range(H))
    ax.set_xticklabels([str(h) for h in range(H)], fontsize=7)
    ax.set_yticks(range(L))
    ax.set_yticklabels([str(l + 1) for l in range(L)], fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("block (1 = first)")
    ax_m.set_xticks([0])
    ax_m.set_xticklabels(["MLP"], fontsize=8)
    ax_m.tick_params(labelleft=False)
    fig.colorbar(im, ax=[ax, ax_m], fraction=0.04, pad=0.02, label="direct logit contribution")
    ax.set_title(
        f"Direct logit attribution of '{token_label(dla.token, 16)}' at position {dla.position}\n"
        f"logit {dla.logit:.3g} = heads {dla.total('attention'):+.3g}, MLPs {dla.total('mlp'):+.3g}, "
        f"embedding {dla.total('embedding'):+.3g}, biases {dla.total('bias'):+.3g}",
        fontsize=9,
        loc="left",
    )
    return fig


def flow_figure(flow: FlowSection, position: int | None = None, threshold: float | None = None) -> Figure:
    """The pruned information-flow graph as a layered drawing: x = token position, y = stage (embeddings at the
    bottom; per block: after attention, MLP, block output); edge width grows with the weight, colour = kind."""
    pos = flow.position if position is None else position
    thr = flow.threshold if threshold is None else threshold
    edges = flow.routes(pos, thr)
    nodes, recs = layout(flow, edges)
    T = len(flow.tokens)
    fig = figure(min(max(6.0, 0.32 * T + 2.0), 30.0), max(4.0, 0.55 * flow.n_layers * 2 + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    for r in sorted(recs, key=lambda r: r.weight):
        ax.plot(
            [r.x, r.x2],
            [r.y, r.y2],
            color=KIND_COLOURS.get(r.kind, "black"),
            linewidth=line_width(r.weight),
            alpha=0.75,
            solid_capstyle="round",
            zorder=1,
        )
    if nodes:
        col = ["#d62728" if n.kind == "m" else "#333333" for n in nodes]
        ax.scatter([n.x for n in nodes], [n.y for n in nodes], s=14, c=col, zorder=2)
    step = max(1, T // FLOW_LABEL_MAX)
    ax.set_xticks(range(0, T, step))
    ax.set_xticklabels([token_label(flow.tokens[t], 10) for t in range(0, T, step)], rotation=90, fontsize=7)
    ax.set_xlim(-0.7, T - 0.3)
    L = flow.n_layers
    ax.set_yticks([2 * l for l in range(L + 1)])
    ax.set_yticklabels(["embeddings" if l == 0 else f"block {l}" for l in range(L + 1)], fontsize=7)
    ax.set_ylim(-0.6, 2 * L + 0.6)
    for kind, c in KIND_COLOURS.items():
        ax.plot([], [], color=c, linewidth=2, label=kind)
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    ax.set_title(
        f"Information-flow routes to '{token_label(flow.tokens[pos], 14)}' (position {pos}), edges ≥ {thr:g}"
        f" · {len(edges)} edges",
        fontsize=9,
        loc="left",
    )
    ax.grid(axis="y", color="#eeeeee", linewidth=0.6)
    ax.set_axisbelow(True)
    return fig


def flow_edge_rows(
    flow: FlowSection, position: int | None = None, threshold: float | None = None
) -> list[list[object]]:
    return [list(r) for r in flow.csv_rows(position, threshold)]


def peer_bundle_files(result: AnalysisResult, options: ExportOptions) -> dict[str, bytes]:
    """Bundle writer: direct_logit_attribution.csv + plots/direct_logit_attribution.png (models with a head),
    flow_edges.csv + plots/flow_routes.png (the target token at the default threshold)."""
    files: dict[str, bytes] = {}
    if result.dla is not None:
        files["direct_logit_attribution.csv"] = csv_bytes(DLA_CSV_HEADER, [list(r) for r in result.dla.table_rows()])
        files["plots/direct_logit_attribution.png"] = png(dla_figure(result.dla), tight=True)
    if result.flow is not None:
        files["flow_edges.csv"] = csv_bytes(FLOW_CSV_HEADER, flow_edge_rows(result.flow))
        files["plots/flow_routes.png"] = png(flow_figure(result.flow), tight=True)
    return files


def node_token(flow: FlowSection, node: str) -> str:
    """The token of a node name (for tables)."""
    return flow.tokens[node_position(node)[2]]
