"""Sections of the Compare page (and the layer × layer CKA of the Layer Analysis page), drawn from stored results.

Run A and run B are ordinary cached analyses with the sidebar's settings: the Compare button starts one background
job (app.jobs) that loads each model through app.loading.get_model and analyses through
core.analysis.pipeline.analyze with the app's result cache — the same path as the sidebar's Analyze — and a run
that is already in the session (the sidebar's result, or the previous A or B) is reused without loading anything.
Every other widget on the page only re-draws: the comparison itself (core.studies.compare.compare) is a pure
function of the two results, cached per pair of results.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app import downloads, job_widgets, jobs
from app.loading import get_model, get_result_cache
from app.sidebar import current_settings, known_family, selected_model_id, session_entry
from app.state import OTHER_MODEL, Keys
from app.widgets import chart, metric_label, show_caption
from core.analysis.result import AnalysisResult
from core.infra.errors import InputError, ModelUnavailableError, TMAError
from core.infra.presets import BUNDLED_ID, PRESET_IDS, preset
from core.present import chart_spec, tables
from core.present.chart_spec import METRIC_AXES
from core.present.compare import metric_overlay_rows, prediction_rows, run_label, run_name
from core.run.settings import AnalysisSettings, max_text_chars
from core.steps.metrics import METRIC_NAMES
from core.studies.compare import ComparisonResult, compare, layer_cka

log = logging.getLogger(__name__)

MODES = {"text": "Same model, a second text", "model": "Same text, a second model"}
#: Run B's default second text, per family of run A's model (a small change of the example texts).
SECOND_TEXTS = {
    "masked_lm": "The capital of Italy is [MASK].",
    "causal_lm": "The capital of Italy is",
    "encoder": "A fast brown fox leaps over a sleepy dog by the river bank.",
}
ENTROPY_KINDS = {"entropy": "Entropy (nats)", "normalized_entropy": "Normalised entropy"}
ATTR_METHODS = {
    "rollout": "Attention rollout",
    "grad_x_input": "Gradient × input",
    "integrated_gradients": "Integrated gradients",
}
MAX_CELL_TEXT = 16  # write the CKA values into the cells up to this many layers per side
RUN_COLOURS = ["#1f5fa8", "#d6604d"]  # run A blue, run B red (as in the PDF's overlay)


# ----------------------------------------------------------------------------------------------------------------
# Choosing the runs


def model_of(state: Any, which: str) -> str:
    """The model id chosen for run "a" or "b" (in "text" mode, B uses A's model)."""
    if which == "b" and state.get(Keys.CMP_MODE) == "text":
        return model_of(state, "a")
    choice_key, custom_key = (
        (Keys.CMP_MODEL_A, Keys.CMP_CUSTOM_A) if which == "a" else (Keys.CMP_MODEL_B, Keys.CMP_CUSTOM_B)
    )
    choice = state.get(choice_key)
    if choice == OTHER_MODEL:
        return str(state.get(custom_key) or "").strip()
    return str(choice or BUNDLED_ID)


def text_of(state: Any, which: str) -> str:
    """The text of run "a" or "b" (in "model" mode, B uses A's text)."""
    if which == "b" and state.get(Keys.CMP_MODE) == "model":
        return text_of(state, "a")
    return str(state.get(Keys.CMP_TEXT_A if which == "a" else Keys.CMP_TEXT_B) or "")


def _set_model(state: Any, choice_key: str, custom_key: str, model_id: str) -> None:
    if model_id in PRESET_IDS:
        state[choice_key] = model_id
    else:
        state[choice_key] = OTHER_MODEL
        state[custom_key] = model_id


def init_choices(state: Any) -> None:
    """Defaults, set once: A = the sidebar's model and text; B = A's model with a second text (or, when the link
    names a second model, A's text on that model)."""
    if Keys.CMP_MODEL_A not in state:
        _set_model(state, Keys.CMP_MODEL_A, Keys.CMP_CUSTOM_A, selected_model_id(state))
    if Keys.CMP_TEXT_A not in state:
        state[Keys.CMP_TEXT_A] = str(state.get(Keys.TEXT) or "")
    if Keys.CMP_MODEL_B not in state:
        a = model_of(state, "a")
        _set_model(state, Keys.CMP_MODEL_B, Keys.CMP_CUSTOM_B, next((m for m in PRESET_IDS if m != a), BUNDLED_ID))
    if Keys.CMP_MODE not in state:
        state[Keys.CMP_MODE] = "text"
    if Keys.CMP_TEXT_B not in state:
        family = known_family(state, model_of(state, "a")) or "encoder"
        second = SECOND_TEXTS.get(family, SECOND_TEXTS["encoder"])
        state[Keys.CMP_TEXT_B] = second if second != state[Keys.CMP_TEXT_A] else SECOND_TEXTS["encoder"]


def _label(model_id: str) -> str:
    if model_id == OTHER_MODEL:
        return "Other: Hugging Face id or folder"
    p = preset(model_id)
    return p.label if p is not None else model_id


def _model_picker(label: str, choice_key: str, custom_key: str) -> None:
    state = st.session_state
    options = [*PRESET_IDS, OTHER_MODEL]
    if state.get(choice_key) not in options:
        state[choice_key] = BUNDLED_ID
    st.selectbox(label, options, key=choice_key, format_func=_label)
    if state.get(choice_key) == OTHER_MODEL:
        st.text_input("Hugging Face id or local folder", key=custom_key, placeholder="e.g. distilgpt2")


def pickers() -> bool:
    """Run A and run B side by side; True when Compare was pressed."""
    state = st.session_state
    init_choices(state)
    st.radio(
        "Run B",
        list(MODES),
        key=Keys.CMP_MODE,
        format_func=MODES.__getitem__,
        horizontal=True,
        help="B defaults to A's model with a second text, or to A's text with a second model.",
    )
    left, right = st.columns(2)
    with left:
        st.markdown("**Run A**")
        _model_picker("Model A", Keys.CMP_MODEL_A, Keys.CMP_CUSTOM_A)
        st.text_area("Text A", key=Keys.CMP_TEXT_A, height=90, max_chars=max_text_chars())
    with right:
        st.markdown("**Run B**")
        if state[Keys.CMP_MODE] == "model":
            _model_picker("Model B", Keys.CMP_MODEL_B, Keys.CMP_CUSTOM_B)
            st.caption("Text B: the same text as run A.")
        else:
            st.caption("Model B: the same model as run A.")
            st.text_area("Text B", key=Keys.CMP_TEXT_B, height=90, max_chars=max_text_chars())
    st.caption(
        "Both runs use the sidebar's settings (max tokens, precision, gradients…); a run already made in "
        "this session, or found in the result cache, is not computed again."
    )
    return bool(
        st.button(
            "Compare",
            key="cmp_go",
            type="primary",
            help="Analyse run A and run B (each once; cached) and compare them.",
        )
    )


# ----------------------------------------------------------------------------------------------------------------
# Running the two analyses (only on the Compare button)


Spec = tuple[str, str, AnalysisSettings, str]  # (model id, text, settings, dtype) of one run


def _spec(state: Any, model_id: str, text: str) -> Spec:
    settings = current_settings(state)
    if text != state.get(Keys.TEXT):  # the sidebar's masked word belongs to the sidebar's text
        settings = settings.replace(mask_word=None)
    return (model_id, text, settings, str(state.get(Keys.DTYPE) or "auto"))


def _reusable(state: Any, spec: Spec) -> AnalysisResult | None:
    """A result of this session made from exactly this (model, text, settings, dtype), or None."""
    model_id, text, settings, dtype = spec
    sidebar = state.get(Keys.RESULT)
    load = state.get(Keys.RESULT_LOAD)
    if (
        sidebar is not None
        and load
        and load[0] == model_id
        and load[1] == dtype
        and sidebar.text == text
        and sidebar.settings == settings
    ):
        return sidebar
    for rkey, skey in ((Keys.CMP_RESULT_A, Keys.CMP_SPEC_A), (Keys.CMP_RESULT_B, Keys.CMP_SPEC_B)):
        if state.get(rkey) is not None and state.get(skey) == spec:
            return state[rkey]
    return None


#: The name of the comparison job in app.jobs (one per session).
COMPARE_JOB = "compare"


def start_job() -> None:
    """On Compare: start the comparison as the session's background job (app.jobs). A run already in the session
    is reused as it is; each other run loads its model (cached) and is analysed in the job, A then B, so leaving
    the page stops neither. A second press while it runs is refused with one line."""
    state = st.session_state
    specs = {w: _spec(state, model_of(state, w), text_of(state, w)) for w in ("a", "b")}
    reused = {w: _reusable(state, specs[w]) for w in ("a", "b")}
    todo = [w for w in ("a", "b") if reused[w] is None and not (w == "b" and specs["b"] == specs["a"])]

    def work(job: jobs.Job) -> dict[str, AnalysisResult]:
        from core.analysis import pipeline

        out: dict[str, AnalysisResult] = {}
        for which in ("a", "b"):
            kept = reused[which]
            if kept is not None:
                out[which] = kept
                continue
            if which == "b" and specs["b"] == specs["a"]:
                out["b"] = out["a"]  # the same run twice: analysed once
                continue
            model_id, text, settings, dtype = specs[which]
            step = todo.index(which)

            def report(label: str, fraction: float, which: str = which, step: int = step) -> None:
                job.report(f"Run {which.upper()}: {label}", (step + fraction) / len(todo))

            try:
                if not model_id:
                    raise InputError("no model chosen: type a Hugging Face id or a local folder, or pick a preset")
                AnalysisSettings.check_text(text)
                report("loading the model", 0.0)
                loaded = get_model(model_id, dtype, "auto")
                out[which] = pipeline.analyze(
                    loaded, text, settings=settings, cache=get_result_cache(), progress=report
                )
            except jobs.JobCancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - one line naming the run
                kind, _ = jobs.describe(exc, "the analysis")
                raise jobs.JobError(_error_line(which, exc), kind) from exc
        return out

    out = jobs.start(state, COMPARE_JOB, work, what="the comparison", meta={"specs": specs, "computed": tuple(todo)})
    if isinstance(out, str):
        job_widgets.refused(out)
    else:
        state[Keys.CMP_ERROR] = None


def _error_line(which: str, exc: BaseException) -> str:
    if isinstance(exc, ModelUnavailableError):
        return f"Run {which.upper()}: the model is not available. {exc}"
    if isinstance(exc, TMAError):
        return f"Run {which.upper()}: {exc}"
    log.error("compare: analysis of run %s failed", which, exc_info=exc)
    return f"Run {which.upper()}: something went wrong during the analysis. The details are in the server log."


def collect(job: jobs.Job) -> None:
    """Store a finished comparison job's two runs (or its one line) in the session."""
    state = st.session_state
    if not job.ok:
        state[Keys.CMP_ERROR] = job.error
        return
    out: dict[str, AnalysisResult] = job.result
    specs = job.meta["specs"]
    state[Keys.CMP_ERROR] = None
    state[Keys.CMP_RESULT_A], state[Keys.CMP_RESULT_B] = out["a"], out["b"]
    state[Keys.CMP_SPEC_A], state[Keys.CMP_SPEC_B] = specs["a"], specs["b"]
    state[Keys.CMP_AXIS] = out["a"].n_layers == out["b"].n_layers
    for which in job.meta.get("computed", ()):
        state.setdefault(Keys.SESSION_LOG, []).append(session_entry(out[which]))


def follow_job() -> None:
    """Show the running comparison's progress until it ends, then store it. A rerun interrupts this wait, not the
    job; the next visit of the page follows it again (or stores its result)."""
    job_widgets.follow(COMPARE_JOB, collect, title="Analysing run A and run B …")


def download(a: AnalysisResult, b: AnalysisResult, cmp: ComparisonResult) -> None:
    """The comparison ZIP (the CLI's `compare` bundle), built on the first click and kept for this pair of runs."""
    state = st.session_state
    entries = tuple(state.get(Keys.SESSION_LOG) or ())
    animations = bool(state.get(Keys.ANIMATIONS, True))
    data = downloads.once(
        state,
        Keys.CMP_ZIP,
        f"{_key(a)}|{_key(b)}",
        lambda: downloads.comparison_zip(a, b, cmp, session_entries=entries, animations=animations),
    )
    st.download_button(
        "Download comparison bundle (ZIP)",
        data=data,
        file_name="comparison_bundle.zip",
        mime="application/zip",
        on_click="ignore",
        key="cmp_download",
        help="a/ and b/ (each run's full bundle), comparison.json, cka.csv, plots and the comparison report (PDF) — "
        "what `python -m core compare` writes.",
    )


# ----------------------------------------------------------------------------------------------------------------
# The comparison (pure, cached per pair of results)


def _key(result: AnalysisResult) -> str:
    return result.cache_key or f"id-{id(result)}"


class _Ref:
    """Wraps a result so st.cache_data does not hash its arrays: its cache key (passed too) stands for it."""

    def __init__(self, result: AnalysisResult):
        self.result = result


_HASH: dict[str | type[Any], Callable[[Any], Any]] = {_Ref: lambda r: _key(r.result)}


@st.cache_data(max_entries=16, show_spinner="Comparing the two runs…", hash_funcs=_HASH)
def _comparison(key_a: str, key_b: str, ref_a: _Ref, ref_b: _Ref) -> ComparisonResult:
    return compare(ref_a.result, ref_b.result)


def comparison(a: AnalysisResult, b: AnalysisResult) -> ComparisonResult:
    return _comparison(_key(a), _key(b), _Ref(a), _Ref(b))


@st.cache_data(max_entries=16, show_spinner="Computing layer CKA…", hash_funcs=_HASH)
def _layer_cka(key: str, debiased: bool, ref: _Ref) -> np.ndarray:
    return layer_cka(ref.result, debiased=debiased)


# ----------------------------------------------------------------------------------------------------------------
# Charts


def overlay_chart(df: pd.DataFrame, metric: str, axis: str) -> alt.LayerChart:
    """One metric of both runs against relative depth or layer, coloured by run (A blue, B red, in the order the
    runs appear in df). No legend: a chart a third of the column wide cut the names ("B: all-MiniLM-L6-v…"); the
    page writes one legend above the charts (legend_html), and each point's tooltip names its run. The y-axis
    follows the metric's rule in core.present.chart_spec (from 0, or [0, 1] for cosines; integer ticks for counts),
    as on the Overall page; no token ceiling, since the two runs may have different token counts."""
    spec = METRIC_AXES[metric]
    runs = list(dict.fromkeys(df["run"]))
    d = df[df.metric == metric]
    domain = chart_spec.y_domain(metric, d["value"].to_numpy(), 0) or (0.0, 1.0)
    x_title = "relative depth (layer / layers)" if axis == "relative" else "layer (0 = embeddings)"
    y_axis = alt.Axis(format=spec.number_format, tickMinStep=1) if spec.integer else alt.Axis(format=spec.number_format)
    base = alt.Chart(d).encode(
        x=alt.X("x:Q", title=x_title, axis=alt.Axis(format=".2~f" if axis == "relative" else "d")),
        y=alt.Y(
            "value:Q",
            title=spec.unit or None,
            scale=alt.Scale(domain=list(domain), nice=False, zero=False),
            axis=y_axis,
        ),
        color=alt.Color("run:N", title=None, scale=alt.Scale(domain=runs, range=RUN_COLOURS), legend=None),
        tooltip=[
            alt.Tooltip("run:N"),
            alt.Tooltip("layer:Q", format="d"),
            alt.Tooltip("depth:Q", format=".3f"),
            alt.Tooltip("value:Q", title=metric_label(metric), format=spec.tooltip_format),
        ],
    )
    return (base.mark_line() + base.mark_point(filled=True, size=40)).properties(height=220)


def legend_html(cmp: ComparisonResult) -> str:
    """One legend for the overlaid charts: each run's colour and its whole name (core.present.compare.run_label:
    the text in two-text mode, the model in two-model mode), HTML-escaped, wrapping in the column's width."""
    items = []
    for s, colour in zip(cmp.runs, RUN_COLOURS):
        label = html.escape(run_label(cmp, s))
        items.append(
            f'<span style="display:inline-flex;align-items:baseline;gap:0.4em;margin-right:1.6em">'
            f'<span style="color:{colour};font-weight:700">━●━</span><span>{label}</span></span>'
        )
    return f'<div class="tma-compare-legend" style="line-height:1.6">{"".join(items)}</div>'


def cka_heatmap(matrix: np.ndarray, y_title: str, x_title: str) -> alt.LayerChart:
    """CKA of layer i (rows, y_title) against layer j (columns, x_title); values written in small grids."""
    M = np.asarray(matrix, dtype=np.float64)
    rows = [
        {"row": i, "col": j, "cka": (float(M[i, j]) if np.isfinite(M[i, j]) else None)}
        for i in range(M.shape[0])
        for j in range(M.shape[1])
    ]
    df = pd.DataFrame(rows)
    low = float(min(0.0, np.nanmin(M))) if np.isfinite(M).any() else 0.0
    step = int(max(14, min(36, 520 // max(M.shape))))
    from app.charts import token_axis

    base = alt.Chart(df).encode(
        x=alt.X("col:O", title=x_title, axis=token_axis()),
        y=alt.Y("row:O", title=y_title, sort="descending", axis=token_axis()),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("cka:Q", scale=alt.Scale(scheme="viridis", domain=[low, 1.0]), title="CKA"),
        tooltip=[
            alt.Tooltip("row:O", title=y_title),
            alt.Tooltip("col:O", title=x_title),
            alt.Tooltip("cka:Q", format=".3f"),
        ],
    )
    layers = [rect]
    if max(M.shape) <= MAX_CELL_TEXT:
        layers.append(
            base.mark_text(fontSize=9)
            .encode(
                text=alt.Text("cka:Q", format=".2f"),
                color=alt.condition("datum.cka > 0.6", alt.value("black"), alt.value("white")),
            )
            .transform_filter("isValid(datum.cka)")
        )
    return alt.LayerChart(layer=layers).properties(width=alt.Step(step), height=alt.Step(step))


# ----------------------------------------------------------------------------------------------------------------
# Sections


def header(cmp: ComparisonResult) -> None:
    cols = st.columns(2)
    for col, s in zip(cols, cmp.runs):
        with col:
            st.markdown(f"**Run {s.label}**")
            st.text(
                f"{s.model_id}\n{s.family.replace('_', ' ')} · {s.n_layers} layers × {s.n_heads} heads · "
                f"{len(s.tokens)} tokens"
            )
            st.code(s.text if len(s.text) <= 400 else s.text[:400] + " …", language=None, wrap_lines=True)


def metrics_section(cmp: ComparisonResult) -> None:
    state = st.session_state
    if not isinstance(state.get(Keys.CMP_AXIS), bool):
        state[Keys.CMP_AXIS] = cmp.default_axis == "absolute"
    absolute = st.toggle(
        "Absolute layers",
        key=Keys.CMP_AXIS,
        help="Off: both runs on relative depth (layer / number of layers), so a 6-layer and a "
        "12-layer model line up from embeddings (0) to the last layer (1).",
    )
    axis = "absolute" if absolute else "relative"
    if cmp.a.n_layers != cmp.b.n_layers:
        st.caption(
            f"Run A has {cmp.a.n_layers} layers and run B {cmp.b.n_layers}: "
            + ("layers are aligned by number." if absolute else "layers are aligned by relative depth.")
        )
    df = pd.DataFrame(metric_overlay_rows(cmp, axis))
    st.html(legend_html(cmp))
    names = list(METRIC_NAMES)
    for start in range(0, len(names), 3):
        cols = st.columns(3)
        for col, name in zip(cols, names[start : start + 3]):
            with col:
                st.markdown(f"**{metric_label(name)}**")
                chart(overlay_chart(df, name, axis))
    show_caption("fig_layer_metrics")


def entropy_section(cmp: ComparisonResult) -> None:
    if cmp.entropy_diff is None or cmp.normalized_entropy_diff is None:
        st.info(cmp.entropy_unavailable_reason, icon=":material/info:")
        return
    state = st.session_state
    if state.get(Keys.CMP_ENTROPY) not in ENTROPY_KINDS:  # texts of different lengths: normalised by default
        state[Keys.CMP_ENTROPY] = "entropy" if len(cmp.a.tokens) == len(cmp.b.tokens) else "normalized_entropy"
    kind = st.radio(
        "Quantity",
        list(ENTROPY_KINDS),
        key=Keys.CMP_ENTROPY,
        horizontal=True,
        format_func=ENTROPY_KINDS.__getitem__,
        help="Normalised entropy divides by the log of the visible tokens, so texts of different "
        "lengths compare fairly.",
    )
    diff = cmp.entropy_diff if kind == "entropy" else cmp.normalized_entropy_diff
    df = tables.layer_head_frame(diff, "difference")
    from app import charts

    chart(
        charts.layer_head_heatmap(
            df, "difference", f"{ENTROPY_KINDS[kind]}: B − A (red: B more spread out)", diverging=True
        )
    )
    show_caption("attention_entropy")


def neither_has_predictions(message_a: str, message_b: str) -> str:
    """The one line when neither run has predictions: the reason once when both runs give the same one."""
    if message_a == message_b:
        return f"Neither run has predictions: {message_a}" if message_a else "Neither run has predictions."
    return f"Neither run has predictions. A: {message_a} B: {message_b}"


def prediction_columns() -> dict[str, Any]:
    """Column widths of the Predictions table: it sits in a half-width column (≈ 560 px at 1 280 px), where the
    progress bars of p(A) and p(B) cut the last column; plain numbers of 3 decimals in small columns fit."""
    return {
        "rank": st.column_config.NumberColumn("rank", width="small"),
        "A": st.column_config.TextColumn("A", width="small"),
        "B": st.column_config.TextColumn("B", width="small"),
        **{c: st.column_config.NumberColumn(c, format="%.3f", width="small") for c in ("p(A)", "p(B)")},
    }


def predictions_section(cmp: ComparisonResult) -> None:
    pa, pb = cmp.predictions_a, cmp.predictions_b
    if not pa.tokens and not pb.tokens:
        st.info(neither_has_predictions(pa.message, pb.message), icon=":material/info:")
        return
    df = pd.DataFrame(prediction_rows(cmp), columns=["rank", "A", "p(A)", "B", "p(B)"])
    df["A"] = df["A"].map(lambda t: None if t is None else tables.readable_token(t))
    df["B"] = df["B"].map(lambda t: None if t is None else tables.readable_token(t))
    st.dataframe(df, hide_index=True, width="stretch", column_config=prediction_columns())
    for s, p in (("A", pa), ("B", pb)):
        if p.message:
            st.caption(f"Run {s}: {p.message}")
    if pa.tokens and pb.tokens:
        shared = ", ".join(tables.readable_token(t) for t in cmp.shared_predictions) or "none"
        st.caption(f"In both top-{max(len(pa.tokens), len(pb.tokens))} lists: {shared}")


def attribution_section(cmp: ComparisonResult) -> None:
    aa, ab = cmp.attribution_a, cmp.attribution_b
    if aa is None and ab is None:
        st.info("Token attribution was not computed for either run.", icon=":material/info:")
        return
    methods = [m for m in ATTR_METHODS if (aa is not None and m in aa.scores) or (ab is not None and m in ab.scores)]
    if st.session_state.get(Keys.CMP_ATTR_METHOD) not in methods:  # a method kept from another pair of runs
        st.session_state[Keys.CMP_ATTR_METHOD] = methods[0]
    method = st.radio(
        "Method", methods, key=Keys.CMP_ATTR_METHOD, horizontal=True, format_func=ATTR_METHODS.__getitem__
    )
    method = method if method in methods else methods[0]
    cols = st.columns(2)
    for col, label, side in zip(cols, ("A", "B"), (aa, ab)):
        with col:
            st.markdown(f"**Run {label}**")
            if side is None or method not in side.scores:
                st.caption(f"{ATTR_METHODS[method]} is not in run {label}.")
                continue
            st.html(tables.shaded_tokens_html(side.tokens, side.scores[method], side.target_position))
            pred = f" → “{tables.readable_token(side.predicted_token)}”" if side.predicted_token else ""
            st.caption(f"Target position {side.target_position}{pred}")
    if method in cmp.attribution_agreement:
        rho = cmp.attribution_agreement[method]
        st.caption(
            "Same tokens in both runs: Spearman rank correlation of the two score rows ρ = "
            + ("undefined" if not np.isfinite(rho) else f"{rho:.3f}")
        )


def cka_section(cmp: ComparisonResult) -> None:
    if cmp.cka is None:
        st.info(cmp.cka_unavailable_reason, icon=":material/info:")
        return
    debiased = st.toggle(
        "Debiased CKA",
        key=Keys.CMP_DEBIASED,
        disabled=cmp.cka_debiased is None,
        help="The unbiased HSIC estimator: independent representations score near 0 even with few "
        "tokens (needs at least 4 tokens).",
    )
    M = cmp.cka_debiased if debiased and cmp.cka_debiased is not None else cmp.cka
    titles = f"layer of A ({run_name(cmp, cmp.a)})", f"layer of B ({run_name(cmp, cmp.b)})"
    st.altair_chart(cka_heatmap(M, *titles), width="content")
    if cmp.a.n_layers == cmp.b.n_layers:
        diag = np.diag(M)
        st.caption("Same layer in both runs: CKA " + ", ".join(f"{i}: {v:.2f}" for i, v in enumerate(diag)))
    st.caption(f"Over {cmp.cka_tokens} tokens; layer 0 is the embedding output. " + cmp.cka_note)
    show_caption("linear_cka")


def layer_cka_section(result: AnalysisResult) -> None:
    """Layer × layer linear CKA of one run (Layer Analysis page): how far the representation moves."""
    st.markdown("**Layer similarity (linear CKA)**")
    if result.n_tokens < 2:
        st.caption("Layer CKA needs at least 2 tokens.")
        return
    debiased = st.toggle(
        "Debiased",
        key=Keys.LAYER_CKA_DEBIASED,
        disabled=result.n_tokens < 4,
        help="The unbiased HSIC estimator (needs at least 4 tokens).",
    )
    M = _layer_cka(_key(result), bool(debiased and result.n_tokens >= 4), _Ref(result))
    st.altair_chart(cka_heatmap(M, "layer", "layer"), width="content")
    if M.shape[0] > 1:
        steps = np.array([M[i, i + 1] for i in range(M.shape[0] - 1)])
        if np.isfinite(steps).any():
            i = int(np.nanargmin(steps))
            st.caption(f"Largest move between neighbouring layers: {i} → {i + 1} (CKA {steps[i]:.2f}).")
    show_caption("linear_cka")
