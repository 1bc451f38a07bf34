"""One per-architecture map of a transformer's parts: the only place that knows module names.

Every analysis that reaches inside a model (logit lens, per-head attribution, direct logit attribution,
information-flow routes, ablation, patching, neuron factors, the query-key view) asks `model_parts(model)` for
a `ModelParts` and never walks `named_modules()` itself. The map holds

* the embeddings (token, and learned positions where the model has them; hidden_states[0] is their sum);
* the blocks, each with its attention module, the attention output projection `out_proj` (its *input* is the
  per-head attention output, head-major: columns h·d_h … (h+1)·d_h − 1 belong to head h), the value projection
  (`value_module`, read with `values()`: GQA heads map to key-value head h // (H / KV)), the MLP module and its
  output projection `mlp_out` (its input = the neuron activations after the activation function and gate, its
  output = the MLP update), and the norms that act on the updates or the residual stream;
* the final norm, the unembedding (+ bias) and, for masked LMs, the head transform before it;
* the final logit transform (Gemma-2's `final_logit_softcapping`: z ↦ c · tanh(z / c)).

Residual layout (`ModelParts.residual`):
* "pre_ln" (GPT-2, Llama, GPT-NeoX, Qwen2, Mistral, OPT, Phi-3, Gemma-2): h_l = h_{l-1} + attn_update + mlp_update;
  Gemma-2 normalises each update before adding it (`attn_update_norm`, `mlp_update_norm`); GPT-NeoX with
  `use_parallel_residual` feeds both sublayers the block input (`parallel`).
* "post_ln" (BERT, RoBERTa, DistilBERT, MiniLM): h_mid = LN_a(h_{l-1} + attn_update), h_l = LN_m(h_mid + mlp_update)
  (`attn_residual_norm`, `mlp_residual_norm`).

The query–key side (`Block.query_key`, `ModelParts.query_key()`, read by core.steps.qk): per block the norm applied
before attention (`pre_norm`: GPT-2 ln_1, Llama input_layernorm, pre-LN OPT self_attn_layer_norm; None for post-LN
encoders), `project` x [.., T, D] → (q [.., T, H·d_h], k [.., T, KV·d_h]) before rotary (fused qkv split as the model
splits it: GPT-2 [q | k | v], GPT-NeoX per head [q k v], Phi-3 [q (H·d_h) | k (KV·d_h) | v]) and the `scaling` c of
s = (q · k) · c; per model `causal`, the sliding `window` (Mistral, Phi-3; 0 = none), `rotary` (the model's own
rotary embedding and its modelling file's apply_rotary_pos_emb; GPT-NeoX's partial rotary included) and GQA through
`heads`. `qk_refusal` says why a mapped model's scores are not reproduced (Gemma-2's attention-logit soft-capping,
Qwen2's per-layer windows, q/k norms, GPT-2 cross-attention); the rest of the map still serves it.

An architecture that is not in `BUILDERS` raises `ArchitectureNotSupported`, whose message is the
"not available for <architecture>" line that pages, the manifest and the PDF show.

Adding a family touches this file only (tests/test_architecture.py checks that no other core module names modules,
attributes or model types of an architecture):
1. one builder `_family(model) -> dict` returning the ModelParts fields (blocks with their `query_key`, embeddings,
   final norm, head, `value_reader`, `causal` / `window` / `rotary` / `qk_refusal`), reaching modules with `_m`,
   `_opt_m` and `_each` so that a missing module becomes "not available" instead of a traceback;
2. one `BUILDERS` entry (config.model_type → builder), one `ARCH_PREFIXES` entry (the class-name prefix a stored
   result keeps) and its label in `SUPPORTED_LABELS`;
3. a tiny random model of it in tests/tiny_models.py (FAMILIES): tests/test_arch.py, test_qk.py and test_dla.py then
   check every part against the model's own forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily at run time (the CLI's --help must not load it)
    import torch
    from torch import nn


class ArchitectureNotSupported(Exception):
    """The model's architecture is not in the map; str(exc) is the line shown to the user."""

    def __init__(
        self, architecture: str, what: str = "this analysis", verb: str = "is", reason: str | None = None
    ) -> None:
        self.architecture = architecture
        self.what = what
        self.reason = reason
        why = reason or (
            f"its architecture is not in core/model/arch.py's map (supported: {', '.join(SUPPORTED_LABELS)})"
        )
        super().__init__(f"{what} {verb} not available for {architecture}: {why}")


