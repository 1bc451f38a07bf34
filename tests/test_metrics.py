"""Layer metrics against analytic cases and an independent plain-SVD reference."""

import numpy as np
import pytest

from core.steps import metrics as M


def _svd_reference(H):
    """Independent computation of the three spectral metrics with a plain SVD of the centred matrix."""
    Hc = H - H.mean(0, keepdims=True)
    s = np.linalg.svd(Hc, compute_uv=False)
    s = s[s > s.max() * 1e-10]
    p = s / s.sum()
    erank = np.exp(-(p * np.log(p)).sum())
    lam = s**2 / (H.shape[0] - 1)  # covariance eigenvalues
    pr = lam.sum() ** 2 / (lam**2).sum()
    frac = np.cumsum(lam) / lam.sum()
    idim = int(np.argmax(frac >= 0.95) + 1)
    return erank, pr, idim


@pytest.mark.parametrize("shape", [(12, 40), (40, 12), (30, 30), (5, 300)])
def test_fast_spectral_path_equals_plain_svd(shape):
    rng = np.random.default_rng(0)
    H = rng.normal(size=shape) @ np.diag(rng.uniform(0.1, 3, size=shape[1]))
    er, pr, idim = _svd_reference(H)
    assert M.effective_rank(H) == pytest.approx(er, rel=1e-9)
    assert M.participation_ratio(H) == pytest.approx(pr, rel=1e-9)
    assert M.intrinsic_dim(H) == idim
    s = np.linalg.svd(H - H.mean(0), compute_uv=False)
    np.testing.assert_allclose(np.sqrt(M.squared_singular_values(H)), s, rtol=1e-7, atol=1e-9)


def test_rank_one_data_gives_one():
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(20, 1)), rng.normal(size=(1, 64))
    H = u @ v + 5.0  # rank 1 after centring (the offset is removed by centring)
    assert M.effective_rank(H) == pytest.approx(1.0, abs=1e-9)
    assert M.participation_ratio(H) == pytest.approx(1.0, abs=1e-9)
    assert M.intrinsic_dim(H) == 1


def test_isotropic_data_is_near_the_width():
    rng = np.random.default_rng(2)
    D = 16
    H = rng.normal(size=(20000, D))
    assert M.effective_rank(H) == pytest.approx(D, rel=0.01)
    assert M.participation_ratio(H) == pytest.approx(D, rel=0.01)
    assert M.intrinsic_dim(H) in (D - 1, D)  # 95 % of an isotropic spectrum needs ~0.95·D, rounded up


def test_exactly_isotropic_simplex():
    # T = D + 1 points of a regular simplex: centred covariance is exactly isotropic in D dims.
    D = 8
    H = np.vstack([np.eye(D + 1)])  # D+1 points in D+1 dims; centred they span D dims equally
    assert M.effective_rank(H) == pytest.approx(D, rel=1e-9)
    assert M.participation_ratio(H) == pytest.approx(D, rel=1e-9)
    assert M.intrinsic_dim(H) == int(np.ceil(0.95 * D))


def test_cosine_of_a_layer_with_itself_is_one():
    rng = np.random.default_rng(3)
    H = rng.normal(size=(9, 32))
    assert M.cosine_to_input(H, H) == pytest.approx(1.0, abs=1e-12)
    assert M.cosine_to_input(-H, H) == pytest.approx(-1.0, abs=1e-12)


def test_activation_entropy_analytic():
    D = 10
    uniform = np.ones((4, D)) * np.array([[1], [-2], [3], [0.5]])  # |h| uniform within each token
    assert M.activation_entropy(uniform) == pytest.approx(np.log(D))
    one_hot = np.zeros((3, D))
    one_hot[np.arange(3), [0, 4, 9]] = [1.0, -7.0, 2.0]
    assert M.activation_entropy(one_hot) == pytest.approx(0.0, abs=1e-12)
    half = np.zeros((1, D))
    half[0, :2] = [3.0, -3.0]
    assert M.activation_entropy(half) == pytest.approx(np.log(2))


def test_batched_layer_metrics_equal_per_layer_registry():
    rng = np.random.default_rng(4)
    hidden = rng.normal(size=(4, 11, 24))
    keep = np.array([False] + [True] * 9 + [False])
    out = M.layer_metrics(hidden, keep)
    assert tuple(out) == M.METRIC_NAMES
    Hk = hidden[:, keep]
    per_layer = {
        "effective_rank": lambda H, H0: M.effective_rank(H),
        "participation_ratio": lambda H, H0: M.participation_ratio(H),
        "intrinsic_dim_95": lambda H, H0: M.intrinsic_dim(H),
        "activation_entropy": lambda H, H0: M.activation_entropy(H),
        "cosine_to_input": M.cosine_to_input,
    }
    assert set(per_layer) == set(M.METRIC_NAMES)
    for name, fn in per_layer.items():
        expected = [fn(Hk[l], Hk[0]) for l in range(hidden.shape[0])]
        np.testing.assert_allclose(out[name], expected, rtol=1e-10, err_msg=name)
    assert out["cosine_to_input"][0] == pytest.approx(1.0)


def test_layers_side_by_side_equal_the_one_by_one_loop(monkeypatch):
    """Mid-sized layers (T × D between PARALLEL_MIN_ELEMENTS and PARALLEL_MAX_ELEMENTS) are computed two at a time
    in threads; every number equals the one-by-one loop's exactly, with and without kept rows."""
    import threading

    from core.infra.threads import single_threaded

    rng = np.random.default_rng(9)
    hidden = (rng.normal(size=(5, 70, 600)) * np.linspace(0.1, 2.0, 600)).astype(np.float32)
    keep = np.arange(70) % 7 != 3  # 60 of 70 rows
    assert M.PARALLEL_MIN_ELEMENTS <= 60 * 600 and 70 * 600 <= M.PARALLEL_MAX_ELEMENTS
    threads: list[str] = []
    real = M.squared_singular_values

    def spy(H):
        threads.append(threading.current_thread().name)
        return real(H)

    monkeypatch.setattr(M, "squared_singular_values", spy)

    def both():
        with single_threaded():
            return [M.layer_metrics(hidden), M.layer_metrics(hidden, keep)]

    side = both()
    assert len(threads) == 10 and all(name.startswith("layer-metrics") for name in threads)
    monkeypatch.setattr(M, "PARALLEL_LAYERS", 1)
    threads.clear()
    one = both()
    assert len(threads) == 10 and not any(name.startswith("layer-metrics") for name in threads)
    for a, b in zip(side, one, strict=True):
        for name in M.METRIC_NAMES:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_effective_rank_never_exceeds_tokens_minus_one():
    rng = np.random.default_rng(5)
    H = rng.normal(size=(6, 500))
    assert M.effective_rank(H) <= 5 + 1e-9
    assert M.intrinsic_dim(H) <= 5


def test_degenerate_inputs_give_nan_not_errors():
    H = np.ones((5, 8))  # all tokens equal: nothing left after centring
    assert np.isnan(M.effective_rank(H))
    assert np.isnan(M.participation_ratio(H))
    out = M.layer_metrics(np.ones((2, 3, 4)), keep=np.zeros(3, bool))
    assert all(np.isnan(v).all() for v in out.values())
