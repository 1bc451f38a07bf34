"""The Causal page's pair data set section: patching over many prompt pairs, exact beside attribution patching.

`pairs_section()` draws everything: a pairs file (.csv / .jsonl upload, or pasted text), its column names, the
mode (exact grid + AtP, AtP alone, or the top K AtP sites patched exactly), a Run button, then the stored
core.studies.pairs.PairsResult: pairs used, near ties (listed), exact and AtP heatmaps side by side with one colour
scale, their scatter and correlation, the table with intervals and CSV downloads. The model runs only on the Run
button, as the session's background job (app.jobs; core.studies.pairs.patch_pairs, cached; or, when the operator
set $TMA_RAY_ADDRESS, on that Ray cluster through app.cluster); every other widget redraws the stored result. User
text is shown as plain text or in data frames, never as Markdown.
"""

from __future__ import annotations

import logging

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app import cluster, job_widgets, jobs
from app.loading import get_model, get_result_cache
from app.sidebar import selected_model_id
from app.state import Keys
from app.widgets import chart
from core.figures.causal import display_token
from core.infra.errors import ModelUnavailableError, TMAError
from core.present import docs
from core.studies.pairs import PairsResult, PairsSettings, parse_pairs, patch_pairs
from core.studies.patching import COMPONENTS, TINY_DIFFERENCE

log = logging.getLogger(__name__)

COMPONENT_NAMES = {"residual": "Residual stream (block input)", "attention": "Attention output", "mlp": "MLP output"}
MODES = {"exact": "Exact grid + AtP", "atp": "AtP only (screen)", "top": "AtP, then the top K sites exactly"}
#: Largest pairs file accepted from the page (bytes); the CLI takes larger ones.
MAX_UPLOAD_BYTES = 5_000_000
#: The background job's name (app.jobs): one pair data set run per session at a time.
PAIRS_JOB = "patching_pairs"


class PairKeys:
    """Session-state keys of this section (prefixed so they never meet the page's own)."""

    UPLOAD = "pairs_upload"
    PASTE = "pairs_paste"
    PASTE_FORMAT = "pairs_paste_format"
    CLEAN_COL = "pairs_clean_column"
    CORRUPT_COL = "pairs_corrupt_column"
    ANSWER_COL = "pairs_answer_column"
    WRONG_COL = "pairs_wrong_column"
    MODE = "pairs_mode"
    TOP_K = "pairs_top_k"
    RUN = "pairs_run"
    COMPONENT = "pairs_component"
    RESULT = "pairs_result"
    ENGINE = "pairs_engine"  # where the stored result was computed (app.cluster.Engine.label)
    ERROR = "pairs_error"


def _source() -> tuple[bytes, str] | None:
    """(bytes, file name) of the uploaded file, else of the pasted text; None when neither."""
    up = st.session_state.get(PairKeys.UPLOAD)
    if up is not None:
        return up.getvalue(), str(up.name)
    text = st.session_state.get(PairKeys.PASTE) or ""
    if text.strip():
        return text.encode("utf-8"), f"pasted.{st.session_state.get(PairKeys.PASTE_FORMAT) or 'csv'}"
    return None


def _start(model_id: str, dtype: str) -> None:
    """Read the pairs (in the script: a bad file is one line at once), then run them as the session's job."""
    state = st.session_state
    state[PairKeys.ERROR] = None
    src = _source()
    if src is None:
        state[PairKeys.ERROR] = "Upload a .csv or .jsonl file of pairs, or paste one."
        return
    data, name = src
    if len(data) > MAX_UPLOAD_BYTES:
        state[PairKeys.ERROR] = f"The pairs file is larger than {MAX_UPLOAD_BYTES:,} bytes; run it with the CLI."
        return
    mode = state.get(PairKeys.MODE) or "exact"
    try:
        pairs = parse_pairs(
            data,
            name,
            clean_column=state.get(PairKeys.CLEAN_COL) or "clean",
            corrupt_column=state.get(PairKeys.CORRUPT_COL) or "corrupt",
            answer_column=state.get(PairKeys.ANSWER_COL) or None,
            wrong_column=state.get(PairKeys.WRONG_COL) or None,
        )
        settings = PairsSettings(
            atp_only=mode == "atp", top_k=int(state.get(PairKeys.TOP_K) or 20) if mode == "top" else None
        )
        engine = cluster.current()  # the operator's $TMA_RAY_ADDRESS, else this process
    except TMAError as exc:
        state[PairKeys.ERROR] = str(exc)
        return

    def work(job: jobs.Job) -> PairsResult:
        if engine.is_ray:  # the same engine as `patch --pairs --engine ray` (no result cache there)
            job.report(f"Sending {len(pairs)} pairs to {engine.label} …", 0.0)
            return cluster.run_pairs(engine, model_id, dtype, pairs, settings, job.report)
        job.report("Loading the model", 0.0)
        loaded = get_model(model_id, dtype, "auto")
        return patch_pairs(loaded, pairs, settings, cache=get_result_cache(), progress=job.report)

    meta = {"model_id": model_id, "engine": engine.label}
    out = jobs.start(state, PAIRS_JOB, work, what="patching over pairs", meta=meta)
    if isinstance(out, str):
        job_widgets.refused(out)