@dataclass(frozen=True)
class HeadLayout:
    """How the attention heads are laid out. n_heads query heads of size head_dim; n_kv_heads key/value heads
    (GQA: query head h reads key-value head h // (n_heads // n_kv_heads))."""

    n_heads: int
    n_kv_heads: int
    head_dim: int

    def kv_head(self, h: int) -> int:
        return h // (self.n_heads // self.n_kv_heads)

    def head_slice(self, h: int) -> slice:
        """Columns of the output projection's input that belong to head h."""
        return slice(h * self.head_dim, (h + 1) * self.head_dim)


@dataclass(frozen=True)
class QueryKey:
    """The query–key side of one block's attention (see "The query–key side" in the module docstring)."""

    pre_norm: nn.Module | None  # applied to the block input before the projections (None: post-LN encoders)
    # x [.., T, D] → (q [.., T, H·d_h], k [.., T, KV·d_h]), before any rotary rotation
    project: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    scaling: float  # c in s = (q · k) · c


@dataclass(frozen=True)
class Rotary:
    """A rotary model's position rotation: the model's own rotary embedding module (called as embedding(x,
    position_ids) → (cos, sin)) and the apply_rotary_pos_emb of its own modelling file (apply(q, k, cos, sin) with
    q [B, H, T, d_h], k [B, KV, T, d_h])."""

    embedding: nn.Module
    apply: Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Block:
    """One transformer block's parts (see the module docstring)."""

    module: nn.Module
    attention: nn.Module
    out_proj: nn.Module  # input [.., H·d_h] (head-major), output [.., D]
    value_module: nn.Module  # its output holds the value vectors; read them with ModelParts.values()
    mlp: nn.Module
    mlp_out: nn.Module  # input = neuron activations [.., d_ff]; output = the MLP update [.., D]
    attn_update_norm: nn.Module | None = None  # Gemma-2: normalises the attention update before the residual add
    mlp_update_norm: nn.Module | None = None  # Gemma-2: normalises the MLP update before the residual add
    attn_residual_norm: nn.Module | None = None  # post-LN: LN(h + attention update)
    mlp_residual_norm: nn.Module | None = None  # post-LN: LN(h_mid + MLP update)
    query_key: QueryKey | None = None  # the query–key side of its attention


