"""Figure, bundle file and the PDF section of the query–key view (core.steps.qk): a head's queries, keys, q ⊙ k,
scores and weights at one query, and query_key.csv.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from core.present.chart_spec import block_number
from core.steps.qk import QKView, qk_view

MAX_KEYS_SHOWN = 40
QK_HEADER = ["layer", "head", "kv_head", "query", "key", "token", "dot", "score", "weight"]

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from core.analysis.result import AnalysisResult
    from core.infra.options import ExportOptions


def shown_keys(view: QKView, max_keys: int = MAX_KEYS_SHOWN) -> np.ndarray:
    """Key positions drawn: all of them up to max_keys, else the max_keys with the largest weights (in order)."""
    T = view.weights.shape[0]
    if T <= max_keys:
        return np.arange(T)
    return np.sort(np.argsort(-view.weights, kind="stable")[:max_keys])


def qk_figure(view: QKView, tokens: list[str], max_keys: int = MAX_KEYS_SHOWN) -> Figure:
    """BertViz's neuron view as heatmaps: q (top strip), k_j and q ⊙ k_j (rows = keys, columns = dimensions), and
    the scores and softmax weights of the keys as bars. Long texts show the max_keys heaviest keys."""
    from core.figures import plotting

    keys = shown_keys(view, max_keys)
    n = len(keys)
    labels = [f"{j}: {plotting.token_label(tokens[j])}" for j in keys]
    fig = plotting.figure(11.0, 1.6 + 0.2 * n)
    gs = fig.add_gridspec(
        2,
        4,
        height_ratios=(1, max(n, 2)),
        width_ratios=(3, 3, 1.2, 1.2),
        hspace=0.08,
        wspace=0.12,
        left=0.13,
        right=0.98,
        top=0.9,
        bottom=0.08,
    )
    cmap = plotting.colormap("RdBu_r")
    lim_q = float(np.abs(view.q).max()) or 1.0
    ax_q = fig.add_subplot(gs[0, 0])
    ax_q.imshow(view.q[None], aspect="auto", cmap=cmap, vmin=-lim_q, vmax=lim_q)
    ax_q.set_yticks([0], [f"q ({view.query}: {plotting.token_label(tokens[view.query])})"], fontsize=7)
    ax_q.set_xticks([])
    ax_q.set_title("query q and keys k_j", fontsize=9)
    ax_k = fig.add_subplot(gs[1, 0])
    lim_k = float(np.abs(view.keys[keys]).max()) or 1.0
    ax_k.imshow(view.keys[keys], aspect="auto", cmap=cmap, vmin=-lim_k, vmax=lim_k)
    ax_k.set_yticks(range(n), labels, fontsize=7)
    ax_k.set_xlabel("dimension", fontsize=8)
    ax_p = fig.add_subplot(gs[1, 1])
    prod = view.products[keys]
    lim_p = float(np.abs(prod).max()) or 1.0
    ax_p.imshow(prod, aspect="auto", cmap=cmap, vmin=-lim_p, vmax=lim_p)
    ax_p.set_title("q ⊙ k_j", fontsize=9)
    ax_p.set_xlabel("dimension", fontsize=8)
    ax_s = fig.add_subplot(gs[1, 2])
    finite = np.where(np.isfinite(view.scores[keys]), view.scores[keys], np.nan)
    bars = np.nan_to_num(finite)
    ax_s.barh(range(n), bars, color=["tab:red" if v > 0 else "tab:blue" for v in bars])
    ax_s.set_title("score", fontsize=9)
    ax_s.tick_params(labelsize=7)
    ax_w = fig.add_subplot(gs[1, 3])
    ax_w.barh(range(n), view.weights[keys], color="tab:purple")
    ax_w.set_xlim(0, 1)
    ax_w.set_title("weight", fontsize=9)
    ax_w.tick_params(labelsize=7)
    for ax in (ax_k, ax_p, ax_s, ax_w):  # one row per key on every panel (no shared axes: fewer ticks to draw)
        ax.set_ylim(n - 0.5, -0.5)
    for ax in (ax_p, ax_s, ax_w):
        ax.set_yticks([])
    more = f", {n} of {view.weights.shape[0]} keys (largest weights)" if n < view.weights.shape[0] else ""
    fig.suptitle(
        f"Layer {block_number(view.layer)}, head {view.head} (key-value head {view.kv_head}), query {view.query}{more}",
        fontsize=10,
    )
    return fig


def default_view(result: AnalysisResult) -> QKView | None:
    """The view the bundle and the PDF show: last layer, head 0, the target token's query."""
    sec = result.query_key
    if sec is None:
        return None
    return qk_view(sec, sec.queries.shape[0] - 1, 0, result.target_position)


def query_key_rows(result: AnalysisResult) -> list[list[object]]:
    """Rows of query_key.csv: every head of the last layer at the target query, one row per key (layer = block
    1…L as in every other file, heads from 0; dot = q·k, score = c·q·k + mask, −inf for masked keys, weight =
    softmax)."""
    sec = result.query_key
    if sec is None:
        return []
    layer, query = sec.queries.shape[0] - 1, result.target_position
    rows: list[list[object]] = []
    for head in range(sec.queries.shape[1]):
        v = qk_view(sec, layer, head, query)
        dots = v.products.sum(axis=1)
        rows += [
            [
                block_number(layer),
                head,
                v.kv_head,
                query,
                j,
                result.tokens[j],
                float(dots[j]),
                float(v.scores[j]),
                float(v.weights[j]),
            ]
            for j in range(len(result.tokens))
        ]
    return rows


def query_key_files(result: AnalysisResult, options: ExportOptions) -> dict[str, bytes]:
    """Bundle writer: query_key.csv (the last layer's heads at the target query) and plots/query_key.png."""
    from core.figures import plotting
    from core.infra.formats import csv_bytes

    view = default_view(result)
    if view is None:
        return {}
    return {
        "query_key.csv": csv_bytes(QK_HEADER, query_key_rows(result)),
        "plots/query_key.png": plotting.png(qk_figure(view, result.display_tokens)),
    }


def report_section(result: AnalysisResult) -> list[tuple[str, list[str], list[list[object]]]]:
    """What the PDF prints about the query–key view: the default view's five heaviest keys."""
    view = default_view(result)
    if view is None:
        return []
    order = np.argsort(-view.weights, kind="stable")[:5]
    dots = view.products.sum(axis=1)
    rows: list[list[object]] = [
        [int(j), repr(result.display_tokens[j]), float(dots[j]), float(view.scores[j]), float(view.weights[j])]
        for j in order
    ]
    intro = (
        f"Layer {block_number(view.layer)}, head {view.head} (key-value head {view.kv_head}), query {view.query} "
        f"({result.display_tokens[view.query]!r}): the five keys with the largest weights."
    )
    return [(intro, ["key", "token", "q·k", "score", "weight"], rows)]
