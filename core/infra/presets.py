"""The one table of model presets: the sidebar's choices, the CLI's help and the README's model table read it
(tests/test_presets.py checks the README against it)."""

from __future__ import annotations

from dataclasses import dataclass

BUNDLED_ID = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Preset:
    """A model offered by name. family: masked_lm | causal_lm | encoder; parameters: a rounded count for people;
    offline: the weights ship with the installation (no hub needed)."""

    id: str
    family: str
    label: str
    description: str
    parameters: str
    offline: bool = False


PRESETS: tuple[Preset, ...] = (
    Preset(
        BUNDLED_ID,
        "encoder",
        "MiniLM-L6 · encoder · bundled",
        "MiniLM-L6 encoder, bundled (works offline)",
        "22 M",
        offline=True,
    ),
    Preset("bert-base-uncased", "masked_lm", "BERT base · masked LM", "BERT base, masked LM", "110 M"),
    Preset("gpt2", "causal_lm", "GPT-2 small · causal LM", "GPT-2 small, causal LM", "124 M"),
    Preset(
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        "causal_lm",
        "TinyLlama 1.1B Chat · causal LM",
        "TinyLlama 1.1 B chat, causal LM (bfloat16 fits in ~2.5 GB)",
        "1.1 B",
    ),
)

PRESET_IDS: tuple[str, ...] = tuple(p.id for p in PRESETS)


def preset(model_id: str) -> Preset | None:
    """The preset of that id, or None."""
    for p in PRESETS:
        if p.id == model_id:
            return p
    return None
