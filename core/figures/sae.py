"""Figures, bundle files and the PDF section of the sparse-autoencoder features (core.steps.sae): a token strip
shaded by one feature, a features × positions heatmap of the strongest features, the top features of one token with
their logit effects; sae_features.csv, sae_summary.csv and sae_feature_logits.csv; and the figure of an SAE-feature
patching run (`patching_figure`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from core.steps.sae import SAEFeatures

FEATURES_HEADER = ["hook", "position", "token", "feature", "activation"]
SUMMARY_HEADER = ["hook", "position", "token", "l0", "fvu", "cosine"]
LOGITS_HEADER = ["hook", "feature", "rank", "token", "effect"]
#: Features in the heatmap and in the strips of the bundle.
HEATMAP_FEATURES = 20
STRIP_FEATURES = 6

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from core.analysis.result import AnalysisResult
    from core.infra.options import ExportOptions
    from core.studies.sae_patching import SAEPatchingResult


def strip_figure(
    sec: SAEFeatures, tokens: Sequence[str], feats: Sequence[int], *, width_chars: int = 90, target: int | None = None
) -> Figure:
    """The text once per feature, each token shaded by the feature's activation / its maximum in the text."""
    from core.figures import plotting

    strips = []
    for f in feats:
        prof = sec.feature_profile(int(f))
        strips.append((f"{sec.hook_name} · feature {int(f)}  (max {float(prof.max()):.3g})", prof))
    return plotting.token_strips(tokens, strips, width_chars=width_chars, target=target)


def heatmap_figure(sec: SAEFeatures, tokens: Sequence[str], n: int = HEATMAP_FEATURES) -> Figure:
    """Features × positions: the activations of the n strongest features of the text."""
    from core.figures import plotting

    feats = sec.strongest(n)
    M = sec.heatmap(feats)
    T = len(tokens)
    fig = plotting.figure(min(2.5 + 0.22 * T, 12.0), 1.4 + 0.25 * max(len(feats), 1))
    ax = fig.add_subplot(1, 1, 1)
    if feats:
        im = ax.imshow(M, aspect="auto", cmap=plotting.colormap("Oranges"), vmin=0, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="activation")
        ax.set_yticks(range(len(feats)), [str(f) for f in feats], fontsize=7)
        plotting.token_ticks(ax, plotting.token_labels(list(tokens), max_len=12), "x")
    else:
        ax.text(0.5, 0.5, "no feature is active on this text", ha="center", va="center", transform=ax.transAxes)
        ax.axis("off")
    ax.set_ylabel("feature")
    ax.set_title(f"{sec.name} at {sec.hook_name}: strongest features (FVU {sec.fvu_total:.3g})", fontsize=9)
    return fig


def token_features_figure(sec: SAEFeatures, position: int, token: str, n: int = 10) -> Figure:
    """The n strongest features at one position (bars), each labelled with its top promoted and suppressed tokens."""
    from core.figures import plotting

    top = sec.token_features(position, n)
    fig = plotting.figure(7.5, 0.9 + 0.32 * max(len(top), 1))
    ax = fig.add_subplot(1, 1, 1)
    if not top:
        ax.text(0.5, 0.5, "no feature is active at this token", ha="center", va="center", transform=ax.transAxes)
        ax.axis("off")
        return fig
    ys = np.arange(len(top))
    ax.barh(ys, [a for _, a in top], color="#d9822b")
    ax.set_yticks(ys, [f"f{f}" for f, _ in top], fontsize=8)
    ax.invert_yaxis()
    for y, (f, a) in zip(ys, top):
        row = sec.logit_row(f)
        if row is not None:
            up = ", ".join(repr(sec.text_of(int(i)))[1:-1] for i in sec.promote_ids[row, :3])
            dn = ", ".join(repr(sec.text_of(int(i)))[1:-1] for i in sec.suppress_ids[row, :3])
            ax.text(a, float(y), f"  + {up}   − {dn}", fontsize=7, va="center")
    ax.set_xlabel("activation")
    label = plotting.token_label(token, max_len=20)
    ax.set_title(f"{sec.hook_name}: features at position {position} ({label}); L0 {int(sec.l0[position])}", fontsize=9)
    return fig


