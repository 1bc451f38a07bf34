"""Causal page: activation patching between a clean and a corrupted text (a background job, started only by its
Run button, cached), the exact head ablation of the current analysis beside the gradient head score, and (with SAE
folders in the sidebar) one SAE feature as a patching site. Thin: the
sections are in app.causal_widgets; widgets after a run only redraw the stored results."""

from __future__ import annotations

import streamlit as st

from app.causal_widgets import head_ablation_section, patching_section
from app.pairs_widgets import pairs_section
from app.sae_patch_widgets import sae_patch_section
from app.sae_widgets import chosen_dirs
from app.state import Keys
from app.widgets import guarded

st.title("Causal evidence")
st.caption(
    "Attention and gradients say where a model looks; patching and ablation say what it needs. Patch the "
    "activations of a clean run into a corrupted one and see which layer and position restore the answer."
)

with_sae = bool(chosen_dirs(st.session_state))  # the SAE tab only when the sidebar has SAE folders
names = ["Activation patching", "Pair data set", "Head ablation"] + (["SAE feature"] if with_sae else [])
tabs = st.tabs(names)
tab_patch, tab_pairs, tab_heads = tabs[:3]
with tab_patch, guarded("activation patching"):
    patching_section()
with tab_pairs, guarded("patching over pairs"):
    pairs_section()
with tab_heads, guarded("head ablation"):
    head_ablation_section(st.session_state.get(Keys.RESULT))
if with_sae:
    with tabs[3], guarded("SAE feature patching"):
        sae_patch_section(st.session_state.get(Keys.RESULT))
