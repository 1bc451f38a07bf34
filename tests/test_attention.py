"""Attention analyses: analytic entropy/distance cases, planted heads → roles and clusters, tiny cases, and the
step on tiny models (offline) with the section surviving the result round trip."""

from __future__ import annotations

import numpy as np
import pytest

from core.steps.attention import (
    FEATURE_NAMES,
    ROLE_THRESHOLDS,
    AttentionSection,
    analyse_attention,
    attention_entropy,
    cluster_heads,
    head_features,
    head_roles,
    mean_attention_distance,
    pca_2d,
    row_entropy,
    visible_keys,
)


def causal_uniform(T: int) -> np.ndarray:
    A = np.tril(np.ones((T, T)))
    return A / A.sum(1, keepdims=True)


def previous_token(T: int) -> np.ndarray:
    A = np.zeros((T, T))
    A[0, 0] = 1
    A[np.arange(1, T), np.arange(T - 1)] = 1
    return A


def first_token(T: int) -> np.ndarray:
    A = np.zeros((T, T))
    A[:, 0] = 1
    return A


def noisy(A: np.ndarray, rng: np.random.Generator, eps: float = 0.02) -> np.ndarray:
    """Mix in a little random attention over the keys A's rows may see (keeps the causal structure)."""
    vis = np.tril(np.ones_like(A))
    R = rng.random(A.shape) * vis
    R /= R.sum(1, keepdims=True)
    return (1 - eps) * A + eps * R


# -- entropy ------------------------------------------------------------------------------------------------------


def test_uniform_attention_has_entropy_ln_n():
    T = 7
    A = np.full((T, T), 1 / T)
    ent, norm = attention_entropy(A)
    assert ent == pytest.approx(np.log(T), rel=1e-6)
    assert norm == pytest.approx(1.0, rel=1e-6)


def test_one_hot_attention_has_zero_entropy():
    T = 6
    ent, norm = attention_entropy(np.eye(T), causal=False)
    assert ent == pytest.approx(0.0, abs=1e-9)
    assert norm == pytest.approx(0.0, abs=1e-9)
    assert np.all(row_entropy(np.eye(T)) == 0.0)


def test_causal_uniform_rows_are_ln_of_visible_keys_and_normalise_to_one():
    T = 9
    A = causal_uniform(T)
    np.testing.assert_allclose(row_entropy(A), np.log(np.arange(1, T + 1)), rtol=1e-6, atol=1e-7)
    ent, norm = attention_entropy(A)  # visibility detected from the structural zeros
    assert ent == pytest.approx(np.log(np.arange(1, T + 1)).mean(), rel=1e-6)
    assert norm == pytest.approx(1.0, rel=1e-6)  # row 0 (one key) is left out of the normalised mean
    assert attention_entropy(A, causal=True)[1] == pytest.approx(1.0, rel=1e-6)


def test_visible_keys_from_structure_or_flag():
    T = 5
    np.testing.assert_array_equal(visible_keys(causal_uniform(T)[None, None]), np.arange(1, T + 1))
    np.testing.assert_array_equal(visible_keys(np.full((T, T), 1 / T)), np.full(T, T))
    np.testing.assert_array_equal(visible_keys(np.eye(T), causal=True), np.arange(1, T + 1))
    np.testing.assert_array_equal(visible_keys(np.eye(T), causal=False), np.full(T, T))


def test_entropy_is_batched_over_layers_and_heads():
    T = 5
    att = np.stack([np.stack([causal_uniform(T), previous_token(T)]), np.stack([first_token(T), np.eye(T)])])
    ent, norm = attention_entropy(att)
    assert ent.shape == norm.shape == (2, 2)
    assert ent[0, 0] == pytest.approx(np.log(np.arange(1, T + 1)).mean(), rel=1e-6)
    assert ent[0, 1] == ent[1, 0] == ent[1, 1] == pytest.approx(0.0, abs=1e-9)


def test_entropy_rejects_bad_shapes():
    with pytest.raises(ValueError):
        attention_entropy(np.ones((3, 4)))


def test_mean_attention_distance_analytic():
    T = 8
    assert mean_attention_distance(previous_token(T)) == pytest.approx((T - 1) / T)
    assert mean_attention_distance(np.eye(T)) == 0.0
    # first-token head: row i attends to 0 at distance i → mean (T-1)/2
    assert mean_attention_distance(first_token(T)) == pytest.approx((T - 1) / 2)


# -- features, roles, clusters ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted():
    """4 layers × 3 heads, each head one of four planted types (with a little noise), seeded."""
    rng = np.random.default_rng(0)
    T = 16
    kinds = ["previous", "uniform", "self", "first"] * 3
    make = {"previous": previous_token, "uniform": causal_uniform, "self": lambda t: np.eye(t), "first": first_token}
    heads = [noisy(make[k](T), rng) for k in kinds]
    att = np.stack(heads).reshape(4, 3, T, T).astype(np.float32)
    return att, kinds


def test_planted_heads_get_the_right_roles(planted):
    att, kinds = planted
    res = analyse_attention(att, causal=True)
    expected = {"previous": "previous-token", "uniform": "broad", "self": "self", "first": "first-token/sink"}
    assert res.roles == [expected[k] for k in kinds]
    assert res.role_thresholds == ROLE_THRESHOLDS


def test_planted_heads_fall_into_separate_clusters(planted):
    att, kinds = planted
    res = analyse_attention(att, causal=True)
    assert res.n_clusters == 4  # chosen by silhouette
    assert res.silhouette is not None and res.silhouette > 0.5
    by_kind = {k: {int(c) for c, kk in zip(res.clusters, kinds) if kk == k} for k in set(kinds)}
    assert all(len(v) == 1 for v in by_kind.values())  # one cluster per kind
    assert len({next(iter(v)) for v in by_kind.values()}) == 4  # and different kinds never share one
    assert res.clusters[0] == 0  # clusters numbered by first appearance


