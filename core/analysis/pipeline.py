"""`analyze()`: the one path from (model, text, settings) to an AnalysisResult.

Order: resolve settings → cache lookup → capture (one forward pass) → layer metrics → the analysis steps, plain
functions called in order, each returning one typed section of the result (predictions, logit lens, attention
analysis, attribution, the sparse-autoencoder features of the SAE folders in the settings, read from activations
the same forward pass recorded). Every model use happens under the model's lock, so one loaded model can serve many
sessions at once.

The deeper views (VIEWS: direct logit attribution, information-flow routes, head ablation, neuron factors,
query–key vectors) cost several forward passes' worth each, so they are computed on request: `analyze(...,
views="all")` computes them with the rest, `add_views(loaded, result, names)` adds them to a finished result later
(the app does this in the background right after the analysis, the export and the CLI before a bundle). They share
one more forward pass: the decomposition pass of DLA and flow (core.steps.dla.decomposition_pass) also records the
neuron activations and, in add_views, the hidden states and logits the views' context needs (PASS_VIEWS).
`result.views` lists the views a result holds; a view's section may still be None when it does not apply.

To add a step: write `run_xxx(ctx: StepContext) -> XxxSection | None` next to its computation, give AnalysisResult a
field `xxx: XxxSection | None = None`, and add one `timed(...)` line below (or one VIEWS entry for a deeper view).
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np

from core.analysis.result import AnalysisResult, register_map_source
from core.infra.devices import cpu_dtype_warning
from core.infra.errors import InputError
from core.infra.threads import single_threaded
from core.infra.version import CORE_VERSION
from core.model.arch import try_model_parts
from core.model.capture import (
    PositionLogits,
    apply_mask_word,
    assemble,
    attention_dtype,
    capture,
    kept_positions,
    layer_attentions,
    prepare,
)
from core.model.info import ModelInfo
from core.model.loading import LoadedModel, load_model
from core.model.provenance import package_versions
from core.model.sae import fingerprints
from core.model.tokens import tokenize
from core.run.cache import ResultCache, run_key
from core.run.progress import ProgressFn, scaled, silent
from core.run.settings import AnalysisSettings
from core.steps.ablation import run_head_ablation
from core.steps.attention import AttentionFolder, causal_flag, run_attention
from core.steps.attribution import RolloutFolder, run_attribution
from core.steps.context import StepContext
from core.steps.dla import Decomposition, decomposition_pass, run_dla
from core.steps.flow import run_flow
from core.steps.logit_lens import lens_columns, run_logit_lens
from core.steps.metrics import METRIC_NAMES, layer_metrics
from core.steps.neurons import layer_range, run_neuron_factors
from core.steps.predictions import run_predictions
from core.steps.qk import run_query_key
from core.steps.sae import run_sae, site_names

log = logging.getLogger(__name__)


def cache_key(model_info: ModelInfo, text: str, settings: AnalysisSettings) -> str:
    """The cache key of one analysis: core.run.cache.run_key over the model, the text and the settings, plus the layer
    metrics' names (a new layer metric changes every key by itself). The same payload as before the layer packages,
    so results cached then are still found."""
    if settings.sae_dirs:  # the SAEs' contents (sha256), not only their folders' names, decide the numbers
        sae = fingerprints(settings.sae_dirs)
        return run_key(model_info.key_fields(), settings, text=text, metrics=list(METRIC_NAMES), sae=sae)
    return run_key(model_info.key_fields(), settings, text=text, metrics=list(METRIC_NAMES))


T_ = TypeVar("T_")

#: The deeper views, in the order they run: result field -> (progress label, step). A failing view becomes a warning
#: and an empty section (weights offloaded to disk, out of memory, an unusual layout), never a failed analysis.
VIEWS: dict[str, tuple[str, Callable[[StepContext], Any]]] = {
    "dla": ("Direct logit attribution", run_dla),
    "flow": ("Information-flow routes", run_flow),
    "head_ablation": ("Head ablation", run_head_ablation),
    "neuron_factors": ("Neuron factors", run_neuron_factors),
    "query_key": ("Query–key vectors", run_query_key),
}


def view_names(views: Iterable[str] | str | None) -> list[str]:
    """ "all" → every view; None or () → none; otherwise the named views in VIEWS order (an unknown name raises
    InputError listing the known ones)."""
    if views is None:
        return []
    wanted = set(VIEWS) if views == "all" else ({views} if isinstance(views, str) else set(views))
    unknown = sorted(wanted - set(VIEWS))
    if unknown:
        raise InputError(f"unknown view(s) {', '.join(unknown)}: choose from {', '.join(VIEWS)} or 'all'")
    return [v for v in VIEWS if v in wanted]


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
    views: Iterable[str] | str | None = (),
    **overrides: Any,
) -> AnalysisResult:
    """Analyse `text` with `model` (a LoadedModel, or an id / folder that is loaded first with `dtype`, `device`
    and `device_map`, see core.model.loading.load_model).

    Settings come from `settings` and/or keyword overrides (see AnalysisSettings). `views`: the deeper views to
    compute as well ("all", or names from VIEWS; default none: see `add_views`). With `cache`, a result for the
    same model revision, dtype, device, text, settings and core version is returned without running the model
    (its missing views, if any were asked for, are added). `progress(label, fraction)` is called as the stages
    advance.
    """
    t_start = time.perf_counter()
    report = progress or silent
    st = _as_settings(settings, overrides)
    wanted = view_names(views)
    AnalysisSettings.check_text(text)
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        report("Loading the model", 0.0)
        loaded = load_model(str(model), dtype=dtype, device=device, device_map=device_map)

    key = cache_key(loaded.info(), text, st)
    cache_warnings: list[str] = []
    if cache is not None:
        hit = cache.get(key, AnalysisResult)
        cache_warnings = cache.take_warnings()
        if hit is not None:
            if not hit.maps_held:
                attach_model(hit, loaded)
            if any(v not in hit.views for v in wanted):
                hit = add_views(loaded, hit, wanted, cache=cache, progress=report)
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

    sites = site_names(loaded, st)  # the SAEs' sites: a folder that cannot be used is refused before the model runs
    folders = _Folders(loaded.family)
    with loaded.lock:
        cap = timed(
            "Forward pass",
            0.1,
            lambda: capture(
                loaded,
                analysed,
                st,
                logit_positions(loaded, st),
                sites,
                attention_sink=folders.start,
                hold_bytes=HOLD_ATTENTIONS_BYTES,
            ),
            "forward",
        )
        keep = np.array([not s for s in cap.special_mask]) if st.exclude_special_tokens else None

        def metrics_step() -> dict[str, np.ndarray]:
            with single_threaded():  # small eigenproblems: BLAS threads only contend with torch's
                return layer_metrics(cap.hidden_states, keep)

        metrics = timed("Layer metrics", 0.3, metrics_step, "layer_metrics")
        ctx, reason = _context(loaded, st, cap)
        ctx.attention_folder = folders.attention
        ctx.rollout = folders.rollout.result()
        n_used = int(keep.sum()) if keep is not None else len(cap.tokens)
        if n_used < 2:
            ctx.warn(f"only {n_used} token(s) entered the layer metrics: the spectral metrics need at least 2")
        predictions = timed("Predictions", 0.4, lambda: run_predictions(ctx))
        lens = timed("Logit lens", 0.55, lambda: run_logit_lens(ctx))
        attention = timed("Attention analysis", 0.7, lambda: run_attention(ctx))
        attribution = timed("Attribution", 0.85, lambda: run_attribution(ctx))
        sae = timed("SAE features", 0.86, lambda: run_sae(ctx), "sae") if st.sae_dirs else None
        if _needs_pass(loaded, wanted):
            kept = cap.logits.positions if isinstance(cap.logits, PositionLogits) else None
            timed(
                "Forward pass for the deeper views",
                0.86,
                lambda: _attach_pass(ctx, _views_pass(loaded, st, cap.input_ids, cap.attention_mask, kept, wanted)),
                "views_forward",
            )
        sections = _run_views(ctx, wanted, timings, report, 0.86, 0.98)

    result = AnalysisResult(
        model=loaded.info(),
        text=text,
        analysed_text=analysed,
        settings=st,
        tokens=ctx.tokens,
        display_tokens=ctx.display_tokens,
        token_ids=ctx.token_ids,
        special_mask=ctx.special_mask,
        target_position=ctx.target_position,
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
        sae=sae,
        **sections,
        views=list(wanted),
        warnings=ctx.warnings,
        timings=timings,
        versions=package_versions(),
        core_version=CORE_VERSION,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        cache_key=key,
    )
    result.duration_s = time.perf_counter() - t_start
    if not result.maps_held:
        register_map_source(key, _map_source(loaded, cap.input_ids, cap.attention_mask))
    report("Done", 1.0)
    if cache is not None:  # a fault of the cache (corrupt, read-only, full disk) is a warning, never a failure
        cache.set(key, result)
        for w in (cache_warnings + cache.take_warnings())[:1]:  # one cache warning per analysis (all are logged)
            result.warnings.append(w)
    log_analysis(result)
    return result


#: The capture keeps all L·H·T² attention values in the result only up to this many bytes (GPT-2 small holds them
#: up to ~660 tokens in float32); past it the attention features and rollout are folded in layer by layer as the
#: forward pass produces the maps, and a layer's maps are recomputed on demand (`attach_model`,
#: AnalysisResult.attention_maps). The README states it.
HOLD_ATTENTIONS_BYTES = 256 * 2**20


class _Folders:
    """The attention analysis's and the rollout's folders, fed one layer at a time by the capture pass."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.attention: AttentionFolder | None = None
        self.rollout = RolloutFolder()

    def start(self, token_ids: list[int], special_mask: list[bool]) -> Callable[[int, np.ndarray], None]:
        """The capture's attention sink: a fresh pair of folders for the tokenised text."""
        self.attention = AttentionFolder(len(token_ids), special_mask, causal_flag(self.family))
        self.rollout = RolloutFolder()
        return self.add

    def add(self, layer: int, maps: np.ndarray) -> None:
        assert self.attention is not None
        self.attention.add(layer, maps)
        self.rollout.add(layer, maps)


