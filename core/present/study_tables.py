"""Tables behind the Causal and Corpus pages' charts: pure functions from a PatchingResult, a HeadAblationSection or
a CorpusResult to pandas DataFrames (no Streamlit, no torch; app/causal_widgets.py and app/corpus_widgets.py turn
them into Altair charts). Shapes: L blocks, T positions, H heads. Blocks and layers are numbered 1…L, as on every
other page (core.present.chart_spec.block_number); heads and positions from 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.present.chart_spec import METRIC_AXES, block_number
from core.present.tables import readable_token
from core.steps.ablation import HeadAblationSection
from core.studies.corpus import CorpusResult
from core.studies.geometry import BOUNDS
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


#: A pooled curve whose spread over the layers is at most this share of its size is flat: what varies is round-off.
FLAT_RTOL = 1e-9
#: TwoNN needs this many distinct points: each point's two nearest distinct neighbours, and two ratios after the
#: largest tenth is discarded (core.studies.geometry.twonn_dimension).
TWONN_MIN_POINTS = 3
_SPECTRAL_WORDS = {
    "effective_rank": "a spectrum",
    "participation_ratio": "a spectrum",
    "intrinsic_dim_95": "a spectrum",
    "anisotropy_top_pc": "a spectrum",
    "anisotropy_cosine": "a cosine between texts",
    "linearity": "a map between layers",
}


@dataclass(frozen=True)
class CurveNote:
    """Why a pooled curve is not an ordinary curve. empty: nothing to draw (no finite value; the chart is replaced
    by `text`); otherwise the curve is flat (the same value at every layer up to round-off: drawn on `domain`, a
    range around the value, with `text` beside it, so float noise never stretches the axis)."""

    empty: bool
    text: str
    domain: tuple[float, float] | None = None


def distinct_points(result: CorpusResult) -> np.ndarray:
    """[L+1] distinct pooled token states per layer (pooled points less the duplicates removed before TwoNN)."""
    return np.asarray(result.n_points, dtype=np.int64) - np.asarray(result.n_duplicates, dtype=np.int64)


def pooled_note(result: CorpusResult, metric: str) -> CurveNote | None:
    """The sentence a pooled curve needs when it is empty or flat, or None for an ordinary curve. Said in words
    (page, PNG and PDF alike): how many distinct token states the texts gave and what the metric needs."""
    values = np.asarray(result.estimate[metric], dtype=np.float64)
    values = values[1:] if metric == "linearity" else values
    finite = values[np.isfinite(values)]
    distinct = int(distinct_points(result).max()) if result.n_layers else 0
    points = int(np.max(result.n_points)) if result.n_layers else 0
    states = f"{distinct} distinct token state{'s' if distinct != 1 else ''}"
    if finite.size == 0:
        if metric == "twonn_dimension" and distinct < TWONN_MIN_POINTS:
            same = " (the texts give the same states)" if points > distinct else ""
            return CurveNote(
                True,
                f"Nothing to draw: TwoNN needs at least {TWONN_MIN_POINTS} distinct token states per layer (each "
                f"point's two nearest neighbours), and this corpus gives at most {states}{same}.",
            )
        if distinct <= 1:
            what = _SPECTRAL_WORDS.get(metric, "this metric")
            return CurveNote(
                True,
                f"Nothing to draw: every text gives the same token state ({points} pooled, {states} per layer), "
                f"so there is no spread for {what} to measure.",
            )
        return CurveNote(True, "Nothing to draw: the metric is undefined at every layer for this corpus.")
    top, bottom = float(finite.max()), float(finite.min())
    scale = max(1.0, abs(top), abs(bottom))
    if finite.size < 2 or top - bottom > FLAT_RTOL * scale:
        return None
    value = float(np.mean(finite))
    pad = max(0.05 * abs(value), 0.05)
    lo, hi = _bounds(metric)
    band = [float(v) for k in (result.ci_low, result.ci_high) for v in np.asarray(k[metric])[np.isfinite(k[metric])]]
    low = max(lo, min([value - pad, *band]))
    high = min(hi, max([value + pad, *band]))
    if high - low < pad:  # the value sits on a bound: the range goes the other way
        low, high = (max(lo, value - 2 * pad), value) if value >= hi else (value, min(hi, value + 2 * pad))
    domain = (low, high)
    text = f"The same value at every layer: {value:.6g}"
    text += "." if top == bottom else " (what differs, below one part in 10⁹, is round-off)."
    hidden = int(result.model.hidden_size)
    if metric == "linearity" and 0 < points <= hidden:
        text += (
            f" With {points} pooled points for a hidden width of {hidden}, one layer maps linearly onto the next, "
            "so linearity is 1 by construction."
        )
    elif distinct < points:
        text += f" The texts give {states} per layer out of {points} pooled."
    return CurveNote(False, text, domain)


def per_text_note(result: CorpusResult, metric: str) -> str | None:
    """Why the per-text curve of a single-text metric has nothing to draw (no text has a value at any layer), or
    None when it has a value somewhere."""
    if np.isfinite(result.per_text_summary(metric)["median"]).any():
        return None
    n_used = int(np.max(result.metric_tokens)) if len(result.metric_tokens) else 0
    left_out = " (special tokens left out)" if not result.settings.include_special_tokens else ""
    if n_used == 0:
        return f"Nothing to draw: no token of any text entered the layer metrics{left_out}."
    if METRIC_AXES[metric].token_ceiling and n_used < 2:
        return (
            f"Nothing to draw: at most {n_used} token of a text entered the layer metrics{left_out}, and a "
            "spectrum needs at least 2 tokens in one text."
        )
    return "Nothing to draw: the metric is undefined at every layer for every text."


def _bounds(metric: str) -> tuple[float, float]:
    return BOUNDS.get(metric, (-np.inf, np.inf))


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
