"""core.studies.geometry: TwoNN against scikit-dimension and known dimensions, duplicates, both anisotropies, linearity,
and the bootstrap over texts (its reuse of blocks reproduces the direct computation; intervals cover and narrow)."""

from __future__ import annotations

import numpy as np
import pytest

from core.steps import metrics
from core.studies import geometry as geo


def plane_in_50d(n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(50, 2)))
    return rng.uniform(-1, 1, size=(n, 2)) @ basis.T


def corpus(n_texts: int, per_text: int = 30, dim: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points of n_texts 'texts': an anisotropic Gaussian plus a per-text offset."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(3.0, 0.3, dim)
    X = rng.normal(size=(n_texts * per_text, dim)) * scale
    X += np.repeat(rng.normal(size=(n_texts, dim)) * 0.5, per_text, axis=0)
    return X, np.repeat(np.arange(n_texts), per_text)


# ----------------------------------------------------------------------------------------------------------------
# TwoNN


def test_twonn_plane_in_50d_is_two():
    r = geo.twonn_dimension(plane_in_50d())
    assert r.dimension == pytest.approx(2.0, abs=0.2)
    assert r.n_duplicates == 0 and r.n_points == 2000


def test_twonn_five_dimensional_gaussian_is_five():
    X = np.random.default_rng(1).normal(size=(2000, 5))
    assert geo.twonn_dimension(X).dimension == pytest.approx(5.0, abs=0.5)


@pytest.mark.parametrize(
    "make",
    [
        plane_in_50d,
        lambda: np.random.default_rng(2).normal(size=(1500, 5)),
        lambda: np.random.default_rng(3).normal(size=(800, 40)) ** 3,
    ],
)
def test_twonn_equals_scikit_dimension(make):
    skdim = pytest.importorskip("skdim")
    X = make()
    ref = skdim.id.TwoNN().fit(X).dimension_
    assert geo.twonn_dimension(X).dimension == pytest.approx(ref, rel=1e-7)


def test_twonn_fit_is_facco_on_known_mu():
    # μ = (1 − F)^(−1/d) exactly at F = i/N gives the line −ln(1 − F) = d ln μ: slope d
    d, N = 3.0, 1000
    F = np.arange(1, N + 1) / (N + 1)
    mu = (1 - F) ** (-1 / d)
    assert geo.twonn_fit(np.random.default_rng(0).permutation(mu)) == pytest.approx(d, rel=0.02)
    # integer weights count a point w times
    w = np.random.default_rng(1).integers(1, 4, size=50)
    m = np.random.default_rng(2).uniform(1, 3, size=50)
    assert geo.twonn_fit(m, w) == pytest.approx(geo.twonn_fit(np.repeat(m, w)))


def test_duplicates_are_removed_and_counted():
    X = np.random.default_rng(0).normal(size=(300, 4))
    Xd = np.concatenate([X, X[:40], X[:10]])
    r = geo.twonn_dimension(Xd)
    assert r.n_duplicates == 50 and r.n_points == 300
    assert r.dimension == pytest.approx(geo.twonn_dimension(X).dimension)
    assert np.isfinite(r.dimension)


def test_near_duplicates_from_float_round_off_are_removed_too():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6))
    noisy = X[:60] * (1 + 1e-7 * rng.normal(size=(60, 6)))  # the same states through another batch
    r = geo.twonn_dimension(np.concatenate([X, noisy]))
    assert r.n_duplicates == 60 and r.n_points == 400
    assert r.dimension == pytest.approx(geo.twonn_dimension(X).dimension)
    assert geo.twonn_dimension(np.concatenate([X, noisy]), rel_tol=0).dimension < 0.8 * r.dimension


# ----------------------------------------------------------------------------------------------------------------
# Anisotropy, spectra, linearity


def test_anisotropy_cosine_isotropic_is_zero_and_identical_is_one():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 64))
    g = np.repeat(np.arange(100), 20)
    assert abs(geo.anisotropy_cosine(X, g)) < 0.01
    v = rng.normal(size=64)
    assert geo.anisotropy_cosine(
        np.tile(v, (50, 1)) * rng.uniform(0.5, 2, size=(50, 1)), np.arange(50) % 5
    ) == pytest.approx(1.0)


def test_anisotropy_cosine_counts_only_pairs_from_different_texts():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 6))
    g = rng.integers(0, 4, size=30)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    C = U @ U.T
    mask = g[:, None] != g[None, :]
    assert geo.anisotropy_cosine(X, g) == pytest.approx(C[mask].mean())
    assert np.isnan(geo.anisotropy_cosine(X, np.zeros(30, dtype=int)))


