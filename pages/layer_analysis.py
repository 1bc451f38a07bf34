"""Layer Analysis page: attention maps, per-head statistics and clustering, token attribution, the logit lens, the
layer animations and the sparse-autoencoder features, all drawn from the stored result (no model runs on a slider or
head change). Each tab holds the pickers it uses: the Attention tab a layer and a head (and the colour scale), the
Animations tab a head, the SAE tab an SAE, a feature and a token; the others, the layer × layer CKA among them, show
every layer."""

from __future__ import annotations

import streamlit as st

from app import layer_widgets as lw
from app import neuron_widgets, routes_widgets, sae_widgets
from app.loading import with_views
from app.state import Keys
from app.widgets import guarded, result_header

#: The deeper views this page shows (core.analysis.pipeline.VIEWS).
LAYER_VIEWS = ["dla", "flow", "neuron_factors", "query_key"]

result = st.session_state.get(Keys.RESULT)
st.title("Layer Analysis")
if result is None:
    st.info(
        "Run an analysis first: choose a model and a text in the sidebar and press **Analyze**.",
        icon=":material/arrow_back:",
    )
    st.stop()

result_header(result)

tab_att, tab_heads, tab_attr, tab_lens, tab_cka, tab_anim, tab_neurons, tab_sae, *route_tabs = st.tabs(
    [
        "Attention",
        "Heads",
        "Token attribution",
        "Logit lens",
        lw.LAYER_CKA_TAB,
        "Animations",
        "Neurons & query–key",
        "SAE features",
        *routes_widgets.TABS,
    ]
)
with tab_att, guarded("attention map"):
    lw.attention_section(result)
with tab_heads, guarded("head analysis"):
    lw.heads_section(result)
with tab_attr, guarded("token attribution"):
    lw.attribution_section(result)
with tab_lens, guarded("logit lens"):
    lw.logit_lens_section(result)
with tab_cka, guarded("layer similarity"):
    lw.layer_cka_tab(result)
with tab_anim, guarded("layer animations"):
    lw.animations_section(result)
with tab_sae, guarded("SAE features"):  # computed with the analysis (settings.sae_dirs): drawn from the result only
    sae_widgets.draw(result)
# the deeper views are computed on this page's first visit after an analysis (the core tabs above are drawn first)
result = with_views(result, LAYER_VIEWS)
with tab_neurons:  # the query–key view picks its own layer and head, next to it
    qk_layer, qk_head = lw.pickers(result, Keys.QK_LAYER, Keys.QK_HEAD, "of the query–key view")
    neuron_widgets.draw(result, qk_layer, qk_head)
routes_widgets.draw_tabs(result, route_tabs)
