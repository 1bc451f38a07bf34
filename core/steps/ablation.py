"""Exact head ablation: what the prediction loses when one attention head's output is replaced.

For every layer l and head h, the head's slice of the input of the attention output projection z_l [T, H·d_h]
(GPT-2 attn.c_proj, Llama self_attn.o_proj, BERT attention.output.dense: the per-head attention outputs,
concatenated head-major) is replaced

* by its mean over the text's positions (mean ablation: keeps the head's average contribution, removes what it
  says about *this* position), and
* by zero (zero ablation: what the gradient head score estimates to first order),

and the rest of the model runs on. Reported: Δ = log p(y* | ablated) − log p(y* | x) at the target position,
y* the model's top prediction there (the token attribution explains). Negative = the head supports the prediction.

Batched: the 2·H ablations of one layer run as one forward pass (batch 2·H, chunked by the patching memory bound),
so the whole table costs L batched forward passes. Hooks are removed in a ``finally``. Opt-in (setting
``head_ablation``): on a CPU it costs roughly L · 2H / (a few) forward passes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.infra.serialize import serializable
from core.run.progress import ProgressFn

if TYPE_CHECKING:
    import torch

    from core.model.capture import Capture
    from core.model.loading import LoadedModel
    from core.steps.context import StepContext

log = logging.getLogger(__name__)

ABLATION_METHOD = (
    "exact head ablation: the head's slice of the input of layer l's attention output projection is replaced by its "
    "mean over the text's positions (mean_ablation) or by zero (zero_ablation) and the model is run on; the value "
    "is log p(y*) after minus log p(y*) before, at the target position (negative = the head supports y*)"
)


@serializable
@dataclass(frozen=True)
class HeadAblationSection:
    """Head ablation at one target position. L = layers, H = heads.

    mean_ablation, zero_ablation: float64 [L, H], Δ log p(token_id) at target_position (after − before);
    logprob: log p(token_id) of the unablated run.
    """

    target_position: int
    token_id: int
    token: str
    logprob: float
    mean_ablation: np.ndarray
    zero_ablation: np.ndarray
    method: str = ABLATION_METHOD
    notes: tuple[str, ...] = ()

    def rows(self) -> list[tuple[int, int, float, float]]:
        """Rows of head_ablation.csv: (layer, head, mean_ablation, zero_ablation); layer = block 1…L (array row
        layer − 1), heads from 0, as the other per-head CSV files."""
        L, H = self.mean_ablation.shape
        return [
            (l + 1, h, float(self.mean_ablation[l, h]), float(self.zero_ablation[l, h]))
            for l in range(L)
            for h in range(H)
        ]

    def agreement(self, head_scores: np.ndarray | None) -> dict[str, float]:
        """Spearman correlation of the gradient head score with the ablation *drop* (−Δ), per variant; the
        gradient score is the first-order estimate of that drop for zero ablation, so agreement means ρ near 1."""
        if head_scores is None or np.shape(head_scores) != self.mean_ablation.shape:
            return {}
        return {
            "mean_ablation": spearman(head_scores, -self.mean_ablation),
            "zero_ablation": spearman(head_scores, -self.zero_ablation),
        }


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equally shaped arrays (average ranks for ties); NaN when one is constant."""
    from scipy.stats import spearmanr

    x, y = np.ravel(np.asarray(a, dtype=np.float64)), np.ravel(np.asarray(b, dtype=np.float64))
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def head_ablation(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position: int,
    token_id: int,
    progress: ProgressFn | None = None,
    chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean and zero ablation of every head (see the module docstring) → (mean [L, H], zero [L, H], log p).

    Raises RuntimeError when the attention output projections are not recognised."""
    import torch

    from core.model.forward import chunk_rows, target_logits
    from core.model.hooks import hooked
    from core.steps.attribution import head_projection_modules

    L, H = loaded.n_layers, loaded.n_heads
    projections = head_projection_modules(loaded.model, L)
    if projections is None:
        raise RuntimeError("the attention output projections of this architecture were not recognised")
    zs: list[Any] = []

    def grab(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        zs.append(args[0][0].detach().clone())

    with hooked([(m, "pre_kwargs", grab) for m in projections]):
        target_logits(
            loaded, input_ids, attention_mask, input_ids.shape[1] - 1 if loaded.family == "causal_lm" else position
        )
    means = [z.reshape(z.shape[0], H, -1).mean(0) for z in zs]  # L × [H, dh], mean over all positions of the text
    base = float(torch.log_softmax(target_logits(loaded, input_ids, attention_mask, position)[0], -1)[token_id])

    rows = 2 * H
    Tp = position + 1 if loaded.family == "causal_lm" else input_ids.shape[1]
    chunk = chunk or chunk_rows(loaded, Tp)
    eye = torch.eye(H, dtype=torch.bool, device=input_ids.device)
    sel_all = torch.cat([eye, eye])  # [2H, H]: row r ablates head r mod H
    mean_out, zero_out = np.empty((L, H)), np.empty((L, H))
    for l in range(L):
        if progress:
            progress(f"Head ablation, layer {l + 1} of {L}", l / L)
        dh = means[l].shape[-1]
        repl_all = torch.cat(
            [means[l].expand(H, H, dh), torch.zeros(H, H, dh, dtype=means[l].dtype, device=means[l].device)]
        )  # [2H, H, dh]
        vals = np.empty(rows)
        for s in range(0, rows, chunk):
            sel = sel_all[s : s + chunk]
            repl = repl_all[s : s + chunk]

            def ablate(
                _m: Any, args: tuple[Any, ...], kwargs: dict[str, Any], sel: Any = sel, repl: Any = repl, dh: int = dh
            ) -> tuple[tuple[Any, ...], dict[str, Any]]:
                z = args[0]
                B, T, _ = z.shape
                zz = z.reshape(B, T, H, dh)
                zz = torch.where(sel[:, None, :, None], repl[:, None].to(z.dtype), zz)
                return (zz.reshape(B, T, H * dh), *args[1:]), kwargs

            ids = input_ids.expand(sel.shape[0], -1)
            with hooked([(projections[l], "pre_kwargs", ablate)]):
                logits = target_logits(loaded, ids, attention_mask, position)
            vals[s : s + sel.shape[0]] = torch.log_softmax(logits, -1)[:, token_id].double().cpu().numpy()
        mean_out[l] = vals[:H] - base
        zero_out[l] = vals[H:] - base
    return mean_out, zero_out, base


def ablate_heads(
    loaded: LoadedModel, capture: Capture, position: int, progress: ProgressFn | None = None
) -> HeadAblationSection | None:
    """The head-ablation section for the top prediction at `position` of one capture, or None for an encoder
    without a language-model head. Call under the model lock."""
    import torch

    logits = getattr(capture, "logits", None)
    if loaded.family == "encoder" or logits is None:
        return None
    pred = int(torch.argmax(logits[position]).item())
    tok = loaded.tokenizer.convert_ids_to_tokens([pred])[0]
    mean, zero, base = head_ablation(loaded, capture.input_ids, capture.attention_mask, position, pred, progress)
    notes: tuple[str, ...] = ()
    if loaded.family == "causal_lm" and position < capture.input_ids.shape[1] - 1:
        notes = (f"positions after {position} cannot change its prediction; the means still run over the whole text",)
    return HeadAblationSection(
        target_position=position,
        token_id=pred,
        token=tok if isinstance(tok, str) else f"<id {pred}>",
        logprob=base,
        mean_ablation=mean,
        zero_ablation=zero,
        notes=notes,
    )


def run_head_ablation(ctx: StepContext) -> HeadAblationSection | None:
    """Analysis step "Head ablation" (opt-in setting head_ablation) for the target position."""
    if not ctx.settings.head_ablation:
        return None
    try:
        return ablate_heads(ctx.loaded, ctx.capture, ctx.target_position)
    except RuntimeError as exc:  # unknown layout, out of memory
        log.warning("head ablation failed: %s", exc)
        ctx.warn(f"head ablation failed: {str(exc).splitlines()[0]}")
        return None
