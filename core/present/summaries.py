"""The numbers behind the Overall page's summary, correlation and normalised-metric views, and the PDF's: pure numpy
from an AnalysisResult (or a mapping of layer metrics), no figures.

  metric_correlations(result, method) -> [M, M] correlation of the M = 5 layer metrics across the L+1 layers
  normalized_metrics(result)          -> [M, L+1] each metric min-max scaled to [0, 1] over the layers
  summary_figures(result)             -> dict of short summary numbers
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from core.analysis.result import AnalysisResult
from core.steps.metrics import METRIC_NAMES

METHODS = ("pearson", "spearman")


MetricsLike = AnalysisResult | Mapping[str, np.ndarray]


def metrics_of(result_or_metrics: MetricsLike) -> dict[str, np.ndarray]:
    m = result_or_metrics.layer_metrics if isinstance(result_or_metrics, AnalysisResult) else result_or_metrics
    return {name: np.asarray(m[name], dtype=np.float64) for name in METRIC_NAMES}


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) of a 1-D array, ties sharing their mean rank; NaN stays NaN."""
    out = np.full(x.shape, np.nan)
    ok = ~np.isnan(x)
    v = x[ok]
    order = np.argsort(v, kind="mergesort")
    sv = v[order]
    ranks = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    out[ok] = ranks
    return out


def metric_correlations(result_or_metrics: MetricsLike, method: str = "pearson") -> np.ndarray:
    """Correlation of every pair of layer metrics across layers: [M, M], rows/cols in METRIC_NAMES order.

    pearson: r = Σ_l (x_l − x̄)(y_l − ȳ) / sqrt(Σ (x_l − x̄)² Σ (y_l − ȳ)²) over the L+1 layers.
    spearman: Pearson r of the average ranks. Layers where either metric is NaN are dropped for that pair;
    a pair with a constant metric or fewer than 2 common layers gives NaN (the diagonal is 1 where defined).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    m = metrics_of(result_or_metrics)
    X = np.stack([m[n] for n in METRIC_NAMES])
    M = len(METRIC_NAMES)
    out = np.full((M, M), np.nan)
    for a in range(M):
        for b in range(a, M):
            ok = ~np.isnan(X[a]) & ~np.isnan(X[b])
            if ok.sum() < 2:
                continue
            x, y = X[a][ok], X[b][ok]
            if method == "spearman":
                x, y = _ranks(x), _ranks(y)
            x, y = x - x.mean(), y - y.mean()
            den = np.sqrt((x * x).sum() * (y * y).sum())
            if den > 0:
                out[a, b] = out[b, a] = float(np.clip((x * y).sum() / den, -1.0, 1.0))
    return out


def normalized_metrics(result_or_metrics: MetricsLike) -> np.ndarray:
    """[M, L+1]: each metric scaled to [0, 1] over the layers, (x − min) / (max − min); a constant metric is 0.5,
    NaN stays NaN."""
    m = metrics_of(result_or_metrics)
    rows = []
    for n in METRIC_NAMES:
        x = m[n]
        if np.all(np.isnan(x)):
            rows.append(x.copy())
            continue
        lo, hi = np.nanmin(x), np.nanmax(x)
        rows.append(np.where(np.isnan(x), np.nan, (x - lo) / (hi - lo) if hi > lo else 0.5))
    return np.stack(rows)


def metric_token_count(result: AnalysisResult) -> int:
    """Tokens that entered the layer metrics (special tokens removed when the setting says so)."""
    if result.settings.exclude_special_tokens:
        return int(sum(1 for s in result.special_mask if not s))
    return int(result.n_tokens)


def summary_figures(result: AnalysisResult) -> dict[str, int | float | None]:
    """Short summary numbers for the Overall page.

    Keys: layers, tokens, metric_tokens, token_bound (= metric tokens − 1, the ceiling of the spectral metrics),
    for each metric <name>_first / <name>_last / <name>_min_layer / <name>_max_layer, largest_erank_drop_layer
    (the layer l with the largest fall erank[l-1] − erank[l]; None with fewer than 2 layers) and
    largest_erank_drop, final_cosine_to_input.
    """
    m = metrics_of(result)
    n_used = metric_token_count(result)
    out: dict[str, int | float | None] = {
        "layers": int(result.n_layers),
        "tokens": int(result.n_tokens),
        "metric_tokens": n_used,
        "token_bound": max(n_used - 1, 0),
    }
    for n in METRIC_NAMES:
        x = m[n]
        ok = not np.all(np.isnan(x))
        out[f"{n}_first"] = float(x[0])
        out[f"{n}_last"] = float(x[-1])
        out[f"{n}_min_layer"] = int(np.nanargmin(x)) if ok else None
        out[f"{n}_max_layer"] = int(np.nanargmax(x)) if ok else None
    er = m["effective_rank"]
    drops = er[:-1] - er[1:]
    if len(drops) and not np.all(np.isnan(drops)) and np.nanmax(drops) > 0:  # a flat rank has no largest drop
        i = int(np.nanargmax(drops))
        out["largest_erank_drop_layer"] = i + 1
        out["largest_erank_drop"] = float(drops[i])
    else:
        out["largest_erank_drop_layer"] = None
        out["largest_erank_drop"] = None
    out["final_cosine_to_input"] = float(m["cosine_to_input"][-1])
    return out
