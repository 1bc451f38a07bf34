"""AppTest of the Compare page and of the layer × layer CKA on the Layer Analysis page: renders with injected
results, runs no model on widget changes (a global forward hook counts every module call), runs each analysis
once on Compare (a run already in the session is reused), and restores the choice from the URL."""

from __future__ import annotations

import pytest
from test_app_pages import (
    LAYERS,
    ForwardCounter,
    analyse_with,
    make_app,
    n_charts,
    no_exception,
)
from test_compare import gpt2_depths  # noqa: F401  (fixture: tiny GPT-2 with 6 and 12 layers, one tokenizer)

from app.state import OTHER_MODEL

COMPARE = "../pages/compare.py"


@pytest.fixture(scope="module")
def runs(gpt2_depths, tiny_gpt2, tiny_bert):  # noqa: F811
    from core.analysis.pipeline import analyze

    text = "The cat sat on the mat."
    kw = {"ig_steps": 2}
    return {
        "g6": analyze(gpt2_depths[6], text, **kw),
        "g12": analyze(gpt2_depths[12], text, **kw),
        "gpt2": analyze(tiny_gpt2, text, **kw),
        "gpt2_b": analyze(tiny_gpt2, "The dog sat on the log today.", **kw),
        "bert": analyze(tiny_bert, text, **kw),
    }


def compare_app(a, b, **state):
    at = make_app(None, cmp_result_a=a, cmp_result_b=b, **state).run()
    at.switch_page(COMPARE).run()
    return at


def subheaders(at) -> list[str]:
    return [s.value for s in at.subheader]


def test_page_without_results_asks_for_a_comparison():
    at = make_app().run()
    at.switch_page(COMPARE).run()
    no_exception(at)
    assert at.title[0].value == "Compare"
    assert any("Compare" in i.value for i in at.info)
    assert at.button(key="cmp_go")
    assert at.radio(key="cmp_mode").value == "text"  # B defaults to A's model with a second text
    assert at.text_area(key="cmp_text_a").value == at.sidebar.text_area(key="text").value
    assert at.text_area(key="cmp_text_b").value != at.text_area(key="cmp_text_a").value


def test_two_texts_on_one_model(runs):
    at = compare_app(runs["gpt2"], runs["gpt2_b"])
    no_exception(at)
    assert not at.error
    heads = subheaders(at)
    assert "Attention entropy: B − A" in heads and "Predictions" in heads and "Token attribution" in heads
    assert at.radio(key="cmp_entropy")  # the entropy-difference heatmap is drawn
    assert at.toggle(key="cmp_axis").value is True  # same layer count: absolute layers by default
    assert n_charts(at) >= 6  # five metric overlays + the entropy difference
    assert any("different texts" in i.value for i in at.info)  # no CKA, said calmly
    assert len(at.get("html")) == 3  # the runs' legend, the token shading of A and B


def test_predictions_table_fits_a_half_width_column(runs):
    """At 1 280 px the table sits in ≈ 560 px: five small columns, probabilities as plain numbers (no progress bars,
    which cut p(B)); tokens read as in every other table (no blank cell, partial bytes by value)."""
    import json

    from core.present.compare import prediction_rows
    from core.present.tables import readable_token
    from core.studies.compare import compare

    at = compare_app(runs["gpt2"], runs["gpt2_b"])
    table = next(d for d in at.dataframe if "p(B)" in d.value.columns)
    assert list(table.value.columns) == ["rank", "A", "p(A)", "B", "p(B)"]
    cols = json.loads(table.proto.columns)
    for c in ("rank", "A", "p(A)", "B", "p(B)"):
        assert cols[c]["width"] == "small" and cols[c]["type_config"]["type"] != "progress"
    rows = prediction_rows(compare(runs["gpt2"], runs["gpt2_b"]))
    shown = list(table.value["A"])
    assert all(v and v.strip() for v in shown)  # never a blank cell
    assert shown == [readable_token(r["A"]) for r in rows]