def _map_source(loaded: LoadedModel, input_ids: Any, attention_mask: Any) -> Callable[[int], np.ndarray]:
    """layer -> that layer's maps [H, T, T], recomputed by core.model.capture.layer_attentions under the model's
    lock (the model held weakly: a model that was unloaded raises a clear InputError)."""
    ref = weakref.ref(loaded)
    ids, mask = input_ids.detach().cpu(), attention_mask.detach().cpu()
    model_id = loaded.model_id

    def maps(layer: int) -> np.ndarray:
        lm = ref()
        if lm is None:
            raise InputError(f"the attention maps of this run are recomputed from its model: load {model_id} again")
        with lm.lock:
            return layer_attentions(lm, ids, mask, layer)

    return maps


def attach_model(result: AnalysisResult, loaded: LoadedModel) -> None:
    """Let `result` recompute a layer's attention maps with `loaded` (a result whose maps were not held, e.g. read
    from the cache in a new process). `loaded` must be the model the result was made with (InputError otherwise);
    the text is tokenised again and must give the same tokens."""
    if result.maps_held:
        return
    if cache_key(loaded.info(), result.text, result.settings) != result.cache_key:
        raise InputError(
            f"the attention maps need the model this result was made with ({result.model.model_id}, "
            f"{result.model.dtype} on {result.model.device}); the model given is {loaded.model_id}, "
            f"{loaded.dtype} on {loaded.device}"
        )
    enc = tokenize(loaded, result.analysed_text, result.settings.max_tokens)
    if enc.input_ids[0].tolist() != result.token_ids:
        raise RuntimeError("the text tokenised differently from the finished analysis: run it again")
    register_map_source(result.cache_key, _map_source(loaded, enc.input_ids, enc.attention_mask))


