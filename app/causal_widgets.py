"""Sections of the Causal page: activation patching between a clean and a corrupted text (a background job of
app.jobs, started only by its Run button, cached) and the exact head ablation of the current analysis beside the
gradient head score. Widgets after a run only redraw the stored PatchingResult; they never run the model. The tables
behind the charts come from core.present.study_tables."""

from __future__ import annotations

import logging
from typing import Any

import altair as alt
import numpy as np
import streamlit as st

from app import downloads, job_widgets, jobs
from app.loading import get_model, get_result_cache, with_views
from app.markdown import md_escape
from app.sidebar import selected_model_id, start_analysis
from app.state import Keys
from app.widgets import chart
from core.analysis.result import AnalysisResult
from core.infra.errors import ModelUnavailableError, TMAError
from core.present import chart_spec, docs
from core.present.study_tables import (
    COMPONENT_NAMES,
    component_frame,
    head_ablation_frame,
    patching_frame,
    position_label,
)
from core.present.tables import readable_token
from core.steps.ablation import HeadAblationSection
from core.studies.patching import COMPONENTS, PatchingResult, PatchingSettings

log = logging.getLogger(__name__)

#: The name of the patching job in app.jobs (one per session).
PATCH_JOB = "patching"
EXAMPLES = {
    "causal_lm": (
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the store, Mary gave a drink to",
    ),
    "masked_lm": ("The capital of France is {mask}.", "The capital of Italy is {mask}."),
}


def details(key: str) -> None:
    """The Details entry of `key`: formula, reading, pitfalls (our own text, from core.present.docs)."""
    e = docs.doc(key)
    with st.expander(f"Details: {e.title}", expanded=False):
        if e.formula_latex:
            st.latex(e.formula_latex)
        st.markdown(e.definition)
        if e.high or e.low:
            st.markdown(f"**High.** {e.high}  \n**Low.** {e.low}")
        if e.pitfalls:
            st.markdown("**Pitfalls**\n" + "\n".join(f"- {p}" for p in e.pitfalls))


def token_counts(loaded: Any, clean: str, corrupt: str) -> tuple[list[str], list[str]]:
    tok = loaded.tokenizer
    return (
        tok.convert_ids_to_tokens(tok(clean)["input_ids"]) if clean.strip() else [],
        tok.convert_ids_to_tokens(tok(corrupt)["input_ids"]) if corrupt.strip() else [],
    )


# ----------------------------------------------------------------------------------------------------------------
# Charts


def heatmap(res: PatchingResult, component: str) -> alt.Chart:
    """Restored score per (block, position) of one component: diverging around 0, symmetric, at least ±1."""
    df = patching_frame(res, component)
    r = res.restored(component)
    lim = float(max(1.0, np.nanmax(np.abs(r)))) if np.isfinite(r).any() else 1.0
    order = [position_label(res, p) for p in range(res.n_tokens)]
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X("label:N", sort=order, title="position: clean→corrupted token"),
            y=alt.Y("block:O", sort="descending", title="block"),
            color=alt.Color(
                "restored:Q",
                scale=alt.Scale(scheme="redblue", reverse=True, domain=[-lim, lim], domainMid=0),
                title="restored",
            ),
            tooltip=[
                "block",
                "position",
                "clean token",
                "corrupted token",
                alt.Tooltip("restored:Q", format=".3f"),
                alt.Tooltip("m patched:Q", format=".3f"),
            ],
        )
        .properties(height=max(160, 22 * res.n_layers))
    )


def component_bars(res: PatchingResult) -> alt.Chart:
    """Restored by each block's attention and MLP output patched at every position at once."""
    return (
        alt.Chart(component_frame(res))
        .mark_bar()
        .encode(
            x=alt.X("block:O"),
            xOffset="component:N",
            y=alt.Y("restored:Q", title="restored (every position)"),
            color=alt.Color("component:N"),
            tooltip=["block", "component", alt.Tooltip("restored:Q", format=".3f")],
        )
        .properties(height=220)
    )


