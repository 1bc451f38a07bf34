"""One layer numbering everywhere: hidden states 0 (embeddings) … L, attention blocks 1 … L — the same in the GIF
frame titles, the CSV files, the page's pickers and charts, and the PDF tables (core.present.chart_spec)."""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path

import pytest

from core.figures import animations

ROOT = Path(__file__).resolve().parents[1]
MAIN = str(ROOT / "app" / "main.py")


@pytest.fixture(scope="module")
def result(tiny_gpt2):
    from core import analyze

    return analyze(tiny_gpt2, "The cat sat on the mat.", ig_steps=4)


def csv_column(data: bytes, column: str) -> list[int]:
    return [int(row[column]) for row in csv.DictReader(io.StringIO(data.decode()))]


def test_gif_frame_titles(result, monkeypatch):
    L = result.n_layers
    att = animations.attention_frame_titles(L, head=1)
    assert att[0] == f"Layer 1 of {L}: attention, head 1" and att[-1] == f"Layer {L} of {L}: attention, head 1"
    traj = animations.trajectory_frame_titles(L)
    assert traj[0] == f"Layer 0 of {L} (embeddings): token states, common basis"
    assert traj[-1] == f"Layer {L} of {L}: token states, common basis"
    # both GIFs draw one frame per title, with the titles of these functions
    import imageio.v3 as iio

    seen: list[list[str]] = []
    for name in ("attention_frame_titles", "trajectory_frame_titles"):
        original = getattr(animations, name)
        monkeypatch.setattr(animations, name, lambda *a, _f=original, **k: seen.append(_f(*a, **k)) or seen[-1])
    n_att = len(iio.imread(animations.attention_layers_gif(result, head=1), index=None))
    n_traj = len(iio.imread(animations.token_trajectories_gif(result), index=None))
    assert seen == [att, traj]
    assert (n_att, n_traj) == (len(att), len(traj)) == (L, L + 1)


def test_csv_files(result):
    from core.export.bundle import bundle_files
    from core.figures.attention import attention_bundle_files
    from core.infra.options import ExportOptions

    L = result.n_layers
    files = attention_bundle_files(result, ExportOptions(animations=False))
    for name in ("attention_entropy.csv", "head_clusters.csv", "head_attribution.csv"):
        assert sorted(set(csv_column(files[name], "layer"))) == list(range(1, L + 1)), name
    everything = bundle_files(result, ExportOptions(animations=False))
    assert sorted(set(csv_column(everything["layer_metrics.csv"], "layer"))) == list(range(L + 1))
    lens_layers = set(csv_column(everything["logit_lens.csv"], "layer"))
    assert lens_layers == set(range(L + 1))


def test_page_uses_the_same_numbers(result):
    from streamlit.testing.v1 import AppTest

    L = result.n_layers
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state["result"] = result
    at.run()
    at.switch_page("../pages/layer_analysis.py").run()
    assert not at.exception
    slider = at.select_slider(key="layer")
    assert list(slider.options) == [str(i) for i in range(1, L + 1)]
    slider.set_value(L - 1).run()  # the last block
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert any(f'"Layer {L}, mean over heads"' in s for s in specs)
    heads_grid = next(c for c in at.get("vega_lite_chart") if "Attention entropy (nats)" in c.proto.spec)
    import pyarrow as pa

    frames = [pa.ipc.open_stream(io.BytesIO(d.data.data)).read_pandas() for d in heads_grid.proto.datasets]
    layers = set().union(*(set(f["layer"]) for f in frames if "layer" in f))
    assert layers == set(range(1, L + 1))
    captions = [c for im in at.get("image") for c in [im.proto.imgs[0].caption] if "across layers" in c]
    assert len(captions) == 2, captions  # the two GIFs of the Animations tab
    assert f"layers 1 … {L}" in captions[0] and f"layers 0 (embeddings) … {L}" in captions[1]


def test_pdf_top_heads_use_block_numbers(result):
    from pypdf import PdfReader

    from core.export.report import build_report

    text = " ".join(p.extract_text() or "" for p in PdfReader(io.BytesIO(build_report(result))).pages)
    flat = " ".join(text.split())
    assert "layer l the output of block l" in flat
    # the top-heads tables list layers 1 … L, never 0 (0 is the embeddings, which have no heads)
    section = flat.split("Top 10 heads by attention entropy")[1].split("Top 10 heads by attribution")[0]
    rows = section.split("role")[1].split()
    layers = {int(w) for w, nxt in itertools.pairwise(rows) if w.isdigit() and nxt.isdigit()}
    assert layers and layers <= set(range(1, result.n_layers + 1)), layers


