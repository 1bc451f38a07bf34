"""Figures of the attention and attribution sections, rendered from an AnalysisResult (never inside analyze()).

Every figure function returns PNG bytes (core.figures.plotting: object-oriented matplotlib, safe from any thread).
`single_head_stats` gives the plain data of the single-head view, and `attention_bundle_files` is the bundle writer
of this part (core.export.bundle.WRITERS).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from core.analysis.result import AnalysisResult
from core.figures import plotting
from core.figures.animations import attention_layers_gif, token_trajectories_gif
from core.figures.plotting import token_label, token_labels
from core.infra.formats import csv_bytes
from core.infra.options import ExportOptions
from core.present import chart_spec
from core.steps.attention import (
    attention_entropy,
    mean_attention_distance,
    row_entropy,
)

log = logging.getLogger(__name__)

_ROLE_MARKERS = {"previous-token": "<", "first-token/sink": "s", "self": "o", "broad": "D", "other": "^"}
S = TypeVar("S")


def _tokens(result: AnalysisResult) -> list[str]:
    return token_labels(result.display_tokens or result.tokens)


def _need(section: S | None, what: str) -> S:
    if section is None:
        raise ValueError(f"the result has no {what} section")
    return section


# ----------------------------------------------------------------------------------------------------------------
# Attention analysis figures


def entropy_heatmap(result: AnalysisResult, *, normalized: bool = False) -> bytes:
    """Heatmap layers × heads of the attention entropy (nats) or the normalised entropy (0…1). PNG bytes."""
    att = _need(result.attention, "attention analysis")
    data = att.normalized_entropy if normalized else att.entropy
    L, H = data.shape
    fig = plotting.figure(min(2 + 0.45 * H, 12), min(1.5 + 0.35 * L, 10))
    ax = fig.subplots()
    im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0 if normalized else None, vmax=1 if normalized else None)
    ax.set_xlabel("head")
    ax.set_ylabel(chart_spec.BLOCK_AXIS_TITLE)
    ax.set_xticks(range(H))
    ax.set_yticks(range(L), [str(chart_spec.block_number(i)) for i in range(L)])
    ax.tick_params(labelsize=7)
    ax.set_title("Normalised attention entropy" if normalized else "Attention entropy (nats)", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return plotting.png(fig)


def head_clusters_plot(result: AnalysisResult) -> bytes:
    """Scatter of the heads' 2-D feature projection, coloured by cluster, marker by role, labelled L<l>H<h>."""
    att = _need(result.attention, "attention analysis")
    P, H = att.projection, att.n_heads
    fig = plotting.figure(6.5, 5)
    ax = fig.subplots()
    cmap = plotting.colormap("tab10")
    for role, marker in _ROLE_MARKERS.items():
        idx = [i for i, r in enumerate(att.roles) if r == role]
        if idx:
            ax.scatter(
                P[idx, 0],
                P[idx, 1],
                c=[cmap(int(att.clusters[i]) % 10) for i in idx],
                marker=marker,
                s=36,
                edgecolors="k",
                linewidths=0.4,
                label=role,
            )
    size = 7 if len(att.roles) <= 48 else 5
    for i in range(len(att.roles)):
        ax.annotate(
            f"L{chart_spec.block_number(i // H)}H{i % H}",
            (P[i, 0], P[i, 1]),
            fontsize=size,
            xytext=(2, 2),
            textcoords="offset points",
        )
    ax.set_xlabel("PC 1 of the standardised head features")
    ax.set_ylabel("PC 2")
    sil = f", silhouette {att.silhouette:.2f}" if att.silhouette is not None else ""
    ax.set_title(f"Head clusters: {att.n_clusters} cluster(s){sil}", fontsize=10)
    ax.legend(fontsize=7, title="role (colour = cluster)", title_fontsize=7, loc="best")
    return plotting.png(fig, tight=True)


#: Colour scales of the token × token attention maps (the `scale` argument): the rule is core.present.chart_spec's
#: (ATTENTION_SCALES, LOG_FLOOR, default_attention_scale, attention_scale_caption), shared with the page's heatmap.
ATTENTION_SCALES = chart_spec.ATTENTION_SCALES
LOG_FLOOR = chart_spec.LOG_FLOOR
default_attention_scale = chart_spec.default_attention_scale
attention_scale_caption = chart_spec.attention_scale_caption
_BAR_LABELS = {"linear": "attention weight", "row": "weight / row maximum", "log": "attention weight (log scale)"}


