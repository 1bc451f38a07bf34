"""report.pdf of a pair data set's patch bundle (`python -m core patch --pairs`): the run's facts, the near ties,
the sites of largest mean restored with their intervals and AtP, the exact-vs-AtP correlation, the figures, and the
formulas of the causal entries (attribution patching and pair-averaged patching among them). Built on
core.export.pdf's Document, like the one-pair report.
"""

from __future__ import annotations

import numpy as np

from core.export.pdf import Document, fmt
from core.export.report import _figures
from core.present import docs
from core.present.chart_spec import target_phrase
from core.studies.pairs import PairsResult


def pairs_report(result: PairsResult, files: dict[str, bytes] | None = None) -> bytes:
    """PDF bytes; `files` are the bundle's other members (its plots/*.png are embedded)."""
    w = Document(f"Transformer Model Analysis - {result.model.model_id} - patching over pairs")
    w.page()
    w.outline("Report")
    w.h1("Patching over a data set of pairs - report")
    m = result.model
    mode = "exact grid + AtP"
    if result.settings.atp_only:
        mode = "AtP only (no exact patching)"
    elif result.settings.top_k:
        mode = f"AtP, then the top {result.settings.top_k} sites exactly"
    used = int(result.used.sum())
    w.kv(
        [
            ("Model", m.model_id),
            ("Revision", m.revision),
            ("Dtype / device", f"{m.dtype} / {m.device}"),
            ("Pairs", f"{len(result.pairs)} ({used} in the means, {len(result.near_ties)} near ties)"),
            ("Tokens", f"{result.n_tokens}; target {target_phrase(result.target_position, result.target_reason)}"),
            ("Mode", mode),
            ("Exact vs AtP", f"Pearson r = {fmt(result.correlation())} over the per-position sites"),
            ("Interval", f"Student-t {result.settings.level:.0%} over pairs"),
            ("Core version", result.core_version),
        ]
    )
    for msg in result.warnings:
        w.para(f"• {msg}")
    if result.near_ties:
        w.h2("Near ties (listed, not averaged)")
        w.table(
            ["pair", "clean", "m clean", "m corrupted"],
            [[p.index, p.clean_text[:60], p.m_clean, p.m_corrupted] for p in result.near_ties[:30]],
            widths=(15, 105, 35, 35),
        )
    w.h2("Strongest sites")
    rows = result.rows()
    key = [abs(x[3]) if np.isfinite(x[3]) else abs(x[7]) for x in rows]
    table = []
    for i in np.argsort(-np.asarray(key), kind="stable")[:15]:
        l, p, c, restored, n, low, high, atp = rows[int(i)]
        tok = repr(result.tokens[p]) if p >= 0 else "all"
        table.append([c, l, p, tok, restored, f"[{fmt(low)}, {fmt(high)}]", atp, n])
    w.table(
        ["component", "block", "pos", "token", "restored", "interval", "atp", "n"],
        table,
        widths=(25, 14, 12, 35, 25, 40, 25, 14),
    )
    _figures(w, files or {}, outline=True)
    w.page()
    w.outline("Formulas and interpretation")
    w.h1("Formulas and interpretation")
    for e in docs.entries("causal"):
        w.definition(e.title, docs.formula_text(e.key), docs.interpretation(e.key), e.pitfalls)
    return w.output()
