"""The information-flow contributions as computed before issue 24 (one einsum of the [J, I, D] token parts per
chunk of queries, then the L1 distances): kept as the test reference the batched path of `core.steps.flow` must
equal (tests/test_flow.py). Not used by the application."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from core.model.arch import frozen_norm
from core.steps.flow import (
    CHUNK_FLOATS,
    EPS,
    HEAD_STORE_MIN,
    FlowSection,
    _frozen_apply,
    _normalise,
    _proximity,
    contributions,
)

if TYPE_CHECKING:
    from core.steps.dla import Decomposition


def compute_flow_reference(
    dec: Decomposition, tokens: list[str], position: int, chunk_floats: int = CHUNK_FLOATS
) -> FlowSection:
    """All contributions of the decomposition pass `dec` (see the module docstring). Cost per block: the [T, T, D]
    token parts in chunks of queries (only the sources a query attends to: causal models skip the upper triangle),
    plus the head parts of the edges ≥ HEAD_STORE_MIN."""
    import torch

    P = dec.parts
    L, H = P.n_layers, P.heads.n_heads
    T = dec.embed.shape[0]
    attn = np.zeros((L, T, T), dtype=np.float32)
    attn_res = np.zeros((L, T), dtype=np.float32)
    attn_bias = np.zeros((L, T), dtype=np.float32)
    mlp = np.zeros((L, T), dtype=np.float32)
    mlp_res = np.zeros((L, T), dtype=np.float32)
    hl: list[np.ndarray] = []
    ht: list[np.ndarray] = []
    hs: list[np.ndarray] = []
    hh: list[np.ndarray] = []
    hw: list[np.ndarray] = []
    kv_of = torch.tensor([P.heads.kv_head(h) for h in range(H)])
    with torch.inference_mode():
        for l, b in enumerate(P.blocks):
            W = P.head_out_weights(b).detach().float().cpu()  # [H, dh, D]
            v = dec.values[l][:, kv_of]  # [T, H, dh]
            vW = torch.einsum("thd,hde->the", v, W)  # [T_j, H, D]: v_j^h W_O^h
            A = dec.attentions[l].float()  # [H, T_i, T_j] (a 16-bit model's maps widened here)
            bias = P.out_bias(b)
            bvec = bias.detach().float().cpu() if bias is not None else None
            scale = None
            if b.attn_update_norm is not None:  # Gemma-2: the parts pass the update norm, frozen per query
                sc, shift, centre = frozen_norm(b.attn_update_norm, dec.attn_out[l])
                scale = (sc, centre)
                extra = shift if bvec is None else sc * (bvec - bvec.mean() if centre else bvec) + shift
                bvec = None if not bool((extra != 0).any()) else extra  # per query [T, D] or [D]
            x = dec.resid_pre[l]  # [T, D]
            y = dec.attn_sum[l]  # [T, D]: x + attention update (post-LN: before the LayerNorm)
            reach = A.amax(0) > 0  # [T_i, T_j]: sources a query attends to
            last_j = int(reach.nonzero()[:, 1].max()) + 1 if bool(reach.any()) else T
            per_query = max(1, chunk_floats // max(1, last_j * vW.shape[-1]))
            for i0 in range(0, T, per_query):
                i1 = min(T, i0 + per_query)
                I = i1 - i0
                J = int(reach[i0:i1].nonzero()[:, 1].max()) + 1 if bool(reach[i0:i1].any()) else 1
                tok = torch.einsum("hij,jhd->jid", A[:, i0:i1, :J], vW[:J])  # [J, I, D]: Σ_h A^h_ij v_j^h W_O^h
                if scale is not None:
                    tok = _frozen_apply(tok, scale[0][i0:i1], scale[1])
                extras = [x[i0:i1][None]]
                if bvec is not None:
                    extras.append((bvec[i0:i1] if bvec.dim() == 2 else bvec.expand(I, -1))[None])
                whole = y[i0:i1]
                prox = _proximity(torch.cat([tok, *extras]), whole)  # [J + 1 (+1), I]
                total = prox.sum(0)  # [I]
                c = _normalise(prox, total)
                attn[l, i0:i1, :J] = c[:J].t().numpy()
                attn_res[l, i0:i1] = c[J].numpy()
                if bvec is not None:
                    attn_bias[l, i0:i1] = c[J + 1].numpy()
                # per-head parts of the edges worth a tooltip: proximity of A^h_ij v_j^h W_O^h under y_i's normaliser
                big = (c[:J].t() >= HEAD_STORE_MIN).nonzero()  # [E, 2] (i - i0, j)
                if big.numel():
                    ii, jj = big[:, 0], big[:, 1]
                    hp = A[:, i0:i1][:, ii, jj].t()[..., None] * vW[jj]  # [E, H, D]
                    if scale is not None:
                        hp = _frozen_apply(hp, scale[0][i0:i1][ii][:, None], scale[1])
                    hprox = _proximity(hp.permute(1, 0, 2), whole[ii])  # [H, E]
                    hw_e = (hprox / total[ii].clamp(min=EPS)).t()  # [E, H]
                    keep = (hw_e >= HEAD_STORE_MIN).nonzero()
                    if keep.numel():
                        e, h = keep[:, 0], keep[:, 1]
                        hl.append(np.full(e.shape[0], l, dtype=np.int32))
                        ht.append((ii[e] + i0).numpy().astype(np.int32))
                        hs.append(jj[e].numpy().astype(np.int32))
                        hh.append(h.numpy().astype(np.int32))
                        hw.append(hw_e[e, h].numpy().astype(np.float32))
            cm = contributions(torch.stack([dec.mlp_update[l], dec.resid_mid[l]]), dec.mlp_sum[l])  # [2, T]
            mlp[l], mlp_res[l] = cm[0].numpy(), cm[1].numpy()

    def cat(xs: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(xs).astype(dtype) if xs else np.zeros(0, dtype=dtype)

    notes = []
    if P.residual == "post_ln":
        notes.append(
            "post-LN model: each state is split as the sum its residual LayerNorm receives (x + update), "
            "before the norm"
        )
    return FlowSection(
        n_layers=L,
        n_heads=H,
        tokens=list(tokens),
        attn=attn,
        attn_residual=attn_res,
        attn_bias=attn_bias,
        mlp=mlp,
        mlp_residual=mlp_res,
        head_layer=cat(hl, np.int32),
        head_target=cat(ht, np.int32),
        head_source=cat(hs, np.int32),
        head_index=cat(hh, np.int32),
        head_weight=cat(hw, np.float32),
        position=int(position),
        notes=notes,
    )
