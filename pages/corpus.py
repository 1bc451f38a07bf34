"""Corpus page: layer geometry over many texts, with bootstrap intervals.

Texts come from an uploaded .txt (one per line), an uploaded .csv (pick the column) or pasted lines; the model is
the one chosen in the sidebar. Only the Run button runs the model (core.studies.corpus.analyze_corpus, through the
result cache, so a second run of the same corpus is a cache hit); every other widget only re-draws the stored result.
The number of texts is limited by $TMA_MAX_CORPUS_TEXTS (default 10 000) for public deployments.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pandas as pd
import streamlit as st

from app.state import Keys
from core.export.corpus_bundle import DOC_KEY, label
from core.infra.errors import InputError, TMAError
from core.infra.guards import max_corpus_texts
from core.present import docs
from core.steps.metrics import METRIC_NAMES
from core.studies.corpus import CorpusResult, CorpusSettings, CorpusTexts
from core.studies.geometry import POOLED_METRICS

log = logging.getLogger(__name__)

SOURCES = ("Upload .txt (one text per line)", "Upload .csv (pick a column)", "Paste lines")
DEFAULT_PLOTTED = ("effective_rank", "twonn_dimension", "anisotropy_cosine", "anisotropy_top_pc", "linearity")
_FIELDS = {f.name: f for f in dataclasses.fields(CorpusSettings)}


def _bounds(name: str) -> dict[str, Any]:
    f = _FIELDS[name]
    return {
        "min_value": f.metadata["min"],
        "max_value": f.metadata["max"],
        "value": f.default,
        "help": f.metadata["help"],
    }


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def read_texts(state: Any, upload: Any) -> CorpusTexts:
    """The texts of the chosen source; InputError with a user-facing message otherwise."""
    from core.studies.corpus import texts_from_csv, texts_from_lines

    source = state.get(Keys.CORPUS_SOURCE, SOURCES[0])
    if source == SOURCES[2]:
        return texts_from_lines(state.get(Keys.CORPUS_PASTE) or "", what="the pasted text")
    if upload is None:
        raise InputError("upload a file first")
    data = upload.getvalue()
    if source == SOURCES[1]:
        column = state.get(Keys.CORPUS_COLUMN)
        if not column:
            raise InputError("pick the column that holds the texts")
        return texts_from_csv(data, column, what=f"'{upload.name}'")
    return texts_from_lines(data, what=f"'{upload.name}'")


def draw_inputs() -> tuple[Any, bool]:
    """Source, settings and the Run button. Returns (the uploaded file or None, whether Run was pressed)."""
    source = st.radio("Texts from", SOURCES, key=Keys.CORPUS_SOURCE, horizontal=True)
    upload = None
    if source == SOURCES[0]:
        upload = st.file_uploader("Text file (UTF-8, one text per line)", type=["txt"], key="corpus_upload_txt")
    elif source == SOURCES[1]:
        upload = st.file_uploader("CSV file (UTF-8, with a header row)", type=["csv"], key="corpus_upload_csv")
        if upload is not None:
            from core.studies.corpus import csv_columns

            try:
                cols = csv_columns(upload.getvalue(), what=f"'{upload.name}'")
            except InputError as exc:
                st.error(str(exc))
                cols = []
            if cols:
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
    st.caption(
        f"At most {max_corpus_texts():,} texts (set by $TMA_MAX_CORPUS_TEXTS on this server). The model is "
        "the one chosen in the sidebar; blank lines are skipped."
    )
    run = st.button("Run corpus analysis", type="primary", key="corpus_run")
    return upload, run


def settings_from_state(state: Any) -> CorpusSettings:
    def get(key: str, name: str) -> Any:
        v = state.get(key)
        return _FIELDS[name].default if v is None else v

    return CorpusSettings(
        max_tokens=int(get(Keys.CORPUS_MAX_TOKENS, "max_tokens")),
        batch_size=int(get(Keys.CORPUS_BATCH, "batch_size")),
        bootstrap=int(get(Keys.CORPUS_BOOTSTRAP, "bootstrap")),
        max_points=int(get(Keys.CORPUS_MAX_POINTS, "max_points")),
        include_special_tokens=bool(state.get(Keys.CORPUS_SPECIAL) or False),
    )


def run_corpus(upload: Any) -> None:
    """Read the texts, load the sidebar's model (cached), analyse with a progress bar; store result or error."""
    from app.loading import get_model, get_result_cache
    from app.sidebar import selected_model_id
    from core.studies.corpus import analyze_corpus

    state = st.session_state
    state[Keys.CORPUS_ERROR] = None
    try:
        texts = read_texts(state, upload)
        settings = settings_from_state(state)
        model_id = selected_model_id(state)
        bar = st.progress(0.0, text=f"Loading {model_id}…")

        def progress(done: int, total: int, stage: str) -> None:
            if stage == "texts":
                bar.progress(min(1.0, done / max(total, 1)), text=f"{done} / {total} texts")
            else:
                bar.progress(
                    min(1.0, done / max(total, 1)), text=f"pooled metrics and bootstrap: layer {done} / {total}"
                )

        loaded = get_model(model_id, dtype=state.get(Keys.DTYPE) or "auto")
        result = analyze_corpus(loaded, texts, settings, progress, cache=get_result_cache())
        bar.empty()
        state[Keys.CORPUS_RESULT] = result
    except TMAError as exc:
        state[Keys.CORPUS_ERROR] = str(exc)
    except Exception as exc:  # never a traceback on the page
        log.exception("corpus analysis failed")
        state[Keys.CORPUS_ERROR] = f"unexpected {type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------------------------------------------
# Views (pure functions of the result, tested without Streamlit)


