"""Sections of the Corpus page: the texts' source (kept in the session, the uploaded file's name and content too),
the corpus settings, the Run button (a background job of app.jobs: core.studies.corpus.analyze_corpus through the
result cache, or the Ray engine when the operator set $TMA_RAY_ADDRESS, see app.cluster), and the stored result's
charts, table and ZIP. Every other widget only re-draws the stored result. The tables behind the charts come from
core.present.study_tables. With SAE folders set in the sidebar (app.sae_widgets.chosen_dirs) the same job also
runs core.studies.sae_corpus over the texts (on the cluster: core.studies.sae_corpus_ray); its view is
app.sae_corpus_widgets and its two CSVs go into the ZIP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app import cluster, downloads, job_widgets, jobs, sae_corpus_widgets, sae_widgets
from app.state import Keys
from core.export.corpus_bundle import DOC_KEY, METRICS_HEADER, label
from core.infra.errors import InputError
from core.infra.guards import max_corpus_texts
from core.present import docs
from core.present.study_tables import corpus_table_frame, per_text_frame, per_text_note, pooled_frame, pooled_note
from core.steps.metrics import METRIC_NAMES
from core.studies.corpus import CorpusResult, CorpusSettings, CorpusTexts
from core.studies.geometry import POOLED_METRICS
from core.studies.sae_corpus import SAEFeatureExamples

#: The name of the corpus job in app.jobs (one per session).
CORPUS_JOB = "corpus"
SOURCES = ("Upload .txt (one text per line)", "Upload .csv (pick a column)", "Paste lines")
DEFAULT_PLOTTED = ("effective_rank", "twonn_dimension", "anisotropy_cosine", "anisotropy_top_pc", "linearity")
_FIELDS = {f.name: f for f in dataclasses.fields(CorpusSettings)}
#: Session key of each corpus setting's widget.
SETTING_KEYS = {
    "max_tokens": Keys.CORPUS_MAX_TOKENS,
    "batch_size": Keys.CORPUS_BATCH,
    "bootstrap": Keys.CORPUS_BOOTSTRAP,
    "max_points": Keys.CORPUS_MAX_POINTS,
    "include_special_tokens": Keys.CORPUS_SPECIAL,
}


def _bounds(name: str) -> dict[str, Any]:
    f = _FIELDS[name]
    return {"min_value": f.metadata["min"], "max_value": f.metadata["max"], "help": f.metadata["help"]}


def init_inputs(state: Any) -> None:
    """The inputs' defaults, set once per session (the widgets then read and keep them by key)."""
    state.setdefault(Keys.CORPUS_SOURCE, SOURCES[0])
    state.setdefault(Keys.CORPUS_PASTE, "")
    for name, key in SETTING_KEYS.items():
        state.setdefault(key, _FIELDS[name].default)


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def kept_file(state: Any, source: str) -> tuple[str, bytes] | None:
    """The uploaded file kept in the session for `source` (.txt or .csv), or None."""
    kept = state.get(Keys.CORPUS_FILE)
    suffix = ".csv" if source == SOURCES[1] else ".txt"
    if kept and str(kept[0]).lower().endswith(suffix):
        return str(kept[0]), bytes(kept[1])
    return None


def read_texts(state: Any) -> CorpusTexts:
    """The texts of the chosen source; InputError with a user-facing message otherwise."""
    from core.studies.corpus import texts_from_csv, texts_from_lines

    source = state.get(Keys.CORPUS_SOURCE, SOURCES[0])
    if source == SOURCES[2]:
        return texts_from_lines(state.get(Keys.CORPUS_PASTE) or "", what="the pasted text")
    kept = kept_file(state, source)
    if kept is None:
        raise InputError("upload a file first")
    name, data = kept
    if source == SOURCES[1]:
        column = state.get(Keys.CORPUS_COLUMN)
        if not column:
            raise InputError("pick the column that holds the texts")
        return texts_from_csv(data, column, what=f"'{name}'")
    return texts_from_lines(data, what=f"'{name}'")


