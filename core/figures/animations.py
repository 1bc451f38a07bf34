"""Layer-transition animations (GIF bytes, imageio): attention across layers and token representations moving
through one common 2-D basis. One labelled frame per layer; the figure, axes, colour scale and token labels are
built once and only the data and the title change per frame.
"""

from __future__ import annotations

import logging

import numpy as np

from core.analysis.result import AnalysisResult
from core.figures import plotting
from core.figures.plotting import Blitter, token_labels
from core.infra.threads import single_threaded
from core.present import chart_spec

log = logging.getLogger(__name__)

FRAME_MS = 700
MAX_POINT_LABELS = 40
#: Token labels of the trajectory frames (points).
LABEL_PT = 7
#: The attention GIF labels at most this many tokens per axis (more would be too small to read in a frame).
MAX_TICK_LABELS = 40


def attention_layers_gif(result: AnalysisResult, head: int | None = None, *, frame_ms: int = FRAME_MS) -> bytes:
    """GIF of the attention matrix layer by layer: the mean over heads (1/H) Σ_h A_lh, or head `head`.

    One frame per layer (L frames), all on one colour scale [0, max over layers]. GIF bytes.
    """
    L, H, T = result.n_layers, result.n_heads, result.n_tokens
    if head is not None and not 0 <= head < H:
        raise ValueError(f"head {head} does not exist: the model has {H} heads")
    # one layer's maps at a time (result.attention_maps); float16 maps widened
    mats = np.stack(
        [
            result.attention_maps(l).mean(0, dtype=np.float32)
            if head is None
            else result.attention_maps(l)[head].astype(np.float32)
            for l in range(L)
        ]
    )
    side = min(3 + 0.08 * T, 8)
    fig = plotting.figure(side + 0.8, side)
    ax = fig.subplots()
    im = ax.imshow(mats[0], cmap="Blues", vmin=0, vmax=float(mats.max()) or 1.0)
    labels = token_labels(result.display_tokens or result.tokens, 12)
    if T > MAX_TICK_LABELS:  # only every n-th token is labelled: say which position each label is
        labels = [f"{i}: {t}" for i, t in enumerate(labels)]
    plotting.token_ticks(ax, labels, "x", max_labels=MAX_TICK_LABELS)
    plotting.token_ticks(ax, labels, "y", max_labels=MAX_TICK_LABELS)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    fig.colorbar(im, ax=ax, shrink=0.7)
    titles = attention_frame_titles(L, head)
    title = ax.set_title(max(titles, key=len), fontsize=10)
    fig.tight_layout()
    blit = Blitter(fig, [im, title])
    frames = []
    for l in range(L):
        im.set_data(mats[l])
        title.set_text(titles[l])
        frames.append(blit.frame())
    return plotting.gif(frames, frame_ms)


def attention_frame_titles(n_layers: int, head: int | None = None) -> list[str]:
    """The frame titles of `attention_layers_gif`: "Layer l of L: attention, …" for the blocks l = 1 … L (the
    numbering of the pages, the CSV files and the PDF; core.present.chart_spec)."""
    what = "mean over heads" if head is None else f"head {head}"
    return [
        f"{chart_spec.layer_title(chart_spec.block_number(i), n_layers)}: attention, {what}" for i in range(n_layers)
    ]


def trajectory_frame_titles(n_layers: int) -> list[str]:
    """The frame titles of `token_trajectories_gif`: "Layer l of L" for the hidden states l = 0 (embeddings) … L."""
    return [f"{chart_spec.layer_title(l, n_layers)}: token states, common basis" for l in range(n_layers + 1)]


