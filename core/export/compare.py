"""The comparison bundle (python -m core compare): both runs' bundles under a/ and b/, comparison.json, cka.csv,
the figures and report.pdf (a summary page, the comparison figures, then both runs' reports).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from matplotlib.figure import Figure

from core.analysis.result import AnalysisResult
from core.figures import plotting
from core.figures.compare import FIGURES, comparison_plots
from core.infra.formats import csv_bytes, json_bytes
from core.present.compare import CKA_CSV_HEADER, cka_rows_table, prediction_rows
from core.studies.compare import ComparisonResult, compare

A4 = (8.27, 11.69)

MAX_REPORT_TEXT = 600


def _pdf(fig: Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="pdf")
    return buf.getvalue()


class _Page:
    """One A4 page of text drawn with matplotlib (no mathtext: user text is printed as is)."""

    def __init__(self) -> None:
        self.fig = plotting.figure(*A4)
        self.y = 0.95

    def line(
        self,
        text: str,
        size: float = 8.5,
        bold: bool = False,
        gap: float = 1.0,
        width: int = 110,
        colour: str = "black",
        mono: bool = False,
    ) -> None:
        import textwrap

        for piece in textwrap.wrap(text, width=width, replace_whitespace=False) or [""]:
            if self.y < 0.04:
                return
            self.fig.text(
                0.07,
                self.y,
                piece,
                fontsize=size,
                weight="bold" if bold else "normal",
                color=colour,
                va="top",
                ha="left",
                parse_math=False,
                family="monospace" if mono else "sans-serif",
            )
            self.y -= 0.0165 * size / 8.5 * gap

    def space(self, amount: float = 0.01) -> None:
        self.y -= amount


def _clip(text: str, n: int = MAX_REPORT_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + " … (truncated)"


def _fmt(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.4f}"


def summary_page(cmp: ComparisonResult) -> bytes:
    """The first page of the comparison report (PDF bytes): both runs, what is compared and why not, the
    predictions side by side, the attribution agreement and the CKA formula."""
    from core.present.docs import caption, formula_text

    p = _Page()
    p.line("Transformer Model Analysis — comparison of two runs", size=15, bold=True, gap=1.6)
    for s in cmp.runs:
        p.line(f"Run {s.label}: {s.model_id}", size=10, bold=True, gap=1.3)
        p.line(
            f"{s.family.replace('_', ' ')} · {s.architecture} · {s.n_layers} layers × {s.n_heads} heads · "
            f"hidden {s.hidden_size} · {s.dtype} · {len(s.tokens)} tokens · metrics over {s.metric_tokens}"
        )
        p.line(f"Text: {_clip(s.text)}")
        p.space()
    p.line("What is compared", size=10, bold=True, gap=1.3)
    if cmp.cka is not None:
        p.line(
            f"Linear CKA between every layer of A and every layer of B over {cmp.cka_tokens} shared tokens "
            f"(plots/cka.png, cka.csv). {cmp.cka_note}"
        )
        if cmp.a.n_layers == cmp.b.n_layers:
            p.line("Same layer in both runs: " + ", ".join(f"{i}: {v:.2f}" for i, v in enumerate(np.diag(cmp.cka))))
    else:
        p.line(cmp.cka_unavailable_reason)
    p.line(
        "Attention-entropy difference (plots/entropy_difference.png)."
        if cmp.entropy_diff is not None
        else cmp.entropy_unavailable_reason
    )
    p.line(
        f"Layer metrics overlaid on {'relative depth' if cmp.default_axis == 'relative' else 'absolute layers'} "
        f"(plots/metrics_overlay.png)."
    )
    if cmp.attribution_agreement:
        p.line(
            "Token attribution, Spearman ρ between A and B: "
            + ", ".join(f"{m} {_fmt(v)}" for m, v in cmp.attribution_agreement.items())
        )
    p.space()
    p.line("Predictions side by side", size=10, bold=True, gap=1.3)
    rows = prediction_rows(cmp)
    if rows:
        p.line(f"{'rank':<6}{'A':<28}{'p(A)':<10}{'B':<28}{'p(B)':<10}", size=7.5, bold=True, mono=True)
        for r in rows[:10]:
            p.line(
                f"{r['rank']:<6}{repr(r['A'])[:26]:<28}{_fmt(r['p(A)']):<10}{repr(r['B'])[:26]:<28}"
                f"{_fmt(r['p(B)']):<10}",
                size=7.5,
                mono=True,
                width=140,
            )
    for label, side in (("A", cmp.predictions_a), ("B", cmp.predictions_b)):
        if side.message:
            p.line(f"Run {label}: {side.message}", size=8)
    p.space()
    p.line("Linear CKA", size=10, bold=True, gap=1.3)
    p.line(formula_text("linear_cka"), size=7.5)
    p.line(caption("linear_cka"), size=8)
    p.space()
    p.line(
        "The full reports of run A and run B follow (the same as a/report.pdf and b/report.pdf).",
        size=8,
        colour="#555555",
    )
    return _pdf(p.fig)


def comparison_report(cmp: ComparisonResult, files: dict[str, bytes]) -> bytes:
    """report.pdf: the summary page, every comparison figure (vector, with its caption), then run A's and run
    B's own reports (files["a/report.pdf"], files["b/report.pdf"]), with an outline."""
    import io

    from pypdf import PdfReader, PdfWriter

    figures: list[tuple[str, bytes]] = []
    for name, (title, text) in FIGURES.items():
        if name in files:
            from matplotlib.image import imread

            img = imread(io.BytesIO(files[name]), format="png")
            h, w = img.shape[:2]
            fig = plotting.figure(A4[0], min(A4[0] * h / w + 1.2, A4[1]))
            ax = fig.add_axes((0.04, 1.0 / fig.get_figheight(), 0.92, 1 - 1.15 / fig.get_figheight()))
            ax.imshow(img)
            ax.axis("off")
            fig.text(
                0.05, 0.9 / fig.get_figheight(), f"{name}: {text}", fontsize=7, va="top", wrap=True, parse_math=False
            )
            figures.append((title, _pdf(fig)))
    writer = PdfWriter()
    parts = [("Comparison", summary_page(cmp)), *figures]
    for label, key in (("Run A report", "a/report.pdf"), ("Run B report", "b/report.pdf")):
        if key in files:
            parts.append((label, files[key]))
    for label, data in parts:
        start = len(writer.pages)
        writer.append(PdfReader(io.BytesIO(data)), import_outline=False)  # one outline entry per part
        writer.add_outline_item(title=label, page_number=start)
    writer.add_metadata(
        {"/Title": "Transformer Model Analysis - comparison", "/Creator": "Transformer Model Analysis Dashboard"}
    )
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def comparison_files(
    result_a: AnalysisResult,
    result_b: AnalysisResult,
    cmp: ComparisonResult | None = None,
    *,
    bundle: Callable[[AnalysisResult], dict[str, bytes]] | None = None,
    debiased_csv: bool = False,
) -> dict[str, bytes]:
    """Every file of the comparison bundle as {safe name: bytes}: a/… and b/… (each run's own bundle, made by
    `bundle(result) -> dict[str, bytes]`, e.g. core.export.bundle.bundle_files), comparison.json, cka.csv (exactly
    `layer_a,layer_b,cka`, only when CKA is defined; the debiased values with debiased_csv), plots/*.png and
    report.pdf (last). Without `bundle` the a/ and b/ folders are left out."""
    cmp = cmp or compare(result_a, result_b)
    files: dict[str, bytes] = {}
    if bundle is not None:
        for prefix, r in (("a/", result_a), ("b/", result_b)):
            files.update({prefix + name: data for name, data in bundle(r).items()})
    matrix = cmp.cka_debiased if debiased_csv else cmp.cka
    doc = cmp.to_dict()  # NaN already None: strict JSON
    doc["cka_csv"] = None if matrix is None else ("debiased" if debiased_csv else "centred")
    files["comparison.json"] = json_bytes(doc)
    if matrix is not None:
        files["cka.csv"] = csv_bytes(CKA_CSV_HEADER, cka_rows_table(matrix))
    files.update(comparison_plots(cmp, result_a, result_b))
    files["report.pdf"] = comparison_report(cmp, files)
    return files
