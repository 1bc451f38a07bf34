"""The comparison bundle (python -m core compare): both runs' bundles under a/ and b/, comparison.json, cka.csv,
the figures and report.pdf (a summary page, the comparison figures, then both runs' reports; laid out and joined
with core.export.pdf).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from core.analysis.result import AnalysisResult
from core.export.pdf import PAGE_H, Document, Part, join
from core.figures.compare import FIGURES, comparison_plots
from core.infra.formats import Member, csv_bytes, json_bytes
from core.model.provenance import provenance
from core.present.compare import CKA_CSV_HEADER, cka_rows_table, prediction_rows
from core.present.docs import caption, formula_text
from core.studies.compare import ComparisonResult, compare

MAX_REPORT_TEXT = 600


def _clip(text: str, n: int = MAX_REPORT_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + " … (truncated)"


def _fmt(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.4f}"


def _summary(w: Document, cmp: ComparisonResult) -> None:
    """The first page: both runs, what is compared and why not, the predictions side by side, the attribution
    agreement and the CKA formula."""
    w.page()
    w.h1("Transformer Model Analysis — comparison of two runs")
    for s in cmp.runs:
        w.h2(f"Run {s.label}: {s.model_id}", size=10)
        w.para(
            f"{s.family.replace('_', ' ')} · {s.architecture} · {s.n_layers} layers × {s.n_heads} heads · "
            f"hidden {s.hidden_size} · {s.dtype} · {len(s.tokens)} tokens · metrics over {s.metric_tokens}",
            size=8.5,
        )
        w.para(f"Text: {_clip(s.text)}", size=8.5)
    w.h2("What is compared", size=10)
    lines = []
    if cmp.cka is not None:
        lines.append(
            f"Linear CKA between every layer of A and every layer of B over {cmp.cka_tokens} shared tokens "
            f"(plots/cka.png, cka.csv). {cmp.cka_note}"
        )
        if cmp.a.n_layers == cmp.b.n_layers:
            lines.append(
                "Same layer in both runs: " + ", ".join(f"{i}: {v:.2f}" for i, v in enumerate(np.diag(cmp.cka)))
            )
    else:
        lines.append(cmp.cka_unavailable_reason)
    lines.append(
        "Attention-entropy difference (plots/entropy_difference.png)."
        if cmp.entropy_diff is not None
        else cmp.entropy_unavailable_reason
    )
    lines.append(
        f"Layer metrics overlaid on {'relative depth' if cmp.default_axis == 'relative' else 'absolute layers'} "
        f"(plots/metrics_overlay.png)."
    )
    if cmp.attribution_agreement:
        lines.append(
            "Token attribution, Spearman ρ between A and B: "
            + ", ".join(f"{m} {_fmt(v)}" for m, v in cmp.attribution_agreement.items())
        )
    for line in lines:
        w.para(line, size=8.5)
    w.h2("Predictions side by side", size=10)
    rows = prediction_rows(cmp)
    if rows:
        w.table(
            ["rank", "A", "p(A)", "B", "p(B)"],
            [[r["rank"], repr(r["A"]), _fmt(r["p(A)"]), repr(r["B"]), _fmt(r["p(B)"])] for r in rows[:10]],
            widths=(14, 66, 22, 66, 22),
            size=7.5,
        )
    for label, side in (("A", cmp.predictions_a), ("B", cmp.predictions_b)):
        if side.message:
            w.para(f"Run {label}: {side.message}", size=8)
    w.h2("Linear CKA", size=10)
    w.formula(formula_text("linear_cka"), size=7.5)
    w.para(caption("linear_cka"), size=8)
    w.para("The full reports of run A and run B follow (the same as a/report.pdf and b/report.pdf).", size=8, grey=True)


def comparison_report(cmp: ComparisonResult, files: dict[str, bytes]) -> bytes:
    """report.pdf: the summary page, every comparison figure (a page each, with its caption), then run A's and run
    B's own reports (files["a/report.pdf"], files["b/report.pdf"]), with one outline entry per part."""
    w = Document("Transformer Model Analysis - comparison")
    _summary(w, cmp)
    marks = [("Comparison", 0)]
    for name, (title, text) in FIGURES.items():
        if name in files:
            w.page()
            marks.append((title, w.pages - 1))
            w.figure(files[name], f"{name}: {text}", max_h=PAGE_H - 60)
    parts: list[Part] = [(w.output(), marks)]
    for label, key in (("Run A report", "a/report.pdf"), ("Run B report", "b/report.pdf")):
        if key in files:
            parts.append((files[key], [(label, 0)]))
    return join(parts, title="Transformer Model Analysis - comparison")


def comparison_files(
    result_a: AnalysisResult,
    result_b: AnalysisResult,
    cmp: ComparisonResult | None = None,
    *,
    bundle: Callable[[AnalysisResult], Mapping[str, Member]] | None = None,
    debiased_csv: bool = False,
) -> dict[str, Member]:
    """Every file of the comparison bundle as {safe name: bytes}: a/… and b/… (each run's own bundle, made by
    `bundle(result) -> dict[str, bytes]`, e.g. core.export.bundle.bundle_files), comparison.json (with each run's
    provenance record), cka.csv (exactly
    `layer_a,layer_b,cka`, only when CKA is defined; the debiased values with debiased_csv), plots/*.png and
    report.pdf (last). Without `bundle` the a/ and b/ folders are left out."""
    cmp = cmp or compare(result_a, result_b)
    files: dict[str, Member] = {}
    if bundle is not None:
        for prefix, r in (("a/", result_a), ("b/", result_b)):
            files.update({prefix + name: data for name, data in bundle(r).items()})
    matrix = cmp.cka_debiased if debiased_csv else cmp.cka
    doc = cmp.to_dict()  # NaN already None: strict JSON
    doc["cka_csv"] = None if matrix is None else ("debiased" if debiased_csv else "centred")
    doc["provenance"] = {  # the one provenance record (core.model.provenance) of each run, as it was computed
        label: provenance(r.model, core_version=r.core_version, versions=r.versions).to_dict()
        for label, r in (("a", result_a), ("b", result_b))
    }
    files["comparison.json"] = json_bytes(doc)
    if matrix is not None:
        files["cka.csv"] = csv_bytes(CKA_CSV_HEADER, cka_rows_table(matrix))
    files.update(comparison_plots(cmp, result_a, result_b))
    files["report.pdf"] = comparison_report(cmp, {k: v for k, v in files.items() if isinstance(v, bytes)})
    return files
