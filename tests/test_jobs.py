"""The app's background-job runner (app/jobs.py): progress, cancel, one-line errors, per-session isolation, a
second start refused, the result kept until replaced, bounded threads — and, through AppTest, a job that outlives
the script run (page) that started it: a corpus run and a comparison left running while the user visits another
page are shown again, finished, when the user comes back, with the Corpus inputs as they were."""

from __future__ import annotations

import threading
import time

import pytest
from test_app_pages import OVERALL, make_app, no_exception

from app import jobs
from core.infra.errors import InputError, ModelUnavailableError

CORPUS, COMPARE = "../pages/corpus.py", "../pages/compare.py"
TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "A bird flew over the house.", "Dogs bark."]


def _session() -> dict:
    state: dict = {}
    jobs.session_id(state)
    return state


def _until(predicate, what: str, limit_s: float = 30.0) -> None:
    """Poll until `predicate()` holds (a guard against hanging, not a timing claim)."""
    end = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.01)


def _finish(job: jobs.Job) -> jobs.Job:
    return jobs.wait(job, lambda *_: None, poll_s=0.01)


# ----------------------------------------------------------------------------------------------------------------
# The runner as plain functions


def test_result_progress_and_replacement():
    state = _session()
    gate = threading.Event()

    def work(job):
        job.report("half way", 0.5)
        gate.wait(30)
        job.report("beyond", 7.0)  # clipped to [0, 1]
        return 42

    job = jobs.start(state, "x", work, what="the test job")
    assert isinstance(job, jobs.Job) and jobs.get(state, "x") is job
    _until(lambda: job.progress() == ("half way", 0.5), "the first progress report")
    assert job.running and job.result is None
    gate.set()
    _finish(job)
    assert job.ok and job.result == 42 and job.progress() == ("beyond", 1.0) and job.error is None
    assert jobs.get(state, "x") is job  # kept until replaced
    again = jobs.start(state, "x", lambda j: 43, what="the test job")
    assert isinstance(again, jobs.Job) and again is not job
    assert _finish(again).result == 43 and jobs.get(state, "x") is again


def test_a_second_start_while_one_runs_is_refused_with_one_line():
    state = _session()
    gate = threading.Event()
    first = jobs.start(state, "x", lambda j: gate.wait(30), what="the corpus analysis")
    assert isinstance(first, jobs.Job)
    second = jobs.start(state, "x", lambda j: "never", what="the corpus analysis")
    assert second == "The corpus analysis is still running: wait for it to finish or cancel it first."
    assert "\n" not in second and jobs.get(state, "x") is first
    other = jobs.start(state, "y", lambda j: "another name runs", what="another job")  # other names are free
    assert isinstance(other, jobs.Job) and _finish(other).result == "another name runs"
    gate.set()
    _finish(first)
    assert isinstance(jobs.start(state, "x", lambda j: 1, what="the corpus analysis"), jobs.Job)


def test_cancel_stops_at_the_next_progress_report():
    state = _session()
    gate, steps = threading.Event(), []

    def work(job):
        for i in range(100):
            job.report(f"step {i}", i / 100)
            steps.append(i)
            if i == 2:
                gate.wait(30)
        return "finished"

    job = jobs.start(state, "x", work, what="the test job")
    assert isinstance(job, jobs.Job)
    _until(lambda: len(steps) == 3, "three steps")
    assert jobs.cancel(state, "x") and job.cancel_requested
    gate.set()
    _finish(job)
    assert job.status == jobs.CANCELLED and job.result is None and steps == [0, 1, 2]
    assert job.error == "The test job was cancelled; start it again when you like."
    assert not jobs.cancel(state, "x")  # nothing runs any more


@pytest.mark.parametrize(
    "exc, kind, line",
    [
        (InputError("the text is empty: type a sentence"), "input", "the text is empty: type a sentence"),
        (ModelUnavailableError("no-such/model is not reachable\nmore detail"), "unavailable", None),
        (RuntimeError("internal detail\nTraceback (most recent call last)"), "internal", None),
        (jobs.JobError("Run B: the text is empty", "input"), "input", "Run B: the text is empty"),
    ],
)
def test_errors_are_one_line(exc, kind, line):
    state = _session()

    def work(job):
        raise exc

    job = _finish(jobs.start(state, "x", work, what="the analysis"))  # type: ignore[arg-type]
    assert job.status == jobs.FAILED and job.error_kind == kind and "\n" not in (job.error or "x\n")
    assert "Traceback" not in job.error and "internal detail" not in job.error
    if line is not None:
        assert job.error == line
    if kind == "internal":
        assert job.error == "Something went wrong during the analysis. The details are in the server log."
    if kind == "unavailable":
        assert job.error == "no-such/model is not reachable"


