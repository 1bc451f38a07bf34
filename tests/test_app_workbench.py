"""The workbench's controls and downloads: every AnalysisSettings field has a sidebar control keyed by its name
(head ablation included, reachable from the Causal page too), and the Compare, Causal and Corpus ZIPs are the CLI's
bundles, built once per result (plain builder functions: AppTest cannot read a download button's bytes)."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import pytest
from test_app_pages import make_app, no_exception

from app import downloads
from app.settings_widgets import settings_from_state, widget_fields
from core.infra.errors import InputError
from core.run.settings import AnalysisSettings, setting_fields

CAUSAL = "../pages/causal.py"


def _names(data: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(data)).namelist()


def _read(data: bytes, name: str) -> bytes:
    return zipfile.ZipFile(io.BytesIO(data)).read(name)


# ----------------------------------------------------------------------------------------------------------------
# Settings widgets generated from the fields


def test_every_setting_has_a_sidebar_control_keyed_by_its_name():
    at = make_app().run()
    no_exception(at)
    sidebar_keys = {
        w.key
        for kind in ("toggle", "number_input", "select_slider", "selectbox", "text_input", "checkbox")
        for w in at.sidebar.get(kind)
    }
    fields = {f.name for f in setting_fields()}
    drawn = {f.name for f in widget_fields()}
    # the masked word is picked from the text's words, next to the text (masked LMs); the SAE folders have a text
    # area with a line per folder
    assert fields - drawn == {"mask_word", "sae_dirs"}
    assert drawn <= sidebar_keys, sorted(drawn - sidebar_keys)
    assert {w.key for w in at.sidebar.get("text_area")} >= {"sae_dirs_text"}
    assert "head_ablation" in sidebar_keys
    for f in widget_fields():  # every control starts at the field's default
        assert at.session_state[f.name] == f.default, f.name


def test_settings_from_state_reads_each_field_by_its_name():
    state = {f.name: f.default for f in setting_fields()}
    assert settings_from_state(state) == AnalysisSettings()
    state.update(head_ablation=True, top_k=5, n_clusters=3, target_position=2, compute_gradients=False)
    state["integrated_gradients"] = True  # needs gradients: switched off with them
    s = settings_from_state(state)
    assert (s.head_ablation, s.top_k, s.n_clusters, s.target_position) == (True, 5, 3, 2)
    assert s.integrated_gradients is False
    assert settings_from_state({}) == AnalysisSettings()  # missing keys take the defaults
    with pytest.raises(InputError, match="top_k"):
        settings_from_state({"top_k": 1000})


def test_the_sidebar_head_ablation_switch_reaches_the_causal_tab(tiny_dirs):
    at = make_app(None, model_choice="Other: a Hugging Face id or a local folder", model_custom=str(tiny_dirs["gpt2"]))
    at.run()
    at.sidebar.text_area(key="text").input("The dog sat on the log")
    at.sidebar.toggle(key="head_ablation").set_value(True)
    next(b for b in at.sidebar.button if b.key == "analyze").click()
    at.run()
    no_exception(at)
    assert at.session_state["result"].settings.head_ablation
    at.switch_page(CAUSAL).run()
    no_exception(at)
    # the tab draws the head ablation as soon as the background views job has it; the session's result takes the
    # fuller one when the whole job ends (it may still be computing the other views here: a loaded CI run was)
    assert any("Spearman" in c.value for c in at.caption)
    wait_for_jobs()
    at.run()
    no_exception(at)
    assert at.session_state["result"].head_ablation is not None
    assert any("Spearman" in c.value for c in at.caption)


def wait_for_jobs() -> None:
    """Until the app's background jobs have ended (120 s at most)."""
    import threading

    from app import jobs

    pause = threading.Event()
    for _ in range(1200):
        if jobs.active_count() == 0:
            return
        pause.wait(0.1)
    raise AssertionError("a background job still runs after 120 s")


