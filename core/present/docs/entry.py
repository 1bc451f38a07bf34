"""One documentation entry (DocEntry), the kinds it may have, and `_e(...)`, the constructor the kind modules use:
it turns lists into tuples and breaks a long LaTeX formula into lines that fit the page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS = (
    "layer_metric",
    "attention",
    "attribution",
    "prediction",
    "logit_lens",
    "figure",
    "animation",
    "causal",
    "neurons",
    "corpus",
    "comparison",
)


@dataclass(frozen=True)
class DocEntry:
    """Documentation of one metric, analysis or figure.

    formula_latex is "" for figures; formula_plain is its plain-text (Unicode) twin used in the PDF.
    pitfalls and references are tuples (immutable lists); a reference reads "Author et al. (year). Title.".
    how_to_read is set for figures and animations. short is the one-line caption for tooltips.
    """

    key: str
    title: str
    kind: str
    definition: str
    short: str
    formula_latex: str = ""
    formula_plain: str = ""
    high: str = ""
    low: str = ""
    encoder_vs_decoder: str = ""
    pitfalls: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    how_to_read: str = ""
    sources: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.key}: unknown kind {self.kind!r}")
        if self.kind not in ("figure", "animation") and not self.formula_latex:
            raise ValueError(f"{self.key}: a metric or analysis needs a formula")
        if self.formula_latex and not self.formula_plain:
            raise ValueError(f"{self.key}: a formula needs its plain-text version")


LATEX_LINE = 90  # a display formula longer than this is broken into lines at its top-level \qquad separators


def _split_lines(tex: str) -> str:
    r"""Break a long formula into a `gathered` block at its top-level (brace depth 0) \qquad separators, so that
    it fits the page; short formulas are returned unchanged."""
    if len(tex) <= LATEX_LINE:
        return tex
    parts, depth, start, i = [], 0, 0, 0
    while i < len(tex):
        ch = tex[i]
        if ch == "\\" and tex.startswith("\\qquad", i) and depth == 0:
            head = tex[start:i].rstrip()
            parts.append(head[:-1].rstrip() if head.endswith(",") else head)
            i += len("\\qquad")
            start = i
            continue
        if ch == "{" and (i == 0 or tex[i - 1] != "\\"):
            depth += 1
        elif ch == "}" and (i == 0 or tex[i - 1] != "\\"):
            depth -= 1
        i += 1
    parts.append(tex[start:].strip())
    parts = [p for p in parts if p]
    if len(parts) < 2:
        return tex
    return "\\begin{gathered}" + " \\\\ ".join(parts) + "\\end{gathered}"


def _e(**kw: Any) -> DocEntry:
    for k in ("pitfalls", "references", "sources", "files"):
        if k in kw:
            kw[k] = tuple(kw[k])
    if kw.get("formula_latex"):
        kw["formula_latex"] = _split_lines(kw["formula_latex"])
    return DocEntry(**kw)
