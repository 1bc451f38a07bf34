"""core.present.chart_spec: one definition of each layer-metric chart's axis (reference, integer ticks, format), the
layer numbering, and the label placement — and the app's Altair charts built from it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.present import chart_spec
from core.present.chart_spec import METRIC_AXES
from core.steps.metrics import METRIC_NAMES


def test_one_axis_spec_per_metric():
    assert tuple(METRIC_AXES) == METRIC_NAMES
    assert METRIC_AXES["intrinsic_dim_95"].integer and METRIC_AXES["intrinsic_dim_95"].number_format == "d"
    assert {m for m, s in METRIC_AXES.items() if s.token_ceiling} == {
        "effective_rank",
        "participation_ratio",
        "intrinsic_dim_95",
    }
    for s in METRIC_AXES.values():  # never an exponent: "d" or fixed-point with an explicit precision
        assert "e" not in s.number_format and "g" not in s.number_format and "s" not in s.number_format


def test_axis_starts_at_zero_and_includes_the_ceiling():
    v = np.array([13.4, 14.0, 15.6])
    lo, hi = chart_spec.y_domain("effective_rank", v, token_bound=20)
    assert lo == 0.0 and hi >= 20.0  # 13.4 → 15.6 is drawn against zero and the ceiling T − 1 = 20
    zlo, zhi = chart_spec.y_domain("effective_rank", v, token_bound=20, zoom=True)
    assert 12.0 < zlo < 13.4 and 15.6 < zhi < 17.0
    assert chart_spec.visible_lines("effective_rank", 20, (zlo, zhi)) == []  # outside the zoomed range
    assert [r.label for r in chart_spec.reference_lines("effective_rank", 20)] == ["T − 1 = 20"]
    assert chart_spec.reference_lines("activation_entropy", 20) == []
    assert chart_spec.reference_lines("effective_rank", 0) == []  # one token: no ceiling to draw
    # a ceiling far above the data (512 tokens, rank ~20) is named, not drawn: it would flatten the curve
    lo, hi = chart_spec.y_domain("effective_rank", [18.0, 22.0], token_bound=511)
    assert lo == 0.0 and hi < 30
    assert chart_spec.ceiling_note("effective_rank", 511, (lo, hi)) == "T − 1 = 511, above the axis"
    assert chart_spec.ceiling_note("effective_rank", 20, chart_spec.y_domain("effective_rank", v, 20)) is None


def test_integer_metric_gets_whole_number_ends_and_cosine_spans_unit():
    lo, hi = chart_spec.y_domain("intrinsic_dim_95", [8, 9, 10], token_bound=12)
    assert lo == 0 and hi == int(hi) and hi >= 12
    zlo, zhi = chart_spec.y_domain("intrinsic_dim_95", [8, 9, 10], token_bound=12, zoom=True)
    assert zlo == int(zlo) and zhi == int(zhi) and zlo <= 8 and zhi >= 10
    lo, hi = chart_spec.y_domain("cosine_to_input", [1.0, 0.6, 0.3], token_bound=12)
    assert lo == 0.0 and hi >= 1.0
    lo, _ = chart_spec.y_domain("cosine_to_input", [1.0, -0.2], token_bound=12)
    assert lo < 0  # a negative cosine stays visible
    assert chart_spec.y_domain("effective_rank", [np.nan, np.nan], token_bound=3) is None


def test_layer_numbering():
    assert [chart_spec.block_number(i) for i in range(3)] == [1, 2, 3]
    assert chart_spec.block_index(chart_spec.block_number(4)) == 4
    assert chart_spec.layer_title(0, 6) == "Layer 0 of 6 (embeddings)"
    assert chart_spec.layer_title(6, 6) == "Layer 6 of 6"


def test_place_labels_never_overlap():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, size=(60, 2))
    widths = rng.uniform(10, 40, size=60)
    spots = chart_spec.place_labels(xy, widths, 9.0, bounds=(0, 0, 260, 260))
    boxes = [(x, y, x + w, y + 9.0) for s, w in zip(spots, widths) if s is not None for x, y in [s]]
    assert len(boxes) >= 20
    for i, a in enumerate(boxes):
        assert 0 <= a[0] and a[2] <= 260 and 0 <= a[1] and a[3] <= 260
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    # two far-apart points both get a label
    assert all(s is not None for s in chart_spec.place_labels(np.array([[10, 10], [150, 150]]), [30, 30], 9.0))


# -- the Altair charts read the spec ----------------------------------------------------------------------------
def _metric_df(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"layer": l, "metric": m, "value": v} for m, vs in values.items() for l, v in enumerate(vs)])


def _layers(chart) -> list[dict]:
    return chart.to_dict()["layer"]


def test_metric_line_starts_at_zero_with_the_labelled_ceiling():
    from app import charts

    df = _metric_df({"effective_rank": [13.4, 14.5, 15.6], "intrinsic_dim_95": [8, 9, 10]})
    c = charts.metric_line(df, "effective_rank", token_bound=20)
    spec = _layers(c)
    y = spec[0]["encoding"]["y"]
    assert y["scale"]["domain"][0] == 0 and y["scale"]["domain"][1] >= 20
    assert "e" not in y["axis"]["format"]
    texts = json.dumps(c.to_dict(), ensure_ascii=False)
    assert "T \u2212 1 = 20" in texts and "rule" in texts
    zoomed = json.dumps(
        charts.metric_line(df, "effective_rank", token_bound=20, zoom=True).to_dict(), ensure_ascii=False
    )
    assert '"rule"' not in zoomed and "T \u2212 1 = 20, above the axis" in zoomed  # named, not drawn
    integer = _layers(charts.metric_line(df, "intrinsic_dim_95", token_bound=12))[0]["encoding"]["y"]["axis"]
    assert integer["format"] == "d" and integer["tickMinStep"] == 1
    assert charts.metric_line(_metric_df({"effective_rank": [np.nan, np.nan]}), "effective_rank", 1) is None


@pytest.mark.parametrize("n", [13, 64, 96, 128])
def test_attention_heatmap_is_bounded(n):
    from app import charts
    from core.present import tables

    att = np.full((1, 1, n, n), 1.0 / n, dtype=np.float32)
    df = tables.attention_frame(att, [f"t{i}" for i in range(n)], 0, None)
    import altair as alt

    with alt.data_transformers.disable_max_rows():  # Streamlit sends the data itself; only to_dict() checks rows
        d = charts.attention_heatmap(df, "Layer 1").to_dict()
    assert d["width"] == d["height"] <= charts.MAX_HEATMAP_SIDE
    assert d["autosize"]["type"] == "pad"
    every_label = d["encoding"]["x"]["axis"]["labelOverlap"] is False
    assert every_label == (charts.MAX_HEATMAP_SIDE / n >= charts.LABEL_PX or 14 * n <= charts.MAX_HEATMAP_SIDE)
    assert every_label or "hover" in d["encoding"]["x"]["title"]


def test_per_token_bars_are_top_k():
    from app import charts

    df = pd.DataFrame(
        {"position": range(500), "token": [f"w{i}" for i in range(500)], "rollout": np.linspace(-1, 1, 500)}
    )
    top = charts.top_rows(df, "rollout")
    assert len(top) == charts.TOP_ROWS and list(top.position) == sorted(top.position)
    assert set(top.position) == set(range(10)) | set(range(490, 500))  # the largest |score| at both ends
    bars = charts.attribution_bars(top, "rollout").to_dict()
    assert bars["height"] == {"step": charts.BAR_PX} and bars["encoding"]["y"]["axis"]["labelOverlap"] is False
    low = charts.top_rows(df.rename(columns={"rollout": "entropy"}), "entropy", largest_abs=False)
    assert set(low.position) == set(range(20))


def test_logit_lens_grid_shows_a_window_of_positions(tiny_gpt2):
    """A long text's logit-lens grid is drawn LENS_COLUMNS positions at a time, chosen with a slider."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from app.layer_widgets import LENS_COLUMNS
    from core import analyze

    r = analyze(tiny_gpt2, " ".join(["The cat sat on the mat."] * 6), lens_full_grid=True, compute_gradients=False)
    assert r.n_tokens > LENS_COLUMNS
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app" / "main.py"), default_timeout=60)
    at.session_state["result"] = r
    at.run()
    at.switch_page("../pages/layer_analysis.py").run()
    assert not at.exception
    window = at.slider(key="lens_window")
    assert window.max == r.n_tokens - LENS_COLUMNS
    assert window.value == window.max  # the decoded position (the last token of a causal LM) is in view
    grid = next(c for c in at.get("vega_lite_chart") if "Logit lens: top token" in c.proto.spec)
    import io

    import pyarrow as pa

    frames = [pa.ipc.open_stream(io.BytesIO(d.data.data)).read_pandas() for d in grid.proto.datasets]
    assert {len(set(f["pi"])) for f in frames if "pi" in f} == {LENS_COLUMNS}
    window.set_value(0).run()
    assert not at.exception
