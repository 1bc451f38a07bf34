"""Details page: the documentation of every metric, analysis and figure, rendered from core.present.docs.

Thin by design: it only reads the registry (no analysis result is needed), so it works before any run. Formulas are
drawn with st.latex; the same registry feeds the captions of the other pages and the PDF report.
"""

from __future__ import annotations

import streamlit as st

from core.present import docs

GROUPS = [
    (
        "Layer metrics",
        "layer_metric",
        "Computed on the hidden states of every layer (0 = embeddings, last = the residual stream before the final "
        "norm), over the tokens of the analysed text.",
    ),
    ("Attention", "attention", "Computed per head from the attention weights of the one forward pass."),
    ("Attribution", "attribution", "Which input tokens and heads the prediction at the target position depends on."),
    ("Predictions", "prediction", "What the model predicts: mask filling, next token, and generation."),
    ("Logit lens", "logit_lens", "The model's intermediate guesses, layer by layer."),
    ("Causal evidence", "causal", "Interventions: what the prediction needs (activation patching, head ablation)."),
    ("Neurons", "neurons", "Groups of MLP neurons that fire together over the tokens of the text."),
    ("Corpus", "corpus", "Corpus mode: computed on the token states of many texts pooled per layer, with intervals."),
    ("Comparison", "comparison", "How similar two layers, or two runs, are (Layer Analysis and Compare pages)."),
]


def draw_entry(e: docs.DocEntry) -> None:
    """One metric or analysis: formula, definition, high/low, encoder vs decoder, pitfalls, references."""
    st.subheader(e.title, anchor=e.key)
    if e.formula_latex:
        st.latex(e.formula_latex)
    st.markdown(e.definition)
    if e.high or e.low:
        hi, lo = st.columns(2)
        hi.markdown(f"**High values.** {e.high}")
        lo.markdown(f"**Low values.** {e.low}")
    if e.encoder_vs_decoder:
        st.markdown(f"**Encoders vs decoders.** {e.encoder_vs_decoder}")
    if e.pitfalls:
        with st.expander("Pitfalls", expanded=False):
            st.markdown("\n".join(f"- {p}" for p in e.pitfalls))
    if e.references:
        with st.expander("References", expanded=False):
            st.markdown("\n".join(f"- {r}" for r in e.references))


def draw_visual_guide() -> None:
    st.markdown(
        "How to read each chart and animation of the Overall and Layer Analysis pages and of the exported "
        "`plots/` and `animations/` folders."
    )
    for e in docs.entries("figure") + docs.entries("animation"):
        st.subheader(e.title, anchor=e.key)
        st.markdown(e.definition)
        st.markdown(f"**How to read it.** {e.how_to_read}")
        for p in e.pitfalls:
            st.markdown(f"- {p}")
        if e.files:
            st.caption("In the export: " + ", ".join(f"`{f}`" for f in e.files))


def draw_methodology() -> None:
    for title, paragraph in docs.METHODOLOGY:
        st.subheader(title)
        st.markdown(paragraph)


st.title("Details")
st.markdown(
    "Formulas, interpretation guides, the visual-analysis guide and the methodology behind every number on "
    "the other pages. Notation: *L* layers, *H* heads, *T* tokens, *D* hidden width; $h^l_t$ is the state "
    "of token *t* after block *l* (l = 0: embeddings); $A^{l,h}$ the attention of head *h* in layer *l* "
    "(l = 1 … L: the block that writes hidden state *l*; heads are numbered from 0; rows are queries)."
)

tabs = st.tabs([g[0] for g in GROUPS] + ["Visual guide", "Methodology"])
for tab, (_title, kind, intro) in zip(tabs, GROUPS):
    with tab:
        st.caption(intro)
        for entry in docs.entries(kind):
            draw_entry(entry)
            st.divider()
with tabs[len(GROUPS)]:
    draw_visual_guide()
with tabs[len(GROUPS) + 1]:
    draw_methodology()
