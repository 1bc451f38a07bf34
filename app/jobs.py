"""The app's one background-job runner: long work (an analysis, a comparison, a patching run, a corpus run, the
deeper views) runs here, not in a page script.

Streamlit stops a page's script when the user navigates (or touches a widget); a job started from that script must
live on, and the next script run of the same session, on any page, must find it. So jobs live in a process-level
registry keyed by (session id, job name) — the session id is a random id kept in `st.session_state` (so two
browser tabs are two sessions, and a test's AppTest is one) — and run in one bounded thread pool
($TMA_JOB_WORKERS, default 4; more jobs wait their turn).

A job reports progress as (label, fraction) through `Job.report`, the progress callback handed to core; the same
callback raises `JobCancelled` once `cancel` was asked, so cancelling is cooperative: the work stops at its next
progress report. A failure is kept as one line for the user (`Job.error`, never a traceback; unexpected errors are
logged with theirs). The result is kept with the job until the next start of the same name replaces it; a second
start while one runs is refused with one line, unless it `supersedes` the running one (which is then cancelled and
forgotten: a new analysis replaces the views job of the old one). Work that produces its result piece by piece
`publish`es the part done so far (`Job.partial`), so that a page can show it before the job ends. Finished jobs
that no session has looked at for JOB_TTL_S seconds (a closed tab) are dropped.

No Streamlit call happens in a worker thread: pages poll (`wait`) and draw.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from core.infra.errors import ModelUnavailableError, TMAError

log = logging.getLogger(__name__)

#: Session-state key of the session's job id (a random hex string, set once per session).
SESSION_KEY = "job_session"
#: Worker threads shared by every session of the process: at most this many jobs run at once.
MAX_WORKERS = max(1, int(os.environ.get("TMA_JOB_WORKERS", "4") or 4))
#: A finished job nobody looked at for this many seconds (its session closed) is dropped from the registry.
JOB_TTL_S = 3600.0

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


class JobCancelled(Exception):
    """Raised from a job's progress callback once the user asked to cancel it (caught by the runner)."""


class JobError(Exception):
    """A failure whose user-facing line the work has already written (e.g. "Run B: …"); `kind` as Job.error_kind."""

    def __init__(self, line: str, kind: str = "input"):
        super().__init__(line)
        self.line = line
        self.kind = kind


@dataclass(eq=False)
class Job:
    """One piece of long work of one session. `meta` holds what the page needs to describe or collect it."""

    session: str
    name: str
    what: str  # "the corpus analysis": used in the job's messages
    meta: dict[str, Any] = field(default_factory=dict)
    status: str = QUEUED
    result: Any = None
    error: str | None = None
    error_kind: str | None = None  # "unavailable" | "input" | "internal" | "cancelled"
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    seen: float = field(default_factory=time.monotonic)  # last time a script of the session looked at it
    collected: bool = False  # the page stored its result (or error) in the session once
    partial: Any = None  # the part of the result done so far (`publish`), None until the work publishes one
    _progress: tuple[str, float] = ("Waiting for a free worker", 0.0)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)  # set once the job has ended
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- called in the worker thread (no Streamlit here) -------------------------------------------------------
    def report(self, label: str, fraction: float) -> None:
        """The progress callback handed to core: (label, fraction in [0, 1]); raises JobCancelled after cancel()."""
        if self._cancel.is_set():
            raise JobCancelled()
        with self._lock:
            self._progress = (str(label), min(max(float(fraction), 0.0), 1.0))

    def publish(self, partial: Any) -> None:
        """Make the result so far visible to pages (`Job.partial`); raises JobCancelled after cancel()."""
        self.partial = partial
        self.check()

    def check(self) -> None:
        """Raise JobCancelled when cancel() was asked (for work between two progress reports)."""
        if self._cancel.is_set():
            raise JobCancelled()

    # --- called by pages -------------------------------------------------------------------------------------
    def progress(self) -> tuple[str, float]:
        with self._lock:
            return self._progress

    def cancel(self) -> None:
        self._cancel.set()

    def join(self, timeout: float | None = None) -> Job:
        """Block until the job has ended (or `timeout` seconds passed); returns the job. Not for a page's script
        (it cannot draw while blocked: use `wait`), for work outside one (an export built on a click)."""
        self._done.wait(timeout)
        return self

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def running(self) -> bool:
        return self.status in (QUEUED, RUNNING)

    @property
    def ok(self) -> bool:
        return self.status == DONE

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.monotonic()) - self.started


_POOL = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="tma-job")
_JOBS: dict[tuple[str, str], Job] = {}
_LOCK = threading.Lock()


def session_id(state: Any) -> str:
    """This session's job id, created on first use and kept in the session state."""
    sid = state.get(SESSION_KEY)
    if not isinstance(sid, str) or not sid:
        sid = uuid.uuid4().hex
        state[SESSION_KEY] = sid
    return sid