def test_top_pc_and_spectral_metrics_match_core_metrics():
    rng = np.random.default_rng(0)
    for shape in ((200, 16), (10, 40)):  # N ≥ D and N < D
        X = rng.normal(size=shape) * np.linspace(4, 0.1, shape[1])
        lam, _ = geo.spectrum(X)
        m = geo.spectral_metrics(lam)
        assert m["effective_rank"] == pytest.approx(metrics.effective_rank(X))
        assert m["participation_ratio"] == pytest.approx(metrics.participation_ratio(X))
        assert m["intrinsic_dim_95"] == metrics.intrinsic_dim(X)
        cov = np.cov(X.T)
        ev = np.linalg.eigvalsh(cov)
        assert m["anisotropy_top_pc"] == pytest.approx(ev[-1] / ev.sum())
    iso = rng.normal(size=(20000, 8))
    assert geo.anisotropy_top_pc(iso) == pytest.approx(1 / 8, abs=0.01)


def test_linearity_of_a_linear_map_is_one_and_matches_lstsq():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 20))
    A = rng.normal(size=(20, 20))
    assert geo.linearity(X, X @ A) == pytest.approx(1.0, abs=1e-10)
    assert geo.linearity(X, X @ A + 3.0) == pytest.approx(1.0, abs=1e-10)  # centring
    Y = np.tanh(X @ A) + 0.3 * rng.normal(size=(500, 20))
    Xc = (X - X.mean(0)) / np.linalg.norm(X - X.mean(0))
    Yc = (Y - Y.mean(0)) / np.linalg.norm(Y - Y.mean(0))
    B = np.linalg.lstsq(Xc, Yc, rcond=None)[0]
    ref = 1 - np.linalg.norm(Xc @ B - Yc) ** 2  # LLM-Microscope's formula, literally
    assert geo.linearity(X, Y) == pytest.approx(ref, abs=1e-10)
    assert 0 < ref < 1


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap


def test_resampled_statistics_equal_direct_computation_on_the_resampled_points():
    """The block formulas give, for one resample, what the direct functions give on the drawn points."""
    X, g = corpus(12, per_text=15, dim=6, seed=4)
    Y = np.tanh(X @ np.random.default_rng(5).normal(size=(6, 6)))
    G = 12
    W = geo.resample_weights(G, 3, seed=7)
    ex = geo.layer_estimate(X, g, G, rank=6)
    ey = geo.layer_estimate(Y, g, G, rank=6)
    spec = geo.bootstrap_spectral(ex.blocks, W)
    cos = geo.bootstrap_cosine(ex.blocks, W)
    tw = geo.bootstrap_twonn(ex.blocks, X, W)
    lin = geo.bootstrap_linearity(ex.blocks, ey.blocks, W, geo.linearity(X, Y))
    for b, w in enumerate(W):
        # the resample as points: text g repeated w_g times, each copy a text of its own for the groups
        idx, grp = [], []
        for t in range(G):
            rows = np.flatnonzero(g == t)
            for _ in range(int(w[t])):
                idx.extend(rows)
                grp.extend([t] * rows.size)
        Xb, Yb, gb = X[idx], Y[idx], np.array(grp)
        lam, _ = geo.spectrum(Xb)
        direct = geo.spectral_metrics(lam)
        for k in geo.SPECTRAL:
            assert spec[k][b] == pytest.approx(direct[k], rel=1e-9), k
        assert cos[b] == pytest.approx(geo.anisotropy_cosine(Xb, gb), rel=1e-9)  # copies of a text: same text
        assert lin[b] == pytest.approx(geo.linearity(Xb, Yb), rel=1e-9)
        # TwoNN: distinct drawn points, each μ weighted by its text's count
        present = np.flatnonzero(w[g] > 0)
        _, dist = geo._neighbours(X[present], 2)
        assert tw[b] == pytest.approx(geo.twonn_fit(dist[:, 1] / dist[:, 0], w[g][present]), rel=1e-9)


def test_truncated_basis_reproduces_the_estimate_at_unit_weights():
    X, g = corpus(20, per_text=10, dim=30, seed=1)
    e = geo.layer_estimate(X, g, 20, rank=5)  # rank 30 > 5: tail model in use
    spec = geo.bootstrap_spectral(e.blocks, np.ones((1, 20)))
    for k in geo.SPECTRAL:
        assert spec[k][0] == pytest.approx(e.values[k], rel=1e-9), k