def _file_input(source: str, key: str, kind: str, label_: str) -> tuple[str, bytes] | None:
    """The uploader; a new upload replaces the kept file, which outlives the uploader (emptied by navigation)."""
    state = st.session_state
    upload = st.file_uploader(label_, type=[kind], key=key)
    if upload is not None:
        state[Keys.CORPUS_FILE] = (upload.name, upload.getvalue())
    kept = kept_file(state, source)
    if kept is not None and upload is None:
        st.caption(f"Using '{kept[0]}' ({len(kept[1]):,} bytes), uploaded earlier in this session.".replace(",", " "))
    return kept


def draw_inputs() -> bool:
    """Source, settings and the Run button; True when Run was pressed."""
    state = st.session_state
    init_inputs(state)
    source = st.radio("Texts from", SOURCES, key=Keys.CORPUS_SOURCE, horizontal=True)
    if source == SOURCES[0]:
        _file_input(source, "corpus_upload_txt", "txt", "Text file (UTF-8, one text per line)")
    elif source == SOURCES[1]:
        kept = _file_input(source, "corpus_upload_csv", "csv", "CSV file (UTF-8, with a header row)")
        if kept is not None:
            from core.studies.corpus import csv_columns, text_column

            try:
                cols = csv_columns(kept[1], what=f"'{kept[0]}'")
                guess = text_column(kept[1], what=f"'{kept[0]}'")
            except InputError as exc:
                st.error(str(exc))
                cols = []
            if cols:
                if state.get(Keys.CORPUS_COLUMN) not in cols:  # a new file: the column that holds the texts
                    state[Keys.CORPUS_COLUMN] = guess
                st.selectbox("Column with the texts", cols, key=Keys.CORPUS_COLUMN)
    else:
        st.text_area(
            "One text per line",
            key=Keys.CORPUS_PASTE,
            height=160,
            placeholder="The cat sat on the mat.\nParis is the capital of France.",
        )
    with st.expander("Settings", expanded=False):
        c1, c2, c3 = st.columns(3)
        c1.number_input("Max tokens per text", step=16, key=Keys.CORPUS_MAX_TOKENS, **_bounds("max_tokens"))
        c2.number_input("Batch size", step=1, key=Keys.CORPUS_BATCH, **_bounds("batch_size"))
        c3.number_input("Bootstrap resamples", step=50, key=Keys.CORPUS_BOOTSTRAP, **_bounds("bootstrap"))
        c1.number_input("Max pooled points per layer", step=500, key=Keys.CORPUS_MAX_POINTS, **_bounds("max_points"))
        c2.checkbox(
            "Include special tokens", key=Keys.CORPUS_SPECIAL, help=_FIELDS["include_special_tokens"].metadata["help"]
        )
        with c3:
            sae_corpus_widgets.top_input(sae_widgets.chosen_dirs(state))
    st.caption(
        f"At most {max_corpus_texts():,} texts (set by $TMA_MAX_CORPUS_TEXTS on this server). The model is "
        "the one chosen in the sidebar; blank lines are skipped."
    )
    return bool(st.button("Run corpus analysis", type="primary", key="corpus_run"))


def settings_from_state(state: Any) -> CorpusSettings:
    values: dict[str, Any] = {}
    for name, key in SETTING_KEYS.items():
        v = state.get(key)
        values[name] = _FIELDS[name].default if v is None else v
    return CorpusSettings(
        max_tokens=int(values["max_tokens"]),
        batch_size=int(values["batch_size"]),
        bootstrap=int(values["bootstrap"]),
        max_points=int(values["max_points"]),
        include_special_tokens=bool(values["include_special_tokens"]),
    )


# ----------------------------------------------------------------------------------------------------------------
# Running (a background job)


@dataclass(frozen=True)
class CorpusRun:
    """What the corpus job returns: the corpus result and, with SAE folders, their feature examples."""

    result: CorpusResult
    sae: tuple[SAEFeatureExamples, ...] | None = None


