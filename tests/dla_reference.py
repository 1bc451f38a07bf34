"""The promoted / suppressed token tables as computed before issue 24 (one [2L, D'] × W_Uᵀ product and top-k per
position of the window, then one more for the target's heads): kept as the test reference the batched path of
`core.steps.dla.compute_dla` (`promoted_tables`) must equal (tests/test_dla_batched.py). Not used by the
application."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from core.steps.dla import _topk, _unembed_weight, block_update_rows, carry, promote_window

if TYPE_CHECKING:
    from core.steps.dla import Decomposition


def promoted_tables_reference(dec: Decomposition, position: int, k: int) -> dict[str, np.ndarray]:
    """The eight tables of DLASection (promote_/demote_ block and head ids and logits) the old way."""
    P = dec.parts
    W_U, _ = _unembed_weight(P)
    L, H = P.n_layers, P.heads.n_heads
    T = dec.embed.shape[0]
    with torch.inference_mode():
        c = carry(dec, position)
        positions = promote_window(T, position, L, W_U.shape[1], W_U.shape[0])
        bi, bl, di, dl = [], [], [], []
        for t in positions:
            ct = c if t == position else carry(dec, t)
            rows = block_update_rows(ct, L).reshape(2 * L, -1) @ W_U.t()  # [2L, V]
            a, b_, cc, d = _topk(rows, k)
            bi.append(a.reshape(L, 2, -1))
            bl.append(b_.reshape(L, 2, -1))
            di.append(cc.reshape(L, 2, -1))
            dl.append(d.reshape(L, 2, -1))
        head_rows = torch.stack([c.vectors[i] for i, comp in enumerate(c.components) if comp == "attention"])
        hi, hl, hdi, hdl = _topk(head_rows @ W_U.t(), k)
    return {
        "promote_positions": np.asarray(positions),
        "promote_block_ids": np.stack(bi),
        "promote_block_logits": np.stack(bl),
        "demote_block_ids": np.stack(di),
        "demote_block_logits": np.stack(dl),
        "promote_head_ids": hi.reshape(L, H, -1),
        "promote_head_logits": hl.reshape(L, H, -1),
        "demote_head_ids": hdi.reshape(L, H, -1),
        "demote_head_logits": hdl.reshape(L, H, -1),
    }
