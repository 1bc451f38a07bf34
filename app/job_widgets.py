"""How a page shows a background job of app.jobs: a progress bar with a Cancel button while it runs, the job's one
line when it failed, and its result handed to the page once (`collect`).

`follow` waits for a running job inside the script run (polling); when the user navigates, Streamlit stops the
script there and the job runs on — the next visit of the page follows it again or collects its result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from app import jobs
from app.jobs import Job


def _cancel(name: str) -> None:
    jobs.cancel(st.session_state, name)


def follow(
    name: str,
    collect: Callable[[Job], None],
    *,
    title: str | None = None,
    key: str | None = None,
    tick: Callable[[Job], None] | None = None,
) -> Job | None:
    """Show the session's job `name`: while it runs, its progress and a Cancel button (until it ends); then call
    `collect(job)` once per job, which stores its result or its error line in the session. Returns the job. `key`
    names the Cancel button when one script run follows two jobs of the same name. `tick(job)` is called at each
    poll while the job runs and once after it ends (a page draws the part the job has published so far)."""
    from app.markdown import md_escape

    state = st.session_state
    job = jobs.get(state, name)
    if job is None:
        return None
    if job.running:
        slot = st.empty()
        with slot.container():
            if title:
                st.caption(md_escape(title))
            label, frac = job.progress()
            bar = st.progress(frac, text=md_escape(label))
            st.button(
                "Cancel",
                key=key or f"{name}_cancel",
                on_click=_cancel,
                args=(name,),
                disabled=job.cancel_requested,
                help="Stops the run at its next step; the inputs stay as they are.",
            )

        def show(label: str, fraction: float) -> None:
            bar.progress(fraction, text=md_escape(("Cancelling — " if job.cancel_requested else "") + label))
            if tick is not None:
                tick(job)

        jobs.wait(job, show)
        slot.empty()
    if tick is not None:
        tick(job)
    if not job.collected:
        job.collected = True
        collect(job)
    return job


def refused(line: str, where: Any = None) -> None:
    """The one line for a second start while the job runs."""
    (where or st).warning(line, icon=":material/hourglass_top:")


def start(name: str, work: Callable[[Job], Any], *, what: str, meta: dict[str, Any]) -> None:
    """Start the session's background job `name` (app.jobs.start); a second start while it runs shows `refused`."""
    out = jobs.start(st.session_state, name, work, what=what, meta=meta)
    if isinstance(out, str):
        refused(out)


def store(job: Job, result_key: str, error_key: str) -> None:
    """The `collect` of a job whose result the page keeps as it is: the result under `result_key` (the error line
    under `error_key` cleared), or the error line."""
    state = st.session_state
    if job.ok:
        state[result_key] = job.result
        state[error_key] = None
    else:
        state[error_key] = job.error
