"""Compare page: two texts on one model, or one text on two models, side by side — layer metrics overlaid,
attention-entropy difference, predictions, token attribution and linear CKA between the layers of the two runs.

Thin: the pickers and the Compare button are in app.compare_widgets; only that button runs a model (each run an
ordinary cached analysis with the sidebar's settings, in a background job of app.jobs that leaving the page does
not stop). Everything
below is drawn from the stored results.
"""

from __future__ import annotations

import streamlit as st

from app import compare_widgets as cw
from app.state import Keys
from app.widgets import guarded

state = st.session_state
st.title("Compare")
st.caption(
    "Run A against run B: a base and a fine-tuned model on one text, a sentence and its paraphrase on one "
    "model, or two architectures on the same text."
)

if cw.pickers():
    cw.start_job()
cw.follow_job()  # also picks up a comparison that the user left running on another page
for w, key in (("a", "model"), ("b", "model_b")):  # the link keeps both models (the texts stay in the session)
    model = cw.model_of(state, w)
    if model and st.query_params.get(key) != model:
        st.query_params[key] = model

if state.get(Keys.CMP_ERROR):
    st.error(state[Keys.CMP_ERROR], icon=":material/error:")
a, b = state.get(Keys.CMP_RESULT_A), state.get(Keys.CMP_RESULT_B)
if a is None or b is None:
    st.info("Choose run A and run B above and press **Compare**.", icon=":material/compare_arrows:")
    st.stop()

with guarded("comparison"):
    cmp = cw.comparison(a, b)
    cw.header(cmp)
    cw.download(a, b, cmp)
    st.subheader("Layer metrics")
    with guarded("layer-metric overlay"):
        cw.metrics_section(cmp)
    st.subheader("Layer similarity between the runs (linear CKA)")
    with guarded("CKA heatmap"):
        cw.cka_section(cmp)
    st.subheader("Attention entropy: B − A")
    with guarded("entropy difference"):
        cw.entropy_section(cmp)
    left, right = st.columns(2)
    with left:
        st.subheader("Predictions")
        with guarded("predictions"):
            cw.predictions_section(cmp)
    with right:
        st.subheader("Token attribution")
        with guarded("token attribution"):
            cw.attribution_section(cmp)