def start_corpus() -> None:
    """Read the texts and settings (here: a bad input is one line at once), then analyse in the session's job:
    the sidebar's model loads (cached) and core.studies.corpus.analyze_corpus runs there, with progress."""
    from app.loading import get_model, get_result_cache
    from app.sidebar import selected_model_id

    state = st.session_state
    state[Keys.CORPUS_ERROR] = None
    sae_dirs = sae_widgets.chosen_dirs(state)
    try:
        texts = read_texts(state)
        settings = settings_from_state(state)
        sae_corpus_widgets.check_dirs(sae_dirs)  # a bad folder is one line now, not after the corpus pass
        engine = cluster.current()  # the operator's $TMA_RAY_ADDRESS, else this process
    except InputError as exc:
        state[Keys.CORPUS_ERROR] = str(exc)
        return
    model_id = selected_model_id(state)
    dtype = str(state.get(Keys.DTYPE) or "auto")
    top_n = sae_corpus_widgets.top_n(state)

    def work(job: jobs.Job) -> CorpusRun:
        from core.run.progress import scaled
        from core.studies import corpus
        from core.studies.sae_corpus import sae_corpus_cached

        if not model_id:
            raise InputError("no model chosen: type a Hugging Face id or a local folder in the sidebar")
        if engine.is_ray:  # the same engine as `corpus --engine ray`, through the same result cache
            job.report(f"Sending {len(texts.texts)} texts to {engine.label} …", 0.0)
            result, saes = cluster.run_corpus(
                engine, model_id, dtype, texts, settings, job.report, sae_dirs=sae_dirs, top_n=top_n,
                cache=get_result_cache(),
            )  # fmt: skip
            return CorpusRun(result, saes)
        job.report(f"Loading {model_id} …", 0.0)
        loaded = get_model(model_id, dtype, "auto")
        # job.report is a core.run.progress.ProgressFn: the corpus run reports (label, share of the whole run)
        geometry = scaled(job.report, 0.0, 0.7) if sae_dirs else job.report
        result = corpus.analyze_corpus(loaded, texts, settings, geometry, cache=get_result_cache())
        if not sae_dirs:
            return CorpusRun(result)
        stage = scaled(job.report, 0.7, 1.0)
        stage("SAE features: 0 texts", 0.0)
        sae = sae_corpus_cached(
            loaded,
            list(texts.texts),
            sae_dirs,
            cache=get_result_cache(),
            max_tokens=settings.max_tokens,
            top_n=top_n,
            include_special=settings.include_special_tokens,
            progress=lambda k, n: stage(f"SAE features: {k} of {n} texts", k / n),
        )
        return CorpusRun(result, sae.saes)

    meta = {"model_id": model_id, "engine": engine.label}
    out = jobs.start(state, CORPUS_JOB, work, what="the corpus analysis", meta=meta)
    if isinstance(out, str):
        job_widgets.refused(out)


def collect(job: jobs.Job) -> None:
    state = st.session_state
    if job.ok:
        run = job.result if isinstance(job.result, CorpusRun) else CorpusRun(job.result)
        state[Keys.CORPUS_RESULT] = run.result
        state[Keys.CORPUS_SAE] = run.sae
        state[Keys.CORPUS_ENGINE] = job.meta.get("engine")
        state[Keys.CORPUS_ERROR] = None
    else:
        state[Keys.CORPUS_ERROR] = job.error


def follow_job() -> None:
    job_widgets.follow(CORPUS_JOB, collect, title="Corpus analysis …")


# ----------------------------------------------------------------------------------------------------------------
# Drawing the result


def band_chart(
    frame: pd.DataFrame, y: str, lo: str, hi: str, color: str, title: str, domain: tuple[float, float] | None = None
) -> alt.LayerChart:
    """A line with a band (the interval) per `color` group, against the layer. domain: a fixed y range (a flat
    curve, core.present.study_tables.pooled_note), so round-off never stretches the axis into noise; tick labels
    carry at most 4 significant digits. A legend above the chart when there is more than one group (both layers
    share the colour scale, so both carry the same legend: a `legend=None` on one layer removes the merged legend)."""
    legend = alt.Legend(orient="top", title=None) if frame[color].nunique() > 1 else None
    scale = alt.Scale(zero=False) if domain is None else alt.Scale(domain=list(domain), zero=False, clamp=True)
    base = alt.Chart(frame).encode(x=alt.X("layer:Q", title="layer", axis=alt.Axis(tickMinStep=1)))
    band = base.mark_area(opacity=0.25).encode(
        y=alt.Y(f"{lo}:Q", title="", scale=scale), y2=f"{hi}:Q", color=alt.Color(f"{color}:N", legend=legend)
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y(f"{y}:Q", title="", scale=scale, axis=alt.Axis(format=".4~g")),
        color=alt.Color(f"{color}:N", legend=legend),
        tooltip=[
            "layer",
            alt.Tooltip(f"{y}:Q", format=".4g"),
            alt.Tooltip(f"{lo}:Q", format=".4g"),
            alt.Tooltip(f"{hi}:Q", format=".4g"),
        ],
    )
    return (band + line).properties(title=title, height=230 if legend is None else 290)  # the legend takes ~60 px