def ablation_heatmap(df: Any, n_layers: int) -> alt.Chart:
    lim = float(max(np.abs(df["mean-ablation drop"]).max(), 1e-9))
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x="head:O",
            y=alt.Y("layer:O", sort="descending"),
            color=alt.Color(
                "mean-ablation drop:Q",
                scale=alt.Scale(scheme="redblue", reverse=True, domain=[-lim, lim], domainMid=0),
            ),
            tooltip=list(df.columns),
        )
        .properties(height=max(160, 22 * n_layers), title="Mean ablation: drop of log p")
    )


#: The head-ablation scatter's least height in pixels: in a half-width column at 1 280 px a height that followed the
#: layer count alone (160 px for a 6-layer model) squeezed the points onto a line.
SCATTER_MIN_HEIGHT = 300


def ablation_scatter(df: Any, n_layers: int) -> alt.Chart:
    """Each head's gradient score (x) against its exact zero-ablation drop (y), with a title of its own and a
    fixed least height; the x labels are fewer and the last one kept inside the chart (it was cut at 1 920 px)."""
    return (
        alt.Chart(df)
        .mark_circle(size=50)
        .encode(
            x=alt.X(
                "gradient score:Q",
                axis=alt.Axis(tickCount=5, labelOverlap=True, labelBound=True, labelFlush=True),
                scale=alt.Scale(nice=True),
            ),
            y=alt.Y("zero-ablation drop:Q", scale=alt.Scale(nice=True)),
            tooltip=list(df.columns),
        )
        .properties(
            height=max(SCATTER_MIN_HEIGHT, 22 * n_layers),
            title=alt.TitleParams("Gradient score vs exact zero ablation", anchor="start"),
        )
    )


# ----------------------------------------------------------------------------------------------------------------
# Activation patching


def result_caption(res: PatchingResult) -> str:
    """The line under the answers: the metric, where it is read (chart_spec.target_phrase: no nested brackets), the
    two margins and the sanity checks."""
    return (
        f"m = logit(A) − logit(B) at {chart_spec.target_phrase(res.target_position, res.target_reason)}. Answers "
        f"from {res.answers_from}. m_clean = {res.m_clean:.3f}, m_corrupted = {res.m_corrupted:.3f}. Sanity: "
        f"block 1 at every position restores {res.sanity_block0:.4f} (should be 1), no patch "
        f"{res.sanity_identity:.4f} (should be 0)" + (" · from cache" if res.cache_hit else "")
    )


def show_result(res: PatchingResult) -> None:
    a, b, c = st.columns(3)
    a.metric("Answer A (clean)", readable_token(res.answer_token))
    b.metric("Wrong answer B (corrupted)", readable_token(res.wrong_token))
    c.metric("m clean − m corrupted", f"{res.denominator:.3f}")
    st.caption(md_escape(result_caption(res)))
    if res.tiny_difference:
        st.warning(
            f"|m_clean − m_corrupted| = {abs(res.denominator):.3g} is tiny: 'restored' divides by it, so "
            "the map below is mostly noise. Choose a pair of texts whose answers differ more.",
            icon=":material/warning:",
        )
    for w in res.warnings:
        if "tiny" not in w:
            st.warning(w, icon=":material/warning:")
    component = st.radio(
        "Component", COMPONENTS, key=Keys.PATCH_COMPONENT, horizontal=True, format_func=lambda c: COMPONENT_NAMES[c]
    )
    if not np.isfinite(res.metric[component]).any():
        st.info("This component was patched at every position at once only (see the bars below).")
    else:
        chart(heatmap(res, component))
        st.caption(docs.caption("activation_patching"))
    details("activation_patching")
    chart(component_bars(res))
    st.caption(docs.caption("patching_components"))
    details("patching_components")
    download(res)