def test_six_against_twelve_layers_relative_depth_and_cka(runs):
    at = compare_app(runs["g6"], runs["g12"])
    no_exception(at)
    assert at.toggle(key="cmp_axis").value is False  # relative depth
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert sum("relative depth" in s for s in specs) == 5
    assert any('"CKA"' in s for s in specs)  # the CKA heatmap
    assert any("6 layers" in c.value and "12" in c.value for c in at.caption)
    assert any("one architecture only" in i.value for i in at.info)  # no entropy difference across depths
    at.toggle(key="cmp_axis").set_value(True).run()
    no_exception(at)
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert sum("relative depth" in s for s in specs) == 0


def test_different_tokenizations_give_the_calm_line(runs):
    at = compare_app(runs["gpt2"], runs["bert"])
    no_exception(at)
    assert not at.error
    assert any("tokenizers differ" in i.value for i in at.info)
    assert not _has_toggle(at, "cmp_debiased")  # no CKA, so no CKA option either
    assert len(at.dataframe) == 1  # predictions side by side still drawn


def _has_toggle(at, key) -> bool:
    return any(t.key == key for t in at.toggle)


def test_widget_changes_run_no_model(runs):
    at = compare_app(runs["g6"], runs["g12"])
    with ForwardCounter() as fc:
        at.toggle(key="cmp_axis").set_value(True).run()
        at.toggle(key="cmp_debiased").set_value(True).run()
        at.radio(key="cmp_attr_method").set_value("grad_x_input").run()
        at.text_area(key="cmp_text_b").input("Another text that nobody analysed").run()
        at.radio(key="cmp_mode").set_value("model").run()
        at.selectbox(key="cmp_model_b").set_value("gpt2").run()
    no_exception(at)
    assert fc.calls == 0, f"{fc.calls} module calls on widget changes"
    assert at.session_state["cmp_result_b"] is runs["g12"]
    at2 = compare_app(runs["gpt2"], runs["gpt2_b"])
    with ForwardCounter() as fc:
        at2.radio(key="cmp_entropy").set_value("normalized_entropy").run()
    no_exception(at2)
    assert fc.calls == 0


def test_compare_button_runs_each_analysis_once_and_reuses_the_sidebar_run(tiny_dirs):
    model = str(tiny_dirs["gpt2"])
    at = analyse_with(make_app(), model, "The cat sat on the mat, for the Compare page.")
    assert at.session_state["result"] is not None
    at.switch_page(COMPARE).run()
    assert at.selectbox(key="cmp_model_a").value == OTHER_MODEL
    assert at.text_input(key="cmp_custom_a").value == model
    at.text_area(key="cmp_text_b").input("The dog sat on the log, only on the Compare page.").run()
    with ForwardCounter() as fc:
        at.button(key="cmp_go").click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert fc.calls > 0  # run B was computed
    a, b = at.session_state["cmp_result_a"], at.session_state["cmp_result_b"]
    assert a is at.session_state["result"]  # run A is the sidebar's run, reused as is
    assert b.text == "The dog sat on the log, only on the Compare page." and len(at.session_state["session_log"]) == 2
    assert at.query_params["model"] in (model, [model]) and at.query_params["model_b"] in (model, [model])
    with ForwardCounter() as fc:  # the same comparison again: nothing runs
        at.button(key="cmp_go").click().run()
    assert fc.calls == 0 and at.session_state["cmp_result_b"] is b
    assert len(at.session_state["session_log"]) == 2


def test_an_input_error_is_one_line(tiny_dirs):
    at = make_app().run()
    at.switch_page(COMPARE).run()
    at.selectbox(key="cmp_model_a").set_value(OTHER_MODEL).run()
    at.text_input(key="cmp_custom_a").input(str(tiny_dirs["gpt2"]))
    at.text_area(key="cmp_text_a").input("The cat sat.")
    at.text_area(key="cmp_text_b").input("   ").run()
    at.button(key="cmp_go").click().run()
    no_exception(at)
    assert at.error and at.error[0].value.startswith("Run B:") and "empty" in at.error[0].value
    assert at.session_state["cmp_result_a"] is None  # nothing half-stored


