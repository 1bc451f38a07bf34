"""Tables behind the app's charts: pure functions from an AnalysisResult (or its arrays) to pandas DataFrames.

No Streamlit and no torch here; the pages turn these frames into Altair charts. Shapes: L layers, H heads, T tokens.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np

from core.analysis.result import AnalysisResult
from core.infra.guards import visible_controls
from core.present import chart_spec
from core.steps.attention import AttentionSection
from core.steps.logit_lens import LensSection
from core.steps.metrics import METRIC_NAMES
from core.steps.predictions import PredictionSection

if TYPE_CHECKING:
    import pandas as pd


def token_labels(tokens: list[str]) -> list[str]:
    """Unique axis labels "i: token" for the T tokens (tokens repeat, positions do not)."""
    return [f"{i}: {t}" for i, t in enumerate(tokens)]


#: The byte-level BPE / SentencePiece marks of a raw vocabulary token (Ġ space, Ċ newline, ĉ tab, č carriage return,
#: ▁ SentencePiece space) — the same as core.figures.plotting's.
_BYTE_LEVEL_MARKS = {"\u0120": " ", "\u010a": "\n", "\u0109": "\t", "\u010d": "\r", "\u2581": " "}
#: Whitespace drawn as the symbols the figures use (core.figures.plotting.token_label): ↵ newline, ⇤ carriage
#: return, ⇥ tab; leading spaces (a word start) are ␣ and an empty token is ∅.
_WHITESPACE_MARKS = {"\n": "\u21b5", "\r": "\u21e4", "\t": "\u21e5"}


def readable_token(token: str | None) -> str:
    """A token as a table shows it, like the figures' labels: byte-level marks read as what they stand for (Ġthe →
    " the"), then leading spaces shown as ␣, newline / carriage return / tab as ↵ ⇤ ⇥, an empty or whitespace-only
    token never blank (" " → ␣, "" → ∅), other control and bidi characters made visible. A partial UTF-8 character
    arrives as its bytes ("<0xE2>", core.model.tokens.token_text), so different tokens never read the same."""
    out = "".join(_BYTE_LEVEL_MARKS.get(c, c) for c in str(token or ""))
    stripped = out.lstrip(" ")
    out = "\u2423" * (len(out) - len(stripped)) + stripped
    out = "".join(_WHITESPACE_MARKS.get(c, c) for c in out)
    return visible_controls(out) if out else "\u2205"


def predicted_token_label(result: AnalysisResult) -> str | None:
    """The attribution's predicted token as a table shows it: the predictions section's decoding of the same id
    (AnalysisResult.predicted_text), read like any other token (readable_token)."""
    text = result.predicted_text
    return None if text is None else readable_token(text)


def metrics_long(result: AnalysisResult) -> pd.DataFrame:
    """Layer metrics in long form: columns layer, metric, value (L+1 rows per metric)."""
    import pandas as pd

    rows = [
        {"layer": l, "metric": m, "value": float(v)}
        for m in METRIC_NAMES
        for l, v in enumerate(np.asarray(result.layer_metrics[m], dtype=float))
    ]
    return pd.DataFrame(rows)


def normalised_metrics(result: AnalysisResult) -> pd.DataFrame:
    """Long form (layer, metric, value, normalised) of core.present.summaries.normalized_metrics — the same numbers as
    the PDF's heatmap: each metric min-max scaled over layers, a constant metric 0.5, NaN kept."""
    from core.present.summaries import normalized_metrics

    df = metrics_long(result)
    df["normalised"] = np.asarray(normalized_metrics(result), dtype=np.float64).ravel()
    return df


def correlations_long(corr: np.ndarray | pd.DataFrame) -> pd.DataFrame:
    """A square correlation matrix (DataFrame, or ndarray [M, M] in METRIC_NAMES order) as long form: row, column,
    r."""
    import pandas as pd

    if isinstance(corr, pd.DataFrame):
        c = corr.copy()
    else:
        c = pd.DataFrame(np.asarray(corr, dtype=np.float64), index=list(METRIC_NAMES), columns=list(METRIC_NAMES))
    c.index.name, c.columns.name = "row", "column"
    return c.stack(future_stack=True).rename("r").reset_index()


def attention_frame(
    attentions: Any,
    tokens: list[str],
    layer: int,
    head: int | None,
    window: tuple[int, int] | None = None,
    scale: str = "linear",
) -> pd.DataFrame:
    """One attention map in long form: query, key (labels), qi, ki (positions), weight, shown.

    attentions: [L, H, T, T], or an AnalysisResult (its one accessor, `attention_maps(layer)`, which recomputes the
    layer when the maps were not held); head None means the mean over heads, (1/H) Σ_h A[layer, h]. window
    (start, stop) keeps the square block of queries and keys start ≤ i, j < stop (labels keep their absolute
    positions).
    shown: the value the colour encodes under `scale` (core.present.chart_spec.scaled_attention; "row" divides by
    the largest weight of the query's whole row, window or not).
    """
    import pandas as pd

    maps = attentions.attention_maps(layer) if hasattr(attentions, "attention_maps") else attentions[layer]
    A = np.asarray(maps, dtype=np.float64)
    M = A.mean(axis=0) if head is None else A[head]
    T = M.shape[0]
    labels = token_labels(tokens[:T])
    lo, hi = (0, T) if window is None else (max(0, window[0]), min(T, window[1]))
    qi, ki = np.meshgrid(np.arange(lo, hi), np.arange(lo, hi), indexing="ij")
    row_max = M.max(axis=1)[lo:hi]
    M = M[lo:hi, lo:hi]
    shown, _low, _high = chart_spec.scaled_attention(M, scale, T, row_max=row_max)
    return pd.DataFrame(
        {
            "qi": qi.ravel(),
            "ki": ki.ravel(),
            "query": [labels[i] for i in qi.ravel()],
            "key": [labels[j] for j in ki.ravel()],
            "weight": M.ravel(),
            "shown": shown.ravel(),
        }
    )


