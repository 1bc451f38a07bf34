"""Causal page: activation patching between a clean and a corrupted text (runs only on the Run button, cached), and
the exact head ablation of the current analysis beside the gradient head score. Widgets after a run only redraw
the stored PatchingResult; they never run the model."""

from __future__ import annotations

import logging
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app.loading import get_model, get_result_cache, with_views
from app.sidebar import selected_model_id
from app.state import Keys
from app.widgets import chart, guarded
from core.figures.causal import display_token
from core.infra.errors import ModelUnavailableError, TMAError
from core.present import docs
from core.studies.patching import (
    COMPONENTS,
    TINY_DIFFERENCE,
    PatchingResult,
    PatchingSettings,
    patch,
)

log = logging.getLogger(__name__)

COMPONENT_NAMES = {"residual": "Residual stream (block input)", "attention": "Attention output", "mlp": "MLP output"}
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


def run(loaded: Any, clean: str, corrupt: str, settings: PatchingSettings) -> None:
    bar = st.progress(0.0, text="Starting")

    def progress(label: str, fraction: float) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=label)

    try:
        st.session_state[Keys.PATCH_RESULT] = patch(
            loaded, clean, corrupt, settings, cache=get_result_cache(), progress=progress
        )
        st.session_state[Keys.PATCH_ERROR] = None
    except TMAError as exc:
        st.session_state[Keys.PATCH_ERROR] = str(exc)
    except Exception:  # never a raw traceback in the page
        log.exception("activation patching failed")
        st.session_state[Keys.PATCH_ERROR] = (
            "Activation patching failed; the details are in the server log. Try shorter texts or another model."
        )
    bar.empty()


def _pos_label(res: PatchingResult, p: int) -> str:
    c, k = display_token(res.clean_tokens[p]), display_token(res.corrupted_tokens[p])
    return f"{p}: {c}" + (f" → {k}" if c != k else "")


def heatmap(res: PatchingResult, component: str) -> alt.Chart:
    r = res.restored(component)
    rows = [
        {
            "block": l,
            "position": p,
            "clean token": res.clean_tokens[p],
            "corrupted token": res.corrupted_tokens[p],
            "label": _pos_label(res, p),
            "restored": float(r[l, p]),
            "m patched": float(res.metric[component][l, p]),
        }
        for l in range(res.n_layers)
        for p in range(res.n_tokens)
        if np.isfinite(r[l, p])
    ]
    df = pd.DataFrame(rows)
    lim = float(max(1.0, np.nanmax(np.abs(r)))) if np.isfinite(r).any() else 1.0
    order = [_pos_label(res, p) for p in range(res.n_tokens)]
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
    df = pd.DataFrame(
        [
            {"block": l, "component": COMPONENT_NAMES[c], "restored": float(res.restored_all(c)[l])}
            for c in ("attention", "mlp")
            for l in range(res.n_layers)
        ]
    )
    return (
        alt.Chart(df)
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


def show_result(res: PatchingResult) -> None:
    a, b, c = st.columns(3)
    a.metric("Answer A (clean)", repr(res.answer_token))
    b.metric("Wrong answer B (corrupted)", repr(res.wrong_token))
    c.metric("m clean − m corrupted", f"{res.denominator:.3f}")
    st.caption(
        f"m = logit(A) − logit(B) at position {res.target_position} ({res.target_reason}); answers from "
        f"{res.answers_from}. m_clean = {res.m_clean:.3f}, m_corrupted = {res.m_corrupted:.3f}. Sanity: "
        f"block 0 at every position restores {res.sanity_block0:.4f} (should be 1), no patch "
        f"{res.sanity_identity:.4f} (should be 0)" + (" · from cache" if res.cache_hit else "")
    )
    if abs(res.denominator) < TINY_DIFFERENCE:
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


def head_ablation_section(result: Any) -> None:
    section = getattr(result, "head_ablation", None) if result is not None else None
    if section is None:
        st.info(
            "Turn on **Head ablation** in the sidebar settings and analyse a text: each head's output is "
            "replaced by its mean (and by zero) and the change of log p of the prediction is measured.",
            icon=":material/info:",
        )
        return
    attribution = getattr(result, "attribution", None)
    scores = getattr(attribution, "head_scores", None)
    L, H = section.mean_ablation.shape
    rows = []
    for l in range(L):
        for h in range(H):
            row = {
                "layer": l,
                "head": h,
                "mean-ablation drop": float(-section.mean_ablation[l, h]),
                "zero-ablation drop": float(-section.zero_ablation[l, h]),
            }
            if scores is not None:
                row["gradient score"] = float(scores[l, h])
            rows.append(row)
    df = pd.DataFrame(rows)
    st.text(f"Prediction {section.token!r} at position {section.target_position}, log p = {section.logprob:.3f}")
    st.caption(docs.caption("head_ablation"))
    lim = float(max(np.abs(df["mean-ablation drop"]).max(), 1e-9))
    left, right = st.columns(2)
    with left:
        chart(
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
            .properties(height=max(160, 22 * L), title="Mean ablation: drop of log p")
        )
    with right:
        if scores is None:
            st.info("The gradient head score is not available for this result (gradients switched off).")
        else:
            rho = section.agreement(scores)
            chart(
                alt.Chart(df)
                .mark_circle(size=50)
                .encode(
                    x=alt.X("gradient score:Q"),
                    y=alt.Y("zero-ablation drop:Q"),
                    tooltip=list(df.columns),
                )
                .properties(height=max(160, 22 * L), title="Gradient score vs exact zero ablation")
            )
            st.caption(
                f"Spearman ρ (gradient score, drop): zero ablation {rho['zero_ablation']:.2f}, mean ablation "
                f"{rho['mean_ablation']:.2f}. The gradient score is the first-order estimate of the "
                "zero-ablation drop: where they disagree, the linear picture misleads."
            )
    details("head_ablation")


# ----------------------------------------------------------------------------------------------------------------
# The page

st.title("Causal evidence")
st.caption(
    "Attention and gradients say where a model looks; patching and ablation say what it needs. Patch the "
    "activations of a clean run into a corrupted one and see which layer and position restore the answer."
)

tab_patch, tab_heads = st.tabs(["Activation patching", "Head ablation"])
with tab_patch, guarded("activation patching"):
    state = st.session_state
    model_id = selected_model_id(state)
    dtype = state.get(Keys.DTYPE) or "auto"
    loaded = None
    try:
        loaded = get_model(model_id, dtype, "auto")
    except ModelUnavailableError as exc:
        st.error(f"Model not available: {exc}", icon=":material/cloud_off:")
    if loaded is not None and loaded.family not in EXAMPLES:
        st.info(
            f"{model_id} has no language-model head, so there is no answer to patch: choose a masked or causal "
            "LM in the sidebar (e.g. gpt2 or bert-base-uncased).",
            icon=":material/arrow_back:",
        )
    elif loaded is not None:
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
                run(loaded, clean or "", corrupt or "", settings)
        if state.get(Keys.PATCH_ERROR):
            st.error("Activation patching could not run:", icon=":material/edit_note:")
            st.text(state[Keys.PATCH_ERROR])  # names the user's tokens: plain text, never Markdown
        res = state.get(Keys.PATCH_RESULT)
        if res is not None:
            st.divider()
            st.text(f"Clean:     {res.clean_text}\nCorrupted: {res.corrupted_text}")
            show_result(res)

with tab_heads, guarded("head ablation"):
    _result = st.session_state.get(Keys.RESULT)
    if _result is not None and _result.settings.head_ablation:  # computed on this page's first visit
        _result = with_views(_result, ["head_ablation"])
    head_ablation_section(_result)
