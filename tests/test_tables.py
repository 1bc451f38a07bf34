"""core/present/tables.py: the tables behind the app's charts, against hand computations; and the Altair builders."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import result_with_metrics

from core.present import tables
from core.present.summaries import metric_correlations
from core.steps.logit_lens import LensSection
from core.steps.metrics import METRIC_NAMES
from core.steps.predictions import PredictionSection

RES = result_with_metrics(
    {
        "effective_rank": [4.0, 3.0, 2.0, 1.0],
        "participation_ratio": [1.0, 2.0, 3.0, 4.0],
        "intrinsic_dim_95": [5.0, 5.0, 5.0, 5.0],  # constant
        "activation_entropy": [1.0, 4.0, 9.0, 16.0],  # monotone, not linear
        "cosine_to_input": [1.0, 0.5, np.nan, 0.2],
    }
)


def test_metrics_long_shape():
    df = tables.metrics_long(RES)
    assert len(df) == len(METRIC_NAMES) * 4 and set(df.columns) == {"layer", "metric", "value"}


def test_normalised_metrics_hand_values():
    df = tables.normalised_metrics(RES)
    er = df[df.metric == "effective_rank"].normalised.to_numpy()
    np.testing.assert_allclose(er, [1, 2 / 3, 1 / 3, 0])
    assert np.all(df[df.metric == "intrinsic_dim_95"].normalised == 0.5)  # constant → 0.5
    cos = df[df.metric == "cosine_to_input"].normalised.to_numpy()
    assert np.isnan(cos[2]) and cos[0] == 1.0 and cos[3] == 0.0


def test_correlations_match_pandas_on_the_page_table():
    """core.present.summaries.metric_correlations (what the page and the PDF show) against pandas' own .corr."""
    from core.present.summaries import metric_correlations

    frame = RES.metrics_frame().set_index("layer")[list(METRIC_NAMES)]
    for method in ("pearson", "spearman"):
        ours = metric_correlations(RES, method)
        ref = frame.corr(method=method).to_numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-12, equal_nan=True)
    long = tables.correlations_long(metric_correlations(RES, "spearman"))
    pair = long[(long.row == "participation_ratio") & (long.column == "activation_entropy")].r.item()
    assert pair == pytest.approx(1.0)  # monotone, not linear


def test_correlations_long_from_array():
    M = len(METRIC_NAMES)
    df = tables.correlations_long(np.eye(M))
    assert len(df) == M * M and df.r.sum() == M and set(df.row) == set(METRIC_NAMES)


def test_attention_frame_mean_over_heads():
    rng = np.random.default_rng(0)
    A = rng.random((2, 3, 4, 4))
    A /= A.sum(-1, keepdims=True)
    tokens = ["a", "b", "a", "c"]
    df = tables.attention_frame(A, tokens, 1, None)
    M = df.pivot(index="qi", columns="ki", values="weight").to_numpy()
    np.testing.assert_allclose(M, A[1].mean(0))
    df2 = tables.attention_frame(A, tokens, 0, 2)
    np.testing.assert_allclose(df2.pivot(index="qi", columns="ki", values="weight").to_numpy(), A[0, 2])
    assert df["query"].nunique() == 4  # repeated tokens get distinct labels


def test_layer_head_frame():
    V = np.arange(6.0).reshape(2, 3)
    df = tables.layer_head_frame(V, "entropy", {"d": V * 2})
    row = df[(df["layer"] == 1) & (df["head"] == 2)].iloc[0]
    assert row.entropy == 5.0 and row.d == 10.0


def test_shaded_tokens_escape_and_sign():
    html_out = tables.shaded_tokens_html(["<script>", "ok", "&"], [1.0, -0.5, 0.0], target=0)
    assert "<script>" not in html_out and "&lt;script&gt;" in html_out and "&amp;" in html_out
    assert "rgba(220,60,40,1.000)" in html_out and "rgba(40,90,220,0.500)" in html_out
    assert "outline" in html_out


def test_shaded_tokens_all_zero_or_nan():
    out = tables.shaded_tokens_html(["a", "b"], [0.0, np.nan])
    assert out.count("0.000") == 2


