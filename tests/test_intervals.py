"""core.studies.intervals against analytic cases, and the corpus intervals by simulation against a known target
(core.studies.interval_sim): the chosen methods cover, the old plain percentile interval does not, the estimate lies
inside every interval, bounded metrics stay in bounds, and intervals narrow as the corpus grows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from core.studies import geometry as geo
from core.studies import interval_sim as sim
from core.studies import intervals as iv

# ----------------------------------------------------------------------------------------------------------------
# Weights


def test_bootstrap_weights_are_counts_of_n_draws():
    W = iv.bootstrap_weights(7, 50, seed=3)
    assert W.shape == (50, 7) and np.all(W.sum(1) == 7) and np.all(W == np.rint(W))
    np.testing.assert_array_equal(W, iv.bootstrap_weights(7, 50, seed=3))


def test_jackknife_weights_delete_one_group_each():
    W = iv.jackknife_weights(5, 100, seed=0)
    np.testing.assert_array_equal(W, 1 - np.eye(5))  # K = n: delete-one
    W = iv.jackknife_weights(23, 5, seed=1)
    assert W.shape == (5, 23)
    deleted = 1 - W
    np.testing.assert_array_equal(deleted.sum(0), np.ones(23))  # every unit deleted exactly once
    assert set(deleted.sum(1)) <= {4.0, 5.0}  # groups differ in size by at most one


def test_subsample_weights_hold_half_the_units_without_replacement():
    W = iv.subsample_weights(9, 40, seed=2)
    assert W.shape == (40, 9) and set(np.unique(W)) <= {0.0, 1.0}
    assert iv.subsample_size(9) == 4 and np.all(W.sum(1) == 4)
    assert iv.subsample_size(1) == 1


# ----------------------------------------------------------------------------------------------------------------
# Methods on analytic cases


def test_mean_interval_is_the_t_interval():
    x = np.array([1.0, 2.0, 4.0, 7.0, 11.0])
    mean, lo, hi = iv.mean_interval(x)
    ref = stats.t.interval(0.95, df=4, loc=x.mean(), scale=stats.sem(x))
    assert mean == pytest.approx(5.0) and (lo, hi) == pytest.approx(ref)
    # along an axis, NaN ignored per column
    X = np.stack([x, x * 2, np.r_[x[:4], np.nan]], axis=1)
    m, lo2, hi2 = iv.mean_interval(X, axis=0)
    assert m.shape == (3,) and m[1] == pytest.approx(10.0) and m[2] == pytest.approx(x[:4].mean())
    assert hi2[2] - lo2[2] == pytest.approx(2 * stats.t.ppf(0.975, 3) * stats.sem(x[:4]))
    assert np.isnan(iv.mean_interval(np.array([3.0]))[1])


def test_jackknife_t_of_a_mean_is_the_t_interval():
    """For the mean the delete-one jackknife standard error equals s/√n exactly."""
    x = np.random.default_rng(0).normal(size=12)
    jack = np.array([np.delete(x, i).mean() for i in range(12)])
    assert iv.jackknife_se(jack) == pytest.approx(stats.sem(x))
    lo, hi = iv.jackknife_t(x.mean(), jack)
    assert (lo, hi) == pytest.approx(stats.t.interval(0.95, df=11, loc=x.mean(), scale=stats.sem(x)))


def test_subsampling_of_a_mean_has_the_right_spread():
    """Half-samples of a mean vary as σ²(1/m − 1/n); scaled by √(m/(n−m)) that is the spread of the full mean."""
    x = np.random.default_rng(1).normal(size=40)
    W = iv.subsample_weights(40, 4000, seed=0)
    sub = (W @ x) / W.sum(1)
    lo, hi = iv.subsampling(x.mean(), sub, 40)
    assert (hi - lo) / 2 == pytest.approx(1.96 * x.std() / np.sqrt(40), rel=0.08)


def test_percentile_recentred_moves_the_bootstrap_median_onto_the_estimate():
    boot = np.linspace(0, 10, 1001) + 100.0  # median 105
    lo, hi = iv.percentile_recentred(2.0, boot)
    assert lo == pytest.approx(2.0 - 4.75) and hi == pytest.approx(2.0 + 4.75)


def test_bca_without_bias_or_acceleration_is_the_percentile_interval():
    rng = np.random.default_rng(2)
    boot = rng.normal(size=20001)
    boot = np.r_[boot, -boot]  # symmetric about 0: ẑ₀ = 0
    jack = np.r_[np.ones(5), -np.ones(5)]  # symmetric: â = 0
    lo, hi = iv.bca(0.0, boot, jack)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])), abs=1e-9)
    assert iv.acceleration(jack) == 0.0
    # skewed jackknife values give the textbook acceleration
    j = np.array([0.0, 0.0, 0.0, 3.0])
    d = j.mean() - j
    assert iv.acceleration(j) == pytest.approx(np.sum(d**3) / (6 * np.sum(d**2) ** 1.5))


def test_every_method_keeps_the_estimate_inside_even_when_all_resamples_fall_on_one_side():
    rng = np.random.default_rng(3)
    for _ in range(200):
        est = rng.normal()
        boot = est + rng.normal(size=50) * rng.uniform(0.01, 2) + rng.normal() * 3  # any shift, any spread
        jack = est + rng.normal(size=10) * 0.1 + rng.normal()
        samples = {"bootstrap": boot, "jackknife": jack, "subsample": boot}
        for method in iv.METHODS:
            lo, hi = iv.interval(method, est, samples, 10)
            assert lo <= est <= hi, method
        whole = float(np.ceil(est))  # a whole-number statistic whose continuous companion is est
        lo, hi = iv.interval("jackknife_step", whole, samples, 10, smooth=est, step=1.0)
        assert lo <= whole <= hi
    lo, hi = iv.bca(5.0, np.linspace(0, 1, 100), np.linspace(0, 1, 8))  # every resample below: widened to 5
    assert hi == 5.0 and lo < 1.0


def test_too_few_values_give_no_interval_and_bounds_clip():
    assert all(np.isnan(iv.percentile_recentred(1.0, np.array([np.nan, 2.0]))))
    assert all(np.isnan(iv.jackknife_t(1.0, np.array([1.0]))))
    assert all(np.isnan(iv.subsampling(1.0, np.array([1.0, 2.0]), n=1)))
    assert iv.clip_interval(-0.2, 1.3, (0.0, 1.0)) == (0.0, 1.0)
    assert iv.clip_interval(-0.2, 1.3, None) == (-0.2, 1.3)
    with pytest.raises(ValueError, match="unknown interval method"):
        iv.interval("nope", 0.0, {}, 3)


# ----------------------------------------------------------------------------------------------------------------
# A whole-number statistic (d95): the jackknife of its continuous companion, mapped to the expected whole number


def test_ceil_expectation_is_the_mean_of_the_ceiling_of_a_normal():
    """Analytic cases (⌈X⌉ of a point mass; X centred on a whole number is above it half the time; X spread over
    many steps is ⌈·⌉ = X + ½ on average) and a Monte Carlo check of E⌈N(μ, s²)⌉ and of a non-unit grid."""
    assert iv.ceil_expectation(2.3, 0.0) == 3.0 and iv.ceil_expectation(2.0, 0.0) == 2.0
    assert iv.ceil_expectation(3.0, 0.2) == pytest.approx(3.5, abs=1e-12)
    assert iv.ceil_expectation(7.3, 3.0) == pytest.approx(7.8, abs=1e-9)
    rng = np.random.default_rng(0)
    for mu, sd in ((2.2, 0.3), (0.4, 0.7), (-3.4, 1.3)):
        x = rng.normal(mu, sd, 400_000)
        assert iv.ceil_expectation(mu, sd) == pytest.approx(np.ceil(x).mean(), abs=0.006), (mu, sd)
        assert iv.ceil_expectation(mu, sd, step=0.5) == pytest.approx((0.5 * np.ceil(x / 0.5)).mean(), abs=0.004)
    mus = np.linspace(1.0, 3.0, 41)
    assert np.all(np.diff([iv.ceil_expectation(m, 0.2) for m in mus]) > 0)  # increasing in μ
    assert np.isnan(iv.ceil_expectation(np.nan, 0.1))


def test_jackknife_step_covers_the_expected_ceiling_of_a_mean_where_half_a_step_does_not():
    """Known truth: θ̂ = ⌈x̄⌉ of n = 100 draws from N(μ, 1), so x̄ ~ N(μ, 0.01) exactly and E[θ̂] =
    ceil_expectation(μ, 0.1). At μ = 3.1, θ̂ takes only the values 3 and 4 (4 in 84 % of data sets) and E[θ̂] =
    3.84: the jackknife of x̄ mapped through E⌈·⌉ holds it in ~95 % of 800 data sets (sd 0.8 %); θ̂ ± ½ (the
    half-step widening of an interval that does not move, used for d95 before) holds it only when θ̂ = 4, in ~84 %.
    At μ = 3.0 (θ̂ is 3 or 4 equally often, E[θ̂] = 3.5) as well. (Where θ̂ never varies, E[θ̂] = θ̂ is always held.)"""
    rng = np.random.default_rng(11)
    n, S = 100, 800
    for mu in (3.1, 3.0):
        target = iv.ceil_expectation(mu, 1 / np.sqrt(n))
        X = rng.normal(mu, 1.0, size=(S, n))
        f = X.mean(1)
        jack = (n * f[:, None] - X) / (n - 1)  # the delete-one means
        hits = half = 0
        for i in range(S):
            est = float(np.ceil(f[i]))
            lo, hi = iv.jackknife_step(est, f[i], jack[i])
            assert lo <= est <= hi and lo < hi
            hits += lo <= target <= hi
            half += est - 0.5 <= target <= est + 0.5
        assert 0.925 <= hits / S <= 0.975, (mu, hits / S)
        if mu == 3.1:
            assert half / S < 0.87, half / S


def test_jackknife_step_without_a_grid_is_the_jackknife_t_interval():
    jack = np.array([1.0, 1.2, 0.9, 1.1, 1.05])
    assert iv.interval("jackknife_step", 1.0, {"jackknife": jack}, 5) == iv.jackknife_t(1.0, jack)
    assert np.isnan(iv.jackknife_step(2.0, 1.5, np.array([1.5]))[0])


# ----------------------------------------------------------------------------------------------------------------
# The corpus intervals by simulation (a small, honest version of bench/bench_intervals.py)

# 3 to 8 tokens per text in 24 dimensions: 20 texts give about 110 points, the regime where duplicated texts bias a
# bootstrap resample's spectrum (as 50 short sentences do in MiniLM's 384 dimensions); d95 moves in whole steps here
SMALL = sim.Population(dim=24, latent=10, decay=0.9, tokens=(3, 8), seed=2)


@pytest.fixture(scope="module")
def small_coverage() -> sim.Coverage:
    chosen = tuple(dict.fromkeys(["percentile", *geo.INTERVAL_METHOD.values()]))
    return sim.coverage(SMALL, 20, 120, n_resamples=60, n_truth=400, seed=5, methods=chosen)


@pytest.mark.slow
def test_chosen_methods_cover_the_target_and_the_plain_percentile_interval_does_not(small_coverage):
    """120 corpora of 20 texts (sd of a 95 % coverage estimate ≈ 2 % per layer): the chosen method of every metric
    covers E[θ̂_n] in 86–100 % of corpora; the plain percentile interval misses the effective rank (its
    resamples duplicate texts, which removes directions), so this test fails for the method used before."""
    cov = small_coverage
    for m, method in geo.INTERVAL_METHOD.items():
        assert 0.86 <= cov.rate(method, m) <= 1.0, (m, method, cov.rate(method, m))
    assert cov.rate("percentile", "effective_rank") < 0.6


@pytest.mark.slow
def test_estimate_inside_and_bounds_kept_in_every_simulated_interval(small_coverage):
    cov = small_coverage
    for method in set(geo.INTERVAL_METHOD.values()):
        assert cov.contains_estimate[method] == cov.n_intervals, method
        assert cov.out_of_bounds[method] == 0, method


def test_intervals_narrow_as_the_corpus_grows():
    """Mean width over corpora, for every metric and layer, at 10, 30 and 90 texts."""
    rng = np.random.default_rng(7)
    widths: dict[int, dict[tuple[str, int], float]] = {}
    for n in (10, 30, 90):
        acc = dict.fromkeys(sim.TARGETS, 0.0)
        for c in range(6):
            layers, groups = SMALL.corpus(n, rng)
            pg = geo.pooled_geometry(layers, groups, n, n_resamples=80, seed=c, rank=SMALL.dim)
            for m, layer in sim.TARGETS:
                acc[(m, layer)] += (pg.ci_high[m][layer] - pg.ci_low[m][layer]) / 6
        widths[n] = acc
    for t in sim.TARGETS:
        assert widths[90][t] < widths[30][t] < widths[10][t], (t, [widths[n][t] for n in (10, 30, 90)])
