"""Geometry of a pool of token states drawn from many texts: pure functions over arrays, no model, no UI.

Notation: X is [N, D] (N pooled points of one layer, D hidden width); `groups` is int [N], the text each point
comes from (0 … G−1). Everything is computed in float64.

Point estimates (one layer):
  spectrum(X)               eigenvalues λ (descending) and eigenvectors of the scatter of the centred pool
  spectral_metrics(λ)       effective_rank, participation_ratio, intrinsic_dim_95 (the single-text definitions of
                            core.steps.metrics, applied to the pool) and anisotropy_top_pc = λ_max / Σλ
  anisotropy_cosine(X, g)   mean cosine over all pairs of points from DIFFERENT texts (Ethayarajh 2019), exact
  twonn_dimension(X)        TwoNN (Facco et al. 2017) after removing exact duplicate points
  linearity(X, Y)           LLM-Microscope's Procrustes score between consecutive layers

Resampling texts (`pooled_resamples`): a resample gives every text a weight w_g (with replacement: a count).
Nothing is recomputed from the points per resample; each statistic is a cheap function of per-text blocks
that are built once per layer:
  * anisotropy_cosine: the G×G matrix of block sums of the normalised Gram matrix, S_gh = Σ_{i∈g, j∈h} û_i·û_j;
    a resample's cross-text sum is wᵀSw − Σ_g w_g² S_gg = ‖Σ_g w_g s_g‖² − Σ_g w_g² ‖s_g‖² (s_g = Σ_{i∈g} û_i),
    exact, from the [G, D] text sums (never a G×G matrix: 10 000 texts stay cheap).
  * the spectral metrics: per-text scatter blocks Z_gᵀZ_g in the pool's top-k principal basis (k = `rank`);
    a resample's scatter there is Σ_g w_g Z_gᵀZ_g − N_w μ_w μ_wᵀ (a weighted sum of blocks, then one k×k eigvalsh),
    its total variance outside the basis is exact (per-text traces and text sums), and that remainder is spread
    over the tail with the full pool's tail shape. Exact whenever the pool's rank is ≤ k; at w = 1 it returns
    the point estimate exactly.
  * linearity: the same blocks for layer l−1 plus cross blocks Z^{l−1}_gᵀ Z^l_g give the projection of layer l on
    layer l−1 within the two top-k bases; the truncation bias measured at w = 1 is added back (exact if rank ≤ k).
  * twonn_dimension: each point's K nearest neighbours (with their texts) are found once; a resample takes every
    point's first two neighbours among the texts it drew, and weights each μ by its text's count.
The same block formulas serve every resampling scheme of core.studies.intervals (bootstrap counts, delete-a-group
jackknife and half-sample 0/1 weights): `pooled_resamples` evaluates the schemes asked for, `intervals_from` turns
the values into each metric's interval (INTERVAL_METHOD, chosen by the coverage simulation of
core.studies.interval_sim) and clips it to the metric's BOUNDS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.steps.metrics import (
    VARIANCE_THRESHOLD,
    _effective_rank_from_s2,
    _intrinsic_dim_from_s2,
    _participation_ratio_from_s2,
)
from core.studies import intervals

#: Pooled-metric names, in display order (linearity is defined for layers ≥ 1 only).
POOLED_METRICS = (
    "effective_rank",
    "participation_ratio",
    "intrinsic_dim_95",
    "twonn_dimension",
    "anisotropy_cosine",
    "anisotropy_top_pc",
    "linearity",
)
SPECTRAL = ("effective_rank", "participation_ratio", "intrinsic_dim_95", "anisotropy_top_pc")
TWONN_DISCARD = 0.1
NEIGHBOURS = 24  # neighbours kept per point for the TwoNN bootstrap
DUPLICATE_RTOL = 1e-5  # rows closer than this × RMS row norm count as duplicates
CONFIDENCE = 0.95
#: The range of every pooled metric; intervals are clipped to it (the estimate always lies within it).
BOUNDS: dict[str, tuple[float, float]] = {
    "effective_rank": (1.0, np.inf),
    "participation_ratio": (1.0, np.inf),
    "intrinsic_dim_95": (1.0, np.inf),
    "twonn_dimension": (0.0, np.inf),
    "anisotropy_cosine": (-1.0, 1.0),
    "anisotropy_top_pc": (0.0, 1.0),
    "linearity": (0.0, 1.0),
}
#: Metrics that move in whole steps (a count of directions): their expectation usually lies between two whole
#: numbers. Each is the ceiling of a continuous companion (SMOOTH) whose jackknife gives its interval
#: (intervals.jackknife_step); any other method on such a metric is widened by half a step on each side.
STEP: dict[str, float] = {"intrinsic_dim_95": 1.0}
#: The continuous companion of every STEP metric, named as in PooledResamples.smooth / the samples:
#: d95 = ⌈intrinsic_dim_95_smooth⌉, the number of components where the cumulative explained variance crosses 0.95,
#: interpolated linearly between whole components.
SMOOTH: dict[str, str] = {"intrinsic_dim_95": "intrinsic_dim_95_smooth"}
#: The interval method of every pooled metric (core.studies.intervals), chosen by the coverage simulation of
#: core.studies.interval_sim (bench/bench_intervals.py; table in the README's Corpus section).
INTERVAL_METHOD: dict[str, str] = {
    "effective_rank": "jackknife_t",
    "participation_ratio": "jackknife_t",
    "intrinsic_dim_95": "jackknife_step",  # a whole number: jackknife of its interpolated companion, then E⌈·⌉
    "twonn_dimension": "jackknife_t",
    "anisotropy_cosine": "jackknife_t",
    "anisotropy_top_pc": "jackknife_t",
    "linearity": "jackknife_t",
}
_CHUNK = 1024


# ----------------------------------------------------------------------------------------------------------------
# Spectra and the spectral metrics


def spectrum(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the scatter (X − x̄)ᵀ(X − x̄) of the centred pool.

    X: [N, D]. Returns (λ [r] descending, V [D, r]) for the r = min(N, D) largest eigenvalues; λ below the
    round-off floor (λ_max · max(N, D) · 10 ε) are set to 0, as core.steps.metrics does. For N < D the N×N Gram matrix
    is decomposed and its eigenvectors mapped back (V columns of zero eigenvalues are then 0).
    """
    Xc = np.asarray(X, dtype=np.float64)
    Xc = Xc - Xc.mean(axis=0, keepdims=True)
    N, D = Xc.shape
    if N >= D:
        lam, V = np.linalg.eigh(Xc.T @ Xc)
        lam, V = lam[::-1], V[:, ::-1]
    else:
        lam, U = np.linalg.eigh(Xc @ Xc.T)
        lam, U = lam[::-1], U[:, ::-1]
        sig = np.sqrt(np.clip(lam, 0, None))
        V = np.divide(Xc.T @ U, sig, out=np.zeros((D, N)), where=sig > 0)
    floor = (lam[0] if lam.size else 0.0) * max(N, D) * np.finfo(np.float64).eps * 10
    lam = np.where(lam > floor, lam, 0.0)
    return lam, V