def test_predictions_and_lens_tables():
    pred = PredictionSection(
        kind="next_token",
        positions=[3],
        candidates=[
            [{"token": "x", "token_id": 1, "probability": 0.7}, {"token": "y", "token_id": 2, "probability": 0.2}]
        ],
    )
    t = tables.predictions_table(pred)
    assert list(t["rank"]) == [1, 2] and t.probability.iloc[0] == 0.7
    lens = LensSection(
        layers=np.arange(3),
        top_tokens=[["a", "b"]] * 3,
        top_ids=np.zeros((3, 2), dtype=np.int64),
        top_probs=np.full((3, 2), 0.4),
        final_token="a",
        final_token_id=0,
        final_prob=np.array([0.1, 0.2, 0.4]),
        entropy=np.ones(3),
        grid_tokens=[["a", "b"]] * 3,
        grid_probs=np.full((3, 2), 0.5),
        grid_ids=np.zeros((3, 2), dtype=np.int64),
        position=1,
    )
    tab = tables.logit_lens_table(lens)
    assert len(tab) == 3 and tab["P(a)"].iloc[-1] == 0.4
    grid = tables.logit_lens_grid_frame(lens, ["t0", "t1"])
    assert len(grid) == 6 and set(grid.top_token) == {"a", "b"}


def test_chart_builders_make_valid_specs():
    from app import charts

    df = tables.metrics_long(RES)
    for m in METRIC_NAMES:
        assert charts.metric_line(df, m, token_bound=RES.n_tokens - 1).to_dict()["layer"]
    assert charts.correlation_heatmap(tables.correlations_long(metric_correlations(RES)), "pearson").to_dict()
    assert charts.normalised_heatmap(tables.normalised_metrics(RES)).to_dict()
    A = np.full((1, 1, 3, 3), 1 / 3)
    spec = charts.attention_heatmap(tables.attention_frame(A, ["a", "b", "c"], 0, None), "t").to_dict()
    assert spec["mark"]["type"] == "rect" and any(t["field"] == "weight" for t in spec["encoding"]["tooltip"])


def test_readable_token():
    assert tables.readable_token("Ġthe") == "␣the" and tables.readable_token("▁Paris") == "␣Paris"
    assert tables.readable_token(" the") == "␣the"  # decoded text reads like the raw token
    assert tables.readable_token("Ċ") == "↵" and tables.readable_token("\t") == "⇥"
    # whitespace-only and empty tokens are never a blank cell
    assert tables.readable_token(" ") == "␣" and tables.readable_token("  ") == "␣␣"
    assert tables.readable_token("") == "∅" and tables.readable_token(None) == "∅"
    assert tables.readable_token("a\u202eb") == "a⟨U+202E⟩b"  # a bidi override cannot reorder the cell
    # two different partial UTF-8 characters (core.model.tokens.token_text) stay different
    assert tables.readable_token("<0xE2>") != tables.readable_token("<0xC3>")


def test_logit_lens_grid_window():
    lens = LensSection(
        position=0,
        layers=np.arange(2),
        top_tokens=[["a"]] * 2,
        top_ids=np.zeros((2, 1), np.int64),
        top_probs=np.full((2, 1), 0.5),
        final_token="a",
        final_token_id=0,
        final_prob=np.ones(2),
        entropy=np.ones(2),
        grid_tokens=[["a", "", "c"]] * 2,
        grid_probs=np.array([[0.5, np.nan, 0.2]] * 2),
        grid_ids=np.zeros((2, 3), np.int64),
        grid_positions=[0],
    )
    df = tables.logit_lens_grid_frame(lens, ["x", "y", "z"])
    assert list(df.pi) == [0, 0] and list(df.layer) == [0, 1]


def test_attention_frame_window():
    A = np.arange(2 * 1 * 5 * 5, dtype=float).reshape(2, 1, 5, 5)
    df = tables.attention_frame(A, list("abcde"), 1, 0, window=(1, 3))
    assert len(df) == 4 and set(df.qi) == {1, 2} and set(df.ki) == {1, 2}
    assert df[(df.qi == 2) & (df.ki == 1)].weight.iloc[0] == A[1, 0, 2, 1]
    assert df["query"].iloc[0] == "1: b"
