"""The documentation registry: one source of truth for every metric, analysis and figure.

The Details page renders it (formulas with st.latex), the other pages take their chart captions and tooltips from
`caption(key)`, and the PDF report takes each formula as plain text (`formula_text(key)`, since fpdf cannot render
LaTeX) and its interpretation paragraph (`interpretation(key)`). A formula is written here once.

The entries live in one module per kind beside this one (metrics, attention, attribution, predictions, figures,
routes, causal, neurons, sae, corpus, comparison); a metric is added in its kind module, and DOCS below collects them
in display order. Everything is imported from core.present.docs as before.

Each entry names what it documents in `sources`, so a test can check both directions (every computed thing has an
entry, every entry names something computed):
  "metric:<name>"          a layer metric in core.steps.metrics.METRIC_NAMES
  "<section>.<field>"      a field of a result section (result.attention, .attribution, .predictions, .logit_lens)
  "core.<module>:<name>"   a public function of core (e.g. the generation API)
Figure entries name the bundle files they describe in `files` (fnmatch patterns such as "plots/layer_metrics.png").

Notation used throughout: L layers, H heads, T tokens, D hidden width; h_t^l the hidden state of token t after
block l (l = 0 is the embedding output); A^{l,h} the attention matrix of head h in layer l, rows = queries.
"""

from __future__ import annotations

import fnmatch

from core.present.docs import (
    attention,
    attribution,
    causal,
    comparison,
    corpus,
    figures,
    metrics,
    neurons,
    predictions,
    routes,
    sae,
)
from core.present.docs.entry import KINDS, LATEX_LINE, DocEntry
from core.present.docs.entry import _split_lines as _split_lines  # the formula line breaker, tested directly
from core.present.docs.methodology import METHODOLOGY

__all__ = [
    "DOCS",
    "KINDS",
    "LATEX_LINE",
    "METHODOLOGY",
    "VISUAL_GUIDE",
    "DocEntry",
    "caption",
    "doc",
    "entries",
    "figure_doc",
    "formula_text",
    "interpretation",
    "metric_label",
]

#: Every entry by key, in display order (the order of the Details page and of the PDF's documentation pages).
DOCS: dict[str, DocEntry] = {
    e.key: e
    for module in (
        metrics,
        attention,
        attribution,
        predictions,
        figures,
        routes,
        causal,
        neurons,
        sae,
        corpus,
        comparison,
    )
    for e in module.ENTRIES
}

VISUAL_GUIDE: list[tuple[str, str]] = [
    (DOCS[k].title, DOCS[k].how_to_read) for k in DOCS if DOCS[k].kind in ("figure", "animation")
]


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------
def doc(key: str) -> DocEntry:
    """The entry for `key`; KeyError names the known keys."""
    try:
        return DOCS[key]
    except KeyError:
        raise KeyError(f"no documentation entry {key!r}; known: {', '.join(DOCS)}") from None


def caption(key: str) -> str:
    """One short line for a chart caption or tooltip."""
    return doc(key).short


def entries(kind: str | None = None) -> list[DocEntry]:
    """All entries in display order, or those of one kind (see KINDS)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return [e for e in DOCS.values() if kind is None or e.kind == kind]


def formula_text(key: str) -> str:
    """The formula as plain (Unicode) text for the PDF; "" for figures."""
    return doc(key).formula_plain


def interpretation(key: str) -> str:
    """One paragraph: definition, then how to read high and low values (used by the PDF report)."""
    e = doc(key)
    parts = [e.definition]
    if e.high:
        parts.append(f"High: {e.high}")
    if e.low:
        parts.append(f"Low: {e.low}")
    if e.how_to_read:
        parts.append(e.how_to_read)
    return " ".join(parts)


def figure_doc(filename: str) -> DocEntry | None:
    """The figure/animation entry whose `files` pattern matches a bundle member name, or None."""
    for e in DOCS.values():
        if any(fnmatch.fnmatchcase(filename, pat) for pat in e.files):
            return e
    return None


def metric_label(name: str) -> str:
    """Display title of a layer metric or analysis key (falls back to the key itself)."""
    return DOCS[name].title if name in DOCS else name