def pooled_frame(result: CorpusResult, metrics: list[str]) -> pd.DataFrame:
    """Long frame: layer, metric (label), estimate, ci_low, ci_high, for the chosen pooled metrics."""
    rows = []
    for m in metrics:
        for layer in range(1 if m == "linearity" else 0, result.n_layers):
            rows.append(
                {
                    "layer": layer,
                    "metric": label(m),
                    "estimate": result.estimate[m][layer],
                    "ci_low": result.ci_low[m][layer],
                    "ci_high": result.ci_high[m][layer],
                }
            )
    return pd.DataFrame(rows)


def per_text_frame(result: CorpusResult, metric: str) -> pd.DataFrame:
    """Long frame: layer, series ("per-text median" / "pooled"), value, q25, q75 for one single-text metric."""
    s = result.per_text_summary(metric)
    rows = [
        {
            "layer": layer,
            "series": "per-text median (IQR band)",
            "value": s["median"][layer],
            "q25": s["q25"][layer],
            "q75": s["q75"][layer],
        }
        for layer in range(result.n_layers)
    ]
    if metric in result.estimate:
        rows += [
            {
                "layer": layer,
                "series": "pooled (95 % band)",
                "value": result.estimate[metric][layer],
                "q25": result.ci_low[metric][layer],
                "q75": result.ci_high[metric][layer],
            }
            for layer in range(result.n_layers)
        ]
    return pd.DataFrame(rows)


def table_frame(result: CorpusResult) -> pd.DataFrame:
    from core.export.corpus_bundle import METRICS_HEADER

    return pd.DataFrame(result.metric_rows(), columns=METRICS_HEADER)


def band_chart(frame: pd.DataFrame, y: str, lo: str, hi: str, color: str, title: str) -> Any:
    import altair as alt

    base = alt.Chart(frame).encode(x=alt.X("layer:Q", title="layer", axis=alt.Axis(tickMinStep=1)))
    band = base.mark_area(opacity=0.25).encode(
        y=alt.Y(f"{lo}:Q", title=""), y2=f"{hi}:Q", color=alt.Color(f"{color}:N", legend=None)
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y(f"{y}:Q", title="", scale=alt.Scale(zero=False)),
        color=alt.Color(f"{color}:N", title=""),
        tooltip=[
            "layer",
            alt.Tooltip(f"{y}:Q", format=".4g"),
            alt.Tooltip(f"{lo}:Q", format=".4g"),
            alt.Tooltip(f"{hi}:Q", format=".4g"),
        ],
    )
    return (band + line).properties(title=title, height=230)


# ----------------------------------------------------------------------------------------------------------------
# Drawing the result


def draw_result(result: CorpusResult) -> None:
    state = st.session_state
    hit = "from the cache" if result.cache_hit else f"computed in {result.duration_s:.1f} s"
    st.success(
        f"{result.model.model_id} · {result.n_texts} texts · {int(result.n_points.max())} pooled "
        f"points per layer · {result.n_layers - 1} layers · {hit}"
    )
    for w in result.warnings:
        st.warning(w)
    if not result.has_intervals:
        st.info("No confidence intervals: they resample texts, so they need at least two texts and bootstrap > 0.")

    st.subheader("Pooled metrics with 95 % bootstrap intervals")
    chosen = st.multiselect(
        "Metrics", list(POOLED_METRICS), default=list(DEFAULT_PLOTTED), key=Keys.CORPUS_METRICS, format_func=label
    )
    cols = st.columns(2)
    for i, m in enumerate(chosen):
        with cols[i % 2]:
            frame = pooled_frame(result, [m])
            st.altair_chart(band_chart(frame, "estimate", "ci_low", "ci_high", "metric", label(m)), width="stretch")
            st.caption(docs.caption(DOC_KEY[m]))

    st.subheader("Pooled vs per text")
    metric = st.selectbox(
        "Single-text metric", list(METRIC_NAMES), key=Keys.CORPUS_PER_TEXT, format_func=docs.metric_label
    )
    st.altair_chart(
        band_chart(per_text_frame(result, metric), "value", "q25", "q75", "series", docs.metric_label(metric)),
        width="stretch",
    )
    st.caption(
        "Per-text values are capped by each text's length (T − 1 for the spectral metrics); the pooled "
        "curve is not. Band: interquartile range over texts (per text) or 95 % interval (pooled)."
    )

    st.subheader("Table")
    st.dataframe(table_frame(result), hide_index=True, width="stretch")

    cached = state.get(Keys.CORPUS_ZIP)
    if not cached or cached[0] != result.cache_key:
        from core.export.corpus_bundle import corpus_bundle_files
        from core.infra.formats import zip_bytes

        with st.spinner("Preparing the ZIP…"):
            cached = (result.cache_key, zip_bytes(corpus_bundle_files(result)))
        state[Keys.CORPUS_ZIP] = cached
    st.download_button(
        "Download corpus bundle (ZIP)",
        data=cached[1],
        file_name="corpus_bundle.zip",
        mime="application/zip",
        on_click="ignore",
        key="corpus_download",
        help="corpus_metrics.csv, per_text_metrics.csv, manifest.json, plots/*.png, report.pdf",
    )


st.title("Corpus")
st.markdown(
    "Layer geometry over many texts: the spectral metrics, TwoNN intrinsic dimension, two anisotropies and "
    "linearity on the token states of the whole corpus, each with a 95 % bootstrap interval over texts, "
    "and the single-text metrics of every text."
)
_upload, _run = draw_inputs()
if _run:
    run_corpus(_upload)
if st.session_state.get(Keys.CORPUS_ERROR):
    st.error(st.session_state[Keys.CORPUS_ERROR])
_result = st.session_state.get(Keys.CORPUS_RESULT)
if _result is not None:
    draw_result(_result)
else:
    st.info("Choose the texts and press **Run corpus analysis**.")
