"""The Causal page's "SAE feature" tab: one sparse-autoencoder feature (and the SAE's error term) as a patching site.

Shown when the sidebar has SAE folders. Picks one of them and a feature, takes the clean and corrupted texts and the
answers of the Activation patching tab, and runs core.studies.sae_patching as the session's background job (app.jobs,
started only by the Run button). The result is drawn from the stored SAEPatchingResult: restored shares of the
feature, the error term and the whole site at every position, the ablation Δm, and a per-position table and chart;
no widget change runs the model.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app import downloads, job_widgets, jobs
from app.loading import get_model
from app.sae_widgets import chosen_dirs
from app.sidebar import selected_model_id
from app.state import Keys
from app.widgets import chart
from core.infra import guards
from core.infra.errors import InputError, TMAError
from core.infra.formats import csv_bytes
from core.present import docs
from core.studies.patching import PatchingSettings
from core.studies.sae_patching import CSV_HEADER, SAEPatchingResult

#: The name of the job in app.jobs (one per session).
SAE_PATCH_JOB = "sae_patching"


def position_frame(res: SAEPatchingResult) -> pd.DataFrame:
    """One row per position up to the target: tokens, the feature's activations, restored by the feature and the
    error term patched there alone, and Δm of ablating the feature there."""
    n = int(np.isfinite(res.act_clean).sum())  # a causal LM's positions after the target were not run
    rows = []
    for p in range(n):
        rows.append(
            {
                "position": p,
                "label": f"{p}: {res.clean_tokens[p]}→{res.corrupted_tokens[p]}",
                "clean token": res.clean_tokens[p],
                "corrupted token": res.corrupted_tokens[p],
                "activation clean": float(res.act_clean[p]),
                "activation corrupted": float(res.act_corrupted[p]),
                "restored (feature)": res.restored(float(res.feature_patch[p])),
                "restored (error)": res.restored(float(res.error_patch[p])),
                "ablation Δm": float(res.feature_ablation[p]),
            }
        )
    return pd.DataFrame(rows)


def show_result(res: SAEPatchingResult) -> None:
    st.text(
        f"SAE {res.sae_name} at {res.hook_name}, feature {res.feature} of {res.d_sae}. Answer {res.answer_token!r} "
        f"vs {res.wrong_token!r} ({res.answers_from}); m_clean = {res.m_clean:.3f}, "
        f"m_corrupted = {res.m_corrupted:.3f}, target position {res.target_position}"
    )
    if res.tiny_difference:
        st.warning(
            f"|m_clean − m_corrupted| = {abs(res.denominator):.3g} is tiny: 'restored' divides by it.",
            icon=":material/warning:",
        )
    for w in res.warnings:
        if "tiny" not in w:
            st.warning(guards.scrub_paths(w), icon=":material/warning:")
    a, b, c, d = st.columns(4)
    a.metric("Restored by the feature", f"{res.restored(res.feature_patch_all):.3f}", help="every position")
    b.metric("Restored by the error term", f"{res.restored(res.error_patch_all):.3f}", help="every position")
    c.metric("Restored by the whole site", f"{res.restored(res.site_patch_all):.3f}", help="every position")
    d.metric("Ablating the feature: Δm", f"{res.feature_ablation_all:+.3f}", help="clean run, every position")
    st.caption(
        f"Ablating the error term in the clean run: Δm = {res.error_ablation_all:+.3f}. "
        + docs.caption("sae_feature_patching")
    )
    df = position_frame(res)
    long = df.melt(id_vars=["position", "label"], value_vars=["restored (feature)", "ablation Δm"], var_name="measure")
    chart(
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("label:N", sort=list(df["label"]), title="position: clean→corrupted token"),
            y=alt.Y("value:Q", title=None),
            color="measure:N",
            row=alt.Row("measure:N", title=None),
            tooltip=["label", "measure", alt.Tooltip("value:Q", format=".3f")],
        )
        .properties(height=140)
        .resolve_scale(y="independent")
    )
    st.dataframe(df.drop(columns=["label"]), hide_index=True)
    st.download_button(
        "Download sae_patching.csv",
        data=csv_bytes(CSV_HEADER, res.rows()),
        file_name="sae_patching.csv",
        mime="text/csv",
        on_click="ignore",
        key="sae_patch_download",
    )
    data = downloads.once(
        st.session_state, Keys.SAE_PATCH_ZIP, f"id-{id(res)}", lambda: downloads.sae_patching_zip(res)
    )
    st.download_button(
        "Download bundle (ZIP)",
        data=data,
        file_name="sae_patching.zip",
        mime="application/zip",
        on_click="ignore",
        key="sae_patch_zip_download",
        help="sae_patching.csv, sae_patching.json, manifest.json, plots/sae_patching.png, report.pdf",
    )
    with st.expander(f"Details: {docs.doc('sae_feature_patching').title}", expanded=False):
        e = docs.doc("sae_feature_patching")
        st.latex(e.formula_latex)
        st.markdown(e.definition)
        st.markdown("**Pitfalls**\n" + "\n".join(f"- {p}" for p in e.pitfalls))


def start(model_id: str, dtype: str, folder: str, feature: int, clean: str, corrupt: str, settings: Any) -> None:
    def work(job: jobs.Job) -> SAEPatchingResult:
        from core.model.sae import load_sae
        from core.studies.sae_patching import run_sae_patching

        job.report("Loading the model and the SAE", 0.0)
        loaded = get_model(model_id, dtype, "auto")
        return run_sae_patching(loaded, clean, corrupt, load_sae(folder), feature, settings, progress=job.report)

    job_widgets.start(SAE_PATCH_JOB, work, what="SAE feature patching", meta={"model_id": model_id})


def collect(job: jobs.Job) -> None:
    job_widgets.store(job, Keys.SAE_PATCH_RESULT, Keys.SAE_PATCH_ERROR)


def _describe(folder: str) -> tuple[str, int | None, str]:
    """(label, d_sae, hook name) of a folder, or (its one-line refusal, None, "")."""
    from core.model.sae import load_sae

    try:
        s = load_sae(folder)
    except InputError as exc:
        return guards.scrub_paths(str(exc)), None, ""
    return f"{s.name} ({s.hook_name}, {s.d_sae} features)", s.d_sae, s.hook_name


def sae_patch_section(result: Any = None) -> None:
    """The tab: the SAE and feature pickers, the Run button, the running job and the stored result."""
    state = st.session_state
    folders = list(chosen_dirs(state))
    if not folders:
        st.info("Type SAE folders in the sidebar (SAE folders) to patch a single feature.")
        return
    if state.get(Keys.SAE_PATCH_DIR) not in folders:
        state[Keys.SAE_PATCH_DIR] = folders[0]
    described = {f: _describe(f) for f in folders}
    folder = st.selectbox("SAE", folders, key=Keys.SAE_PATCH_DIR, format_func=lambda f: described[f][0])
    d_sae = described[folder][1]
    if d_sae is None:
        st.error(described[folder][0], icon=":material/folder_off:")
        return
    if int(state.get(Keys.SAE_PATCH_FEATURE) or 0) >= d_sae:
        state[Keys.SAE_PATCH_FEATURE] = 0
    feature = st.number_input("Feature", min_value=0, max_value=d_sae - 1, step=1, key=Keys.SAE_PATCH_FEATURE)
    sec = getattr(result, "sae", None)
    if sec is not None:
        match = [s for s in sec.saes if s.hook_name == described[folder][2]]
        if match:
            st.caption(f"Strongest features in the analysed text: {', '.join(map(str, match[0].strongest(10)))}")
    clean, corrupt = state.get(Keys.PATCH_CLEAN), state.get(Keys.PATCH_CORRUPT)
    if not clean or not corrupt:
        st.info("Type the clean and corrupted texts on the Activation patching tab first.")
    else:
        st.text(f"Clean:     {clean}\nCorrupted: {corrupt}")
        model_id = selected_model_id(state)
        if st.button("Patch and ablate this feature", key=Keys.SAE_PATCH_RUN, type="primary", disabled=not model_id):
            try:
                settings = PatchingSettings(
                    answer=state.get(Keys.PATCH_ANSWER) or None, wrong_answer=state.get(Keys.PATCH_WRONG) or None
                )
            except TMAError as exc:
                state[Keys.SAE_PATCH_ERROR] = str(exc)
            else:
                dtype = str(state.get(Keys.DTYPE) or "auto")
                start(model_id, dtype, folder, int(feature), clean, corrupt, settings)
    job_widgets.follow(SAE_PATCH_JOB, collect, title="SAE feature patching …")
    if state.get(Keys.SAE_PATCH_ERROR):
        st.error("SAE feature patching could not run:", icon=":material/edit_note:")
        st.text(state[Keys.SAE_PATCH_ERROR])
    res = state.get(Keys.SAE_PATCH_RESULT)
    if res is not None:
        st.divider()
        show_result(res)