def _context(loaded: LoadedModel, st: AnalysisSettings, cap: Any) -> tuple[StepContext, str]:
    """The steps' context of one capture, and the reason for its target position."""
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
        warnings=[w for w in [cpu_dtype_warning(loaded.dtype, loaded.device)] if w] + list(cap.warnings),
    )
    return ctx, reason


#: The views that read the views' one pass (core.steps.dla.decomposition_pass): when one of them runs, that pass
#: also records the neuron activations and stands in for add_views's capture pass.
PASS_VIEWS = ("dla", "flow")


def _needs_pass(loaded: LoadedModel, names: list[str]) -> bool:
    """Whether the views `names` run the views' one pass (DLA or flow asked for, the architecture map knows the
    model; otherwise each view runs as it would alone, and an unknown architecture gets their warnings)."""
    return any(v in names for v in PASS_VIEWS) and try_model_parts(loaded.model)[0] is not None


def _views_pass(
    loaded: LoadedModel,
    st: AnalysisSettings,
    input_ids: Any,
    attention_mask: Any,
    kept: list[int] | None,
    names: list[str],
) -> Decomposition | None:
    """The views' one forward pass: the decomposition DLA and flow read, the hidden states and the logits at `kept`
    the views' context needs, and the neuron activations of the settings' layer range when the neuron factors are
    among `names` (same numbers as the separate passes it replaces; tests/test_views_pass.py). None when it fails
    (an unusual layout, weights offloaded to disk, out of memory): then each view runs as it would alone and turns
    its own failure into a warning."""
    layers: list[int] = []
    if "neuron_factors" in names and st.neuron_factors:
        try:
            layers = layer_range(loaded.n_layers, st.neuron_first_layer, st.neuron_last_layer)
        except ValueError:
            layers = []  # the step says why when it runs
    try:
        return decomposition_pass(loaded, input_ids, attention_mask, logit_positions=kept, mlp_layers=layers)
    except (RuntimeError, NotImplementedError, ValueError, MemoryError) as exc:
        log.warning("the deeper views' shared pass failed (%s): each view runs its own", exc)
        return None