def _scaled(mat: np.ndarray, scale: str) -> tuple[np.ndarray, Any, str]:
    """(values to draw, matplotlib norm, colour-bar label) of an attention map [T, T] under `scale`
    (core.present.chart_spec.scaled_attention)."""
    from matplotlib.colors import LogNorm, Normalize

    shown, low, high = chart_spec.scaled_attention(mat, scale, int(mat.shape[-1]))
    norm = LogNorm(low, high) if scale == "log" else Normalize(low, high)
    return shown, norm, _BAR_LABELS[scale]


def _labelled_heatmap(ax: Axes, mat: np.ndarray, labels: list[str], title: str, scale: str = "linear") -> AxesImage:
    shown, norm, _label = _scaled(mat, scale)
    im = ax.imshow(shown, cmap="Blues", norm=norm, aspect="equal", interpolation="nearest")
    plotting.token_ticks(ax, labels, "x")
    plotting.token_ticks(ax, labels, "y")
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=10)
    return im


def _colorbar(fig: Any, im: AxesImage, ax: Axes, scale: str) -> None:
    bar = fig.colorbar(im, ax=ax, shrink=0.7)
    bar.set_label(_scaled(np.zeros((1, 1)), scale)[2], fontsize=8)
    bar.ax.tick_params(labelsize=7)


def mean_attention_heatmap(result: AnalysisResult, layer: int = -1, scale: str | None = None) -> bytes:
    """Labelled heatmap of the attention of `layer` averaged over its heads: (1/H) Σ_h A_lh [T, T], coloured by
    `scale` (ATTENTION_SCALES; None: default_attention_scale(T)), named under the title. PNG bytes."""
    L = result.n_layers
    l = layer % L
    mat = result.attention_maps(l).mean(0, dtype=np.float32)
    T = mat.shape[0]
    scale = scale or default_attention_scale(T)
    side = min(3 + 0.1 * T, 9)
    fig = plotting.figure(side + 1, side)
    ax = fig.subplots()
    im = _labelled_heatmap(
        ax,
        mat,
        _tokens(result),
        f"Layer {chart_spec.block_number(l)}: attention averaged over heads\n{attention_scale_caption(scale)}",
        scale,
    )
    ax.title.set_fontsize(9)
    _colorbar(fig, im, ax, scale)
    fig.tight_layout()
    return plotting.png(fig)


def single_head_stats(result: AnalysisResult, layer: int, head: int, top: int = 10) -> dict[str, Any]:
    """Plain data of one head: its statistics and top attended (query, key) pairs.

    Returns {"layer", "head", "entropy", "normalized_entropy", "mean_distance", "role", "cluster",
    "features": {name: value}, "top_pairs": [{"query", "query_token", "key", "key_token", "weight"}] (largest
    a_ij first, at most `top`), "row_entropy": [T] entropy of each query row (nats)}.
    """
    L, H = result.n_layers, result.n_heads
    if not (0 <= layer < L and 0 <= head < H):
        raise ValueError(f"no head L{layer}H{head}: the model has {L} layers × {H} heads")
    A = result.attention_maps(layer)[head].astype(np.float32)
    T = A.shape[0]
    flat = np.argsort(-A, axis=None, kind="stable")[: max(0, min(top, T * T))]
    toks = result.display_tokens or result.tokens
    pairs = [
        {"query": int(i), "query_token": toks[i], "key": int(j), "key_token": toks[j], "weight": float(A[i, j])}
        for i, j in (divmod(int(k), T) for k in flat)
    ]
    out: dict[str, Any] = {
        "layer": int(layer),
        "head": int(head),
        "top_pairs": pairs,
        "row_entropy": [float(x) for x in row_entropy(A)],
    }
    att = result.attention
    if att is not None:
        r = layer * H + head
        out.update(
            entropy=float(att.entropy[layer, head]),
            normalized_entropy=float(att.normalized_entropy[layer, head]),
            mean_distance=float(att.mean_distance[layer, head]),
            role=att.roles[r],
            cluster=int(att.clusters[r]),
            features={n: float(v) for n, v in zip(att.feature_names, att.features[r])},
        )
    else:
        e, ne = attention_entropy(A)
        out.update(
            entropy=float(e),
            normalized_entropy=float(ne),
            mean_distance=float(mean_attention_distance(A)),
            role=None,
            cluster=None,
            features={},
        )
    return out


