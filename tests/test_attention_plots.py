"""Figures and animations of the attention/attribution part, and its bundle members (exact CSV headers)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from core.figures import animations
from core.figures import attention as ap
from core.figures.plotting import token_label
from core.infra.options import ExportOptions

PNG = b"\x89PNG\r\n\x1a\n"
TEXT = "The cat sat on the mat. It cost $5 and the dog\nsat on the log."


@pytest.fixture(scope="session")
def gpt2_result(tiny_gpt2):
    from core.analysis.pipeline import analyze

    return analyze(tiny_gpt2, TEXT, ig_steps=8, integrated_gradients=True)


@pytest.fixture(scope="session")
def bert_result(tiny_bert):
    from core.analysis.pipeline import analyze

    return analyze(tiny_bert, "The cat sat on the [MASK].", ig_steps=8, integrated_gradients=True)


def _frames(gif: bytes) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(io.BytesIO(gif), index=None, extension=".gif")


def test_png_figures(gpt2_result, bert_result):
    for res in (gpt2_result, bert_result):
        for png in (
            ap.entropy_heatmap(res),
            ap.entropy_heatmap(res, normalized=True),
            ap.head_clusters_plot(res),
            ap.token_attribution_plot(res),
            ap.head_attribution_heatmap(res),
            ap.mean_attention_heatmap(res),
            ap.mean_attention_heatmap(res, 0),
            ap.single_head_plot(res, 1, 2),
        ):
            assert png.startswith(PNG) and len(png) > 1000


def test_figures_close_their_figures(gpt2_result):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    ap.token_attribution_plot(gpt2_result)
    animations.attention_layers_gif(gpt2_result)
    assert len(plt.get_fignums()) == before


def test_missing_section_is_a_clear_error(gpt2_result):
    with pytest.raises(ValueError, match="attention analysis"):
        ap.entropy_heatmap(gpt2_result.replace(attention=None))


def test_single_head_stats(gpt2_result):
    res = gpt2_result
    s = ap.single_head_stats(res, 1, 3, top=5)
    A = res.attentions[1, 3]
    weights = [p["weight"] for p in s["top_pairs"]]
    assert len(weights) == 5 and weights == sorted(weights, reverse=True)
    assert weights[0] == pytest.approx(float(A.max()))
    p = s["top_pairs"][0]
    assert A[p["query"], p["key"]] == pytest.approx(p["weight"])
    assert p["query_token"] == res.display_tokens[p["query"]]
    assert s["entropy"] == pytest.approx(res.attention.entropy[1, 3])
    assert s["role"] == res.attention.roles[1 * res.n_heads + 3]
    assert len(s["row_entropy"]) == res.n_tokens and np.mean(s["row_entropy"]) == pytest.approx(s["entropy"])
    with pytest.raises(ValueError):
        ap.single_head_stats(res, res.n_layers, 0)


def test_safe_label_escapes_mathtext_and_control_characters():
    assert token_label("$5") == r"\$5"
    assert "\n" not in token_label("a\nb")


def test_attention_gif_has_one_frame_per_layer(gpt2_result):
    L = gpt2_result.n_layers
    frames = _frames(animations.attention_layers_gif(gpt2_result))
    assert frames.shape[0] == L
    assert _frames(animations.attention_layers_gif(gpt2_result, head=1)).shape[0] == L
    with pytest.raises(ValueError):
        animations.attention_layers_gif(gpt2_result, head=99)


def test_trajectory_gif_has_one_frame_per_hidden_state_layer(bert_result):
    frames = _frames(animations.token_trajectories_gif(bert_result))
    assert frames.shape[0] == bert_result.hidden_states.shape[0]  # L + 1: embeddings, then each block


def test_common_projection_uses_one_basis_for_all_layers():
    rng = np.random.default_rng(0)
    Hs = rng.normal(size=(4, 6, 10))
    Hs[2] *= 3.0  # one layer with a different scale: the basis must still be shared
    P, ratio = animations.common_projection(Hs)
    X = Hs.reshape(-1, 10)
    Xc = X - X.mean(0)
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    expected = (Xc @ vt[:2].T).reshape(4, 6, 2)
    np.testing.assert_allclose(np.abs(P), np.abs(expected), atol=1e-9)
    np.testing.assert_allclose(ratio, s[:2] ** 2 / (s**2).sum())
    # the Gram path (fewer states than dimensions) gives the same projection
    P2, _ = animations.common_projection(rng.normal(size=(2, 3, 50)))
    assert P2.shape == (2, 3, 2)


def test_bundle_holds_the_csvs_with_exact_headers(gpt2_result):
    files = ap.attention_bundle_files(gpt2_result, ExportOptions())
    first = {
        name: files[name].decode().splitlines()[0]
        for name in ("attention_entropy.csv", "head_clusters.csv", "token_attribution.csv", "head_attribution.csv")
    }
    assert first["attention_entropy.csv"] == "layer,head,entropy,normalized_entropy"
    assert first["head_clusters.csv"] == "layer,head,cluster,role," + ",".join(gpt2_result.attention.feature_names)
    assert first["token_attribution.csv"] == "position,token,rollout,grad_x_input,integrated_gradients"
    assert first["head_attribution.csv"] == "layer,head,score"
    L, H, T = gpt2_result.n_layers, gpt2_result.n_heads, gpt2_result.n_tokens
    assert len(files["attention_entropy.csv"].decode().splitlines()) == 1 + L * H
    assert len(files["token_attribution.csv"].decode().splitlines()) == 1 + T
    for name in (
        "plots/attention_entropy.png",
        "plots/head_clusters.png",
        "plots/token_attribution.png",
        "plots/attention_mean_last_layer.png",
        "plots/head_attribution.png",
    ):
        assert files[name].startswith(PNG), name
    assert _frames(files["animations/attention_layers.gif"]).shape[0] == L
    assert _frames(files["animations/token_trajectories.gif"]).shape[0] == L + 1


def test_bundle_without_animations_or_gradients(tiny_encoder):
    from core.analysis.pipeline import analyze

    res = analyze(tiny_encoder, "The cat sat.")
    files = ap.attention_bundle_files(res, ExportOptions(animations=False))
    assert not any(n.startswith("animations/") for n in files)
    assert "head_attribution.csv" not in files
    assert files["token_attribution.csv"].decode().splitlines()[0] == "position,token,rollout"
    assert all(n.replace("/", "").replace("_", "").replace(".", "").isalnum() for n in files)


@pytest.mark.slow
def test_full_bundle_includes_the_attention_members(gpt2_result):
    from core.export.bundle import bundle_files

    files = bundle_files(gpt2_result)
    mine = ap.attention_bundle_files(gpt2_result, ExportOptions())
    assert set(mine) <= set(files)
    for name in ("attention_entropy.csv", "head_clusters.csv", "token_attribution.csv", "head_attribution.csv"):
        assert files[name] == mine[name]


def _sink_map(T: int, sink: float = 0.75, seed: int = 0) -> np.ndarray:
    """Rows that sum to 1: `sink` on the first key, the rest spread at random over the others (~(1 − sink)/T each)."""
    rng = np.random.default_rng(seed)
    rest = rng.dirichlet(np.ones(T - 1), size=T) * (1 - sink)
    return np.concatenate([np.full((T, 1), sink), rest], axis=1).astype(np.float32)


def test_attention_scales_on_a_long_map_with_a_sink():
    T = 512
    mat = _sink_map(T)
    off_sink = mat[:, 1:]
    levels = {}
    for scale in ap.ATTENTION_SCALES:
        shown, norm, label = ap._scaled(mat, scale)
        assert label
        levels[scale] = float(np.median(np.ma.getdata(norm(shown[:, 1:]))))
    # linear: the median cell beside a 0.75 sink gets 0.05 % of the colour scale (white); log: over 100 times more
    assert levels["linear"] < 0.001 and levels["log"] > 0.05 and levels["log"] > 100 * levels["linear"]
    # the uniform weight 1/T sits at log(10)/log(10·T·max) of the log scale
    shown, norm, _ = ap._scaled(mat, "log")
    assert float(norm(1 / T)) == pytest.approx(1 / np.log10(10 * T * 0.75), rel=1e-4)
    assert float(norm(shown.min())) == pytest.approx(0.0, abs=1e-6)  # weights under the floor are drawn at it
    # row: every row's largest weight is 1
    shown, norm, _ = ap._scaled(mat, "row")
    np.testing.assert_allclose(shown.max(axis=1), 1.0, rtol=1e-6)
    assert off_sink.max() < 0.01
    with pytest.raises(ValueError, match="unknown attention scale"):
        ap._scaled(mat, "sqrt")


def test_default_attention_scale_is_named_under_the_title(gpt2_result, monkeypatch):
    from matplotlib.text import Text

    from core.figures import plotting

    assert ap.default_attention_scale(63) == "linear" and ap.default_attention_scale(64) == "log"
    titles: list[str] = []
    real = plotting.png
    monkeypatch.setattr(
        plotting, "png", lambda fig, **kw: titles.extend(a.get_title() for a in fig.axes) or real(fig, **kw)
    )
    for scale in (None, *ap.ATTENTION_SCALES):
        titles.clear()
        ap.mean_attention_heatmap(gpt2_result, -1, scale)
        expected = ap.attention_scale_caption(scale or ap.default_attention_scale(gpt2_result.n_tokens))
        assert any(expected in t for t in titles), titles
        titles.clear()
        ap.single_head_plot(gpt2_result, 0, 1, scale=scale)
        assert any(expected in t for t in titles), titles
    assert Text  # the figures are matplotlib objects (no pyplot)
