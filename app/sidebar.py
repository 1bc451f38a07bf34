"""The sidebar, drawn by app/main.py on every page: model picker, text, settings, Analyze, progress, export.

The analysis runs only when the Analyze button is pressed (or the one-click "switch to the bundled model" asks for
it): no other widget change loads a model, runs gradients or generates text. Errors become a banner with a message
(core.infra.errors.TMAError) or a generic line (anything else, traceback in the log); the text and the last finished
result always survive an error.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from app import sae_widgets
from app.loading import get_model, get_result_cache, is_loaded
from app.state import OTHER_MODEL, Keys
from app.widgets import md_escape
from core.analysis.pipeline import VIEWS, add_views
from core.analysis.result import AnalysisResult
from core.export.zip_export import build_zip
from core.infra.errors import InputError, ModelUnavailableError, TMAError
from core.infra.options import ExportOptions
from core.infra.presets import BUNDLED_ID, PRESET_IDS, preset
from core.present.chart_spec import timing_phrase
from core.run.settings import DTYPES, AnalysisSettings, max_text_chars

log = logging.getLogger(__name__)

#: One example text per model family. The masked-LM example holds BERT's mask token.
EXAMPLES: dict[str, str] = {
    "masked_lm": "The capital of France is [MASK].",
    "causal_lm": "The capital of France is",
    "encoder": "The quick brown fox jumps over the lazy dog near the river bank.",
}

MASK_TOKENS = ("[MASK]", "<mask>")
NO_MASK_WORD = "(no word masked)"
MAX_TOKEN_CHOICES = (32, 64, 128, 256, 512)


# ----------------------------------------------------------------------------------------------------------------
# Plain helpers (no widgets): testable without a running app


def selected_model_id(state: Any) -> str:
    """The model the user has chosen: a preset id, or the free field's value (stripped)."""
    choice = state.get(Keys.MODEL_CHOICE)
    if choice == OTHER_MODEL:
        return str(state.get(Keys.MODEL_CUSTOM) or "").strip()
    return str(choice or BUNDLED_ID)


def known_family(state: Any, model_id: str) -> str | None:
    """The model's family if known without loading it: from the presets, or from the last result of that model."""
    p = preset(model_id)
    if p is not None:
        return p.family
    result = state.get(Keys.RESULT)
    if result is not None and model_id and result.model.model_id in (model_id,) + _resolved(model_id):
        return result.family
    return None


def _resolved(model_id: str) -> tuple[str, ...]:
    from pathlib import Path

    try:
        p = Path(model_id).expanduser()
        return (str(p.resolve()),) if p.exists() else ()
    except OSError:
        return ()


def _preset_label(model_id: str) -> str:
    p = preset(model_id)
    return p.label if p is not None else model_id


def example_for(family: str | None) -> str:
    return EXAMPLES.get(family or "encoder", EXAMPLES["encoder"])


def words_of(text: str) -> list[str]:
    """Distinct words of `text` in order of appearance (candidates for masking)."""
    seen: dict[str, None] = {}
    for w in re.findall(r"\w+", text or ""):
        seen.setdefault(w, None)
    return list(seen)


def has_mask(text: str) -> bool:
    return any(m in (text or "") for m in MASK_TOKENS)


def url_to_state(query_params: Any, state: Any) -> None:
    """Read ?model=… into the model widgets once per session (a shared link opens with that model); the Compare
    page's ?model_b=… (run B's model) and ?page=… (the page to open) too. Texts are never in the URL."""
    get = query_params.get if hasattr(query_params, "get") else (lambda _k: None)
    model = (get("model") or "").strip()
    if model:
        if model in PRESET_IDS:
            state[Keys.MODEL_CHOICE] = model
        else:
            state[Keys.MODEL_CHOICE] = OTHER_MODEL
            state[Keys.MODEL_CUSTOM] = model
    model_b = (get("model_b") or "").strip()
    if model_b:
        state[Keys.CMP_MODE] = "model" if model_b != (model or selected_model_id(state)) else "text"
        state[Keys.CMP_MODEL_B] = model_b if model_b in PRESET_IDS else OTHER_MODEL
        if model_b not in PRESET_IDS:
            state[Keys.CMP_CUSTOM_B] = model_b
    page = (get("page") or "").strip()
    if page:
        state[Keys.URL_PAGE] = page


