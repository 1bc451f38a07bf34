"""Two analysis runs side by side, and linear CKA between layers. Pure functions of results: no model, no UI.

`compare(result_a, result_b)` takes two finished AnalysisResults — two texts on one model, or one text on two
models — and returns a ComparisonResult: the layer metrics of both on absolute layers and on relative depth
(layer / number of layers), the attention-entropy difference when both runs come from the same architecture
(same layer and head counts), the predictions and token attributions of both side by side, and the linear CKA of
every layer of A against every layer of B when both runs hold exactly the same tokens. Where a comparison is not
defined the result says why in one calm sentence instead of raising.

`linear_cka(X, Y)` compares two representations of the same n examples (here: tokens); `layer_cka(result)` is the
layer × layer CKA within one run ("how far does the representation move between layers").

Shapes: L layers, H heads, T tokens, D hidden width. Hidden states are [L+1, T, D] (index 0 = embedding output),
so every per-layer array here has L+1 entries and CKA matrices are [L_a+1, L_b+1].
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.analysis.result import AnalysisResult
from core.infra.serialize import serializable
from core.steps.metrics import METRIC_NAMES

log = logging.getLogger(__name__)

#: Debiased HSIC needs n ≥ 4 examples (its normaliser is n(n−3)); centred CKA needs n ≥ 2.
MIN_TOKENS_CKA = 2
MIN_TOKENS_CKA_DEBIASED = 4
#: Above this many tokens the layer × layer CKA uses this many evenly spaced tokens: each layer's Gram matrix is
#: T × T float64, and 13 layers at T = 4096 would need 1.7 GB. CKA is an average over examples, so a regular
#: subsample estimates it; the result says when this happened.
MAX_CKA_TOKENS = 1024
AXES = ("relative", "absolute")


# ----------------------------------------------------------------------------------------------------------------
# Linear CKA


def _as_matrix(X: Any, name: str) -> np.ndarray:
    A = np.asarray(X, dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [examples, features], got shape {A.shape}")
    return A


def _centred_gram(X: np.ndarray, debiased: bool) -> np.ndarray:
    """The centred Gram matrix of X [n, p] → [n, n].

    Centred: K_c = H K H with K = X Xᵀ and H = I − 11ᵀ/n, computed as X_c X_cᵀ with X_c = X − mean over rows
    (the same matrix, without the large shared mean in the products).
    Debiased: the U-centred Gram matrix K_u of Székely & Rizzo (2014): zero diagonal and
    (K_u)_ij = K_ij − r_i/(n−2) − r_j/(n−2) + s/((n−1)(n−2)) for i ≠ j, with r the row sums and s the total of the
    zero-diagonal K. ⟨K_u, L_u⟩_F / (n(n−3)) is the unbiased HSIC estimator of Song et al. (2012).
    """
    Xc = X - X.mean(axis=0, keepdims=True)
    K = Xc @ Xc.T
    if not debiased:
        return K
    n = K.shape[0]
    np.fill_diagonal(K, 0.0)
    means = K.sum(axis=0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    K -= means[:, None]
    K -= means[None, :]
    np.fill_diagonal(K, 0.0)
    return K


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """⟨a, b⟩ / (‖a‖ ‖b‖) of two flattened Gram matrices; NaN when either is zero (a constant representation)."""
    na, nb = float(np.sqrt(np.vdot(a, a))), float(np.sqrt(np.vdot(b, b)))
    if not (na > 0 and nb > 0 and math.isfinite(na) and math.isfinite(nb)):
        return float("nan")
    return float(np.vdot(a, b)) / (na * nb)


def linear_cka(X: Any, Y: Any, debiased: bool = False) -> float:
    """Linear centred kernel alignment of two representations of the same n examples.

    X: [n, p], Y: [n, q] (rows = the same examples, e.g. the tokens of one text; p and q may differ).
    With K = X Xᵀ, L = Y Yᵀ and H = I − 11ᵀ/n (Kornblith et al. 2019):

        HSIC₀(K, L) = tr(K H L H) / (n − 1)²
        CKA(X, Y)   = HSIC₀(K, L) / √(HSIC₀(K, K) · HSIC₀(L, L))
                    = ‖Y_cᵀ X_c‖²_F / (‖X_cᵀ X_c‖_F · ‖Y_cᵀ Y_c‖_F),   X_c, Y_c centred over the rows.

    debiased=True replaces HSIC₀ by the unbiased estimator of Song et al. (2012), as Nguyen et al. (2021) do
    for CKA; with K̃, L̃ the Gram matrices with their diagonals set to zero and 1 the all-ones vector:

        HSIC₁(K, L) = [tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n − 1)(n − 2)) − 2/(n − 2) · 1ᵀK̃L̃1] / (n(n − 3))

    and computes it as ⟨K_u, L_u⟩_F / (n(n−3)) of the U-centred Gram matrices (the same number).

    Properties: CKA(X, X) = 1; symmetric; invariant to an orthogonal transform and to isotropic scaling of either
    side; in [0, 1] (centred). Centred CKA of independent random X, Y is biased upwards when the width is not
    small against n; the debiased value is close to 0 and may be slightly negative.
    Returns NaN when either side is constant over the examples, or for fewer than 2 (centred) / 4 (debiased)
    examples. Raises ValueError when the row counts differ or an input is not 2-D.
    """
    A, B = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"X and Y must describe the same examples: {A.shape[0]} rows against {B.shape[0]}")
    n = A.shape[0]
    if n < (MIN_TOKENS_CKA_DEBIASED if debiased else MIN_TOKENS_CKA):
        return float("nan")
    return _cosine(_centred_gram(A, debiased), _centred_gram(B, debiased))


def _grams(hidden: np.ndarray, rows: np.ndarray, debiased: bool) -> np.ndarray:
    """Flattened, unit-norm centred Gram matrices of every layer: [L+1, T, D] → [L+1, n²] (NaN rows where a
    layer is constant over the tokens)."""
    H = np.asarray(hidden)
    out = np.empty((H.shape[0], len(rows) * len(rows)))
    for layer in range(H.shape[0]):
        g = _centred_gram(np.asarray(H[layer, rows], dtype=np.float64), debiased).ravel()
        norm = float(np.sqrt(np.vdot(g, g)))
        out[layer] = g / norm if norm > 0 and math.isfinite(norm) else np.nan
    return out


def cka_rows(n_tokens: int) -> np.ndarray:
    """The token positions the layer CKA uses: all of them, or MAX_CKA_TOKENS evenly spaced ones."""
    if n_tokens <= MAX_CKA_TOKENS:
        return np.arange(n_tokens)
    return np.unique(np.linspace(0, n_tokens - 1, MAX_CKA_TOKENS).round().astype(np.int64))


def cka_matrix(hidden_a: np.ndarray, hidden_b: np.ndarray, debiased: bool = False) -> np.ndarray:
    """Linear CKA of every layer of A against every layer of B: [L_a+1, T, D_a] × [L_b+1, T, D_b] → [L_a+1, L_b+1].

    Both stacks must hold the same T tokens (rows). Entry (i, j) equals linear_cka(hidden_a[i], hidden_b[j]).
    Each layer's centred Gram matrix is formed once, so the cost is O((L_a + L_b) T² D + L_a L_b T²).
    """
    Ha, Hb = np.asarray(hidden_a), np.asarray(hidden_b)
    if Ha.ndim != 3 or Hb.ndim != 3:
        raise ValueError(f"hidden states must be [layers, tokens, width], got {Ha.shape} and {Hb.shape}")
    if Ha.shape[1] != Hb.shape[1]:
        raise ValueError(f"both runs must hold the same tokens: {Ha.shape[1]} against {Hb.shape[1]}")
    n = Ha.shape[1]
    if n < (MIN_TOKENS_CKA_DEBIASED if debiased else MIN_TOKENS_CKA):
        return np.full((Ha.shape[0], Hb.shape[0]), np.nan)
    rows = cka_rows(n)
    Ga = _grams(Ha, rows, debiased)
    Gb = Ga if Hb is Ha else _grams(Hb, rows, debiased)
    out = Ga @ Gb.T
    return np.clip(out, -1.0, 1.0)


def layer_cka(result: AnalysisResult, debiased: bool = False) -> np.ndarray:
    """Layer × layer linear CKA within one run: [L+1, L+1] over the hidden states (0 = embedding output).

    Symmetric with ones on the diagonal (NaN for a layer that is constant over the tokens). A low value between
    neighbouring layers means the block rewrote the token geometry; a block of high values, that it barely moved.
    """
    return cka_matrix(result.hidden_states, result.hidden_states, debiased)


# ----------------------------------------------------------------------------------------------------------------
# The comparison of two runs


@serializable
@dataclass(frozen=True)
class RunSummary:
    """What the comparison shows of one run (no hidden states, no attentions).

    layers: 0 … L (0 = embedding output); depth: layers / L, the relative depth in [0, 1];
    metrics: {metric: float64 [L+1]} in METRIC_NAMES order; tokens: the display tokens.
    """

    label: str
    model_id: str
    family: str
    architecture: str
    dtype: str
    n_layers: int
    n_heads: int
    hidden_size: int
    text: str
    tokens: list[str]
    token_ids: list[int]
    metric_tokens: str
    layers: np.ndarray
    depth: np.ndarray
    metrics: dict[str, np.ndarray]


@serializable
@dataclass(frozen=True)
class PredictionSide:
    """The top-k candidates of one run at its first predicted position (mask or next token).

    kind: "mask_fill", "next_token" or "unavailable"; message: why there are none ("" otherwise);
    position: the predicted position (None when unavailable); tokens / probabilities: the candidates, best first.
    """

    kind: str
    message: str = ""
    position: int | None = None
    tokens: list[str] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)


@serializable
@dataclass(frozen=True)
class AttributionSide:
    """Token attribution of one run: {method: float64 [T]} for rollout, grad_x_input, integrated_gradients where
    computed, the display tokens and the attributed position."""

    tokens: list[str]
    target_position: int
    target_token: str
    predicted_token: str | None
    scores: dict[str, np.ndarray]


@serializable
@dataclass(frozen=True)
class ComparisonResult:
    """Two runs side by side (A and B). Differences are B − A.

    same_tokens: both runs hold the same token ids (same text, shared tokenizer): CKA and attribution agreement
        are defined. same_model: same architecture, layer count and head count: the entropy difference is defined.
    default_axis: "relative" (depth = layer / L) when the layer counts differ, else "absolute".
    entropy_diff / normalized_entropy_diff: float64 [L, H], B − A, or None with entropy_unavailable_reason.
    shared_predictions: distinct candidate tokens in the top-k of both runs (in A's order).
    attribution_agreement: {method: Spearman rank correlation of A's and B's token scores} (same tokens only).
    cka / cka_debiased: float64 [L_a+1, L_b+1], linear CKA of layer i of A and layer j of B, or None with
        cka_unavailable_reason; cka_tokens: how many tokens entered it; cka_note: "" or how they were chosen.
    """

    a: RunSummary
    b: RunSummary
    same_tokens: bool
    same_model: bool
    default_axis: str
    entropy_diff: np.ndarray | None
    normalized_entropy_diff: np.ndarray | None
    entropy_unavailable_reason: str
    predictions_a: PredictionSide
    predictions_b: PredictionSide
    shared_predictions: list[str]
    attribution_a: AttributionSide | None
    attribution_b: AttributionSide | None
    attribution_agreement: dict[str, float]
    cka: np.ndarray | None
    cka_debiased: np.ndarray | None
    cka_unavailable_reason: str
    cka_tokens: int
    cka_note: str = ""

    @property
    def runs(self) -> tuple[RunSummary, RunSummary]:
        return self.a, self.b

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (arrays → nested lists, NaN → None): comparison.json."""
        return _plain(self)


def _plain(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def summarise(result: AnalysisResult, label: str) -> RunSummary:
    """The RunSummary of one run."""
    L = result.n_layers
    layers = np.arange(L + 1, dtype=np.int64)
    return RunSummary(
        label=label,
        model_id=result.model.model_id,
        family=result.family,
        architecture=result.model.architecture,
        dtype=result.model.dtype,
        n_layers=L,
        n_heads=result.n_heads,
        hidden_size=int(np.asarray(result.hidden_states).shape[-1]),
        text=result.text,
        tokens=list(result.display_tokens),
        token_ids=[int(i) for i in result.token_ids],
        metric_tokens=result.metric_tokens,
        layers=layers,
        depth=layers / max(L, 1),
        metrics={m: np.asarray(result.layer_metrics[m], dtype=np.float64) for m in METRIC_NAMES},
    )


def _shape(s: RunSummary) -> str:
    return f"{s.architecture or s.model_id} with {s.n_layers} layers × {s.n_heads} heads"


def _token_reason(a: AnalysisResult, b: AnalysisResult) -> str:
    """ "" when both runs hold the same tokens, else a calm sentence saying why CKA is not shown."""
    ids_a, ids_b = list(a.token_ids), list(b.token_ids)
    if ids_a == ids_b and list(a.tokens) == list(b.tokens):
        return ""
    shorter, longer = sorted((ids_a, ids_b), key=len)
    if a.analysed_text != b.analysed_text:
        why = "the two runs analyse different texts"
    elif len(shorter) < len(longer) and longer[: len(shorter)] == shorter:
        why = "one run was cut to fewer tokens (the max-tokens setting)"
    else:
        why = "the two models split the same text into different tokens (their tokenizers differ)"
    return (
        f"Layer CKA compares the two runs token by token, so it needs the same tokens in both; here {why} "
        f"(A: {len(ids_a)} tokens, B: {len(ids_b)} tokens). Compare one text on two models that share a "
        f"tokenizer — a base and a fine-tuned model, or one model at two precisions — to see it."
    )


def _entropy(
    a: AnalysisResult, b: AnalysisResult, sa: RunSummary, sb: RunSummary
) -> tuple[bool, np.ndarray | None, np.ndarray | None, str]:
    same = sa.architecture == sb.architecture and sa.n_layers == sb.n_layers and sa.n_heads == sb.n_heads
    if not same:
        return (
            False,
            None,
            None,
            (
                f"The attention-entropy difference is shown for one architecture only (head by "
                f"head): A is {_shape(sa)}, B is {_shape(sb)}."
            ),
        )
    if a.attention is None or b.attention is None:
        return (
            True,
            None,
            None,
            (
                "The attention-entropy difference needs the per-head attention analysis of both "
                "runs; one of them does not have it."
            ),
        )
    ent = np.asarray(b.attention.entropy, dtype=np.float64) - np.asarray(a.attention.entropy, dtype=np.float64)
    norm = np.asarray(b.attention.normalized_entropy, dtype=np.float64) - np.asarray(
        a.attention.normalized_entropy, dtype=np.float64
    )
    return True, ent, norm, ""


def _prediction_side(result: AnalysisResult) -> PredictionSide:
    p = result.predictions
    if p is None:
        return PredictionSide(kind="unavailable", message="No predictions in this run.")
    if not p.candidates or not p.positions:
        return PredictionSide(kind=str(p.kind), message=str(p.message or "No predictions for this model."))
    cands = p.candidates[0]
    return PredictionSide(
        kind=str(p.kind),
        message=str(p.message or ""),
        position=int(p.positions[0]),
        tokens=[str(c["token"]) for c in cands],
        probabilities=[float(c["probability"]) for c in cands],
    )


ATTRIBUTION_METHODS = ("rollout", "grad_x_input", "integrated_gradients")


def _attribution_side(result: AnalysisResult) -> AttributionSide | None:
    at = result.attribution
    if at is None:
        return None
    scores = {
        m: np.asarray(getattr(at, m), dtype=np.float64) for m in ATTRIBUTION_METHODS if getattr(at, m, None) is not None
    }
    return AttributionSide(
        tokens=list(result.display_tokens),
        target_position=int(at.target_position),
        target_token=str(at.target_token),
        predicted_token=result.predicted_text,  # decoded as the tables write tokens, not the raw 'âĢ'
        scores=scores,
    )


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import rankdata

    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    rx, ry = rankdata(x[ok]), rankdata(y[ok])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def compare(result_a: AnalysisResult, result_b: AnalysisResult) -> ComparisonResult:
    """Compare two finished runs (A and B). Pure: reads the results, runs no model, never raises for runs that
    merely differ — every part that is not defined for this pair comes with a one-sentence reason."""
    sa, sb = summarise(result_a, "A"), summarise(result_b, "B")
    same_model, ent, norm_ent, ent_reason = _entropy(result_a, result_b, sa, sb)
    cka_reason = _token_reason(result_a, result_b)
    same_tokens = cka_reason == ""
    cka = cka_d = None
    n = result_a.n_tokens if same_tokens else 0
    note = ""
    if same_tokens:
        if n < MIN_TOKENS_CKA:
            cka_reason = f"Layer CKA needs at least {MIN_TOKENS_CKA} tokens; this text has {n}."
        else:
            cka = cka_matrix(result_a.hidden_states, result_b.hidden_states)
            if n >= MIN_TOKENS_CKA_DEBIASED:
                cka_d = cka_matrix(result_a.hidden_states, result_b.hidden_states, debiased=True)
            else:
                note = f"The debiased CKA needs at least {MIN_TOKENS_CKA_DEBIASED} tokens; this text has {n}."
            if n > MAX_CKA_TOKENS:
                note = (
                    f"CKA uses {len(cka_rows(n))} evenly spaced tokens of the {n} (each layer's token Gram "
                    f"matrix is T × T)."
                )
    pa, pb = _prediction_side(result_a), _prediction_side(result_b)
    shared = list(dict.fromkeys(t for t in pa.tokens if t in set(pb.tokens)))
    aa, ab = _attribution_side(result_a), _attribution_side(result_b)
    agreement: dict[str, float] = {}
    if same_tokens and aa is not None and ab is not None:
        for m in ATTRIBUTION_METHODS:
            if m in aa.scores and m in ab.scores:
                agreement[m] = _spearman(aa.scores[m], ab.scores[m])
    return ComparisonResult(
        a=sa,
        b=sb,
        same_tokens=same_tokens,
        same_model=same_model,
        default_axis="absolute" if sa.n_layers == sb.n_layers else "relative",
        entropy_diff=ent,
        normalized_entropy_diff=norm_ent,
        entropy_unavailable_reason=ent_reason,
        predictions_a=pa,
        predictions_b=pb,
        shared_predictions=shared,
        attribution_a=aa,
        attribution_b=ab,
        attribution_agreement=agreement,
        cka=cka,
        cka_debiased=cka_d,
        cka_unavailable_reason=cka_reason,
        cka_tokens=len(cka_rows(n)) if cka is not None else 0,
        cka_note=note,
    )


# ----------------------------------------------------------------------------------------------------------------
# Data for charts and files (pure)


# ----------------------------------------------------------------------------------------------------------------
# Figures (matplotlib's object-oriented API; PNG bytes for the CLI's bundle and the PDF)


# ----------------------------------------------------------------------------------------------------------------
# The comparison bundle: both runs' bundles under a/ and b/, comparison.json, cka.csv, plots, report.pdf
