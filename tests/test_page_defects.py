"""The page defects found by trying the workbench as a new user (issue 25), each with the check that it is gone:
the Compare legends and run names, the layer × layer CKA in its own tab, the attention heatmap's first labels and
its colour-scale control, the favicon served without the internet, and corpus charts that say why they are empty
or flat instead of drawing nothing or float noise."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from test_app_pages import LAYERS, ForwardCounter, make_app, no_exception

# ----------------------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def gpt2_run(tiny_gpt2):
    from core import analyze

    return analyze(tiny_gpt2, "The cat sat on the mat.", ig_steps=2)


def with_tokens(base, T: int, key: str):
    """A real result widened to T tokens (tiny models hold 128 positions): causal uniform attention."""
    L, H = base.n_layers, base.n_heads
    att = np.tril(np.ones((L, H, T, T), dtype=np.float32))
    att /= att.sum(-1, keepdims=True)
    return base.replace(
        attentions=att,
        tokens=["t"] * T,
        display_tokens=[f"w{i}" for i in range(T)],
        token_ids=list(range(T)),
        special_mask=[False] * T,
        attention=None,
        attribution=None,
        logit_lens=None,
        cache_key=key,
    )


def band_axes(spec: dict) -> list[tuple[str, dict]]:
    """(channel, axis) of every x/y encoding on a nominal or ordinal field in a Vega-Lite spec (all layers)."""
    out = []

    def walk(node):
        if isinstance(node, dict):
            enc = node.get("encoding")
            if isinstance(enc, dict):
                for ch in ("x", "y"):
                    e = enc.get(ch)
                    if isinstance(e, dict) and e.get("type") in ("nominal", "ordinal"):
                        out.append((ch, e.get("axis") or {}))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    return out


def layer_page(result):
    at = make_app(result).run()
    at.switch_page(LAYERS).run()
    no_exception(at)
    return at


def attention_spec(at) -> dict:
    """The Vega-Lite spec of the Layer Analysis page's attention heatmap (the chart whose colour is `shown`)."""
    for c in at.get("vega_lite_chart"):
        spec = json.loads(c.proto.spec)
        if spec.get("encoding", {}).get("color", {}).get("field") == "shown":
            return spec
    raise AssertionError("no attention heatmap on the page")


# ----------------------------------------------------------------------------------------------------------------
# 4. The attention heatmap's first labels


def test_attention_heatmap_labels_at_16_tokens_do_not_overlap(gpt2_run):
    """Streamlit's Vega theme sets labelFlush, which moved the first label of a band axis half a label inwards,
    onto the second (measured in Chromium at 16 tokens: 10 px between the first two y labels, 15 px between the
    others). Every band axis turns it off, and the labels' font is smaller than the row they label."""
    from app import charts
    from core.present import tables

    r = with_tokens(gpt2_run, 16, "sixteen")
    df = tables.attention_frame(r.attentions, r.display_tokens, 0, None)
    spec = charts.attention_heatmap(df, "t").to_dict()
    axes = dict(band_axes(spec))
    assert set(axes) == {"x", "y"}
    side = charts.heatmap_side(16)
    for axis in axes.values():
        assert axis["labelFlush"] is False
        assert axis["labelOverlap"] is False  # every label is drawn …
        assert axis["labelFontSize"] + 2 <= side / 16  # … and has room: 11 px type in a 15 px row
    assert spec["height"] == spec["width"] == side


