"""Tables behind the Causal and Corpus pages' charts: pure functions from a PatchingResult, a HeadAblationSection or
a CorpusResult to pandas DataFrames (no Streamlit, no torch; app/causal_widgets.py and app/corpus_widgets.py turn
them into Altair charts). Shapes: L blocks, T positions, H heads. Blocks and layers are numbered 1…L, as on every
other page (core.present.chart_spec.block_number); heads and positions from 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from core.present.chart_spec import block_number
from core.present.tables import readable_token
from core.steps.ablation import HeadAblationSection
from core.studies.corpus import CorpusResult
from core.studies.patching import PatchingResult

if TYPE_CHECKING:
    import pandas as pd

#: Readable names of the patched components (the page's radio and the bars' legend).
COMPONENT_NAMES = {"residual": "Residual stream (block input)", "attention": "Attention output", "mlp": "MLP output"}


def position_label(res: PatchingResult, p: int) -> str:
    """ "p: clean token" or "p: clean → corrupted" where the two texts differ at position p."""
    c, k = readable_token(res.clean_tokens[p]), readable_token(res.corrupted_tokens[p])
    return f"{p}: {c}" + (f" → {k}" if c != k else "")


def patching_frame(res: PatchingResult, component: str) -> pd.DataFrame:
    """One row per (block, position) patched alone with a finite score: block, position, clean token, corrupted
    token, label (position_label), restored, m patched."""
    import pandas as pd

    r = res.restored(component)
    rows = [
        {
            "block": block_number(l),
            "position": p,
            "clean token": res.clean_tokens[p],
            "corrupted token": res.corrupted_tokens[p],
            "label": position_label(res, p),
            "restored": float(r[l, p]),
            "m patched": float(res.metric[component][l, p]),
        }
        for l in range(res.n_layers)
        for p in range(res.n_tokens)
        if np.isfinite(r[l, p])
    ]
    return pd.DataFrame(
        rows, columns=["block", "position", "clean token", "corrupted token", "label", "restored", "m patched"]
    )


def component_frame(res: PatchingResult, components: Sequence[str] = ("attention", "mlp")) -> pd.DataFrame:
    """One row per (component, block): restored by patching that component at every position at once."""
    import pandas as pd

    return pd.DataFrame(
        [
            {"block": block_number(l), "component": COMPONENT_NAMES[c], "restored": float(res.restored_all(c)[l])}
            for c in components
            for l in range(res.n_layers)
        ],
        columns=["block", "component", "restored"],
    )


def head_ablation_frame(section: HeadAblationSection, head_scores: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (layer, head): the drop of log p under mean and zero ablation (−Δ, so positive = the head
    helped the prediction) and, when given, the gradient head score."""
    import pandas as pd

    L, H = section.mean_ablation.shape
    rows = []
    for l in range(L):
        for h in range(H):
            row: dict[str, Any] = {
                "layer": block_number(l),
                "head": h,
                "mean-ablation drop": float(-section.mean_ablation[l, h]),
                "zero-ablation drop": float(-section.zero_ablation[l, h]),
            }
            if head_scores is not None:
                row["gradient score"] = float(head_scores[l, h])
            rows.append(row)
    return pd.DataFrame(rows)


def pooled_frame(result: CorpusResult, metrics: Sequence[str], label: Callable[[str], str] = str) -> pd.DataFrame:
    """Long frame: layer, metric (label(m)), estimate, ci_low, ci_high for the chosen pooled metrics (linearity,
    a property of a step between layers, starts at layer 1)."""
    import pandas as pd

    rows = []
    for m in metrics:
        for layer in range(1 if m == "linearity" else 0, result.n_layers):
            rows.append(
                {
                    "layer": layer,
                    "metric": label(m),
                    "estimate": result.estimate[m][layer],
                    "ci_low": result.ci_low[m][layer],
                    "ci_high": result.ci_high[m][layer],
                }
            )
    return pd.DataFrame(rows, columns=["layer", "metric", "estimate", "ci_low", "ci_high"])


def per_text_frame(result: CorpusResult, metric: str) -> pd.DataFrame:
    """Long frame: layer, series ("per-text median (IQR band)" / "pooled (95 % band)"), value, q25, q75 for one
    single-text metric (the pooled rows only where the metric is also pooled)."""
    import pandas as pd

    s = result.per_text_summary(metric)
    rows = [
        {
            "layer": layer,
            "series": "per-text median (IQR band)",
            "value": s["median"][layer],
            "q25": s["q25"][layer],
            "q75": s["q75"][layer],
        }
        for layer in range(result.n_layers)
    ]
    if metric in result.estimate:
        rows += [
            {
                "layer": layer,
                "series": "pooled (95 % band)",
                "value": result.estimate[metric][layer],
                "q25": result.ci_low[metric][layer],
                "q75": result.ci_high[metric][layer],
            }
            for layer in range(result.n_layers)
        ]
    return pd.DataFrame(rows, columns=["layer", "series", "value", "q25", "q75"])


def corpus_table_frame(result: CorpusResult, header: Sequence[str]) -> pd.DataFrame:
    """The rows of corpus_metrics.csv (result.metric_rows()) under `header` (the bundle's column names)."""
    import pandas as pd

    return pd.DataFrame(result.metric_rows(), columns=list(header))
