"""A sparse-autoencoder feature (and the SAE's error term) as a causal site: patching clean → corrupted, ablation.

Same pair, target and metric as core.studies.patching (texts of one token length, m = logit(A) − logit(B) at the
target, A / B the clean / corrupted top-1 or given). At the SAE's site (core.model.sites: `blocks.l.hook_resid_pre`
…) with activation x_t, features f_t = encode(x_t) and reconstruction x̂_t:

* feature F's contribution  c_t = x̂(f_t) − x̂(f_t with f_t,F = 0)   (= f_t,F · W_dec[F] without normalisation;
  the run-time normalisations are affine in the features, so it is that times the norm's scale otherwise);
* the error term             e_t = x_t − x̂_t.

Patching a term clean → corrupted adds its difference to the corrupted run at the site, x_t ← x_t + (c_t^clean −
c_t^corrupted), at one position p at a time and at every position at once (position −1), and scores it like every
patching row: restored = (m_patched − m_corrupted) / (m_clean − m_corrupted). The site itself (x_t ← x_t^clean at
every position) is patched too: for an SAE without normalisation, error + all features together equal it exactly
(x = Σ_F c_F + b_dec + e, and b_dec cancels). Ablation removes the feature from the *clean* run, x_t ← x_t − c_t^clean
(per position and at every position; the error term at every position), and reports Δm = m_ablated − m_clean: what
core.steps.sae.intervene computes, batched.

Each set of rows runs as one batched forward pass per chunk (core.model.forward.chunk_rows), through
core.model.sites.replacer inside core.model.hooks.hooked. Positions after a causal LM's target cannot change its
prediction: they get m_corrupted (patch) / Δm 0 (ablation) without a pass. No cache: the whole study is about five
batched passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.infra.errors import InputError
from core.infra.serialize import serializable
from core.infra.version import CORE_VERSION
from core.model.arch import model_parts, try_model_parts
from core.model.forward import chunk_rows, target_logits
from core.model.hooks import hooked
from core.model.info import ModelInfo
from core.model.sae import SAE
from core.model.sites import Site, recorders, replacer, site
from core.run.progress import ProgressFn, silent
from core.studies.patching import (
    OnePairResult,
    PatchingSettings,
    choose_answers,
    encode_texts,
    pair_fields,
    restored_score,
)

if TYPE_CHECKING:
    import torch

    from core.model.loading import LoadedModel

#: The sites of the rows (`site` column of sae_patching.csv): the feature, the error term, the whole activation.
SITES = ("feature", "error", "site")
#: The columns of `SAEPatchingResult.rows()` (sae_patching.csv).
CSV_HEADER = [
    "site",
    "intervention",
    "position",
    "restored",
    "delta_m",
    "m",
    "clean_activation",
    "corrupted_activation",
    "clean_token",
    "corrupted_token",
]


@serializable
@dataclass(frozen=True)
class SAEPatchingResult(OnePairResult):
    """One SAE-feature patching run. T tokens; arrays [T] hold NaN where nothing was run (no per-position error or
    site patch); positions after a causal target hold m_corrupted (patch) or 0 (Δm).

    act_clean / act_corrupted: feature F's activation at each position. feature_patch [T]: m with F patched at
    position p alone; feature_patch_all: at every position. error_patch [T] / error_patch_all: the error term.
    site_patch_all: the whole site activation at every position. feature_ablation [T] / feature_ablation_all: Δm of
    the clean run with F removed; error_ablation_all: Δm with the error term removed everywhere."""

    model: ModelInfo
    settings: PatchingSettings
    sae_name: str
    sae_fingerprint: str
    hook_name: str
    feature: int
    d_sae: int
    clean_text: str
    corrupted_text: str
    clean_tokens: tuple[str, ...]
    corrupted_tokens: tuple[str, ...]
    target_position: int
    target_reason: str
    answer_id: int
    answer_token: str
    wrong_id: int
    wrong_token: str
    answers_from: str
    m_clean: float
    m_corrupted: float
    act_clean: np.ndarray
    act_corrupted: np.ndarray
    feature_patch: np.ndarray
    feature_patch_all: float
    error_patch: np.ndarray
    error_patch_all: float
    site_patch_all: float
    feature_ablation: np.ndarray
    feature_ablation_all: float
    error_ablation_all: float
    warnings: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    core_version: str = CORE_VERSION

    def restored(self, m: Any) -> Any:
        """(m − m_corrupted) / (m_clean − m_corrupted) of a value or an array (NaN when the denominator is 0)."""
        r = restored_score(np.asarray(m, dtype=np.float64), self.m_clean, self.m_corrupted)
        return float(r) if np.ndim(r) == 0 else r

    def rows(self) -> list[list[Any]]:
        """Rows of sae_patching.csv: site, intervention, position, restored, delta_m, m, clean_activation,
        corrupted_activation, clean_token, corrupted_token. Position −1 = every position; a patch row's delta_m is
        m − m_corrupted, an ablation row's m − m_clean (restored is empty: ablation runs on the clean text alone)."""
        out: list[list[Any]] = []

        def patch_row(name: str, p: int, m: float) -> None:
            ac, ak = (
                (float(self.act_clean[p]), float(self.act_corrupted[p])) if name == "feature" and p >= 0 else ("", "")
            )
            toks = ("", "") if p < 0 else (self.clean_tokens[p], self.corrupted_tokens[p])
            out.append([name, "patch", p, self.restored(m), m - self.m_corrupted, m, ac, ak, *toks])

        def ablate_row(name: str, p: int, d: float) -> None:
            ac = float(self.act_clean[p]) if name == "feature" and p >= 0 else ""
            toks = ("", "") if p < 0 else (self.clean_tokens[p], self.corrupted_tokens[p])
            out.append([name, "ablate", p, "", d, self.m_clean + d, ac, "", *toks])

        patch_row("site", -1, self.site_patch_all)
        for name, per, every in (
            ("feature", self.feature_patch, self.feature_patch_all),
            ("error", self.error_patch, self.error_patch_all),
        ):
            patch_row(name, -1, every)
            for p in range(self.n_tokens):
                if np.isfinite(per[p]):
                    patch_row(name, p, float(per[p]))
        ablate_row("feature", -1, self.feature_ablation_all)
        for p in range(self.n_tokens):
            ablate_row("feature", p, float(self.feature_ablation[p]))
        ablate_row("error", -1, self.error_ablation_all)
        return out

    def summary(self) -> dict[str, Any]:
        """What sae_patching.json holds: the SAE, feature, answers, m values, the every-position numbers."""
        return {
            "model": self.model.to_dict(),
            "settings": self.settings.to_dict(),
            "sae": {
                "name": self.sae_name,
                "hook_name": self.hook_name,
                "d_sae": self.d_sae,
                "fingerprint": self.sae_fingerprint,
            },  # fmt: skip
            "feature": self.feature,
            "clean_text": self.clean_text,
            "corrupted_text": self.corrupted_text,
            **self.answers_summary(),
            "restored_every_position": {
                "feature": self.restored(self.feature_patch_all),
                "error": self.restored(self.error_patch_all),
                "site": self.restored(self.site_patch_all),
            },
            "ablation_delta_m_every_position": {"feature": self.feature_ablation_all, "error": self.error_ablation_all},
            "warnings": list(self.warnings),
            "timings": self.timings,
            "core_version": self.core_version,
        }


