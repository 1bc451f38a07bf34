"""Coverage simulation of the corpus intervals: synthetic texts from a population whose metrics are known.

A `Population` plants what the pooled metrics measure. Its fixed parts (drawn once from `Population.seed`): an
orthonormal basis A [D, d] of a d-dimensional latent subspace (the planted intrinsic dimension d), a planted spectrum
s_k = decay^k inside it, a common offset of length `offset` along a direction outside it (the planted anisotropy),
and a linear map M [D, D] to a second layer. A text g of T_g tokens (T_g uniform in `tokens`) is

    c_g = offset · u₀ + spread · A z_g,           z_g ~ N(0, I_d)                 (the text's own mean)
    x_i = c_g + A (s ⊙ ζ_i) + noise · ε_i,         ζ_i ~ N(0, I_d), ε_i ~ N(0, I_D)  (layer 0)
    y_i = x_i M + map_noise · ε'_i                                                (layer 1: a linear map + noise)

so tokens of one text share their text's mean (they are not independent: intervals must resample texts).

The target of every interval is the estimand of core.studies.intervals: E[θ̂_n], the estimator's expectation on a
corpus of n texts. `targets` estimates it by averaging the estimator over many independent corpora (no resampling,
so this is cheap); `coverage` then draws other corpora, computes every method's interval on each and counts how
often it holds the target. bench/bench_intervals.py runs the full table (≥ 500 corpora at 10, 30 and 100 texts);
tests/test_intervals.py a smaller one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.studies import geometry, intervals

#: the interval methods compared: the candidates and the plain percentile interval used before (baseline);
#: "jackknife_step" is jackknife_t on every metric but the whole-number d95 (core.studies.geometry.STEP)
COMPARED = ("percentile", "percentile_recentred", "bca", "jackknife_t", "subsampling", "jackknife_step")
#: (metric, layer) pairs scored: every metric at layer 0 and 1 (linearity at layer 1 only)
TARGETS = tuple((m, layer) for m in geometry.POOLED_METRICS for layer in (0, 1) if (m, layer) != ("linearity", 0))


@dataclass(frozen=True)
class Population:
    """The synthetic source of texts (see the module docstring). All fields are plain numbers."""

    dim: int = 64
    latent: int = 16
    decay: float = 0.85
    spread: float = 0.8
    offset: float = 2.0
    noise: float = 0.15
    map_noise: float = 0.6
    tokens: tuple[int, int] = (4, 12)
    seed: int = 0

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(A [D, d], s [d], u₀ [D], M [D, D]) drawn from `seed`."""
        rng = np.random.default_rng(self.seed)
        Q, _ = np.linalg.qr(rng.normal(size=(self.dim, self.latent + 1)))
        A, u0 = Q[:, : self.latent], Q[:, self.latent]
        s = self.decay ** np.arange(self.latent)
        M = rng.normal(size=(self.dim, self.dim)) / np.sqrt(self.dim)
        return A, s, u0, M

    def corpus(self, n_texts: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One corpus of n_texts texts: (layers float64 [2, N, D], groups int [N])."""
        A, s, u0, M = self.parts()
        lens = rng.integers(self.tokens[0], self.tokens[1] + 1, size=n_texts)
        groups = np.repeat(np.arange(n_texts), lens)
        N = groups.size
        centres = self.offset * u0 + self.spread * rng.normal(size=(n_texts, self.latent)) @ A.T
        X = (
            centres[groups]
            + (rng.normal(size=(N, self.latent)) * s) @ A.T
            + self.noise * rng.normal(size=(N, self.dim))
        )
        Y = X @ M + self.map_noise * rng.normal(size=(N, self.dim))
        return np.stack([X, Y]), groups


def estimates(layers: np.ndarray, groups: np.ndarray, n_texts: int) -> dict[tuple[str, int], float]:
    """The pooled metrics of one corpus (no resampling): {(metric, layer): value} for TARGETS."""
    res = geometry.pooled_resamples(layers, groups, n_texts, schemes=(), n_resamples=0, rank=layers.shape[2])
    return {(m, layer): float(res.estimate[m][layer]) for m, layer in TARGETS}


def targets(pop: Population, n_texts: int, n_corpora: int, seed: int) -> dict[tuple[str, int], float]:
    """E[θ̂_n] for every (metric, layer), as the mean of the estimator over n_corpora independent corpora."""
    rng = np.random.default_rng(seed)
    vals: dict[tuple[str, int], list[float]] = {t: [] for t in TARGETS}
    for _ in range(n_corpora):
        layers, groups = pop.corpus(n_texts, rng)
        for t, v in estimates(layers, groups, n_texts).items():
            vals[t].append(v)
    return {t: float(np.mean(v)) for t, v in vals.items()}


def method_intervals(res: geometry.PooledResamples, method: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(low, high) of one method for every metric and layer; "percentile" is the plain percentile interval."""
    if method != "percentile":
        return geometry.intervals_from(res, dict.fromkeys(geometry.POOLED_METRICS, method))
    boot = res.samples["bootstrap"]
    lo = {m: np.full(res.n_points.shape[0], np.nan) for m in geometry.POOLED_METRICS}
    hi = {m: np.full(res.n_points.shape[0], np.nan) for m in geometry.POOLED_METRICS}
    for m in geometry.POOLED_METRICS:
        for layer in range(res.n_points.shape[0]):
            s = boot[m][layer]
            s = s[np.isfinite(s)]
            if s.size >= 2:
                lo[m][layer], hi[m][layer] = np.quantile(s, [0.025, 0.975])
    return lo, hi


@dataclass
class Coverage:
    """Coverage of every compared method: hits[method][(metric, layer)] counts corpora whose interval held the
    target; width[method][(metric, layer)] the mean width; contains_estimate[method] counts intervals (all metrics,
    layers, corpora) that held their own estimate, out of n_intervals; out_of_bounds[method] those that left the
    metric's BOUNDS. Only the metrics a run scored count (see `coverage`)."""

    n_texts: int
    n_corpora: int
    target: dict[tuple[str, int], float]
    hits: dict[str, dict[tuple[str, int], int]] = field(default_factory=dict)
    width: dict[str, dict[tuple[str, int], float]] = field(default_factory=dict)
    contains_estimate: dict[str, int] = field(default_factory=dict)
    out_of_bounds: dict[str, int] = field(default_factory=dict)
    n_intervals: int = 0

    def rate(self, method: str, metric: str) -> float:
        """Coverage of one metric (its layers pooled)."""
        keys = [t for t in TARGETS if t[0] == metric]
        return sum(self.hits[method][t] for t in keys) / (len(keys) * self.n_corpora)

    def mean_width(self, method: str, metric: str) -> float:
        keys = [t for t in TARGETS if t[0] == metric]
        return float(np.mean([self.width[method][t] for t in keys]))


def coverage(
    pop: Population,
    n_texts: int,
    n_corpora: int,
    *,
    n_resamples: int = 200,
    n_truth: int = 2000,
    seed: int = 0,
    methods: tuple[str, ...] = COMPARED,
    metrics: tuple[str, ...] = geometry.POOLED_METRICS,
) -> Coverage:
    """Draw n_corpora corpora of n_texts texts, compute every method's 95 % interval on each (every scheme
    `n_resamples` rows) and count how often each holds the target E[θ̂_n] (from n_truth other corpora). Only the
    `metrics` named are resampled and scored (the others count as misses: read `rate` for those named)."""
    target = targets(pop, n_texts, n_truth, seed + 10_007)
    cov = Coverage(n_texts, n_corpora, target)
    cov.hits = {m: dict.fromkeys(TARGETS, 0) for m in methods}
    sums = {m: dict.fromkeys(TARGETS, 0.0) for m in methods}
    cov.contains_estimate = dict.fromkeys(methods, 0)
    cov.out_of_bounds = dict.fromkeys(methods, 0)
    needed = frozenset(metrics)
    scored = [t for t in TARGETS if t[0] in needed]
    schemes: dict[str, frozenset[str] | None] = {
        s: needed for m in methods for s in intervals.METHODS.get(m, ("bootstrap",))
    }
    rng = np.random.default_rng(seed)
    for c in range(n_corpora):
        layers, groups = pop.corpus(n_texts, rng)
        res = geometry.pooled_resamples(
            layers, groups, n_texts, schemes=schemes, n_resamples=n_resamples, seed=seed + c, rank=layers.shape[2]
        )
        for meth in methods:
            lo, hi = method_intervals(res, meth)
            for m, layer in scored:
                a, b, e = lo[m][layer], hi[m][layer], res.estimate[m][layer]
                cov.hits[meth][(m, layer)] += int(a <= target[(m, layer)] <= b)
                sums[meth][(m, layer)] += b - a
                cov.contains_estimate[meth] += int(a <= e <= b)
                lb, ub = geometry.BOUNDS[m]
                cov.out_of_bounds[meth] += int(a < lb or b > ub)
    cov.n_intervals = n_corpora * len(scored)
    cov.width = {meth: {t: sums[meth][t] / n_corpora for t in TARGETS} for meth in methods}
    return cov
