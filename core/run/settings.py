"""Typed, self-checking analysis settings: every rule about them lives here, once.

Everything that changes a computed number is a field of `AnalysisSettings`, so the object can be hashed into the
cache key and written into the manifest as is. Each field carries its help text and bounds in its metadata: the
validation below, the CLI's options (core.cli.main) and the sidebar's widgets (app/sidebar.py) are all built from them,
so a new setting is one field here. Loading options (dtype, device) belong to the loaded model and enter the cache
key from there; render-only options (animations, figure choices) are not settings (see core.infra.options).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from core.infra import guards
from core.infra.errors import InputError
from core.infra.serialize import serializable

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")

#: Default bound on the characters of one text (a public server should not tokenise megabytes per click);
#: `TMA_MAX_TEXT_CHARS` overrides it (read by core.infra.guards, the one place for deployment bounds).
DEFAULT_MAX_TEXT_CHARS = guards.DEFAULT_MAX_TEXT_CHARS
max_text_chars = guards.max_text_chars


def _opt(default: Any, help: str, *, min: int | None = None, max: int | None = None, cli: str | None = None) -> Any:
    """A settings field with its help text and bounds (read by validation, the CLI and the sidebar)."""
    meta: dict[str, Any] = {"help": help}
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    if cli is not None:
        meta["cli"] = cli
    return field(default=default, metadata=meta)


@serializable
@dataclass(frozen=True)
class AnalysisSettings:
    """Settings of one analysis. Each field's help text is in its metadata (`AnalysisSettings.help(name)`)."""

    max_tokens: int = _opt(
        128, "truncate the text to this many tokens (special tokens included); a warning says so", min=2, max=4096
    )
    exclude_special_tokens: bool = _opt(False, "leave special tokens ([CLS], [SEP], BOS…) out of the layer metrics")
    top_k: int = _opt(10, "candidates listed per prediction and logit-lens layer", min=1, max=100)
    target_position: int | None = _opt(
        None,
        "token position whose prediction is attributed (default: first mask for masked LMs, last token for "
        "causal LMs, 0 for encoders)",
        min=0,
    )
    mask_word: str | None = _opt(None, "masked LMs: replace the first occurrence of this word by the mask token")
    compute_gradients: bool = _opt(
        True, "run gradient × input and the per-head attribution (one forward + backward pass)", cli="--no-gradients"
    )
    integrated_gradients: bool = _opt(
        False, "also run integrated gradients (needs compute_gradients; costs ig_steps forward + backward passes)"
    )
    ig_steps: int = _opt(
        32,
        "first number of integrated-gradients steps; doubled until the completeness gap is "
        "at most 1 percent (or 512 steps)",
        min=1,
        max=512,
    )
    n_clusters: int | None = _opt(None, "number of head clusters (default: chosen by silhouette)", min=1, max=64)
    lens_position: int | None = _opt(None, "position decoded by the logit lens (default: the target position)", min=0)
    lens_full_grid: bool = _opt(
        False,
        "decode the logit-lens grid at every position even on a CPU (long texts "
        "otherwise get a window of positions around the lens position)",
    )
    head_ablation: bool = _opt(
        False,
        "exact head ablation: replace each head's output by its mean over positions "
        "(and by zero) and report the change of log p of the prediction (about "
        "L batched forward passes of batch 2·H)",
    )
    neuron_factors: int = _opt(6, "NMF factors of the MLP neuron activations (0: no neuron factors)", min=0, max=32)
    neuron_first_layer: int | None = _opt(None, "first block whose MLP neurons enter the factors (default: 0)", min=0)
    neuron_last_layer: int | None = _opt(
        None, "last block whose MLP neurons enter the factors (default: the last)", min=0
    )
    sae_dirs: tuple[str, ...] = _opt(
        (),
        "sparse-autoencoder folders in SAELens's format (cfg.json + sae_weights.safetensors), one per hook; their "
        "features are read from the same forward pass (repeat --sae for several)",
        cli="--sae",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            self._check(f, getattr(self, f.name))
        if self.integrated_gradients and not self.compute_gradients:
            raise InputError(
                "integrated gradients need gradients: switch compute_gradients on or integrated gradients off"
            )

    @staticmethod
    def _check(f: dataclasses.Field[Any], v: Any) -> None:
        kind = _kind(f)
        if kind is tuple:
            if not isinstance(v, tuple) or not all(isinstance(x, str) and x.strip() for x in v):
                raise InputError(f"{f.name} must be a list of non-empty paths")
            if len(v) > guards.max_saes():
                raise InputError(f"at most {guards.max_saes()} SAE folders per analysis (TMA_MAX_SAES), got {len(v)}")
            if len(set(v)) != len(v):
                raise InputError("the same SAE folder is given twice")
            return
        if v is None:
            if f.default is not None:
                raise InputError(f"{f.name} must be set")
            return
        if kind is bool:
            if not isinstance(v, bool):
                raise InputError(f"{f.name} must be true or false")
            return
        if kind is str:
            if not isinstance(v, str) or not v.strip():
                raise InputError(f"{f.name} must be a non-empty word")
            return
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if not isinstance(v, int) or isinstance(v, bool) or (lo is not None and v < lo) or (hi is not None and v > hi):
            if hi is None:
                raise InputError(f"{f.name} must be empty or an integer ≥ {lo}, got {v!r}")
            raise InputError(f"{f.name} must be an integer between {lo} and {hi}, got {v!r}")

    @staticmethod
    def check_text(text: object) -> str:
        """The rules on a text to analyse: a non-empty string of at most max_text_chars() characters."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("the text is empty: type a sentence to analyse")
        guards.check_text_length(text)  # TMA_MAX_TEXT_CHARS: refused with its length, never cut
        return text

    @classmethod
    def help(cls, name: str) -> str:
        return str(_field(name).metadata["help"])

    @classmethod
    def bounds(cls, name: str) -> tuple[int | None, int | None]:
        f = _field(name)
        return f.metadata.get("min"), f.metadata.get("max")

    @classmethod
    def default(cls, name: str) -> Any:
        return _field(name).default

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; `sae_dirs` only when set, so the cache key and manifest of a run without SAEs are
        those of the settings before the field existed (results cached then are still found)."""
        d = dataclasses.asdict(self)
        if not d["sae_dirs"]:
            del d["sae_dirs"]
        else:
            d["sae_dirs"] = list(d["sae_dirs"])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None = None, **overrides: Any) -> AnalysisSettings:
        merged = {**(data or {}), **overrides}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise InputError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if isinstance(merged.get("sae_dirs"), list):  # JSON (a manifest, a run record) has lists, not tuples
            merged["sae_dirs"] = tuple(merged["sae_dirs"])
        return cls(**merged)

    def replace(self, **changes: Any) -> AnalysisSettings:
        return dataclasses.replace(self, **changes)


def _field(name: str) -> dataclasses.Field[Any]:
    for f in fields(AnalysisSettings):
        if f.name == name:
            return f
    raise KeyError(name)


def _kind(f: dataclasses.Field[Any]) -> type:
    """bool, int, str or tuple (of str): the field's type without None (annotations are strings under
    `from __future__`)."""
    t = str(f.type).replace(" ", "").replace("|None", "")
    return {"bool": bool, "int": int, "str": str, "tuple[str,...]": tuple}[t]


def setting_fields() -> tuple[dataclasses.Field[Any], ...]:
    """The fields of AnalysisSettings with their kind (see `field_kind`), for the CLI and the sidebar."""
    return fields(AnalysisSettings)


def field_kind(f: dataclasses.Field[Any]) -> type:
    """bool, int, str or tuple (a repeatable option of strings)."""
    return _kind(f)
