"""Confidence intervals for means over independent units (texts of a corpus, prompt pairs of a patching data set).

`mean_interval(values, level, axis)` is the Student-t interval of the mean: x̄ ± t_{(1+level)/2, n−1} · s / √n with s
the sample standard deviation (ddof = 1). It assumes the units are independent draws from one population; its
coverage is exact for normal data and close to `level` for other data once n is moderate (central limit theorem).
NaN values are left out cell by cell (n counts the finite values of each cell); a cell with fewer than two values
has a NaN interval (its mean is still given when n = 1).
"""

from __future__ import annotations

import numpy as np


def mean_interval(values: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) of `values` along `axis`, each with that axis removed (float64).

    values: array [..., n, ...] with the n units along `axis`; level in (0, 1)."""
    from scipy import stats

    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be between 0 and 1, got {level!r}")
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x)
    n = finite.sum(axis=axis)
    total = np.where(finite, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        dev = np.where(finite, x - np.expand_dims(mean, axis), 0.0)
        var = (dev**2).sum(axis=axis) / np.maximum(n - 1, 1)
        half = stats.t.ppf(0.5 + float(level) / 2.0, np.maximum(n - 1, 1)) * np.sqrt(var / np.maximum(n, 1))
    half = np.where(n >= 2, half, np.nan)
    return mean, mean - half, mean + half
