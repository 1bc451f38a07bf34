"""The one PDF writer (core.export.pdf): no other module of core/, app/ or pages/ imports fpdf or pypdf; every
report (analysis, comparison, corpus, patching) is laid out by its Document and opens with pypdf with the outline
entries it promises; figures (PNG and SVG), tables and joins behave as documented."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pytest
from pypdf import PdfReader

from core.export import pdf
from core.export.pdf import Document, join, outline_titles

ROOT = Path(__file__).resolve().parents[1]
PDF_LIBRARIES = {"fpdf", "pypdf"}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def test_only_core_export_pdf_imports_the_pdf_libraries():
    users = sorted(
        str(p.relative_to(ROOT))
        for folder in ("core", "app", "pages")
        for p in (ROOT / folder).rglob("*.py")
        if _imported_roots(p) & PDF_LIBRARIES
    )
    assert users == ["core/export/pdf.py"]


def test_the_scan_sees_imports_of_every_form(tmp_path):
    """The scan above cannot pass vacuously: it finds `import`, `from ... import` and function-local imports."""
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from fpdf.fonts import FontFace\n")
    assert "fpdf" in _imported_roots(f)
    f.write_text("import pypdf as p\n")
    assert "pypdf" in _imported_roots(f)


# ----------------------------------------------------------------------------------------------------------------
# Each report is made by Document and has its outline


@pytest.fixture()
def documents(monkeypatch) -> list[str]:
    """Titles of every Document whose output() is called while the test runs."""
    made: list[str] = []
    real = Document.output

    def output(self: Document) -> bytes:
        made.append(str(self.pdf.title))
        return real(self)

    monkeypatch.setattr(Document, "output", output)
    return made


@pytest.fixture(scope="module")
def result_pair(tiny_gpt2, tiny_bert):
    from core.analysis.pipeline import analyze

    a = analyze(tiny_gpt2, "The cat sat on the mat.", compute_gradients=False)
    b = analyze(tiny_bert, "The cat sat on the [MASK].", compute_gradients=False)
    return a, b


def _reader(data: bytes) -> PdfReader:
    assert data[:5] == b"%PDF-"
    return PdfReader(io.BytesIO(data))


def test_analysis_report(result_pair, documents):
    from core.export.report import build_report

    data = build_report(result_pair[0])
    reader = _reader(data)
    entries = outline_titles(data)
    assert [(t, d) for t, d, _ in entries] == [("Report", 0), ("Formulas and interpretation", 0)]
    assert entries[0][2] == 0 and 0 < entries[1][2] < len(reader.pages)
    assert documents and documents[0].startswith("Transformer Model Analysis - ")
    assert reader.metadata.title.startswith("Transformer Model Analysis - ")


def test_comparison_report(result_pair, documents):
    from core.export.compare import comparison_report
    from core.export.report import build_report
    from core.figures.compare import FIGURES, comparison_plots
    from core.studies.compare import compare

    a, b = result_pair
    cmp = compare(a, b)
    files = {"a/report.pdf": build_report(a), "b/report.pdf": build_report(b), **comparison_plots(cmp, a, b)}
    data = comparison_report(cmp, files)
    reader = _reader(data)
    entries = outline_titles(data)
    figures = [title for name, (title, _) in FIGURES.items() if name in files]
    assert figures  # the comparison draws at least the metric overlay
    assert [t for t, _, _ in entries] == ["Comparison", *figures, "Run A report", "Run B report"]
    assert all(d == 0 for _, d, _ in entries)  # the runs' own outlines are dropped
    pages = [p for _, _, p in entries]
    assert pages == sorted(pages) and pages[:2] == [0, 1]  # a summary page, then one page per figure
    n_a = len(_reader(files["a/report.pdf"]).pages)
    assert pages[-1] - pages[-2] == n_a and len(reader.pages) - pages[-1] == len(_reader(files["b/report.pdf"]).pages)
    assert "comparison of two runs" in reader.pages[0].extract_text()
    assert "Transformer Model Analysis - comparison" in documents
    assert reader.metadata.title == "Transformer Model Analysis - comparison"


def test_corpus_report(tiny_gpt2, documents):
    from core.export.corpus_bundle import corpus_bundle_files
    from core.studies import corpus as cp

    texts = ["The cat sat on the mat.", "A bird flew over the house.", "Paris is the capital of France."]
    r = cp.analyze_corpus(tiny_gpt2, texts, cp.CorpusSettings(bootstrap=20, max_points=40))
    data = corpus_bundle_files(r)["report.pdf"]
    reader = _reader(data)
    entries = outline_titles(data)
    assert [t for t, _, _ in entries] == ["Report", "Figures", "Pooled metrics", "Definitions"]
    assert [p for _, _, p in entries][:2] == [0, 1]
    assert "Definitions" in reader.pages[entries[-1][2]].extract_text()
    assert documents == [f"Corpus analysis - {r.model.model_id}"]


def test_patching_report(tiny_gpt2, documents):
    from core.cli.patch import bundle
    from core.studies.patching import patch

    r = patch(tiny_gpt2, "The dog sat on the log", "The log sat on the dog")
    data = bundle(r)["report.pdf"]
    reader = _reader(data)
    entries = outline_titles(data)
    assert [t for t, _, _ in entries] == ["Report", "Figures", "Formulas and interpretation"]
    first = reader.pages[0].extract_text()
    assert "Activation patching - report" in first
    # the target once, without nested brackets ("position 5 (last token (next-token prediction))" before)
    assert f"position {r.target_position}: " in first and "))" not in first
    assert "Formulas and interpretation" in reader.pages[entries[-1][2]].extract_text()
    assert len(documents) == 1


# ----------------------------------------------------------------------------------------------------------------
# The helpers


def _png(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _svg() -> bytes:
    from core.figures import plotting

    fig = plotting.figure(4, 2)
    fig.add_subplot().plot([0, 1, 2], [1, 0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()


def test_figures_png_embedded_as_images_svg_as_vector_paths():
    w = Document("figures")
    w.page()
    w.figure(_png(400, 200), "a raster figure")
    raster = _reader(w.output())
    assert len(raster.pages[0].images) == 1
    assert "a raster figure" in raster.pages[0].extract_text()

    v = Document("figures")
    v.page()
    v.figure(_svg(), "a vector figure")
    vector = _reader(v.output())
    page = vector.pages[0]
    assert len(page.images) == 0  # drawn, not pasted
    ops = page.get_contents().get_data()
    assert b" l" in ops and b" m" in ops  # path operators: moveto and lineto of the curve
    assert "a vector figure" in page.extract_text()
    with pytest.raises(ValueError, match="not a PNG"):
        v.figure(b"GIF89a....", "")


def test_figure_height_capped_and_too_tall_figures_start_a_new_page():
    w = Document("figures")
    w.page()
    w.figure(_png(100, 1000), "", max_h=100)  # very tall: scaled to 100 mm high, 10 mm wide
    assert w.pages == 1 and 100 <= w.pdf.get_y() <= 120
    w.figure(_png(100, 1000), "", max_h=200)  # does not fit below the first: a new page
    assert w.pages == 2


def test_table_formats_cells_and_safe_text_boxes_what_no_font_draws():
    w = Document("table")
    w.page()
    w.table(["a", "b"], [[None, float("nan")], [0.123456789, "x\u202ey"]], widths=(40, 40))
    text = _reader(w.output()).pages[0].extract_text()
    assert "–" in text and "NaN" in text and "0.1235" in text
    assert "\u202e" not in text and pdf.PLACEHOLDER in text


def test_join_outline_entries_with_and_without_the_parts_outlines():
    def part(title: str, pages: int) -> bytes:
        d = Document(title)
        for i in range(pages):
            d.page()
            d.outline(f"{title} {i}")
            d.para(f"{title} page {i}")
        return d.output()

    one, two = part("one", 2), part("two", 3)
    plain = join([(one, [("One", 0)]), (two, [("Two", 0), ("Two, last page", 2)])], title="joined")
    assert outline_titles(plain) == [("One", 0, 0), ("Two", 0, 2), ("Two, last page", 0, 4)]
    reader = _reader(plain)
    assert len(reader.pages) == 5 and reader.metadata.title == "joined"
    assert reader.metadata.creator == pdf.CREATOR
    kept = join([(one, []), (two, [("Two", 0)])], keep_outlines=True)
    titles = [(t, p) for t, _, p in outline_titles(kept)]
    assert ("one 1", 1) in titles and ("two 2", 4) in titles and ("Two", 2) in titles
    assert _reader(kept).metadata.title == "one"  # the first part's metadata when no title is given