def _attach_pass(ctx: StepContext, dec: Decomposition | None) -> None:
    """Hand the views' one pass to the steps (see StepContext.views_pass / mlp_activations)."""
    if dec is None:
        return
    ctx.views_pass = dec
    if dec.mlp_acts is not None:
        ctx.mlp_activations = (dec.mlp_layers, dec.mlp_acts)
        dec.mlp_acts = None


def _run_views(
    ctx: StepContext,
    names: list[str],
    timings: dict[str, float],
    report: ProgressFn,
    start: float,
    end: float,
    landed: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the named views in VIEWS order: {name: section or None}; a failure becomes a warning in `ctx`.
    `landed(sections so far)` is called after each view."""
    out: dict[str, Any] = {}
    stage = scaled(report, start, end)
    for i, name in enumerate(names):
        label, step = VIEWS[name]
        stage(label, i / max(len(names), 1))
        t = time.perf_counter()
        try:
            out[name] = step(ctx)
        except (RuntimeError, NotImplementedError, ValueError, MemoryError) as exc:
            log.warning("%s failed: %s", label, exc)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            ctx.warn(f"{label} could not be computed for this run: {first}")
            out[name] = None
        timings[name] = time.perf_counter() - t
        if not any(v in names[i + 1 :] for v in PASS_VIEWS):
            ctx.views_pass = None  # read by no later view: its maps and parts are freed before the neuron factors
        if name == "neuron_factors":
            ctx.mlp_activations = None
        if landed is not None:
            landed(dict(out))
    ctx.views_pass, ctx.mlp_activations = None, None
    return out


def add_views(
    loaded: LoadedModel,
    result: AnalysisResult,
    views: Iterable[str] | str = "all",
    *,
    cache: ResultCache | None = None,
    progress: ProgressFn | None = None,
    partial: Callable[[AnalysisResult], None] | None = None,
) -> AnalysisResult:
    """`result` with the deeper views it lacks added (see VIEWS): one more forward pass of the same text and
    settings (the views' one pass when DLA or flow is among them, else a capture pass), then the views; the same
    sections as `analyze(..., views=...)` would have given. The fuller result replaces the cached one under the same
    key (a fuller one already in `cache` is taken as it is). `loaded` must be the model the result was made with
    (same id, revision, dtype and device), else InputError.

    `partial(result so far)` is called as each view lands (its `views` lists the ones done), so that a page can
    show the finished views while the others are still computed (the app's background views job)."""
    report = progress or silent
    missing = [v for v in view_names(views) if v not in result.views]
    if not missing:
        return result
    if cache_key(loaded.info(), result.text, result.settings) != result.cache_key:
        raise InputError(
            f"the deeper views need the model this result was made with ({result.model.model_id}, "
            f"{result.model.dtype} on {result.model.device}); the model given is {loaded.model_id}, "
            f"{loaded.dtype} on {loaded.device}"
        )
    if cache is not None:
        cached = cache.get(result.cache_key, AnalysisResult)
        cache.take_warnings()
        if cached is not None and all(v in cached.views for v in missing):
            return cached.replace(cache_hit=result.cache_hit, duration_s=result.duration_s)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    st = result.settings
    with loaded.lock:
        report("Forward pass for the deeper views", 0.0)
        positions = logit_positions(loaded, st)
        dec: Decomposition | None = None
        if _needs_pass(loaded, missing):
            # one pass for every view: the decomposition DLA and flow read also gives the hidden states and the
            # logits the context needs (no capture pass) and the neuron activations (no hooked pass of their own)
            prep = prepare(loaded, result.analysed_text, st)
            kept = kept_positions(positions, prep)
            dec = _views_pass(loaded, st, prep.input_ids, prep.attention_mask, kept, missing)
        if dec is not None:
            assert dec.hidden_states is not None
            P = dec.parts
            no_maps = np.empty((P.n_layers, P.heads.n_heads, 0, 0), dtype=attention_dtype(loaded.dtype))
            cap = assemble(loaded, prep, dec.hidden_states, no_maps, dec.logits, dec.final_norm)
        else:
            # the views never read the captured maps; a long text runs the row-chunked attention as the analysis's
            # capture did (the same numbers, one block at a time)
            cap = capture(loaded, result.analysed_text, st, positions, hold_bytes=0, chunk_bytes=HOLD_ATTENTIONS_BYTES)
        timings["views_forward"] = time.perf_counter() - t0
        ctx, _ = _context(loaded, st, cap)
        if dec is not None:
            _attach_pass(ctx, dec)
        if ctx.token_ids != result.token_ids:
            raise RuntimeError("the text tokenised differently from the finished analysis: run it again")
        ctx.warnings = []

        def fuller(sections: dict[str, Any]) -> AnalysisResult:
            return result.replace(
                **sections,
                views=[v for v in VIEWS if v in result.views or v in sections],
                warnings=[*result.warnings, *(w for w in ctx.warnings if w not in result.warnings)],
                timings={**result.timings, **timings},
            )

        landed = (lambda sections: partial(fuller(sections))) if partial is not None else None
        sections = _run_views(ctx, missing, timings, report, 0.1, 0.95, landed)
    out = fuller(sections)
    report("Done", 1.0)
    if cache is not None and result.cache_key:
        cache.set(result.cache_key, out.replace(cache_hit=False))
        cache.take_warnings()
    log.info(
        "views %s added to the analysis of %s in %.2fs", ",".join(missing), loaded.model_id, time.perf_counter() - t0
    )
    return out


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