def test_every_band_axis_of_the_app_turns_label_flush_off(gpt2_run):
    """The same theme default on every chart with token, layer or position bands (bars, grids, heatmaps)."""
    import pandas as pd

    from app import charts
    from app.compare_widgets import cka_heatmap
    from core.present import tables

    r = gpt2_run
    frames = [
        charts.attention_heatmap(tables.attention_frame(r.attentions, r.display_tokens, 0, 1), "t"),
        charts.layer_head_heatmap(tables.layer_head_frame(r.attention.entropy, "entropy"), "entropy", "t"),
        charts.normalised_heatmap(tables.normalised_metrics(r)),
        charts.logit_lens_heatmap(tables.logit_lens_grid_frame(r.logit_lens, r.display_tokens)),
        charts.attribution_bars(pd.DataFrame({"position": [0, 1], "token": ["a", "b"], "s": [0.5, -0.2]}), "s"),
        charts.row_entropy_bars(pd.DataFrame({"query": ["0: a", "1: b"], "entropy": [0.1, 0.3]})),
        cka_heatmap(np.eye(3), "layer", "layer"),
    ]
    checked = 0
    for chart in frames:
        for _ch, axis in band_axes(chart.to_dict()):
            assert axis.get("labelFlush") is False
            checked += 1
    assert checked >= 11


# ----------------------------------------------------------------------------------------------------------------
# 7. The attention colour scale: a control, named in the caption, no model run


def test_attention_frame_colour_values_per_scale(gpt2_run):
    from core.present import chart_spec, tables

    r = with_tokens(gpt2_run, 40, "forty")
    A = r.attentions[0].mean(0).astype(np.float64)
    window = (10, 30)
    lin = tables.attention_frame(r.attentions, r.display_tokens, 0, None, window, "linear")
    np.testing.assert_allclose(lin["shown"], lin["weight"])
    row = tables.attention_frame(r.attentions, r.display_tokens, 0, None, window, "row")
    # divided by the largest weight of the query's whole row, not of the window: causal uniform rows have 1/(i+1)
    np.testing.assert_allclose(row["shown"], row["weight"] / A.max(axis=1)[row["qi"]])
    log = tables.attention_frame(r.attentions, r.display_tokens, 0, None, window, "log")
    low, high = chart_spec.attention_domain("log", float(log["weight"].max()), 40)
    assert low == pytest.approx(min(0.1 / 40, high / 10))
    np.testing.assert_allclose(log["shown"], np.maximum(log["weight"], low))
    assert (log["weight"] == 0).any() and log["shown"].min() == pytest.approx(low)  # zeros drawn at the floor


def test_layer_page_cka_tab_and_attention_colour_scale_control(gpt2_run):
    """3. The layer × layer CKA has its own tab (it sat under "Animations"); 7. the attention map's colour scale is
    a control (automatic by default), named in the caption, that redraws the stored result without a model run."""
    from app.layer_widgets import LAYER_CKA_TAB

    at = layer_page(gpt2_run)
    tabs = {t.label: t for t in at.tabs}
    assert LAYER_CKA_TAB == "Layer similarity (CKA)" and LAYER_CKA_TAB in tabs
    cka_tab, anim_tab = tabs[LAYER_CKA_TAB], tabs["Animations"]
    assert any('"CKA"' in c.proto.spec for c in cka_tab.get("vega_lite_chart"))
    assert cka_tab.toggle(key="layer_cka_debiased")
    assert not any('"CKA"' in c.proto.spec for c in anim_tab.get("vega_lite_chart"))
    assert not [t for t in anim_tab.toggle if t.key == "layer_cka_debiased"]

    radio = at.radio(key="att_scale")
    assert radio.value == "auto" and list(radio.options) == ["Automatic (linear)", "Linear", "Per row", "Log"]
    n = gpt2_run.n_tokens
    assert any(
        f"Colour scale: linear (chosen automatically: {n} tokens, linear below 64" in c.value for c in at.caption
    )
    spec = attention_spec(at)
    assert spec["encoding"]["color"]["scale"].get("type") is None  # linear
    with ForwardCounter() as fc:
        at.radio(key="att_scale").set_value("log").run()
        no_exception(at)
        spec = attention_spec(at)
        assert spec["encoding"]["color"]["scale"]["type"] == "log"
        assert spec["encoding"]["color"]["title"] == "weight (log)"
        assert any(c.value.startswith("Colour scale: log — colour: log scale") for c in at.caption)
        at.radio(key="att_scale").set_value("row").run()
        no_exception(at)
        spec = attention_spec(at)
        assert spec["encoding"]["color"]["scale"]["domain"] == [0.0, 1.0]
        assert any(c.value.startswith("Colour scale: per row — colour: weight / its row") for c in at.caption)
        at.select_slider(key="layer").set_value(1).run()
        no_exception(at)
    assert fc.calls == 0, f"{fc.calls} module calls on a colour-scale change"
    assert at.session_state["att_scale"] == "row"  # kept across a layer change