@dataclass(frozen=True)
class ModelParts:
    """The parts of one loaded model. See the module docstring for the meaning of each field."""

    architecture: str
    model_type: str
    residual: str  # "pre_ln" | "post_ln"
    parallel: bool
    embed_tokens: nn.Module
    embed_positions: nn.Module | None
    blocks: tuple[Block, ...]
    heads: HeadLayout
    final_norm: nn.Module | None
    unembed: nn.Module | None  # weight [V, D'] (+ bias [V]); None for an encoder without a head
    unembed_in: nn.Module | None = None  # OPT-350m's project_out (D → D') before the unembedding
    head_dense: nn.Module | None = None  # masked LMs: dense → head_act → head_norm before the unembedding
    head_act: Callable[[torch.Tensor], torch.Tensor] | None = None
    head_norm: nn.Module | None = None
    logit_softcap: float | None = None
    value_reader: Callable[[torch.Tensor, HeadLayout], torch.Tensor] | None = None
    causal: bool = False  # a query never attends to a later position
    window: int = 0  # sliding window: keys at distance ≥ window are masked (0: none)
    # the model's eager attention is the plain softmax(q kᵀ · scaling + mask) v with repeated key-value heads (the
    # mask carries causality and any window), so core.model.capture's row-chunked function computes the same
    # numbers; False (GPT-2, GPT-NeoX, OPT, the encoders, Gemma-2's soft-capped scores): the model's own eager path
    row_chunked: bool = False
    rotary: Rotary | None = None  # rotary models: q and k are rotated by the position before the product
    qk_refusal: str | None = None  # why the query–key side is not reproduced for this model (None: it is)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def has_head(self) -> bool:
        return self.unembed is not None

    @property
    def mlp_width(self) -> int:
        """d_ff: the width of the MLP output projection's input (the neuron activations)."""
        if not self.blocks:
            return 0
        mod = self.blocks[0].mlp_out
        return int(weight(mod).shape[0 if _is_conv1d(mod) else 1])

    def query_key(self) -> tuple[QueryKey, ...]:
        """Every block's query–key side, or ArchitectureNotSupported saying why it is not reproduced."""
        sides = tuple(b.query_key for b in self.blocks)
        if self.qk_refusal is not None or any(q is None for q in sides):
            why = self.qk_refusal or "its query and key projections are not in the map"
            raise ArchitectureNotSupported(self.architecture, "the query–key view", reason=why)
        return tuple(q for q in sides if q is not None)

    def values(self, value_output: torch.Tensor) -> torch.Tensor:
        """Value vectors [.., T, KV, d_h] from the output of `Block.value_module` [.., T, *]."""
        if self.value_reader is None:
            raise ArchitectureNotSupported(self.architecture, "reading value vectors")
        return self.value_reader(value_output, self.heads)

    def head_out_weights(self, block: Block) -> torch.Tensor:
        """W_O per head: [H, d_h, D] with out_proj(z) = Σ_h z[.., h-slice] @ W_O[h] + b_O."""
        w = weight(block.out_proj)
        H, dh = self.heads.n_heads, self.heads.head_dim
        if _is_conv1d(block.out_proj):  # GPT-2: weight [in, out]
            return w.reshape(H, dh, w.shape[1])
        return w.t().reshape(H, dh, w.shape[0])  # nn.Linear: weight [out, in]

    def out_bias(self, block: Block) -> torch.Tensor | None:
        """b_O [D] of the attention output projection, or None."""
        return bias(block.out_proj)

    def transform_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The final logit transform: Gemma-2 soft-capping c · tanh(z / c); identity elsewhere."""
        if self.logit_softcap is None:
            return logits
        import torch

        return torch.tanh(logits / self.logit_softcap) * self.logit_softcap

    def head_transform(self, h: torch.Tensor) -> torch.Tensor:
        """What comes between the last residual stream (before the final norm) and the unembedding's input."""
        if self.final_norm is not None:
            h = self.final_norm(h)
        if self.unembed_in is not None:
            h = self.unembed_in(h)
        if self.head_dense is not None:
            h = self.head_dense(h)
            if self.head_act is not None:
                h = self.head_act(h)
            if self.head_norm is not None:
                h = self.head_norm(h)
        return h

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [.., V] from residual-stream states h [.., D] taken before the final norm: the model's own head,
        final logit transform included (so decoding the last layer reproduces the model's logits)."""
        if self.unembed is None:
            raise ArchitectureNotSupported(self.architecture, "decoding to the vocabulary (no language-model head)")
        return self.transform_logits(self.unembed(self.head_transform(h)))

    def describe(self) -> str:
        """One line naming the head that `decode` applies."""
        steps = []
        if self.final_norm is not None:
            steps.append(f"final norm ({type(self.final_norm).__name__})")
        if self.unembed_in is not None:
            steps.append("project_out")
        if self.head_dense is not None:
            steps.append("MLM head transform (dense, activation, LayerNorm)")
        steps.append("unembedding")
        if self.logit_softcap is not None:
            steps.append(f"soft-capping {self.logit_softcap:g}·tanh(z/{self.logit_softcap:g})")
        return " then ".join(steps)


def _is_conv1d(module: nn.Module) -> bool:
    """GPT-2's Conv1D keeps its weight as [in, out] (nn.Linear: [out, in])."""
    return type(module).__name__ == "Conv1D"


def _param(module: nn.Module, name: str, required: bool = True) -> torch.Tensor | None:
    """A module's parameter (weight / bias) as a Tensor; None when absent and not required."""
    import torch

    p = getattr(module, name, None)
    if isinstance(p, torch.Tensor):
        return p
    if required:
        raise AttributeError(f"{type(module).__name__} has no tensor {name!r}")
    return None


def weight(module: nn.Module) -> torch.Tensor:
    """module.weight as a Tensor (typed access for callers)."""
    w = _param(module, "weight")
    assert w is not None
    return w


def bias(module: nn.Module) -> torch.Tensor | None:
    """module.bias as a Tensor, or None."""
    return _param(module, "bias", required=False)


# ----------------------------------------------------------------------------------------------------------------
# Value readers: output of the value module [.., T, *] → [.., T, KV, d_h]


def _split_v(v: torch.Tensor, hl: HeadLayout) -> torch.Tensor:
    return v.reshape(*v.shape[:-1], hl.n_kv_heads, hl.head_dim)


def _gpt2_v(qkv: torch.Tensor, hl: HeadLayout) -> torch.Tensor:  # c_attn: [q | k | v], each H·d_h
    D = hl.n_heads * hl.head_dim
    return _split_v(qkv[..., 2 * D : 3 * D], hl)


def _neox_v(qkv: torch.Tensor, hl: HeadLayout) -> torch.Tensor:  # query_key_value: per head [q k v]
    per_head = qkv.reshape(*qkv.shape[:-1], hl.n_heads, 3 * hl.head_dim)
    return per_head[..., 2 * hl.head_dim :]


def _phi3_v(qkv: torch.Tensor, hl: HeadLayout) -> torch.Tensor:  # qkv_proj: [q (H·d_h) | k (KV·d_h) | v (KV·d_h)]
    start = (hl.n_heads + hl.n_kv_heads) * hl.head_dim
    return _split_v(qkv[..., start:], hl)


# ----------------------------------------------------------------------------------------------------------------
# Query–key projections: x [.., T, D] → (q [.., T, H·d_h], k [.., T, KV·d_h]), before any rotary rotation


def _pair_qk(q_mod: nn.Module, k_mod: nn.Module) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    def project(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q_mod(x), k_mod(x)

    return project


def _gpt2_qk(c_attn: nn.Module, hl: HeadLayout) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    D = hl.n_heads * hl.head_dim  # c_attn: [q | k | v], each H·d_h

    def project(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, _v = c_attn(x).split(D, dim=-1)
        return q, k

    return project


def _neox_qk(qkv_mod: nn.Module, hl: HeadLayout) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    d = hl.head_dim  # query_key_value: per head [q k v]

    def project(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qkv = qkv_mod(x).view(*x.shape[:-1], -1, 3 * d)
        q, k, _v = qkv.chunk(3, dim=-1)
        return q.reshape(*x.shape[:-1], -1), k.reshape(*x.shape[:-1], -1)

    return project


def _phi3_qk(qkv_mod: nn.Module, hl: HeadLayout) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    q_end = hl.n_heads * hl.head_dim  # qkv_proj: [q (H·d_h) | k (KV·d_h) | v (KV·d_h)]
    k_end = q_end + hl.n_kv_heads * hl.head_dim

    def project(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qkv = qkv_mod(x)
        return qkv[..., :q_end], qkv[..., q_end:k_end]

    return project


def _scaling(attn: nn.Module, hl: HeadLayout) -> float:
    """The attention module's own scale, else 1/√d_h."""
    return float(getattr(attn, "scaling", hl.head_dim**-0.5))


def _gpt2_scaling(attn: nn.Module, hl: HeadLayout) -> float:
    """GPT-2: 1/√d_h (unless scale_attn_weights is off), divided by l + 1 with scale_attn_by_inverse_layer_idx."""
    own = float(getattr(attn, "scaling", 0.0) or 0.0)
    if own:
        return own
    s = hl.head_dim**-0.5 if getattr(attn, "scale_attn_weights", True) else 1.0
    if getattr(attn, "scale_attn_by_inverse_layer_idx", False):
        s /= float(getattr(attn, "layer_idx", 0) + 1)
    return s


def _rotary(base: nn.Module, block: nn.Module) -> tuple[Rotary | None, str | None]:
    """The model's rotary embedding and its modelling file's apply_rotary_pos_emb, or (None, why not)."""
    import inspect

    embedding = _opt_m(base, "rotary_emb")
    apply = getattr(inspect.getmodule(type(block)), "apply_rotary_pos_emb", None)
    if embedding is None or not callable(apply):
        return None, "its rotary embedding (rotary_emb and apply_rotary_pos_emb) was not found"
    return Rotary(embedding, apply), None


def _qk_norm_refusal(attentions: list[nn.Module]) -> str | None:
    """Qwen3-style q/k norms inside attention are not reproduced."""
    if any(hasattr(a, "q_norm") or hasattr(a, "k_norm") for a in attentions):
        return "q/k norms are not reproduced"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Builders, one per model_type


def _cfg_int(cfg: object, *names: str) -> int | None:
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _layout(model: nn.Module) -> HeadLayout:
    cfg = model.config
    H = _cfg_int(cfg, "num_attention_heads", "n_head", "n_heads")
    D = _cfg_int(cfg, "hidden_size", "n_embd", "dim", "d_model")
    if H is None or D is None:
        raise ArchitectureNotSupported(type(model).__name__, "reading the head layout")
    kv = _cfg_int(cfg, "num_key_value_heads") or H
    dh = _cfg_int(cfg, "head_dim") or D // H
    return HeadLayout(H, kv, dh)


def _m(obj: object, path: str) -> nn.Module:
    """The submodule at a dotted `path` of `obj` (AttributeError when a step is missing or not a module)."""
    from torch import nn

    cur = obj
    for name in path.split("."):
        cur = getattr(cur, name)
    if not isinstance(cur, nn.Module):
        raise AttributeError(f"{path} is not a module")  # noqa: TRY004 (callers treat it as a missing part)
    return cur


def _opt_m(obj: object, path: str) -> nn.Module | None:
    """Like _m, or None when the path does not lead to a module."""
    try:
        return _m(obj, path)
    except AttributeError:
        return None


def _each(obj: object, path: str) -> list[nn.Module]:
    """The modules of the ModuleList at `path`."""
    return list(_m(obj, path).children())


def _cfg(model: nn.Module, name: str, default: object = None) -> object:
    return getattr(getattr(model, "config", None), name, default)


def _lm_head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if head is not None and hasattr(head, "weight") else None


def _gpt2(model: nn.Module) -> dict[str, object]:
    base = _opt_m(model, "transformer") or model
    hl = _layout(model)
    blocks = tuple(
        Block(
            module=b,
            attention=_m(b, "attn"),
            out_proj=_m(b, "attn.c_proj"),
            value_module=_m(b, "attn.c_attn"),
            mlp=_m(b, "mlp"),
            mlp_out=_m(b, "mlp.c_proj"),
            query_key=QueryKey(_m(b, "ln_1"), _gpt2_qk(_m(b, "attn.c_attn"), hl), _gpt2_scaling(_m(b, "attn"), hl)),
        )
        for b in _each(base, "h")
    )
    cross = bool(_cfg(model, "add_cross_attention", False))
    return {
        "residual": "pre_ln",
        "parallel": False,
        "embed_tokens": _m(base, "wte"),
        "embed_positions": _m(base, "wpe"),
        "blocks": blocks,
        "final_norm": _m(base, "ln_f"),
        "unembed": _lm_head(model),
        "value_reader": _gpt2_v,
        "causal": True,
        "qk_refusal": "cross-attention is not reproduced" if cross else None,
    }


def _llama_like(model: nn.Module) -> dict[str, object]:
    """Llama, Qwen2, Mistral, Gemma-2, Phi-3: model.model.layers[i].{self_attn.{v,o}_proj, mlp.down_proj}."""
    base = _opt_m(model, "model") or model
    mt = _cfg(model, "model_type")
    gemma, phi3 = mt == "gemma2", mt == "phi3"
    hl = _layout(model)

    def qk(b: nn.Module) -> QueryKey:
        sa = _m(b, "self_attn")
        if phi3:  # fused qkv_proj
            return QueryKey(_m(b, "input_layernorm"), _phi3_qk(_m(sa, "qkv_proj"), hl), _scaling(sa, hl))
        return QueryKey(_m(b, "input_layernorm"), _pair_qk(_m(sa, "q_proj"), _m(sa, "k_proj")), _scaling(sa, hl))

    layers = _each(base, "layers")
    blocks = tuple(
        Block(
            module=b,
            attention=_m(b, "self_attn"),
            out_proj=_m(b, "self_attn.o_proj"),
            value_module=_m(b, "self_attn.qkv_proj" if phi3 else "self_attn.v_proj"),
            mlp=_m(b, "mlp"),
            mlp_out=_m(b, "mlp.down_proj"),
            attn_update_norm=_m(b, "post_attention_layernorm") if gemma else None,
            mlp_update_norm=_m(b, "post_feedforward_layernorm") if gemma else None,
            query_key=qk(b),
        )
        for b in layers
    )
    cap = _cfg(model, "final_logit_softcapping") if gemma else None
    rotary, refusal = _rotary(base, layers[0]) if layers else (None, None)
    if gemma:
        refusal = "attention-logit soft-capping and per-layer sliding windows are not reproduced"
    elif mt == "qwen2" and _cfg(model, "use_sliding_window", False):
        refusal = "per-layer sliding windows are not reproduced"
    refusal = _qk_norm_refusal([b.attention for b in blocks]) or refusal
    window = _cfg(model, "sliding_window") if mt in ("mistral", "phi3") else None  # one window for every layer
    return {
        "residual": "pre_ln",
        "parallel": False,
        "embed_tokens": _m(base, "embed_tokens"),
        "embed_positions": None,
        "blocks": blocks,
        "final_norm": _m(base, "norm"),
        "unembed": _lm_head(model),
        "logit_softcap": float(cap) if isinstance(cap, (int, float)) and cap else None,
        "value_reader": _phi3_v if phi3 else _split_v,
        "causal": True,
        "window": int(window) if isinstance(window, int) else 0,
        "rotary": rotary,
        "qk_refusal": refusal,
        "row_chunked": mt in ("llama", "qwen2", "mistral", "phi3"),
    }


def _neox(model: nn.Module) -> dict[str, object]:
    base = _opt_m(model, "gpt_neox") or model
    hl = _layout(model)
    layers = _each(base, "layers")
    blocks = tuple(
        Block(
            module=b,
            attention=_m(b, "attention"),
            out_proj=_m(b, "attention.dense"),
            value_module=_m(b, "attention.query_key_value"),
            mlp=_m(b, "mlp"),
            mlp_out=_m(b, "mlp.dense_4h_to_h"),
            query_key=QueryKey(
                _m(b, "input_layernorm"),
                _neox_qk(_m(b, "attention.query_key_value"), hl),
                _scaling(_m(b, "attention"), hl),
            ),
        )
        for b in layers
    )
    rotary, refusal = _rotary(base, layers[0]) if layers else (None, None)  # partial rotary: the model's own apply
    return {
        "residual": "pre_ln",
        "parallel": bool(_cfg(model, "use_parallel_residual", True)),
        "embed_tokens": _m(base, "embed_in"),
        "embed_positions": None,
        "blocks": blocks,
        "final_norm": _m(base, "final_layer_norm"),
        "unembed": _lm_head(model),
        "value_reader": _neox_v,
        "causal": True,
        "rotary": rotary,
        "qk_refusal": _qk_norm_refusal([b.attention for b in blocks]) or refusal,
    }


def _opt(model: nn.Module) -> dict[str, object]:
    dec = _opt_m(model, "model.decoder") or _m(model, "decoder")
    post = not _cfg(model, "do_layer_norm_before", True)  # OPT-350m
    if _opt_m(dec, "project_in") is not None:
        raise ArchitectureNotSupported(f"{type(model).__name__} with project_in (word_embed_proj_dim ≠ hidden_size)")
    hl = _layout(model)
    blocks = tuple(
        Block(
            module=b,
            attention=_m(b, "self_attn"),
            out_proj=_m(b, "self_attn.out_proj"),
            value_module=_m(b, "self_attn.v_proj"),
            mlp=_m(b, "fc2"),
            mlp_out=_m(b, "fc2"),
            attn_residual_norm=_m(b, "self_attn_layer_norm") if post else None,
            mlp_residual_norm=_m(b, "final_layer_norm") if post else None,
            # the model multiplies q_proj(x) by `scaling` and calls attention with scale 1: the same product
            query_key=QueryKey(
                None if post else _m(b, "self_attn_layer_norm"),
                _pair_qk(_m(b, "self_attn.q_proj"), _m(b, "self_attn.k_proj")),
                _scaling(_m(b, "self_attn"), hl),
            ),
        )
        for b in _each(dec, "layers")
    )
    return {
        "residual": "post_ln" if post else "pre_ln",
        "parallel": False,
        "embed_tokens": _m(dec, "embed_tokens"),
        "embed_positions": _m(dec, "embed_positions"),
        "blocks": blocks,
        "final_norm": _opt_m(dec, "final_layer_norm"),
        "unembed": _lm_head(model),
        "unembed_in": _opt_m(dec, "project_out"),
        "value_reader": _split_v,
        "causal": True,
    }


def _bert_like(model: nn.Module) -> dict[str, object]:
    """BERT, MiniLM, RoBERTa: post-LN encoder layers; the MLM head is dense → GELU → LayerNorm → decoder."""
    base = _opt_m(model, "base_model") or model
    hl = _layout(model)
    blocks = tuple(
        Block(
            module=b,
            attention=_m(b, "attention"),
            out_proj=_m(b, "attention.output.dense"),
            value_module=_m(b, "attention.self.value"),
            mlp=_m(b, "intermediate"),
            mlp_out=_m(b, "output.dense"),
            attn_residual_norm=_m(b, "attention.output.LayerNorm"),
            mlp_residual_norm=_m(b, "output.LayerNorm"),
            query_key=QueryKey(
                None,
                _pair_qk(_m(b, "attention.self.query"), _m(b, "attention.self.key")),
                _scaling(_m(b, "attention.self"), hl),
            ),
        )
        for b in _each(base, "encoder.layer")
    )
    head: dict[str, object] = {"unembed": None}
    if _opt_m(model, "cls.predictions") is not None:  # BERT: cls.predictions = transform + decoder
        head = {
            "unembed": _m(model, "cls.predictions.decoder"),
            "head_dense": _m(model, "cls.predictions.transform.dense"),
            "head_act": _m(model, "cls.predictions.transform.transform_act_fn"),
            "head_norm": _m(model, "cls.predictions.transform.LayerNorm"),
        }
    elif _opt_m(model, "lm_head.dense") is not None:  # RoBERTa: lm_head = dense, gelu (a function), layer_norm, decoder
        import torch

        head = {
            "unembed": _m(model, "lm_head.decoder"),
            "head_dense": _m(model, "lm_head.dense"),
            "head_act": torch.nn.functional.gelu,
            "head_norm": _m(model, "lm_head.layer_norm"),
        }
    return {
        "residual": "post_ln",
        "parallel": False,
        "embed_tokens": _m(base, "embeddings.word_embeddings"),
        "embed_positions": _opt_m(base, "embeddings.position_embeddings"),
        "blocks": blocks,
        "final_norm": None,
        "value_reader": _split_v,
        **head,
    }


def _distilbert(model: nn.Module) -> dict[str, object]:
    base = _opt_m(model, "distilbert") or model
    hl = _layout(model)
    blocks = tuple(
        Block(
            module=b,
            attention=_m(b, "attention"),
            out_proj=_m(b, "attention.out_lin"),
            value_module=_m(b, "attention.v_lin"),
            mlp=_m(b, "ffn"),
            mlp_out=_m(b, "ffn.lin2"),
            attn_residual_norm=_m(b, "sa_layer_norm"),
            mlp_residual_norm=_m(b, "output_layer_norm"),
            query_key=QueryKey(
                None, _pair_qk(_m(b, "attention.q_lin"), _m(b, "attention.k_lin")), _scaling(_m(b, "attention"), hl)
            ),
        )
        for b in _each(base, "transformer.layer")
    )
    head: dict[str, object] = {"unembed": None}
    if _opt_m(model, "vocab_projector") is not None:
        head = {
            "unembed": _m(model, "vocab_projector"),
            "head_dense": _m(model, "vocab_transform"),
            "head_act": _m(model, "activation"),
            "head_norm": _m(model, "vocab_layer_norm"),
        }
    return {
        "residual": "post_ln",
        "parallel": False,
        "embed_tokens": _m(base, "embeddings.word_embeddings"),
        "embed_positions": _m(base, "embeddings.position_embeddings"),
        "blocks": blocks,
        "final_norm": None,
        "value_reader": _split_v,
        **head,
    }


#: model_type (config.model_type) → builder of the ModelParts fields. The one registry of architectures.
BUILDERS: dict[str, Callable[[nn.Module], dict[str, object]]] = {
    "gpt2": _gpt2,
    "llama": _llama_like,
    "qwen2": _llama_like,
    "mistral": _llama_like,
    "gemma2": _llama_like,
    "phi3": _llama_like,
    "gpt_neox": _neox,
    "opt": _opt,
    "bert": _bert_like,
    "roberta": _bert_like,
    "distilbert": _distilbert,
}

SUPPORTED_LABELS = (
    "GPT-2",
    "BERT / MiniLM",
    "RoBERTa",
    "DistilBERT",
    "Llama",
    "Mistral",
    "Qwen2",
    "Gemma-2",
    "Phi-3",
    "GPT-NeoX (Pythia)",
    "OPT",
)


#: Class-name prefixes of the architectures in BUILDERS (config.architectures[0] or the class name), so that a
#: stored result (which keeps the architecture's name, not the model) can say whether the map knows it.
ARCH_PREFIXES = (
    "GPT2",
    "Llama",
    "Qwen2",
    "Mistral",
    "Gemma2",
    "Phi3",
    "GPTNeoX",
    "OPT",
    "Bert",
    "Roberta",
    "DistilBert",
)


def not_available_line(architecture: str, what: str, verb: str = "is") -> str | None:
    """The "<what> <verb> not available for <architecture>" line when the map does not know `architecture`, else
    None."""
    if any(architecture.startswith(p) for p in ARCH_PREFIXES):
        return None
    return str(ArchitectureNotSupported(architecture, what, verb))


def architecture_name(model: nn.Module) -> str:
    """The architecture a user recognises: config.architectures[0], else the class name."""
    archs = getattr(model.config, "architectures", None) or []
    return str(archs[0]) if archs else type(model).__name__


def model_parts(model: nn.Module) -> ModelParts:
    """The parts of `model`, or ArchitectureNotSupported (its message is the user-facing line)."""
    cached = getattr(model, "_tma_parts", None)
    if isinstance(cached, ModelParts):
        return cached
    mt = str(getattr(model.config, "model_type", ""))
    arch = architecture_name(model)
    builder = BUILDERS.get(mt)
    if builder is None:
        raise ArchitectureNotSupported(arch)
    try:
        fields = builder(model)
    except AttributeError as exc:  # a variant whose modules are named differently
        raise ArchitectureNotSupported(f"{arch} ({exc})") from exc
    parts = ModelParts(architecture=arch, model_type=mt, heads=_layout(model), **fields)  # type: ignore[arg-type]
    if parts.heads.n_heads % parts.heads.n_kv_heads:
        raise ArchitectureNotSupported(f"{arch} ({parts.heads.n_heads} heads over {parts.heads.n_kv_heads} kv heads)")
    try:
        object.__setattr__(model, "_tma_parts", parts)  # nn.Module.__setattr__ would register the modules
    except (AttributeError, TypeError):
        pass
    return parts


def try_model_parts(
    model: nn.Module, what: str = "this analysis", verb: str = "is"
) -> tuple[ModelParts | None, str | None]:
    """(parts, None) or (None, the "<what> <verb> not available for <architecture>" line)."""
    try:
        return model_parts(model), None
    except ArchitectureNotSupported as exc:
        return None, str(ArchitectureNotSupported(exc.architecture, what, verb))


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm after the last block (GPT-2 ln_f, Llama norm), or None: post-LN encoders have none, and an
    architecture the map does not know gets its hidden states as the model returns them."""
    parts, _ = try_model_parts(model)
    return parts.final_norm if parts is not None else None


def encoder_head(model: nn.Module) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]] | None:
    """For a masked LM whose head the map knows (BERT, RoBERTa, DistilBERT): (its encoder, the head h [.., D] →
    logits [.., V] applied to the encoder's last hidden state), so a caller can run the head on the positions it
    reads only. None for any other model."""
    parts, _ = try_model_parts(model)
    base = getattr(model, "base_model", model)
    if parts is None or base is model or parts.unembed is None or parts.head_dense is None:
        return None
    if parts.final_norm is not None or parts.unembed_in is not None:
        return None
    return base, parts.decode


# ----------------------------------------------------------------------------------------------------------------
# Norms with frozen statistics


def frozen_norm(norm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The norm `norm` linearised at its actual input x [.., D]: norm(x) = scale ⊙ P(x) + shift, where P centres
    the vector (LayerNorm) or is the identity (RMSNorm). Returns (scale [.., D], shift [D], centre).

    With the statistics (mean, σ or RMS) frozen at x, any decomposition x = Σ_c c maps to
    norm(x) = Σ_c scale ⊙ P(c) + shift exactly. Handles torch LayerNorm, the RMSNorms of Llama / Qwen2 / Mistral /
    Phi-3 (weight · x / rms) and Gemma's ((1 + weight) · x / rms); checks the result against norm(x).
    """
    import torch

    with torch.inference_mode():
        return _frozen_norm(norm, x)


def _frozen_norm(norm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    import torch

    xf = x.float()
    eps = float(getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None) or 1e-5)
    w = _param(norm, "weight", required=False)
    b = _param(norm, "bias", required=False)
    centre = isinstance(norm, torch.nn.LayerNorm) or (b is not None and "RMS" not in type(norm).__name__)
    if centre:
        stat = torch.sqrt(xf.var(-1, unbiased=False, keepdim=True) + eps)
    else:
        stat = torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    gain = w.detach().float().to(x.device) if w is not None else torch.ones(x.shape[-1], device=x.device)
    if "Gemma" in type(norm).__name__:
        gain = 1.0 + gain
    scale = gain / stat
    shift = b.detach().float().to(x.device) if b is not None else torch.zeros(x.shape[-1], device=x.device)
    # the check: the module itself, on its own device and dtype (x may be a float32 CPU copy)
    ref_dtype = w.dtype if w is not None else x.dtype
    ref = norm(x.to(device=w.device if w is not None else x.device, dtype=ref_dtype)).float().to(x.device)
    got = scale * (xf - xf.mean(-1, keepdim=True) if centre else xf) + shift
    rel = 1e-3 if ref_dtype == torch.float32 else 3e-2
    if float((got - ref).abs().max()) > rel * max(1.0, float(ref.abs().max())):
        raise ArchitectureNotSupported(
            f"{type(norm).__name__} (its statistics could not be frozen exactly)",
            "a linear decomposition through this norm",
        )
    return scale, shift, centre


def apply_frozen(parts: torch.Tensor, scale: torch.Tensor, centre: bool) -> torch.Tensor:
    """Map decomposition parts [N, .., D] through a frozen norm (without its shift, which is a part of its own)."""
    if centre:
        parts = parts - parts.mean(-1, keepdim=True)
    return parts * scale
