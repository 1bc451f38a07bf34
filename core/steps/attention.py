"""Attention analyses: entropy, attention distance, head features, head clustering and role labels.

Pure functions over attention arrays (numpy, no model, no UI) plus the analysis step `run_step`, which fills
`result.attention`. Shapes: L = layers, H = heads, T = tokens; an attention array is [..., T, T] with query rows
that sum to 1 over the keys the row may see.

Which keys a row may see is read from the structural zeros of the attention itself (a masked key gets exactly
zero weight after the softmax; a visible key never does, unless its weight underflows in *every* head of *every*
layer), or forced with `causal=True` (row i sees keys 0..i, i.e. i+1 keys).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.infra.serialize import serializable
from core.infra.threads import single_threaded
from core.steps.context import StepContext

log = logging.getLogger(__name__)

#: Role labels, in the order they are tested (the first whose test passes wins; see `head_roles`).
ROLES = ("previous-token", "first-token/sink", "self", "broad", "other")

#: Thresholds of the role labels (documented in `head_roles`).
ROLE_THRESHOLDS: dict[str, float] = {
    "previous-token": 0.5,  # mean weight on key i-1 (rows i ≥ 1)
    "first-token/sink": 0.5,  # mean weight on key 0 or on the special tokens, whichever is larger (rows i ≥ 1)
    "self": 0.5,  # mean weight on key i (rows i ≥ 1)
    "broad": 0.8,  # normalised entropy (1 = uniform over the visible keys)
}

#: Columns of `AttentionAnalysis.features`, in order.
FEATURE_NAMES = (
    "entropy",
    "normalized_entropy",
    "mean_distance",
    "relative_distance",
    "first_token",
    "previous_token",
    "self",
    "next_token",
    "special_tokens",
    "max_weight",
)

#: Candidate cluster counts when the number is chosen by silhouette.
K_RANGE = (2, 3, 4, 5, 6)
KMEANS_SEED = 0
KMEANS_N_INIT = 4


@serializable
@dataclass(frozen=True)
class AttentionSection:
    """Per-head attention statistics, head features, clusters and roles.

    entropy, normalized_entropy, mean_distance: float64 [L, H] (see `attention_entropy`, `mean_attention_distance`).
    feature_names: the F column names of `features`; features: float64 [L*H, F], row = layer*H + head.
    clusters: int64 [L*H]; n_clusters; silhouette: mean silhouette of the chosen clustering (None when undefined).
    projection: float64 [L*H, 2], PCA of the standardised features. roles: L*H labels from ROLES.
    role_thresholds: the thresholds used by the role labels. cluster_method: how the clusters were chosen.
    """

    entropy: np.ndarray
    normalized_entropy: np.ndarray
    mean_distance: np.ndarray
    feature_names: list[str]
    features: np.ndarray
    clusters: np.ndarray
    n_clusters: int
    silhouette: float | None
    projection: np.ndarray
    roles: list[str]
    role_thresholds: dict[str, float]
    cluster_method: str = ""
    n_visible: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n_layers(self) -> int:
        return int(self.entropy.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.entropy.shape[1])

    def role_grid(self) -> list[list[str]]:
        """Roles as [L][H]."""
        H = self.n_heads
        return [self.roles[l * H : (l + 1) * H] for l in range(self.n_layers)]


# ----------------------------------------------------------------------------------------------------------------
# Pure functions


def _check_attention(att: np.ndarray) -> np.ndarray:
    att = np.asarray(att)
    if att.ndim < 2 or att.shape[-1] != att.shape[-2]:
        raise ValueError(f"attention must be [..., T, T], got shape {att.shape}")
    if att.shape[-1] == 0:
        raise ValueError("attention has no tokens")
    return att


def visible_keys(att: np.ndarray, causal: bool | None = None) -> np.ndarray:
    """Number of keys each query row may see: int64 [T].

    causal=True: n_i = i + 1. causal=False: n_i = T. causal=None: n_i = #{j : a_ij > 0 in any head of any layer},
    i.e. read from the structural zeros of `att` [..., T, T] (causal and padding masks both give exact zeros).
    """
    att = _check_attention(att)
    T = att.shape[-1]
    if causal is True:
        return np.arange(1, T + 1, dtype=np.int64)
    if causal is False:
        return np.full(T, T, dtype=np.int64)
    flat = att.reshape(-1, T, T)
    seen = (flat > 0).any(axis=0)
    return np.maximum(seen.sum(-1), 1).astype(np.int64)


def row_entropy(att: np.ndarray) -> np.ndarray:
    """Entropy of each query row in nats: h_i = −Σ_j a_ij ln a_ij (0 ln 0 = 0). att [..., T, T] → [..., T]."""
    att = _check_attention(att)
    if att.ndim > 2:
        # one map at a time: the temporaries (float32 copy of float16 maps, mask, log) stay the size of one head's
        # map (TinyLlama at 2048 tokens: 16 MiB, not the 0.5 GiB of a layer)
        return np.stack([row_entropy(att[i]) for i in range(att.shape[0])])
    a = att.astype(np.float32, copy=False)
    # ln a where a > 0, 0 elsewhere (causal maps are half zeros): a third of the time of where(a > 0, a, 1) + log
    log_a = np.log(a, out=np.zeros_like(a), where=a > 0)
    return 0.0 - np.einsum("...ij,...ij->...i", a, log_a).astype(np.float64)


def attention_entropy(
    att: np.ndarray, n_visible: np.ndarray | None = None, causal: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean attention entropy over query rows, raw and normalised.

    entropy = (1/T) Σ_i h_i with h_i = −Σ_j a_ij ln a_ij (nats);
    normalized = mean over rows with n_i > 1 of h_i / ln n_i, n_i = keys row i may see (see `visible_keys`);
    rows with one visible key have h_i = 0 by necessity and are left out (NaN when no row is left).
    att [..., T, T] → (entropy [...], normalized [...]). Uniform rows give ln n_i and 1; one-hot rows give 0 and 0.
    """
    att = _check_attention(att)
    n = visible_keys(att, causal) if n_visible is None else np.asarray(n_visible)
    h = row_entropy(att)
    ent = h.mean(-1)
    keep = n > 1
    if not keep.any():
        return ent, np.full(ent.shape, np.nan)
    norm = (h[..., keep] / np.log(n[keep].astype(np.float64))).mean(-1)
    return ent, norm