def sae_files(result: AnalysisResult, options: ExportOptions) -> dict[str, bytes]:
    """Bundle writer: sae_features.csv (hook, position, token, feature, activation), sae_summary.csv (hook, position,
    token, l0, fvu, cosine), sae_feature_logits.csv (hook, feature, rank, token, effect per unit activation) and per
    SAE a heatmap, the strips of its strongest features and the target token's features."""
    from core.figures import plotting
    from core.infra.formats import csv_bytes

    sec = result.sae
    if sec is None:
        return {}
    tokens = list(result.tokens)
    feats: list[list[object]] = []
    summary: list[list[object]] = []
    logits: list[list[object]] = []
    files: dict[str, bytes] = {}
    for i, s in enumerate(sec.saes):
        feats += s.feature_rows(tokens)
        summary += s.summary_rows(tokens)
        logits += s.logit_rows()
        stem = f"plots/sae_{i}" if len(sec.saes) > 1 else "plots/sae"
        files[f"{stem}_heatmap.png"] = plotting.png(heatmap_figure(s, result.display_tokens))
        files[f"{stem}_strips.png"] = plotting.png(
            strip_figure(s, result.display_tokens, s.strongest(STRIP_FEATURES), target=result.target_position)
        )
        t = result.target_position
        files[f"{stem}_target.png"] = plotting.png(token_features_figure(s, t, result.display_tokens[t]))
    return {
        "sae_features.csv": csv_bytes(FEATURES_HEADER, feats),
        "sae_summary.csv": csv_bytes(SUMMARY_HEADER, summary),
        "sae_feature_logits.csv": csv_bytes(LOGITS_HEADER, logits),
        **files,
    }


def report_section(result: AnalysisResult) -> list[tuple[str, list[str], list[list[object]]]]:
    """What the PDF prints about the SAE features: per SAE a paragraph (architecture, width, L0, FVU, cosine) and
    its strongest features with where they peak and what they promote."""
    sec = result.sae
    if sec is None:
        return []
    out: list[tuple[str, list[str], list[list[object]]]] = []
    for s in sec.saes:
        cos = s.cosine[np.isfinite(s.cosine)]
        intro = (
            f"{s.name}: {s.architecture} SAE at {s.hook_name}, {s.d_in} → {s.d_sae} features; mean L0 "
            f"{float(s.l0.mean()):.1f}; FVU {s.fvu_total:.3g}; mean cosine(x, x̂) "
            f"{float(cos.mean()) if cos.size else float('nan'):.3f}. Logit effects: {s.logit_note}."
        )
        rows: list[list[object]] = []
        for f in s.strongest(10):
            prof = s.feature_profile(f)
            t = int(np.argmax(prof))
            row = s.logit_row(f)
            up = ", ".join(repr(s.text_of(int(i))) for i in s.promote_ids[row, :3]) if row is not None else "—"
            rows.append([f, f"{float(prof[t]):.3g}", f"{result.display_tokens[t]!r}@{t}", up])
        out.append((intro, ["feature", "peak", "peak token@position", "promotes (per unit activation)"], rows))
    return out


def patching_figure(res: SAEPatchingResult) -> Figure:
    """An SAE-feature patching run (core.studies.sae_patching) in two panels against the clean tokens: the restored
    share when the feature, or the SAE's error term, is patched clean → corrupted at one position (bars; dashed
    lines: at every position, and the whole site at every position), and Δm of the clean run with the feature
    ablated at one position."""
    from core.figures import plotting

    T = res.n_tokens
    x = np.arange(T)
    labels = [plotting.token_label(t, max_len=12) for t in res.clean_tokens]
    fig = plotting.figure(max(6.0, 0.45 * T + 1.5), 5.2)
    top, bottom = fig.subplots(2, 1, sharex=True)
    w = 0.4
    feat = np.asarray(res.restored(res.feature_patch), dtype=np.float64)
    err = np.asarray(res.restored(res.error_patch), dtype=np.float64)
    top.bar(x - w / 2, np.nan_to_num(feat), w, label=f"feature {res.feature}", color="#e6781e")
    top.bar(x + w / 2, np.nan_to_num(err), w, label="SAE error term", color="#7f7f7f")
    for value, style, name in (
        (res.restored(res.feature_patch_all), "#e6781e", f"feature {res.feature}, every position"),
        (res.restored(res.error_patch_all), "#7f7f7f", "error term, every position"),
        (res.restored(res.site_patch_all), "#1f4e9c", "whole site, every position"),
    ):
        if np.isfinite(value):
            top.axhline(value, color=style, linestyle="--", linewidth=1, label=f"{name}: {value:.3g}")
    top.axhline(0, color="k", linewidth=0.5)
    top.set_ylabel("restored")
    top.set_title(f"{res.hook_name} · feature {res.feature}: patched clean → corrupted", fontsize=10)
    top.legend(fontsize=7, loc="best")
    bottom.bar(x, np.nan_to_num(np.asarray(res.feature_ablation, dtype=np.float64)), 0.6, color="#e6781e")
    bottom.axhline(0, color="k", linewidth=0.5)
    bottom.set_ylabel("Δm (ablated)")
    bottom.set_title(f"feature {res.feature} removed from the clean run at one position", fontsize=10)
    bottom.set_xticks(x)
    bottom.set_xticklabels(labels, rotation=60, ha="right", fontsize=8, family="monospace")
    fig.tight_layout()
    return fig
