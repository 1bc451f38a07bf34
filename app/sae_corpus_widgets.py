"""SAE features on the Corpus page: the examples-per-feature setting, the check of the sidebar's SAE folders before a
run, and the view of a finished run's core.studies.sae_corpus results — pick an SAE (hook) and a feature (default:
the most frequently firing one), its firing rate and mean activation, its top-activating examples with the token
highlighted in its context, and every feature that fired sorted by firing rate. Drawing runs no model: it reads the
stored results only. Tables come from core.present.sae_tables (HTML escaped there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from app.markdown import md_escape
from app.state import Keys
from core.infra import guards
from core.infra.errors import InputError
from core.present import sae_tables
from core.studies.sae_corpus import SAEFeatureExamples

#: Default number of examples kept per feature (1 … 100).
DEFAULT_TOP = 10
#: Features offered in the feature picker (the most frequently firing first).
PICKER_FEATURES = 500


def top_input(dirs: Sequence[str]) -> None:
    """The examples-per-feature input, shown when the sidebar names SAE folders."""
    st.session_state.setdefault(Keys.CORPUS_SAE_TOP, DEFAULT_TOP)
    if not dirs:
        return
    st.number_input(
        "Examples per SAE feature",
        min_value=1,
        max_value=100,
        step=1,
        key=Keys.CORPUS_SAE_TOP,
        help=f"The run also reads the {len(dirs)} SAE folder(s) set in the sidebar: for each feature, its "
        "top-activating tokens with their contexts, its firing rate and its mean activation over the corpus.",
    )


def top_n(state: Any) -> int:
    v = state.get(Keys.CORPUS_SAE_TOP)
    return DEFAULT_TOP if v is None else int(v)


def check_dirs(dirs: Sequence[str]) -> None:
    """Every SAE folder readable (one-line InputError, server paths scrubbed), at most TMA_MAX_SAES of them; the
    check against the model happens in the job, once the model is loaded."""
    from core.model.sae import load_sae

    if len(dirs) > guards.max_saes():
        raise InputError(f"at most {guards.max_saes()} SAE folders per run (TMA_MAX_SAES), got {len(dirs)}")
    for d in dirs:
        try:
            load_sae(d)
        except InputError as exc:
            raise InputError(guards.scrub_paths(str(exc))) from None


def draw(results: Sequence[SAEFeatureExamples]) -> None:
    """The SAE view of a finished corpus run (see the module docstring)."""
    st.subheader("SAE features over the corpus")
    if not results:
        return
    by_hook = {r.hook_name: r for r in results}
    hooks = list(by_hook)
    if len(hooks) > 1:
        if st.session_state.get(Keys.CORPUS_SAE_HOOK) not in hooks:
            st.session_state[Keys.CORPUS_SAE_HOOK] = hooks[0]
        hook = st.selectbox(
            "SAE", hooks, key=Keys.CORPUS_SAE_HOOK, format_func=lambda h: f"{by_hook[h].name} · {h}"
        )  # fmt: skip
    else:
        hook = hooks[0]
    ex = by_hook[str(hook)]
    fired = sae_tables.features_by_firing_rate(ex)
    st.caption(
        f"**{md_escape(ex.name)}** at `{ex.hook_name}`: {ex.d_sae} features over {ex.n_texts} texts "
        f"({ex.n_tokens} tokens); {len(fired)} fired at least once, {ex.n_dead} never did."
    )
    if not fired:
        st.info("No feature of this SAE fired on any token of the corpus.")
        return
    options = fired[:PICKER_FEATURES]
    if st.session_state.get(Keys.CORPUS_SAE_FEATURE) not in options:
        st.session_state[Keys.CORPUS_SAE_FEATURE] = options[0]  # the most frequently firing
    f = int(
        st.selectbox(
            "Feature",
            options,
            key=Keys.CORPUS_SAE_FEATURE,
            format_func=lambda i: f"feature {i}  ({ex.fire_count[i] / max(ex.n_tokens, 1):.2%} of tokens)",
            help=f"The features that fired, the most frequently firing first (at most {PICKER_FEATURES}).",
        )
    )
    nums = sae_tables.feature_numbers(ex, f)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Firing rate", f"{nums['firing_rate']:.2%}", help="tokens where the feature is > 0 / all tokens")
    c2.metric("Mean activation", f"{nums['mean_activation']:.4g}", help="Σ activation / all tokens")
    c3.metric("Mean when active", f"{nums['mean_when_active']:.4g}", help="Σ activation / tokens where it fires")
    c4.metric("Max activation", f"{nums['max_activation']:.4g}")
    st.markdown(f"**Top-activating examples of feature {f}**")
    st.html(sae_tables.feature_examples_html(ex, f))
    st.caption(
        "Contexts: the example token (highlighted) with up to 8 tokens either side; text = the text's index in the "
        "corpus (0-based, blank lines skipped), position = the token's. Special tokens are left out unless "
        "'Include special tokens' is set."
    )
    st.markdown("**Features by firing rate**")
    st.dataframe(sae_tables.feature_stats_frame(ex), hide_index=True, width="stretch", height=300)