def mean_attention_distance(att: np.ndarray) -> np.ndarray:
    """Mean attention distance: (1/T) Σ_i Σ_j a_ij |i − j| (in tokens). att [..., T, T] → [...]."""
    att = _check_attention(att)
    T = att.shape[-1]
    idx = np.arange(T)
    dist = np.abs(idx[:, None] - idx[None, :]).astype(np.float32)
    return np.einsum("...ij,ij->...", att.astype(np.float32, copy=False), dist).astype(np.float64) / T


class AttentionFolder:
    """The head features of `head_features`, folded in one layer at a time (`add(layer, maps [H, T, T])`, layers
    in order), so that the maps of all L layers are never needed at once: what each layer leaves behind is its
    row entropies and row distances ([H, T] each) and eight per-head means; the parts that depend on the keys every
    row may see (normalised entropy, relative distance) are finished in `result()`, once the visible keys are known
    (read from the structural zeros of every layer's maps when `causal` is None). The same arithmetic, in the same
    order, as over the whole array: the numbers are equal bit for bit.
    """

    def __init__(self, T: int, special_mask: list[bool] | np.ndarray | None = None, causal: bool | None = None) -> None:
        if T < 1:
            raise ValueError("attention has no tokens")
        self.T = T
        self.causal = causal
        self.vis: np.ndarray | None = None
        if causal is not None:
            self.vis = np.tril(np.ones((T, T), bool)) if causal else np.ones((T, T), bool)
        else:
            self.vis = np.zeros((T, T), bool)
        idx = np.arange(T)
        self.dist = np.abs(idx[:, None] - idx[None, :]).astype(np.float32)
        self.sm: np.ndarray | None = None
        if special_mask is not None and np.any(special_mask):
            sm = np.asarray(special_mask, dtype=bool)
            if sm.shape != (T,):
                raise ValueError(f"special_mask must have {T} entries, got {sm.shape}")
            self.sm = sm
        self.row_entropy: list[np.ndarray] = []  # per layer [H, T] float64
        self.row_distance: list[np.ndarray] = []  # per layer [H, T] float64
        self.means: list[tuple[np.ndarray, ...]] = []  # per layer: first, prev, self, next, special, max [H]

    @property
    def n_layers(self) -> int:
        return len(self.means)

    def add(self, layer: int, maps: np.ndarray) -> None:
        """Fold in layer `layer`'s maps [H, T, T] (float32, or float16 widened here); layers come in order."""
        maps = _check_attention(maps)
        if layer != self.n_layers:
            raise ValueError(f"layer {layer} came out of order (expected {self.n_layers})")
        if maps.ndim != 3 or maps.shape[-1] != self.T:
            raise ValueError(f"a layer's attention must be [H, {self.T}, {self.T}], got shape {maps.shape}")
        T = self.T
        if self.causal is None:
            assert self.vis is not None
            for h in range(maps.shape[0]):  # one head at a time: no [H, T, T] boolean temporary
                self.vis |= maps[h] > 0
        idx = np.arange(T)
        rows = idx[1:] if T > 1 else idx
        # one head at a time: float16 maps (16-bit models) are widened one head's map at a time (TinyLlama at 2048
        # tokens: 16 MiB, not the 512 MiB of a layer in float32), with the per-row arithmetic of the whole layer
        heads = [self._head(maps[h], idx, rows) for h in range(maps.shape[0])]
        self.row_entropy.append(np.stack([head[0] for head in heads]))
        self.row_distance.append(np.stack([head[1] for head in heads]))
        self.means.append(tuple(np.array([head[2 + i] for head in heads], dtype=np.float64) for i in range(6)))

    def _head(self, head_map: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> tuple[Any, ...]:
        """(row entropies [T], row distances [T], first, previous, self, next, special, max weight) of one head's
        map [T, T]."""
        T = self.T
        a = head_map.astype(np.float32, copy=False)
        sm = self.sm
        return (
            row_entropy(a),
            np.einsum("ij,ij->i", a, self.dist).astype(np.float64),
            a[rows, 0].mean(dtype=np.float64),
            a[rows, np.maximum(rows - 1, 0)].mean(dtype=np.float64) if T > 1 else 0.0,
            np.diagonal(a)[rows].mean(dtype=np.float64),
            a[idx[:-1], idx[:-1] + 1].mean(dtype=np.float64) if T > 1 else 0.0,
            # special columns first: no full copy
            a[:, sm][rows].sum(-1, dtype=np.float64).mean() if sm is not None else 0.0,
            a.max(-1).mean(dtype=np.float64),
        )

    def result(self) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
        """(features [L*H, F], FEATURE_NAMES, extras) exactly as `head_features` documents them."""
        if not self.means:
            raise ValueError("no layer was folded in")
        assert self.vis is not None
        L, H = self.n_layers, self.means[0][0].shape[0]
        n_vis = np.maximum(self.vis.sum(-1), 1).astype(np.int64)
        far = np.where(self.vis, self.dist, 0).max(-1)  # farthest visible key of each row, for the relative distance
        rel_rows = far > 0
        keep = n_vis > 1
        per_layer = []
        for l in range(L):
            h = self.row_entropy[l]
            ent_l = h.mean(-1)
            norm_l = (h[..., keep] / np.log(n_vis[keep].astype(np.float64))).mean(-1) if keep.any() else None
            if norm_l is None:
                norm_l = np.full(ent_l.shape, np.nan)
            per_row_dist = self.row_distance[l]
            rel_l = (per_row_dist[:, rel_rows] / far[rel_rows]).mean(-1) if rel_rows.any() else np.zeros(H)
            per_layer.append((ent_l, norm_l, per_row_dist.mean(-1), rel_l, *self.means[l]))
        ent, norm, mdist, rel, first, prev, self_, nxt, special, maxw = (
            np.stack([np.asarray(layer[i], dtype=np.float64) for layer in per_layer]) for i in range(10)
        )
        cols = [ent, np.nan_to_num(norm, nan=0.0), mdist, rel, first, prev, self_, nxt, special, maxw]
        feats = np.stack([np.asarray(c, dtype=np.float64).reshape(L * H) for c in cols], axis=1)
        extras = {"entropy": ent, "normalized_entropy": norm, "mean_distance": mdist, "n_visible": n_vis}
        return feats, list(FEATURE_NAMES), extras

    def section(self, n_clusters: int | None = None) -> AttentionSection:
        """The attention section of the folded layers (clusters, projection and roles from the features)."""
        import sklearn.cluster  # noqa: F401  (loaded before single_threaded() looks up the thread pools)

        with single_threaded():
            return _section(self.result(), n_clusters)


def head_features(
    att: np.ndarray, special_mask: list[bool] | np.ndarray | None = None, causal: bool | None = None
) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """Feature vector of every head. att [L, H, T, T] → (features [L*H, F], FEATURE_NAMES, extras).

    Columns (rows r = query positions; "rows ≥ 1" means r = 1..T−1 when T > 1, all rows otherwise):
      entropy, normalized_entropy: `attention_entropy`;  mean_distance: `mean_attention_distance`;
      relative_distance: (1/T) Σ_i Σ_j a_ij |i−j| / max_j∈vis(i) |i−j| over rows whose max distance > 0;
      first_token: mean over rows ≥ 1 of a_i0;   previous_token: mean over rows ≥ 1 of a_i,i−1;
      self: mean over rows ≥ 1 of a_ii;   next_token: mean over rows 0..T−2 of a_i,i+1 (0 for causal heads);
      special_tokens: mean over rows ≥ 1 of Σ_{j special} a_ij (0 without special tokens);
      max_weight: mean over rows of max_j a_ij.
    extras: {"entropy", "normalized_entropy", "mean_distance": [L, H], "n_visible": [T]}.
    Key j is visible to row i by the flag `causal`, or (None) when it has weight > 0 in any head of any layer.
    Computed layer by layer with `AttentionFolder`.
    """
    att = _check_attention(att)
    if att.ndim != 4:
        raise ValueError(f"attention must be [L, H, T, T], got shape {att.shape}")
    folder = AttentionFolder(att.shape[-1], special_mask, causal)
    for l in range(att.shape[0]):
        folder.add(l, att[l])
    return folder.result()


def standardize(X: np.ndarray) -> np.ndarray:
    """Column z-scores: (X − mean) / std; constant columns become 0. X [N, F] → [N, F]."""
    X = np.asarray(X, dtype=np.float64)
    mu = X.mean(0)
    sd = X.std(0)
    return np.divide(X - mu, sd, out=np.zeros_like(X), where=sd > 1e-12)


def pca_2d(X: np.ndarray) -> np.ndarray:
    """Deterministic 2-D PCA projection: the centred X times its top two right singular vectors.

    X [N, F] → [N, 2]. Signs are fixed so that the largest-magnitude loading of each component is positive;
    missing components (rank < 2, N < 2) are zero columns.
    """
    X = np.asarray(X, dtype=np.float64)
    N = X.shape[0]
    out = np.zeros((N, 2))
    if N < 2:
        return out
    Xc = X - X.mean(0)
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    k = int(min(2, (s > 1e-12 * max(s[0], 1e-300)).sum())) if s.size else 0
    for c in range(k):
        v = vt[c]
        if v[np.argmax(np.abs(v))] < 0:
            v = -v
        out[:, c] = Xc @ v
    return out


def cluster_heads(
    features: np.ndarray, n_clusters: int | None = None, k_range: tuple[int, ...] = K_RANGE, seed: int = KMEANS_SEED
) -> tuple[np.ndarray, int, float | None, str]:
    """K-means clustering of standardised head features (scikit-learn, fixed random_state).

    features [N, F] → (labels int64 [N], k, silhouette or None, method). With `n_clusters`, k = min(n_clusters,
    distinct rows); otherwise k maximises the mean silhouette s = mean_i (b_i − a_i) / max(a_i, b_i) over
    k ∈ k_range with 2 ≤ k ≤ distinct rows − 1. Fewer than 3 heads, or all heads identical: one cluster.
    Labels are renumbered by first appearance (head order), so they do not depend on k-means' internal order.
    """
    X = standardize(features)
    N = X.shape[0]
    distinct = len(np.unique(np.round(X, 9), axis=0)) if N else 0
    if N < 3 or distinct < 2:
        why = "fewer than 3 heads" if N < 3 else "all heads have the same features"
        return np.zeros(N, dtype=np.int64), 1 if N else 0, None, f"one cluster ({why})"
    from sklearn.cluster import KMeans  # imported before single_threaded() so that its OpenMP runtime is seen
    from sklearn.metrics import silhouette_score

    def fit(k: int) -> np.ndarray:
        with single_threaded():  # see `single_threaded`: 10-30× faster after a torch pass
            return KMeans(n_clusters=k, random_state=seed, n_init=KMEANS_N_INIT).fit_predict(X)

    def sil(labels: np.ndarray) -> float | None:
        n_lab = len(np.unique(labels))
        return float(silhouette_score(D, labels, metric="precomputed")) if 2 <= n_lab <= N - 1 else None

    sq = (X * X).sum(1)
    D = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * X @ X.T, 0.0))
    np.fill_diagonal(D, 0.0)
    if n_clusters is not None:
        k = int(max(1, min(n_clusters, distinct)))
        labels = fit(k) if k > 1 else np.zeros(N, dtype=np.int64)
        method = f"k-means, k = {k} set by the user" + (
            f" (capped at {distinct} distinct heads)" if k < n_clusters else ""
        )
        score = sil(labels) if k > 1 else None
    else:
        ks = [k for k in k_range if 2 <= k <= distinct - 1] or [2]
        best: tuple[np.ndarray, float | None, int] | None = None
        for k in ks:
            lab = fit(k)
            s = sil(lab)
            if best is None or (s is not None and (best[1] is None or s > best[1] + 1e-12)):
                best = (lab, s, k)
        assert best is not None  # ks is never empty
        labels, score, k = best
        method = f"k-means, k = {k} chosen by silhouette over k in {ks}"
    _, first = np.unique(labels, return_index=True)
    order = {old: new for new, old in enumerate(labels[np.sort(first)])}
    labels = np.array([order[x] for x in labels], dtype=np.int64)
    return labels, int(len(order)), score, method