def single_head_plot(result: AnalysisResult, layer: int, head: int, top: int = 10, scale: str | None = None) -> bytes:
    """Labelled heatmap of head (layer, head) with its statistics and top pairs beside it, coloured by `scale`
    (as mean_attention_heatmap). PNG bytes."""
    s = single_head_stats(result, layer, head, top)
    A = result.attention_maps(layer)[head].astype(np.float32)
    T = A.shape[0]
    scale = scale or default_attention_scale(T)
    side = min(3 + 0.1 * T, 9)
    fig = plotting.figure(side + 4, side)
    ax, tx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [side, 4]})
    im = _labelled_heatmap(
        ax,
        A,
        _tokens(result),
        f"Layer {chart_spec.block_number(layer)}, head {head}\n{attention_scale_caption(scale)}",
        scale,
    )
    ax.title.set_fontsize(9)
    _colorbar(fig, im, ax, scale)
    tx.axis("off")
    lines = [
        f"role: {s['role']}",
        f"cluster: {s['cluster']}",
        f"entropy: {s['entropy']:.3f} nats",
        f"normalised entropy: {s['normalized_entropy']:.3f}",
        f"mean distance: {s['mean_distance']:.2f} tokens",
        "",
        "top pairs (query → key):",
    ]
    lines += [
        f"{p['weight']:.3f}  {p['query']}:{token_label(p['query_token'], 12)} → "
        f"{p['key']}:{token_label(p['key_token'], 12)}"
        for p in s["top_pairs"]
    ]
    tx.text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace", transform=tx.transAxes)
    fig.tight_layout()
    return plotting.png(fig)


# ----------------------------------------------------------------------------------------------------------------
# Attribution figures

_METHOD_TITLES = {
    "rollout": "attention rollout",
    "grad_x_input": "gradient × input",
    "integrated_gradients": "integrated gradients",
}


def token_attribution_plot(result: AnalysisResult, *, width_chars: int = 90) -> bytes:
    """The text with each token shaded by its score, one block per method (rollout, gradient × input, IG).

    Each method is scaled by its largest |score|; signed methods use a red (positive) / blue (negative) scale,
    rollout (non-negative) a single-hue scale. The target token is outlined. PNG bytes.
    """
    attr = _need(result.attribution, "attribution")
    methods = attr.methods()
    toks = result.display_tokens or result.tokens
    fs = 9
    line_h = 1.6
    # lay the tokens out once (wrapping at width_chars), shared by every method block
    pos, x, y = [], 0.0, 0.0
    shown = []
    for t in toks:
        word_start = t.startswith(" ") and t.strip() != ""
        t = token_label(t.lstrip(" ") if word_start else t)  # a leading space becomes a wider gap before the box
        shown.append(t)
        x += 0.6 if word_start and x > 0 else 0.0
        w = max(len(t), 1) + 0.6
        if x + w > width_chars and x > 0:
            x, y = 0.0, y + line_h
        pos.append((x, y, w))
        x += w + 0.3
    n_lines = int(round(y / line_h)) + 1
    block_h = n_lines * line_h + 1.6
    total_h = block_h * len(methods)
    cmap_pos, cmap_div = plotting.colormap("Greens"), plotting.colormap("RdBu_r")
    fig = plotting.figure(min(width_chars * 0.095 + 0.5, 10), 0.3 * total_h * 0.62 + 0.6)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-0.5, width_chars + 0.5)
    ax.set_ylim(total_h, -0.5)
    ax.axis("off")
    boxes: list[Rectangle] = []
    faces: list[Any] = []
    edges: list[str] = []
    for b, (name, scores) in enumerate(methods.items()):
        top = b * block_h
        scale = float(np.max(np.abs(scores))) or 1.0
        signed = name != "rollout"
        ax.text(
            0,
            top + 0.5,
            f"{_METHOD_TITLES.get(name, name)} (max |score| {scale:.3g})",
            fontsize=fs,
            fontweight="bold",
            va="center",
        )
        for i, ((x0, y0, w), t) in enumerate(zip(pos, shown)):
            v = float(scores[i]) / scale
            colour = cmap_div(0.5 + 0.5 * v) if signed else cmap_pos(max(v, 0.0))
            yy = top + 1.6 + y0
            boxes.append(Rectangle((x0, yy - 0.65), w, 1.3))
            faces.append(colour)
            edges.append("k" if i == attr.target_position else "none")
            dark = abs(v) > 0.6
            ax.text(
                x0 + 0.3,
                yy,
                t,
                fontsize=fs,
                family="monospace",
                va="center",
                ha="left",
                color="white" if dark else "black",
            )
    # one collection for every box: add_patch per box updated the data limits each time (a third of the figure)
    ax.add_collection(PatchCollection(boxes, facecolors=faces, edgecolors=edges, linewidths=1.2, zorder=1))
    return plotting.png(fig, tight=True)


