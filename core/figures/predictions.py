"""Figures and bundle files of the predictions and the logit lens, rendered from the result's data.

Figure functions return a matplotlib `Figure` from core.figures.plotting (no pyplot state, so several sessions may draw
at once); the `*_png` functions return PNG bytes. `prediction_bundle_files` is a bundle writer
(core.export.bundle.WRITERS): predictions.json, logit_lens.csv and the PNGs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from core.analysis.result import AnalysisResult
from core.figures.plotting import figure, png, token_label
from core.infra.formats import csv_bytes, json_bytes
from core.infra.options import ExportOptions
from core.steps.logit_lens import LensSection
from core.steps.predictions import PredictionSection

#: Above this many positions the heatmap cells are not annotated with token text (they would be unreadable).
ANNOTATE_MAX_POSITIONS = 48
LOGIT_LENS_CSV_HEADER = ["layer", "position", "rank", "token", "probability", "final_token_probability", "entropy"]


def logit_lens_heatmap_figure(lens: LensSection, tokens: list[str]) -> Figure:
    """Heatmap layers (rows, 0 = embeddings at the bottom) × positions (columns, labelled by the input token):
    colour = probability of the top-1 token that layer decodes to (grid_probs [L+1, T]); cells hold that token's
    text when there are at most ANNOTATE_MAX_POSITIONS positions. The decoded position is outlined."""
    cols = grid_columns(lens)
    probs = np.asarray(lens.grid_probs, dtype=float)[:, cols]
    tokens = [tokens[t] for t in cols]
    grid_tokens = [[row[t] for t in cols] for row in lens.grid_tokens]
    n_rows, T = probs.shape
    annotate = T <= ANNOTATE_MAX_POSITIONS
    width = 0.75 * T + 2.0 if annotate else 0.14 * T + 3.0
    fig = figure(min(max(6.0, width), 30.0), max(3.0, 0.42 * n_rows + 1.8))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(probs, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    if annotate:
        for l in range(n_rows):
            for t in range(T):
                ax.text(
                    t,
                    l,
                    token_label(grid_tokens[l][t], 8),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if probs[l, t] > 0.6 else "white",
                )
    step = max(1, T // 60)
    ax.set_xticks(range(0, T, step))
    ax.set_xticklabels(
        [
            f"{token_label(tokens[t], 10)} {cols[t]}" if cols[0] else token_label(tokens[t], 10)
            for t in range(0, T, step)
        ],
        rotation=90,
        fontsize=7,
    )
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([str(l) for l in range(n_rows)], fontsize=7)
    ax.add_patch(
        Rectangle((cols.index(lens.position) - 0.5, -0.5), 1, n_rows, fill=False, edgecolor="red", linewidth=1.5)
    )
    ax.set_xlabel("input position (token); each cell is what that layer predicts there")
    ax.set_ylabel("layer (0 = embeddings)")
    full = np.asarray(lens.grid_probs).shape[1]
    part = "" if T == full else f"; positions {cols[0]}–{cols[-1]} of 0–{full - 1}"
    ax.set_title(f"Logit lens: top token per layer and position (colour = its probability{part})")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="probability")
    return fig


def grid_columns(lens: LensSection) -> list[int]:
    """Positions of the grid that were decoded (all of them unless the lens was computed on a window)."""
    cols = list(lens.grid_positions or [])
    return cols or list(range(np.asarray(lens.grid_probs).shape[1]))


def logit_lens_layers_figure(lens: LensSection) -> Figure:
    """Two panels against the layer l = 0 … L at the decoded position: p_l(final prediction) and the entropy
    H(p_l) = -Σ p ln p in nats (the dashed line is ln V, the entropy of a uniform distribution)."""
    layers = np.asarray(lens.layers)
    fig = figure(7.0, 4.6)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(layers, lens.final_prob, marker="o", color="tab:blue")
    ax1.set_ylim(0, 1.02)
    ax1.set_ylabel("probability")
    ax1.set_title(f"Final prediction '{token_label(lens.final_token, 20)}' at position {lens.position}, by layer")
    ax2.plot(layers, lens.entropy, marker="o", color="tab:orange")
    ax2.set_ylabel("entropy (nats)")
    ax2.set_xlabel("layer (0 = embeddings)")
    vocab = lens.vocab_size
    if vocab:
        ax2.axhline(np.log(vocab), color="grey", linestyle="--", linewidth=1)
    ax2.set_xticks(layers)
    fig.tight_layout()
    return fig


def predictions_figure(
    pred: PredictionSection | None, tokens: list[str] | None = None, max_panels: int = 4
) -> Figure | None:
    """Horizontal bars of the top-k candidates (probability) for up to `max_panels` predicted positions; None
    when there is nothing to show (unavailable, or a masked-LM text without a mask)."""
    if pred is None or pred.kind == "unavailable" or not pred.candidates:
        return None
    panels = list(zip(pred.positions, pred.candidates))[:max_panels]
    k = max(len(c) for _, c in panels)
    fig = figure(4.2 * len(panels) + 0.8, max(2.5, 0.32 * k + 1.4))
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    for ax, (pos, cands) in zip(axes, panels):
        y = np.arange(len(cands))[::-1]
        ax.barh(y, [c["probability"] for c in cands], color="tab:blue")
        ax.set_yticks(y)
        ax.set_yticklabels([token_label(c["token"], 16) for c in cands], fontsize=8)
        ax.set_xlim(0, max(0.05, max(c["probability"] for c in cands) * 1.15))
        ax.set_xlabel("probability")
        what = "mask" if pred.kind == "mask_fill" else "next token after"
        at = f" '{token_label(tokens[pos], 12)}'" if tokens and pred.kind == "next_token" and pos < len(tokens) else ""
        ax.set_title(f"{what}{at} (position {pos})", fontsize=9)
    fig.tight_layout()
    return fig


def logit_lens_heatmap_png(lens: LensSection, tokens: list[str]) -> bytes:
    """PNG bytes of `logit_lens_heatmap_figure`."""
    return png(logit_lens_heatmap_figure(lens, tokens), tight=True)


def logit_lens_layers_png(lens: LensSection) -> bytes:
    """PNG bytes of `logit_lens_layers_figure`."""
    return png(logit_lens_layers_figure(lens), tight=True)


def predictions_png(pred: PredictionSection | None, tokens: list[str] | None = None) -> bytes | None:
    """PNG bytes of `predictions_figure`, or None when there is nothing to show."""
    fig = predictions_figure(pred, tokens)
    return None if fig is None else png(fig, tight=True)


# ----------------------------------------------------------------------------------------------------------------
# Bundle files


def predictions_document(result: AnalysisResult) -> dict[str, Any]:
    """Content of predictions.json: what was predicted (with probabilities), the kind, the message, the settings,
    and a summary of the logit lens (or null)."""
    pred = result.predictions
    assert pred is not None
    positions = []
    for pos, cands in zip(pred.positions, pred.candidates):
        positions.append(
            {"position": int(pos), "input_token": result.display_tokens[pos], "candidates": [dict(c) for c in cands]}
        )
    lens = result.logit_lens
    lens_doc = None
    if lens is not None:
        lens_doc = {
            "position": lens.position,
            "input_token": result.display_tokens[lens.position],
            "final_token": lens.final_token,
            "final_token_id": lens.final_token_id,
            "method": lens.method,
            "last_layer_max_abs_diff": lens.last_layer_max_abs_diff,
        }
    return {
        "model_id": result.model.model_id,
        "family": result.family,
        "kind": pred.kind,
        "message": pred.message,
        "top_k": pred.top_k,
        "analysed_text": result.analysed_text,
        "predictions": positions,
        "logit_lens": lens_doc,
        "settings": result.settings.to_dict(),
    }


def logit_lens_rows(lens: LensSection) -> list[list[Any]]:
    """Rows of logit_lens.csv (LOGIT_LENS_CSV_HEADER), ordered by layer, position, rank. At the decoded position:
    ranks 1 … k with the layer's final-token probability and entropy; at every other decoded grid position: rank 1
    (the heatmap's top token) with those two columns empty."""
    rows: list[list[Any]] = []
    n_rows = np.asarray(lens.grid_probs).shape[0]
    for l in range(n_rows):
        for t in grid_columns(lens):
            if t == lens.position:
                for r, (tok, p) in enumerate(zip(lens.top_tokens[l], lens.top_probs[l]), start=1):
                    rows.append([l, t, r, tok, float(p), float(lens.final_prob[l]), float(lens.entropy[l])])
            else:
                rows.append([l, t, 1, lens.grid_tokens[l][t], float(lens.grid_probs[l, t]), "", ""])
    return rows


def prediction_bundle_files(result: AnalysisResult, options: ExportOptions) -> dict[str, bytes]:
    """Bundle writer: predictions.json, plots/predictions.png (when there is something to show), logit_lens.csv,
    plots/logit_lens.png and plots/logit_lens_layers.png (when the lens was computed)."""
    files: dict[str, bytes] = {}
    if result.predictions is not None:
        files["predictions.json"] = json_bytes(predictions_document(result))
        image = predictions_png(result.predictions, result.display_tokens)
        if image is not None:
            files["plots/predictions.png"] = image
    lens = result.logit_lens
    if lens is not None:
        files["logit_lens.csv"] = csv_bytes(LOGIT_LENS_CSV_HEADER, logit_lens_rows(lens))
        files["plots/logit_lens.png"] = logit_lens_heatmap_png(lens, result.display_tokens)
        files["plots/logit_lens_layers.png"] = logit_lens_layers_png(lens)
    return files
