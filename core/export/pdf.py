"""The one PDF writer: the only module that knows fpdf2 and pypdf. Every report (the analysis, the comparison, the
corpus run, the patching run) is laid out with `Document` and joined with `join`.

`Document` is an A4 page (10 mm margins) with the page number in the footer, DejaVu fonts and helpers for
headings, paragraphs, key-value and ordinary tables, figures (PNG, or SVG for vector art) with captions, formulas
and documentation entries; `outline()` adds a bookmark at the current page. `join` concatenates finished PDFs with
pypdf, each part under its own outline entry, keeping or dropping the parts' own outlines.

Fonts: DejaVu Sans from matplotlib's own font folder (always installed with matplotlib), so Greek letters, maths
symbols and most scripts print; a CJK font, when the system has one, is added as a fallback. A character that no
loaded font can draw (emoji, CJK when no CJK font is found) is replaced by a placeholder (□) instead of failing;
with no TTF at all the core Helvetica font is used and text is reduced to Latin-1 (`safe_text`).
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import struct
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.infra.guards import is_unsafe_char

log = logging.getLogger(__name__)

PLACEHOLDER = "\u25a1"  # □
FAMILY = "DejaVu"
CREATOR = "Transformer Model Analysis Dashboard"
#: Optional extra fonts tried as fallbacks for scripts DejaVu lacks (first one found is used).
CJK_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)
MARGIN = 10.0  # mm on every side
PAGE_W = 190.0  # usable width in mm (A4, 10 mm margins)
PAGE_H = 297.0
BOTTOM = 15.0  # mm kept free for the footer
FIGURE_MAX_H = 125.0  # two figures fit on a page


@functools.lru_cache(maxsize=1)
def fonts() -> dict[str, Any]:
    """{"regular": path, "bold": path, "fallback": path|None, "cmap": set of code points drawable} or {} if none."""
    try:
        import matplotlib

        base = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    except Exception:  # matplotlib is a dependency, but a report must never fail on fonts
        base = Path("/nonexistent")
    candidates = [
        (base / "DejaVuSans.ttf", base / "DejaVuSans-Bold.ttf"),
        (
            Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
            Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
        ),
    ]
    for reg, bold in candidates:
        if reg.is_file():
            from fontTools.ttLib import TTFont

            cmap = set(TTFont(str(reg), lazy=True).getBestCmap())
            if bold.is_file():
                cmap &= set(TTFont(str(bold), lazy=True).getBestCmap())
            fallback = None
            for path in CJK_CANDIDATES:
                if os.path.isfile(path) and path.endswith(".ttf"):
                    try:
                        cmap |= set(TTFont(path, lazy=True).getBestCmap())
                        fallback = path
                        break
                    except Exception as exc:
                        log.info("skipping fallback font %s: %s", path, exc)
            return {
                "regular": str(reg),
                "bold": str(bold) if bold.is_file() else str(reg),
                "fallback": fallback,
                "cmap": frozenset(cmap),
            }
    log.warning("no DejaVu TTF found: the PDF uses Helvetica and Latin-1 text only")
    return {}


def safe_text(text: Any) -> str:
    """`text` with every character the report's fonts cannot draw replaced by the placeholder; control and bidi
    characters (newline and tab aside) boxed the same way; other format characters (zero-width joiners) removed."""
    s = "" if text is None else str(text)
    f = fonts()
    out = []
    for ch in s:
        if ch in "\n\t":
            out.append(ch if ch == "\n" else "    ")
            continue
        if is_unsafe_char(ch):  # controls and bidi overrides: boxed, so the reader sees something was there
            out.append(PLACEHOLDER)
            continue
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Co", "Cn"):  # controls, zero-width joiners/VS16, surrogates, unassigned
            continue
        if f:
            out.append(ch if ord(ch) in f["cmap"] else PLACEHOLDER)
        else:
            out.append(ch if ord(ch) < 256 else "?")
    return "".join(out)


def fmt(v: Any) -> str:
    """A table cell: "–" for None, "NaN", a float to 4 significant digits, anything else as str."""
    if v is None:
        return "–"
    if isinstance(v, (float, np.floating)):
        return "NaN" if np.isnan(v) else f"{float(v):.4g}"
    return str(v)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels of a PNG; ValueError for anything else."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


def _is_svg(data: bytes) -> bool:
    head = data[:512].lstrip()
    return head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096])


def _svg_size(data: bytes) -> tuple[float, float]:
    """(width, height) of an SVG from its viewBox (or width/height): only the ratio matters."""
    from fpdf.svg import SVGObject

    svg = SVGObject(data)
    if svg.viewbox:
        return float(svg.viewbox[2]), float(svg.viewbox[3])
    if svg.width and svg.height:
        return float(svg.width), float(svg.height)
    raise ValueError("an SVG without a size")


class Document:
    """One A4 report being laid out (fpdf2). `pdf` is the FPDF object for anything the helpers do not cover."""

    def __init__(self, title: str, footer: str = "Page") -> None:
        from fpdf import FPDF

        class _PDF(FPDF):
            tma_family = "helvetica"

            def footer(self) -> None:
                self.set_y(-12)
                self.set_font(self.tma_family, "", 8)
                self.set_text_color(120)
                self.cell(0, 8, f"{footer} {self.page_no()} / {{nb}}", align="C")
                self.set_text_color(0)

        pdf = _PDF(format="A4", unit="mm")
        pdf.set_margins(MARGIN, MARGIN, MARGIN)
        pdf.set_auto_page_break(True, margin=BOTTOM)
        f = fonts()
        if f:
            pdf.add_font(FAMILY, "", f["regular"])
            pdf.add_font(FAMILY, "B", f["bold"])
            if f["fallback"]:
                pdf.add_font("Fallback", "", f["fallback"])
                pdf.set_fallback_fonts(["Fallback"])
            pdf.tma_family = FAMILY
        pdf.set_title(safe_text(title))
        pdf.set_creator(CREATOR)
        self.pdf = pdf
        self.fam = pdf.tma_family

    # ---- pages and outline ------------------------------------------------------------------------------------
    def page(self) -> None:
        """Start a new page."""
        self.pdf.add_page()

    def outline(self, title: str, level: int = 0) -> None:
        """A bookmark at the current page (call after `page()`)."""
        self.pdf.start_section(safe_text(title), level=level)

    @property
    def pages(self) -> int:
        return int(self.pdf.page_no())

    # ---- text ---------------------------------------------------------------------------------------------------
    def h1(self, text: str) -> None:
        self.pdf.set_font(self.fam, "B", 15)
        self.pdf.multi_cell(0, 8, safe_text(text), new_x="LMARGIN", new_y="NEXT")
        self.pdf.ln(2)

    def h2(self, text: str, size: float = 11) -> None:
        """A section heading; starts a new page when too little of this one is left for what follows."""
        if self.pdf.get_y() > 250:
            self.pdf.add_page()
        self.pdf.set_font(self.fam, "B", size)
        self.pdf.multi_cell(0, size * 6 / 11, safe_text(text), new_x="LMARGIN", new_y="NEXT")
        self.pdf.ln(1)

    def para(self, text: str, size: float = 9, bold: bool = False, grey: bool = False) -> None:
        self.pdf.set_font(self.fam, "B" if bold else "", size)
        if grey:
            self.pdf.set_text_color(85)
        self.pdf.multi_cell(0, size * 0.5, safe_text(text), new_x="LMARGIN", new_y="NEXT")
        self.pdf.set_text_color(0)
        self.pdf.ln(1)

    def formula(self, text: str, size: float = 8) -> None:
        """A formula in its plain-text (Unicode) form, bold (fpdf cannot typeset LaTeX)."""
        self.para(text, size=size, bold=True)

    def definition(self, title: str, formula: str, text: str, pitfalls: Sequence[str] = ()) -> None:
        """One documentation entry: its title, formula, interpretation paragraph and pitfalls."""
        self.h2(title)
        if formula:
            self.formula(formula)
        self.para(text, size=8)
        for p in pitfalls:
            self.para("Pitfall: " + p, size=7.5)

    # ---- tables -------------------------------------------------------------------------------------------------
    def kv(self, rows: Sequence[tuple[str, Any]]) -> None:
        """A two-column table of labels and values, without a header row."""
        self.table(["", ""], [[k, v] for k, v in rows], widths=(40, 150), show_header=False)

    def table(
        self,
        header: Sequence[str],
        rows: Sequence[Sequence[Any]],
        widths: Sequence[float] | None = None,
        show_header: bool = True,
        size: float = 8,
    ) -> None:
        """A table with a bold header row; cells go through `fmt` and `safe_text`; widths in mm."""
        from fpdf.fonts import FontFace

        self.pdf.set_font(self.fam, "", size)
        with self.pdf.table(
            col_widths=None if widths is None else tuple(widths),
            text_align="LEFT",
            line_height=size * 0.5,
            first_row_as_headings=show_header,
            width=PAGE_W if widths is None else sum(widths),
            **({"headings_style": FontFace(emphasis="BOLD")} if show_header else {}),
        ) as t:
            if show_header:
                r = t.row()
                for h in header:
                    r.cell(safe_text(h))
            for row in rows:
                r = t.row()
                for v in row:
                    r.cell(safe_text(fmt(v)))
        self.pdf.ln(2)

    # ---- figures ------------------------------------------------------------------------------------------------
    def figure(self, data: bytes, caption: str = "", max_h: float = FIGURE_MAX_H) -> None:
        """A PNG or SVG (vector) figure, page-wide and centred, at most `max_h` mm tall, with its caption in small
        grey type below; a new page first when it does not fit on this one. ValueError for other data."""
        if _is_svg(data):
            # fpdf2 draws the SVG's shapes (matplotlib writes its text as paths); <metadata> is dropped unread
            data = re.sub(rb"<metadata>.*?</metadata>", b"", data, flags=re.DOTALL)
            pw, ph = _svg_size(data)
        else:
            pw, ph = png_size(data)
        w = PAGE_W
        h = w * ph / pw
        if h > max_h:
            w, h = w * max_h / h, max_h
        if self.pdf.get_y() + h + (12 if caption else 2) > self.pdf.h - BOTTOM:
            self.pdf.add_page()
        x = MARGIN + (PAGE_W - w) / 2
        self.pdf.image(io.BytesIO(data), x=x, w=w, h=h)  # placed at the current y, which moves below it
        if caption:
            self.pdf.set_font(self.fam, "", 8)
            self.pdf.set_text_color(80)
            self.pdf.multi_cell(0, 4, safe_text(caption), new_x="LMARGIN", new_y="NEXT")
            self.pdf.set_text_color(0)
        self.pdf.ln(3)

    def output(self) -> bytes:
        """The finished PDF."""
        return bytes(self.pdf.output())


#: One part of a joined PDF: its bytes and the outline entries (title, page within the part) it brings.
Part = tuple[bytes, Sequence[tuple[str, int]]]


def join(parts: Sequence[Part], *, keep_outlines: bool = False, title: str | None = None) -> bytes:
    """The parts one after the other (pypdf), with an outline entry for each (title, page) a part names, at that
    page of the joined file. keep_outlines: each part's own outline is kept too (else dropped). The metadata are
    the first part's, with `title` (and the creator) set when given."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    first_meta: dict[str, str] = {}
    for i, (data, entries) in enumerate(parts):
        reader = PdfReader(io.BytesIO(data))
        if i == 0 and reader.metadata:
            first_meta = {k: str(v) for k, v in reader.metadata.items()}
        start = len(writer.pages)
        writer.append(reader, import_outline=keep_outlines)
        for label, page in entries:
            writer.add_outline_item(title=label, page_number=start + page)
    meta = dict(first_meta)
    if title is not None:
        meta.update({"/Title": safe_text(title), "/Creator": CREATOR})
    if meta:
        writer.add_metadata(meta)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def outline_titles(data: bytes) -> list[tuple[str, int, int]]:
    """(title, depth, page index; -1 when it points nowhere) of every outline entry of a PDF, in order (for checks
    and tests)."""
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    out: list[tuple[str, int, int]] = []

    def walk(items: Any, depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item, depth + 1)
            else:
                page = reader.get_destination_page_number(item)
                out.append((str(item.title), depth, -1 if page is None else int(page)))

    walk(reader.outline, 0)
    return out