def draw_result(result: CorpusResult, sae: Sequence[SAEFeatureExamples] | None = None) -> None:
    """The stored result: curves, table, the SAE view (`sae`: the same run's SAE feature examples) and the ZIP."""
    state = st.session_state
    hit = "from the cache" if result.cache_hit else f"computed in {result.duration_s:.1f} s"
    st.success(
        f"{result.model.model_id} · {result.n_texts} texts · {int(result.n_points.max())} pooled "
        f"points per layer · {result.n_layers - 1} layers · {hit}"
    )
    if state.get(Keys.CORPUS_ENGINE):
        st.caption(f"Ran on {state[Keys.CORPUS_ENGINE]}.")
    for w in result.warnings:
        st.warning(w)
    if not result.has_intervals:
        st.info("No confidence intervals: they resample texts, so they need at least two texts and resamples > 0.")

    st.subheader("Pooled metrics with 95 % intervals over texts")
    if result.has_intervals:
        st.caption(result.interval_note())
    if Keys.CORPUS_METRICS not in state:
        state[Keys.CORPUS_METRICS] = list(DEFAULT_PLOTTED)
    chosen = st.multiselect("Metrics", list(POOLED_METRICS), key=Keys.CORPUS_METRICS, format_func=label)
    cols = st.columns(2)
    for i, m in enumerate(chosen):
        with cols[i % 2]:
            note = pooled_note(result, m)
            if note is not None and note.empty:  # the reason instead of an empty chart
                st.markdown(f"**{label(m)}**")
                st.info(note.text, icon=":material/info:")
            else:
                frame = pooled_frame(result, [m], label)
                domain = note.domain if note is not None else None
                chart_ = band_chart(frame, "estimate", "ci_low", "ci_high", "metric", label(m), domain)
                st.altair_chart(chart_, width="stretch")
                if note is not None:  # flat: the value in words, and why
                    st.caption(note.text)
            st.caption(docs.caption(DOC_KEY[m]))

    st.subheader("Pooled vs per text")
    metric = st.selectbox(
        "Single-text metric", list(METRIC_NAMES), key=Keys.CORPUS_PER_TEXT, format_func=docs.metric_label
    )
    per_text = per_text_frame(result, metric)
    reason = per_text_note(result, metric)  # no text has a value: said in words (the pooled curve may still draw)
    if reason is not None and not np.isfinite(per_text["value"].to_numpy(dtype=float)).any():
        st.info(reason, icon=":material/info:")
    else:
        st.altair_chart(
            band_chart(per_text, "value", "q25", "q75", "series", docs.metric_label(metric)), width="stretch"
        )
        if reason is not None:
            st.caption(reason)
    st.caption(
        "Per-text values are capped by each text's length (T − 1 for the spectral metrics); the pooled "
        "curve is not. Band: interquartile range over texts (per text) or 95 % interval (pooled)."
    )

    st.subheader("Table")
    st.dataframe(corpus_table_frame(result, METRICS_HEADER), hide_index=True, width="stretch")

    if sae:
        sae_corpus_widgets.draw(sae)

    key = (result.cache_key or f"id-{id(result)}") + (f"|sae-{id(sae)}" if sae else "")
    data = downloads.once(state, Keys.CORPUS_ZIP, key, lambda: downloads.corpus_zip(result, sae))
    st.download_button(
        "Download corpus bundle (ZIP)",
        data=data,
        file_name="corpus_bundle.zip",
        mime="application/zip",
        on_click="ignore",
        key="corpus_download",
        help="corpus_metrics.csv, per_text_metrics.csv, manifest.json, plots/*.png, report.pdf"
        + (", sae_feature_examples.csv, sae_feature_stats.csv" if sae else ""),
    )