def test_attention_colour_scale_is_log_by_default_from_64_tokens(gpt2_run):
    at = layer_page(with_tokens(gpt2_run, 70, "seventy"))
    assert at.radio(key="att_scale").value == "auto"
    assert any("Colour scale: log (chosen automatically: 70 tokens, log from 64 tokens)" in c.value for c in at.caption)
    assert attention_spec(at)["encoding"]["color"]["scale"]["type"] == "log"


# ----------------------------------------------------------------------------------------------------------------
# 5. The favicon needs no request (tests/test_browser.py watches every request of a whole session)


def test_page_icon_is_inlined_not_fetched(monkeypatch):
    """What app/main.py passes as page_icon becomes, in Streamlit's own conversion, a data: URI: the browser
    fetches nothing (":material/hub:" made it fetch an SVG from fonts.gstatic.com)."""
    import base64

    import streamlit as st
    from streamlit.commands.page_config import _get_favicon_string

    seen: list[object] = []
    original = st.set_page_config

    def record(*args, **kw):
        seen.append(kw.get("page_icon"))
        return original(*args, **kw)

    monkeypatch.setattr(st, "set_page_config", record)
    at = make_app().run()
    no_exception(at)
    assert seen, "app/main.py did not call st.set_page_config"
    favicon = _get_favicon_string(seen[0])
    prefix = "data:image/svg+xml;base64,"
    assert favicon.startswith(prefix), favicon[:60]
    svg = base64.b64decode(favicon[len(prefix) :]).decode()
    assert "<svg" in svg and "href" not in svg and "url(" not in svg  # nothing inside it points elsewhere either


# ----------------------------------------------------------------------------------------------------------------
# 1, 2. Compare: whole names in the legends; two texts on one model are named by their texts

LONG = "The $5 cat sat on the mat,\n  and then   it slept for a very long time in the sun."


@pytest.fixture(scope="module")
def two_texts(tiny_gpt2, gpt2_run):
    from core import analyze
    from core.studies.compare import compare

    other = analyze(tiny_gpt2, LONG, ig_steps=2)
    return gpt2_run, other, compare(gpt2_run, other)


def test_two_text_runs_are_named_by_their_texts(two_texts, gpt2_run):
    from core.present.compare import NAME_CHARS, run_label, run_name, short_text
    from core.studies.compare import compare

    _a, _b, cmp = two_texts
    assert run_name(cmp, cmp.a) == "\u201cThe cat sat on the mat.\u201d"
    long = run_name(cmp, cmp.b)  # one line, cut with "…" to NAME_CHARS characters inside the quotes
    assert long == short_text(LONG) and "\n" not in long and "  " not in long
    assert long.endswith("\u2026\u201d") and len(long) <= NAME_CHARS + 2 and long.startswith("\u201cThe $5 cat sat on")
    assert run_label(cmp, cmp.a).startswith("A: \u201cThe cat") and run_label(cmp, cmp.b).startswith("B: \u201cThe $5")
    # one text on two models: named by the models; the same short name for two ids: the whole ids
    short = cmp.a.model_id.rsplit("/")[-1]
    two_models = replace(cmp, b=replace(cmp.a, label="B", model_id="x/y"))
    assert run_name(two_models, two_models.b) == "y" and run_name(two_models, two_models.a) == short
    clash = replace(cmp, b=replace(cmp.a, label="B", model_id="org/" + short))
    assert run_name(clash, clash.b) == "org/" + short
    # the same run twice (other settings): both named by the model, told apart by A and B
    same = compare(gpt2_run, gpt2_run)
    assert run_label(same, same.a) != run_label(same, same.b)


