"""Typed, self-checking settings of every kind of run: every rule about a setting lives here, once, in its field.

`setting(default, help, min=, max=, cli=, label=, choices=)` declares a field with its rules in the field's metadata
(keys "help", "min", "max", "cli", "label", "choices"); `Settings` is the base of every run's settings class
(`AnalysisSettings` below, `CorpusSettings` in core.studies.corpus, `PatchingSettings` in core.studies.patching) and
builds everything else from those fields:

* validation in `__post_init__` (type, bounds, choices; rules between fields in `check()`), one message style;
* `to_dict()` (what enters the cache key and the manifest), `from_dict()`, `replace(**changes)`, `help(name)`,
  `bounds(name)`, `default(name)`;
* the CLI: `add_cli_arguments(parser)` makes one option per field (a bool that defaults to False is a switch
  `--name`, one that defaults to True is `--no-name` whose help says "do not …"; other fields take a value, with
  their default and bounds in the help), `from_cli(args)` builds the settings back;
* the app's widgets are generated from `dataclasses.fields(cls)` and the same metadata (app/sidebar.py).

A new setting is therefore one field. Everything that changes a computed number is a field, so the object can be
hashed into the cache key and written into the manifest as is. Loading options (dtype, device) belong to the loaded
model and enter the cache key from there; render-only options (animations, figure choices) are not settings (see
core.infra.options).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from core.infra import guards
from core.infra.errors import InputError
from core.infra.serialize import serializable

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")

#: Default bound on the characters of one text (a public server should not tokenise megabytes per click);
#: `TMA_MAX_TEXT_CHARS` overrides it (read by core.infra.guards, the one place for deployment bounds).
DEFAULT_MAX_TEXT_CHARS = guards.DEFAULT_MAX_TEXT_CHARS
max_text_chars = guards.max_text_chars

#: The metadata keys a settings field may carry (read by validation, the CLI and the app's widgets).
METADATA_KEYS = ("help", "min", "max", "cli", "label", "choices")

S = TypeVar("S", bound="Settings")


def setting(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    cli: str | None = None,
    label: str | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A settings field and its rules: `help` (one phrase that says what the setting does when on / set; CLI help
    and widget tooltip), `min` / `max` (inclusive bounds of a number), `cli` (the CLI flag when not `--name` /
    `--no-name`), `label` (the widget's label), `choices` (the allowed values). Unset keys are left out."""
    meta: dict[str, Any] = {"help": help}
    for key, value in (("min", min), ("max", max), ("cli", cli), ("label", label)):
        if value is not None:
            meta[key] = value
    if choices is not None:
        meta["choices"] = tuple(choices)
    return field(default=default, metadata=meta)


def field_kind(f: dataclasses.Field[Any]) -> type:
    """bool, int, float, str or tuple (of non-empty strings: a repeatable CLI option): the field's type without None
    (annotations are strings under `from __future__`)."""
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    t = t.replace(" ", "").replace("|None", "").replace("None|", "")
    if t.startswith("Optional[") and t.endswith("]"):
        t = t[len("Optional[") : -1]
    kinds: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str, "tuple[str,...]": tuple}
    if t not in kinds:
        raise TypeError(
            f"setting {f.name} has type {f.type!r}; settings are bool, int, float, str or tuple[str, ...] (or None)"
        )
    return kinds[t]


def check_value(f: dataclasses.Field[Any], v: Any) -> None:
    """Raise InputError (one line naming the setting) unless `v` suits field `f`: its type, bounds and choices; None
    only where the default is None."""
    kind, meta = field_kind(f), f.metadata
    optional = f.default is None
    if v is None:
        if not optional:
            raise InputError(f"{f.name} must be set")
        return
    if kind is tuple:
        if not isinstance(v, tuple) or not all(isinstance(x, str) and x.strip() for x in v):
            raise InputError(f"{f.name} must be a list of non-empty words or paths, got {v!r}")
        return
    choices = meta.get("choices")
    if choices is not None and v not in choices:
        raise InputError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {v!r}")
    if kind is bool:
        if not isinstance(v, bool):
            raise InputError(f"{f.name} must be true or false, got {v!r}")
        return
    if kind is str:
        if not isinstance(v, str) or not v.strip():
            raise InputError(f"{f.name} must be {'empty or ' if optional else ''}a non-empty word, got {v!r}")
        return
    lo, hi = meta.get("min"), meta.get("max")
    ok_type = isinstance(v, int) if kind is int else isinstance(v, (int, float)) and math.isfinite(v)
    if not ok_type or isinstance(v, bool) or (lo is not None and v < lo) or (hi is not None and v > hi):
        what = "an integer" if kind is int else "a number"
        if lo is not None and hi is not None:
            rule = f"{what} between {str(lo)} and {str(hi)}"
        elif lo is not None:
            rule = f"{what} ≥ {str(lo)}"
        elif hi is not None:
            rule = f"{what} ≤ {str(hi)}"
        else:
            rule = what
        raise InputError(f"{f.name} must be {'empty or ' if optional else ''}{rule}, got {v!r}")