def test_sessions_are_isolated():
    a, b = _session(), _session()
    assert jobs.session_id(a) != jobs.session_id(b)
    gate = threading.Event()
    ja = jobs.start(a, "corpus", lambda j: gate.wait(30) and "A's", what="A's job")
    jb = jobs.start(b, "corpus", lambda j: "B's", what="B's job")  # B is not refused by A's running job
    assert isinstance(ja, jobs.Job) and isinstance(jb, jobs.Job)
    assert _finish(jb).result == "B's" and jobs.get(b, "corpus") is jb and jobs.get(a, "corpus") is ja
    assert not jobs.cancel(b, "corpus") and not ja.cancel_requested  # B cannot cancel A's job
    gate.set()
    assert _finish(ja).result == "A's"
    assert jobs.get({jobs.SESSION_KEY: "a session that never started a job"}, "corpus") is None


def test_threads_are_bounded():
    """At most MAX_WORKERS jobs run at once; the next waits (queued) and runs when one ends."""
    gate = threading.Event()
    started: list[int] = []
    lock = threading.Lock()

    def work(job):
        with lock:
            started.append(1)
        gate.wait(30)
        return "done"

    running = [jobs.start(_session(), "x", work, what="a job") for _ in range(jobs.MAX_WORKERS)]
    _until(lambda: len(started) == jobs.MAX_WORKERS, "the first jobs to start")
    extra = jobs.start(_session(), "x", work, what="a job")
    assert isinstance(extra, jobs.Job)
    time.sleep(0.2)  # give a (wrongly) free worker the chance to start it
    assert extra.status == jobs.QUEUED and len(started) == jobs.MAX_WORKERS
    assert extra.progress()[0] == "Waiting for a free worker"
    gate.set()
    for j in [*running, extra]:
        assert _finish(j).result == "done"  # type: ignore[arg-type]


def test_a_job_cancelled_before_it_starts_never_runs():
    gate = threading.Event()
    blockers = [jobs.start(_session(), "x", lambda j: gate.wait(30), what="a job") for _ in range(jobs.MAX_WORKERS)]
    state = _session()
    ran = []
    job = jobs.start(state, "x", lambda j: ran.append(1), what="the queued job")
    assert isinstance(job, jobs.Job) and jobs.cancel(state, "x")
    gate.set()
    _finish(job)
    for b in blockers:
        _finish(b)  # type: ignore[arg-type]
    assert job.status == jobs.CANCELLED and ran == []


# ----------------------------------------------------------------------------------------------------------------
# In the app: a job outlives the page that started it


def _gpt2_app(tiny_dirs, **state):
    return make_app(
        None, model_choice="Other: a Hugging Face id or a local folder", model_custom=str(tiny_dirs["gpt2"]), **state
    )


def test_corpus_inputs_and_result_survive_a_visit_to_another_page(tiny_dirs):
    at = _gpt2_app(tiny_dirs).run()
    at.switch_page(CORPUS).run()
    at.radio(key="corpus_source").set_value("Paste lines").run()
    pasted = "\n".join(TEXTS)
    at.text_area(key="corpus_paste").input(pasted).run()
    at.number_input(key="corpus_bootstrap").set_value(20).run()
    at.button(key="corpus_run").click().run()
    no_exception(at)
    result = at.session_state["corpus_result"]
    assert result is not None and result.n_texts == len(TEXTS) and result.settings.bootstrap == 20
    at.switch_page(OVERALL).run()
    no_exception(at)
    at.run()  # a second run of another page: Streamlit would have forgotten the Corpus widgets' values by now
    at.switch_page(CORPUS).run()
    no_exception(at)
    assert at.radio(key="corpus_source").value == "Paste lines"
    assert at.text_area(key="corpus_paste").value == pasted
    assert at.number_input(key="corpus_bootstrap").value == 20
    assert at.session_state["corpus_result"] is result and at.get("download_button")


def test_an_uploaded_file_is_kept_for_the_next_visit(tiny_dirs):
    from app.corpus_widgets import SOURCES, read_texts

    at = _gpt2_app(tiny_dirs, corpus_file=("lines.txt", "\n".join(TEXTS).encode())).run()
    at.switch_page(CORPUS).run()
    no_exception(at)
    assert at.radio(key="corpus_source").value == SOURCES[0]
    assert any("Using 'lines.txt'" in c.value for c in at.caption)
    assert list(read_texts(at.session_state).texts) == TEXTS
    at.radio(key="corpus_source").set_value(SOURCES[1]).run()  # a .txt is not the CSV the source asks for
    with pytest.raises(InputError, match="upload a file first"):
        read_texts(at.session_state)


