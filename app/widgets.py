"""Sections of the Overall page, drawn from an AnalysisResult (read only; no model runs here except the explicit
Generate button of the continuation).

The tables come from core.present.tables, the charts from app.charts, the captions from core.present.docs (one source
of truth).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import streamlit as st

from app import charts
from app.markdown import md_escape
from app.state import Keys
from core.analysis.result import AnalysisResult
from core.infra.errors import TMAError
from core.present import chart_spec, docs, tables
from core.present.summaries import metric_correlations, metric_token_count, summary_figures
from core.steps.metrics import METRIC_NAMES

log = logging.getLogger(__name__)


def caption(key: str) -> str:
    """The documentation registry's one-line caption for `key` (tests check every key the app uses exists)."""
    return docs.caption(key)


def metric_label(name: str) -> str:
    """Display title of a metric, from the documentation registry."""
    return docs.metric_label(name)


def show_caption(key: str) -> None:
    text = caption(key)
    if text:
        st.caption(text)


@contextmanager
def guarded(what: str) -> Iterator[None]:
    """Draw a section; if it fails, log the traceback and show one calm line instead (never a raw traceback).

    Streamlit's own control flow (st.stop, st.rerun) raises BaseException subclasses, which pass through.
    """
    try:
        yield
    except TMAError as exc:
        st.warning(f"{what}: {exc}")
    except Exception:
        log.exception("drawing %s failed", what)
        st.error(
            f"The {what} could not be drawn for this result; the details are in the server log.",
            icon=":material/error:",
        )


#: A shaded text of more tokens than this scrolls inside a box of SHADED_TEXT_PX pixels (a 512-token text would
#: otherwise take ~1 500 px, once per method or factor).
LONG_TEXT_TOKENS = 120
SHADED_TEXT_PX = 260


def shaded_text(html_text: str, n_tokens: int) -> None:
    """A tables.shaded_tokens_html block; long texts scroll inside a bounded box."""
    if n_tokens > LONG_TEXT_TOKENS:
        with st.container(height=SHADED_TEXT_PX):
            st.html(html_text)
    else:
        st.html(html_text)


def chart(c: Any, stretch: bool = True) -> None:
    """An Altair chart at full width (rendered as SVG by the app's config); stretch=False keeps a chart's own
    pixel size (square heatmaps)."""
    st.altair_chart(c, width="stretch" if stretch else "content")


# ----------------------------------------------------------------------------------------------------------------
# Header and summary


def result_header(result: AnalysisResult) -> None:
    """Which model, which text: the result is always labelled with the text it belongs to."""
    m = result.model
    n_used = metric_token_count(result)
    excluded = bool(result.settings.exclude_special_tokens)
    st.caption(
        f"**{md_escape(m.model_id)}** · {chart_spec.family_words(result.family)} · {m.dtype} "
        f"on {m.device} · {result.n_layers} layers × {result.n_heads} heads · "
        f"{result.n_tokens} tokens · {chart_spec.metric_tokens_phrase(result.n_tokens, n_used, excluded)}"
    )
    label = "Analysed text (word masked)" if result.analysed_text != result.text else "Analysed text"
    st.caption(f"{label}: {md_escape(shorten(result.analysed_text))}")
    st.caption(settings_line(result))
    typed = st.session_state.get(Keys.TEXT)
    if isinstance(typed, str) and typed.strip() and typed != result.text:
        st.info(
            "The text in the sidebar has changed since this analysis: everything below belongs to the text "
            "above. Press **Analyze** to analyse the new text.",
            icon=":material/info:",
        )
    for w in result.warnings:
        st.warning(md_escape(w), icon=":material/warning:")


def settings_line(result: AnalysisResult) -> str:
    """The settings this result was computed with (a session's result shows its own settings, not the sidebar's)."""
    s = result.settings
    grads = "integrated gradients" if s.integrated_gradients else ("on" if s.compute_gradients else "off")
    return (
        f"Settings: max tokens {s.max_tokens} · gradients {grads} · special tokens "
        f"{'excluded from' if s.exclude_special_tokens else 'included in'} the metrics"
    )