def head_roles(features: np.ndarray, feature_names: list[str], thresholds: dict[str, float] | None = None) -> list[str]:
    """Role label of each head from its features. features [N, F] → N labels.

    Tested in this order, the first that passes wins:
      previous-token:   previous_token ≥ t_prev   (mean weight on key i−1);
      first-token/sink: max(first_token, special_tokens) ≥ t_sink;
      self:             self ≥ t_self;
      when more than one of the three passes, the one with the largest weight wins;
      broad:            normalized_entropy ≥ t_broad (attention spread nearly uniformly over the visible keys);
      other:            none of the above.
    Default thresholds: ROLE_THRESHOLDS (0.5, 0.5, 0.5, 0.8).
    """
    t = {**ROLE_THRESHOLDS, **(thresholds or {})}
    col = {n: features[:, feature_names.index(n)] for n in feature_names}
    sink = np.maximum(col["first_token"], col["special_tokens"])
    cand = np.stack([col["previous_token"], sink, col["self"]], 1)
    passes = cand >= np.array([t["previous-token"], t["first-token/sink"], t["self"]])
    roles = []
    for i in range(features.shape[0]):
        if passes[i].any():
            j = int(np.argmax(np.where(passes[i], cand[i], -np.inf)))
            roles.append(ROLES[j])
        elif col["normalized_entropy"][i] >= t["broad"]:
            roles.append("broad")
        else:
            roles.append("other")
    return roles