def spectral_metrics(lam: np.ndarray) -> dict[str, float]:
    """effective_rank, participation_ratio, intrinsic_dim_95 (core.steps.metrics' formulas on the eigenvalues λ of the
    centred pool) and anisotropy_top_pc = λ_max / Σλ. λ: [r] descending (or [B, r]); NaN for an all-zero λ."""
    lam = np.asarray(lam, dtype=np.float64)
    total = lam.sum(-1)
    top = np.divide(lam[..., 0], total, out=np.full_like(total, np.nan), where=total > 0)
    out = {
        "effective_rank": _effective_rank_from_s2(lam),
        "participation_ratio": _participation_ratio_from_s2(lam),
        "intrinsic_dim_95": _intrinsic_dim_from_s2(lam),
        "anisotropy_top_pc": top,
    }
    return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in out.items()}


def intrinsic_dim_smooth(lam: np.ndarray, threshold: float = VARIANCE_THRESHOLD) -> np.ndarray | float:
    """The fractional d95: where the cumulative explained variance c_j = Σ_{i≤j} λ_i / Σλ (c_0 = 0) crosses
    `threshold`, interpolated linearly between whole components:

        f = (k − 1) + (threshold − c_{k−1}) / (c_k − c_{k−1}),   k = intrinsic_dim_95 (the first k with c_k ≥ threshold)

    so f ∈ (k − 1, k] and ⌈f⌉ = k exactly. f is continuous in λ (as k drops by one, f passes through k − 1), which
    is what the jackknife needs. λ: [r] descending (or [B, r]); NaN for an all-zero λ."""
    lam = np.asarray(lam, dtype=np.float64)
    lam2 = lam.reshape(-1, lam.shape[-1]) if lam.ndim else lam.reshape(1, 1)
    k = _intrinsic_dim_from_s2(lam2, threshold)
    total = lam2.sum(-1, keepdims=True)
    c = np.divide(np.cumsum(lam2, -1), total, out=np.zeros_like(lam2), where=total > 0)
    c = np.concatenate([np.zeros((c.shape[0], 1)), c], axis=1)  # c[:, j] = c_j, j = 0 … r
    ok = np.isfinite(k)
    ki = np.where(ok, k, 1).astype(np.int64)
    rows = np.arange(c.shape[0])
    c_k, c_km1 = c[rows, ki], c[rows, ki - 1]
    gap = c_k - c_km1
    frac = np.divide(threshold - c_km1, gap, out=np.ones_like(gap), where=gap > 0)
    f = np.where(ok, ki - 1 + np.clip(frac, np.finfo(np.float64).eps, 1.0), np.nan)
    return float(f[0]) if lam.ndim <= 1 else f.reshape(lam.shape[:-1])


def anisotropy_top_pc(X: np.ndarray) -> float:
    """λ_max / Σλ of the covariance of the centred X [N, D] (LLM-Microscope's anisotropy). 1/D when isotropic."""
    return float(spectral_metrics(spectrum(X)[0])["anisotropy_top_pc"])


# ----------------------------------------------------------------------------------------------------------------
# Anisotropy (cosine)


def unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero. X: [N, D] -> [N, D] float64."""
    X = np.asarray(X, dtype=np.float64)
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return np.divide(X, n, out=np.zeros_like(X), where=n > 0)


def group_sums(X: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Σ_{i ∈ g} X_i for every group g: [G, D]."""
    out = np.zeros((n_groups, X.shape[1]))
    np.add.at(out, np.asarray(groups), X)
    return out


