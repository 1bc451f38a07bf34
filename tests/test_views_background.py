"""Issue 24: the deeper views are computed in the background right after the analysis (app.loading.
background_views, a follow-on job of the analysis job). Through AppTest on the tiny GPT-2: the analysis job starts
the views job; Layer Analysis opened later takes its result without running the model again; opened while it runs,
the page draws each finished view at once, says which are still computed, and waits only for those (one add_views
call in all); a new Analyze supersedes the views job of the old result. Plus the runner's `supersede` and
`publish`, and add_views's `partial` callback against the final result."""

from __future__ import annotations

import threading
import uuid

import pytest
from test_app_pages import LAYERS, ForwardCounter, analyse_with, make_app, no_exception, sidebar_button

from app import jobs
from app.loading import VIEWS_JOB
from core.analysis import pipeline

LAYER_VIEWS = ["dla", "flow", "neuron_factors", "query_key"]


def _text() -> str:
    """A text no earlier test analysed (the process-wide result cache must not answer with its views)."""
    return f"The cat sat on the mat {uuid.uuid4().hex[:6]}."


def _state(at) -> dict:
    return {jobs.SESSION_KEY: at.session_state[jobs.SESSION_KEY]}


def _until(predicate) -> None:
    """Poll until `predicate()` holds (a guard against hanging, not a timing claim)."""
    done = threading.Event()
    for _ in range(6000):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError("gave up waiting")


def _finish(job: jobs.Job) -> jobs.Job:
    return jobs.wait(job, lambda *_: None, poll_s=0.01)


@pytest.fixture
def add_views_calls(monkeypatch):
    """Every call of pipeline.add_views (the views job's work), as the list of views it was asked for."""
    calls: list[list[str]] = []
    real = pipeline.add_views

    def spy(loaded, result, views="all", **kw):
        calls.append(list(pipeline.view_names(views)))
        return real(loaded, result, views, **kw)

    monkeypatch.setattr(pipeline, "add_views", spy)
    return calls


def _gate_flow(monkeypatch) -> tuple[threading.Event, list[bool]]:
    """The flow step waits for the returned gate; `finished` gets True once it has returned."""
    gate, finished = threading.Event(), []
    label, step = pipeline.VIEWS["flow"]

    def gated(ctx):
        assert gate.wait(60), "the test never opened the gate"
        out = step(ctx)
        finished.append(True)
        return out

    monkeypatch.setitem(pipeline.VIEWS, "flow", (label, gated))
    return gate, finished


def test_partial_results_lead_to_the_final_one(tiny_gpt2):
    r = pipeline.analyze(tiny_gpt2, _text(), compute_gradients=False)
    parts: list = []
    full = pipeline.add_views(tiny_gpt2, r, "all", partial=parts.append)
    assert [p.views for p in parts] == [list(pipeline.VIEWS)[: i + 1] for i in range(len(pipeline.VIEWS))]
    assert parts[-1].views == full.views and parts[0].flow is None and parts[0].dla is not None
    assert parts[0].dla is full.dla and parts[-1].query_key is full.query_key  # the same sections, not recomputed


def test_supersede_cancels_and_forgets_the_running_job():
    state: dict = {}
    gate = threading.Event()

    def slow(job):
        gate.wait(30)
        job.report("after the gate", 1.0)  # the cancelled job stops here
        return "old"

    old = jobs.start(state, "views", slow, what="old views")
    assert isinstance(old, jobs.Job)
    assert isinstance(jobs.start(state, "views", lambda j: "x", what="views"), str)  # refused without supersede
    new = jobs.start(state, "views", lambda j: (j.publish("half"), "new")[1], what="new views", supersede=True)
    assert isinstance(new, jobs.Job) and jobs.get(state, "views") is new and old.cancel_requested
    assert _finish(new).result == "new" and new.partial == "half"
    gate.set()
    assert _finish(old).status == jobs.CANCELLED and old.result is None and jobs.get(state, "views") is new


def test_the_analysis_starts_the_views_and_the_page_takes_them(tiny_dirs, add_views_calls):
    """The user stays on Overall while the views are computed; Layer Analysis later runs no model at all."""
    at = analyse_with(make_app(), str(tiny_dirs["gpt2"]), _text(), settle=False)
    no_exception(at)
    result = jobs.get(_state(at), "analysis").result
    job = jobs.get(_state(at), VIEWS_JOB)
    assert job is not None and job.meta["key"] == result.cache_key and result.views == []
    assert _finish(job).ok and job.result.views == list(pipeline.VIEWS)
    at.run()  # any page's next run hands the finished views to the session
    assert at.session_state["result"].views == list(pipeline.VIEWS)
    with ForwardCounter() as fc:
        at.switch_page(LAYERS).run()
    no_exception(at)
    assert fc.calls == 0 and add_views_calls == [list(pipeline.VIEWS)]
    assert not [i.value for i in at.info if "Still being computed" in i.value]