def url_page(pages: list[Any], state: Any) -> Any:
    """The page a shared link's ?page=… names (by its url_path), once per session; None otherwise."""
    want = state.pop(Keys.URL_PAGE, None) if Keys.URL_PAGE in state else None
    return next((p for p in pages if want and getattr(p, "url_path", None) == want), None)


def current_settings(state: Any) -> AnalysisSettings:
    """AnalysisSettings from the sidebar widgets (raises core.infra.errors.InputError when invalid)."""
    mask_word = state.get(Keys.MASK_WORD)
    if mask_word in (None, "", NO_MASK_WORD):
        mask_word = None
    grads = bool(state.get(Keys.COMPUTE_GRADIENTS))
    return AnalysisSettings(
        max_tokens=int(state.get(Keys.MAX_TOKENS) or AnalysisSettings.default("max_tokens")),
        exclude_special_tokens=bool(state.get(Keys.EXCLUDE_SPECIAL)),
        compute_gradients=grads,
        integrated_gradients=grads and bool(state.get(Keys.INTEGRATED_GRADIENTS)),  # IG needs gradients
        ig_steps=int(state.get(Keys.IG_STEPS) or AnalysisSettings.default("ig_steps")),
        lens_full_grid=bool(state.get(Keys.LENS_FULL_GRID)),
        mask_word=mask_word,
        neuron_factors=int(
            state.get(Keys.NEURON_K)
            if state.get(Keys.NEURON_K) is not None
            else AnalysisSettings.default("neuron_factors")
        ),
        neuron_first_layer=state.get(Keys.NEURON_FIRST),
        neuron_last_layer=state.get(Keys.NEURON_LAST),
        sae_dirs=sae_widgets.chosen_dirs(state),
    )


def text_too_long(n_chars: int, limit: int) -> str:
    """The visible message for a text over the bound (the field keeps it; Analyze refuses it)."""
    return (
        f"The text has {n_chars:,} characters; at most {limit:,} are analysed. Shorten it before pressing "
        f"Analyze (nothing was cut)."
    ).replace(",", " ")


def session_entry(result: AnalysisResult) -> dict[str, Any]:
    """One line of the session log (the export's session_log.html lists these in order), as the CLI writes it."""
    from core.export.session_log import entry_from_result

    return entry_from_result(result)


def _on_model_change() -> None:
    """Swap the example text for the new model family's example, but only when the text is still an example."""
    state = st.session_state
    text = state.get(Keys.TEXT, "")
    if text.strip() and text not in EXAMPLES.values():
        return  # the user's own text: never replaced
    family = known_family(state, selected_model_id(state))
    if family is not None:
        state[Keys.TEXT] = example_for(family)
    state[Keys.MASK_WORD] = None


def switch_to_bundled() -> None:
    """The offline banner's button: choose the bundled model and run the analysis on the same text."""
    state = st.session_state
    state[Keys.MODEL_CHOICE] = BUNDLED_ID
    state[Keys.MASK_WORD] = None
    state[Keys.ERROR] = None
    state[Keys.PENDING_ANALYSIS] = True


# ----------------------------------------------------------------------------------------------------------------
# Drawing


