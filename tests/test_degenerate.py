"""Degenerate inputs on the pages: a chart with nothing to show says why in one line instead of an empty frame, and
the correlation caption names the real reason (missing values vs constant). AppTest with real results of tiny
models; the charts' own data is decoded to prove that no chart element is drawn empty."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from core.present import chart_spec

ROOT = Path(__file__).resolve().parents[1]
MAIN = str(ROOT / "app" / "main.py")
LAYERS = "../pages/layer_analysis.py"
SPECTRAL = ("effective_rank", "participation_ratio", "intrinsic_dim_95")


@pytest.fixture(scope="module")
def one_token(tiny_encoder):
    """A one-word text with special tokens excluded: one token enters the layer metrics."""
    from core import analyze

    r = analyze(tiny_encoder, "cat", exclude_special_tokens=True, ig_steps=4)
    assert r.n_tokens == 3 and sum(not s for s in r.special_mask) == 1  # [CLS] cat [SEP]
    return r


def run_page(result, page: str | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state["result"] = result
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def chart_frames(at):
    """The data of every Vega-Lite chart on the page, as lists of pandas DataFrames (one per dataset)."""
    import pyarrow as pa

    out = []
    for c in at.get("vega_lite_chart"):
        frames = []
        for ds in c.proto.datasets:
            with pa.ipc.open_stream(io.BytesIO(ds.data.data)) as reader:
                frames.append(reader.read_pandas())
        if c.proto.data.data:
            with pa.ipc.open_stream(io.BytesIO(c.proto.data.data)) as reader:
                frames.append(reader.read_pandas())
        out.append(frames)
    return out


def has_finite_value(frames) -> bool:
    for df in frames:
        num = df.select_dtypes("number")
        if len(num) and np.isfinite(num.to_numpy(dtype=float)).any():
            return True
    return False


def test_one_token_overall_says_why_instead_of_empty_charts(one_token):
    at = run_page(one_token)
    frames = chart_frames(at)
    assert frames, "the page draws the charts that have data"
    empty = [i for i, f in enumerate(frames) if not has_finite_value(f)]
    assert not empty, f"chart(s) {empty} drawn without a single finite value"
    infos = [i.value for i in at.info]
    nothing = [t for t in infos if t.startswith("Nothing to draw")]
    assert len(nothing) == len(SPECTRAL), infos  # one line per spectral metric, instead of three blank frames
    assert all("only 1 token" in t and "at least 2 tokens" in t for t in nothing), nothing
    # the two metrics that exist for one token are still drawn: 2 metric lines + correlation + normalised heatmap
    assert len(frames) == 4
    captions = " ".join(c.value for c in at.caption)
    assert "missing values" in captions and "constant" not in captions.split("Empty cells:")[1].split("—")[0]
    assert "layer metrics over 1 of 3 tokens (special tokens left out)" in captions


def test_one_token_layer_analysis_has_no_empty_chart(one_token):
    at = run_page(one_token, LAYERS)
    frames = chart_frames(at)
    assert frames
    assert all(has_finite_value(f) for f in frames)


def test_correlation_caption_names_constant_metric(results_gpt2):
    """A metric constant over the layers is called constant, not missing."""
    r = results_gpt2
    metrics = dict(r.layer_metrics)
    metrics["activation_entropy"] = np.full_like(metrics["activation_entropy"], 2.5)
    at = run_page(r.replace(layer_metrics=metrics, cache_key="constant-metric"))
    captions = [c.value for c in at.caption if c.value.startswith("Empty cells:")]
    assert len(captions) == 1, [c.value for c in at.caption]
    assert "Activation entropy is constant over the layers" in captions[0]
    assert "missing" not in captions[0]


def test_all_metrics_missing_is_one_message(results_gpt2):
    r = results_gpt2
    metrics = {k: np.full_like(v, np.nan) for k, v in r.layer_metrics.items()}
    at = run_page(r.replace(layer_metrics=metrics, cache_key="no-metrics"))
    assert chart_frames(at) == [], "no chart without data"
    infos = [i.value for i in at.info]
    assert sum(t.startswith("Nothing to draw") for t in infos) == 5 + 1  # five metrics + the normalised heatmap
    assert any(t.startswith("No pair of metrics has a correlation") for t in infos)


@pytest.fixture(scope="module")
def results_gpt2(tiny_gpt2):
    from core import analyze

    return analyze(tiny_gpt2, "The cat sat on the mat.", ig_steps=4)


def test_empty_reason_and_gap_reason_units():
    nan = np.full(4, np.nan)
    assert chart_spec.empty_reason("effective_rank", [1.0, nan[0]], 5, False) is None
    assert "only 1 token" in chart_spec.empty_reason("effective_rank", nan, 1, True)
    assert "special tokens left out" in chart_spec.empty_reason("effective_rank", nan, 1, True)
    assert "no token" in chart_spec.empty_reason("cosine_to_input", nan, 0, False)
    assert "undefined at every layer" in chart_spec.empty_reason("cosine_to_input", nan, 4, False)
    assert chart_spec.correlation_gap_reason(nan) == "missing values"
    assert chart_spec.correlation_gap_reason([1.0, np.nan, np.nan]) == "missing values"
    assert chart_spec.correlation_gap_reason([2.0, 2.0, 2.0]) == "constant"
    assert chart_spec.correlation_gap_reason([1.0, 2.0]) is None