def test_the_page_shows_finished_views_while_the_others_are_computed(tiny_dirs, add_views_calls, monkeypatch):
    from app import loading, routes_widgets

    gate, flow_done = _gate_flow(monkeypatch)
    drawn: list[tuple[str, bool]] = []
    pending: list[list[str]] = []
    for name in ("draw_dla", "draw_flow"):
        real = getattr(routes_widgets, name)
        monkeypatch.setattr(
            routes_widgets, name, lambda r, _n=name, _f=real: (drawn.append((_n, bool(flow_done))), _f(r))[1]
        )
    real_line, real_wait = loading.pending_line, jobs.wait
    monkeypatch.setattr(loading, "pending_line", lambda names: (pending.append(list(names)), real_line(names))[1])

    def wait_then_open(job, show, poll_s=0.2):  # the page has drawn what is ready and now waits: let flow finish
        gate.set()
        return real_wait(job, show, poll_s)

    at = analyse_with(make_app(), str(tiny_dirs["gpt2"]), _text(), settle=False)
    job = jobs.get(_state(at), VIEWS_JOB)
    assert job is not None
    _until(lambda: job.partial is not None and "dla" in job.partial.views)  # DLA lands, flow waits for the gate
    monkeypatch.setattr(jobs, "wait", wait_then_open)
    at.switch_page(LAYERS).run()
    no_exception(at)
    assert drawn == [("draw_dla", False), ("draw_flow", True)]  # DLA at once, flow once it landed
    assert pending and pending[0] == ["flow", "neuron_factors", "query_key"]
    assert at.session_state["result"].views == list(pipeline.VIEWS)
    assert add_views_calls == [list(pipeline.VIEWS)]  # the page waited for the job, it did not compute again
    assert not [i.value for i in at.info if "Still being computed" in i.value]  # every slot was filled


def test_a_new_analysis_supersedes_the_views_of_the_old_one(tiny_dirs, add_views_calls, monkeypatch):
    gate, _ = _gate_flow(monkeypatch)
    at = analyse_with(make_app(), str(tiny_dirs["gpt2"]), _text(), settle=False)
    first = jobs.get(_state(at), VIEWS_JOB)
    assert first is not None and first.running
    text_b = _text()
    at.sidebar.text_area(key="text").input(text_b)
    real_cancel = jobs.cancel

    def cancel_then_open(state, name):  # the old views job holds the model until its flow step returns
        out = real_cancel(state, name)
        gate.set()
        return out

    monkeypatch.setattr(jobs, "cancel", cancel_then_open)
    sidebar_button(at, "analyze").click()
    at.run()
    no_exception(at)
    result = at.session_state["result"]
    assert result.text == text_b and first.cancel_requested
    second = jobs.get(_state(at), VIEWS_JOB)
    assert second is not None and second is not first and second.meta["key"] == result.cache_key
    assert _finish(first).status == jobs.CANCELLED and first.result is None
    assert _finish(second).ok
    at.run()
    assert at.session_state["result"].text == text_b and at.session_state["result"].views == list(pipeline.VIEWS)


def test_the_export_waits_for_the_running_views_job(tiny_gpt2, tiny_dirs, add_views_calls, monkeypatch):
    """A download clicked while the views are computed in the background takes the job's result (one add_views)."""
    import app.sidebar as sidebar
    from app.loading import start_views
    from core.infra.options import ExportOptions

    built = []
    monkeypatch.setattr(sidebar, "build_zip", lambda r, options, save=False: built.append(r) or b"zip")
    gate, _ = _gate_flow(monkeypatch)
    r = pipeline.analyze(tiny_gpt2, _text(), compute_gradients=False)
    load = (str(tiny_dirs["gpt2"]), "float32", "cpu")
    job = start_views({jobs.SESSION_KEY: uuid.uuid4().hex}, r, load, list(pipeline.VIEWS))
    assert isinstance(job, jobs.Job)
    threading.Timer(0.2, gate.set).start()  # whenever it opens, the export must wait for the job, not compute
    assert sidebar.export_bytes(r, ExportOptions(), load, job) == b"zip"
    assert built[-1] is job.result and built[-1].views == list(pipeline.VIEWS)
    assert add_views_calls == [list(pipeline.VIEWS)]
