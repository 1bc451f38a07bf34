"""Corpus page: layer geometry over many texts, with 95 % intervals over texts.

Texts come from an uploaded .txt (one per line), an uploaded .csv (pick the column) or pasted lines; the model is
the one chosen in the sidebar. Only the Run button runs the model, as a background job (app.jobs) that leaving the
page does not stop; the inputs and the result stay in the session. Every other widget only re-draws the stored
result. With SAE folders in the sidebar the run also finds each feature's top-activating examples
(app.sae_corpus_widgets). Thin: the sections are in app.corpus_widgets. The number of texts is limited by
$TMA_MAX_CORPUS_TEXTS (default 200) for public deployments.
"""

from __future__ import annotations

import streamlit as st

from app import corpus_widgets as cw
from app.state import Keys
from app.widgets import guarded

st.title("Corpus")
st.markdown(
    "Layer geometry over many texts: the spectral metrics, TwoNN intrinsic dimension, two anisotropies and "
    "linearity on the token states of the whole corpus, each with a 95 % interval over texts, "
    "and the single-text metrics of every text."
)
if cw.draw_inputs():
    cw.start_corpus()
cw.follow_job()  # also a run the user left going on another page
if st.session_state.get(Keys.CORPUS_ERROR):
    st.error(st.session_state[Keys.CORPUS_ERROR])
_result = st.session_state.get(Keys.CORPUS_RESULT)
if _result is not None:
    with guarded("corpus result"):
        cw.draw_result(_result, st.session_state.get(Keys.CORPUS_SAE))
else:
    st.info("Choose the texts and press **Run corpus analysis**.")