def _collect(job: jobs.Job) -> None:
    state = st.session_state
    if job.ok:
        state[PairKeys.RESULT] = job.result
        state[PairKeys.ENGINE] = job.meta.get("engine")
        state[PairKeys.ERROR] = None
    else:
        state[PairKeys.ERROR] = job.error


def mean_frame(res: PairsResult, component: str) -> pd.DataFrame:
    """One row per (block, position) of `component`: exact and AtP means, interval, n, position label."""
    rows = []
    for l, p, c, restored, n, low, high, atp in res.rows():
        if c != component or p < 0:
            continue
        rows.append(
            {
                "block": l,
                "position": p,
                "label": f"{p}: {display_token(res.tokens[p])}",
                "exact": restored if np.isfinite(restored) else None,
                "AtP": atp,
                "ci low": low if np.isfinite(low) else None,
                "ci high": high if np.isfinite(high) else None,
                "pairs": n,
            }
        )
    return pd.DataFrame(rows)


def side_by_side(res: PairsResult, component: str) -> alt.HConcatChart:
    """Exact (left) and AtP (right) mean restored, blocks × positions, on one diverging colour scale."""
    df = mean_frame(res, component)
    vals = np.abs(pd.concat([df["exact"], df["AtP"]]).dropna().to_numpy(dtype=float))
    lim = float(max(1.0, vals.max())) if vals.size else 1.0
    order = [f"{p}: {display_token(t)}" for p, t in enumerate(res.tokens)]
    scale = alt.Scale(scheme="redblue", reverse=True, domain=[-lim, lim], domainMid=0)

    def grid(field: str, title: str) -> alt.Chart:
        long = df.rename(columns={field: "restored"})
        return (
            alt.Chart(long)
            .mark_rect()
            .encode(
                x=alt.X("label:N", sort=order, title="position (first pair's clean token)"),
                y=alt.Y("block:O", sort="descending"),
                color=alt.Color("restored:Q", scale=scale, title="restored"),
                tooltip=["block", "label", alt.Tooltip("restored:Q", format=".3f"), "pairs"],
            )
            .properties(title=title, height=max(160, 22 * res.n_layers))
        )

    return alt.hconcat(grid("exact", "Exact patching (mean over pairs)"), grid("AtP", "Attribution patching"))


def scatter(res: PairsResult) -> alt.Chart:
    df = pd.concat([mean_frame(res, c).assign(component=COMPONENT_NAMES[c]) for c in COMPONENTS])
    df = df.dropna(subset=["exact"])
    return (
        alt.Chart(df)
        .mark_circle(size=40)
        .encode(
            x=alt.X("exact:Q", title="exact restored"),
            y=alt.Y("AtP:Q", title="AtP estimate"),
            color="component:N",
            tooltip=[
                "component",
                "block",
                "label",
                alt.Tooltip("exact:Q", format=".3f"),
                alt.Tooltip("AtP:Q", format=".3f"),
            ],
        )
        .properties(height=260, title="Exact vs AtP, one point per site")
    )


