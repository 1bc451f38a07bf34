"""Overall page: layer metrics, predictions, metric correlations, the normalised heatmap, summary figures, and the
continuation of the text for causal LMs. Reads the result from session state; runs no model except the explicit
Generate button."""

from __future__ import annotations

import streamlit as st

from app import widgets
from app.state import Keys
from app.widgets import guarded

result = st.session_state.get(Keys.RESULT)
st.title("Overall")
if result is None:
    st.info(
        "Choose a model, type a text in the sidebar and press **Analyze**. The layer metrics, predictions and "
        "correlations appear here.",
        icon=":material/arrow_back:",
    )
    st.stop()

with guarded("summary"):
    widgets.result_header(result)
    widgets.summary_metrics(result)

st.subheader("Layer metrics")
with guarded("layer-metric charts"):
    widgets.layer_metric_charts(result)

st.subheader("Predictions")
with guarded("predictions"):
    widgets.predictions_section(result)
if result.family == "causal_lm":
    with guarded("continuation"):
        widgets.continuation_section(result)

# one below the other: side by side, the matrices' metric names leave their cells too little room at 1 280 px
st.subheader("Metric correlations across layers")
with guarded("correlation matrix"):
    widgets.correlation_section(result)
st.subheader("Metrics normalised per metric")
with guarded("normalised heatmap"):
    widgets.normalised_heatmap(result)