def shorten(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summary_metrics(result: AnalysisResult) -> None:
    """Headline figures with st.metric, from core.present.summaries.summary_figures (the PDF's numbers)."""
    s = summary_figures(result)
    first, last = float(s["effective_rank_first"] or 0.0), float(s["effective_rank_last"] or 0.0)
    drop_layer, cos_last = s.get("largest_erank_drop_layer"), float(s["final_cosine_to_input"] or 0.0)
    tokens_help = (
        f"{s['metric_tokens']} tokens enter the layer metrics; the spectral metrics cannot exceed {s['token_bound']}."
    )
    c = st.columns(5)
    c[0].metric("Tokens", result.n_tokens, help=tokens_help)
    c[1].metric("Layers × heads", f"{result.n_layers} × {result.n_heads}")
    c[2].metric(
        "Final effective rank",
        _fmt(last),
        delta=f"{_fmt(last - first)} vs embeddings",
        delta_color="off",
        help=f"At the last layer ({result.n_layers}). " + caption("effective_rank"),
    )
    c[3].metric(
        "Largest rank drop",
        "–" if drop_layer is None else f"layer {drop_layer}",
        help="The layer l whose effective rank fell most from layer l − 1.",
    )
    c[4].metric(
        "Final cosine to input",
        _fmt(cos_last, 3),
        help=f"At the last layer ({result.n_layers}). " + caption("cosine_to_input"),
    )


def _fmt(v: float, digits: int = 2) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


# ----------------------------------------------------------------------------------------------------------------
# Layer metrics, correlations, normalised heatmap


def layer_metric_charts(result: AnalysisResult) -> None:
    """One Altair line chart per metric against layer, three per row, each with its caption. The axes start at the
    metric's reference (0, or the T − 1 ceiling drawn) unless "Zoom to data" is on; a metric with nothing to draw
    says why in one line instead of an empty frame."""
    df = tables.metrics_long(result)
    n_used = metric_token_count(result)
    excluded = bool(getattr(result.settings, "exclude_special_tokens", False))
    token_bound = max(n_used - 1, 0)
    zoom = st.toggle(
        "Zoom to data",
        key=Keys.METRIC_ZOOM,
        help="Off: each y-axis starts at zero (the cosine axis spans 0 to 1) and the spectral metrics "
        "show their ceiling T − 1. On: each y-axis spans its data only.",
    )
    names = list(METRIC_NAMES)
    for start in range(0, len(names), 3):
        cols = st.columns(3)
        for col, name in zip(cols, names[start : start + 3]):
            with col:
                st.markdown(f"**{metric_label(name)}**")
                values = df.loc[df.metric == name, "value"].to_numpy()
                reason = chart_spec.empty_reason(name, values, n_used, excluded)
                c = None if reason else charts.metric_line(df, name, token_bound, zoom=bool(zoom))
                if c is None:
                    st.info(reason or "Nothing to draw for this metric.", icon=":material/info:")
                else:
                    chart(c)
                show_caption(name)
    if zoom:
        st.caption(
            "Zoomed: each y-axis spans its data only, so small changes look large; the T − 1 ceiling is "
            "drawn only where it falls inside."
        )
    show_caption("fig_layer_metrics")


def correlation_section(result: AnalysisResult) -> None:
    method = st.segmented_control(
        "Method", ["pearson", "spearman"], key=Keys.CORR_METHOD, required=True, format_func=str.capitalize
    )
    method = method or "pearson"
    long = tables.correlations_long(metric_correlations(result, method))
    gaps = {
        name: chart_spec.correlation_gap_reason(np.asarray(result.layer_metrics[name], dtype=float))
        for name in METRIC_NAMES
    }
    gaps = {name: why for name, why in gaps.items() if why}
    if len(gaps) >= len(METRIC_NAMES) - 1:
        st.info(
            "No pair of metrics has a correlation to show: "
            + "; ".join(f"{metric_label(n)}: {why}" for n, why in gaps.items())
            + ".",
            icon=":material/info:",
        )
    else:
        chart(charts.correlation_heatmap(long, method), stretch=False)
        if gaps:
            st.caption(
                "Empty cells: "
                + "; ".join(
                    f"{metric_label(n)} has {why}"
                    if why == "missing values"
                    else f"{metric_label(n)} is constant over the layers"
                    for n, why in gaps.items()
                )
                + " — no correlation is defined for it."
            )
    show_caption("fig_metric_correlation")


def normalised_heatmap(result: AnalysisResult) -> None:
    df = tables.normalised_metrics(result)
    if not np.isfinite(df["normalised"].to_numpy(dtype=float)).any():
        st.info("Nothing to draw: no layer metric has a value for this text.", icon=":material/info:")
    else:
        chart(charts.normalised_heatmap(df))
    show_caption("fig_metrics_normalized")


# ----------------------------------------------------------------------------------------------------------------
# Predictions and continuation


def predictions_section(result: AnalysisResult) -> None:
    pred = result.predictions
    if pred is None:
        st.caption("Predictions were not computed for this result.")
        return
    if pred.kind == "unavailable":
        st.info(pred.message or "Predictions are not available for this model.", icon=":material/info:")
        return
    if pred.message:
        if pred.positions:
            st.caption(pred.message)
        else:
            st.info(pred.message, icon=":material/info:")
    if not pred.positions:
        return
    table = tables.predictions_table(pred)
    positions = list(pred.positions)
    cols = st.columns(max(2, min(len(positions), 3)))
    for i, pos in enumerate(positions):
        with cols[i % len(cols)]:
            tok = result.display_tokens[pos] if 0 <= pos < len(result.display_tokens) else "?"
            title = (
                f"Mask at position {pos}" if pred.kind == "mask_fill" else f"Next token after “{tok}” (position {pos})"
            )
            st.markdown(f"**{title}**")
            rows = table[table.position == pos][["rank", "token", "probability"]]
            st.dataframe(
                rows,
                hide_index=True,
                width="stretch",
                column_config={
                    "probability": st.column_config.ProgressColumn(
                        "probability", format="%.4f", min_value=0.0, max_value=1.0
                    )
                },
            )
    show_caption(pred.kind if pred.kind in ("mask_fill", "next_token") else "fig_predictions")


def _stop_generation() -> None:
    event = st.session_state.get(Keys.GEN_STOP)
    if isinstance(event, threading.Event):
        event.set()


def continuation_section(result: AnalysisResult) -> None:
    """ "Continue the text" for causal LMs: runs only on the Generate button; streams; a Stop button ends it."""
    state = st.session_state
    with st.expander("Continue the text", expanded=bool(state.get(Keys.GEN_TEXT)), icon=":material/edit:"):
        from core.steps.predictions import GenerationSettings, generate_stream

        has_chat = result.model.has_chat_template
        c1, c2, c3 = st.columns(3)
        max_new = c1.slider("New tokens", 1, 200, 40, key=Keys.GEN_MAX_NEW)
        mode = c2.radio("Decoding", ["greedy", "sampled"], horizontal=True, key=Keys.GEN_MODE)
        seed = c3.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key=Keys.GEN_SEED)
        sampled = mode == "sampled"
        temperature = c1.slider("Temperature", 0.05, 2.0, 1.0, 0.05, key=Keys.GEN_TEMPERATURE, disabled=not sampled)
        top_p = c2.slider("Top-p", 0.05, 1.0, 0.95, 0.05, key=Keys.GEN_TOP_P, disabled=not sampled)
        chat = c3.toggle(
            "Use the chat template",
            value=has_chat,
            key=Keys.GEN_CHAT,
            disabled=not has_chat,
            help=None if has_chat else "This tokenizer has no chat template.",
        )
        b1, b2, _ = st.columns([1, 1, 4])
        go = b1.button("Generate", type="primary", key="gen_go", icon=":material/play_arrow:")
        b2.button("Stop", key="gen_stop_button", on_click=_stop_generation, icon=":material/stop:")
        box = st.container(border=True)
        if not go:
            if state.get(Keys.GEN_TEXT):
                box.markdown(_md_safe(result.analysed_text) + "**" + _md_safe(state[Keys.GEN_TEXT]) + "**")
            else:
                box.caption("Press Generate to continue the analysed text with the model.")
            return
        try:
            gen = GenerationSettings(
                max_new_tokens=int(max_new),
                do_sample=sampled,
                temperature=float(temperature),
                top_p=float(top_p),
                seed=int(seed),
                use_chat_template=bool(chat and has_chat),
            )
            loaded = _loaded_for(result)
        except TMAError as exc:
            box.error(str(exc))
            return
        event = threading.Event()
        state[Keys.GEN_STOP] = event
        state[Keys.GEN_TEXT] = ""
        pieces: list[str] = []
        inner = generate_stream(loaded, result.analysed_text, gen, stop_event=event)

        def stream():
            for piece in inner:
                pieces.append(piece)
                state[Keys.GEN_TEXT] = "".join(pieces)
                yield piece

        with box:
            try:
                st.write_stream(stream())
            except TMAError as exc:
                st.error(str(exc))
            except Exception:
                log.exception("generation failed")
                st.error("The generation failed; the details are in the server log.")
            finally:
                # The generator holds the shared model's lock between pieces: close it at once, also when a click
                # (Stop, or any widget) interrupts this run, so other sessions never wait for garbage collection.
                inner.close()
        if event.is_set():
            st.caption("Stopped.")


def _md_safe(text: str) -> str:
    """Text shown inside Markdown with its Markdown characters escaped (see md_escape)."""
    return md_escape(text)


def _loaded_for(result: AnalysisResult) -> Any:
    """The cached LoadedModel the result was computed with (same cache entry as the sidebar's load)."""
    from app.loading import get_model

    key = st.session_state.get(Keys.RESULT_LOAD)
    if key:
        return get_model(*key)
    return get_model(result.model.model_id, result.model.dtype, result.model.device)
