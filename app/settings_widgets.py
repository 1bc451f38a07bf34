"""The sidebar's Settings, generated from the fields of core.run.settings.AnalysisSettings: every field has a
control, its session-state key is the field's name, and its label, help, bounds and choices come from the field's
metadata ("label", "help", "min", "max", "choices"), so a new setting is one field in core and appears here by itself.

`settings_from_state` is the way back: the session's values → an AnalysisSettings (which validates itself).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import streamlit as st

from core.run.settings import AnalysisSettings, field_kind, setting_fields

#: Fields drawn elsewhere in the sidebar: the masked word is picked from the text's words, next to the text; the SAE
#: folders have their own text area with a line per folder (app/sae_widgets.py).
DRAWN_ELSEWHERE = ("mask_word", "sae_dirs")
#: Shown when a field's metadata has no "label" (the settings base may add one per field; it wins when present).
FALLBACK_LABELS = {
    "max_tokens": "Max tokens",
    "exclude_special_tokens": "Exclude special tokens from layer metrics",
    "top_k": "Candidates per prediction (top k)",
    "target_position": "Target position (empty: the default)",
    "compute_gradients": "Compute gradients (attribution)",
    "integrated_gradients": "Integrated gradients (slow)",
    "ig_steps": "Integrated-gradients steps",
    "n_clusters": "Head clusters (empty: chosen by silhouette)",
    "lens_position": "Logit-lens position (empty: the target)",
    "lens_full_grid": "Full logit-lens grid (slow on a CPU)",
    "head_ablation": "Head ablation (exact, slow; Causal page)",
    "neuron_factors": "Neuron factors (NMF k, 0 = off)",
    "neuron_first_layer": "First neuron layer (empty: the first)",
    "neuron_last_layer": "Last neuron layer (empty: the last)",
}
#: Offered values of an int field whose metadata has no "choices" (the sidebar's Max tokens has always been a
#: slider over these).
FALLBACK_CHOICES: dict[str, tuple[int, ...]] = {"max_tokens": (32, 64, 128, 256, 512)}
#: "X needs Y" where the metadata does not say it ("requires"): the control is disabled while Y is off, and
#: settings_from_state switches X off then (AnalysisSettings refuses X without Y).
FALLBACK_REQUIRES = {"integrated_gradients": "compute_gradients"}


def widget_fields() -> list[dataclasses.Field[Any]]:
    """The settings fields that the Settings expander draws (every field but those drawn elsewhere)."""
    return [f for f in setting_fields() if f.name not in DRAWN_ELSEWHERE]


def label_of(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("label") or FALLBACK_LABELS.get(f.name) or f.name.replace("_", " ").capitalize())


def choices_of(f: dataclasses.Field[Any]) -> tuple[Any, ...] | None:
    choices = f.metadata.get("choices") or FALLBACK_CHOICES.get(f.name)
    return tuple(choices) if choices else None


def requires_of(f: dataclasses.Field[Any]) -> str | None:
    req = f.metadata.get("requires") or FALLBACK_REQUIRES.get(f.name)
    return str(req) if req else None


def defaults() -> dict[str, Any]:
    """{field name: default} of every field (the session starts from these)."""
    return {f.name: f.default for f in setting_fields()}


def _help(f: dataclasses.Field[Any]) -> str:
    text = str(f.metadata.get("help", ""))
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def draw_settings(state: Any) -> None:
    """One control per settings field (call inside the sidebar's Settings expander)."""
    for f in widget_fields():
        kind = field_kind(f)
        req = requires_of(f)
        disabled = req is not None and not state.get(req)
        label, help_, key = label_of(f), _help(f), f.name
        if kind is bool:
            st.toggle(label, key=key, help=help_, disabled=disabled)
            continue
        choices = choices_of(f)
        if choices is not None:
            if state.get(key) not in choices:
                state[key] = f.default if f.default in choices else choices[0]
            if kind is int:
                st.select_slider(label, list(choices), key=key, help=help_, disabled=disabled)
            else:
                st.selectbox(label, list(choices), key=key, help=help_, disabled=disabled)
            continue
        if kind is int:
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            st.number_input(
                label,
                min_value=lo,
                max_value=hi,
                step=1,
                key=key,
                help=help_,
                disabled=disabled,
                placeholder="default" if f.default is None else None,
            )
        else:
            st.text_input(label, key=key, help=help_, disabled=disabled, placeholder="default")


def settings_from_state(state: Any, **overrides: Any) -> AnalysisSettings:
    """AnalysisSettings from the session's values (missing keys take the field's default); a setting whose
    requirement is off is switched off. Raises core.infra.errors.InputError when a value is out of bounds."""
    values: dict[str, Any] = {}
    for f in setting_fields():
        v = state.get(f.name, f.default)
        kind = field_kind(f)
        if v is None or (isinstance(v, str) and not v.strip()):
            values[f.name] = None if f.default is None else f.default
        elif kind is bool:
            values[f.name] = bool(v)
        elif kind is int:
            values[f.name] = int(v)
        elif kind is tuple:
            values[f.name] = tuple(v)
        else:
            values[f.name] = str(v)
    for f in setting_fields():
        req = requires_of(f)
        if req and not values.get(req) and field_kind(f) is bool:
            values[f.name] = False
    values.update(overrides)
    return AnalysisSettings(**values)