def cli_flag(f: dataclasses.Field[Any]) -> str:
    """The CLI flag of a field: its "cli" metadata, else `--name`, or `--no-name` for a bool that defaults to True."""
    if f.metadata.get("cli"):
        return str(f.metadata["cli"])
    off = field_kind(f) is bool and f.default is True
    return ("--no-" if off else "--") + f.name.replace("_", "-")


def cli_help(f: dataclasses.Field[Any]) -> str:
    """The CLI help of a field's option, which says what the flag does: a switch that turns an on-by-default setting
    off says "do not <help>"; an option that takes a value gives its default and bounds. ('%' escaped for argparse.)"""
    text = str(f.metadata["help"])
    if field_kind(f) is bool:
        text = f"do not {text}" if f.default is True else text
    else:
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        notes = [] if f.default is None else [f"default {f.default}"]
        if lo is not None and hi is not None:
            notes.append(f"{str(lo)} to {str(hi)}")
        elif lo is not None:
            notes.append(f"at least {str(lo)}")
        elif hi is not None:
            notes.append(f"at most {str(hi)}")
        if notes:  # merged into a closing parenthesis of the help: "(default: by silhouette; 1 to 64)"
            text = f"{text[:-1]}; {'; '.join(notes)})" if text.endswith(")") else f"{text} ({'; '.join(notes)})"
    return text.replace("%", "%%")


class Settings:
    """The base of every run's settings: subclass it as `@serializable @dataclass(frozen=True) class X(Settings)`
    with fields made by `setting(...)`; rules between fields go into `check()`. Frozen, hashable, printable."""

    #: Title of the CLI's option group.
    cli_title: ClassVar[str] = "settings"

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            check_value(f, getattr(self, f.name))
        self.check()

    def check(self) -> None:
        """Rules between fields (a subclass overrides it); raise InputError with one line."""

    # -- the fields and their metadata

    @classmethod
    def setting_fields(cls) -> tuple[dataclasses.Field[Any], ...]:
        return fields(cls)  # type: ignore[arg-type]

    @classmethod
    def field(cls, name: str) -> dataclasses.Field[Any]:
        for f in cls.setting_fields():
            if f.name == name:
                return f
        raise KeyError(name)

    @classmethod
    def help(cls, name: str) -> str:
        return str(cls.field(name).metadata["help"])

    @classmethod
    def bounds(cls, name: str) -> tuple[Any, Any]:
        f = cls.field(name)
        return f.metadata.get("min"), f.metadata.get("max")

    @classmethod
    def default(cls, name: str) -> Any:
        return cls.field(name).default

    # -- plain data

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any] | None = None, **overrides: Any) -> S:
        """Settings from plain data; an unknown name raises InputError listing the known ones."""
        merged = {**(data or {}), **overrides}
        known = {f.name for f in cls.setting_fields()}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise InputError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for f in cls.setting_fields():  # JSON (a manifest, a run record) has lists where the settings have tuples
            if field_kind(f) is tuple and isinstance(merged.get(f.name), list):
                merged[f.name] = tuple(merged[f.name])
        return cls(**merged)

    def replace(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    # -- the CLI

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser, title: str | None = None) -> None:
        """One option per field in an option group (see the module docstring); its dest is the field's name."""
        g = parser.add_argument_group(title or cls.cli_title)
        for f in cls.setting_fields():
            kind = field_kind(f)
            if kind is bool:
                action = "store_false" if f.default is True else "store_true"
                g.add_argument(cli_flag(f), dest=f.name, action=action, default=f.default, help=cli_help(f))
            elif kind is tuple:  # repeatable: --sae A --sae B
                g.add_argument(cli_flag(f), dest=f.name, action="append", default=None, help=cli_help(f))
            else:
                g.add_argument(
                    cli_flag(f),
                    dest=f.name,
                    type=kind,
                    default=f.default,
                    choices=f.metadata.get("choices"),
                    help=cli_help(f),
                )

    @classmethod
    def from_cli(cls: type[S], args: argparse.Namespace) -> S:
        """The settings from the options made by `add_cli_arguments` (validated: a bad value raises InputError)."""
        values = {f.name: getattr(args, f.name) for f in cls.setting_fields()}
        for f in cls.setting_fields():
            if field_kind(f) is tuple:
                values[f.name] = tuple(values[f.name] or ())
        return cls(**values)


