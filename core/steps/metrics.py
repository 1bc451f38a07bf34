"""Layer metrics on hidden states: pure functions over arrays, no model, no UI.

Every function takes `H` of shape [tokens, hidden] (one layer) or, for the batched entry point, `[layers, tokens,
hidden]`. The spectral metrics share one exact fast path: the eigenvalues of the smaller Gram matrix of the
token-centred states (T×T when tokens < hidden, else D×D) equal the squared singular values of the centred matrix.
Everything is computed in float64.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: Column order of layer_metrics.csv (after "layer").
METRIC_NAMES = ("effective_rank", "participation_ratio", "intrinsic_dim_95", "activation_entropy", "cosine_to_input")

VARIANCE_THRESHOLD = 0.95
_EPS = 1e-12
#: Layers computed side by side by `layer_metrics`, each in one BLAS thread (the callers run it in
#: core.infra.threads.single_threaded): two single-threaded 512 × 512 eigendecompositions at once beat one on two
#: threads, whose tridiagonal reduction is half matrix–vector work (13 layers: 86 vs 137 ms on a 2-core Xeon).
PARALLEL_LAYERS = 2
#: Layers of fewer elements (T × D) run one after another (a short text: starting threads would cost more), and so do
#: layers of more, so that a long text's float64 temporaries stay the size of one layer (2**22 = 32 MB in float64).
PARALLEL_MIN_ELEMENTS = 2**15
PARALLEL_MAX_ELEMENTS = 2**22


def centre(H: np.ndarray) -> np.ndarray:
    """H − mean over tokens. H: [T, D] or [L, T, D]; centring is over the token axis (-2)."""
    H = np.asarray(H, dtype=np.float64)
    return H - H.mean(axis=-2, keepdims=True)


def squared_singular_values(H: np.ndarray) -> np.ndarray:
    """Squared singular values of the token-centred H, sorted descending, via the smaller Gram matrix.

    H: [T, D] -> [min(T, D)], or [L, T, D] -> [L, min(T, D)]. Eigenvalues below the round-off floor are set to 0.
    """
    Hc = centre(H)
    T, D = Hc.shape[-2:]
    gram = Hc @ np.swapaxes(Hc, -1, -2) if T <= D else np.swapaxes(Hc, -1, -2) @ Hc
    lam = np.linalg.eigvalsh(gram)[..., ::-1]
    floor = lam[..., :1] * max(T, D) * np.finfo(np.float64).eps * 10
    return np.where(lam > floor, lam, 0.0)


def _effective_rank_from_s2(s2: np.ndarray) -> np.ndarray:
    s = np.sqrt(s2)
    total = s.sum(-1, keepdims=True)
    p = np.divide(s, total, out=np.zeros_like(s), where=total > 0)
    ent = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return np.where(total[..., 0] > 0, np.exp(ent), np.nan)


def _participation_ratio_from_s2(s2: np.ndarray) -> np.ndarray:
    num = s2.sum(-1) ** 2
    den = (s2**2).sum(-1)
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def _intrinsic_dim_from_s2(s2: np.ndarray, threshold: float = VARIANCE_THRESHOLD) -> np.ndarray:
    total = s2.sum(-1, keepdims=True)
    frac = np.divide(np.cumsum(s2, -1), total, out=np.zeros_like(s2), where=total > 0)
    k = (frac < threshold - 1e-12).sum(-1) + 1
    return np.where(total[..., 0] > 0, k, np.nan).astype(np.float64)


def effective_rank(H: np.ndarray) -> float:
    """Effective rank (Roy & Vetterli 2007): exp(−Σ_k p_k ln p_k), p_k = σ_k / Σ_j σ_j.

    σ are the singular values of H centred over tokens. H: [T, D]. Lies in [1, min(T−1, D)]; NaN if all σ = 0.
    """
    return float(_effective_rank_from_s2(squared_singular_values(H)))


def participation_ratio(H: np.ndarray) -> float:
    """Participation ratio: (Σ_k λ_k)² / Σ_k λ_k², λ the eigenvalues of the covariance of the centred H.

    Scale-free, so λ_k ∝ σ_k² is used directly. H: [T, D]. 1 for rank-1 data, the width for isotropic data.
    """
    return float(_participation_ratio_from_s2(squared_singular_values(H)))


def intrinsic_dim(H: np.ndarray, threshold: float = VARIANCE_THRESHOLD) -> float:
    """Intrinsic dimensionality (PCA, 95 %): the smallest k with λ_1 + … + λ_k ≥ threshold · Σ_j λ_j.

    λ the covariance eigenvalues of the centred H sorted descending. H: [T, D].
    """
    return float(_intrinsic_dim_from_s2(squared_singular_values(H), threshold))


def activation_entropy(H: np.ndarray) -> float | np.ndarray:
    """Mean over tokens t of −Σ_j p_tj ln p_tj, p_tj = |h_tj| / Σ_j |h_tj| (nats); H is not centred.

    H: [T, D] -> float, or [L, T, D] -> [L]. A token whose row is all zero contributes 0. At most ln D.
    """
    A = np.abs(np.asarray(H, dtype=np.float64))
    tot = A.sum(-1)
    # −Σ p ln p with p = a / tot equals ln tot − Σ a ln a / tot: one pass over the array instead of four
    a_log_a = np.einsum("...j,...j->...", A, np.log(A, out=np.zeros_like(A), where=A > 0))
    safe = np.where(tot > 0, tot, 1.0)
    ent = np.where(tot > 0, np.log(safe) - a_log_a / safe, 0.0)
    out = ent.mean(-1)
    return float(out) if np.ndim(out) == 0 else out


def cosine_to_input(H: np.ndarray, H0: np.ndarray) -> float | np.ndarray:
    """Mean over tokens t of cos(H[t], H0[t]) = ⟨H[t], H0[t]⟩ / (‖H[t]‖ ‖H0[t]‖).

    H: [T, D] or [L, T, D]; H0: [T, D] (the embedding output). 1 for a layer compared with itself.
    """
    H = np.asarray(H, dtype=np.float64)
    H0 = np.asarray(H0, dtype=np.float64)
    num = (H * H0).sum(-1)
    den = np.linalg.norm(H, axis=-1) * np.linalg.norm(H0, axis=-1)
    cos = num / np.maximum(den, _EPS)
    out = cos.mean(-1)
    return float(out) if np.ndim(out) == 0 else out


def layer_metrics(hidden: np.ndarray, keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """All layer metrics for every layer.

    hidden: [L+1, T, D] (layer 0 = embedding output). keep: optional bool [T], the token rows to use.
    Returns {metric name: [L+1] float64}, equal to applying each metric function layer by layer (the spectral
    metrics share one eigendecomposition per layer). The layers are converted to float64 one at a time (two at a
    time for mid-sized layers: PARALLEL_LAYERS), so the temporaries are the size of a layer or two, not of all of
    them (fresh memory costs page faults: 0.1–0.3 s per 150 MB on a busy virtual machine).
    """
    H32 = np.asarray(hidden)
    rows = np.asarray(keep, dtype=bool) if keep is not None else None
    n_layers1 = H32.shape[0]
    n_tokens = int(rows.sum()) if rows is not None else H32.shape[1]
    if n_tokens == 0:
        nan = np.full(n_layers1, np.nan)
        return {name: nan.copy() for name in METRIC_NAMES}

    def layer(i: int) -> np.ndarray:
        h = H32[i] if rows is None else H32[i][rows]
        return np.asarray(h, dtype=np.float64)

    H0 = layer(0)
    s2 = np.empty((n_layers1, min(n_tokens, H32.shape[2])))
    ent = np.empty(n_layers1)
    cos = np.empty(n_layers1)

    def one(i: int) -> None:
        Hl = H0 if i == 0 else layer(i)
        s2[i] = squared_singular_values(Hl)
        ent[i] = activation_entropy(Hl)
        cos[i] = cosine_to_input(Hl, H0)

    threads = min(PARALLEL_LAYERS, os.cpu_count() or 1, n_layers1)
    if threads > 1 and PARALLEL_MIN_ELEMENTS <= n_tokens * H32.shape[2] <= PARALLEL_MAX_ELEMENTS:
        # numpy and LAPACK release the GIL; each layer's numbers are those of the one-by-one loop, bit for bit
        with ThreadPoolExecutor(threads, thread_name_prefix="layer-metrics") as pool:
            list(pool.map(one, range(n_layers1)))
    else:
        for i in range(n_layers1):
            one(i)
    return {
        "effective_rank": _effective_rank_from_s2(s2),
        "participation_ratio": _participation_ratio_from_s2(s2),
        "intrinsic_dim_95": _intrinsic_dim_from_s2(s2),
        "activation_entropy": ent,
        "cosine_to_input": cos,
    }
