"""Confidence intervals from resampling units (texts, prompt pairs): one function per method, pure numpy.

A statistic θ̂ computed from n independent units (texts of a corpus, pairs of a patching set) is resampled by giving
every unit a weight; each resample is a row of a weight matrix W [R, n]:

  bootstrap_weights(n, R, seed)    multinomial counts: n units drawn with replacement (rows sum to n)
  jackknife_weights(n, K, seed)    0/1 rows, each deleting one of K ≤ n seeded groups of units (K = n: delete-one)
  subsample_weights(n, R, seed, m) 0/1 rows holding m units drawn without replacement (default m = ⌊n/2⌋)

The caller evaluates its statistic on every row (θ*_r) and turns the values into an interval:

  percentile_recentred(θ̂, θ*)      the bootstrap percentile interval moved so that its median is θ̂
                                   (the bootstrap's own bias removed): [θ̂ + q_a(θ* − med θ*), θ̂ + q_{1−a}(…)]
  bca(θ̂, θ*, θ_jack)               Efron's bias-corrected and accelerated percentile interval, the acceleration
                                   from the jackknife values; widened to reach θ̂ when its bias correction moves
                                   both ends past it
  jackknife_t(θ̂, θ_jack)           θ̂ ± t_{K−1} · se_J, se_J² = (K−1)/K Σ (θ_(k) − θ̄_(·))²
  subsampling(θ̂, θ*_m, n, m)       the spread of θ̂ on half-size subsets without replacement, scaled to size n by
                                   √(m / (n − m)) (exact for a mean: Var*(θ̂_m) = σ²(1/m − 1/n)), centred on θ̂:
                                   [θ̂ + s·q_a(θ*_m − med θ*_m), θ̂ + s·q_{1−a}(…)]
  jackknife_step(θ̂, f̂, f_jack)     for a whole-number statistic θ̂ = ⌈f̂⌉ that is the ceiling of a continuous one f̂
                                   (d95 and the interpolated crossing of 95 % explained variance): the jackknife t
                                   interval of E[f̂] mapped through g(μ, s) = E⌈N(μ, s²)⌉, the expectation of the
                                   whole number when f̂ ~ N(μ, s²), with s = se_J: [g(f̂ − t·se_J), g(f̂ + t·se_J)]
  mean_interval(values)            the t interval of a plain mean (no resampling)

What is estimated: the value the same computation would give, on average, on another set of n units from the same
source — E[θ̂_n], the expectation of the estimator at this size. For a mean that is the population mean; for a
statistic biased at finite n (a rank of a pooled covariance, a nearest-neighbour dimension) it is the population
value of that biased estimator, which is what a reader comparing two corpora of equal size compares.

Every method returns (low, high) with low ≤ θ̂ ≤ high (a NaN pair when fewer than two resampled values are finite).
`widen_for_step` widens the interval of a whole-number statistic by half a step (the simple remedy, kept for the
other methods on such a statistic; `jackknife_step` replaces it for d95); `clip_interval` keeps a bounded
statistic's interval inside its bounds (bounds are kept by clipping, not by a transform: θ̂ lies within the bounds,
so it stays inside, and the target does too, so clipping never costs coverage). `interval(method, …)` dispatches by
name for code that picks a method per statistic.
"""

from __future__ import annotations

from collections.abc import Mapping
from statistics import NormalDist

import numpy as np
from scipy import stats as _stats

LEVEL = 0.95
#: method name -> the resampling schemes its values come from
METHODS: dict[str, tuple[str, ...]] = {
    "percentile_recentred": ("bootstrap",),
    "bca": ("bootstrap", "jackknife"),
    "jackknife_t": ("jackknife",),
    "subsampling": ("subsample",),
    "jackknife_step": ("jackknife",),
}
METHOD_TEXT = {
    "percentile_recentred": "bootstrap percentile interval re-centred on the estimate (texts with replacement)",
    "bca": "bias-corrected and accelerated bootstrap (BCa, jackknife acceleration)",
    "jackknife_t": "delete-one-text jackknife with a t interval",
    "subsampling": "half-sampling: subsets of half the texts without replacement, spread scaled to the full size",
    "jackknife_step": "delete-one-text jackknife of the interpolated (fractional) count, mapped to the expected "
    "whole number",
}
ESTIMAND = (
    "the value this computation would give, on average, on another corpus of the same number of texts from the "
    "same source (the expectation of the estimator at this corpus size)"
)


def describe_methods(methods: Mapping[str, str]) -> str:
    """One line naming the method of every statistic, grouped by method: "method text (a, b); other (c)"."""
    by: dict[str, list[str]] = {}
    for stat, meth in methods.items():
        by.setdefault(meth, []).append(stat)
    return "; ".join(f"{METHOD_TEXT.get(k, k)} ({', '.join(v)})" for k, v in by.items())