def test_intervals_contain_the_estimate_and_narrow_with_more_texts():
    widths = {}
    for n_texts in (15, 120):
        X, g = corpus(n_texts, per_text=20, dim=10, seed=n_texts)
        Y = np.tanh(X * 0.4) @ np.random.default_rng(0).normal(size=(10, 10))
        pg = geo.pooled_geometry(np.stack([X, Y]), g, n_texts, n_resamples=200, seed=0)
        for m in geo.POOLED_METRICS:
            layers = [1] if m == "linearity" else [0, 1]
            for layer in layers:
                est, lo, hi = pg.estimate[m][layer], pg.ci_low[m][layer], pg.ci_high[m][layer]
                assert lo <= est <= hi, (m, n_texts, lo, est, hi)  # the estimate inside, always
                assert geo.BOUNDS[m][0] <= lo and hi <= geo.BOUNDS[m][1], (m, lo, hi)
        widths[n_texts] = {m: pg.ci_high[m][1] - pg.ci_low[m][1] for m in geo.POOLED_METRICS}
    for m in geo.POOLED_METRICS:
        assert widths[120][m] < widths[15][m], m


def test_one_text_or_no_resamples_gives_no_interval():
    X, g = corpus(1, per_text=40, dim=5)
    pg = geo.pooled_geometry(X[None], g, 1, n_resamples=200)
    assert np.isnan(pg.ci_low["effective_rank"][0]) and np.isfinite(pg.estimate["effective_rank"][0])
    assert np.isnan(pg.estimate["anisotropy_cosine"][0])
    X, g = corpus(5, per_text=10, dim=5)
    pg = geo.pooled_geometry(X[None], g, 5, n_resamples=0)
    assert np.isnan(pg.ci_high["twonn_dimension"][0])


@pytest.mark.parametrize("method", ["percentile_recentred", "subsampling"])
def test_random_resampling_is_seeded(method):
    X, g = corpus(10, per_text=10, dim=5)
    methods = dict.fromkeys(geo.POOLED_METRICS, method)
    a = geo.pooled_geometry(X[None], g, 10, n_resamples=50, seed=3, methods=methods)
    b = geo.pooled_geometry(X[None], g, 10, n_resamples=50, seed=3, methods=methods)
    c = geo.pooled_geometry(X[None], g, 10, n_resamples=50, seed=4, methods=methods)
    assert a.ci_low["effective_rank"][0] == b.ci_low["effective_rank"][0]
    assert a.ci_low["effective_rank"][0] != c.ci_low["effective_rank"][0]


def test_large_corpus_path_without_per_text_blocks_gives_the_same_numbers(monkeypatch):
    """Past BLOCK_BYTES (e.g. 10 000 texts) a resample's scatter is formed from the points: same numbers."""
    X, g = corpus(30, per_text=8, dim=7, seed=2)
    Y = np.tanh(X) + 0.1 * X
    W = geo.resample_weights(30, 4, seed=1)
    ref_x, ref_y = geo.layer_estimate(X, g, 30, rank=4), geo.layer_estimate(Y, g, 30, rank=4)
    ref = geo.bootstrap_spectral(ref_x.blocks, W), geo.bootstrap_linearity(ref_x.blocks, ref_y.blocks, W, 0.5)
    monkeypatch.setattr(geo, "BLOCK_BYTES", 0)
    ex, ey = geo.layer_estimate(X, g, 30, rank=4), geo.layer_estimate(Y, g, 30, rank=4)
    assert ex.blocks.blocks is None
    got = geo.bootstrap_spectral(ex.blocks, W), geo.bootstrap_linearity(ex.blocks, ey.blocks, W, 0.5)
    for k in geo.SPECTRAL:
        np.testing.assert_allclose(got[0][k], ref[0][k], rtol=1e-10)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-10)


def test_jackknife_intervals_equal_delete_one_text_recomputed_from_the_points():
    """The wiring of pooled_geometry: with the jackknife t method, each interval is intervals.jackknife_t over the
    metric recomputed directly on the points of all texts but one."""
    from core.studies import intervals as iv

    X, g = corpus(8, per_text=12, dim=5, seed=9)
    methods = {**dict.fromkeys(geo.POOLED_METRICS, "jackknife_t"), "intrinsic_dim_95": "jackknife_step"}
    pg = geo.pooled_geometry(X[None], g, 8, n_resamples=50, methods=methods, rank=5)
    assert pg.methods["effective_rank"] == "jackknife_t"
    for m in ("effective_rank", "participation_ratio", "anisotropy_top_pc", "anisotropy_cosine"):
        jack = []
        for t in range(8):
            keep = g != t
            gk = np.unique(g[keep], return_inverse=True)[1]
            Xk = X[keep]
            jack.append(
                geo.anisotropy_cosine(Xk, gk)
                if m == "anisotropy_cosine"
                else geo.spectral_metrics(geo.spectrum(Xk)[0])[m]
            )
        lo, hi = iv.clip_interval(*iv.jackknife_t(pg.estimate[m][0], np.array(jack)), geo.BOUNDS[m])
        assert (pg.ci_low[m][0], pg.ci_high[m][0]) == pytest.approx((lo, hi), rel=1e-9), m
    # d95: the jackknife of its interpolated companion, recomputed on the points, mapped by jackknife_step
    jack = [geo.intrinsic_dim_smooth(geo.spectrum(X[g != t])[0]) for t in range(8)]
    f = geo.intrinsic_dim_smooth(geo.spectrum(X)[0])
    assert np.ceil(f) == pg.estimate["intrinsic_dim_95"][0]
    lo, hi = iv.jackknife_step(pg.estimate["intrinsic_dim_95"][0], f, np.array(jack))
    lo, hi = iv.clip_interval(lo, hi, geo.BOUNDS["intrinsic_dim_95"])
    assert (pg.ci_low["intrinsic_dim_95"][0], pg.ci_high["intrinsic_dim_95"][0]) == pytest.approx((lo, hi), rel=1e-9)