def test_overlay_figure_legend_shows_whole_names_inside_the_figure(two_texts):
    """The PNG/PDF overlay: the legend holds every character of both names (wrapped, never cut) and, drawn, lies
    inside the figure; so does every other text of the figure."""
    from core.figures import compare as fc
    from core.figures.plotting import token_label
    from core.present.compare import run_label

    _a, _b, cmp = two_texts
    fig = fc.overlay_figure(cmp)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = fig.axes[-1].get_legend()
    shown = [t.get_text() for t in legend.get_texts()]
    assert [t.replace("\n", " ") for t in shown] == [token_label(run_label(cmp, s)) for s in cmp.runs]
    assert any("\n" in t for t in shown) and r"\$5" in shown[1]  # wrapped; "$" kept from mathtext
    box, frame = legend.get_window_extent(renderer), fig.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    drawn = fig.get_tightbbox(renderer)  # every drawn artist (inches): titles, tick labels, axis labels, legend
    inches = fig.bbox_inches
    assert drawn.x0 >= inches.x0 and drawn.x1 <= inches.x1 and drawn.y0 >= inches.y0 and drawn.y1 <= inches.y1


def test_compare_page_legend_names_both_texts_whole(two_texts):
    from test_compare_page import compare_app

    a, b, cmp = two_texts
    at = compare_app(a, b)
    no_exception(at)
    legends = [h.proto.body for h in at.get("html") if "tma-compare-legend" in h.proto.body]
    assert len(legends) == 1
    body = legends[0]
    assert "A: \u201cThe cat sat on the mat.\u201d" in body
    assert "B: \u201cThe $5 cat sat on the mat, and then it\u2026\u201d" in body
    assert cmp.a.model_id.rsplit("/")[-1] not in body  # named by the texts, not twice by the model
    for c in at.get("vega_lite_chart"):
        spec = json.loads(c.proto.spec)
        colour = spec.get("encoding", {}).get("color", {})
        if colour.get("field") == "run":  # the overlays: no legend of their own to cut
            assert colour["legend"] is None
            assert colour["scale"]["domain"][0] == "A: \u201cThe cat sat on the mat.\u201d"


def test_legend_html_escapes_the_texts(two_texts):
    from app.compare_widgets import legend_html

    a, _b, cmp = two_texts
    hostile = replace(cmp, b=replace(cmp.b, text="<img src=x onerror=alert(1)>"))
    body = legend_html(hostile)
    assert "<img" not in body and "&lt;img src=x onerror=alert(1)&gt;" in body


# ----------------------------------------------------------------------------------------------------------------
# 6. Corpus: an empty or flat pooled curve says why (page, PNG, PDF) instead of drawing nothing or float noise


@pytest.fixture(scope="module")
def degenerate_corpora(tiny_gpt2):
    """One-token texts on the tiny GPT-2 (byte-level BPE: a letter is one token; no special tokens): "a" eight
    times gives one token state per layer; eight letters give 8 points for a hidden width of 32, where linearity
    is 1 by construction."""
    from core.studies.corpus import CorpusSettings, analyze_corpus, texts_from_lines

    settings = CorpusSettings(bootstrap=20)
    same = analyze_corpus(tiny_gpt2, texts_from_lines("\n".join(["a"] * 8)), settings)
    words = analyze_corpus(tiny_gpt2, texts_from_lines("\n".join("abcdefgh")), settings)
    return same, words