def draw() -> bool:
    """Draw the sidebar; True when the user asked for an analysis on this run."""
    state = st.session_state
    if Keys.TEXT not in state:
        state[Keys.TEXT] = example_for(known_family(state, selected_model_id(state)))
    with st.sidebar:
        st.header("Model and text")
        options = [*PRESET_IDS, OTHER_MODEL]
        if state.get(Keys.MODEL_CHOICE) not in options:
            state[Keys.MODEL_CHOICE] = BUNDLED_ID
        st.selectbox(
            "Model",
            options,
            key=Keys.MODEL_CHOICE,
            on_change=_on_model_change,
            format_func=lambda m: "Other: Hugging Face id or folder" if m == OTHER_MODEL else _preset_label(m),
            help="Presets, the bundled MiniLM (works offline), or any Hugging Face id / local folder.",
        )
        chosen = preset(str(state.get(Keys.MODEL_CHOICE)))
        if chosen is not None:
            st.caption(f"{chosen.id} — {chosen.description}, {chosen.parameters} parameters")
        if state.get(Keys.MODEL_CHOICE) == OTHER_MODEL:
            st.text_input(
                "Hugging Face id or local folder",
                key=Keys.MODEL_CUSTOM,
                placeholder="e.g. distilgpt2 or /path/to/model",
                help="Loaded with safetensors only, never with remote code.",
            )
        model_id = selected_model_id(state)
        family = known_family(state, model_id)

        limit = max_text_chars()
        # No max_chars: the browser would drop a longer paste without a word. The bound is enforced in core,
        # and said here as soon as the text is too long.
        st.text_area(
            "Text to analyse",
            key=Keys.TEXT,
            height=110,
            help=f"Masked LMs fill [MASK]; causal LMs predict the next token. Texts longer than "
            f"Max tokens are truncated; at most {limit:,} characters are analysed.".replace(",", " "),
        )
        text = state.get(Keys.TEXT, "")
        if len(text) > limit:
            st.warning(text_too_long(len(text), limit), icon=":material/content_cut:")
        if family == "masked_lm" and not has_mask(text):
            words = words_of(text)
            if state.get(Keys.MASK_WORD) not in [NO_MASK_WORD, *words]:
                state[Keys.MASK_WORD] = NO_MASK_WORD
            st.selectbox(
                "Mask a word",
                [NO_MASK_WORD, *words],
                key=Keys.MASK_WORD,
                format_func=str,
                help="The text has no mask token: pick a word for the model to fill in.",
            )
        elif state.get(Keys.MASK_WORD) not in (None, NO_MASK_WORD):
            state[Keys.MASK_WORD] = None

        with st.expander("Settings", expanded=False):
            st.select_slider(
                "Max tokens",
                MAX_TOKEN_CHOICES,
                key=Keys.MAX_TOKENS,
                help="Longer texts are truncated (a warning says so).",
            )
            st.selectbox("Precision (dtype)", DTYPES, key=Keys.DTYPE, help="auto: float32 on CPU, bfloat16 on a GPU.")
            st.toggle("Exclude special tokens from layer metrics", key=Keys.EXCLUDE_SPECIAL)
            grads = st.toggle(
                "Compute gradients (attribution)",
                key=Keys.COMPUTE_GRADIENTS,
                help="Gradient × input and per-head attribution: one extra forward + backward pass.",
            )
            ig = st.toggle(
                "Integrated gradients (slow)",
                key=Keys.INTEGRATED_GRADIENTS,
                disabled=not grads,
                help="One forward + backward pass per step: about 30–40× a forward pass at 32 steps on a CPU.",
            )
            lo, hi = AnalysisSettings.bounds("ig_steps")
            st.number_input(
                "Integrated-gradients steps",
                min_value=lo,
                max_value=hi,
                step=8,
                key=Keys.IG_STEPS,
                disabled=not (grads and ig),
            )
            st.toggle(
                "Full logit-lens grid (slow on a CPU)",
                key=Keys.LENS_FULL_GRID,
                help="Decode every position at every layer. On a CPU, long texts otherwise get a window of "
                "positions around the decoded one (the full grid costs ~4× a forward pass for GPT-2).",
            )
            lo, hi = AnalysisSettings.bounds("neuron_factors")
            st.number_input(
                "Neuron factors (NMF k, 0 = off)",
                min_value=lo,
                max_value=hi,
                key=Keys.NEURON_K,
                help=AnalysisSettings.help("neuron_factors"),
            )
            c1, c2 = st.columns(2)
            c1.number_input(
                "First neuron layer",
                min_value=0,
                step=1,
                key=Keys.NEURON_FIRST,
                help=AnalysisSettings.help("neuron_first_layer"),
            )
            c2.number_input(
                "Last neuron layer",
                min_value=0,
                step=1,
                key=Keys.NEURON_LAST,
                help=AnalysisSettings.help("neuron_last_layer"),
            )
            sae_widgets.sidebar_picker(state)
            st.toggle(
                "Layer animations (GIF)",
                key=Keys.ANIMATIONS,
                help="Drawn from the stored result: switching them changes no number and runs no model.",
            )

        clicked = st.button(
            "Analyze",
            key="analyze",
            type="primary",
            width="stretch",
            help="Run the model once on the text; every chart is drawn from that run.",
        )
    return bool(clicked)


