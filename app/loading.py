"""Process-wide caches of the app: loaded models (few, keyed on plain arguments) and the core result cache.

`st.cache_resource` hashes every argument whose name does not start with an underscore, so `model_id`, `dtype`
and `device` are plain parameters: a dtype change loads a different model object. One LoadedModel serves every
session of the server; core's analysis and generation hold `loaded.lock` for every model use.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import streamlit as st

import core
from core.analysis.result import AnalysisResult
from core.model.loading import LoadedModel
from core.run.cache import ResultCache

log = logging.getLogger(__name__)

#: At most this many models stay loaded ($TMA_MAX_MODELS, default 2; set 1 on a ~1 GB Community Cloud box).
MAX_MODELS = max(1, int(os.environ.get("TMA_MAX_MODELS", "2") or 2))


#: $TMA_DEVICE_MAP=auto loads every model through accelerate's device map (layers spread over the GPUs, then the
#: CPU): for models larger than one GPU. Unset or "none": the whole model on one device.
DEVICE_MAP = os.environ.get("TMA_DEVICE_MAP", "").strip().lower() or None


@st.cache_resource(max_entries=MAX_MODELS, show_spinner=False)
def get_model(
    model_id: str, dtype: str = "auto", device: str = "auto", device_map: str | None = DEVICE_MAP
) -> LoadedModel:
    """The loaded model for (model_id, dtype, device, device_map), loaded once per process.

    Raises core.infra.errors.ModelUnavailableError (not cached: Streamlit does not cache exceptions, so a later try
    after the network is back loads the model).
    """
    log.info("loading model %s (dtype=%s, device=%s, device_map=%s)", model_id, dtype, device, device_map)
    loaded = core.load_model(model_id, dtype=dtype, device=device, device_map=device_map)
    _LOADED.add((model_id, dtype, device))
    return loaded


#: (model_id, dtype, device) of the models this process has loaded (the sidebar shows the first load as its own
#: progress step). A model evicted from get_model's cache stays listed: its reload is then timed, not announced.
_LOADED: set[tuple[str, str, str]] = set()


def is_loaded(model_id: str, dtype: str = "auto", device: str = "auto") -> bool:
    """Whether get_model has loaded this model in this process before."""
    return (model_id, dtype, device) in _LOADED


@st.cache_resource(show_spinner=False)
def get_result_cache() -> ResultCache:
    """One disk-backed result cache per process ($TMA_CACHE_DIR, bounded, LRU)."""
    return ResultCache()


#: The name of the deeper-views job in app.jobs (one per session).
VIEWS_JOB = "views"


def views_key(result: AnalysisResult) -> str:
    """What a views job is for: the result's cache key (an id for a result without one)."""
    return result.cache_key or f"id {id(result)}"


def start_views(
    state: Any,
    result: AnalysisResult,
    load: tuple[str, str, str],
    names: list[str],
    *,
    supersede: bool = False,
) -> Any:
    """Start the session's views job: one more forward pass plus the views `names` (core.analysis.pipeline.
    add_views) for `result` with the model `load` = (model id, dtype, device) of get_model. The job publishes the
    result so far as each view lands (Job.partial) and caches the fuller result (the first-visit path finds it
    there). Returns the job, or the refusal line while another views job runs (unless `supersede`)."""
    from app import jobs
    from core.analysis.pipeline import VIEWS

    what = ", ".join(VIEWS[n][0].lower() for n in names)

    def work(j: jobs.Job) -> AnalysisResult:
        from core.analysis import pipeline

        try:
            loaded = get_model(*load)
            return pipeline.add_views(
                loaded, result, names, cache=get_result_cache(), progress=j.report, partial=j.publish
            )
        except jobs.JobCancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - its first line names the cause (out of memory, offline …)
            log.warning("the deeper views (%s) could not be computed", what, exc_info=True)
            raise jobs.JobError(jobs.first_line(exc), "internal") from exc

    meta = {"key": views_key(result), "names": tuple(names), "what": what}
    return jobs.start(state, VIEWS_JOB, work, what=f"the {what}", meta=meta, supersede=supersede)


def background_views(session: str, result: AnalysisResult, load: tuple[str, str, str]) -> None:
    """Called by the analysis job as it ends (in its worker thread): start every deeper view the result lacks as
    the session's views job, superseding the views job of an earlier analysis, so that Layer Analysis opened a
    few seconds later waits only for what is left."""
    from app import jobs
    from core.analysis.pipeline import VIEWS

    missing = [n for n in VIEWS if n not in result.views]
    if missing:
        start_views({jobs.SESSION_KEY: session}, result, load, missing, supersede=True)