def anisotropy_cosine(X: np.ndarray, groups: np.ndarray) -> float:
    """Mean cos(x_i, x_j) over all ordered pairs (i, j) whose points come from different texts (Ethayarajh 2019).

    Exact: with û the unit rows and s_g = Σ_{i∈g} û_i (the block sums of the normalised Gram matrix ÛÛᵀ),
    Σ_{g(i)≠g(j)} û_i·û_j = ‖Σ_g s_g‖² − Σ_g ‖s_g‖², over N² − Σ_g n_g² pairs. NaN with fewer than two texts.
    X: [N, D]; groups: int [N].
    """
    groups = np.asarray(groups)
    G = int(groups.max()) + 1 if groups.size else 0
    s = group_sums(unit_rows(X), groups, G)
    n = np.bincount(groups, minlength=G).astype(np.float64)
    pairs = n.sum() ** 2 - (n**2).sum()
    if pairs <= 0:
        return float("nan")
    return float((np.sum(s.sum(0) ** 2) - np.sum(s**2)) / pairs)


# ----------------------------------------------------------------------------------------------------------------
# TwoNN


@dataclass(frozen=True)
class TwoNN:
    """TwoNN estimate: `dimension`, the `n_points` used and the `n_duplicates` removed before it."""

    dimension: float
    n_points: int
    n_duplicates: int