def draw_result_footer() -> None:
    """Below the Analyze button: the last run's figures and the export download (only with a result)."""
    state = st.session_state
    result = state.get(Keys.RESULT)
    if result is None:
        return
    with st.sidebar:
        st.caption(
            f"Last analysis: {md_escape(result.model.model_id)} · {result.n_tokens} tokens · "
            f"{timing_phrase(result.duration_s, result.cache_hit)}"
        )
        draw_export(result)


def export_bytes(result: AnalysisResult, options: ExportOptions, load: tuple[str, str, str] | None) -> bytes:
    """The export's ZIP: the deeper views the result lacks are computed first with the model it was made with
    (`load` = (model id, dtype, device) of get_model), so the bundle holds every view, as the CLI's does; should
    that fail, the bundle is written without them (their sections say so). The run is also kept under assets/runs/
    (bounded); a read-only or full disk only skips that copy."""
    full = result
    if load is not None and any(v not in result.views for v in VIEWS):
        try:
            full = add_views(get_model(*load), result, "all", cache=get_result_cache())
        except Exception:  # noqa: BLE001 - the bundle without the views, which then say they are missing
            log.warning("the deeper views for the export could not be computed", exc_info=True)
    try:
        return build_zip(full, options, save=True)
    except OSError as exc:  # a read-only or full disk: the download still works
        log.warning("could not keep the run under assets/runs: %s", exc)
        return build_zip(full, options)
    except Exception:
        log.exception("building the export bundle failed")
        raise


def draw_export(result: AnalysisResult) -> None:
    """The ZIP download, built on click by core.export.zip_export.build_zip."""
    hidden = st.toggle(
        "Include hidden states (float16) in the ZIP",
        key=Keys.EXPORT_HIDDEN,
        help="hidden_states.npz: every layer's token states; large for long texts.",
    )
    options = ExportOptions(
        session_entries=tuple(st.session_state.get(Keys.SESSION_LOG, [])),
        hidden_states=bool(hidden),
        animations=bool(st.session_state.get(Keys.ANIMATIONS, True)),
    )

    load = st.session_state.get(Keys.RESULT_LOAD)

    def data() -> bytes:
        """Runs on the click, in a separate thread."""
        return export_bytes(result, options, load)

    st.download_button(
        "Download analysis bundle (ZIP)",
        data=data,
        file_name="analysis_bundle.zip",
        mime="application/zip",
        on_click="ignore",
        width="stretch",
        help="PDF report, CSV tables, PNG plots, GIF animations, NPY arrays and the session log.",
    )


# ----------------------------------------------------------------------------------------------------------------
# Running the analysis


#: Analyses run here, not in the script thread: leaving the page (a rerun) stops the script, not the analysis, and
#: the next run of any page of the same session collects the job and shows its result. The model lock serialises
#: the work per model anyway; a few workers let sessions on different models proceed.
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tma-analysis")