@serializable
@dataclass(frozen=True)
class AnalysisSettings(Settings):
    """Settings of one analysis. Each field's help text is in its metadata (`AnalysisSettings.help(name)`)."""

    cli_title: ClassVar[str] = "analysis settings"

    max_tokens: int = setting(
        128,
        "truncate the text to this many tokens (special tokens included); a warning says so",
        min=2,
        max=4096,
        label="Max tokens",
    )
    exclude_special_tokens: bool = setting(
        False,
        "leave special tokens ([CLS], [SEP], BOS…) out of the layer metrics",
        label="Exclude special tokens from layer metrics",
    )
    top_k: int = setting(
        10,
        "candidates listed per prediction and logit-lens layer",
        min=1,
        max=100,
        label="Candidates per prediction (top k)",
    )
    target_position: int | None = setting(
        None,
        "token position whose prediction is attributed (default: first mask for masked LMs, last token for "
        "causal LMs, 0 for encoders)",
        min=0,
        label="Target position (empty: the default)",
    )
    mask_word: str | None = setting(
        None, "masked LMs: replace the first occurrence of this word by the mask token", label="Mask a word"
    )
    compute_gradients: bool = setting(
        True,
        "run gradient × input and the per-head attribution (one forward + backward pass)",
        cli="--no-gradients",
        label="Compute gradients (attribution)",
    )
    integrated_gradients: bool = setting(
        False,
        "also run integrated gradients (needs compute_gradients; costs ig_steps forward + backward passes)",
        label="Integrated gradients (slow)",
    )
    ig_steps: int = setting(
        32,
        "first number of integrated-gradients steps; doubled until the completeness gap is "
        "at most 1 percent (or 512 steps)",
        min=1,
        max=512,
        label="Integrated-gradients steps",
    )
    n_clusters: int | None = setting(
        None,
        "number of head clusters (default: chosen by silhouette)",
        min=1,
        max=64,
        label="Head clusters (empty: chosen by silhouette)",
    )
    lens_position: int | None = setting(
        None,
        "position decoded by the logit lens (default: the target position)",
        min=0,
        label="Logit-lens position (empty: the target)",
    )
    lens_full_grid: bool = setting(
        False,
        "decode the logit-lens grid at every position even on a CPU (long texts "
        "otherwise get a window of positions around the lens position)",
        label="Full logit-lens grid (slow on a CPU)",
    )
    head_ablation: bool = setting(
        False,
        "exact head ablation: replace each head's output by its mean over positions "
        "(and by zero) and report the change of log p of the prediction (about "
        "L batched forward passes of batch 2·H)",
        label="Head ablation (exact, slow; Causal page)",
    )
    neuron_factors: int = setting(
        6,
        "NMF factors of the MLP neuron activations (0: no neuron factors)",
        min=0,
        max=32,
        label="Neuron factors (NMF k, 0 = off)",
    )
    neuron_first_layer: int | None = setting(
        None,
        "first block (1…L) whose MLP neurons enter the factors (default: 1)",
        min=1,
        label="First neuron layer (empty: the first)",
    )
    neuron_last_layer: int | None = setting(
        None,
        "last block (1…L) whose MLP neurons enter the factors (default: the last, L)",
        min=1,
        label="Last neuron layer (empty: the last)",
    )
    sae_dirs: tuple[str, ...] = setting(
        (),
        "sparse-autoencoder folders in SAELens's format (cfg.json + sae_weights.safetensors), one per hook; their "
        "features are read from the same forward pass (repeat --sae for several)",
        cli="--sae",
        label="SAE folders",
    )

    def check(self) -> None:
        if self.integrated_gradients and not self.compute_gradients:
            raise InputError(
                "integrated gradients need gradients: switch compute_gradients on or integrated gradients off"
            )
        if len(self.sae_dirs) > guards.max_saes():
            raise InputError(
                f"at most {guards.max_saes()} SAE folders per analysis (TMA_MAX_SAES), got {len(self.sae_dirs)}"
            )
        if len(set(self.sae_dirs)) != len(self.sae_dirs):
            raise InputError("the same SAE folder is given twice")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; `sae_dirs` only when set, so the cache key and manifest of a run without SAEs are
        those of the settings before the field existed (results cached then are still found)."""
        d = super().to_dict()
        if not d["sae_dirs"]:
            del d["sae_dirs"]
        else:
            d["sae_dirs"] = list(d["sae_dirs"])
        return d

    @staticmethod
    def check_text(text: object) -> str:
        """The rules on a text to analyse: a non-empty string of at most max_text_chars() characters, with at least
        one visible character (not only zero-width or control characters)."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("the text is empty: type a sentence to analyse")
        guards.check_text_length(text)  # TMA_MAX_TEXT_CHARS: refused with its length, never cut
        guards.check_visible(text)
        return text


def setting_fields() -> tuple[dataclasses.Field[Any], ...]:
    """The fields of AnalysisSettings (kept for callers of the time before `Settings.setting_fields()`)."""
    return AnalysisSettings.setting_fields()
