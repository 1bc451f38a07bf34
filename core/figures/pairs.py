"""Figures of a pair data set's patching run: exact (mean over pairs) beside attribution patching for each
component, and exact against AtP one point per site with their correlation. matplotlib's object-oriented API only
(core.figures.plotting), PNG bytes out; `pairs_files(result)` is what the CLI's `patch --pairs` bundle holds.
"""

from __future__ import annotations

import numpy as np

from core.figures import plotting
from core.figures.causal import COMPONENT_LABELS, display_token
from core.studies.pairs import PairsResult
from core.studies.patching import COMPONENTS


def _limit(*arrays: np.ndarray) -> float:
    vals = np.concatenate([np.abs(a[np.isfinite(a)]).ravel() for a in arrays])
    return float(max(1.0, vals.max())) if vals.size else 1.0


def mean_grids(result: PairsResult, component: str) -> tuple[np.ndarray, np.ndarray]:
    """(exact, atp) mean restored over the used pairs, float64 [L, T] each (exact NaN where not patched)."""
    used = result.used
    with np.errstate(invalid="ignore"):
        exact = np.nanmean(result.restored_pairs(component)[used], axis=0) if used.any() else None
    atp = result.atp_pairs(component)[used].mean(axis=0)
    return (exact if exact is not None else np.full_like(atp, np.nan)), atp


def exact_vs_atp_heatmaps(result: PairsResult, component: str) -> bytes:
    """Two heatmaps, layers × positions: exact mean restored (left) and AtP (right), one colour scale."""
    from matplotlib.colors import TwoSlopeNorm

    exact, atp = mean_grids(result, component)
    L, T = atp.shape
    fig = plotting.figure(max(7.0, 0.8 * T + 3.0), max(2.4, 0.3 * L + 1.6))
    lim = _limit(exact, atp)
    labels = [plotting.token_label(display_token(t), 10) for t in result.tokens]
    im = None
    for i, (grid, title) in enumerate(((exact, "exact patching"), (atp, "attribution patching (AtP)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        im = ax.imshow(
            np.ma.masked_invalid(grid),
            aspect="auto",
            cmap="RdBu_r",
            norm=TwoSlopeNorm(0.0, -lim, lim),
            interpolation="nearest",
        )
        ax.set_xticks(range(T))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(L))
        ax.set_yticklabels([str(l + 1) for l in range(L)], fontsize=7)  # blocks 1…L
        ax.set_xlabel("position (first pair's clean token)")
        ax.set_ylabel("block")
        ax.set_title(f"{COMPONENT_LABELS[component]}: {title}", fontsize=8)
    assert im is not None
    fig.colorbar(im, ax=fig.axes, fraction=0.03, pad=0.02)
    return plotting.png(fig)


def exact_vs_atp_scatter(result: PairsResult) -> bytes:
    """Exact against AtP mean restored, one point per site (component colour), the diagonal, and Pearson r."""
    fig = plotting.figure(4.2, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for c in COMPONENTS:
        exact, atp = mean_grids(result, c)
        keep = np.isfinite(exact) & np.isfinite(atp)
        ax.scatter(exact[keep], atp[keep], s=10, label=COMPONENT_LABELS[c], alpha=0.8)
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.6, ls=":")
    ax.set_xlabel("exact restored (mean over pairs)")
    ax.set_ylabel("AtP estimate (mean over pairs)")
    r = result.correlation()
    ax.set_title(f"Exact vs AtP per site: r = {r:.3f}" if np.isfinite(r) else "Exact vs AtP per site", fontsize=9)
    ax.legend(fontsize=7)
    return plotting.png(fig, tight=True)


def pairs_files(result: PairsResult) -> dict[str, bytes]:
    """plots/pairs_<component>.png (exact beside AtP) and, when exact cells exist, plots/pairs_exact_vs_atp.png."""
    out = {f"plots/pairs_{c}.png": exact_vs_atp_heatmaps(result, c) for c in COMPONENTS}
    if any(np.isfinite(result.metric[c]).any() for c in COMPONENTS):
        out["plots/pairs_exact_vs_atp.png"] = exact_vs_atp_scatter(result)
    return out