#: The running job of each session, by Streamlit session id. Kept here and not in st.session_state: a run that the
#: user's navigation has superseded may not write session state any more (the write raises Streamlit's rerun
#: exception), and its job must still be found by the next run.
_JOBS: dict[str, AnalysisJob] = {}
_JOBS_LOCK = threading.Lock()
#: A finished job nobody collected (the session closed) is dropped after this many seconds.
JOB_TTL_S = 600.0


@dataclass
class AnalysisJob:
    """One analysis of one session: loading in the script thread, then running in the pool until collected."""

    model_id: str
    dtype: str
    text: str
    family_before: str | None
    future: Future[AnalysisResult] | None = None
    cancelled: bool = False  # the run was stopped before the analysis was handed to the pool
    started: float = field(default_factory=time.perf_counter)
    load_s: float | None = None  # seconds this click spent loading the model (its first use in the process)
    _progress: tuple[str, float] = ("Waiting for the model", 0.0)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def report(self, label: str, fraction: float) -> None:
        """core.analysis.pipeline progress callback (called in the worker thread: no Streamlit calls here)."""
        with self._lock:
            self._progress = (label, min(max(float(fraction), 0.0), 1.0))

    def progress(self) -> tuple[str, float]:
        with self._lock:
            return self._progress


def session_id() -> str:
    """The Streamlit session of the calling script run."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def register_job(sid: str, job: AnalysisJob) -> None:
    now = time.perf_counter()
    with _JOBS_LOCK:
        for other, j in list(_JOBS.items()):  # forget finished jobs of sessions that never came back
            if j.future is not None and j.future.done() and now - j.started > JOB_TTL_S:
                del _JOBS[other]
        _JOBS[sid] = job


def pending_job(sid: str | None = None) -> AnalysisJob | None:
    with _JOBS_LOCK:
        return _JOBS.get(sid or session_id())


def _forget(sid: str, job: AnalysisJob) -> None:
    with _JOBS_LOCK:
        if _JOBS.get(sid) is job:
            del _JOBS[sid]


def _set_error(kind: str, message: str, model_id: str) -> None:
    st.session_state[Keys.ERROR] = {"kind": kind, "message": message, "model": model_id}


def run_analysis() -> None:
    """Load (cached) in this thread, then analyse in the pool with progress in an st.status; the result or the
    error lands in session state (see wait_for_job)."""
    state = st.session_state
    sid = session_id()
    if pending_job(sid) is not None:  # one analysis per session at a time: finish the running one first
        wait_for_job()
    model_id = selected_model_id(state)
    text = state.get(Keys.TEXT, "")
    dtype = state.get(Keys.DTYPE) or "auto"
    job = AnalysisJob(model_id=model_id, dtype=dtype, text=text, family_before=known_family(state, model_id))
    register_job(sid, job)
    log.info("analysis job %x of session %s started (%d characters)", id(job), sid[:8], len(text))
    try:
        with st.sidebar:
            status = st.status("Analysing…", expanded=True)
        with status:
            try:
                if not model_id:
                    raise InputError("no model chosen: type a Hugging Face id or a local folder, or pick a preset")
                settings = current_settings(state)
                AnalysisSettings.check_text(text)
                if not is_loaded(model_id, dtype, "auto"):  # its own step: the first use waits for the load
                    st.write("Loading the model — first time only …")
                    t_load = time.perf_counter()
                    loaded = get_model(model_id, dtype, "auto")
                    job.load_s = time.perf_counter() - t_load
                else:
                    loaded = get_model(model_id, dtype, "auto")
                cache = get_result_cache()
            except Exception as exc:  # noqa: BLE001 - sorted into a banner by _finish_with_error (bugs are logged)
                _forget(sid, job)
                _finish_with_error(exc, model_id, status)
                return
            from core.analysis.pipeline import analyze

            job.future = _POOL.submit(analyze, loaded, text, settings=settings, cache=cache, progress=job.report)
    except BaseException:  # the user left the page before the analysis was handed over: the next run says so
        if job.future is None:
            job.cancelled = True
        raise
    wait_for_job(status)


def _finish_with_error(exc: BaseException, model_id: str, status: Any) -> None:
    if isinstance(exc, ModelUnavailableError):
        _set_error("unavailable", str(exc), model_id)
        status.update(label="The model is not available", state="error", expanded=False)
    elif isinstance(exc, TMAError):
        _set_error("input", str(exc), model_id)
        status.update(label="The analysis could not run", state="error", expanded=False)
    elif isinstance(exc, CancelledError):
        _set_error("input", "The analysis was cancelled before it finished; press Analyze to run it again.", model_id)
        status.update(label="The analysis was cancelled", state="error", expanded=False)
    else:  # never a raw traceback in the page: log it, show one line
        log.error("analysis failed for model %s", model_id, exc_info=exc)
        _set_error(
            "internal",
            "Something went wrong during the analysis. The details are in the server log; try "
            "a shorter text or another model.",
            model_id,
        )
        status.update(label="The analysis failed", state="error", expanded=False)


def wait_for_job(status: Any = None) -> None:
    """Show this session's running job until it ends, then store its result (or error) in session state.

    A rerun (the user leaves the page) interrupts this wait, not the job: the next run calls this again and the
    result is shown there. The result keeps its own text, so the page can say which text it belongs to.
    """
    state = st.session_state
    sid = session_id()
    job = pending_job(sid)
    if job is None:
        return
    if status is None:
        with st.sidebar:
            status = st.status(f"Analysing “{md_escape(_short(job.text))}” (still running)…", expanded=True)
    with status:
        label, frac = job.progress()
        bar = st.progress(frac, text=md_escape(label))
        while job.future is None and not job.cancelled:  # another run of this session is still loading the model
            time.sleep(0.25)
            bar.progress(0.0, text="Loading the model")
        if job.future is None:
            _forget(sid, job)
            _finish_with_error(CancelledError(), job.model_id, status)
            return
        while True:
            try:
                result = job.future.result(timeout=0.25)
                break
            except FutureTimeout:
                label, frac = job.progress()
                bar.progress(frac, text=md_escape(label))  # a pending rerun is raised here: the job runs on
            except BaseException as exc:  # noqa: BLE001 - the job's own failure (or its cancellation)
                _forget(sid, job)
                _finish_with_error(exc, job.model_id, status)
                return
        state[Keys.RESULT] = result
        state[Keys.RESULT_LOAD] = (job.model_id, job.dtype, "auto")
        state[Keys.ERROR] = None
        state[Keys.GEN_TEXT] = ""
        state[Keys.SESSION_LOG].append(session_entry(result))
        _forget(sid, job)  # only now: had a write above been interrupted, the next run collects it again
        log.info("analysis job %x of session %s collected", id(job), sid[:8])
        took = timing_phrase(result.duration_s, result.cache_hit, job.load_s)  # the footer's timing, once
        status.update(label=took[:1].upper() + took[1:], state="complete", expanded=False)
    if known_family(state, job.model_id) != job.family_before:
        st.rerun()  # the sidebar depends on the family (mask-word picker): draw it again with the result


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def draw_error_banner() -> None:
    """The banner for the last error (main area, every page). Offline → one button to the bundled model."""
    err = st.session_state.get(Keys.ERROR)
    if not err:
        return
    message = md_escape(err["message"])  # it may quote a model id or text: never Markdown (no live links)
    if err["kind"] == "unavailable":
        st.error(f"**Model not available.** {message}", icon=":material/cloud_off:")
        if err.get("model") != BUNDLED_ID:
            st.button(
                f"Switch to the bundled model ({BUNDLED_ID}) and analyse",
                key="switch_bundled",
                on_click=switch_to_bundled,
                type="primary",
            )
    elif err["kind"] == "input":
        st.error(message, icon=":material/edit_note:")
    else:
        st.error(message, icon=":material/error:")
    if st.session_state.get(Keys.RESULT) is not None:
        st.caption("The previous result is still shown below.")