def layer_head_frame(values: np.ndarray, name: str, extra: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """A [L, H] array in long form: layer, head, <name> (+ extra [L, H] columns)."""
    import pandas as pd

    V = np.asarray(values, dtype=np.float64)
    L, H = V.shape
    li, hi = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    data = {"layer": li.ravel(), "head": hi.ravel(), name: V.ravel()}
    for k, arr in (extra or {}).items():
        data[k] = np.asarray(arr, dtype=np.float64).ravel()
    return pd.DataFrame(data)


def cluster_frame(attention: AttentionSection) -> pd.DataFrame:
    """Head clustering for a scatter: layer, head, x, y, cluster, role, entropy (row index = layer·H + head)."""
    import pandas as pd

    proj = np.asarray(attention.projection, dtype=np.float64)
    clusters = np.asarray(attention.clusters).astype(int)
    L, H = np.asarray(attention.entropy).shape
    idx = np.arange(L * H)
    return pd.DataFrame(
        {
            "layer": idx // H,
            "head": idx % H,
            "x": proj[:, 0],
            "y": proj[:, 1],
            "cluster": [f"cluster {c}" for c in clusters],
            "role": list(attention.roles),
            "entropy": np.asarray(attention.entropy, dtype=np.float64).ravel(),
        }
    )


def attribution_frame(tokens: list[str], columns: dict[str, Any]) -> pd.DataFrame:
    """Token scores table: position, token, and one column per method that is not None."""
    import pandas as pd

    data: dict[str, Any] = {"position": list(range(len(tokens))), "token": list(tokens)}
    for name, v in columns.items():
        if v is not None:
            data[name] = np.asarray(v, dtype=np.float64)[: len(tokens)]
    return pd.DataFrame(data)


def shaded_tokens_html(tokens: list[str], scores: Any, target: int | None = None) -> str:
    """The text as inline spans shaded by score: red for positive, blue for negative, alpha = |s| / max|s|.

    Every token is passed through html.escape; the target position is outlined.
    """
    s = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(s)
    scale = float(np.max(np.abs(s[finite]))) if finite.any() else 0.0
    parts = []
    for i, tok in enumerate(tokens):
        v = float(s[i]) if i < len(s) and np.isfinite(s[i]) else 0.0
        a = abs(v) / scale if scale > 0 else 0.0
        rgb = "220,60,40" if v >= 0 else "40,90,220"
        outline = "outline:2px solid #333;" if target is not None and i == target else ""
        tok = visible_controls(str(tok))  # a bidi override must not reorder the tokens after it
        parts.append(
            f'<span title="{html.escape(f"{i}: {tok} = {v:.4g}", quote=True)}" '
            f'style="background:rgba({rgb},{a:.3f});{outline}padding:2px 3px;margin:1px;'
            f'border-radius:3px;display:inline-block;font-family:monospace">'
            f"{html.escape(tok)}</span>"
        )
    return '<div style="line-height:2.1">' + "".join(parts) + "</div>"


def logit_lens_grid_frame(lens: LensSection, tokens: list[str]) -> pd.DataFrame:
    """The logit-lens grid in long form: layer, position (label), pi (index), top_token, probability.

    Only the decoded columns (`lens.grid_positions` when set, else all T) are listed.
    """
    import pandas as pd

    P = np.asarray(lens.grid_probs, dtype=np.float64)
    L1, T = P.shape
    labels = token_labels(tokens[:T])
    cols = [t for t in (lens.grid_positions or range(T)) if 0 <= t < T]
    rows = [
        {
            "layer": l,
            "position": labels[t],
            "pi": t,
            "top_token": readable_token(lens.grid_tokens[l][t]),
            "probability": float(P[l, t]),
        }
        for l in range(L1)
        for t in cols
    ]
    return pd.DataFrame(rows, columns=["layer", "position", "pi", "top_token", "probability"])


def logit_lens_table(lens: LensSection, k: int = 5) -> pd.DataFrame:
    """Per layer at the lens position: the top-k tokens with probabilities, P(final prediction), entropy."""
    import pandas as pd

    probs = np.asarray(lens.top_probs, dtype=np.float64)
    rows = []
    for i, layer in enumerate(np.asarray(lens.layers).tolist()):
        top = ", ".join(f"{readable_token(t)} ({p:.2f})" for t, p in zip(lens.top_tokens[i][:k], probs[i][:k]))
        rows.append(
            {
                "layer": int(layer),
                "top tokens": top,
                f"P({lens.final_token})": float(np.asarray(lens.final_prob)[i]),
                "entropy (nats)": float(np.asarray(lens.entropy)[i]),
            }
        )
    return pd.DataFrame(rows)


def predictions_table(predictions: PredictionSection, tokens: list[str] | None = None) -> pd.DataFrame:
    """Candidates of every predicted position: position, rank, token, probability."""
    import pandas as pd

    rows = []
    for pos, cands in zip(predictions.positions, predictions.candidates):
        for rank, c in enumerate(cands, start=1):
            rows.append(
                {
                    "position": int(pos),
                    "rank": rank,
                    "token": readable_token(c["token"]),
                    "probability": float(c["probability"]),
                }
            )
    return pd.DataFrame(rows, columns=["position", "rank", "token", "probability"])
