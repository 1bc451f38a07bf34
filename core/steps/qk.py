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
norm (GPT-2 `ln_1`, Llama `input_layernorm`; BERT has none before attention) and its own q/k projections to it:
about 2/12 of a forward pass's matrix work. That the result is exact is tested: the scores softmaxed with the mask
equal the attention weights the model returned, for every layer, head and query.

Memory: queries [L, H, T, d_head] and keys [L, H_kv, T, d_head], stored in float32 when together they fit in
QK_MAX_BYTES (64 MiB), else in float16 (scores then approximate to ~1e-3), else not stored (a warning says so).
For T ≥ 2·d_head they never exceed the attention tensor [L, H, T, T] the result already holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.infra import serialize

if TYPE_CHECKING:
    import torch

    from core.steps.context import StepContext

log = logging.getLogger(__name__)

QK_MAX_BYTES = 64 * 2**20

#: A transformers model (PreTrainedModel). Its submodules differ per architecture and are reached by attribute, so
#: they have no static type; the lookups below check what they find at run time (and the tests pin each family).
HFModel = Any

#: model_type values whose attention this module reproduces exactly (tested); others get "not available".
SUPPORTED = ("gpt2", "bert", "roberta", "distilbert", "llama", "mistral", "qwen2", "phi3", "gpt_neox", "opt")
_CAUSAL = ("gpt2", "llama", "mistral", "qwen2", "phi3", "gpt_neox", "opt")


@dataclass(frozen=True)
class AttentionParts:
    """What the query–key view needs from one block.

    norm: the module applied to the residual stream before attention, or None (post-norm BERT, DistilBERT).
    project: x [1, T, D] -> (q [1, T, H·d], k [1, T, H_kv·d]) before rotary.
    """

    norm: torch.nn.Module | None
    project: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    n_heads: int
    n_kv_heads: int
    d_head: int
    scaling: float


@dataclass(frozen=True)
class Rotary:
    """The model's rotary embedding module and the apply_rotary_pos_emb of the model's own modelling file."""

    embedding: torch.nn.Module
    apply: Callable[..., tuple[torch.Tensor, torch.Tensor]]