def head_attribution_heatmap(result: AnalysisResult) -> bytes:
    """Heatmap layers × heads of the per-head attribution scores (diverging, centred at 0). PNG bytes."""
    attr = _need(result.attribution, "attribution")
    if attr.head_scores is None:
        raise ValueError("the result has no per-head attribution scores")
    S = attr.head_scores
    L, H = S.shape
    m = float(np.max(np.abs(S))) or 1.0
    fig = plotting.figure(min(2 + 0.45 * H, 12), min(1.5 + 0.35 * L, 10))
    ax = fig.subplots()
    im = ax.imshow(S, aspect="auto", cmap="RdBu_r", vmin=-m, vmax=m)
    ax.set_xlabel("head")
    ax.set_ylabel(chart_spec.BLOCK_AXIS_TITLE)
    ax.set_xticks(range(H))
    ax.set_yticks(range(L), [str(chart_spec.block_number(i)) for i in range(L)])
    ax.tick_params(labelsize=7)
    ax.set_title(f"Head attribution for {token_label(repr(attr.predicted_token))} (gradient × head output)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return plotting.png(fig)


# ----------------------------------------------------------------------------------------------------------------
# Bundle writer


def attention_tables(result: AnalysisResult) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The CSV tables of this part as {file name: (header, rows)} (only those whose data exist). Layers are numbered
    1 … L as on the pages (core.present.chart_spec.block_number); heads from 0."""
    out: dict[str, tuple[list[str], list[list[Any]]]] = {}
    att = result.attention
    if att is not None:
        L, H = att.entropy.shape
        out["attention_entropy.csv"] = (
            ["layer", "head", "entropy", "normalized_entropy"],
            [
                [chart_spec.block_number(l), h, float(att.entropy[l, h]), float(att.normalized_entropy[l, h])]
                for l in range(L)
                for h in range(H)
            ],
        )
        out["head_clusters.csv"] = (
            ["layer", "head", "cluster", "role", *att.feature_names],
            [
                [
                    chart_spec.block_number(r // H),
                    r % H,
                    int(att.clusters[r]),
                    att.roles[r],
                    *(float(v) for v in att.features[r]),
                ]
                for r in range(L * H)
            ],
        )
    attr = result.attribution
    if attr is not None:
        methods = attr.methods()
        names = list(methods)
        out["token_attribution.csv"] = (
            ["position", "token", *names],
            [[i, tok, *(float(methods[n][i]) for n in names)] for i, tok in enumerate(result.tokens)],
        )
        if attr.head_scores is not None:
            L, H = attr.head_scores.shape
            out["head_attribution.csv"] = (
                ["layer", "head", "score"],
                [[chart_spec.block_number(l), h, float(attr.head_scores[l, h])] for l in range(L) for h in range(H)],
            )
    return out


def attention_bundle_files(result: AnalysisResult, options: ExportOptions) -> dict[str, bytes]:
    """Bundle members of the attention/attribution part: CSVs, plots/*.png and (options.animations)
    animations/*.gif. Fixed names only. A figure that fails is logged and left out, never the CSVs."""
    files = {name: csv_bytes(h, rows) for name, (h, rows) in attention_tables(result).items()}
    figures: list[tuple[str, Callable[[], bytes]]] = []
    if result.attention is not None:
        figures += [
            ("plots/attention_entropy.png", lambda: entropy_heatmap(result)),
            ("plots/attention_entropy_normalized.png", lambda: entropy_heatmap(result, normalized=True)),
            ("plots/head_clusters.png", lambda: head_clusters_plot(result)),
        ]
    if result.attribution is not None:
        figures.append(("plots/token_attribution.png", lambda: token_attribution_plot(result)))
        if result.attribution.head_scores is not None:
            figures.append(("plots/head_attribution.png", lambda: head_attribution_heatmap(result)))
    if result.n_layers and result.n_tokens:
        figures.append(("plots/attention_mean_last_layer.png", lambda: mean_attention_heatmap(result, -1)))
    if options.animations:
        figures += [
            ("animations/attention_layers.gif", lambda: attention_layers_gif(result)),
            ("animations/token_trajectories.gif", lambda: token_trajectories_gif(result)),
        ]
    for name, make in figures:
        try:
            files[name] = make()
        except Exception as exc:  # a figure must not cost the user the data files
            log.warning("could not render %s: %s", name, exc)
    return files
