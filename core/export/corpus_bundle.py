"""The corpus bundle: one pure function from a CorpusResult to named files, used by the Corpus page's ZIP download
and by `python -m core corpus` alike.

  corpus_metrics.csv     layer,metric,estimate,ci_low,ci_high,n_texts,n_points (one row per layer and metric)
  per_text_metrics.csv   text_index,layer + the five single-text layer metrics
  manifest.json          model, revision, settings, corpus size, sha256 of every text, duplicates, timings, versions,
                         interval_method (per metric) and interval_estimand
  plots/corpus_metrics.png, plots/corpus_per_text.png
  report.pdf             the curves, the table and the definitions (from core.present.docs), by core.export.pdf
Member names are fixed; nothing is derived from user text.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from core.export.pdf import PAGE_H, Document
from core.figures import plotting
from core.infra.formats import csv_bytes, json_bytes, write_files
from core.model.provenance import provenance
from core.present import docs
from core.present.study_tables import per_text_note, pooled_note
from core.steps.metrics import METRIC_NAMES
from core.studies import intervals
from core.studies.corpus import CorpusResult
from core.studies.geometry import POOLED_METRICS

log = logging.getLogger(__name__)

METRICS_HEADER = ["layer", "metric", "estimate", "ci_low", "ci_high", "n_texts", "n_points"]
PER_TEXT_HEADER = ["text_index", "layer", *METRIC_NAMES]
#: docs key of each pooled metric (the three spectral ones share the pooled-spectrum entry).
DOC_KEY = {
    "effective_rank": "corpus_spectral",
    "participation_ratio": "corpus_spectral",
    "intrinsic_dim_95": "corpus_spectral",
    "twonn_dimension": "twonn_dimension",
    "anisotropy_cosine": "anisotropy_cosine",
    "anisotropy_top_pc": "anisotropy_top_pc",
    "linearity": "linearity",
}
LABEL = {
    "effective_rank": "Effective rank (pooled)",
    "participation_ratio": "Participation ratio (pooled)",
    "intrinsic_dim_95": "Intrinsic dim. 95 % (pooled)",
    "twonn_dimension": "TwoNN dimension",
    "anisotropy_cosine": "Anisotropy: mean cosine between texts",
    "anisotropy_top_pc": "Anisotropy: top PC share λ₁/Σλ",
    "linearity": "Linearity (layer l−1 → l)",
}


def label(metric: str) -> str:
    """Display label of a pooled or single-text metric."""
    return LABEL.get(metric) or docs.metric_label(metric)


def manifest(result: CorpusResult) -> dict[str, Any]:
    """manifest.json: everything needed to know what was computed from what."""
    prov = provenance(
        result.model,
        core_version=result.core_version,
        versions=result.versions,
        attn_implementation=result.attn_implementation,
    ).to_dict()
    versions = prov.pop("package_versions")
    core_version = prov.pop("core_version")
    return {
        "kind": "corpus",
        **prov,
        "hidden_size": result.model.hidden_size,
        "layers": result.n_layers - 1,
        "last_hidden_state_before_final_norm": result.final_norm,
        "settings": result.settings.to_dict(),
        "corpus": {
            "n_texts": result.n_texts,
            "n_blank_lines_skipped": result.n_blank_skipped,
            "n_truncated": result.n_truncated,
            "tokens_total": int(result.text_tokens.sum()),
            "tokens_in_metrics": int(result.metric_tokens.sum()),
            "corpus_sha256": result.corpus_sha256,
            "text_sha256": list(result.text_sha256),
        },
        "pooled_points_per_layer": [int(v) for v in result.n_points],
        "duplicates_removed_per_layer": [int(v) for v in result.n_duplicates],
        "confidence_intervals": (
            "95 % over texts (interval_method per metric)"
            if result.has_intervals
            else "none (one text or bootstrap = 0)"
        ),
        "interval_method": dict(result.interval_methods) if result.has_intervals else {},
        "interval_estimand": intervals.ESTIMAND if result.has_intervals else "",
        "core_version": core_version,
        "package_versions": versions,
        "created_at": result.created_at,
        "duration_s": round(result.duration_s, 4),
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "cache_hit": result.cache_hit,
        "warnings": list(result.warnings),
    }


# ----------------------------------------------------------------------------------------------------------------
# Figures (matplotlib's object-oriented API on an Agg canvas; no pyplot, safe from several threads)


def metrics_figure(result: CorpusResult) -> Figure:
    """Every pooled metric against layer, the line the estimate and the band its 95 % interval."""
    fig = plotting.figure(12, 11)
    layers = np.arange(result.n_layers)
    axes = fig.subplots(4, 2).ravel()
    for ax, m in zip(axes, POOLED_METRICS):
        ax.set_title(label(m), fontsize=9)
        note = pooled_note(result, m)
        if note is not None and note.empty:  # the reason, in the panel, instead of an empty frame
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, _wrapped(note.text), ha="center", va="center", fontsize=7.5, transform=ax.transAxes)
            continue
        est, lo, hi = result.estimate[m], result.ci_low[m], result.ci_high[m]
        x = layers[1:] if m == "linearity" else layers
        sl = slice(1, None) if m == "linearity" else slice(None)
        # a flat curve may sit on its bound (linearity 1): drawn over the frame, not hidden under it
        flat = note is not None and note.domain is not None
        ax.plot(x, est[sl], marker="o", ms=3, color="#1f77b4", label="pooled estimate", clip_on=not flat, zorder=3)
        if np.isfinite(lo[sl]).any():
            ax.fill_between(x, lo[sl], hi[sl], color="#1f77b4", alpha=0.25, lw=0, label="95 % interval")
        if note is not None and note.domain is not None:  # flat: a range around the value, and the words
            ax.set_ylim(*note.domain)
            ax.yaxis.get_major_formatter().set_useOffset(False)
            ax.text(0.02, 0.04, _wrapped(note.text), fontsize=6.5, va="bottom", transform=ax.transAxes)
        ax.set_xlabel("layer", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7, loc="best")
    axes[-1].axis("off")
    axes[-1].text(
        0.0,
        0.9,
        f"{result.model.model_id}\n{result.n_texts} texts, "
        f"{int(result.n_points.max())} pooled points per layer\n"
        f"layer 0 = embeddings; the last layer is before the final norm",
        fontsize=8,
        va="top",
        transform=axes[-1].transAxes,
    )
    fig.subplots_adjust(left=0.07, right=0.98, top=0.96, bottom=0.05, hspace=0.55, wspace=0.2)
    return fig


def _wrapped(text: str, width: int = 62) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(plotting.token_label(text), width))


def per_text_figure(result: CorpusResult) -> Figure:
    """The five single-text metrics: median over texts with the interquartile band; the spectral ones beside the
    pooled estimate (the pool is not capped by a text's length)."""
    fig = plotting.figure(12, 6.5)
    layers = np.arange(result.n_layers)
    axes = fig.subplots(2, 3).ravel()
    for ax, m in zip(axes, METRIC_NAMES):
        s = result.per_text_summary(m)
        reason = per_text_note(result, m)
        if reason is not None and not (m in result.estimate and np.isfinite(result.estimate[m]).any()):
            ax.set_title(docs.metric_label(m), fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(0.5, 0.5, _wrapped(reason, 48), ha="center", va="center", fontsize=7.5, transform=ax.transAxes)
            continue
        ax.plot(layers, s["median"], color="#ff7f0e", marker="o", ms=3, label="per-text median")
        ax.fill_between(layers, s["q25"], s["q75"], color="#ff7f0e", alpha=0.25, lw=0, label="per-text IQR")
        if m in result.estimate:
            ax.plot(layers, result.estimate[m], color="#1f77b4", marker="o", ms=3, label="pooled")
        ax.set_title(docs.metric_label(m), fontsize=9)
        ax.set_xlabel("layer", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=7)
    axes[-1].axis("off")
    fig.subplots_adjust(left=0.06, right=0.98, top=0.94, bottom=0.09, hspace=0.45, wspace=0.22)
    return fig


PLOTS = {"plots/corpus_metrics.png": metrics_figure, "plots/corpus_per_text.png": per_text_figure}
CAPTIONS = {
    "plots/corpus_metrics.png": "Pooled metrics against layer; bands: 95 % intervals over texts (see Intervals).",
    "plots/corpus_per_text.png": "Single-text metrics: median over texts and interquartile band, beside "
    "the pooled estimate.",
}


# ----------------------------------------------------------------------------------------------------------------
# report.pdf


def _cell(v: Any) -> str:
    return "–" if isinstance(v, float) and np.isnan(v) else f"{v:.4g}" if isinstance(v, float) else str(v)


def report_pdf(result: CorpusResult, plots: dict[str, bytes]) -> bytes:
    """report.pdf (core.export.pdf): summary, warnings, the two figures, the metric table and the definitions from
    core.present.docs; outline entries Report, Figures, Pooled metrics, Definitions."""
    w = Document(f"Corpus analysis - {result.model.model_id}")
    w.page()
    w.outline("Report")
    w.h1("Corpus analysis - report")
    m = result.model
    st = result.settings
    w.kv(
        [
            ("Model", m.model_id),
            ("Revision", m.revision),
            ("Dtype / device", f"{m.dtype} / {m.device}"),
            (
                "Texts",
                f"{result.n_texts} ({result.n_blank_skipped} blank lines skipped, {result.n_truncated} truncated)",
            ),
            ("Tokens", f"{int(result.text_tokens.sum())} ({int(result.metric_tokens.sum())} in the metrics)"),
            ("Pooled points per layer", int(result.n_points.max())),
            ("Settings", ", ".join(f"{k2}={v2}" for k2, v2 in st.to_dict().items())),
            ("Corpus sha256", result.corpus_sha256),
            ("Created", result.created_at),
            ("Core version", result.core_version),
        ]
    )
    if result.has_intervals:
        w.h2("Intervals")
        w.para(result.interval_note())
    if result.warnings:
        w.h2("Warnings")
        for msg in result.warnings:
            w.para(f"- {msg}")
    notes = [(name, n) for name in POOLED_METRICS if (n := pooled_note(result, name)) is not None]
    if notes:
        w.h2("Curves without a shape")
        for name, n in notes:
            w.para(f"- {label(name)}: {n.text}")
    for i, (name, png) in enumerate(plots.items()):
        w.page()
        if i == 0:
            w.outline("Figures")
        w.h2(CAPTIONS.get(name, name), size=10)
        w.figure(png, max_h=PAGE_H - 45)
    w.page()
    w.outline("Pooled metrics")
    w.h2("Pooled metrics", size=12)
    w.table(
        METRICS_HEADER,
        [[_cell(v) for v in r] for r in result.metric_rows()],
        widths=(12, 50, 30, 30, 30, 20, 18),
        size=7,
    )
    w.page()
    w.outline("Definitions")
    w.h2("Definitions", size=12)
    for key in dict.fromkeys(DOC_KEY.values()):
        e = docs.doc(key)
        w.definition(e.title, e.formula_plain, docs.interpretation(key), e.pitfalls)
    return w.output()


# ----------------------------------------------------------------------------------------------------------------
# The bundle


def corpus_bundle_files(result: CorpusResult, *, report: bool = True) -> dict[str, bytes]:
    """Every member of the corpus bundle as {fixed name: bytes}, built in memory (nothing is written here)."""
    files = {
        "corpus_metrics.csv": csv_bytes(METRICS_HEADER, result.metric_rows()),
        "per_text_metrics.csv": csv_bytes(PER_TEXT_HEADER, result.per_text_rows()),
        "manifest.json": json_bytes(manifest(result)),
    }
    plots = {name: plotting.png(fn(result)) for name, fn in PLOTS.items()}
    files.update(plots)
    if report:
        files["report.pdf"] = report_pdf(result, plots)
    return files


def write_bundle(files: dict[str, bytes], out: str | Path) -> Path:
    """Write the members to `out` (a .zip file, or a folder) without leaving a half-written bundle
    (core.infra.formats.write_files: written beside `out`, renamed into place)."""
    return write_files(files, out)