def test_pooled_notes_say_why_a_curve_is_empty_or_flat(degenerate_corpora):
    from core.present.study_tables import distinct_points, pooled_note

    same, words = degenerate_corpora
    assert int(distinct_points(same).max()) == 1
    twonn = pooled_note(same, "twonn_dimension")
    assert (
        twonn.empty
        and "TwoNN needs at least 3 distinct token states" in twonn.text
        and "at most 1 distinct" in twonn.text
    )
    rank = pooled_note(same, "effective_rank")
    assert rank.empty and "every text gives the same token state" in rank.text
    cos = pooled_note(same, "anisotropy_cosine")  # one state: every pair of texts has cosine 1, a flat curve
    assert not cos.empty and cos.text.startswith("The same value at every layer: 1")
    assert cos.domain[0] < 1 <= cos.domain[1] and cos.domain[1] - cos.domain[0] >= 0.05
    lin = words.estimate["linearity"][1:]
    assert np.all(np.abs(lin - 1) < 1e-9)  # round-off around 1: the noise the chart used to stretch
    note = pooled_note(words, "linearity")
    assert not note.empty and "linearity is 1 by construction" in note.text and "8 pooled points" in note.text
    assert note.domain[1] - note.domain[0] >= 0.05  # a readable range, not 1e-15
    assert pooled_note(words, "twonn_dimension") is None  # an ordinary curve: no note


def test_corpus_page_says_why_instead_of_an_empty_or_noisy_chart(degenerate_corpora):
    from test_corpus import page_app

    same, words = degenerate_corpora
    at = page_app(corpus_result=same)
    at.run()
    no_exception(at)
    infos = " ".join(i.value for i in at.info)
    assert "TwoNN needs at least 3 distinct token states" in infos
    assert "every text gives the same token state" in infos  # effective rank, top-PC share, linearity
    charts_ = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    titles = [c.get("title") for c in charts_]
    assert "TwoNN dimension" not in titles and "Effective rank (pooled)" not in titles  # no empty frames
    assert any(c.value.startswith("The same value at every layer: 1") for c in at.caption)  # the cosine
    at = page_app(corpus_result=words)
    at.run()
    no_exception(at)
    lin = next(
        json.loads(c.proto.spec)
        for c in at.get("vega_lite_chart")
        if "Linearity" in str(json.loads(c.proto.spec).get("title"))
    )
    y = lin["layer"][1]["encoding"]["y"]
    assert y["scale"]["domain"][1] - y["scale"]["domain"][0] >= 0.05 and y["axis"]["format"] == ".4~g"
    assert any("linearity is 1 by construction" in c.value for c in at.caption)


def test_corpus_png_and_pdf_say_why(degenerate_corpora):
    import io

    from pypdf import PdfReader

    from core.export import corpus_bundle

    same, words = degenerate_corpora
    fig = corpus_bundle.metrics_figure(same)
    panel = {ax.get_title(): ax for ax in fig.axes}
    twonn = panel["TwoNN dimension"]
    assert not twonn.lines and any("TwoNN needs at least 3" in t.get_text().replace("\n", " ") for t in twonn.texts)
    fig = corpus_bundle.metrics_figure(words)
    lin = {ax.get_title(): ax for ax in fig.axes}["Linearity (layer l−1 → l)"]
    low, high = lin.get_ylim()
    assert high - low >= 0.05 and low <= 1 <= high  # the flat line at 1 on a readable range
    assert any("by construction" in t.get_text().replace("\n", " ") for t in lin.texts)
    fig.canvas.draw()
    assert all(len(t.get_text()) <= 8 for t in lin.get_yticklabels())  # "1.00", not "1.0000000000000…"
    report = corpus_bundle.report_pdf(same, {})  # the text of the report (the figures are checked above)
    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(report)).pages)
    flat = " ".join(text.split())
    assert "Curves without a shape" in flat and "TwoNN needs at least 3 distinct token states" in flat