def _clean(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def _nan() -> tuple[float, float]:
    return float("nan"), float("nan")


def _contain(estimate: float, lo: float, hi: float) -> tuple[float, float]:
    return float(min(lo, estimate)), float(max(hi, estimate))


# ----------------------------------------------------------------------------------------------------------------
# Resampling weights


#: Random numbers drawn at once when weights are asked for some columns only (rows are drawn in chunks of this size).
WEIGHT_CHUNK = 1 << 21


def _row_chunks(n: int, n_resamples: int) -> list[int]:
    per = max(1, WEIGHT_CHUNK // max(n, 1))
    return [min(per, n_resamples - r) for r in range(0, n_resamples, per)]


def bootstrap_weights(n: int, n_resamples: int, seed: int, columns: np.ndarray | None = None) -> np.ndarray:
    """[R, n] integer counts (float64): each row draws n units with replacement (seeded). With `columns` (unit
    indices): only those columns, [R, len(columns)], the same numbers, drawn in chunks of rows so that memory stays
    O(len(columns)) per row instead of O(n) (a corpus of 10⁵ texts whose sample touches a few thousand)."""
    rng = np.random.default_rng(seed)
    if columns is not None:
        cols = np.asarray(columns, dtype=np.int64)
        out = []
        for c in _row_chunks(n, n_resamples):  # the same stream as one (R, n) draw
            draws = rng.integers(0, n, size=(c, n))
            out += [np.bincount(row, minlength=n)[cols].astype(np.float64) for row in draws]
        return np.array(out).reshape(n_resamples, cols.size)
    draws = rng.integers(0, n, size=(n_resamples, n))
    W = np.zeros((n_resamples, n))
    np.add.at(W, (np.repeat(np.arange(n_resamples), n), draws.ravel()), 1.0)
    return W


def jackknife_groups(n: int, max_groups: int, seed: int) -> np.ndarray:
    """int [n]: the jackknife group of every unit; K = min(n, max_groups) groups of sizes differing by ≤ 1
    (seeded shuffle; with K = n unit i is group i)."""
    K = max(1, min(n, max_groups))
    if K == n:
        return np.arange(n)
    perm = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[perm] = np.arange(n) % K
    return out


def jackknife_weights(n: int, max_groups: int, seed: int, columns: np.ndarray | None = None) -> np.ndarray:
    """[K, n] 0/1 weights: row k deletes group k of `jackknife_groups` (K = n: the delete-one jackknife); with
    `columns`, only those columns."""
    g = jackknife_groups(n, max_groups, seed)
    K = int(g.max()) + 1
    if columns is not None:
        g = g[np.asarray(columns, dtype=np.int64)]
    return (g[None, :] != np.arange(K)[:, None]).astype(np.float64)


def subsample_size(n: int) -> int:
    """The subset size of `subsample_weights`: ⌊n/2⌋ (half-sampling), at least 1."""
    return max(1, n // 2)


def subsample_weights(
    n: int, n_resamples: int, seed: int, m: int | None = None, columns: np.ndarray | None = None
) -> np.ndarray:
    """[R, n] 0/1 weights: each row holds m units drawn without replacement (default `subsample_size(n)`); with
    `columns`, only those columns (the same numbers, drawn in chunks of rows)."""
    m = subsample_size(n) if m is None else int(m)
    rng = np.random.default_rng(seed)
    if columns is not None:
        cols = np.asarray(columns, dtype=np.int64)
        out = []
        for c in _row_chunks(n, n_resamples):  # the same stream as one (R, n) draw
            keys = rng.random((c, n))
            for row in keys:
                w = np.zeros(n)
                w[np.argpartition(row, m - 1)[:m] if m < n else np.arange(n)] = 1.0
                out.append(w[cols])
        return np.array(out).reshape(n_resamples, cols.size)
    keys = rng.random((n_resamples, n))
    chosen = np.argpartition(keys, m - 1, axis=1)[:, :m] if m < n else np.tile(np.arange(n), (n_resamples, 1))
    W = np.zeros((n_resamples, n))
    np.put_along_axis(W, chosen, 1.0, axis=1)
    return W


# ----------------------------------------------------------------------------------------------------------------
# Intervals


def percentile_recentred(estimate: float, boot: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Bootstrap percentile interval shifted so that its median falls on the estimate.

    [θ̂ + q_a(θ* − med θ*), θ̂ + q_{1−a}(θ* − med θ*)], a = (1 − level)/2. The shift removes the bootstrap's own
    bias (resampling with replacement duplicates units, which biases rank-like statistics of a resample); the
    median (not the mean) is the centre, so θ̂ always lies inside.
    """
    s = _clean(boot)
    if s.size < 2 or not np.isfinite(estimate):
        return _nan()
    a = (1 - level) / 2
    lo, med, hi = np.quantile(s, [a, 0.5, 1 - a])
    return _contain(estimate, estimate + lo - med, estimate + hi - med)


def jackknife_se(jack: np.ndarray) -> float:
    """Jackknife standard error from K delete-a-group values: √((K−1)/K Σ (θ_(k) − θ̄)²); NaN for K < 2."""
    j = _clean(jack)
    K = j.size
    if K < 2:
        return float("nan")
    return float(np.sqrt((K - 1) / K * np.sum((j - j.mean()) ** 2)))


def jackknife_t(estimate: float, jack: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """θ̂ ± t_{K−1, (1+level)/2} · se_J from the K delete-a-group jackknife values."""
    j = _clean(jack)
    se = jackknife_se(j)
    if not np.isfinite(se) or not np.isfinite(estimate):
        return _nan()
    half = float(_stats.t.ppf((1 + level) / 2, j.size - 1)) * se
    return float(estimate - half), float(estimate + half)


def acceleration(jack: np.ndarray) -> float:
    """BCa acceleration â = Σ d³ / (6 (Σ d²)^{3/2}), d = θ̄_(·) − θ_(k); 0 when the jackknife values agree."""
    j = _clean(jack)
    d = j.mean() - j if j.size else j
    den = float(np.sum(d * d)) ** 1.5
    return float(np.sum(d**3) / (6 * den)) if den > 0 else 0.0


def bca(estimate: float, boot: np.ndarray, jack: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Efron's BCa interval: percentiles of θ* at Φ(ẑ₀ + (ẑ₀ + z)/(1 − â(ẑ₀ + z))) for z = z_a, z_{1−a}.

    ẑ₀ = Φ⁻¹(share of θ* below θ̂, ties counted half), the share kept within [1/(2B), 1 − 1/(2B)] so that ẑ₀ stays
    finite; â from the jackknife (`acceleration`). When the bias correction moves both ends to one side of θ̂
    (ẑ₀ large: most resamples fall on one side), the interval is widened to reach θ̂.
    """
    s = _clean(boot)
    if s.size < 2 or not np.isfinite(estimate):
        return _nan()
    B = s.size
    share = (np.sum(s < estimate) + 0.5 * np.sum(s == estimate)) / B
    share = min(max(share, 1 / (2 * B)), 1 - 1 / (2 * B))
    nd = NormalDist()
    z0 = nd.inv_cdf(share)
    acc = acceleration(jack)
    qs = []
    for p in ((1 - level) / 2, (1 + level) / 2):
        z = z0 + nd.inv_cdf(p)
        den = 1 - acc * z
        adj = nd.cdf(z0 + z / den) if den > 0 else (1.0 if z > 0 else 0.0)
        qs.append(float(np.quantile(s, min(max(adj, 0.0), 1.0))))
    return _contain(estimate, qs[0], qs[1])


def subsampling(
    estimate: float, sub: np.ndarray, n: int, m: int | None = None, level: float = LEVEL
) -> tuple[float, float]:
    """Half-sampling interval: the spread of the statistic over subsets of m units (without replacement) about its
    median, scaled by √(m / (n − m)) and centred on θ̂ (m defaults to `subsample_size(n)`; the scale is 1 then,
    up to rounding). No unit is duplicated, so rank-like statistics are not biased by the resampling itself."""
    s = _clean(sub)
    m = subsample_size(n) if m is None else int(m)
    if s.size < 2 or not np.isfinite(estimate) or m >= n:
        return _nan()
    a = (1 - level) / 2
    lo, med, hi = np.quantile(s, [a, 0.5, 1 - a])
    scale = float(np.sqrt(m / (n - m)))
    return _contain(estimate, estimate + scale * (lo - med), estimate + scale * (hi - med))


def ceil_expectation(mu: float, sd: float, step: float = 1.0) -> float:
    """E[step · ⌈X / step⌉] for X ~ N(mu, sd²): the expectation of a whole-number statistic (in units of `step`)
    that is the ceiling of a normal one. Σ_j step · Φ((mu − j·step)/sd) summed over the grid, exact to ~1e-15
    (12 sd either side; below that every P is 1). sd = 0 (or not finite and positive): ⌈mu⌉ on the grid.
    Strictly increasing in mu when sd > 0; mu + step/2 on average over a step (a continuity shift)."""
    if not (np.isfinite(mu) and np.isfinite(sd)):
        return float("nan")
    if sd <= 0:
        return float(step * np.ceil(mu / step))
    x, s = mu / step, sd / step
    j0 = np.floor(x - 12 * s)
    j = np.arange(j0, np.ceil(x + 12 * s) + 1)  # P(⌈X⌉ > j) = P(X > j) = Φ((x − j)/s); E = j0 + Σ_{j ≥ j0} P(⌈X⌉ > j)
    return float(step * (j0 + np.sum(_stats.norm.cdf((x - j) / s))))


def jackknife_step(
    estimate: float, smooth: float, jack_smooth: np.ndarray, level: float = LEVEL, step: float = 1.0
) -> tuple[float, float]:
    """Interval for E[θ̂_n] of a whole-number statistic θ̂ = step · ⌈f̂ / step⌉ that is the ceiling of a continuous
    statistic f̂ (`smooth`), from the K delete-a-group jackknife values of f̂ (`jack_smooth`).

    f̂ ± t_{K−1} · se_J is the jackknife t interval of E[f̂]; if f̂ ~ N(μ, s²) then E[θ̂] = g(μ, s) =
    `ceil_expectation(μ, s, step)`, increasing in μ, so [g(f̂ − t·se_J, se_J), g(f̂ + t·se_J, se_J)] holds E[θ̂]
    whenever the t interval holds μ. Its ends are not whole numbers: E[θ̂] usually lies between two values θ̂ takes,
    and when f̂ sits near a step the interval reaches over it. Widened to hold θ̂ if needed (θ̂ always inside).
    """
    j = _clean(jack_smooth)
    se = jackknife_se(j)
    if not (np.isfinite(se) and np.isfinite(estimate) and np.isfinite(smooth)):
        return _nan()
    half = float(_stats.t.ppf((1 + level) / 2, j.size - 1)) * se
    lo, hi = ceil_expectation(smooth - half, se, step), ceil_expectation(smooth + half, se, step)
    return _contain(estimate, lo, hi)


def mean_interval(
    values: np.ndarray, level: float = LEVEL, axis: int = 0
) -> tuple[np.ndarray | float, np.ndarray | float, np.ndarray | float]:
    """Mean of `values` along `axis` with its t interval: (mean, low, high) = x̄ ∓ t_{n−1,(1+level)/2} · s/√n.

    NaN entries are ignored (n counts the finite ones); fewer than two finite values give NaN bounds. Scalars for a
    1-D input, arrays (the other axes) otherwise.
    """
    v = np.asarray(values, dtype=np.float64)
    n = np.sum(np.isfinite(v), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.nansum(v, axis=axis)
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        dev = np.where(np.isfinite(v), v - np.expand_dims(mean, axis), 0.0)
        var = np.sum(dev * dev, axis=axis) / np.maximum(n - 1, 1)
        t = _stats.t.ppf((1 + level) / 2, np.maximum(n - 1, 1))
        half = np.where(n >= 2, t * np.sqrt(var / np.maximum(n, 1)), np.nan)
    lo, hi = mean - half, mean + half
    if np.ndim(mean) == 0:
        return float(mean), float(lo), float(hi)
    return mean, lo, hi


def widen_for_step(lo: float, hi: float, step: float) -> tuple[float, float]:
    """The interval of a statistic that takes values on a grid of `step` (a count), widened by step/2 on each side:
    its expectation usually lies between two grid values, which an interval with grid-valued ends can miss even
    when the statistic barely varies (a continuity correction)."""
    return lo - step / 2, hi + step / 2


def clip_interval(lo: float, hi: float, bounds: tuple[float, float] | None) -> tuple[float, float]:
    """The interval clipped to the statistic's range `bounds` = (min, max) (None: unbounded; ±inf allowed)."""
    if bounds is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return lo, hi
    return float(np.clip(lo, *bounds)), float(np.clip(hi, *bounds))


def interval(
    method: str,
    estimate: float,
    samples: Mapping[str, np.ndarray],
    n: int,
    level: float = LEVEL,
    smooth: float | None = None,
    step: float | None = None,
) -> tuple[float, float]:
    """The interval of `method` (a key of METHODS) from the resampled values of the schemes it needs.

    samples: {"bootstrap" | "jackknife" | "subsample": values}; n: the number of units. "jackknife_step" takes the
    continuous statistic's estimate `smooth` and its jackknife values in samples["jackknife"], and the grid `step`;
    without them (a continuous statistic: f̂ = θ̂, no grid) it is `jackknife_t`."""
    if method == "percentile_recentred":
        return percentile_recentred(estimate, samples["bootstrap"], level)
    if method == "bca":
        return bca(estimate, samples["bootstrap"], samples["jackknife"], level)
    if method == "jackknife_t":
        return jackknife_t(estimate, samples["jackknife"], level)
    if method == "subsampling":
        return subsampling(estimate, samples["subsample"], n, level=level)
    if method == "jackknife_step":
        if smooth is None or step is None:
            return jackknife_t(estimate, samples["jackknife"], level)
        return jackknife_step(estimate, smooth, samples["jackknife"], level, step)
    raise ValueError(f"unknown interval method {method!r}; known: {', '.join(METHODS)}")