def test_user_set_cluster_count(planted):
    att, _ = planted
    res = analyse_attention(att, causal=True, n_clusters=2)
    assert res.n_clusters == 2 and set(res.clusters.tolist()) == {0, 1}
    assert "set by the user" in res.cluster_method


def test_feature_values_on_planted_heads(planted):
    att, kinds = planted
    feats, names, extras = head_features(att, causal=True)
    assert names == list(FEATURE_NAMES)
    assert feats.shape == (12, len(FEATURE_NAMES))
    col = {n: feats[:, i] for i, n in enumerate(names)}
    for i, k in enumerate(kinds):
        if k == "previous":
            assert col["previous_token"][i] > 0.95
        if k == "self":
            assert col["self"][i] > 0.95
        if k == "first":
            assert col["first_token"][i] > 0.95
        if k == "uniform":
            assert col["normalized_entropy"][i] > 0.95
        assert col["next_token"][i] == 0.0  # causal heads cannot see the next token
    np.testing.assert_array_equal(extras["n_visible"], np.arange(1, 17))


def test_special_token_attention_counts_as_sink():
    T = 6
    A = np.zeros((T, T))
    A[:, T - 1] = 1.0  # everything on a trailing [SEP]
    special = [True] + [False] * (T - 2) + [True]
    feats, names, _ = head_features(A[None, None], special, causal=False)
    assert feats[0, names.index("special_tokens")] == pytest.approx(1.0)
    assert head_roles(feats, names) == ["first-token/sink"]


def test_tiny_cases_one_cluster():
    # fewer than 3 heads
    labels, k, sil, method = cluster_heads(np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert k == 1 and sil is None and labels.tolist() == [0, 0] and "fewer than 3" in method
    # all heads identical
    labels, k, sil, method = cluster_heads(np.ones((5, 3)))
    assert k == 1 and sil is None and labels.tolist() == [0] * 5
    # a user-set k larger than the distinct heads is capped
    X = np.array([[0.0], [0.0], [1.0], [1.0], [1.0]])
    labels, k, _, method = cluster_heads(X, n_clusters=4)
    assert k == 2 and "capped" in method and labels.tolist() == [0, 0, 1, 1, 1]
    # one layer, one head, one token
    res = analyse_attention(np.ones((1, 1, 1, 1), dtype=np.float32))
    assert res.n_clusters == 1 and len(res.roles) == 1 and np.isnan(res.normalized_entropy[0, 0])
    assert res.entropy[0, 0] == 0.0 and res.projection.tolist() == [[0.0, 0.0]]


def test_pca_projection_is_deterministic_and_centred():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 5))
    P1, P2 = pca_2d(X), pca_2d(X.copy())
    np.testing.assert_array_equal(P1, P2)
    assert P1.shape == (20, 2)
    np.testing.assert_allclose(P1.mean(0), 0, atol=1e-12)
    # the first component carries the largest variance (equals the top singular value squared / N)
    s = np.linalg.svd(X - X.mean(0), compute_uv=False)
    assert P1[:, 0].var() == pytest.approx(s[0] ** 2 / 20)
    assert pca_2d(np.ones((4, 3))).tolist() == [[0.0, 0.0]] * 4


# -- the step on tiny models --------------------------------------------------------------------------------------


def test_step_on_tiny_models(tiny_any):
    from core.analysis.pipeline import analyze
    from core.analysis.result import AnalysisResult, results_equal

    res = analyze(tiny_any, "The cat sat on the mat.", compute_gradients=False)
    att = res.attention
    assert isinstance(att, AttentionSection)
    L, H = res.n_layers, res.n_heads
    assert att.entropy.shape == att.normalized_entropy.shape == att.mean_distance.shape == (L, H)
    assert att.features.shape == (L * H, len(att.feature_names))
    assert att.clusters.shape == (L * H,) and att.projection.shape == (L * H, 2) and len(att.roles) == L * H
    assert np.all(att.entropy >= 0) and np.all(att.entropy <= np.log(res.n_tokens) + 1e-5)
    assert np.all((att.normalized_entropy >= 0) & (att.normalized_entropy <= 1 + 1e-5))
    if res.family == "causal_lm":
        np.testing.assert_array_equal(att.n_visible, np.arange(1, res.n_tokens + 1))
    back = AnalysisResult.from_bytes(res.to_bytes())
    assert results_equal(back.attention, att)
    assert "Attention analysis" in res.timings


def test_single_threaded_restores_limits_under_concurrent_use():
    import threading

    from threadpoolctl import threadpool_info

    import core.infra.threads as A

    before = [i["num_threads"] for i in threadpool_info()]

    # a long-lived thread (the app's job runner) limits first and stays alive: threadpoolctl 3.8 would then ignore
    # every other thread's OpenBLAS limits unless control is handed back (a full CI run failed here)
    entered, finish = threading.Event(), threading.Event()

    def runner():
        with A.single_threaded():
            pass
        entered.set()
        finish.wait(30)

    keeper = threading.Thread(target=runner)
    keeper.start()
    try:
        assert entered.wait(30)
        for _ in range(2):
            with A.single_threaded():
                assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
            assert [i["num_threads"] for i in threadpool_info()] == before
    finally:
        finish.set()
        keeper.join()

    def work():
        for _ in range(10):
            with A.single_threaded():
                with A.single_threaded():
                    np.ones((20, 20)) @ np.ones((20, 20))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert A._ST_STATE == {"depth": 0, "limiter": None}
    assert [i["num_threads"] for i in threadpool_info()] == before
