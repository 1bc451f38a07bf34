"""Sparse-autoencoder widgets: the SAE folder picker in the sidebar and the SAE tab of the Layer Analysis page.

The picker is a text area of SAELens folders (one per line, one SAE per hook); each line is read (core.model.sae,
cached) and described under the field, or its one-line refusal is shown. `chosen_dirs(state)` feeds
`AnalysisSettings.sae_dirs`. The tab draws from `result.sae` only (core.steps.sae.SAESection): choosing an SAE, a
feature or a token recomputes nothing and runs no model. Three views: a token strip shaded by the chosen feature,
the top features of the chosen token with their logit effects, and a features × positions heatmap of the strongest
features.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app.state import Keys
from app.widgets import chart, guarded, shaded_text
from core.analysis.result import AnalysisResult
from core.infra import guards
from core.infra.errors import InputError
from core.present import docs, tables
from core.steps.sae import SAEFeatures

#: Features in the heatmap and in the feature picker.
HEATMAP_FEATURES = 20
PICKER_FEATURES = 200
TOKEN_FEATURES = 10


def chosen_dirs(state: Any) -> tuple[str, ...]:
    """The SAE folders typed in the sidebar (one per line, blanks and repeats dropped)."""
    raw = state.get(Keys.SAE_DIRS) or ""
    return tuple(dict.fromkeys(line.strip() for line in str(raw).splitlines() if line.strip()))


def sidebar_picker(state: Any) -> None:
    """The SAE folder field and a line per folder: what it holds, or why it cannot be used."""
    if not guards.local_models_allowed():
        st.caption("SAE folders are local files: switched off on this server (TMA_ALLOW_LOCAL_MODELS=0).")
        return
    st.text_area(
        "SAE folders (one per line)",
        key=Keys.SAE_DIRS,
        height=68,
        placeholder="/path/to/sae  (SAELens: cfg.json + sae_weights.safetensors)",
        help="Sparse autoencoders in SAELens's format, one per hook (e.g. blocks.6.hook_resid_pre). Their features "
        "are read from the same forward pass as the rest and shown on the Layer Analysis page.",
    )
    for d in chosen_dirs(state):
        st.caption(_describe(d))


def _describe(folder: str) -> str:
    from core.model.sae import load_sae

    try:
        s = load_sae(folder)
    except InputError as exc:
        return f":red[{guards.scrub_paths(str(exc))}]"
    model = f", trained on {s.model_name}" if s.model_name else ""
    return f"**{s.name}**: {s.architecture} at `{s.hook_name}`, {s.d_in} → {s.d_sae} features{model}"


def _feature_label(sec: SAEFeatures, f: int) -> str:
    row = sec.logit_row(f)
    if row is None:
        return f"feature {f}"
    return f"feature {f}  (+ {sec.text_of(int(sec.promote_ids[row, 0]))!r})"


def draw(result: AnalysisResult) -> None:
    """The SAE tab: a hint without SAEs, else the SAE picker and the three views."""
    section = result.sae
    if section is None or not section.saes:
        st.info(
            "No SAE features in this result: type SAE folders (SAELens format) in the sidebar's settings and press "
            "**Analyze**."
        )
        return
    hooks = [s.hook_name for s in section.saes]
    hook = st.selectbox(
        "SAE", hooks, key=Keys.SAE_HOOK, format_func=lambda h: f"{section.by_hook(h).name} · {h}"
    ) if len(hooks) > 1 else hooks[0]  # fmt: skip
    sec = section.by_hook(str(hook))
    cos = sec.cosine[np.isfinite(sec.cosine)]
    st.caption(
        f"{sec.architecture} SAE, {sec.d_in} → {sec.d_sae} features. Mean L0 {float(sec.l0.mean()):.1f} · "
        f"FVU {sec.fvu_total:.3g} · mean cosine(x, x̂) {float(cos.mean()) if cos.size else float('nan'):.3f}. "
        + docs.caption("sae_reconstruction")
    )
    if np.isfinite(sec.fvu_total) and sec.fvu_total > 0.5:
        st.warning("This SAE reconstructs the activations of this text poorly: its features describe it badly.")
    with guarded("SAE token strip"):
        strip_section(result, sec)
    with guarded("SAE features of a token"):
        token_section(result, sec)
    with guarded("SAE heatmap"):
        heatmap_section(result, sec)


def strip_section(result: AnalysisResult, sec: SAEFeatures) -> None:
    st.subheader("Where a feature fires")
    options = sec.strongest(PICKER_FEATURES)
    if not options:
        st.info("No feature is active anywhere in this text.")
        return
    f = st.selectbox(
        "Feature",
        options,
        key=Keys.SAE_FEATURE,
        format_func=lambda i: _feature_label(sec, int(i)),
        help="The strongest features of the text, strongest first.",
    )
    prof = sec.feature_profile(int(f))
    shaded_text(tables.shaded_tokens_html(result.display_tokens, prof, result.target_position), result.n_tokens)
    row = sec.logit_row(int(f))
    if row is not None:
        up = ", ".join(repr(sec.text_of(int(i))) for i in sec.promote_ids[row, :5])
        dn = ", ".join(repr(sec.text_of(int(i))) for i in sec.suppress_ids[row, :5])
        st.caption(f"Promotes {up}; suppresses {dn} (per unit activation). " + docs.caption("sae_logit_effect"))
    else:
        st.caption(f"No logit effect for this feature: {sec.logit_note}.")


def token_features_frame(sec: SAEFeatures, position: int, n: int = TOKEN_FEATURES) -> pd.DataFrame:
    """The n strongest features at `position` with their top promoted and suppressed tokens."""
    rows = []
    for f, a in sec.token_features(position, n):
        r = sec.logit_row(f)
        rows.append(
            {
                "feature": f,
                "activation": a,
                "promotes": ", ".join(sec.text_of(int(i)) for i in sec.promote_ids[r, :3]) if r is not None else "—",
                "suppresses": ", ".join(sec.text_of(int(i)) for i in sec.suppress_ids[r, :3]) if r is not None else "—",
                "top effect": float(sec.promote_effects[r, 0]) if r is not None else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=["feature", "activation", "promotes", "suppresses", "top effect"])


def token_section(result: AnalysisResult, sec: SAEFeatures) -> None:
    st.subheader("Features of a token")
    t = st.selectbox(
        "Token",
        list(range(result.n_tokens)),
        index=result.target_position,
        key=Keys.SAE_TOKEN,
        format_func=lambda i: f"{i}: {result.display_tokens[i]!r}",
    )
    t = int(t)
    st.caption(
        f"L0 {int(sec.l0[t])} · FVU {float(sec.fvu[t]):.3g} · cosine {float(sec.cosine[t]):.3f} at this token. "
        "Effects are logit changes per unit activation (the final norm frozen at each feature's peak)."
    )
    st.dataframe(token_features_frame(sec, t), hide_index=True, width="stretch")


def heatmap_frame(result: AnalysisResult, sec: SAEFeatures, n: int = HEATMAP_FEATURES) -> pd.DataFrame:
    """Long table (feature, position, token, activation) of the n strongest features."""
    feats = sec.strongest(n)
    M = sec.heatmap(feats)
    return pd.DataFrame(
        [
            {"feature": str(f), "position": t, "token": result.display_tokens[t], "activation": float(M[i, t])}
            for i, f in enumerate(feats)
            for t in range(result.n_tokens)
        ]
    )


def heatmap_section(result: AnalysisResult, sec: SAEFeatures) -> None:
    st.subheader("Strongest features × positions")
    df = heatmap_frame(result, sec)
    if df.empty:
        st.info("No feature is active anywhere in this text.")
        return
    order = list(dict.fromkeys(df["feature"]))
    c = (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X("position:O", title="position"),
            y=alt.Y("feature:N", sort=order, title="feature"),
            color=alt.Color("activation:Q", scale=alt.Scale(scheme="oranges")),
            tooltip=["feature", "position", "token", alt.Tooltip("activation:Q", format=".3g")],
        )
        .properties(height=max(120, 16 * len(order)))
    )
    chart(c)
    st.caption(docs.caption("fig_sae_heatmap"))