def download(res: PatchingResult) -> None:
    """The patching bundle (what `python -m core patch` writes), built on the first click, kept for the result."""
    key = res.cache_key or f"id-{id(res)}"
    data = downloads.once(st.session_state, Keys.PATCH_ZIP, key, lambda: downloads.patching_zip(res))
    st.download_button(
        "Download patching bundle (ZIP)",
        data=data,
        file_name="patching_bundle.zip",
        mime="application/zip",
        on_click="ignore",
        key="patch_download",
        help="patching.csv, patching.json, plots/*.png, manifest.json and report.pdf — what `python -m core patch` "
        "writes.",
    )


def start_patching(model_id: str, dtype: str, clean: str, corrupt: str, settings: PatchingSettings) -> None:
    """Start activation patching as the session's background job (the model loads in the job, cached)."""

    def work(job: jobs.Job) -> PatchingResult:
        from core.studies import patching

        job.report("Loading the model", 0.0)
        loaded = get_model(model_id, dtype, "auto")
        return patching.patch(loaded, clean, corrupt, settings, cache=get_result_cache(), progress=job.report)

    job_widgets.start(PATCH_JOB, work, what="activation patching", meta={"model_id": model_id})


def collect(job: jobs.Job) -> None:
    job_widgets.store(job, Keys.PATCH_RESULT, Keys.PATCH_ERROR)


def _loaded_for_inputs(model_id: str, dtype: str) -> Any:
    """The sidebar's model for the live token counts (loaded once per process), or None with one line shown."""
    if not model_id:
        st.info("Type a Hugging Face id or a local folder in the sidebar to patch its activations.")
        return None
    try:
        return get_model(model_id, dtype, "auto")
    except ModelUnavailableError as exc:
        st.error(f"Model not available: {exc}", icon=":material/cloud_off:")
    return None


def patching_section() -> None:
    """Inputs (kept in the session), the Run button, the running job's progress and the stored result."""
    state = st.session_state
    model_id = selected_model_id(state)
    dtype = str(state.get(Keys.DTYPE) or "auto")
    loaded = _loaded_for_inputs(model_id, dtype)
    if loaded is not None and loaded.family not in EXAMPLES:
        st.info(
            f"{model_id} has no language-model head, so there is no answer to patch: choose a masked or causal "
            "LM in the sidebar (e.g. gpt2 or bert-base-uncased).",
            icon=":material/arrow_back:",
        )
        return
    if loaded is not None:
        if state.get(Keys.PATCH_CLEAN) is None or state.get(Keys.PATCH_FAMILY) != loaded.family:
            clean_ex, corrupt_ex = EXAMPLES[loaded.family]
            mask = loaded.tokenizer.mask_token or "[MASK]"
            state[Keys.PATCH_CLEAN] = clean_ex.format(mask=mask)
            state[Keys.PATCH_CORRUPT] = corrupt_ex.format(mask=mask)
            state[Keys.PATCH_FAMILY] = loaded.family
        left, right = st.columns(2)
        clean = left.text_area("Clean text", key=Keys.PATCH_CLEAN, height=90, max_chars=2000)
        corrupt = right.text_area(
            "Corrupted text (same token length)", key=Keys.PATCH_CORRUPT, height=90, max_chars=2000
        )
        c_toks, k_toks = token_counts(loaded, clean or "", corrupt or "")
        left.caption(f"{len(c_toks)} tokens")
        right.caption(f"{len(k_toks)} tokens")
        if c_toks and k_toks and len(c_toks) != len(k_toks):
            st.warning(
                "The two texts have different token lengths; patching needs the same length.",
                icon=":material/straighten:",
            )
            st.text("clean:     " + " | ".join(c_toks) + "\ncorrupted: " + " | ".join(k_toks))
        a_col, b_col = st.columns(2)
        answer = a_col.text_input(
            "Answer A (optional)",
            key=Keys.PATCH_ANSWER,
            help="A vocabulary token or text of one token; empty = the clean run's top-1.",
        )
        wrong = b_col.text_input(
            "Wrong answer B (optional)", key=Keys.PATCH_WRONG, help="Empty = the corrupted run's top-1 prediction."
        )
        if st.button("Run activation patching", key=Keys.PATCH_RUN, type="primary"):
            try:
                settings = PatchingSettings(answer=answer or None, wrong_answer=wrong or None)
            except TMAError as exc:
                state[Keys.PATCH_ERROR] = str(exc)
            else:
                start_patching(model_id, dtype, clean or "", corrupt or "", settings)
    job_widgets.follow(PATCH_JOB, collect, title="Activation patching …")
    if state.get(Keys.PATCH_ERROR):
        st.error("Activation patching could not run:", icon=":material/edit_note:")
        st.text(state[Keys.PATCH_ERROR])  # names the user's tokens: plain text, never Markdown
    res = state.get(Keys.PATCH_RESULT)
    if res is not None:
        st.divider()
        st.text(f"Clean:     {res.clean_text}\nCorrupted: {res.corrupted_text}")
        show_result(res)