def test_url_restores_page_and_both_models():
    at = make_app()
    at.query_params["page"] = "compare"
    at.query_params["model"] = "gpt2"
    at.query_params["model_b"] = "some-org/some-model"
    at.run()
    no_exception(at)
    assert at.title[0].value == "Compare"
    assert at.selectbox(key="cmp_model_a").value == "gpt2"
    assert at.radio(key="cmp_mode").value == "model"
    assert at.selectbox(key="cmp_model_b").value == OTHER_MODEL
    assert at.text_input(key="cmp_custom_b").value == "some-org/some-model"


def test_layer_analysis_shows_layer_cka_and_its_toggle_runs_no_model(runs):
    r = runs["g6"]
    at = make_app(r).run()
    at.switch_page(LAYERS).run()
    no_exception(at)
    specs = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert any('"CKA"' in s for s in specs)
    assert any("Largest move between neighbouring layers" in c.value for c in at.caption)
    with ForwardCounter() as fc:
        at.toggle(key="layer_cka_debiased").set_value(True).run()
    no_exception(at)
    assert fc.calls == 0


def _left_job(at, work, computed=("b",)):
    """A comparison job as a run the user navigated away from leaves it: in app.jobs' registry of the session."""
    from app import compare_widgets, jobs

    state = {jobs.SESSION_KEY: at.session_state[jobs.SESSION_KEY]}
    spec = ("m", "t", None, "auto")
    job = jobs.start(
        state,
        compare_widgets.COMPARE_JOB,
        work,
        what="the comparison",
        meta={"specs": {"a": spec, "b": spec}, "computed": computed},
    )
    assert isinstance(job, jobs.Job)
    jobs.wait(job, lambda *_: None, poll_s=0.01)
    return job


def test_a_comparison_left_running_is_picked_up_by_the_next_page_run(runs):
    """Leaving the page stops the script, not the job: the next visit of the page stores its runs."""
    at = make_app(None).run()
    _left_job(at, lambda job: {"a": runs["g6"], "b": runs["g12"]})
    at.switch_page(COMPARE).run()
    no_exception(at)
    assert at.session_state["cmp_result_a"] is runs["g6"] and at.session_state["cmp_result_b"] is runs["g12"]
    assert len(at.session_state["session_log"]) == 1  # only the computed run enters the session log
    assert any('"CKA"' in c.proto.spec for c in at.get("vega_lite_chart"))
    assert at.get("download_button")  # the comparison ZIP
    at.run()  # collected once: a rerun adds nothing to the session log
    assert len(at.session_state["session_log"]) == 1


def test_a_failed_analysis_is_one_line_and_nothing_is_stored(runs):
    from app import compare_widgets
    from core.infra.errors import InputError

    at = make_app(None).run()

    def failing(job):
        try:
            raise RuntimeError("internal detail that must not reach the page")
        except RuntimeError as exc:
            raise compare_widgets.jobs.JobError(compare_widgets._error_line("b", exc), "internal") from exc

    _left_job(at, failing)
    at.switch_page(COMPARE).run()
    no_exception(at)
    assert at.session_state["cmp_result_a"] is None
    assert [e.value for e in at.error] == [
        "Run B: something went wrong during the analysis. The details are in the server log."
    ]

    def bad(job):
        exc = InputError("the text is empty: type a sentence to analyse")
        raise compare_widgets.jobs.JobError(compare_widgets._error_line("a", exc), "input") from exc

    _left_job(at, bad, computed=("a",))
    at.run()
    assert at.error[0].value == "Run A: the text is empty: type a sentence to analyse"


def test_neither_run_has_predictions_says_a_shared_reason_once():
    from app.compare_widgets import neither_has_predictions

    same = "an encoder has no language-model head"
    assert neither_has_predictions(same, same).count(same) == 1
    assert neither_has_predictions("x", "y") == "Neither run has predictions. A: x B: y"