@pytest.fixture(scope="module")
def deep(tiny_gpt2):
    """A result with every deeper view (query–key, neuron factors, head ablation)."""
    from core import analyze

    return analyze(tiny_gpt2, "The cat sat on the mat.", ig_steps=4, head_ablation=True, views="all")


def _texts(fig) -> list[str]:
    """Every text a matplotlib figure draws (titles, tick labels, free texts), after a draw."""
    from matplotlib.text import Text

    fig.canvas.draw()
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def test_query_key_view_numbers_blocks_from_one(deep):
    from core.figures import qk

    L = deep.n_layers
    rows = list(csv.DictReader(io.StringIO(qk.query_key_files(deep, None)["query_key.csv"].decode())))  # type: ignore[arg-type]
    assert {int(r["layer"]) for r in rows} == {L}  # the last block, as layer_metrics.csv numbers it
    view = qk.default_view(deep)
    assert view is not None and view.layer == L - 1  # the array index stays 0-based
    fig = qk.qk_figure(view, deep.display_tokens)
    assert fig._suptitle is not None and fig._suptitle.get_text().startswith(f"Layer {L}, head 0")
    first = qk.qk_figure(qk.qk_view(deep.query_key, 0, 1, 0), deep.display_tokens)  # the page's "layer 1"
    assert first._suptitle.get_text().startswith("Layer 1, head 1")
    assert qk.report_section(deep)[0][0].startswith(f"Layer {L}, head 0")


def test_neuron_factors_number_mlp_layers_as_blocks(deep):
    from core.figures import neurons

    sec = deep.neuron_factors
    L = deep.n_layers
    assert sec is not None and sec.layers == tuple(range(L)) and sec.blocks == (1, L)  # indices stored, blocks shown
    assert sec.neuron_name(0, 0) == f"L{int(sec.top_layer[0, 0]) + 1}·N{int(sec.top_neuron[0, 0])}"
    names = [s for s in _texts(neurons.top_neuron_figure(sec)) if "·N" in s]
    assert names and {int(s.split("·")[0][1:]) for s in names} <= set(range(1, L + 1))
    assert all(not s.startswith("L0·") for s in _texts(neurons.factor_figure(sec, deep.display_tokens)))
    top = list(
        csv.DictReader(io.StringIO(neurons.neuron_factor_files(deep, None)["neuron_factor_neurons.csv"].decode()))
    )  # type: ignore[arg-type]
    assert {int(r["layer"]) for r in top} <= set(range(1, L + 1))
    intro = neurons.report_section(deep)[0][0]
    assert intro.startswith(f"Layers 1–{L},")


def test_head_ablation_and_patching_number_blocks_from_one(deep, tiny_gpt2, monkeypatch):
    from core.figures import causal
    from core.figures.causal import head_ablation_files
    from core.infra.options import ExportOptions
    from core.studies.patching import PatchingSettings, run_patching

    L = deep.n_layers
    files = head_ablation_files(deep, ExportOptions(animations=False))
    assert sorted(set(csv_column(files["head_ablation.csv"], "layer"))) == list(range(1, L + 1))
    res = run_patching(tiny_gpt2, "The dog sat on the log", "The log sat on the dog", PatchingSettings())
    assert sorted({r[0] for r in res.rows()}) == list(range(1, L + 1))
    assert "first_block_all_positions" in res.summary()["sanity"]
    from core.figures import plotting

    drawn: list[list[str]] = []
    real_png = plotting.png
    monkeypatch.setattr(plotting, "png", lambda fig, **kw: drawn.append(_texts(fig)) or real_png(fig, **kw))
    causal.patching_heatmap(res, "residual")
    causal.component_bars(res)
    heat, bars = drawn
    blocks = [str(b) for b in range(1, L + 1)]
    for texts in (heat, bars):
        assert all(b in texts for b in blocks) and "0" not in texts, texts


def test_causal_page_tables_number_blocks_from_one(deep, tiny_gpt2):
    from core.present.study_tables import component_frame, head_ablation_frame, patching_frame
    from core.studies.patching import run_patching

    L = deep.n_layers
    assert deep.head_ablation is not None
    assert sorted(set(head_ablation_frame(deep.head_ablation)["layer"])) == list(range(1, L + 1))
    res = run_patching(tiny_gpt2, "The dog sat on the log", "The log sat on the dog")
    assert sorted(set(patching_frame(res, "residual")["block"])) == list(range(1, L + 1))
    bars = component_frame(res)
    assert sorted(set(bars["block"])) == list(range(1, L + 1))
    first = bars[(bars["block"] == 1) & (bars["component"] == "Attention output")]["restored"].item()
    assert first == res.restored_all("attention")[0]  # block 1 = array row 0
