"""The attention features and rollout as computed before issue 24's streaming capture (over the whole [L, H, T, T]
array of held maps): kept as the test reference that the layer-by-layer folding (core.steps.attention.
AttentionFolder, core.steps.attribution.RolloutFolder, fed by the capture pass) must equal bit for bit
(tests/test_streaming.py). Not used by the application."""

from __future__ import annotations

import numpy as np

from core.steps.attention import FEATURE_NAMES


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
    if att.ndim > 3:
        # one leading index at a time: the temporaries (float32 copy of float16 maps, mask, log) stay the size of
        # one layer, not of all the maps
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


def head_features_reference(
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
    """
    att = _check_attention(att)
    if att.ndim != 4:
        raise ValueError(f"attention must be [L, H, T, T], got shape {att.shape}")
    L, H, T, _ = att.shape
    # key j visible to row i: from the flag, or seen with weight > 0 in any head (see `visible_keys`)
    if causal is None:
        vis = np.zeros((T, T), bool)
        for l in range(L):
            vis |= (att[l] > 0).any(0)
    else:
        vis = np.tril(np.ones((T, T), bool)) if causal else np.ones((T, T), bool)
    n_vis = np.maximum(vis.sum(-1), 1).astype(np.int64)
    idx = np.arange(T)
    dist = np.abs(idx[:, None] - idx[None, :]).astype(np.float32)
    far = np.where(vis, dist, 0).max(-1)  # farthest visible key of each row, for the relative distance
    rel_rows = far > 0
    rows = idx[1:] if T > 1 else idx
    sm = None
    if special_mask is not None and np.any(special_mask):
        sm = np.asarray(special_mask, dtype=bool)
        if sm.shape != (T,):
            raise ValueError(f"special_mask must have {T} entries, got {sm.shape}")
    per_layer = []
    for l in range(L):  # one layer at a time: float16 maps (16-bit models) are widened one layer at a time
        a = att[l].astype(np.float32, copy=False)  # [H, T, T]
        ent_l, norm_l = attention_entropy(a, n_vis)
        per_row_dist = np.einsum("hij,ij->hi", a, dist).astype(np.float64)  # [H, T]
        rel_l = (per_row_dist[:, rel_rows] / far[rel_rows]).mean(-1) if rel_rows.any() else np.zeros(H)
        per_layer.append(
            (
                ent_l,
                norm_l,
                per_row_dist.mean(-1),
                rel_l,
                a[:, rows, 0].mean(-1, dtype=np.float64),
                a[:, rows, np.maximum(rows - 1, 0)].mean(-1, dtype=np.float64) if T > 1 else np.zeros(H),
                np.einsum("hii->hi", a)[:, rows].mean(-1, dtype=np.float64),
                a[:, idx[:-1], idx[:-1] + 1].mean(-1, dtype=np.float64) if T > 1 else np.zeros(H),
                # special columns first: no full copy
                a[..., sm][:, rows].sum(-1, dtype=np.float64).mean(-1) if sm is not None else np.zeros(H),
                a.max(-1).mean(-1, dtype=np.float64),
            )
        )
    ent, norm, mdist, rel, first, prev, self_, nxt, special, maxw = (
        np.stack([np.asarray(layer[i], dtype=np.float64) for layer in per_layer]) for i in range(10)
    )
    cols = [ent, np.nan_to_num(norm, nan=0.0), mdist, rel, first, prev, self_, nxt, special, maxw]
    feats = np.stack([np.asarray(c, dtype=np.float64).reshape(L * H) for c in cols], axis=1)
    extras = {"entropy": ent, "normalized_entropy": norm, "mean_distance": mdist, "n_visible": n_vis}
    return feats, list(FEATURE_NAMES), extras


def attention_rollout_reference(att: np.ndarray) -> np.ndarray:
    """Attention rollout R = Â_L ⋯ Â_1 with Â_l = row_normalise(A_l + I), A_l = mean over heads of layer l.

    att [L, H, T, T] (rows sum to 1) → R float64 [T, T]; R[i, j] = share of position i's final representation that
    flows from input token j; rows of R sum to 1.
    """
    import torch

    att = np.asarray(att)
    if att.ndim != 4 or att.shape[-1] != att.shape[-2]:
        raise ValueError(f"attention must be [L, H, T, T], got shape {att.shape}")
    L, _, T, _ = att.shape

    def a_hat(l: int) -> torch.Tensor:
        """Â_l in float64 (float16 maps are averaged in float64, not in float16)."""
        A = att[l].mean(0, dtype=np.float64)
        A[np.arange(T), np.arange(T)] += 1.0
        A /= A.sum(-1, keepdims=True)
        return torch.from_numpy(A)

    # one layer at a time (two T×T float64 matrices, not L of them: 0.74 GB for TinyLlama at 2048 tokens); the
    # product through torch: its thread pool is the one the forward pass just used (numpy's BLAS pool would contend
    # with torch's spinning threads), 1.7× numpy's single thread at 512 tokens
    R = a_hat(0)
    for l in range(1, L):
        R = a_hat(l) @ R
    return R.numpy()