def latest(result: AnalysisResult) -> AnalysisResult:
    """The session's result with the views its views job has finished so far (the job's published part, or its
    result), without waiting: the page draws the finished views at once."""
    from app import jobs

    job = jobs.get(st.session_state, VIEWS_JOB)
    if job is None or job.meta.get("key") != views_key(result):
        return result
    done = job.result if job.ok else job.partial
    return done if isinstance(done, AnalysisResult) and len(done.views) > len(result.views) else result


def pending_line(names: list[str]) -> str:
    """The line a view's place shows while the views job computes it (and the others of `names`)."""
    from core.analysis.pipeline import VIEWS

    listed = ", ".join(VIEWS[n][0].lower() for n in names)
    return f"Still being computed in the background: {listed}. Each view appears here as soon as it is ready."


def _collect_views(state: Any, j: Any, failed: dict[str, str]) -> None:
    """Store a finished views job's result as the session's result (when the session still shows that result),
    or its failure line (once per result: a widget change must not run the model again)."""
    from app.state import Keys

    if j.ok:
        current = state.get(Keys.RESULT)
        if current is None or views_key(current) != j.meta.get("key"):
            return  # the user ran another analysis meanwhile
        if any(v not in current.views for v in j.result.views):  # (the same analysis again has them from the cache)
            state[Keys.RESULT] = j.result.replace(cache_hit=current.cache_hit, duration_s=current.duration_s)
        return
    if j.error_kind == "cancelled":
        return  # the next visit asks again
    what = j.meta.get("what", "the deeper views")
    state[Keys.VIEWS_FAILED] = {**failed, j.meta["key"]: f"These views could not be computed: {what}. {j.error}"}


def collect_views() -> None:
    """Every page run: a views job that ended while no page followed it hands its result to the session (no wait)."""
    from app import jobs
    from app.state import Keys

    state = st.session_state
    job = jobs.get(state, VIEWS_JOB)
    if job is not None and not job.running and not job.collected:
        job.collected = True
        _collect_views(state, job, state.get(Keys.VIEWS_FAILED) or {})


def with_views(
    result: AnalysisResult, names: list[str], landed: Callable[[AnalysisResult], None] | None = None
) -> AnalysisResult:
    """The session's result with the deeper views `names` computed. The analysis job starts them in the
    background as it ends (`background_views`); a page that needs them follows that job with a progress bar (or,
    on their first need without one, starts it). `landed(result so far)` is called as each view lands during the
    wait, so the page can draw the finished views while the others are computed. The fuller result then replaces
    the session's result (and the cached one). Leaving the page does not stop the job: the next visit shows its
    progress or takes its result. On a failure the page keeps the result it has (its sections say the view is
    missing) and shows one line, once per result."""
    from app import job_widgets, jobs
    from app.state import Keys
    from core.analysis.pipeline import VIEWS

    missing = [n for n in names if n not in result.views]
    if not missing:
        return result
    state = st.session_state
    what = ", ".join(VIEWS[n][0].lower() for n in missing)
    failed = state.get(Keys.VIEWS_FAILED) or {}
    key = views_key(result)
    if key in failed:  # tried once: a widget change must not run the model again
        st.warning(failed[key])
        return result
    job = jobs.get(state, VIEWS_JOB)
    if job is not None and job.running and job.meta.get("key") != key:
        job_widgets.follow(
            VIEWS_JOB,
            lambda _job: None,
            title="Finishing the views of the previous analysis …",
            key="views_prev_cancel",
        )
        job = None
    if job is None or job.meta.get("key") != key or not set(missing) <= set(job.meta.get("names", ())):
        load = state.get(Keys.RESULT_LOAD) or (result.model.model_id, "auto", "auto")
        start_views(state, result, load, missing)
        job = jobs.get(state, VIEWS_JOB)
    part = job.partial if job is not None else None
    if isinstance(part, AnalysisResult) and all(n in part.views for n in names):
        return part  # what this page needs is done; the job goes on with the other views

    shown: list[Any] = [None]

    def tick(j: Any) -> None:
        part = j.partial
        if landed is not None and part is not None and part is not shown[0]:
            shown[0] = part
            landed(part)

    ready = [n for n in names if job is not None and isinstance(job.partial, AnalysisResult) and n in job.partial.views]
    left = [n for n in missing if n not in ready]
    title = (
        f"Still computing in the background: {', '.join(VIEWS[n][0].lower() for n in left)}"
        + (" (the finished views are shown already)" if ready or len(left) < len(missing) else "")
        + " …"
    )
    done = job_widgets.follow(VIEWS_JOB, lambda j: _collect_views(state, j, failed), title=title, tick=tick)
    if done is not None and done.ok and done.meta.get("key") == key:
        return done.result
    message = (state.get(Keys.VIEWS_FAILED) or {}).get(key)
    if message:
        st.warning(message)
    elif done is not None and done.error_kind == "cancelled":
        st.info(f"Cancelled: {what}.", icon=":material/block:")
        st.button("Compute them now", key="views_again", on_click=jobs.forget, args=(state, VIEWS_JOB))
    return result