def unique_rows(X: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the first occurrence of every distinct row of X [N, D] (exact equality)."""
    X = np.ascontiguousarray(X)
    if X.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    _, first = np.unique(X, axis=0, return_index=True)
    return np.sort(first)


def twonn_fit(mu: np.ndarray, weights: np.ndarray | None = None, discard: float = TWONN_DISCARD) -> float:
    """Slope through the origin of −ln(1 − F(μ)) against ln μ after dropping the largest `discard` of μ.

    With unit weights this is scikit-dimension's `TwoNN` (linear method): μ sorted, F_i = i/N for the kept
    i ≤ ⌊(1 − discard) N⌋, d = Σ x y / Σ x². With integer weights w (a bootstrap resample) a point counts as w copies.
    mu: [N] ratios r₂/r₁ (finite, ≥ 1). NaN when fewer than two points remain.
    """
    mu = np.asarray(mu, dtype=np.float64)
    w = np.ones_like(mu) if weights is None else np.rint(np.asarray(weights, dtype=np.float64))
    ok = np.isfinite(mu) & (w > 0)
    mu, w = mu[ok], w[ok]
    order = np.argsort(mu, kind="stable")
    mu, w = mu[order], w[order]
    total = int(w.sum())
    n_keep = int(total * (1 - discard))
    if n_keep < 2:
        return float("nan")
    # a point of weight w occupies the positions c−w+1 … c of the sorted, expanded sample (c = cumulative count);
    # its copies at positions ≤ n_keep are kept, each with its own F_j = j / total
    end = np.cumsum(w)
    start = end - w
    kept_end = np.minimum(end, n_keep)
    kept = np.clip(kept_end - start, 0, None)
    y = -np.log(1 - np.arange(1, n_keep + 1) / total)
    ycum = np.concatenate([[0.0], np.cumsum(y)])
    ysum = ycum[kept_end.astype(np.int64)] - ycum[np.minimum(start, n_keep).astype(np.int64)]
    x = np.log(mu)
    den = float(np.sum(kept * x * x))
    return float(np.sum(x * ysum) / den) if den > 0 else float("nan")


def _neighbours(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other points of every row of X [N, D]: (indices [N, k], distances [N, k]), nearest first.

    Euclidean distances from ‖a‖² + ‖b‖² − 2 a·b in float64, in row chunks (memory O(chunk · N)).
    """
    X = np.asarray(X, dtype=np.float64)
    N = X.shape[0]
    k = min(k, N - 1)
    sq = np.einsum("ij,ij->i", X, X)
    idx = np.zeros((N, k), dtype=np.int64)
    dist = np.zeros((N, k))
    for a in range(0, N, _CHUNK):
        b = min(N, a + _CHUNK)
        d2 = sq[a:b, None] + sq[None, :] - 2.0 * (X[a:b] @ X.T)
        np.maximum(d2, 0.0, out=d2)
        d2[np.arange(b - a), np.arange(a, b)] = np.inf  # not its own neighbour
        part = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < N - 1 else np.argsort(d2, axis=1)[:, :k]
        pd = np.take_along_axis(d2, part, axis=1)
        order = np.argsort(pd, axis=1, kind="stable")
        idx[a:b] = np.take_along_axis(part, order, axis=1)
        dist[a:b] = np.sqrt(np.take_along_axis(pd, order, axis=1))
    return idx, dist


@dataclass
class Neighbours:
    """Nearest neighbours of the distinct points of a pool.

    distinct: [M] indices into X of the points kept (first of each group of duplicates); nbr: [M, K] indices into
    `distinct` of each point's nearest other kept points, nearest first; dist: [M, K]; valid: [M, K] (False where
    a neighbour was a removed duplicate: such entries sort last).
    """

    distinct: np.ndarray
    nbr: np.ndarray
    dist: np.ndarray
    valid: np.ndarray


def distinct_neighbours(X: np.ndarray, k: int = NEIGHBOURS, rel_tol: float = DUPLICATE_RTOL) -> Neighbours:
    """Remove duplicate rows of X [N, D], then find each remaining point's k nearest neighbours.

    Duplicates: exactly equal rows, and rows closer than rel_tol × (RMS row norm) to an earlier row (the same
    token with the same context gives the same state, up to the float32 round-off of a batched pass).
    """
    X64 = np.asarray(X, dtype=np.float64)
    exact = unique_rows(X)
    M = exact.size
    if M < 3:
        z = np.zeros((M, 0))
        return Neighbours(exact, z.astype(np.int64), z, z.astype(bool))
    nbr, dist = _neighbours(X64[exact], k)
    tol = rel_tol * float(np.sqrt(np.mean(np.einsum("ij,ij->i", X64, X64))))
    dup = ((dist <= tol) & (nbr < np.arange(M)[:, None])).any(axis=1) if tol > 0 else np.zeros(M, dtype=bool)
    if not dup.any():
        return Neighbours(exact, nbr, dist, np.ones(nbr.shape, dtype=bool))
    keep = np.logical_not(dup)
    new = np.cumsum(keep) - 1
    nb, ds = nbr[keep], dist[keep]
    valid = keep[nb]
    order = np.argsort(~valid, axis=1, kind="stable")  # kept neighbours first, still nearest first
    nb, ds, valid = (np.take_along_axis(a, order, axis=1) for a in (nb, ds, valid))
    return Neighbours(exact[keep], np.where(valid, new[nb], 0), np.where(valid, ds, np.inf), valid)


def _twonn_weighted(
    nb: Neighbours,
    owner: np.ndarray,
    w: np.ndarray,
    pts: np.ndarray | None,
    X: np.ndarray,
    discard: float = TWONN_DISCARD,
) -> tuple[float, np.ndarray | None]:
    """TwoNN of the distinct points whose text has weight w > 0, each μ counted w times. r₁, r₂ are the first two
    stored neighbours among the drawn texts, or recomputed exactly when fewer than two of them were drawn.
    Returns (d, the float64 points if they had to be loaded, for reuse)."""
    M = nb.distinct.size
    if M < 3:
        return float("nan"), pts
    wp = w[owner]
    present = wp > 0
    avail = nb.valid & (w[owner[nb.nbr]] > 0)
    cnt = np.cumsum(avail, axis=1)
    rows = np.arange(M)
    r1 = nb.dist[rows, np.argmax(cnt >= 1, axis=1)].copy()
    r2 = nb.dist[rows, np.argmax(cnt >= 2, axis=1)].copy()
    short = present & (cnt[:, -1] < 2)
    if short.any():
        if pts is None:
            pts = np.asarray(X[nb.distinct], dtype=np.float64)
        sel = np.flatnonzero(present)
        for j in np.flatnonzero(short):
            cand = sel[sel != j]
            if cand.size < 2:
                present[j] = False
                continue
            d = np.sort(np.linalg.norm(pts[cand] - pts[j], axis=1))[:2]
            r1[j], r2[j] = d[0], d[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = r2 / r1
    return twonn_fit(mu[present], wp[present], discard), pts


def twonn_dimension(X: np.ndarray, discard: float = TWONN_DISCARD, rel_tol: float = DUPLICATE_RTOL) -> TwoNN:
    """TwoNN intrinsic dimension (Facco et al. 2017) of the rows of X [N, D].

    Duplicate rows (exact, or within float round-off: see `distinct_neighbours`) are removed first (r₁ = 0 would
    make μ infinite) and counted; then μ_i = r₂/r₁ from the two nearest neighbours and `twonn_fit`. NaN with fewer
    than three distinct points.
    """
    X = np.asarray(X)
    nb = distinct_neighbours(X, 2 + 4, rel_tol)
    n_dup = X.shape[0] - nb.distinct.size
    owner = np.zeros(nb.distinct.size, dtype=np.int64)
    d, _ = _twonn_weighted(nb, owner, np.ones(1), None, X, discard)
    return TwoNN(d, int(nb.distinct.size), int(n_dup))


# ----------------------------------------------------------------------------------------------------------------
# Linearity


def linearity(X: np.ndarray, Y: np.ndarray) -> float:
    """LLM-Microscope's linearity score between two layers: centre X and Y [N, D] over points, divide each by its
    Frobenius norm, A = argmin ‖XA − Y‖_F (least squares), score = 1 − ‖XA − Y‖²_F.

    Computed as ‖P_X Y‖² / ‖Y‖² (P_X the projection on X's column space, from X's eigen-decomposition), which is
    the same number. 1 when Y is a linear map of X; needs N well above D, else any Y is fitted.
    """
    lam, V = spectrum(X)
    Xc = np.asarray(X, dtype=np.float64) - np.mean(X, axis=0, dtype=np.float64)
    Yc = np.asarray(Y, dtype=np.float64) - np.mean(Y, axis=0, dtype=np.float64)
    return _linearity_from(lam, V, Xc, Yc)


def _linearity_from(lam: np.ndarray, V: np.ndarray, Xc: np.ndarray, Yc: np.ndarray) -> float:
    den = float(np.sum(Yc * Yc))
    pos = lam > 0
    if den <= 0 or not pos.any():
        return float("nan")
    W = Yc.T @ (Xc @ V[:, pos])  # [D_y, r]: Yᵀ X v_k; ‖Uᵀ Y‖² = Σ_k ‖Yᵀ X v_k‖² / λ_k
    return float(np.sum(W * W / lam[pos]) / den)


# ----------------------------------------------------------------------------------------------------------------
# Pooled metrics of one layer, and the blocks its bootstrap reuses


@dataclass
class LayerBlocks:
    """What the bootstrap of one layer reuses (built once by `layer_blocks`). G texts, k basis vectors.

    n: [G] points per text; trace: [G] Σ_{i∈g} ‖x_i − x̄‖²; sums_full: [G, D] Σ_{i∈g} (x_i − x̄);
    Z: [N, k] coordinates in the top-k principal basis; zsum: [G, k]; blocks: [G, k, k] Z_gᵀZ_g (None when that
    would be too large: then a resample's scatter is formed from Z directly); tail: [r − k] the full pool's
    eigenvalues after the k-th; unit_sums: [G, D] Σ_{i∈g} û_i (their inner products are the block sums of the
    normalised Gram matrix);
    neighbours: the nearest neighbours of the M distinct points (see `distinct_neighbours`); owner: [M] their texts.
    """

    groups: np.ndarray
    n: np.ndarray
    trace: np.ndarray
    sums_full: np.ndarray
    Z: np.ndarray
    zsum: np.ndarray
    blocks: np.ndarray | None
    tail: np.ndarray
    unit_sums: np.ndarray
    owner: np.ndarray
    neighbours: Neighbours


@dataclass
class LayerEstimate:
    """Point estimates of one layer plus the blocks for its bootstrap."""

    values: dict[str, float]
    n_points: int
    n_distinct: int
    lam: np.ndarray
    V: np.ndarray
    Xc: np.ndarray
    blocks: LayerBlocks | None


BLOCK_BYTES = 256 * 1024 * 1024


def layer_estimate(
    X: np.ndarray, groups: np.ndarray, n_groups: int, *, rank: int = 128, with_blocks: bool = True
) -> LayerEstimate:
    """Pooled metrics of one layer (all but linearity) and, if asked, the blocks of its bootstrap.

    X: [N, D] pooled states; groups: int [N] text of each point (0 … n_groups−1).
    """
    X = np.asarray(X)
    groups = np.asarray(groups, dtype=np.int64)
    N = X.shape[0]
    Xc = np.asarray(X, dtype=np.float64)
    Xc = Xc - Xc.mean(axis=0, keepdims=True)
    lam, V = spectrum(X)
    values = dict(spectral_metrics(lam))
    values["anisotropy_cosine"] = anisotropy_cosine(X, groups) if n_groups > 1 else float("nan")
    nb = distinct_neighbours(X, NEIGHBOURS)
    M = nb.distinct.size
    values["twonn_dimension"], _ = _twonn_weighted(nb, groups[nb.distinct], np.ones(n_groups), None, X)
    blocks = None
    if with_blocks:
        k = int(min(rank, int((lam > 0).sum()) or 1, V.shape[1]))
        Vk = V[:, :k]
        Z = Xc @ Vk
        zsum = group_sums(Z, groups, n_groups)
        if n_groups * k * k * 8 <= BLOCK_BYTES:
            bl = np.zeros((n_groups, k, k))
            order = np.argsort(groups, kind="stable")
            bounds = np.searchsorted(groups[order], np.arange(n_groups + 1))
            for g in range(n_groups):
                rows = Z[order[bounds[g] : bounds[g + 1]]]
                if rows.size:
                    bl[g] = rows.T @ rows
        else:
            bl = None
        sums_full = group_sums(Xc, groups, n_groups)
        U = group_sums(unit_rows(X), groups, n_groups)
        blocks = LayerBlocks(
            groups=groups,
            n=np.bincount(groups, minlength=n_groups).astype(np.float64),
            trace=np.bincount(groups, weights=np.einsum("ij,ij->i", Xc, Xc), minlength=n_groups),
            sums_full=sums_full,
            Z=Z,
            zsum=zsum,
            blocks=bl,
            tail=lam[k:].copy(),
            unit_sums=U,
            owner=groups[nb.distinct],
            neighbours=nb,
        )
    return LayerEstimate(values=values, n_points=N, n_distinct=int(M), lam=lam, V=V, Xc=Xc, blocks=blocks)


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap


def resample_weights(n_groups: int, n_resamples: int, seed: int) -> np.ndarray:
    """[B, G] integer counts: each row draws G texts with replacement (seeded); core.studies.intervals'."""
    return intervals.bootstrap_weights(n_groups, n_resamples, seed)


def _weighted_sum(W: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Σ_g W[b, g] blocks[g] for every row b: [B, G] × [G, k1, k2] -> [B, k1, k2], as one matrix product."""
    G, k1, k2 = blocks.shape
    return (W @ blocks.reshape(G, k1 * k2)).reshape(W.shape[0], k1, k2)


def _weighted_scatter(b: LayerBlocks, W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every resample (rows of W [B, G]): scatter in the top-k basis [B, k, k], N_w [B], mean coords [B, k]."""
    Nw = W @ b.n
    mu = (W @ b.zsum) / Nw[:, None]
    if b.blocks is not None:
        S = _weighted_sum(W, b.blocks)
    else:
        c = W[:, b.groups]  # [B, N] weight of every point
        S = np.stack([(b.Z * c[i][:, None]).T @ b.Z for i in range(W.shape[0])])
    S -= Nw[:, None, None] * mu[:, :, None] * mu[:, None, :]
    return S, Nw, mu


def _total_variance(b: LayerBlocks, W: np.ndarray, Nw: np.ndarray) -> np.ndarray:
    """Exact total scatter trace of every resample: Σ_g w_g tr_g − ‖Σ_g w_g s_g‖² / N_w."""
    S = W @ b.sums_full
    return W @ b.trace - np.einsum("bd,bd->b", S, S) / Nw


def bootstrap_spectral(b: LayerBlocks, W: np.ndarray) -> dict[str, np.ndarray]:
    """The four spectral metrics of every resample (see the module docstring) and d95's continuous companion
    (SMOOTH). W: [B, G] -> {name: [B]}."""
    S, Nw, _ = _weighted_scatter(b, W)
    top = np.linalg.eigvalsh(S)[:, ::-1]
    top = np.clip(top, 0.0, None)
    total = _total_variance(b, W, Nw)
    rest = np.clip(total - top.sum(1), 0.0, None)
    tail_sum = float(b.tail.sum())
    if b.tail.size and tail_sum > 0:
        tail = b.tail[None, :] * (rest / tail_sum)[:, None]
        lam = np.concatenate([top, tail], axis=1)
    else:
        lam = top
    lam = -np.sort(-lam, axis=1)
    out = {k: np.asarray(v, dtype=np.float64) for k, v in spectral_metrics(lam).items()}
    out[SMOOTH["intrinsic_dim_95"]] = np.asarray(intrinsic_dim_smooth(lam), dtype=np.float64)
    return out


def bootstrap_cosine(b: LayerBlocks, W: np.ndarray) -> np.ndarray:
    """anisotropy_cosine of every resample, exact: (wᵀSw − Σ w_g² S_gg) / ((w·n)² − Σ w_g² n_g²). -> [B]."""
    S = W @ b.unit_sums
    num = np.einsum("bd,bd->b", S, S) - (W**2) @ np.einsum("gd,gd->g", b.unit_sums, b.unit_sums)
    pairs = (W @ b.n) ** 2 - (W**2) @ (b.n**2)
    return np.divide(num, pairs, out=np.full(W.shape[0], np.nan), where=pairs > 0)


def bootstrap_twonn(b: LayerBlocks, X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """twonn_dimension of every resample: each distinct point present when its text was drawn, weighted by the
    count, μ from its first two neighbours among the drawn texts (recomputed exactly in the rare case that fewer
    than two of its K stored neighbours were drawn). X: [N, D] the layer's points. -> [B]."""
    out = np.full(W.shape[0], np.nan)
    pts = None
    for i, w in enumerate(W):
        out[i], pts = _twonn_weighted(b.neighbours, b.owner, w, pts, X)
    return out


def bootstrap_linearity(prev: LayerBlocks, cur: LayerBlocks, W: np.ndarray, estimate: float) -> np.ndarray:
    """linearity(l−1 → l) of every resample within the two top-k bases, shifted by the truncation bias at w = 1
    (so the full sample gives `estimate` exactly). -> [B]."""
    G = W.shape[1]
    k1, k2 = prev.Z.shape[1], cur.Z.shape[1]
    cross: np.ndarray | None = None
    if G * k1 * k2 * 8 <= BLOCK_BYTES:
        cross = np.zeros((G, k1, k2))
        order = np.argsort(prev.groups, kind="stable")
        bounds = np.searchsorted(prev.groups[order], np.arange(G + 1))
        for g in range(G):
            r = order[bounds[g] : bounds[g + 1]]
            if r.size:
                cross[g] = prev.Z[r].T @ cur.Z[r]

    def weighted_cross(Wm: np.ndarray) -> np.ndarray:
        if cross is not None:
            return _weighted_sum(Wm, cross)
        c = Wm[:, prev.groups]
        return np.stack([(prev.Z * c[i][:, None]).T @ cur.Z for i in range(Wm.shape[0])])

    def score(Wm: np.ndarray) -> np.ndarray:
        A, Nw, mx = _weighted_scatter(prev, Wm)
        my = (Wm @ cur.zsum) / Nw[:, None]
        B = weighted_cross(Wm) - Nw[:, None, None] * mx[:, :, None] * my[:, None, :]
        den = _total_variance(cur, Wm, Nw)
        try:  # tr(Bᵀ A⁻¹ B) for every resample in one batched solve (A is positive definite in the top-k basis)
            num = np.einsum("bij,bij->b", B, np.linalg.solve(A, B))
        except np.linalg.LinAlgError:  # a singular resample: pseudo-inverse, one by one
            num = np.empty(Wm.shape[0])
            for i in range(Wm.shape[0]):
                lam, Q = np.linalg.eigh(A[i])
                pos = lam > lam.max() * 1e-10
                P = Q[:, pos].T @ B[i]
                num[i] = np.sum(P * P / lam[pos][:, None])
        return np.divide(num, den, out=np.full(Wm.shape[0], np.nan), where=den > 0)

    shift = estimate - score(np.ones((1, G)))[0]
    return score(W) + shift


# ----------------------------------------------------------------------------------------------------------------
# Intervals: every resampling scheme through the same block formulas, one interval method per metric


def resample_layer(
    cur: LayerEstimate,
    prev: LayerEstimate | None,
    X: np.ndarray,
    W: np.ndarray,
    linearity_estimate: float,
    metrics: frozenset[str] | None = None,
) -> dict[str, np.ndarray]:
    """The pooled metrics of one layer (all, or those in `metrics`) on every row of the weight matrix W [R, G]
    (bootstrap counts, jackknife or subsample 0/1 weights alike): {metric: [R]}, with the SMOOTH companion of a
    STEP metric asked for; linearity only when `prev`
    (layer l−1) has blocks. The four spectral metrics come from one eigen-decomposition per row."""
    assert cur.blocks is not None
    want = frozenset(POOLED_METRICS) if metrics is None else metrics
    out: dict[str, np.ndarray] = {}
    if want & set(SPECTRAL):
        keep = want | {SMOOTH[m] for m in want & set(SMOOTH)}
        out.update({k: v for k, v in bootstrap_spectral(cur.blocks, W).items() if k in keep})
    if "anisotropy_cosine" in want:
        out["anisotropy_cosine"] = bootstrap_cosine(cur.blocks, W)
    if "twonn_dimension" in want:
        out["twonn_dimension"] = bootstrap_twonn(cur.blocks, X, W)
    if "linearity" in want and prev is not None and prev.blocks is not None:
        out["linearity"] = bootstrap_linearity(prev.blocks, cur.blocks, W, linearity_estimate)
    return out


def scheme_weights(
    scheme: str, n_groups: int, n_resamples: int, seed: int, columns: np.ndarray | None = None
) -> np.ndarray:
    """The weight matrix of one resampling scheme (core.studies.intervals): "bootstrap" and "subsample" take
    `n_resamples` rows, "jackknife" min(G, n_resamples) delete-a-group rows. Each scheme has its own seed stream.
    `columns`: only those texts' columns (the same numbers)."""
    if scheme == "bootstrap":
        return intervals.bootstrap_weights(n_groups, n_resamples, seed, columns=columns)
    if scheme == "jackknife":
        return intervals.jackknife_weights(n_groups, n_resamples, seed + 1, columns=columns)
    if scheme == "subsample":
        return intervals.subsample_weights(n_groups, n_resamples, seed + 2, columns=columns)
    raise ValueError(f"unknown resampling scheme {scheme!r}")


def present_groups(groups: np.ndarray, n_groups: int) -> np.ndarray | None:
    """The texts that own at least one pooled point, when fewer than all (and at least two): the resampling then
    runs on their columns only. Every resampled statistic is W @ (per-text sums), and a text without points has zero
    sums, so leaving its column out changes no number, while memory and time stop growing with the corpus (the weights
    were [R, G]: 10⁵ texts · 200 resamples · 8 B = 160 MB per scheme). None: keep every text."""
    present = np.unique(np.asarray(groups, dtype=np.int64))
    return present if 2 <= present.size < n_groups else None


@dataclass
class PooledResamples:
    """Point estimates and the resampled values of every scheme asked for.

    estimate: {metric: [L+1]}; samples: {scheme: {metric or SMOOTH name: [L+1, R]}} (NaN rows where a metric is
    undefined, e.g. linearity at layer 0); smooth: {SMOOTH name: [L+1]} the continuous companions' estimates;
    n_points, n_distinct: [L+1].
    """

    estimate: dict[str, np.ndarray]
    samples: dict[str, dict[str, np.ndarray]]
    smooth: dict[str, np.ndarray]
    n_points: np.ndarray
    n_distinct: np.ndarray
    n_groups: int


def pooled_resamples(
    layers: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    *,
    schemes: dict[str, frozenset[str] | None] | tuple[str, ...] = ("bootstrap",),
    n_resamples: int = 200,
    seed: int = 0,
    rank: int = 128,
    on_layer: Callable[[int], None] | None = None,
) -> PooledResamples:
    """Every pooled metric at every layer, and its values under each resampling scheme in `schemes` (none when
    n_resamples = 0 or a single text): a tuple of scheme names (every metric resampled), or {scheme: the metrics
    it is needed for (None: all)}. layers: [L+1, N, D] (float32 is fine); groups: int [N]."""
    wanted = dict(schemes) if isinstance(schemes, dict) else dict.fromkeys(schemes)
    n_layers = layers.shape[0]
    est = {m: np.full(n_layers, np.nan) for m in POOLED_METRICS}
    n_points = np.zeros(n_layers, dtype=np.int64)
    n_distinct = np.zeros(n_layers, dtype=np.int64)
    resample = n_resamples > 0 and n_groups > 1
    present = present_groups(groups, n_groups) if resample else None
    weights = {s: scheme_weights(s, n_groups, n_resamples, seed, columns=present) for s in wanted} if resample else {}
    n_used = n_groups
    if present is not None:  # the texts with points, renumbered 0 … len(present)−1 (the weights' columns)
        groups, n_used = np.searchsorted(present, np.asarray(groups, dtype=np.int64)), int(present.size)
    names = (*POOLED_METRICS, *SMOOTH.values())
    samples = {s: {m: np.full((n_layers, W.shape[0]), np.nan) for m in names} for s, W in weights.items()}
    smooth = {name: np.full(n_layers, np.nan) for name in SMOOTH.values()}
    prev: LayerEstimate | None = None
    for layer in range(n_layers):
        X = layers[layer]
        cur = layer_estimate(X, groups, n_used, rank=rank, with_blocks=resample)
        for m, v in cur.values.items():
            est[m][layer] = v
        smooth[SMOOTH["intrinsic_dim_95"]][layer] = intrinsic_dim_smooth(cur.lam)
        n_points[layer], n_distinct[layer] = cur.n_points, cur.n_distinct
        if prev is not None:
            est["linearity"][layer] = _linearity_from(prev.lam, prev.V, prev.Xc, cur.Xc)
        for m in POOLED_METRICS:  # round-off can put a bounded value a few ulps outside (linearity 1 + 1e-13)
            est[m][layer] = np.clip(est[m][layer], *BOUNDS[m])
        for s, W in weights.items():
            for m, vals in resample_layer(cur, prev, X, W, est["linearity"][layer], wanted[s]).items():
                samples[s][m][layer] = vals
        if prev is not None:
            prev.Xc = np.zeros((0, 0))  # release the previous layer's copy
        prev = cur
        if on_layer is not None:
            on_layer(layer)
    return PooledResamples(est, samples, smooth, n_points, n_distinct, n_groups)


def intervals_from(
    res: PooledResamples, methods: dict[str, str], level: float = CONFIDENCE
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(low, high) {metric: [L+1]} with each metric's method (`methods`), clipped to the metric's BOUNDS. A
    whole-number (STEP) metric: "jackknife_step" works on its SMOOTH companion; any other method is widened by half
    a STEP. NaN where the schemes a method needs were not resampled."""
    n_layers = res.n_points.shape[0]
    lo = {m: np.full(n_layers, np.nan) for m in POOLED_METRICS}
    hi = {m: np.full(n_layers, np.nan) for m in POOLED_METRICS}
    for m in POOLED_METRICS:
        needs = intervals.METHODS[methods[m]]
        if not all(s in res.samples for s in needs):
            continue
        for layer in range(n_layers):
            e = float(res.estimate[m][layer])
            if methods[m] == "jackknife_step" and m in STEP:
                name = SMOOTH[m]
                vals = {s: res.samples[s][name][layer] for s in needs}
                f = float(res.smooth[name][layer])
                a, b = intervals.interval(methods[m], e, vals, res.n_groups, level, smooth=f, step=STEP[m])
            else:
                vals = {s: res.samples[s][m][layer] for s in needs}
                a, b = intervals.interval(methods[m], e, vals, res.n_groups, level)
                if m in STEP:
                    a, b = intervals.widen_for_step(a, b, STEP[m])
            lo[m][layer], hi[m][layer] = intervals.clip_interval(a, b, BOUNDS[m])
    return lo, hi


@dataclass
class PooledGeometry:
    """Pooled metrics per layer with their intervals.

    estimate, ci_low, ci_high: {metric: [L+1]} (linearity[0] is NaN); n_points: [L+1] points in the pool;
    n_distinct: [L+1] distinct points (TwoNN input); n_duplicates = n_points − n_distinct;
    methods: {metric: interval method} (core.studies.intervals).
    """

    estimate: dict[str, np.ndarray]
    ci_low: dict[str, np.ndarray]
    ci_high: dict[str, np.ndarray]
    n_points: np.ndarray
    n_distinct: np.ndarray
    methods: dict[str, str]


def pooled_geometry(
    layers: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    *,
    n_resamples: int = 200,
    seed: int = 0,
    rank: int = 128,
    methods: dict[str, str] | None = None,
    on_layer: Callable[[int], None] | None = None,
) -> PooledGeometry:
    """Every pooled metric at every layer, with its 95 % interval over texts by the method of `methods` (default
    INTERVAL_METHOD, chosen by simulation: core.studies.interval_sim). Only the resampling schemes those methods
    need are run, each for the metrics that need it (`n_resamples` rows each; the jackknife min(G, n_resamples)
    groups).

    layers: [L+1, N, D] pooled states (float32 is fine: each layer is converted to float64 in turn);
    groups: int [N]; n_resamples: 0 (or a single text) gives NaN intervals. `on_layer(l)` is called after layer l.
    """
    chosen = dict(INTERVAL_METHOD if methods is None else methods)
    schemes: dict[str, frozenset[str] | None] = {}
    for m in POOLED_METRICS:
        for s in intervals.METHODS[chosen[m]]:
            schemes[s] = frozenset({m} | (schemes.get(s) or frozenset()))
    res = pooled_resamples(
        layers, groups, n_groups, schemes=schemes, n_resamples=n_resamples, seed=seed, rank=rank, on_layer=on_layer
    )
    lo, hi = intervals_from(res, chosen)
    return PooledGeometry(res.estimate, lo, hi, res.n_points, res.n_distinct, chosen)