def test_the_causal_tab_button_analyses_again_with_head_ablation(tiny_dirs):
    at = make_app(None, model_choice="Other: a Hugging Face id or a local folder", model_custom=str(tiny_dirs["gpt2"]))
    at.run()
    at.sidebar.text_area(key="text").input("The dog sat on the log")
    next(b for b in at.sidebar.button if b.key == "analyze").click()
    at.run()
    assert not at.session_state["result"].settings.head_ablation
    at.switch_page(CAUSAL).run()
    no_exception(at)
    assert any("off for this analysis" in i.value for i in at.info)  # no hidden precondition: a button
    at.button(key="head_ablation_go").click().run()
    no_exception(at)
    wait_for_jobs()  # the session's result takes the views when the whole background job ends (see above)
    at.run()
    no_exception(at)
    r = at.session_state["result"]
    assert r.settings.head_ablation and r.head_ablation is not None and r.text == "The dog sat on the log"
    assert at.session_state["head_ablation"] is True  # the sidebar's switch says what the analysis used
    assert any("Spearman" in c.value for c in at.caption)


# ----------------------------------------------------------------------------------------------------------------
# Downloads


def test_once_bytes_builds_once_and_is_replaced_for_another_result():
    calls = []

    def build():
        calls.append(1)
        return b"zip bytes"

    state: dict = {}
    first = downloads.once(state, "k", "result-1", build)
    assert not first.ready and calls == []  # nothing is built before the click
    assert first() == b"zip bytes" and first() == b"zip bytes" and calls == [1] and first.builds == 1
    assert downloads.once(state, "k", "result-1", build) is first  # a rerun keeps it
    second = downloads.once(state, "k", "result-2", build)
    assert second is not first and state["k"] is second and second() == b"zip bytes" and calls == [1, 1]


def test_comparison_zip_is_the_cli_bundle(tiny_gpt2):
    from core.analysis.pipeline import analyze
    from core.studies.compare import compare

    a = analyze(tiny_gpt2, "The cat sat on the mat.", compute_gradients=False)
    b = analyze(tiny_gpt2, "The cat sat on the mat.", compute_gradients=False, exclude_special_tokens=True)
    data = downloads.comparison_zip(a, b, compare(a, b), animations=False)
    names = _names(data)
    for name in ("comparison.json", "cka.csv", "report.pdf", "a/manifest.json", "b/manifest.json"):
        assert name in names, name
    rows = list(csv.reader(io.StringIO(_read(data, "cka.csv").decode())))
    assert rows[0] == ["layer_a", "layer_b", "cka"] and len(rows) == 1 + (a.n_layers + 1) ** 2
    doc = json.loads(_read(data, "comparison.json"))
    assert doc["cka_csv"] == "centred"
    assert _read(data, "report.pdf")[:5] == b"%PDF-"


def test_patching_zip_is_the_cli_bundle(tiny_gpt2):
    from core.cli.patch import CSV_HEADER, bundle
    from core.studies.patching import PatchingSettings, patch

    res = patch(tiny_gpt2, "The dog sat on the log", "The log sat on the dog", PatchingSettings())
    data = downloads.patching_zip(res)
    assert sorted(_names(data)) == sorted(bundle(res))
    rows = list(csv.reader(io.StringIO(_read(data, "patching.csv").decode())))
    assert rows[0] == CSV_HEADER and len(rows) > 1
    assert json.loads(_read(data, "patching.json"))["m_clean"] == pytest.approx(res.m_clean)


def test_corpus_zip_is_the_cli_bundle(tiny_gpt2):
    from core.export.corpus_bundle import corpus_bundle_files
    from core.studies.corpus import CorpusSettings, analyze_corpus, texts_from_lines

    texts = texts_from_lines("The cat sat.\nThe dog ran.\nA bird flew.")
    result = analyze_corpus(tiny_gpt2, texts, CorpusSettings(bootstrap=10))
    data = downloads.corpus_zip(result)
    assert sorted(_names(data)) == sorted(corpus_bundle_files(result))
    assert "corpus_metrics.csv" in _names(data)