def test_a_corpus_run_left_running_is_shown_finished_on_return(tiny_dirs, tiny_gpt2):
    """The job runs while the user is on another page (whose runs neither wait for it nor stop it); back on Corpus
    the page shows its result."""
    from app import corpus_widgets
    from core.studies.corpus import CorpusSettings, analyze_corpus, texts_from_lines

    at = _gpt2_app(tiny_dirs).run()
    at.switch_page(CORPUS).run()
    state = {jobs.SESSION_KEY: at.session_state[jobs.SESSION_KEY]}
    gate = threading.Event()

    def work(job):
        job.report("1 / 4 texts", 0.2)
        gate.wait(30)
        return analyze_corpus(tiny_gpt2, texts_from_lines("\n".join(TEXTS)), CorpusSettings(bootstrap=10))

    job = jobs.start(state, corpus_widgets.CORPUS_JOB, work, what="the corpus analysis")
    assert isinstance(job, jobs.Job)
    at.switch_page(OVERALL).run()  # the user wanders off while it runs
    no_exception(at)
    assert job.running and "corpus_result" not in at.session_state
    gate.set()
    _finish(job)
    at.switch_page(CORPUS).run()
    no_exception(at)
    assert at.session_state["corpus_result"] is job.result and job.collected
    assert len(at.get("vega_lite_chart")) >= 2


def test_a_second_press_while_the_corpus_job_runs_is_refused(tiny_dirs):
    from app import corpus_widgets

    at = _gpt2_app(tiny_dirs, corpus_source="Paste lines", corpus_paste="\n".join(TEXTS)).run()
    at.switch_page(CORPUS).run()
    state = {jobs.SESSION_KEY: at.session_state[jobs.SESSION_KEY]}
    gate = threading.Event()
    job = jobs.start(state, corpus_widgets.CORPUS_JOB, lambda j: gate.wait(30) and None, what="the corpus analysis")
    assert isinstance(job, jobs.Job)
    threading.Timer(1.0, gate.set).start()  # the page follows the job until it ends
    at.button(key="corpus_run").click().run()
    no_exception(at)
    assert any("is still running" in w.value for w in at.warning)
    assert jobs.get(state, corpus_widgets.CORPUS_JOB) is job  # the running job was not replaced


def test_a_comparison_left_running_is_shown_on_return(tiny_dirs):
    from app import compare_widgets
    from core.analysis.pipeline import analyze

    at = _gpt2_app(tiny_dirs).run()
    at.switch_page(COMPARE).run()
    at.text_area(key="cmp_text_a").input("The cat sat on the mat.").run()
    state = {jobs.SESSION_KEY: at.session_state[jobs.SESSION_KEY]}
    gate = threading.Event()
    from core.model.loading import load_model

    loaded = load_model(str(tiny_dirs["gpt2"]))

    def work(job):
        gate.wait(30)
        return {"a": analyze(loaded, "The cat sat on the mat."), "b": analyze(loaded, "The dog sat on the log.")}

    spec = ("m", "t", None, "auto")
    job = jobs.start(
        state,
        compare_widgets.COMPARE_JOB,
        work,
        what="the comparison",
        meta={"specs": {"a": spec, "b": spec}, "computed": ("a", "b")},
    )
    assert isinstance(job, jobs.Job)
    at.switch_page(OVERALL).run()
    no_exception(at)
    assert job.running and at.session_state["cmp_result_a"] is None
    gate.set()
    _finish(job)
    at.switch_page(COMPARE).run()
    no_exception(at)
    assert at.text_area(key="cmp_text_a").value == "The cat sat on the mat."  # the input kept as well
    assert at.session_state["cmp_result_b"].text == "The dog sat on the log."
    assert at.get("download_button")


def test_layer_page_waits_for_the_views_of_a_previous_analysis_then_computes_its_own(tiny_gpt2):
    """A views job of an earlier result still runs (the user analysed again meanwhile): the page follows it to its
    end, then starts and follows the views of the result it shows (two followed jobs in one run, no clash)."""
    from test_app_pages import LAYERS

    from app.loading import VIEWS_JOB
    from core.analysis.pipeline import analyze

    r = analyze(tiny_gpt2, "The cat sat on the mat.", compute_gradients=False)
    at = make_app(r).run()
    state = {jobs.SESSION_KEY: at.session_state[jobs.SESSION_KEY]}
    gate = threading.Event()
    old = jobs.start(state, VIEWS_JOB, lambda j: gate.wait(30), what="old views", meta={"key": "an older result"})
    assert isinstance(old, jobs.Job)
    threading.Timer(0.5, gate.set).start()
    at.switch_page(LAYERS).run()
    no_exception(at)
    assert not old.running and at.session_state["result"].views == ["dla", "flow", "neuron_factors", "query_key"]


def test_causal_inputs_survive_a_visit_to_another_page(tiny_dirs):
    at = _gpt2_app(tiny_dirs).run()
    at.switch_page("../pages/causal.py").run()
    at.text_area(key="patch_clean").input("The dog sat on the log").run()
    at.text_area(key="patch_corrupt").input("The log sat on the dog").run()
    at.text_input(key="patch_answer").input(" log").run()
    at.switch_page(OVERALL).run()
    at.run()
    at.switch_page("../pages/causal.py").run()
    no_exception(at)
    assert at.text_area(key="patch_clean").value == "The dog sat on the log"
    assert at.text_area(key="patch_corrupt").value == "The log sat on the dog"
    assert at.text_input(key="patch_answer").value == " log"
