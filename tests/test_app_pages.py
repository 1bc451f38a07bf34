"""AppTest of the Streamlit app: every page with a ready result, the whole flow with a tiny model, no model run on
slider/head/setting changes (counted with a global forward hook), the offline banner, errors without tracebacks,
the URL, the mask-word picker and the continuation."""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import pytest

from app.state import OTHER_MODEL
from core.analysis.result import results_equal
from core.model.loading import BUNDLED_ID

ROOT = Path(__file__).resolve().parents[1]
MAIN = str(ROOT / "app" / "main.py")
OVERALL, LAYERS, DETAILS = "../pages/overall.py", "../pages/layer_analysis.py", "../pages/details.py"


# ----------------------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def results(tiny_gpt2, tiny_bert, tiny_encoder, tiny_llama):
    """Real results of core.analyze on the tiny models (cheap), one per family."""
    from core import analyze

    return {
        "gpt2": analyze(tiny_gpt2, "The cat sat on the mat.", ig_steps=4),
        "bert": analyze(tiny_bert, "The cat sat on the [MASK].", ig_steps=4),
        "encoder": analyze(tiny_encoder, "The dog sat on the log.", ig_steps=4),
        "llama": analyze(tiny_llama, "Paris is the capital of", ig_steps=4),
    }


def make_app(result=None, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(MAIN, default_timeout=30)
    if result is not None:
        at.session_state["result"] = result
    for k, v in state.items():
        at.session_state[k] = v
    return at


def no_exception(at) -> None:
    assert not at.exception, [e.message for e in at.exception]


def n_charts(at) -> int:
    return len(at.get("vega_lite_chart"))


def sidebar_button(at, key):
    return next(b for b in at.sidebar.button if b.key == key)


class ForwardCounter:
    """Counts every torch module call in the process (a model run of any kind makes it positive)."""

    def __init__(self):
        self.calls = 0

    def __enter__(self):
        from torch.nn.modules.module import register_module_forward_pre_hook

        def hook(_module, _args):
            self.calls += 1

        self._handle = register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


# ----------------------------------------------------------------------------------------------------------------
# Every page with a ready result


@pytest.mark.parametrize("family", ["gpt2", "bert", "encoder", "llama"])
def test_overall_page(results, family):
    r = results[family]
    at = make_app(r).run()
    no_exception(at)
    assert at.title[0].value == "Overall"
    assert len(at.metric) == 5
    assert n_charts(at) >= 7  # five metric lines, correlation, normalised heatmap
    assert at.get("button_group")  # Pearson / Spearman
    if family == "encoder":
        assert any("not available" in i.value.lower() for i in at.info)
    else:
        assert len(at.dataframe) >= 1  # the candidates table
    has_continuation = any(e.label == "Continue the text" for e in at.expander)
    assert has_continuation == (r.family == "causal_lm")


def test_overall_spearman_switch(results):
    at = make_app(results["gpt2"]).run()
    at.session_state["corr_method"] = "spearman"
    at.run()
    no_exception(at)
    assert n_charts(at) >= 7


@pytest.mark.parametrize("family", ["gpt2", "bert", "encoder", "llama"])
def test_layer_analysis_page(results, family):
    r = results[family]
    at = make_app(r).run()
    at.switch_page(LAYERS).run()
    no_exception(at)
    assert at.title[0].value == "Layer Analysis"
    layer = at.select_slider(key="layer")  # the array index 0 … L−1, shown as layers 1 … L
    assert layer.value == 0 and list(layer.options) == [str(i) for i in range(1, r.n_layers + 1)]
    head = at.selectbox(key="head")
    assert head.options[0] == "mean over heads" and len(head.options) == r.n_heads + 1
    assert n_charts(at) >= 1  # the attention heatmap at least
    if r.attention is not None:
        assert n_charts(at) >= 3  # + entropy grid and clustering
    if r.attribution is not None:
        assert at.get("html"), "token shading missing"
    # the page computed the deeper views it shows (the result held none) and kept them in the session
    assert r.views == [] and at.session_state["result"].views == ["dla", "flow", "neuron_factors", "query_key"]
    full = at.session_state["result"]
    base = full.replace(dla=None, flow=None, neuron_factors=None, query_key=None, views=[])
    differ = [f.name for f in dataclasses.fields(r) if not results_equal(getattr(base, f.name), getattr(r, f.name))]
    # run metadata may differ: the views can come from the shared result cache, where another test stored the same
    # analysis (same cache key) from a run of its own
    assert not [d for d in differ if d not in ("timings", "duration_s", "cache_hit", "created_at")], differ
    n_neuron_images = (full.neuron_factors is not None) + (full.query_key is not None)  # top neurons, query–key
    assert len(at.get("image")) == 2 + n_neuron_images, "the two layer GIFs (animations are on by default)"
    labels = [t.label for t in at.tabs]
    page_tabs = [
        "Attention",
        "Heads",
        "Token attribution",
        "Logit lens",
        "Layer similarity (CKA)",
        "Animations",
        "Neurons & query–key",
        "Logit attribution",
        "Flow routes",
    ]
    assert [t for t in labels if t in page_tabs] == page_tabs  # inner tabs of a view may sit between them


def test_layer_analysis_head_and_layer_choice(results):
    r = results["llama"]
    at = make_app(r).run()
    at.switch_page(LAYERS).run()
    at.select_slider(key="layer").set_value(r.n_layers - 1)
    at.selectbox(key="head").set_value(1)
    at.run()
    no_exception(at)
    assert at.session_state["layer"] == r.n_layers - 1 and at.session_state["head"] == 1
    labels = [m.label for m in at.metric]
    assert "Entropy (nats)" in labels and "Role" in labels  # the single-head view
    assert any("head 1" in (c.proto.spec or "") for c in at.get("vega_lite_chart"))


def test_details_page(results):
    at = make_app(results["gpt2"]).run()
    at.switch_page(DETAILS).run()
    no_exception(at)


@pytest.mark.parametrize("page", [OVERALL, LAYERS, DETAILS])
def test_pages_without_result(page):
    at = make_app().run()
    if page != OVERALL:
        at.switch_page(page).run()
    no_exception(at)
    if page != DETAILS:
        assert any("Analyze" in i.value for i in at.info)
    assert not at.sidebar.download_button  # no export without a result


# ----------------------------------------------------------------------------------------------------------------
# The whole flow with a tiny model


def analyse_with(at, model: str, text: str, settle: bool = True):
    at.run()
    at.sidebar.selectbox(key="model_choice").set_value(OTHER_MODEL)
    at.run()
    at.sidebar.text_input(key="model_custom").input(model)
    at.sidebar.text_area(key="text").input(text)
    sidebar_button(at, "analyze").click()
    at.run()
    if settle:
        settle_views(at)
    return at


def settle_views(at) -> None:
    """Wait for the deeper views the analysis job started in the background (app.loading.background_views), so
    that no model runs after this point unless the test asks for one (ForwardCounter counts every module call of
    the process). The views stay uncollected: the next page run hands them to the session."""
    from app import jobs
    from app.loading import VIEWS_JOB

    try:
        sid = at.session_state[jobs.SESSION_KEY]
    except KeyError:
        return
    job = jobs.get({jobs.SESSION_KEY: sid}, VIEWS_JOB)
    if job is not None:
        jobs.wait(job, lambda *_: None, poll_s=0.01)


def test_whole_flow_tiny_model(tiny_dirs):
    at = analyse_with(make_app(), str(tiny_dirs["gpt2"]), "The dog sat on the log.")
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    r = at.session_state["result"]
    assert r is not None and r.text == "The dog sat on the log." and r.family == "causal_lm"
    assert at.title[0].value == "Overall" and n_charts(at) >= 7
    assert at.query_params["model"] == [str(tiny_dirs["gpt2"])] or at.query_params["model"] == str(tiny_dirs["gpt2"])
    assert len(at.session_state["session_log"]) == 1
    assert len(at.sidebar.get("download_button")) == 1
    # the same analysis again comes from the result cache
    sidebar_button(at, "analyze").click()
    at.run()
    assert at.session_state["result"].cache_hit
    assert len(at.session_state["session_log"]) == 2


def test_slider_head_and_settings_run_no_model(tiny_dirs):
    at = analyse_with(make_app(), str(tiny_dirs["llama"]), "Paris is the capital of")
    assert at.session_state["result"] is not None
    at.switch_page(LAYERS).run()
    no_exception(at)
    with ForwardCounter() as fc:
        at.select_slider(key="layer").set_value(1).run()
        at.selectbox(key="head").set_value(2).run()
        at.selectbox(key="head").set_value("mean over heads").run()
        at.selectbox(key="anim_head").set_value(1).run()  # the Animations tab's own head picker
        at.sidebar.toggle(key="compute_gradients").set_value(False).run()
        at.sidebar.selectbox(key="dtype").set_value("float32").run()
        at.sidebar.text_area(key="text").input("A different text that is not analysed yet").run()
        at.switch_page(OVERALL).run()
        at.session_state["corr_method"] = "spearman"
        at.run()
        at.toggle(key="metric_zoom").set_value(True).run()
        at.slider(key="gen_max_new").set_value(5).run()  # a generation setting: no generation
    no_exception(at)
    assert fc.calls == 0, f"{fc.calls} module calls on widget changes that asked for no model run"
    assert at.session_state["result"].text == "Paris is the capital of"


def test_generate_runs_only_on_its_button(tiny_dirs):
    at = analyse_with(make_app(), str(tiny_dirs["gpt2"]), "The cat sat on the")
    assert at.session_state["gen_text"] == ""
    at.slider(key="gen_max_new").set_value(4).run()
    assert at.session_state["gen_text"] == ""
    with ForwardCounter() as fc:
        at.button(key="gen_go").click().run()
    no_exception(at)
    assert fc.calls > 0
    assert at.session_state["gen_text"] != ""  # the continuation is kept in the session
    for loaded in _loaded_models():  # every model lock is free once the generation is over
        assert loaded.lock.acquire(blocking=False), loaded.model_id
        loaded.lock.release()
    # a rerun shows the kept continuation without generating again
    with ForwardCounter() as fc:
        at.run()
    assert fc.calls == 0


def _loaded_models():
    """The models in the app's st.cache_resource (loaded by the sidebar)."""
    import gc

    from core.model.loading import LoadedModel

    return [o for o in gc.get_objects() if isinstance(o, LoadedModel)]


def test_mask_word_picker(tiny_dirs):
    model = str(tiny_dirs["bert"])
    at = analyse_with(make_app(), model, "The cat sat on the mat.")
    assert at.session_state["result"].family == "masked_lm"
    picker = at.sidebar.selectbox(key="mask_word")
    assert "mat" in picker.options
    picker.set_value("mat")
    sidebar_button(at, "analyze").click()
    at.run()
    no_exception(at)
    r = at.session_state["result"]
    assert "[MASK]" in r.analysed_text and r.text == "The cat sat on the mat."
    assert r.predictions is None or r.predictions.kind == "mask_fill"


# ----------------------------------------------------------------------------------------------------------------
# Offline and errors


def test_offline_banner_keeps_text_and_result(results, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = "My own sentence, typed by hand."
    at = make_app(results["gpt2"]).run()
    at.sidebar.selectbox(key="model_choice").set_value("gpt2")
    at.run()
    at.sidebar.text_area(key="text").input(text)
    sidebar_button(at, "analyze").click()
    at.run()
    no_exception(at)
    assert any("not available" in e.value.lower() for e in at.error), [e.value for e in at.error]
    assert at.sidebar.text_area(key="text").value == text
    assert at.session_state["result"] is results["gpt2"]  # the finished result stays
    assert n_charts(at) >= 7
    switch = at.button(key="switch_bundled")
    switch.click()
    at.run()
    no_exception(at)
    assert not at.error
    r = at.session_state["result"]
    assert r.model.model_id == BUNDLED_ID and r.text == text
    assert at.sidebar.text_area(key="text").value == text


def test_input_error_is_a_message(tiny_dirs):
    at = analyse_with(make_app(), str(tiny_dirs["gpt2"]), "   ")
    no_exception(at)
    assert at.error and "empty" in at.error[0].value


def test_unexpected_error_is_generic(tiny_dirs, monkeypatch):
    import core.analysis.pipeline

    def boom(*a, **k):
        raise RuntimeError("internal detail that must not reach the page")

    monkeypatch.setattr(core.analysis.pipeline, "analyze", boom)
    at = analyse_with(make_app(), str(tiny_dirs["gpt2"]), "The cat sat.")
    no_exception(at)
    assert at.error and "went wrong" in at.error[0].value
    assert all("internal detail" not in e.value for e in at.error)
    assert at.sidebar.text_area(key="text").value == "The cat sat."


def test_missing_folder_is_unavailable():
    at = analyse_with(make_app(), "/nonexistent/model/folder", "The cat sat.")
    no_exception(at)
    assert at.error and at.button(key="switch_bundled")


# ----------------------------------------------------------------------------------------------------------------
# URL and example texts


def test_url_opens_with_model():
    at = make_app()
    at.query_params["model"] = "gpt2"
    at.run()
    no_exception(at)
    assert at.sidebar.selectbox(key="model_choice").value == "gpt2"
    assert at.sidebar.text_area(key="text").value == "The capital of France is"


def test_url_with_custom_model():
    at = make_app()
    at.query_params["model"] = "some-org/some-model"
    at.run()
    assert at.sidebar.selectbox(key="model_choice").value.startswith("Other")
    assert at.sidebar.text_input(key="model_custom").value == "some-org/some-model"


def test_example_follows_model_but_user_text_is_kept():
    at = make_app().run()
    at.sidebar.selectbox(key="model_choice").set_value("bert-base-uncased").run()
    assert "[MASK]" in at.sidebar.text_area(key="text").value
    at.sidebar.text_area(key="text").input("my text").run()
    at.sidebar.selectbox(key="model_choice").set_value("gpt2").run()
    assert at.sidebar.text_area(key="text").value == "my text"
    assert at.query_params["model"] in ("gpt2", ["gpt2"])


# ----------------------------------------------------------------------------------------------------------------
# The export bundle as plain functions (AppTest cannot read download bytes)


def test_session_entry_and_bundle(results):
    from app.sidebar import session_entry

    r = results["gpt2"]
    entry = session_entry(r)
    assert entry["model"] == r.model.model_id and entry["text"] == r.text
    from core.export import zip_export as export
    from core.infra.options import ExportOptions

    data = export.build_zip(r, ExportOptions(session_entries=(entry,)))
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "session_log.html" in names and any(n.endswith(".csv") for n in names)


def test_a_failing_section_shows_a_message_not_a_traceback(results, monkeypatch):
    from core.present import tables

    def broken(*a, **k):
        raise ValueError("boom")

    monkeypatch.setattr(tables, "attention_frame", broken)
    at = make_app(results["gpt2"]).run()
    at.switch_page(LAYERS).run()
    no_exception(at)
    assert any("could not be drawn" in e.value for e in at.error)
    assert n_charts(at) >= 3  # the other sections still draw


def test_stop_button_sets_the_event(tiny_dirs):
    import threading

    at = analyse_with(make_app(), str(tiny_dirs["gpt2"]), "The cat sat on the")
    event = threading.Event()
    at.session_state["gen_stop"] = event
    at.button(key="gen_stop_button").click().run()
    no_exception(at)
    assert event.is_set()


def test_long_text_attention_window(results):
    import numpy as np

    base = results["gpt2"]  # the tiny models hold 128 positions: widen a real result to 150 tokens
    T = 150
    L, H = base.n_layers, base.n_heads
    att = np.tril(np.ones((L, H, T, T), dtype=np.float32))
    att /= att.sum(-1, keepdims=True)
    r = base.replace(
        attentions=att,
        tokens=["t"] * T,
        display_tokens=[f"w{i}" for i in range(T)],
        token_ids=list(range(T)),
        special_mask=[False] * T,
        attention=None,
        attribution=None,
        logit_lens=None,
        cache_key="long-text",
    )
    assert r.n_tokens > 128
    at = make_app(r).run()
    at.switch_page(LAYERS).run()
    no_exception(at)
    window = at.slider(key="att_window")
    assert window.value == r.n_tokens - 96  # causal LM: the window ends at the last token
    window.set_value(0).run()
    no_exception(at)


def test_every_caption_key_the_app_uses_is_documented():
    """Captions come from core.present.docs; a key the app names must exist there (no silent empty captions)."""
    import re
    from pathlib import Path

    from core.present.docs import DOCS

    root = Path(__file__).resolve().parents[1]
    used = set()
    for path in list((root / "app").glob("*.py")) + list((root / "pages").glob("*.py")):
        used |= set(re.findall(r'(?:show_caption|caption|metric_label)\("([a-z_0-9]+)"', path.read_text()))
    assert used, "expected the app to use documentation captions"
    assert sorted(used - set(DOCS)) == []
