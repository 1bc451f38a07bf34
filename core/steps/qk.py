"""Query–key view (BertViz's neuron view): why a head attends where it does, from its query and key vectors.

For layer l, head h and query position i:
    q = W_Q x_i (+ b_Q),  k_j = W_K x_j (+ b_K)         x = the attention input (after the block's pre-norm, if any)
    (rotary models: q, k rotated by the position's angles exactly as the model does, with the apply_rotary_pos_emb
     of the model's own modelling file and the model's own rotary embedding)
    s_j = (q · k_j) · c + m_ij,   w = softmax(s)        c = the model's scale (1/√d_head; GPT-2 may add 1/(l+1))
where m_ij = −∞ for a masked key (a later position in a causal model, padding, outside a sliding window) and 0
otherwise; q ⊙ k_j (elementwise) shows which dimensions make s_j large. Grouped-query attention (Llama, Mistral,
Qwen2 with fewer key-value heads) maps query head h to key-value head h // (H / H_kv).

How q and k are obtained: not with a second forward pass. The captured hidden states already hold every block's
input (hidden_states[l] is the input of block l), so for each layer the step applies the block's own pre-attention
norm (none in post-LN encoders) and its own q/k projections to it, both read from the architecture map
(`Block.query_key`; the scaling, rotary embedding, sliding window and GQA layout come from the map too):
about 2/12 of a forward pass's matrix work. That the result is exact is tested: the scores softmaxed with the mask
equal the attention weights the model returned, for every layer, head and query.

Memory: queries [L, H, T, d_head] and keys [L, H_kv, T, d_head], stored in float32 when together they fit in
QK_MAX_BYTES (64 MiB), else in float16 (scores then approximate to ~1e-3), else not stored (a warning says so).
For T ≥ 2·d_head they never exceed the attention tensor [L, H, T, T] the result already holds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.infra import serialize
from core.model.arch import ArchitectureNotSupported, ModelParts, QueryKey, try_model_parts

if TYPE_CHECKING:
    from core.steps.context import StepContext

log = logging.getLogger(__name__)

QK_MAX_BYTES = 64 * 2**20

#: A transformers model (PreTrainedModel); its parts come from the architecture map (core.model.arch).
HFModel = Any


def query_key_parts(model: HFModel) -> tuple[ModelParts, tuple[QueryKey, ...]]:
    """The model's parts and every block's query–key side, from the one architecture map (core/model/arch.py).

    Raises ValueError("the query–key view is not available for <architecture>: <why>") for an architecture the map
    does not know or whose scores it does not reproduce (`ModelParts.qk_refusal`: Gemma-2's attention-logit
    soft-capping, Qwen2's per-layer sliding windows, q/k norms, GPT-2 cross-attention).
    """
    parts, why = try_model_parts(model, "the query–key view")
    if parts is None:
        raise ValueError(why)
    try:
        return parts, parts.query_key()
    except ArchitectureNotSupported as exc:
        raise ValueError(str(exc)) from exc


@serialize.serializable
@dataclass(frozen=True)
class QKSection:
    """Queries and keys of every layer and head of one analysis (the query–key view reads them).

    queries: [L, H, T, d_head], keys: [L, H_kv, T, d_head] (float32, or float16 past QK_MAX_BYTES);
    rotary models hold them after the rotation, as the model multiplies them.
    scaling: float64 [L], the factor c applied to q·k in each layer.
    key_mask: bool [T], True for keys the model may attend to (False = padding).
    causal: keys after the query are masked; window: keys at distance ≥ window are masked (0: no window).
    """

    queries: np.ndarray
    keys: np.ndarray
    scaling: np.ndarray
    key_mask: np.ndarray
    causal: bool
    window: int
    rotary: bool

    @property
    def group(self) -> int:
        """Query heads per key-value head (1 without grouped-query attention)."""
        return int(self.queries.shape[1] // self.keys.shape[1])


@dataclass(frozen=True)
class QKView:
    """The view of one (layer, head, query): q [d], keys [T, d], products = q ⊙ k [T, d], scores [T] (−inf where
    masked), weights [T] (softmax of the scores), kv_head (the key-value head that served the query head).
    `layer` is the array index 0…L−1; figures, CSV files and the PDF show it as block layer + 1
    (core.present.chart_spec.block_number), the numbering of the rest of the app."""

    layer: int
    head: int
    query: int
    kv_head: int
    q: np.ndarray
    keys: np.ndarray
    products: np.ndarray
    scores: np.ndarray
    weights: np.ndarray


def allowed_keys(section: QKSection, query: int) -> np.ndarray:
    """bool [T]: the keys query position `query` may attend to."""
    T = section.key_mask.shape[0]
    j = np.arange(T)
    ok = section.key_mask.copy()
    if section.causal:
        ok &= j <= query
    if section.window:
        ok &= (query - j) < section.window
    return ok


def qk_view(section: QKSection, layer: int, head: int, query: int) -> QKView:
    """Compute the view of one (layer, head, query) from the stored arrays (float64; no model)."""
    L, H, T, _ = section.queries.shape
    if not (0 <= layer < L and 0 <= head < H and 0 <= query < T):
        raise IndexError(f"layer {layer}, head {head}, query {query} outside [{L}, {H}, {T}]")
    kv = head // section.group
    q = section.queries[layer, head, query].astype(np.float64)
    keys = section.keys[layer, kv].astype(np.float64)
    products = keys * q
    ok = allowed_keys(section, query)
    scores = np.where(ok, products.sum(axis=1) * float(section.scaling[layer]), -np.inf)
    weights = np.zeros(T)
    if ok.any():
        e = np.exp(scores[ok] - scores[ok].max())
        weights[ok] = e / e.sum()
    return QKView(layer, head, query, kv, q, keys, products, scores, weights)


def compute_qk(
    model: HFModel, hidden_states: np.ndarray, attention_mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, QKSection]:
    """Queries and keys of every layer from the captured block inputs (no forward pass).

    hidden_states: [L+1, T, D] as captured (entry l = input of block l). attention_mask: [T] (1 = real token).
    Returns (queries float32 [L, H, T, d], keys float32 [L, H_kv, T, d], the section in float32).
    """
    import torch

    parts, sides = query_key_parts(model)
    hl, rotary = parts.heads, parts.rotary
    L = len(sides)
    if hidden_states.shape[0] < L:
        raise ValueError(f"expected at least {L} block inputs, got hidden states {hidden_states.shape}")
    T = hidden_states.shape[1]
    param = next(model.parameters())
    qs, ks = [], []
    with torch.inference_mode():
        pos = torch.arange(T, device=param.device)[None]
        cos_sin = None
        for layer, side in enumerate(sides):
            x = torch.from_numpy(np.ascontiguousarray(hidden_states[layer])).to(param.device, param.dtype)[None]
            if side.pre_norm is not None:
                x = side.pre_norm(x)
            q, k = side.project(x)
            q = q.view(1, T, hl.n_heads, hl.head_dim).transpose(1, 2)
            k = k.view(1, T, hl.n_kv_heads, hl.head_dim).transpose(1, 2)
            if rotary is not None:
                if cos_sin is None:
                    cos_sin = rotary.embedding(x, pos)
                q, k = rotary.apply(q, k, *cos_sin)
            qs.append(q[0].float().cpu().numpy())
            ks.append(k[0].float().cpu().numpy())
    queries, keys = np.stack(qs), np.stack(ks)
    mask = np.ones(T, bool) if attention_mask is None else np.asarray(attention_mask).reshape(-1).astype(bool)
    section = QKSection(
        queries=queries,
        keys=keys,
        scaling=np.array([side.scaling for side in sides], np.float64),
        key_mask=mask,
        causal=parts.causal,
        window=parts.window,
        rotary=rotary is not None,
    )
    return queries, keys, section


def bounded(section: QKSection, max_bytes: int = QK_MAX_BYTES) -> tuple[QKSection | None, str | None]:
    """Apply the memory bound: float32 if it fits, else float16, else nothing. Returns (section, warning)."""
    size = section.queries.nbytes + section.keys.nbytes
    if size <= max_bytes:
        return section, None
    if size // 2 <= max_bytes:
        import dataclasses

        half = dataclasses.replace(
            section, queries=section.queries.astype(np.float16), keys=section.keys.astype(np.float16)
        )
        return half, (
            f"query–key vectors stored in float16 ({size / 2**21:.0f} MiB; float32 would exceed "
            f"{max_bytes / 2**20:.0f} MiB): the view's scores are approximate to about 1e-3"
        )
    return None, (
        f"the query–key view is off for this text: its vectors would take {size / 2**21:.0f} MiB even in "
        f"float16 (bound {max_bytes / 2**20:.0f} MiB); shorten the text"
    )


# ----------------------------------------------------------------------------------------------------------------
# Figure (core.figures.plotting: object-oriented matplotlib, no pyplot)


# ----------------------------------------------------------------------------------------------------------------
# Analysis step, bundle writer, PDF section


def run_query_key(ctx: StepContext) -> QKSection | None:
    """Analysis step: queries and keys of every layer and head from the captured hidden states (no forward pass),
    under the memory bound."""
    try:
        mask = ctx.capture.attention_mask[0].detach().cpu().numpy()
        _q, _k, section = compute_qk(ctx.loaded.model, ctx.hidden_states, mask)
    except ValueError as exc:
        ctx.warn(str(exc))
        return None
    kept, warning = bounded(section)
    if warning:
        ctx.warn(warning)
    return kept
