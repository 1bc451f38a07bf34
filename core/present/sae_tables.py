"""Tables of SAE features over a corpus (core.studies.sae_corpus.SAEFeatureExamples) for the Corpus page: the
features sorted by firing rate, one feature's numbers, and its top-activating examples as an HTML table with the
example token highlighted in its context. Pure functions (no Streamlit); every piece of text from the corpus or the
tokenizer goes through html.escape (after control and bidi characters are made visible).
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np

from core.infra.guards import visible_controls
from core.studies.sae_corpus import SAEFeatureExamples

if TYPE_CHECKING:
    import pandas as pd

STATS_COLUMNS = ["feature", "firing_rate", "mean_activation", "mean_when_active", "max_activation", "examples"]


def features_by_firing_rate(ex: SAEFeatureExamples) -> list[int]:
    """The features that fired at least once, the most frequently firing first (ties: the larger peak activation,
    then the lower index)."""
    fired = np.flatnonzero(ex.fire_count > 0)
    order = np.lexsort((fired, -ex.act_max[fired].astype(np.float64), -ex.fire_count[fired]))
    return [int(f) for f in fired[order]]


def feature_stats_frame(ex: SAEFeatureExamples) -> pd.DataFrame:
    """One row per feature that fired (STATS_COLUMNS), sorted by firing rate (descending)."""
    import pandas as pd

    n = max(ex.n_tokens, 1)
    n_examples = np.bincount(ex.ex_feature.astype(np.int64), minlength=ex.d_sae)
    rows = []
    for f in features_by_firing_rate(ex):
        c, s = int(ex.fire_count[f]), float(ex.act_sum[f])
        rows.append([f, c / n, s / n, s / c, float(ex.act_max[f]), int(n_examples[f])])
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


def feature_numbers(ex: SAEFeatureExamples, feature: int) -> dict[str, float]:
    """Firing rate, mean activation (over every token), mean when active and peak of one feature."""
    n, c, s = max(ex.n_tokens, 1), int(ex.fire_count[feature]), float(ex.act_sum[feature])
    return {
        "firing_rate": c / n,
        "mean_activation": s / n,
        "mean_when_active": s / c if c else 0.0,
        "max_activation": float(ex.act_max[feature]),
        "tokens_fired": float(c),
    }


def _safe(text: str) -> str:
    return html.escape(visible_controls(text), quote=True)


def feature_examples_html(ex: SAEFeatureExamples, feature: int) -> str:
    """The top examples of `feature` as an HTML table: rank, text, position, activation and the context with the
    example token highlighted (a <mark>, shaded by activation / the feature's peak). "" without examples."""
    rows = np.flatnonzero(ex.ex_feature == feature)
    if rows.size == 0:
        return ""
    rows = rows[np.argsort(ex.ex_rank[rows], kind="stable")]
    peak = float(np.max(ex.ex_activation[rows])) or 1.0
    cells = []
    for i in rows:
        before, tok, after = ex.context_parts(int(i))
        a = float(ex.ex_activation[i])
        alpha = max(0.15, min(1.0, a / peak))
        cells.append(
            f"<tr><td>{int(ex.ex_rank[i])}</td><td>{int(ex.ex_text[i])}</td><td>{int(ex.ex_position[i])}</td>"
            f'<td style="text-align:right">{a:.4g}</td>'
            f'<td style="font-family:monospace;white-space:pre-wrap">{_safe(before)}'
            f'<mark style="background:rgba(230,120,20,{alpha:.2f});padding:1px 2px;border-radius:3px">'
            f"{_safe(tok)}</mark>"
            f"{_safe(after)}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("rank", "text", "position", "activation", "context"))
    return (
        '<table style="border-collapse:collapse;width:100%;font-size:0.9em">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(cells)}</tbody></table>"
    )
