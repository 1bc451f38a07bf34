"""The sidebar, drawn by app/main.py on every page: model picker, text, settings, Analyze, progress, export.

The analysis runs only when the Analyze button is pressed (or the one-click "switch to the bundled model" asks for
it): no other widget change loads a model, runs gradients or generates text. Errors become a banner with a message
(core.infra.errors.TMAError) or a generic line (anything else, traceback in the log); the text and the last finished
result always survive an error.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import streamlit as st

from app import job_widgets, jobs, sae_widgets
from app.loading import VIEWS_JOB, background_views, get_model, get_result_cache, is_loaded, views_key
from app.markdown import md_escape
from app.settings_widgets import draw_settings, settings_from_state
from app.state import OTHER_MODEL, Keys
from core.analysis.pipeline import VIEWS, add_views
from core.analysis.result import AnalysisResult
from core.export.zip_export import build_zip
from core.infra.errors import InputError
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
    return settings_from_state(state, mask_word=mask_word, sae_dirs=sae_widgets.chosen_dirs(state))


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
            st.selectbox("Precision (dtype)", DTYPES, key=Keys.DTYPE, help="auto: float32 on CPU, bfloat16 on a GPU.")
            draw_settings(state)
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


def export_bytes(
    result: AnalysisResult,
    options: ExportOptions,
    load: tuple[str, str, str] | None,
    views_job: jobs.Job | None = None,
) -> bytes:
    """The export's ZIP: the deeper views the result lacks are computed first with the model it was made with
    (`load` = (model id, dtype, device) of get_model), so the bundle holds every view, as the CLI's does; should
    that fail, the bundle is written without them (their sections say so). When `views_job` (the session's views
    job at the click) computes them for this result, its result is awaited instead of computing them twice. The
    run is also kept under assets/runs/ (bounded); a read-only or full disk only skips that copy."""
    full = result
    if views_job is not None and views_job.meta.get("key") == views_key(result):
        if views_job.join().ok:
            full = views_job.result
    if load is not None and any(v not in full.views for v in VIEWS):
        try:
            full = add_views(get_model(*load), full, "all", cache=get_result_cache())
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
    views_job = jobs.running(st.session_state, VIEWS_JOB)

    def data() -> bytes:
        """Runs on the click, in a separate thread."""
        return export_bytes(result, options, load, views_job)

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


#: The name of the analysis job in app.jobs (one per session).
ANALYSIS_JOB = "analysis"


def start_analysis(
    state: Any,
    model_id: str,
    text: str,
    dtype: str = "auto",
    settings: AnalysisSettings | None = None,
) -> str | None:
    """Start the analysis of `text` on `model_id` as the session's background job (app.jobs): the model loads
    (cached) and core's analyze runs in the job, so leaving the page stops neither. Returns the refusal line when an
    analysis is already running, else None. With `settings` None they are read from the sidebar in the job's
    first step (an invalid value then fails the job with its one line)."""
    family_before = known_family(state, model_id)
    sidebar_settings: AnalysisSettings | Exception
    try:
        sidebar_settings = settings if settings is not None else current_settings(state)
    except Exception as exc:  # noqa: BLE001 - raised again in the job: the one place that turns it into a line
        sidebar_settings = exc

    def work(job: jobs.Job) -> AnalysisResult:
        if not model_id:
            raise InputError("no model chosen: type a Hugging Face id or a local folder, or pick a preset")
        if isinstance(sidebar_settings, Exception):
            raise sidebar_settings
        AnalysisSettings.check_text(text)
        if not is_loaded(model_id, dtype, "auto"):  # its own step: the first use waits for the load
            job.report("Loading the model — first time only …", 0.0)
            t_load = time.perf_counter()
            loaded = get_model(model_id, dtype, "auto")
            job.meta["load_s"] = time.perf_counter() - t_load
        else:
            loaded = get_model(model_id, dtype, "auto")
        job.check()
        from core.analysis import pipeline

        result = pipeline.analyze(
            loaded, text, settings=sidebar_settings, cache=get_result_cache(), progress=job.report
        )
        background_views(job.session, result, (model_id, dtype, "auto"))  # the deeper views, as a follow-on job
        return result

    out = jobs.start(
        state,
        ANALYSIS_JOB,
        work,
        what="the analysis",
        meta={"model_id": model_id, "dtype": dtype, "text": text, "family_before": family_before},
    )
    if isinstance(out, str):
        return out
    jobs.cancel(state, VIEWS_JOB)  # the views of the previous analysis are not wanted any more
    log.info("analysis of session %s started (%d characters)", out.session[:8], len(text))
    return None


def run_analysis() -> None:
    """The Analyze button: start the job with the sidebar's model, text and settings, then follow it."""
    state = st.session_state
    refused = start_analysis(
        state, selected_model_id(state), state.get(Keys.TEXT, ""), str(state.get(Keys.DTYPE) or "auto")
    )
    if refused:
        job_widgets.refused(refused, st.sidebar)
    follow_analysis()


def pending_job() -> jobs.Job | None:
    """The session's analysis job while it runs (or finished but not yet collected)."""
    job = jobs.get(st.session_state, ANALYSIS_JOB)
    return job if job is not None and (job.running or not job.collected) else None


def collect_analysis(job: jobs.Job) -> None:
    """Store a finished analysis job's result (or its error line) in the session."""
    state = st.session_state
    model_id = str(job.meta.get("model_id", ""))
    if not job.ok:
        kind = job.error_kind if job.error_kind in ("unavailable", "input", "internal") else "input"
        state[Keys.ERROR] = {"kind": kind, "message": job.error or "", "model": model_id}
        return
    result: AnalysisResult = job.result
    state[Keys.RESULT] = result
    state[Keys.RESULT_LOAD] = (model_id, str(job.meta.get("dtype", "auto")), "auto")
    state[Keys.ERROR] = None
    state[Keys.GEN_TEXT] = ""
    state.setdefault(Keys.SESSION_LOG, []).append(session_entry(result))


def follow_analysis() -> None:
    """Show this session's analysis while it runs (sidebar), then store its result or error in the session.

    A rerun (the user leaves the page) interrupts this wait, not the job: the next run of any page calls this
    again and the result is stored there. The result keeps its own text, so the page can say which text it is of.
    """
    state = st.session_state
    job = pending_job()
    if job is None:
        took = state.pop(Keys.TIMING_AFTER_RERUN, None)  # the line of the run that redrew the sidebar at once
        if took:
            with st.sidebar:
                st.caption(took)
        return
    with st.sidebar:
        title = f"Analysing “{_short(str(job.meta.get('text', '')))}” …"
        job_widgets.follow(ANALYSIS_JOB, collect_analysis, title=title)
        if job.ok:
            took = timing_phrase(job.result.duration_s, job.result.cache_hit, job.meta.get("load_s"))
            st.caption(took[:1].upper() + took[1:])
    if job.ok and known_family(state, str(job.meta.get("model_id", ""))) != job.meta.get("family_before"):
        # the sidebar depends on the family (mask-word picker): draw it again with the result. A model whose family
        # was not known before (a local folder, a hub id typed in) always gets here; its timing line is carried over
        # to the redrawn sidebar, or it would flash and vanish.
        state[Keys.TIMING_AFTER_RERUN] = took[:1].upper() + took[1:]
        st.rerun()


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