def attention_parts(model: HFModel) -> tuple[list[AttentionParts], Rotary | None]:
    """Per block: its pre-attention norm and q/k projections; plus the model's rotary embedding (None without).

    The one architecture lookup of this module (core/model/arch.py maps the output side of attention; the query/key
    side lives here). Raises ValueError for an architecture it does not reproduce: Gemma-2 (attention-logit
    soft-capping, per-layer windows), Qwen2 with per-layer sliding windows, Qwen3-style q/k norms.
    """
    import inspect

    cfg = model.config
    mtype = getattr(cfg, "model_type", "")
    base: HFModel = getattr(model, "base_model", model)
    name = type(model).__name__
    if mtype not in SUPPORTED:
        raise ValueError(f"the query–key view is not available for {name} ({mtype or 'unknown type'})")
    if mtype == "qwen2" and getattr(cfg, "use_sliding_window", False):
        raise ValueError(f"the query–key view is not available for {name} with per-layer sliding windows")
    parts: list[AttentionParts] = []
    if mtype == "gpt2":
        if getattr(cfg, "add_cross_attention", False):
            raise ValueError(f"the query–key view is not available for {name} with cross-attention")
        for block in base.h:
            attn = block.attn
            D = attn.embed_dim
            scaling = float(getattr(attn, "scaling", 0.0)) or _gpt2_scaling(attn)

            def gpt2_qk(x: torch.Tensor, attn: HFModel = attn, D: int = D) -> tuple[torch.Tensor, torch.Tensor]:
                q, k, _v = attn.c_attn(x).split(D, dim=2)
                return q, k

            parts.append(AttentionParts(block.ln_1, gpt2_qk, attn.num_heads, attn.num_heads, attn.head_dim, scaling))
        return parts, None
    if mtype in ("bert", "roberta", "distilbert"):
        layers = base.transformer.layer if mtype == "distilbert" else base.encoder.layer
        for block in layers:
            sa = block.attention if mtype == "distilbert" else block.attention.self
            d = int(sa.attention_head_size)
            qm, km = (sa.q_lin, sa.k_lin) if mtype == "distilbert" else (sa.query, sa.key)

            def bert_qk(x: torch.Tensor, qm: HFModel = qm, km: HFModel = km) -> tuple[torch.Tensor, torch.Tensor]:
                return qm(x), km(x)

            H = int(cfg.num_attention_heads if mtype != "distilbert" else cfg.n_heads)
            parts.append(AttentionParts(None, bert_qk, H, H, d, float(getattr(sa, "scaling", d**-0.5))))
        return parts, None
    if mtype == "opt":  # q_proj(x)·scaling in the model, with scale 1 in the attention call: the same product
        for block in base.decoder.layers:
            sa = block.self_attn

            def opt_qk(x: torch.Tensor, sa: HFModel = sa) -> tuple[torch.Tensor, torch.Tensor]:
                return sa.q_proj(x), sa.k_proj(x)

            norm = block.self_attn_layer_norm if block.do_layer_norm_before else None
            parts.append(AttentionParts(norm, opt_qk, sa.num_heads, sa.num_heads, sa.head_dim, float(sa.scaling)))
        return parts, None
    # rotary models: llama, mistral, qwen2, phi3 (fused qkv), gpt_neox (fused per-head qkv, partial rotary)
    H = int(cfg.num_attention_heads)
    KV = int(getattr(cfg, "num_key_value_heads", None) or H)
    for block in base.layers:
        sa = block.attention if mtype == "gpt_neox" else block.self_attn
        if hasattr(sa, "q_norm") or hasattr(sa, "k_norm"):
            raise ValueError(f"the query–key view is not available for {name}: q/k norms are not reproduced")
        if mtype == "gpt_neox":
            d = int(sa.head_size)

            def neox_qk(x: torch.Tensor, sa: HFModel = sa, d: int = d) -> tuple[torch.Tensor, torch.Tensor]:
                qkv = sa.query_key_value(x).view(*x.shape[:-1], -1, 3 * d)
                q, k, _v = qkv.chunk(3, dim=-1)
                return q.reshape(*x.shape[:-1], -1), k.reshape(*x.shape[:-1], -1)

            project: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = neox_qk
        elif mtype == "phi3":
            d = int(sa.head_dim)

            def phi3_qk(x: torch.Tensor, sa: HFModel = sa, d: int = d) -> tuple[torch.Tensor, torch.Tensor]:
                qkv = sa.qkv_proj(x)
                return qkv[..., : H * d], qkv[..., H * d : (H + KV) * d]

            project = phi3_qk
        else:
            d = int(sa.head_dim)

            def llama_qk(x: torch.Tensor, sa: HFModel = sa) -> tuple[torch.Tensor, torch.Tensor]:
                return sa.q_proj(x), sa.k_proj(x)

            project = llama_qk
        parts.append(AttentionParts(block.input_layernorm, project, H, KV, d, float(getattr(sa, "scaling", d**-0.5))))
    module = inspect.getmodule(type(base.layers[0]))
    apply = getattr(module, "apply_rotary_pos_emb", None)
    if apply is None:
        raise ValueError(f"the query–key view is not available for {name}: no apply_rotary_pos_emb found")
    return parts, Rotary(base.rotary_emb, apply)


def _gpt2_scaling(attn: HFModel) -> float:
    s = float(attn.head_dim) ** -0.5 if attn.scale_attn_weights else 1.0
    if attn.scale_attn_by_inverse_layer_idx:
        s /= float(attn.layer_idx + 1)
    return s


def sliding_window(model: HFModel) -> int:
    """The attention window of a Mistral or Phi-3 model that has one (0: no window)."""
    cfg = model.config
    if cfg.model_type in ("mistral", "phi3"):
        return int(getattr(cfg, "sliding_window", None) or 0)
    return 0


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
    masked), weights [T] (softmax of the scores), kv_head (the key-value head that served the query head)."""

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

    parts, rotary = attention_parts(model)
    L = len(parts)
    if hidden_states.shape[0] < L:
        raise ValueError(f"expected at least {L} block inputs, got hidden states {hidden_states.shape}")
    T = hidden_states.shape[1]
    param = next(model.parameters())
    qs, ks = [], []
    with torch.inference_mode():
        pos = torch.arange(T, device=param.device)[None]
        cos_sin = None
        for layer, p in enumerate(parts):
            x = torch.from_numpy(np.ascontiguousarray(hidden_states[layer])).to(param.device, param.dtype)[None]
            if p.norm is not None:
                x = p.norm(x)
            q, k = p.project(x)
            q = q.view(1, T, p.n_heads, p.d_head).transpose(1, 2)
            k = k.view(1, T, p.n_kv_heads, p.d_head).transpose(1, 2)
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
        scaling=np.array([p.scaling for p in parts], np.float64),
        key_mask=mask,
        causal=model.config.model_type in _CAUSAL,
        window=sliding_window(model),
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
