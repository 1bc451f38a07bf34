"""Process-wide caches of the app: loaded models (few, keyed on plain arguments) and the core result cache.

`st.cache_resource` hashes every argument whose name does not start with an underscore, so `model_id`, `dtype`
and `device` are plain parameters: a dtype change loads a different model object. One LoadedModel serves every
session of the server; core's analysis and generation hold `loaded.lock` for every model use.
"""

from __future__ import annotations

import logging
import os

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


def with_views(result: AnalysisResult, names: list[str]) -> AnalysisResult:
    """The session's result with the deeper views `names` computed: on their first need, one more capture pass
    plus the views (core.analysis.pipeline.add_views) run as the session's background job, followed here with a
    progress bar; the fuller result then replaces the session's result (and the cached one). Leaving the page
    does not stop the job: the next visit shows its progress or takes its result. On a failure the page keeps the
    result it has (its sections say the view is missing) and shows one line, once per result."""
    from app import job_widgets, jobs
    from app.state import Keys
    from core.analysis.pipeline import VIEWS

    missing = [n for n in names if n not in result.views]
    if not missing:
        return result
    state = st.session_state
    what = ", ".join(VIEWS[n][0].lower() for n in missing)
    failed = state.get(Keys.VIEWS_FAILED) or {}
    key = result.cache_key or f"id {id(result)}"
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

        def work(j: jobs.Job) -> AnalysisResult:
            from core.analysis import pipeline

            try:
                loaded = get_model(*load)
                return pipeline.add_views(loaded, result, missing, cache=get_result_cache(), progress=j.report)
            except jobs.JobCancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - its first line names the cause (out of memory, offline …)
                log.warning("the deeper views (%s) could not be computed", what, exc_info=True)
                raise jobs.JobError(jobs.first_line(exc), "internal") from exc

        jobs.start(state, VIEWS_JOB, work, what=f"the {what}", meta={"key": key, "names": tuple(missing)})

    def collect(j: jobs.Job) -> None:
        if j.ok:
            if (state.get(Keys.RESULT) or result).cache_key == j.meta.get("key"):
                state[Keys.RESULT] = j.result  # not when the user ran a new analysis meanwhile
            return
        if j.error_kind == "cancelled":
            return  # the next visit asks again
        state[Keys.VIEWS_FAILED] = {**failed, j.meta["key"]: f"These views could not be computed: {what}. {j.error}"}

    done = job_widgets.follow(VIEWS_JOB, collect, title=f"Computing {what} (once per analysis) …")
    if done is not None and done.ok and done.meta.get("key") == key:
        return done.result
    message = (state.get(Keys.VIEWS_FAILED) or {}).get(key)
    if message:
        st.warning(message)
    elif done is not None and done.error_kind == "cancelled":
        st.info(f"Cancelled: {what}.", icon=":material/block:")
        st.button("Compute them now", key="views_again", on_click=jobs.forget, args=(state, VIEWS_JOB))
    return result