def get(state: Any, name: str) -> Job | None:
    """The session's job `name` (running or finished), or None."""
    sid = session_id(state)
    with _LOCK:
        job = _JOBS.get((sid, name))
    if job is not None:
        job.seen = time.monotonic()
    return job


def running(state: Any, name: str) -> Job | None:
    job = get(state, name)
    return job if job is not None and job.running else None


def refusal(job: Job) -> str:
    """The one line for a second start while `job` runs."""
    return f"{job.what[:1].upper()}{job.what[1:]} is still running: wait for it to finish or cancel it first."


def start(
    state: Any,
    name: str,
    work: Callable[[Job], Any],
    *,
    what: str,
    meta: dict[str, Any] | None = None,
    supersede: bool = False,
) -> Job | str:
    """Start `work(job)` in the pool as the session's job `name` and return the job; while a job of that name runs,
    nothing starts and the refusal line is returned instead — unless `supersede`: then the running job is asked to
    cancel and is forgotten (its result never reaches a page). The new job replaces the finished one (its result).
    `state` may be a plain {SESSION_KEY: id} mapping (a job that starts a follow-on job from its worker thread)."""
    sid = session_id(state)
    with _LOCK:
        _evict(time.monotonic())
        old = _JOBS.get((sid, name))
        if old is not None and old.running:
            if not supersede:
                return refusal(old)
            old.cancel()
            log.info("job %s of session %s superseded", name, sid[:8])
        job = Job(session=sid, name=name, what=what, meta=dict(meta or {}))
        _JOBS[(sid, name)] = job
    log.info("job %s of session %s started (%s)", name, sid[:8], what)
    _POOL.submit(_run, job, work)
    return job


def cancel(state: Any, name: str) -> bool:
    """Ask the session's running job `name` to stop at its next progress report; False when none runs."""
    job = running(state, name)
    if job is None:
        return False
    job.cancel()
    return True


def forget(state: Any, name: str) -> None:
    """Drop the session's finished job `name` (a running one is kept: it cannot be stopped from outside)."""
    sid = session_id(state)
    with _LOCK:
        job = _JOBS.get((sid, name))
        if job is not None and not job.running:
            del _JOBS[(sid, name)]


def wait(job: Job, show: Callable[[str, float], None], poll_s: float = 0.2) -> Job:
    """Call `show(label, fraction)` while the job runs, then return it. `show` draws (a progress bar): when the user
    navigates, Streamlit raises its stop exception there and the wait ends — the job does not."""
    while job.running:
        show(*job.progress())
        job._done.wait(poll_s)  # returns at once when the job ends: no poll interval added to a quick job
    return job


def describe(exc: BaseException, what: str) -> tuple[str, str]:
    """(kind, one line) for a failure: core's errors say what to change; anything else is logged by the caller and
    becomes a generic line."""
    if isinstance(exc, JobError):
        return exc.kind, exc.line
    if isinstance(exc, JobCancelled):
        return "cancelled", f"{what[:1].upper()}{what[1:]} was cancelled; start it again when you like."
    if isinstance(exc, ModelUnavailableError):
        return "unavailable", first_line(exc)
    if isinstance(exc, TMAError):
        return "input", first_line(exc)
    return "internal", f"Something went wrong during {what}. The details are in the server log."


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _run(job: Job, work: Callable[[Job], Any]) -> None:
    job.status = RUNNING
    if job.progress()[0] == "Waiting for a free worker":
        with job._lock:
            job._progress = ("Starting", 0.0)
    try:
        job.check()
        result = work(job)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line; bugs are logged with traceback
        kind, line = describe(exc, job.what)
        if kind == "internal":
            log.error("job %s of session %s failed", job.name, job.session[:8], exc_info=exc)
        else:
            log.info("job %s of session %s ended: %s", job.name, job.session[:8], line)
        job.error_kind, job.error = kind, line
        job.finished = time.monotonic()
        job.status = CANCELLED if kind == "cancelled" else FAILED
        job._done.set()
        return
    job.result = result
    job.finished = time.monotonic()
    job.status = DONE
    job._done.set()
    log.info("job %s of session %s done in %.2fs", job.name, job.session[:8], job.elapsed_s)


def _evict(now: float) -> None:
    """Drop finished jobs no session has looked at for JOB_TTL_S (called under _LOCK)."""
    for key, job in list(_JOBS.items()):
        if not job.running and now - job.seen > JOB_TTL_S:
            del _JOBS[key]


def active_count() -> int:
    """Jobs queued or running in the whole process (for tests and the log)."""
    with _LOCK:
        return sum(j.running for j in _JOBS.values())