def test_interpolated_d95_is_continuous_and_its_ceiling_is_d95():
    """f = (k − 1) + (0.95 − c_{k−1}) / (c_k − c_{k−1}): a hand case, ⌈f⌉ = d95 on random spectra, and no jump as a
    spectrum is moved continuously across several whole-number steps of d95."""
    lam = np.array([5.0, 3.0, 1.0, 0.6, 0.4])  # c = 0.5, 0.8, 0.9, 0.96, 1: d95 = 4, f = 3 + 0.05 / 0.06
    assert geo.spectral_metrics(lam)["intrinsic_dim_95"] == 4
    assert geo.intrinsic_dim_smooth(lam) == pytest.approx(3 + 0.05 / 0.06, rel=1e-12)
    rng = np.random.default_rng(4)
    lams = -np.sort(-(rng.exponential(size=(500, 12)) ** 3), axis=1)
    f = geo.intrinsic_dim_smooth(lams)
    np.testing.assert_array_equal(np.ceil(f), geo.spectral_metrics(lams)["intrinsic_dim_95"])
    assert np.all(f > 0)
    decays = np.linspace(0.3, 0.9, 6001)  # λ_j = decay^j: d95 runs from 3 to 12 over these
    path = geo.intrinsic_dim_smooth(decays[:, None] ** np.arange(12)[None, :])
    k = geo.spectral_metrics(decays[:, None] ** np.arange(12)[None, :])["intrinsic_dim_95"]
    assert k[0] < k[-1] - 5 and np.all(np.abs(np.diff(path)) < 0.02)
    assert np.isnan(geo.intrinsic_dim_smooth(np.zeros(4)))


def test_a_scheme_resamples_only_the_metrics_that_need_it():
    X, g = corpus(6, per_text=10, dim=4, seed=3)
    res = geo.pooled_resamples(X[None], g, 6, schemes={"subsample": frozenset({"intrinsic_dim_95"})}, n_resamples=9)
    assert np.isfinite(res.samples["subsample"]["intrinsic_dim_95"]).all()
    assert np.isnan(res.samples["subsample"]["twonn_dimension"]).all()
    assert res.samples["subsample"]["intrinsic_dim_95"].shape == (1, 9)


# ----------------------------------------------------------------------------------------------------------------
# A large corpus: resampling runs on the texts that own pooled points only, with the same numbers


@pytest.mark.parametrize("scheme", ["bootstrap", "jackknife", "subsample"])
def test_weights_of_some_columns_are_those_columns_of_the_full_weights(monkeypatch, scheme):
    from core.studies import intervals

    cols = np.array([0, 3, 4, 17, 49])
    full = geo.scheme_weights(scheme, 50, 23, seed=5)
    monkeypatch.setattr(intervals, "WEIGHT_CHUNK", 120)  # rows drawn two at a time: the stream must not change
    np.testing.assert_array_equal(geo.scheme_weights(scheme, 50, 23, seed=5, columns=cols), full[:, cols])


def test_texts_without_pooled_points_change_no_resampled_value(monkeypatch):
    rng = np.random.default_rng(3)
    G = 40
    groups = np.sort(rng.choice(np.arange(0, G, 3), size=70))  # texts 1, 2, 4, 5, … own no point
    layers = rng.standard_normal((3, groups.size, 6))
    kw = {"schemes": ("bootstrap", "jackknife", "subsample"), "n_resamples": 25, "seed": 1, "rank": 4}
    assert geo.present_groups(groups, G) is not None
    fast = geo.pooled_resamples(layers, groups, G, **kw)
    monkeypatch.setattr(geo, "present_groups", lambda g, n: None)  # every text's column, as before
    slow = geo.pooled_resamples(layers, groups, G, **kw)
    assert fast.n_groups == slow.n_groups == G
    for m in geo.POOLED_METRICS:
        np.testing.assert_allclose(fast.estimate[m], slow.estimate[m], rtol=1e-10, atol=1e-12, equal_nan=True)
        for s in kw["schemes"]:
            np.testing.assert_allclose(fast.samples[s][m], slow.samples[s][m], rtol=1e-9, atol=1e-12, equal_nan=True)
