"""Figures of the causal evidence: the activation-patching heatmaps and component bars, and head ablation beside
the gradient head score. matplotlib's object-oriented API only (no pyplot), PNG bytes out; safe from threads.

`patching_files(result)` is what the CLI's `patch` bundle holds; `head_ablation_files` is the analysis bundle's
writer for the head-ablation table and its figure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from core.figures import plotting
from core.infra.formats import csv_bytes
from core.infra.options import ExportOptions
from core.present.chart_spec import block_number
from core.steps.ablation import HeadAblationSection
from core.studies.patching import COMPONENTS, PatchingResult

if TYPE_CHECKING:
    from core.analysis.result import AnalysisResult

COMPONENT_LABELS = {"residual": "residual stream (block input)", "attention": "attention output", "mlp": "MLP output"}


def display_token(tok: str) -> str:
    """A byte-level BPE / SentencePiece token as text: Ġ and ▁ are spaces, Ċ a newline, ĉ a tab, č a carriage return
    (plotting.byte_level_text; then plotting.token_label shows a leading space as ␣)."""
    return plotting.byte_level_text(tok)


def _label(tok: str) -> str:
    return plotting.token_label(display_token(tok), 12)


def _png(fig: Any) -> bytes:
    return plotting.png(fig, tight=True)


def _limit(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(max(1.0, finite.max())) if finite.size else 1.0


def patching_heatmap(result: PatchingResult, component: str = "residual") -> bytes:
    """Restored fraction, layers × positions, diverging colour scale centred on 0 (red = restores the answer)."""
    from matplotlib.colors import TwoSlopeNorm

    r = result.restored(component)
    L, T = r.shape
    fig = plotting.figure(max(4.0, 0.45 * T + 2.0), max(2.2, 0.3 * L + 1.4))
    ax = fig.add_subplot(1, 1, 1)
    lim = _limit(r)
    im = ax.imshow(
        np.ma.masked_invalid(r),
        aspect="auto",
        cmap="RdBu_r",
        norm=TwoSlopeNorm(0.0, -lim, lim),
        interpolation="nearest",
    )
    labels = [
        f"{_label(c)}→{_label(k)}" if c != k else _label(c)
        for c, k in zip(result.clean_tokens, result.corrupted_tokens)
    ]
    ax.set_xticks(range(T))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(L))
    ax.set_yticklabels([str(block_number(l)) for l in range(L)], fontsize=7)  # blocks 1…L, as everywhere else
    ax.set_xlabel("position (clean→corrupted token)")
    ax.set_ylabel("block")
    ax.axvline(result.target_position, color="k", lw=0.6, ls=":")
    ax.set_title(f"Patching the {COMPONENT_LABELS[component]}: restored fraction", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    return _png(fig)


def component_bars(result: PatchingResult) -> bytes:
    """Restored fraction per block when the attention / MLP output is patched at every position at once."""
    L = result.n_layers
    fig = plotting.figure(max(4.0, 0.5 * L + 2.0), 2.8)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(L)
    for i, c in enumerate(("attention", "mlp")):
        ax.bar(x + (i - 0.5) * 0.4, result.restored_all(c), width=0.4, label=COMPONENT_LABELS[c])
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [str(block_number(l)) for l in range(L)])  # blocks 1…L
    ax.set_xlabel("block")
    ax.set_ylabel("restored")
    ax.legend(fontsize=7)
    ax.set_title("Components patched at every position", fontsize=9)
    return _png(fig)


def patching_files(result: PatchingResult) -> dict[str, bytes]:
    """plots/patching_<component>.png for each component run per position, and plots/patching_components.png."""
    out = {}
    for c in COMPONENTS:
        if np.isfinite(result.metric[c]).any():
            out[f"plots/patching_{c}.png"] = patching_heatmap(result, c)
    out["plots/patching_components.png"] = component_bars(result)
    return out


def head_ablation_figure(section: HeadAblationSection, head_scores: np.ndarray | None) -> bytes:
    """Left: the mean-ablation drop −Δ, layers × heads; right (when gradient scores exist): gradient score against
    the zero-ablation drop, one point per head, with their Spearman correlation."""
    from matplotlib.colors import TwoSlopeNorm

    drop = -section.mean_ablation
    L, H = drop.shape
    both = head_scores is not None and np.shape(head_scores) == drop.shape
    fig = plotting.figure(9.0 if both else 4.8, max(2.6, 0.3 * L + 1.4))
    ax = fig.add_subplot(1, 2 if both else 1, 1)
    lim = float(max(np.abs(drop).max(), 1e-9))
    im = ax.imshow(drop, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -lim, lim), interpolation="nearest")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L), [str(block_number(l)) for l in range(L)])  # layers 1…L, heads from 0
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("Mean ablation: drop of log p (nats)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    if both:
        assert head_scores is not None
        fig.subplots_adjust(wspace=0.55)
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.scatter(np.ravel(head_scores), np.ravel(-section.zero_ablation), s=12)
        rho = section.agreement(head_scores).get("zero_ablation", float("nan"))
        lo = float(min(np.min(head_scores), np.min(-section.zero_ablation)))
        hi = float(max(np.max(head_scores), np.max(-section.zero_ablation)))
        ax2.plot([lo, hi], [lo, hi], color="grey", lw=0.6, ls="--")
        ax2.set_xlabel("gradient head score (first-order estimate)")
        ax2.set_ylabel("zero-ablation drop of log p")
        ax2.set_title(f"Gradient score vs exact ablation (Spearman ρ = {rho:.2f})", fontsize=9)
    return _png(fig)


def head_ablation_files(result: AnalysisResult, options: ExportOptions) -> dict[str, bytes]:
    """Bundle writer: head_ablation.csv (`layer,head,mean_ablation,zero_ablation`, Δ log p) and
    plots/head_ablation.png, when the analysis ran head ablation."""
    section = result.head_ablation
    if section is None:
        return {}
    scores = result.attribution.head_scores if result.attribution is not None else None
    return {
        "head_ablation.csv": csv_bytes(["layer", "head", "mean_ablation", "zero_ablation"], section.rows()),
        "plots/head_ablation.png": head_ablation_figure(section, scores),
    }
