"""Sparse-autoencoder features of one text: the analysis step, its section, and single-feature interventions.

For every SAE folder in `AnalysisSettings.sae_dirs` (read by core.model.sae: SAELens's format) the capture pass
records the activation x_t of the SAE's site (core.model.sites) at every position t, in the same forward pass as
everything else. From it:

* feature activations f_t = encode(x_t) (the SAE's own encoder: standard, JumpReLU or TopK), kept sparse: every
  active feature (f > 0) of each position, at most `KEEP_PER_TOKEN` (the strongest) — L0 counts them all;
* L0_t = #{i : f_t,i > 0};
* the reconstruction x̂_t = decode(f_t), its fraction of variance unexplained
      FVU_t = ‖x_t − x̂_t‖² / ( (1/n) Σ_{s∈S} ‖x_s − x̄‖² ),   x̄ = (1/n) Σ_{s∈S} x_s,   FVU = (1/n) Σ_{t∈S} FVU_t
  over the text's ordinary tokens S (n of them): special tokens (BOS, CLS, SEP, …) are left out of x̄ and of the
  overall FVU, as SAELens's evaluations leave them out — a decoder's BOS state has a norm tens of times the others'
  and SAEs are trained without it, so it would decide the whole text's FVU — and get their FVU_t against the same
  denominator; S is every token when fewer than 2 are ordinary. The overall FVU is the share of the text's
  activation variance the SAE misses (NaN for a one-token text); and the cosine cos(x_t, x̂_t);
* each strong feature's direct logit effect: its decoder row d_f (for attn.hook_z carried through W_O first) read
  through the final norm with its statistics frozen at the position where the feature is strongest (as the DLA
  view does, core.steps.dla) and the unembedding, per unit of activation: the tokens it promotes and suppresses
  most. Only pre-LN models with a language-model head (the decoder direction enters the residual stream directly);
  Gemma-2's attention / MLP update norms sit between those two sites and the stream, so they get no effects.

`intervene(...)` runs the model once with one feature's contribution a_f · d_f removed or rescaled at the SAE's
site (or the SAE's error term x − x̂ removed): the causal counterpart of the view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.infra.errors import InputError
from core.infra.serialize import serializable
from core.model.arch import apply_frozen, frozen_norm, model_parts, try_model_parts, weight
from core.model.hooks import hooked
from core.model.sae import SAE, load_sae
from core.model.sites import replacer, site
from core.model.tokens import token_text
from core.steps.context import StepContext

if TYPE_CHECKING:
    import torch

    from core.model.loading import LoadedModel
    from core.run.settings import AnalysisSettings

#: Active features kept per position (the strongest); L0 counts every active feature.
KEEP_PER_TOKEN = 64
#: Promoted / suppressed tokens kept per feature.
LOGIT_K = 10
#: Multiply-adds spent on the features' logit effects (D · V each): the strongest features while they fit (GPT-2
#: small: about 100), and always the MIN_LOGIT_FEATURES strongest of the target position.
LOGIT_MAX_MACS = 4e9
MIN_LOGIT_FEATURES = 8

SAE_VIEWS = "SAE features"


@serializable
@dataclass(frozen=True)
class SAEFeatures:
    """The features of one SAE on one text. T positions; N kept (position, feature) pairs; F features with logit
    effects.

    positions / features int32 [N], activations float32 [N]: the kept activations, by position then strongest
    first. l0 int32 [T]; fvu float64 [T] (see the module docstring; its mean over the ordinary tokens = fvu_total);
    cosine float64 [T].
    logit_features int32 [F] and logit_positions int32 [F] (where each feature's final norm was frozen);
    promote_ids / suppress_ids int64 [F, k] and promote_effects / suppress_effects float64 [F, k]: logit change
    per unit of activation. logit_note says how the effects were read, or why there are none.
    """

    name: str
    hook_name: str
    architecture: str
    d_in: int
    d_sae: int
    fingerprint: str
    model_name: str | None
    positions: np.ndarray
    features: np.ndarray
    activations: np.ndarray
    l0: np.ndarray
    fvu: np.ndarray
    fvu_total: float
    cosine: np.ndarray
    logit_features: np.ndarray
    logit_positions: np.ndarray
    promote_ids: np.ndarray
    promote_effects: np.ndarray
    suppress_ids: np.ndarray
    suppress_effects: np.ndarray
    logit_note: str
    token_texts: dict[str, str] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(self.l0.shape[0])

    def token_features(self, position: int, n: int | None = None) -> list[tuple[int, float]]:
        """(feature, activation) at `position`, strongest first (at most n)."""
        sel = np.flatnonzero(self.positions == position)
        order = sel[np.argsort(-self.activations[sel], kind="stable")]
        return [(int(self.features[i]), float(self.activations[i])) for i in order[:n]]

    def feature_profile(self, feature: int) -> np.ndarray:
        """float32 [T]: the feature's activation at each position (0 where it was not active or not kept)."""
        out = np.zeros(self.n_tokens, dtype=np.float32)
        sel = self.features == feature
        out[self.positions[sel]] = self.activations[sel]
        return out

    def strongest(self, n: int) -> list[int]:
        """The n features with the largest activation anywhere in the text, strongest first."""
        if self.features.size == 0:
            return []
        feats, inv = np.unique(self.features, return_inverse=True)
        peak = np.zeros(feats.size, dtype=np.float64)
        np.maximum.at(peak, inv, self.activations.astype(np.float64))
        order = np.lexsort((feats, -peak))
        return [int(feats[i]) for i in order[:n]]

    def heatmap(self, feats: list[int]) -> np.ndarray:
        """float32 [len(feats), T]: the features' activations over the positions."""
        return np.stack([self.feature_profile(f) for f in feats]) if feats else np.zeros((0, self.n_tokens))

    def logit_row(self, feature: int) -> int | None:
        """The row of `feature` in the logit-effect arrays, or None when its effects were not computed."""
        hit = np.flatnonzero(self.logit_features == feature)
        return int(hit[0]) if hit.size else None

    def text_of(self, token_id: int) -> str:
        return self.token_texts.get(str(int(token_id)), f"<id {int(token_id)}>")

    # -- bundle rows (core.figures.sae writes the CSVs) -------------------------------------------------------------
    def feature_rows(self, tokens: list[str]) -> list[list[object]]:
        """sae_features.csv rows: hook, position, token, feature, activation."""
        return [
            [self.hook_name, int(p), tokens[int(p)], int(f), float(a)]
            for p, f, a in zip(self.positions, self.features, self.activations)
        ]

    def summary_rows(self, tokens: list[str]) -> list[list[object]]:
        """sae_summary.csv rows: hook, position, token, l0, fvu, cosine."""
        return [
            [self.hook_name, t, tokens[t], int(self.l0[t]), float(self.fvu[t]), float(self.cosine[t])]
            for t in range(self.n_tokens)
        ]

    def logit_rows(self) -> list[list[object]]:
        """sae_feature_logits.csv rows: hook, feature, rank, token, effect (rank 1 … k promoted, −1 … −k
        suppressed)."""
        rows: list[list[object]] = []
        for i, f in enumerate(self.logit_features):
            for r in range(self.promote_ids.shape[1]):
                rows.append([self.hook_name, int(f), r + 1, self.text_of(self.promote_ids[i, r]),
                             float(self.promote_effects[i, r])])  # fmt: skip
            for r in range(self.suppress_ids.shape[1]):
                rows.append([self.hook_name, int(f), -(r + 1), self.text_of(self.suppress_ids[i, r]),
                             float(self.suppress_effects[i, r])])  # fmt: skip
        return rows


@serializable
@dataclass(frozen=True)
class SAESection:
    """The features of every SAE of the run, in the order of `AnalysisSettings.sae_dirs`."""

    saes: list[SAEFeatures]

    def by_hook(self, hook_name: str) -> SAEFeatures:
        for s in self.saes:
            if s.hook_name == hook_name:
                return s
        raise KeyError(hook_name)


# ----------------------------------------------------------------------------------------------------------------
# Loading and checking (before the capture pass)


def prepare(loaded: LoadedModel, settings: AnalysisSettings) -> tuple[list[SAE], list[str]]:
    """The SAEs of `settings.sae_dirs`, checked against the model, and their warnings; one-line InputError for a
    folder that cannot be used (read, architecture, width, hook), two SAEs on one hook, or a model the architecture
    map does not know. Runs before the forward pass, so a bad folder costs no model time."""
    if not settings.sae_dirs:
        return [], []
    parts, why = try_model_parts(loaded.model, SAE_VIEWS, "are")
    if parts is None:
        raise InputError(str(why))
    saes = [load_sae(d) for d in settings.sae_dirs]
    warnings: list[str] = []
    seen: dict[str, str] = {}
    for s in saes:
        if s.hook_name in seen:
            raise InputError(f"SAEs '{seen[s.hook_name]}' and '{s.name}' both read {s.hook_name}: one SAE per hook")
        seen[s.hook_name] = s.name
        warnings += s.check_model(parts, loaded.model_id)
    return saes, warnings


def site_names(loaded: LoadedModel, settings: AnalysisSettings) -> list[str]:
    """The sites the capture pass must record for the run's SAEs (loaded through the cache of core.model.sae)."""
    return [s.hook_name for s in prepare(loaded, settings)[0]]


# ----------------------------------------------------------------------------------------------------------------
# The computation


def sae_statistics(sae: SAE, x: torch.Tensor, special: list[bool] | np.ndarray | None = None) -> dict[str, Any]:
    """Features and reconstruction statistics of site activations x [T, d_in] (float32, CPU): the dense feature
    activations f [T, d_sae], reconstruction x̂, l0 [T], fvu [T], fvu_total, cosine [T] (see the module docstring).
    `special` [T] marks the special tokens left out of x̄ and of fvu_total (None: none)."""
    import torch

    with torch.inference_mode():
        f, xh = sae.encode_decode(x.float())
        x64, xh64 = x.double(), xh.double()
        counted = np.ones(x.shape[0], dtype=bool) if special is None else ~np.asarray(special, dtype=bool)
        if counted.sum() < 2:
            counted[:] = True
        rows = torch.from_numpy(np.flatnonzero(counted))
        err = (x64 - xh64).pow(2).sum(-1)
        var = (x64[rows] - x64[rows].mean(0, keepdim=True)).pow(2).sum(-1)
        mean_var = float(var.mean())
        fvu = (err / mean_var).numpy() if mean_var > 0 else np.full(x.shape[0], np.nan)
        fvu_total = float(err[rows].sum() / var.sum()) if mean_var > 0 else float("nan")
        nx, nh = x64.norm(dim=-1), xh64.norm(dim=-1)
        denom = nx * nh
        cos = torch.where(denom > 0, (x64 * xh64).sum(-1) / torch.where(denom > 0, denom, 1.0), torch.nan)
        return {
            "f": f,
            "x_hat": xh,
            "l0": (f > 0).sum(-1).numpy().astype(np.int32),
            "fvu": np.asarray(fvu, dtype=np.float64),
            "fvu_total": fvu_total,
            "cosine": cos.numpy().astype(np.float64),
        }


def _sparse(f: torch.Tensor, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, features, activations) of the active entries of f [T, d_sae]: per position the `keep` strongest,
    strongest first."""
    import torch

    k = min(keep, f.shape[1])
    vals, idx = torch.topk(f, k, dim=-1)
    pos = torch.arange(f.shape[0]).unsqueeze(1).expand(-1, k)
    on = vals > 0
    return (
        pos[on].numpy().astype(np.int32),
        idx[on].numpy().astype(np.int32),
        vals[on].numpy().astype(np.float32),
    )


def _direction_map(loaded: LoadedModel, sae: SAE) -> tuple[Any, str]:
    """(fn mapping decoder rows [F, d_in] to residual-stream directions [F, D], or None; the note)."""
    parts = model_parts(loaded.model)
    if parts.unembed is None:
        return None, "no logit effects: the model has no language-model head"
    if parts.residual != "pre_ln" or parts.head_dense is not None:
        return None, (
            "no logit effects: in a post-LN model every later LayerNorm rescales the direction, so it has no "
            "direct path to the logits"
        )
    s = site(parts, sae.hook_name)
    b = parts.blocks[s.layer]
    if s.hook in ("hook_attn_out", "attn.hook_z") and b.attn_update_norm is not None:
        return None, "no logit effects: the attention update norm (Gemma-2) sits between this site and the stream"
    if s.hook == "hook_mlp_out" and b.mlp_update_norm is not None:
        return None, "no logit effects: the MLP update norm (Gemma-2) sits between this site and the stream"
    if s.hook == "attn.hook_z":
        W_O = parts.head_out_weights(b).detach().float().cpu()  # [H, d_h, D]
        W_O = W_O.reshape(-1, W_O.shape[-1])
        return (lambda d: d @ W_O), "decoder row carried through W_O, the final norm frozen at the feature's peak"
    return (lambda d: d), "decoder row through the final norm (frozen at the feature's peak) and the unembedding"


def logit_effects(
    loaded: LoadedModel, sae: SAE, feats: list[int], peak_pos: list[int], final_in: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Promoted / suppressed tokens of each feature per unit activation: (promote_ids [F, k], promote_effects,
    suppress_ids, suppress_effects, note). final_in [T, D]: the final norm's input (its statistics are frozen at
    each feature's peak position)."""
    import torch

    empty_i, empty_f = np.zeros((0, LOGIT_K), np.int64), np.zeros((0, LOGIT_K), np.float64)
    to_stream, note = _direction_map(loaded, sae)
    if to_stream is None or not feats:
        return empty_i, empty_f, empty_i, empty_f, note
    parts = model_parts(loaded.model)
    with torch.inference_mode():
        d = to_stream(sae.W_dec[feats])  # [F, D]
        if parts.final_norm is not None:
            scale, _shift, centre = frozen_norm(parts.final_norm, final_in[peak_pos].float())
            d = apply_frozen(d, scale.cpu(), centre)
        if parts.unembed_in is not None:  # OPT-350m's project_out (a linear map without bias)
            d = d @ weight(parts.unembed_in).detach().float().cpu().t()
        assert parts.unembed is not None  # _direction_map returned None otherwise
        W_U = weight(parts.unembed).detach().float().cpu()  # [V, D]
        z = d @ W_U.t()
        k = min(LOGIT_K, z.shape[-1])
        up_v, up_i = torch.topk(z, k, dim=-1)
        dn_v, dn_i = torch.topk(-z, k, dim=-1)
    return (
        up_i.numpy().astype(np.int64),
        up_v.double().numpy(),
        dn_i.numpy().astype(np.int64),
        (-dn_v).double().numpy(),
        note + (" (read before Gemma-2's soft-cap)" if parts.logit_softcap is not None else ""),
    )


def _logit_budget(loaded: LoadedModel) -> int:
    parts = model_parts(loaded.model)
    if parts.unembed is None:
        return 0
    V, D = weight(parts.unembed).shape
    return max(MIN_LOGIT_FEATURES, int(LOGIT_MAX_MACS // max(int(V) * int(D), 1)))


def sae_features(
    loaded: LoadedModel,
    sae: SAE,
    x: torch.Tensor,
    final_in: torch.Tensor,
    target: int,
    special: list[bool] | np.ndarray | None = None,
) -> SAEFeatures:
    """The section of one SAE from its site's activations x [T, d_in]; `special` [T] marks the special tokens left
    out of the overall FVU (see the module docstring)."""
    stats = sae_statistics(sae, x, special)
    f = stats["f"]
    pos, feats, acts = _sparse(f, KEEP_PER_TOKEN)
    # features with logit effects: the target position's strongest, then the text's strongest, within the budget
    budget = _logit_budget(loaded)
    chosen: list[int] = []
    at_target = [int(i) for i in np.argsort(-f[target].numpy(), kind="stable")[:MIN_LOGIT_FEATURES] if f[target, i] > 0]
    peak_val, peak_at = f.max(dim=0)
    by_peak = [int(i) for i in np.argsort(-peak_val.numpy(), kind="stable") if peak_val[i] > 0]
    for i in [*at_target, *by_peak]:
        if len(chosen) >= budget:
            break
        if i not in chosen:
            chosen.append(i)
    peaks = [int(peak_at[i]) for i in chosen]
    pi, pe, si, se, note = logit_effects(loaded, sae, chosen, peaks, final_in)
    texts = {str(int(t)): _decode(loaded.tokenizer, int(t)) for t in {*pi.ravel().tolist(), *si.ravel().tolist()}}
    if pi.shape[0] == 0:
        chosen, peaks = [], []
    return SAEFeatures(
        name=sae.name,
        hook_name=sae.hook_name,
        architecture=sae.architecture,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        fingerprint=sae.fingerprint,
        model_name=sae.model_name,
        positions=pos,
        features=feats,
        activations=acts,
        l0=stats["l0"],
        fvu=stats["fvu"],
        fvu_total=stats["fvu_total"],
        cosine=stats["cosine"],
        logit_features=np.asarray(chosen, dtype=np.int32),
        logit_positions=np.asarray(peaks, dtype=np.int32),
        promote_ids=pi,
        promote_effects=pe,
        suppress_ids=si,
        suppress_effects=se,
        logit_note=note,
        token_texts=texts,
    )


def _decode(tokenizer: Any, i: int) -> str:
    try:
        return token_text(tokenizer, i)
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        return f"<id {int(i)}>"


def run_sae(ctx: StepContext) -> SAESection | None:
    """Analysis step "SAE features": one SAEFeatures per SAE folder of the settings, from the activations the capture
    pass recorded (None without SAE folders)."""
    import torch

    if not ctx.settings.sae_dirs:
        return None
    saes, warnings = prepare(ctx.loaded, ctx.settings)
    for w in warnings:
        ctx.warn(w)
    final_in = torch.from_numpy(np.ascontiguousarray(ctx.hidden_states[-1]))
    out = []
    for s in saes:
        x = ctx.capture.sites.get(s.hook_name)
        if x is None:
            raise RuntimeError(f"the capture pass did not record {s.hook_name}")
        sec = sae_features(ctx.loaded, s, x, final_in, ctx.target_position, ctx.special_mask)
        if np.isfinite(sec.fvu_total) and sec.fvu_total > 0.5:
            ctx.warn(
                f"SAE '{s.name}' leaves {100 * sec.fvu_total:.0f} % of the variance at {s.hook_name} unexplained: "
                "its features describe this text poorly"
            )
        out.append(sec)
    return SAESection(saes=out)


# ----------------------------------------------------------------------------------------------------------------
# Interventions


def intervene(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sae: SAE,
    *,
    feature: int | None = None,
    scale: float = 0.0,
    positions: list[int] | None = None,
    remove_error: bool = False,
) -> torch.Tensor:
    """Logits [T, V] (float32, CPU) of one forward pass with the SAE's site changed at `positions` (default all):
    feature f's contribution c_t = x̂(f_t) − x̂(f_t with f_t,f = 0) (= a_f · W_dec[f] without normalisation) is
    rescaled, x_t ← x_t + (scale − 1) · c_t (scale 0: ablation); with `remove_error` the error term x_t − x̂_t is
    removed too (x_t ← x̂_t before the feature change). Call under the model lock."""
    import torch

    parts = model_parts(loaded.model)
    s = site(parts, sae.hook_name)
    if feature is not None and not 0 <= feature < sae.d_sae:
        raise InputError(f"feature {feature} is out of range: SAE '{sae.name}' has features 0…{sae.d_sae - 1}")

    def change(x: torch.Tensor) -> torch.Tensor:
        x0 = x[0].float().cpu()
        f, xh = sae.encode_decode(x0)
        new = xh.clone() if remove_error else x0.clone()
        if feature is not None:
            pre_state = sae.pre_activation(x0)[1]
            g = f.clone()
            g[:, feature] = 0
            c = xh - sae.norm_out(g @ sae.W_dec + sae.b_dec, pre_state)
            rows = list(range(x0.shape[0])) if positions is None else positions
            new[rows] = new[rows] + (scale - 1.0) * c[rows]
        elif positions is not None:
            keep = torch.ones(x0.shape[0], dtype=torch.bool)
            keep[positions] = False
            new[keep] = x0[keep]
        return new.to(x.device).unsqueeze(0)

    with torch.inference_mode(), hooked([replacer(s, change)]):
        out = loaded.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
    return out.logits[0].float().cpu()