def analyse_attention(
    att: np.ndarray, special_mask: list[bool] | None = None, causal: bool | None = None, n_clusters: int | None = None
) -> AttentionSection:
    """All attention analyses of one capture. att [L, H, T, T] → AttentionAnalysis (see its docstring)."""
    import sklearn.cluster  # noqa: F401  (loaded before single_threaded() looks up the thread pools)

    with single_threaded():
        return _analyse(att, special_mask, causal, n_clusters)


def _analyse(
    att: np.ndarray, special_mask: list[bool] | None, causal: bool | None, n_clusters: int | None
) -> AttentionSection:
    return _section(head_features(att, special_mask, causal), n_clusters)


def _section(features: tuple[np.ndarray, list[str], dict[str, np.ndarray]], n_clusters: int | None) -> AttentionSection:
    feats, names, ex = features
    labels, k, score, method = cluster_heads(feats, n_clusters)
    return AttentionSection(
        entropy=np.asarray(ex["entropy"], dtype=np.float64),
        normalized_entropy=np.asarray(ex["normalized_entropy"], dtype=np.float64),
        mean_distance=np.asarray(ex["mean_distance"], dtype=np.float64),
        feature_names=names,
        features=feats,
        clusters=labels,
        n_clusters=k,
        silhouette=score,
        projection=pca_2d(standardize(feats)),
        roles=head_roles(feats, names),
        role_thresholds=dict(ROLE_THRESHOLDS),
        cluster_method=method,
        n_visible=np.asarray(ex["n_visible"], dtype=np.int64),
    )


def causal_flag(family: str) -> bool | None:
    """Which keys a row may see, for the attention analysis of a model family: causal LMs by the flag (row i sees
    keys 0..i), any other from the maps' structural zeros (None)."""
    return True if family == "causal_lm" else None


def run_attention(ctx: StepContext) -> AttentionSection:
    """Analysis step "Attention analysis": entropies, head features, clusters and roles of the captured attentions
    (folded in layer by layer during the capture pass when `ctx.attention_folder` holds them)."""
    folder = ctx.attention_folder
    if folder is not None:
        return folder.section(ctx.settings.n_clusters)
    return analyse_attention(ctx.attentions, ctx.special_mask, causal_flag(ctx.family), ctx.settings.n_clusters)