# ----------------------------------------------------------------------------------------------------------------
# Head ablation


def _analyse_with_head_ablation(result: AnalysisResult) -> None:
    """The tab's button: the same text and settings with head ablation on, as the session's analysis job."""
    state = st.session_state
    state[Keys.HEAD_ABLATION] = True  # the sidebar's control shows what the new analysis used
    model_id, dtype, _ = state.get(Keys.RESULT_LOAD) or (result.model.model_id, "auto", "auto")
    refused = start_analysis(state, model_id, result.text, dtype, result.settings.replace(head_ablation=True))
    if refused:
        state[Keys.ERROR] = {"kind": "input", "message": refused, "model": model_id}


def head_ablation_section(result: AnalysisResult | None) -> None:
    """Exact head ablation beside the gradient head score; without it, a button that computes it."""
    if result is not None and result.settings.head_ablation:  # computed on this tab's first visit (a job)
        result = with_views(result, ["head_ablation"])
    section: HeadAblationSection | None = result.head_ablation if result is not None else None
    if section is None:
        if result is None:
            st.info("Analyse a text first (sidebar): head ablation is computed for the analysed text.")
            return
        if result.settings.head_ablation:
            st.info("Head ablation could not be computed for this analysis (see the warning above).")
            return
        st.info(
            "Head ablation replaces each head's output by its mean (and by zero) and measures the change of log p "
            "of the prediction: about one batched forward pass per layer. It is off for this analysis (sidebar → "
            "Settings → Head ablation).",
            icon=":material/info:",
        )
        st.button(
            "Analyse this text again with head ablation",
            key="head_ablation_go",
            type="primary",
            on_click=_analyse_with_head_ablation,
            args=(result,),
        )
        return
    scores = result.attribution.head_scores if result is not None and result.attribution is not None else None
    df = head_ablation_frame(section, scores)
    L = section.mean_ablation.shape[0]
    st.text(
        f"Prediction {readable_token(section.token)} at position {section.target_position}, "
        f"log p = {section.logprob:.3f}"
    )
    st.caption(docs.caption("head_ablation"))
    left, right = st.columns(2)
    with left:
        chart(ablation_heatmap(df, L))
    with right:
        if scores is None:
            st.info("The gradient head score is not available for this result (gradients switched off).")
        else:
            rho = section.agreement(scores)
            chart(ablation_scatter(df, L))
            st.caption(
                f"Spearman ρ (gradient score, drop): zero ablation {rho['zero_ablation']:.2f}, mean ablation "
                f"{rho['mean_ablation']:.2f}. The gradient score is the first-order estimate of the "
                "zero-ablation drop: where they disagree, the linear picture misleads."
            )
    details("head_ablation")