# ----------------------------------------------------------------------------------------------------------------
# The terms of an activation


def feature_term(sae: SAE, x: torch.Tensor, feature: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(c [T, d_in], activation [T]): feature `feature`'s contribution x̂(f) − x̂(f without it) and its activation,
    for site activations x [T, d_in] (float32, CPU) — the contribution core.steps.sae.intervene rescales."""
    import torch

    with torch.inference_mode():
        x = x.float()
        pre, state = sae.pre_activation(x)
        f = sae.activate(pre)
        xh = sae.norm_out(f @ sae.W_dec + sae.b_dec, state)
        g = f.clone()
        g[:, feature] = 0
        return xh - sae.norm_out(g @ sae.W_dec + sae.b_dec, state), f[:, feature].clone()


def error_term(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """e = x − x̂ [T, d_in] for site activations x [T, d_in]."""
    import torch

    with torch.inference_mode():
        return x.float() - sae.encode_decode(x.float())[1]


# ----------------------------------------------------------------------------------------------------------------
# Forward passes


def recorded_run(
    loaded: LoadedModel, s: Site, ids: torch.Tensor, mask: torch.Tensor, position: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the site's activation [T', W] float32 CPU, logits [V] at `position`) of one unpatched pass."""
    store: dict[str, Any] = {}
    with hooked(recorders(model_parts(loaded.model), [s.name], store)):
        logits = target_logits(loaded, ids, mask, position)[0]
    return store[s.name], logits


def added_metrics(
    loaded: LoadedModel,
    s: Site,
    delta: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    position: int,
    masks: torch.Tensor,
    answer: int,
    wrong: int,
    chunk: int | None = None,
) -> np.ndarray:
    """m = logit_A − logit_B of the run of `ids` with `delta` [T', W] added to the site's activation where masks
    [R, T'] is True (row r: its own positions; all False = no change). float64 [R]."""
    import torch

    R, Tp = masks.shape
    chunk = chunk or chunk_rows(loaded, Tp)
    out = np.empty(R)
    for start in range(0, R, chunk):
        rows = masks[start : start + chunk]

        def add(h: torch.Tensor, rows: torch.Tensor = rows) -> torch.Tensor:
            if h.shape[1] != Tp:
                raise RuntimeError(f"a change of {Tp} positions met an activation of {h.shape[1]}")
            d = delta.to(device=h.device, dtype=torch.float32)
            return (h.float() + rows.to(h.device)[..., None].float() * d).to(h.dtype)

        with hooked([replacer(s, add)]):
            logits = target_logits(loaded, ids.expand(rows.shape[0], -1), mask, position)
        out[start : start + rows.shape[0]] = (logits[:, answer] - logits[:, wrong]).double().cpu().numpy()
    return out


# ----------------------------------------------------------------------------------------------------------------
# The run


def check_sae(loaded: LoadedModel, sae: SAE, feature: int) -> tuple[Site, list[str]]:
    """The SAE's site on this model and its warnings; one-line InputError for a model the architecture map does not
    know, a site or width the model lacks, or a feature out of range."""
    parts, why = try_model_parts(loaded.model, "SAE feature patching", "is")
    if parts is None:
        raise InputError(str(why))
    warnings = sae.check_model(parts, loaded.model_id)
    if not 0 <= int(feature) < sae.d_sae:
        raise InputError(f"feature {feature} is out of range: SAE '{sae.name}' has features 0…{sae.d_sae - 1}")
    return site(parts, sae.hook_name), warnings


def run_sae_patching(
    loaded: LoadedModel,
    clean_text: str,
    corrupted_text: str,
    sae: SAE,
    feature: int,
    settings: PatchingSettings | None = None,
    progress: ProgressFn | None = None,
) -> SAEPatchingResult:
    """Patch and ablate feature `feature` of `sae` and its error term (see the module docstring). InputError for
    texts of different token lengths, a target that differs, answers that are not one token or equal, a feature out
    of range, an SAE whose site or width this model lacks. Takes `loaded.lock`."""
    import torch

    settings = settings or PatchingSettings()
    report = progress or silent
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    with loaded.lock:
        s, warnings = check_sae(loaded, sae, feature)
        encoded = encode_texts(loaded, clean_text, corrupted_text, settings.max_tokens)
        (c_ids, c_mask, c_toks), (k_ids, k_mask, _), pos, _ = encoded
        report("Clean and corrupted runs", 0.0)
        x_c, clean_logits = recorded_run(loaded, s, c_ids, c_mask, pos)
        x_k, corrupt_logits = recorded_run(loaded, s, k_ids, k_mask, pos)
        answers = choose_answers(loaded, settings, clean_logits, corrupt_logits)
        a, b, m_clean, m_corrupt = answers.answer_id, answers.wrong_id, answers.m_clean, answers.m_corrupted
        timings["clean_and_corrupted"] = time.perf_counter() - t0

        T, Tp = len(c_toks), int(x_c.shape[0])
        c_c, a_c = feature_term(sae, x_c, feature)
        c_k, a_k = feature_term(sae, x_k, feature)
        e_c, e_k = error_term(sae, x_c), error_term(sae, x_k)
        dev = c_ids.device
        eye = torch.eye(Tp, dtype=torch.bool, device=dev)
        every = torch.ones(1, Tp, dtype=torch.bool, device=dev)

        def patch(delta: torch.Tensor, per_position: bool) -> tuple[np.ndarray, float]:
            rows = torch.cat([eye, every]) if per_position else every
            vals = added_metrics(loaded, s, delta, k_ids, k_mask, pos, rows, a, b)
            per = np.full(T, np.nan)
            if per_position:
                per[:Tp] = vals[:Tp]
                per[Tp:] = m_corrupt
            return per, float(vals[-1])

        t = time.perf_counter()
        report(f"Patching feature {feature}", 0.2)
        feat_per, feat_all = patch(c_c - c_k, True)
        report("Patching the error term", 0.4)
        err_per, err_all = patch(e_c - e_k, settings.per_position_components)
        _, site_all = patch(x_c - x_k, False)
        timings["patching"] = time.perf_counter() - t

        t = time.perf_counter()
        report(f"Ablating feature {feature} in the clean run", 0.7)
        abl = added_metrics(loaded, s, -c_c, c_ids, c_mask, pos, torch.cat([eye, every]), a, b)
        abl_per = np.zeros(T)
        abl_per[:Tp] = abl[:Tp] - m_clean
        err_abl = float(added_metrics(loaded, s, -e_c, c_ids, c_mask, pos, every, a, b)[0]) - m_clean
        timings["ablation"] = time.perf_counter() - t
        report("Done", 1.0)

    def full(v: torch.Tensor) -> np.ndarray:
        out = np.full(T, np.nan)
        out[:Tp] = v.double().numpy()
        return out

    warnings += answers.warnings()
    if not bool((a_c != 0).any() or (a_k != 0).any()):
        warnings.append(f"feature {feature} is not active on either text: patching and ablating it change nothing")
    timings["total"] = time.perf_counter() - t0
    return SAEPatchingResult(
        model=loaded.info(),
        settings=settings,
        sae_name=sae.name,
        sae_fingerprint=sae.fingerprint,
        hook_name=sae.hook_name,
        feature=int(feature),
        d_sae=sae.d_sae,
        **pair_fields(clean_text, corrupted_text, encoded, answers),
        act_clean=full(a_c),
        act_corrupted=full(a_k),
        feature_patch=feat_per,
        feature_patch_all=feat_all,
        error_patch=err_per,
        error_patch_all=err_all,
        site_patch_all=site_all,
        feature_ablation=abl_per,
        feature_ablation_all=float(abl[-1]) - m_clean,
        error_ablation_all=err_abl,
        warnings=tuple(warnings),
        timings=timings,
    )