def common_projection(hidden_states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project every layer's token states onto ONE 2-D PCA basis fitted on all layers stacked.

    hidden_states [L+1, T, D] → (points [L+1, T, 2], explained variance ratio [2]). X = all (L+1)·T states, μ its
    mean; the basis is the top two eigenvectors of the covariance (X − μ)ᵀ(X − μ) (signs fixed: largest-magnitude
    entry positive); points = (X − μ) V. Computed in float64.
    """
    with single_threaded():
        return _common_projection(np.asarray(hidden_states, dtype=np.float64))


def _common_projection(Hs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, T, D = Hs.shape
    X = Hs.reshape(n * T, D)
    mu = X.mean(0)
    Xc = X - mu
    if Xc.shape[0] < D:  # eigenvectors of the smaller Gram matrix give the same basis
        w, u = np.linalg.eigh(Xc @ Xc.T)
        order = np.argsort(w)[::-1][:2]
        V = Xc.T @ u[:, order]
        V /= np.maximum(np.linalg.norm(V, axis=0), 1e-300)
        top = w[order]
    else:
        w, V = np.linalg.eigh(Xc.T @ Xc)
        order = np.argsort(w)[::-1][:2]
        V, top = V[:, order], w[order]
    for c in range(V.shape[1]):
        if V[np.argmax(np.abs(V[:, c])), c] < 0:
            V[:, c] = -V[:, c]
    total = float((Xc * Xc).sum())
    ratio = np.maximum(top, 0) / total if total > 0 else np.zeros(len(top))
    P = np.zeros((n * T, 2))
    P[:, : V.shape[1]] = Xc @ V
    r = np.zeros(2)
    r[: len(ratio)] = ratio
    return P.reshape(n, T, 2), r


def token_trajectories_gif(result: AnalysisResult, *, frame_ms: int = FRAME_MS) -> bytes:
    """GIF of the tokens' hidden states in one common 2-D PCA basis (see `common_projection`), one frame per
    hidden-state layer (L+1 frames: 0 = embeddings, l = after block l), fixed axes, the previous layers faint.
    GIF bytes.
    """
    P, ratio = common_projection(result.hidden_states)
    n, T, _ = P.shape
    fig = plotting.figure(6, 5)
    ax = fig.subplots()
    lo, hi = P.reshape(-1, 2).min(0), P.reshape(-1, 2).max(0)
    pad = (hi - lo) * 0.08 + 1e-9
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f} % of variance, all layers)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.0f} %)")
    colours = plotting.colormap("viridis")(np.linspace(0, 1, T))
    trail = ax.scatter(P[0, :, 0], P[0, :, 1], s=6, c="0.8", zorder=1)
    pts = ax.scatter(P[0, :, 0], P[0, :, 1], s=30, c=colours, edgecolors="k", linewidths=0.3, zorder=3)
    labels = token_labels(result.display_tokens or result.tokens, 12)
    step = max(1, int(np.ceil(T / MAX_POINT_LABELS)))
    shown = list(range(0, T, step))
    texts = [
        ax.text(P[0, i, 0], P[0, i, 1], labels[i], fontsize=LABEL_PT, zorder=4, ha="left", va="bottom") for i in shown
    ]
    titles = trajectory_frame_titles(n - 1)
    title = ax.set_title(max(titles, key=len), fontsize=10)
    fig.tight_layout()
    # label boxes in pixels (the axes are fixed, so one transform serves every frame): a label that would overlap
    # one placed before it is left out of that frame instead of being drawn over it
    to_px, from_px = ax.transData.transform, ax.transData.inverted().transform
    height = LABEL_PT * plotting.DPI / 72
    widths = [0.62 * height * len(labels[i]) + 2 for i in shown]
    x0, y0, x1, y1 = (float(v) for v in ax.bbox.extents)
    blit = Blitter(fig, [trail, pts, *texts, title])
    frames = []
    for l in range(n):
        trail.set_offsets(P[:l].reshape(-1, 2) if l else np.empty((0, 2)))
        pts.set_offsets(P[l])
        spots = chart_spec.place_labels(to_px(P[l, shown]), widths, height, bounds=(x0, y0, x1, y1))
        for t, spot in zip(texts, spots):
            t.set_visible(spot is not None)
            if spot is not None:
                t.set_position(tuple(from_px(spot)))
        title.set_text(titles[l])
        frames.append(blit.frame())
    return plotting.gif(frames, frame_ms)