def show_pairs_result(res: PairsResult) -> None:
    """Draw a stored PairsResult (no model run)."""
    a, b, c, d = st.columns(4)
    a.metric("Pairs", len(res.pairs))
    b.metric("In the means", int(res.used.sum()))
    c.metric("Near ties", len(res.near_ties))
    r = res.correlation()
    d.metric("Exact vs AtP r", f"{r:.3f}" if np.isfinite(r) else "—")
    st.caption(
        f"{res.n_tokens} tokens a pair, target position {res.target_position} ({res.target_reason}); restored = "
        f"mean over pairs of each pair's restored fraction, {res.settings.level:.0%} Student-t interval over pairs"
        + (" · from cache" if res.cache_hit else "")
    )
    for w in res.warnings:
        st.warning(w, icon=":material/warning:")
    if res.near_ties:
        st.caption(f"Near ties (|m_clean − m_corrupted| < {TINY_DIFFERENCE}), listed rather than averaged:")
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "pair": p.index,
                        "clean": p.clean_text,
                        "corrupted": p.corrupted_text,
                        "m clean": p.m_clean,
                        "m corrupted": p.m_corrupted,
                    }
                    for p in res.near_ties
                ]
            ),
            hide_index=True,
        )
    component = st.radio(
        "Component", COMPONENTS, key=PairKeys.COMPONENT, horizontal=True, format_func=lambda c: COMPONENT_NAMES[c]
    )
    chart(side_by_side(res, component))
    st.caption(docs.caption("attribution_patching"))
    if any(np.isfinite(res.metric[c]).any() for c in COMPONENTS):
        chart(scatter(res), stretch=False)
    table = pd.DataFrame(
        res.rows(), columns=["layer", "position", "component", "restored", "n_pairs", "ci_low", "ci_high", "atp"]
    )
    st.dataframe(table[table["component"] == component], hide_index=True, height=240)
    left, right = st.columns(2)
    left.download_button("patching.csv", table.to_csv(index=False).encode(), "patching.csv", "text/csv")
    cells = pd.DataFrame(
        res.pair_rows(),
        columns=["pair", "layer", "position", "component", "restored", "atp", "m_patched", "atp_delta", "near_tie"],
    )
    right.download_button("patching_pairs.csv", cells.to_csv(index=False).encode(), "patching_pairs.csv", "text/csv")


def pairs_section() -> None:
    """The whole section: inputs, the Run button, the running job's progress and the stored result."""
    state = st.session_state
    model_id = selected_model_id(state)
    dtype = str(state.get(Keys.DTYPE) or "auto")
    if not model_id:
        st.info("Type a Hugging Face id or a local folder in the sidebar to patch its activations.")
        return
    try:
        family = get_model(model_id, dtype, "auto").family
    except ModelUnavailableError as exc:
        st.error(f"Model not available: {exc}", icon=":material/cloud_off:")
        return
    if family not in ("causal_lm", "masked_lm"):
        st.info(
            f"{model_id} has no language-model head, so there is no answer to patch: choose a masked or causal LM.",
            icon=":material/arrow_back:",
        )
        return
    st.caption(
        "A data set of prompt pairs of one token length (templated, e.g. the indirect-object task): the mean "
        "restored fraction over pairs with its interval, and attribution patching of every site beside it."
    )
    st.file_uploader("Pairs file (.csv with a header row, or .jsonl)", type=["csv", "jsonl"], key=PairKeys.UPLOAD)
    with st.expander("…or paste the pairs", expanded=False):
        st.radio("Format", ["csv", "jsonl"], key=PairKeys.PASTE_FORMAT, horizontal=True)
        st.text_area("Pairs", key=PairKeys.PASTE, height=120, placeholder="clean,corrupt\nThe dog …,The cat …")
    cols = st.columns(4)
    cols[0].text_input("Clean column", value="clean", key=PairKeys.CLEAN_COL)
    cols[1].text_input("Corrupted column", value="corrupt", key=PairKeys.CORRUPT_COL)
    cols[2].text_input("Answer column (optional)", key=PairKeys.ANSWER_COL, help="empty: the clean top-1")
    cols[3].text_input("Wrong-answer column (optional)", key=PairKeys.WRONG_COL, help="empty: the corrupted top-1")
    m_col, k_col = st.columns([3, 1])
    mode = m_col.radio("Mode", list(MODES), key=PairKeys.MODE, horizontal=True, format_func=lambda m: MODES[m])
    k_col.number_input("K", min_value=1, max_value=10_000, value=20, key=PairKeys.TOP_K, disabled=mode != "top")
    if st.button("Run patching over the pairs", key=PairKeys.RUN, type="primary"):
        _start(model_id, dtype)
    job_widgets.follow(PAIRS_JOB, _collect, title="Patching over the pairs …")
    if state.get(PairKeys.ERROR):
        st.error("Patching over the pairs could not run:", icon=":material/edit_note:")
        st.text(state[PairKeys.ERROR])  # may name the user's text: plain text, never Markdown
    res = state.get(PairKeys.RESULT)
    if isinstance(res, PairsResult):
        st.divider()
        if state.get(PairKeys.ENGINE):
            st.caption(f"Ran on {state[PairKeys.ENGINE]}.")
        show_pairs_result(res)
        e = docs.doc("attribution_patching")
        with st.expander(f"Details: {e.title}", expanded=False):
            if e.formula_latex:
                st.latex(e.formula_latex)
            st.markdown(e.definition)
            if e.pitfalls:
                st.markdown("**Pitfalls**\n" + "\n".join(f"- {p}" for p in e.pitfalls))
