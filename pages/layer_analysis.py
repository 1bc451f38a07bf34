"""Layer Analysis page: attention maps, per-head statistics and clustering, token attribution, the logit lens, the
layer animations and the sparse-autoencoder features, all drawn from the stored result (no model runs on a slider or
head change). Each tab holds the pickers it uses: the Attention tab a layer and a head (and the colour scale), the
Animations tab a head, the SAE tab an SAE, a feature and a token; the others, the layer × layer CKA among them, show
every layer."""

from __future__ import annotations

import streamlit as st

from app import layer_widgets as lw
from app import neuron_widgets, routes_widgets, sae_widgets
from app.loading import latest, pending_line, with_views
from app.state import Keys
from app.widgets import guarded, result_header
from core.analysis.result import AnalysisResult

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
# the deeper views: started in the background as the analysis ended (app.loading.background_views); each tab shows
# its view as soon as it lands and says which are still being computed
tab_nf, tab_qk = tab_neurons.container(), tab_neurons.container()
VIEW_TABS = {  # view -> (its slot, how it is drawn from a result that holds it)
    "neuron_factors": (tab_nf.empty(), neuron_widgets.draw_neurons),
    "query_key": (tab_qk.empty(), None),
    "dla": (route_tabs[0].empty(), routes_widgets.draw_dla),
    "flow": (route_tabs[1].empty(), routes_widgets.draw_flow),
}
drawn: set[str] = set()


def draw_views(current: AnalysisResult, final: bool = False) -> None:
    """Fill the slot of every view `current` holds (each once per run); the others say they are still computed."""
    left = [v for v in LAYER_VIEWS if v not in current.views and v not in drawn]
    for view, (slot, draw) in VIEW_TABS.items():
        if view in drawn:
            continue
        if view in current.views or final:
            drawn.add(view)
            with slot.container():
                if view == "query_key":
                    qk_layer, qk_head = lw.pickers(current, Keys.QK_LAYER, Keys.QK_HEAD, "of the query–key view")
                    neuron_widgets.draw_query_key(current, qk_layer, qk_head)
                elif draw is not None:
                    draw(current)
        else:
            slot.info(pending_line(left), icon=":material/hourglass_top:")


draw_views(latest(result))
result = with_views(result, LAYER_VIEWS, landed=draw_views)
draw_views(result, final=True)
