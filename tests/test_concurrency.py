"""Several sessions at once on one loaded model: 4 threads analyse and export different texts at the same time, and
every result and every file of every bundle (each PNG and GIF byte for byte) equals a single-threaded run.
Also: the app's session state starts from the defaults whatever another session did, and the download callback's
bundle (built in another thread) equals the one built in the calling thread."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.analysis.pipeline import analyze
from core.analysis.result import results_equal
from core.export.bundle import bundle_files
from core.infra.formats import member_bytes
from core.infra.options import ExportOptions

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "The cat sat on the mat.",
    "Paris is the capital of France.",
    "A bird flew over the house and the dog sat on the log.",
    "Attention heads look at previous tokens.",
]
#: Files whose bytes hold a time (creation date, durations): compared without those fields or by their images.
TIMED = {"manifest.json", "report.pdf", "session_log.html"}
IGNORE = ("cache_hit", "timings", "duration_s", "created_at")


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Floating-point sums depend on how a BLAS splits work over its threads; one thread everywhere makes the
    single-threaded and the concurrent runs comparable byte for byte (what is tested is Python-level sharing)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


def _analyse_and_export(loaded, text: str, barrier: threading.Barrier | None = None):
    if barrier is not None:
        barrier.wait(timeout=60)  # all threads start together
    result = analyze(loaded, text, compute_gradients=True)
    files = bundle_files(result, ExportOptions(animations=True))
    return result, files


def _manifest_without_times(data: bytes) -> dict:
    m = json.loads(data)
    for key in ("created_at", "timings", "timings_s", "duration_s", "duration", "cache_hit"):
        m.pop(key, None)
    return m


def _assert_same(ref, got, text: str) -> None:
    (r1, f1), (r2, f2) = ref, got
    assert r2.text == text
    assert results_equal(r1, r2, ignore=IGNORE), f"result differs for {text!r}"
    assert f1.keys() == f2.keys()
    images = [n for n in f1 if n.endswith((".png", ".gif"))]
    assert len([n for n in images if n.endswith(".png")]) >= 5 and any(n.endswith(".gif") for n in images)
    for name in f1:
        if name == "manifest.json":
            assert _manifest_without_times(f1[name]) == _manifest_without_times(f2[name])
        elif name not in TIMED:
            assert member_bytes(f1[name]) == member_bytes(f2[name]), f"{name} differs for {text!r}"


@pytest.mark.slow
def test_four_threads_equal_a_single_threaded_run(tiny_gpt2):
    reference = {t: _analyse_and_export(tiny_gpt2, t) for t in TEXTS}
    barrier = threading.Barrier(len(TEXTS))
    with ThreadPoolExecutor(max_workers=len(TEXTS)) as pool:
        futures = {t: pool.submit(_analyse_and_export, tiny_gpt2, t, barrier) for t in TEXTS}
        concurrent = {t: f.result(timeout=600) for t, f in futures.items()}
    for t in TEXTS:
        _assert_same(reference[t], concurrent[t], t)
        assert not concurrent[t][0].warnings or concurrent[t][0].warnings == reference[t][0].warnings


@pytest.mark.slow
def test_threads_rendering_the_same_result_at_once(tiny_gpt2):
    """Two sessions with the same text export at the same moment (the issue's sticky animation failure)."""
    result = analyze(tiny_gpt2, TEXTS[0], compute_gradients=False)
    ref = bundle_files(result, ExportOptions(animations=True))
    barrier = threading.Barrier(4)

    def export():
        barrier.wait(timeout=60)
        return bundle_files(result, ExportOptions(animations=True))

    with ThreadPoolExecutor(max_workers=4) as pool:
        outs = [f.result(timeout=600) for f in [pool.submit(export) for _ in range(4)]]
    for files in outs:
        for name in ref:
            if name.endswith((".png", ".gif")):
                assert files[name] == ref[name], name


@pytest.mark.slow
def test_download_callback_bundle_equals_the_main_thread_bundle(tiny_gpt2):
    """The sidebar's download callback runs build_zip in another thread: same member bytes."""
    import io
    import zipfile

    from core.export.zip_export import build_zip

    result = analyze(tiny_gpt2, TEXTS[1], compute_gradients=False)
    options = ExportOptions(animations=True)
    here = build_zip(result, options)
    box: dict[str, bytes] = {}
    t = threading.Thread(target=lambda: box.update(zip=build_zip(result, options)))
    t.start()
    t.join(timeout=600)
    a, b = zipfile.ZipFile(io.BytesIO(here)), zipfile.ZipFile(io.BytesIO(box["zip"]))
    assert a.namelist() == b.namelist()
    for name in a.namelist():
        if name not in TIMED:
            assert a.read(name) == b.read(name), name


# ----------------------------------------------------------------------------------------------------------------
# Session isolation in the app


def test_each_session_starts_from_the_defaults():
    """Session A changes every setting; a session started afterwards still gets the defaults."""
    from streamlit.testing.v1 import AppTest

    from app.state import DEFAULTS, Keys

    a = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    a.run()
    for key, value in (
        (Keys.MAX_TOKENS, 32),
        (Keys.COMPUTE_GRADIENTS, False),
        (Keys.ANIMATIONS, False),
        (Keys.EXCLUDE_SPECIAL, True),
        (Keys.DTYPE, "float32"),
    ):
        a.session_state[key] = value
    a.session_state[Keys.SESSION_LOG].append({"model": "touched by A"})
    a.run()
    assert a.session_state[Keys.MAX_TOKENS] == 32
    b = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    b.run()
    for key in (Keys.MAX_TOKENS, Keys.COMPUTE_GRADIENTS, Keys.ANIMATIONS, Keys.EXCLUDE_SPECIAL, Keys.DTYPE):
        assert b.session_state[key] == DEFAULTS[key], key
    assert b.session_state[Keys.SESSION_LOG] == []
    with pytest.raises(TypeError):  # nobody can change the defaults themselves
        DEFAULTS[Keys.MAX_TOKENS] = 32  # type: ignore[index]


def test_a_job_finished_after_navigation_is_shown_with_its_text(tiny_gpt2):
    """The analysis runs as a background job; a later run (another page) collects it: result stored, labelled."""
    from streamlit.testing.v1 import AppTest

    from app import jobs, sidebar
    from app.state import Keys

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.run()
    result = analyze(tiny_gpt2, "The dog sat on the log.", compute_gradients=False)
    state = {jobs.SESSION_KEY: at.session_state[jobs.SESSION_KEY]}
    job = jobs.start(  # as left behind by a run the user navigated away from
        state,
        sidebar.ANALYSIS_JOB,
        lambda job: result,
        what="the analysis",
        meta={"model_id": "tiny", "dtype": "auto", "text": result.text, "family_before": "causal_lm"},
    )
    assert isinstance(job, jobs.Job)
    at.session_state[Keys.TEXT] = "Another text typed since."
    at.run()
    assert job.collected and not job.running
    assert at.session_state[Keys.RESULT].text == "The dog sat on the log."
    captions = " ".join(c.value for c in at.caption)
    assert "The dog sat on the log" in captions  # labelled with its own text
    assert any("has changed since this analysis" in i.value for i in at.info)


def test_a_cancelled_analysis_says_so():
    import threading

    from streamlit.testing.v1 import AppTest

    from app import jobs, sidebar

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.run()
    state = {jobs.SESSION_KEY: at.session_state[jobs.SESSION_KEY]}
    gate = threading.Event()

    def work(job):
        gate.wait(30)
        job.report("next step", 0.5)  # the cancel is noticed here
        raise AssertionError("not reached")

    job = jobs.start(state, sidebar.ANALYSIS_JOB, work, what="the analysis", meta={"model_id": "m", "text": "t"})
    assert isinstance(job, jobs.Job)
    assert jobs.cancel(state, sidebar.ANALYSIS_JOB)
    gate.set()
    at.run()
    assert job.status == jobs.CANCELLED
    assert at.error and "cancelled" in at.error[0].value
