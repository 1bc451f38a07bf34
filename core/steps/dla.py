"""Direct logit attribution (DLA) and the tokens each block or head promotes and suppresses.

The decomposition pass (`decomposition_pass`) runs the model once with hooks placed through the architecture map
(`core.model.arch`) and keeps, per block l, the input of the attention output projection z_l [T, H·d_h] (head h owns the
columns h·d_h … (h+1)·d_h − 1), its output, the value vectors, the MLP update and the inputs of every norm that acts
on an update or on the residual stream. `core.steps.flow` reads the same pass.

DLA at position t for token y. The residual stream at t is a sum of parts: the embedding output (token + position
embeddings), each head's output z_l,h W_O^h, each attention output bias b_O, each MLP output (its own bias included)
and the shifts (β) of the norms. Each part is read through what follows it with the statistics of every norm
*frozen* at their actual value at t — the final norm (scale γ/σ_t or γ/rms_t, LayerNorm also centres), Gemma-2's
update norms, and for post-LN models (BERT, RoBERTa, DistilBERT, MiniLM) each later residual LayerNorm — and then
the unembedding row W_U[y]; a norm's shift and the unembedding bias b_U[y] are parts of their own ("bias"). The
masked-LM head of a post-LN model is dense → GELU → LayerNorm → decoder: the GELU is read as u ⊙ g(u) with the gate
g(u) = GELU(u)/u frozen at the actual pre-activation u (exact because GELU(u) = u·Φ(u)); the dense bias is a part.
Gemma-2's final soft-cap c·tanh(z/c) multiplies every part by the frozen ratio cap(z)/z. With the statistics frozen
every map is linear, so the parts sum to the model's own logit exactly (tested: relative difference ≤ 1e-4).

What the frozen statistics mean: a part's DLA is its *direct* effect given the normalisation that the whole residual
actually received. For pre-LN models only the final norm is frozen. For post-LN models every part written before
layer l is rescaled by each later LayerNorm, and the MLM head's gate is frozen too: the decomposition is exact at
this input but further from "what would change if this part were removed" than in a pre-LN model; the page and the
docs say so.

Layers in the outputs: 0 = embeddings, 1 … L = blocks, L + 1 = the head (final norm shift, MLM head biases,
unembedding bias).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.infra.serialize import serializable
from core.model.arch import (
    ArchitectureNotSupported,
    ModelParts,
    apply_frozen,
    bias,
    frozen_norm,
    model_parts,
    try_model_parts,
    weight,
)
from core.model.capture import PositionLogits, head_slicer, position_logits, stack_float32
from core.model.hooks import Registration, hooked
from core.model.tokens import token_text
from core.steps.context import StepContext
from core.steps.neurons import mlp_input_rows

if TYPE_CHECKING:
    import torch

    from core.model.capture import Capture
    from core.model.loading import LoadedModel

log = logging.getLogger(__name__)

#: Top-k tokens kept per update in the promoted / suppressed tables.
PROMOTE_K = 10
#: Multiply-adds spent on the promoted / suppressed tables of the block updates (2·L rows per position, each
#: D·V): positions around the target are added while they fit (GPT-2 small: 4 positions). Heads are read at the
#: target position only (L·H rows). None = every position. The products run on the CPU (the decomposition pass
#: copies what it keeps there), so the bound holds on every device.
PROMOTE_MAX_MACS_CPU: float | None = 4e9

DLA_METHOD = (
    "parts of the residual stream at the target position (embedding output, each head's slice through "
    "the attention output projection, attention output biases, MLP outputs, norm shifts) read through the "
    "norms with their statistics frozen at the actual run and through the unembedding row of the token"
)


# ----------------------------------------------------------------------------------------------------------------
# The decomposition pass


@dataclass
class Decomposition:
    """What the hooked forward pass kept (torch float32 on the CPU, the attention maps aside, batch of one). L blocks,
    T tokens, D width.

    embed [T, D] (hidden_states[0]); resid_pre [L, T, D] block inputs; z [L, T, H·d_h] out_proj inputs;
    attn_out [L, T, D] out_proj outputs; values [L, T, KV, d_h]; mlp_out [L, T, D]; attn_update [L, T, D] and
    mlp_update [L, T, D] what is added to the residual (after Gemma-2's update norms);
    attn_sum / mlp_sum [L, T, D]: the sums the post-LN residual norms receive (x + update), else the residual after
    the update; resid_mid [L, T, D] the residual between the two sublayers (post-LN: after LN_a);
    resid_post [L, T, D] block outputs; final_in [T, D] the final norm's input (= resid_post[L-1]);
    attentions: per layer [H, T, T] in the model's dtype (a list, indexed by layer as a stacked [L, H, T, T] tensor
    would be; read `.float()`); logits [T, V] or None; head_pre [T, D'] the MLM head's pre-activation (dense output).
    """

    parts: ModelParts
    embed: torch.Tensor
    resid_pre: torch.Tensor
    z: torch.Tensor
    attn_out: torch.Tensor
    values: torch.Tensor
    mlp_out: torch.Tensor
    attn_update: torch.Tensor
    mlp_update: torch.Tensor
    attn_sum: torch.Tensor
    mlp_sum: torch.Tensor
    resid_mid: torch.Tensor
    resid_post: torch.Tensor
    final_in: torch.Tensor
    attentions: Sequence[torch.Tensor]
    logits: torch.Tensor | PositionLogits | None
    head_pre: torch.Tensor | None = None
    hidden_states: np.ndarray | None = None
    final_norm: bool = False
    mlp_layers: tuple[int, ...] = ()
    mlp_acts: np.ndarray | None = None


def decomposition_pass(
    loaded: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    logit_positions: list[int] | None = None,
    mlp_layers: Sequence[int] = (),
) -> Decomposition:
    """One forward pass with hooks from the architecture map (removed in `finally`). Call under the model lock.

    It also yields what the deeper views would otherwise run more passes for (the views' one pass, issue 24):
    `hidden_states` float32 numpy [L+1, T, D] exactly as a capture holds them (the last entry the final norm's
    input when there is one, `final_norm`), from which `resid_pre` and `embed` are views; with `mlp_layers`, the
    neuron activations of those layers (`mlp_acts` float32 [len(mlp_layers), T, d_ff], the input of each MLP output
    projection, as core.steps.neurons.capture_mlp_activations records them); with `logit_positions` (sorted), the
    language-model head runs on those rows only and `logits` is a PositionLogits (DLA reads one row)."""
    import torch

    parts = model_parts(loaded.model)
    L = parts.n_layers
    T = int(input_ids.shape[1])
    acts_of = {int(layer) for layer in mlp_layers}
    if any(not 0 <= layer < L for layer in acts_of):
        raise ValueError(f"layers {list(mlp_layers)} are outside 0…{L - 1}")
    acts: dict[int, np.ndarray] = {}
    keep: dict[str, list[torch.Tensor | None]] = {
        k: [None] * L for k in ("z", "attn_out", "v", "mlp_out", "attn_update", "mlp_update", "attn_sum", "mlp_sum")
    }
    other: dict[str, torch.Tensor] = {}

    def out_hook(name: str, layer: int, take_input: bool = False) -> Callable[..., None]:
        def hook(_m: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = args[0] if take_input else (output[0] if isinstance(output, tuple) else output)
            keep[name][layer] = x.detach()

        return hook

    def proj_hook(layer: int) -> Callable[..., None]:
        def hook(_m: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            keep["z"][layer] = args[0].detach()[0]
            keep["attn_out"][layer] = output.detach()[0]

        return hook

    def grab(name: str) -> Callable[..., None]:
        def hook(_m: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            other[name] = (args[0] if name == "final_in" else output).detach()

        return hook

    def mlp_hook(layer: int) -> Callable[..., None]:
        keep_out = out_hook("mlp_out", layer)

        def hook(m: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            keep_out(m, args, output)
            if layer in acts_of:
                acts[layer] = mlp_input_rows(args[0], T)

        return hook

    hooks: list[Registration] = []
    for l, b in enumerate(parts.blocks):
        hooks += [
            (b.out_proj, "post", proj_hook(l)),
            (b.value_module, "post", out_hook("v", l)),
            (b.mlp_out, "post", mlp_hook(l)),
        ]
        if b.attn_update_norm is not None:
            hooks.append((b.attn_update_norm, "post", out_hook("attn_update", l)))
        if b.mlp_update_norm is not None:
            hooks.append((b.mlp_update_norm, "post", out_hook("mlp_update", l)))
        if b.attn_residual_norm is not None:
            hooks.append((b.attn_residual_norm, "post", out_hook("attn_sum", l, take_input=True)))
        if b.mlp_residual_norm is not None:
            hooks.append((b.mlp_residual_norm, "post", out_hook("mlp_sum", l, take_input=True)))
    if parts.final_norm is not None:
        hooks.append((parts.final_norm, "post", grab("final_in")))
    if parts.head_dense is not None:
        hooks.append((parts.head_dense, "post", grab("head_pre")))
    if logit_positions is not None:
        hooks += head_slicer(loaded.model, list(logit_positions), T)
    with hooked(hooks), torch.inference_mode():
        out = loaded.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=True,
            output_attentions=True,
            return_dict=True,
        )

    def stack(name: str) -> torch.Tensor:
        vals = keep[name]
        if any(v is None for v in vals):
            raise RuntimeError(f"the decomposition pass did not capture {name} of every block")
        return torch.stack([v.float().cpu() for v in vals if v is not None])

    def flat(x: torch.Tensor) -> torch.Tensor:  # [1, T, *] or [T, *] -> [T, *]
        return x[0] if x.dim() == 3 and x.shape[0] == 1 else x

    for name in ("v", "mlp_out", "attn_update", "mlp_update", "attn_sum", "mlp_sum"):
        keep[name] = [flat(v) if v is not None else None for v in keep[name]]
    final_found = "final_in" in other
    hidden = stack_float32([*out.hidden_states[:L], other["final_in"] if final_found else out.hidden_states[L]])
    hs = [torch.from_numpy(h) for h in hidden]
    z = stack("z")
    attn_out = stack("attn_out")
    mlp_out = stack("mlp_out")
    values = torch.stack([parts.values(v).float().cpu() for v in keep["v"] if v is not None])
    attn_update = stack("attn_update") if parts.blocks[0].attn_update_norm is not None else attn_out
    mlp_update = stack("mlp_update") if parts.blocks[0].mlp_update_norm is not None else mlp_out
    resid_pre = torch.from_numpy(hidden[:L])
    if parts.residual == "post_ln":
        attn_sum, mlp_sum = stack("attn_sum"), stack("mlp_sum")
        resid_post = torch.stack([h[0].float().cpu() for h in out.hidden_states[1 : L + 1]])
        resid_mid = mlp_sum - mlp_update
    else:
        resid_mid = resid_pre + attn_update
        resid_post = resid_mid + mlp_update
        attn_sum, mlp_sum = resid_mid, resid_post
    final_in = hs[L] if final_found else resid_post[-1]
    raw = getattr(out, "logits", None)
    logits = position_logits(raw.cpu() if raw is not None else None, logit_positions, T)
    head_pre = other["head_pre"][0].float().cpu() if "head_pre" in other else None
    # per layer, not stacked, in the model's dtype: each entry is the pass's own weights tensor on a CPU model (no
    # 151 MB copy for GPT-2 at 512 tokens: the decomposition pass 588 -> ~550 ms for the BERT shape); a 16-bit
    # model's maps are widened one layer at a time by their reader (TinyLlama at 512 tokens: 0.74 GB of float32
    # copies were held beside its 0.37 GB of bfloat16 maps)
    att = [a[0].cpu() for a in out.attentions]
    return Decomposition(
        parts=parts,
        embed=hs[0],
        resid_pre=resid_pre,
        z=z,
        attn_out=attn_out,
        values=values,
        mlp_out=mlp_out,
        attn_update=attn_update,
        mlp_update=mlp_update,
        attn_sum=attn_sum,
        mlp_sum=mlp_sum,
        resid_mid=resid_mid,
        resid_post=resid_post,
        final_in=final_in,
        attentions=att,
        logits=logits,
        head_pre=head_pre,
        hidden_states=hidden,
        final_norm=final_found,
        mlp_layers=tuple(int(layer) for layer in mlp_layers),
        mlp_acts=np.stack([acts[int(layer)] for layer in mlp_layers]).astype(np.float32, copy=False)
        if mlp_layers
        else None,
    )


_PASS_LOCK = threading.Lock()
_PASSES: list[tuple[weakref.ref[Capture], Decomposition]] = []

#: The one line shown (page, manifest, PDF) when the architecture map does not know the model.
PEER_VIEWS = "direct logit attribution, promoted tokens and information-flow routes"


def shared_pass(loaded: LoadedModel, capture: Capture) -> Decomposition:
    """The decomposition pass of one capture, run once and shared by the DLA and flow steps of one analysis
    (entries keyed on the capture object's identity, held weakly; `release_pass` drops one)."""
    with _PASS_LOCK:
        _PASSES[:] = [(ref, d) for ref, d in _PASSES if ref() is not None]  # analyses that ended without release
        for ref, d in _PASSES:
            if ref() is capture:
                return d
    dec = decomposition_pass(loaded, capture.input_ids, capture.attention_mask)
    with _PASS_LOCK:
        _PASSES.append((weakref.ref(capture), dec))
    return dec


def release_pass(capture: Capture) -> None:
    """Forget the decomposition pass of `capture` (the last step that reads it calls this)."""
    with _PASS_LOCK:
        _PASSES[:] = [(ref, d) for ref, d in _PASSES if ref() is not None and ref() is not capture]


# ----------------------------------------------------------------------------------------------------------------
# The walk: every part of the residual at position t, carried to the unembedding's input


@dataclass
class Carried:
    """The parts at one position carried through the frozen maps to the unembedding's input.

    vectors [N, D'] (sum = the unembedding's input at t, up to rounding), layers/components/heads the labels,
    scale_out: the soft-cap ratio cap(z)/z per vocabulary entry is applied later (logit space).
    """

    vectors: torch.Tensor
    layers: list[int]
    components: list[str]
    heads: list[int]


def _frozen(vecs: torch.Tensor, norm: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale, shift, centre = frozen_norm(norm, x)
    return apply_frozen(vecs, scale, centre), shift


def carry(dec: Decomposition, t: int) -> Carried:
    """All parts of the residual stream at position t, carried through the frozen norms (and the masked-LM head's
    dense / gate / LayerNorm) to the unembedding's input. See the module docstring."""
    import torch

    with torch.inference_mode():
        return _carry(dec, t)


def _carry(dec: Decomposition, t: int) -> Carried:
    import torch

    P = dec.parts
    H, dh = P.heads.n_heads, P.heads.head_dim
    layers, comps, heads = [0], ["embedding"], [-1]

    def add(layer: int, comp: str, head: int = -1) -> None:  # the label of the row just appended to V
        layers.append(layer)
        comps.append(comp)
        heads.append(head)

    V = dec.embed[t][None]

    def with_shift(V: torch.Tensor, shift: torch.Tensor, layer: int) -> torch.Tensor:
        """Append a norm's shift β as a "bias" part (RMSNorms have none: nothing is appended)."""
        if not bool((shift != 0).any()):
            return V
        add(layer, "bias")
        return torch.cat([V, shift[None]])

    for l, b in enumerate(P.blocks):
        W = P.head_out_weights(b).detach().float().cpu()  # [H, dh, D]
        zt = dec.z[l, t].reshape(H, dh)
        new = torch.einsum("hd,hde->he", zt, W)  # [H, D]
        b_o = P.out_bias(b)
        if b_o is not None:
            new = torch.cat([new, b_o.detach().float().cpu()[None]])
        if b.attn_update_norm is not None:
            new, shift = _frozen(new, b.attn_update_norm, dec.attn_out[l, t])
            if b_o is None and float(shift.abs().max()) > 0:
                new = torch.cat([new, shift[None]])
            elif b_o is not None:
                new[-1] = new[-1] + shift
        V = torch.cat([V, new])
        for h in range(H):
            add(l + 1, "attention", h)
        if new.shape[0] > H:
            add(l + 1, "bias")
        if b.attn_residual_norm is not None:
            V, shift = _frozen(V, b.attn_residual_norm, dec.attn_sum[l, t])
            V = with_shift(V, shift, l + 1)
        m = dec.mlp_out[l, t][None]
        if b.mlp_update_norm is not None:
            m, shift = _frozen(m, b.mlp_update_norm, dec.mlp_out[l, t])
            m = m + shift
        V = torch.cat([V, m])
        add(l + 1, "mlp")
        if b.mlp_residual_norm is not None:
            V, shift = _frozen(V, b.mlp_residual_norm, dec.mlp_sum[l, t])
            V = with_shift(V, shift, l + 1)
    head_layer = P.n_layers + 1
    if P.final_norm is not None:
        V, shift = _frozen(V, P.final_norm, dec.final_in[t])
        V = with_shift(V, shift, head_layer)
    if P.unembed_in is not None:
        V = V @ weight(P.unembed_in).detach().float().cpu().t()
    if P.head_dense is not None:
        V = V @ weight(P.head_dense).detach().float().cpu().t()
        db = bias(P.head_dense)
        if db is not None:
            V = torch.cat([V, db.detach().float().cpu()[None]])
            add(head_layer, "bias")
        if P.head_act is not None:
            u = dec.head_pre[t] if dec.head_pre is not None else V.sum(0)
            act = P.head_act(u[None])[0].float()
            gate = torch.where(
                u.abs() > 1e-12, act / torch.where(u.abs() > 1e-12, u, torch.ones_like(u)), torch.full_like(u, 0.5)
            )
            V = V * gate
        if P.head_norm is not None:
            V, shift = _frozen(V, P.head_norm, V.sum(0))
            V = with_shift(V, shift, head_layer)
    return Carried(vectors=V, layers=layers, components=comps, heads=heads)


def _unembed_weight(P: ModelParts) -> tuple[torch.Tensor, torch.Tensor | None]:
    assert P.unembed is not None
    W = weight(P.unembed).detach().float().cpu()
    b = bias(P.unembed)
    return W, (b.detach().float().cpu() if b is not None else None)


def softcap_ratio(P: ModelParts, z: torch.Tensor) -> torch.Tensor:
    """cap(z) / z (1 where there is no cap, or z = 0): the frozen factor of Gemma-2's final soft-cap."""
    import torch

    if P.logit_softcap is None:
        return torch.ones_like(z)
    capped = P.transform_logits(z)
    return torch.where(
        z.abs() > 1e-12, capped / torch.where(z.abs() > 1e-12, z, torch.ones_like(z)), torch.ones_like(z)
    )


# ----------------------------------------------------------------------------------------------------------------
# The section


@serializable
@dataclass(frozen=True)
class DLASection:
    """Direct logit attribution of one token at one position, and promoted / suppressed tokens.

    position / token_id / token: where and what is attributed (the model's top prediction at the target position).
    logit: the model's own logit of token_id at position. n_layers L, n_heads H.
    layers int [N], components [N] (embedding / attention / mlp / bias), heads int [N] (−1 when not a head),
    values float64 [N]: the parts (see the module docstring); sum_abs_error = |Σ values − logit|.
    promote_positions: positions whose block updates have promoted / suppressed tables; promote_block_ids
    int64 [P, L, 2, k] and promote_block_logits float64 [P, L, 2, k] (2 = attention, MLP update; k top tokens in
    descending order of the direct logit change); demote_* the same for the k most negative.
    promote_head_ids / promote_head_logits / demote_head_*: [L, H, k] at `position`.
    token_texts: {id: text} for every id in the tables.
    method: how DLA was computed; notes: what the user must know (post-LN freezing, soft-cap).
    """

    position: int
    token_id: int
    token: str
    logit: float
    n_layers: int
    n_heads: int
    layers: np.ndarray
    components: list[str]
    heads: np.ndarray
    values: np.ndarray
    sum_abs_error: float
    promote_positions: list[int]
    promote_block_ids: np.ndarray
    promote_block_logits: np.ndarray
    demote_block_ids: np.ndarray
    demote_block_logits: np.ndarray
    promote_head_ids: np.ndarray
    promote_head_logits: np.ndarray
    demote_head_ids: np.ndarray
    demote_head_logits: np.ndarray
    token_texts: dict[str, str] = field(default_factory=dict)
    residual: str = "pre_ln"
    method: str = DLA_METHOD
    notes: list[str] = field(default_factory=list)

    def head_matrix(self) -> np.ndarray:
        """float64 [L, H]: DLA of each head (layer l = row l − 1)."""
        out = np.zeros((self.n_layers, self.n_heads))
        for l, c, h, v in zip(self.layers, self.components, self.heads, self.values):
            if c == "attention":
                out[int(l) - 1, int(h)] = v
        return out

    def mlp_column(self) -> np.ndarray:
        """float64 [L]: DLA of each block's MLP output."""
        out = np.zeros(self.n_layers)
        for l, c, v in zip(self.layers, self.components, self.values):
            if c == "mlp":
                out[int(l) - 1] = v
        return out

    def total(self, component: str) -> float:
        return float(sum(v for c, v in zip(self.components, self.values) if c == component))

    def text_of(self, token_id: int) -> str:
        return self.token_texts.get(str(int(token_id)), f"<id {int(token_id)}>")

    def table_rows(self) -> list[tuple[int, str, int, float]]:
        """(layer, component, head, logit) rows in order: the CSV."""
        return [
            (int(l), c, int(h), float(v)) for l, c, h, v in zip(self.layers, self.components, self.heads, self.values)
        ]


def _topk(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import torch

    k = min(k, logits.shape[-1])
    up_v, up_i = torch.topk(logits, k, dim=-1)
    dn_v, dn_i = torch.topk(-logits, k, dim=-1)
    return (
        up_i.numpy().astype(np.int64),
        up_v.double().numpy(),
        dn_i.numpy().astype(np.int64),
        (-dn_v).double().numpy(),
    )


#: Rows of the [rows, V] logit block of one product in `promoted_tables` (float32 elements: 64 MiB): every row of
#: the GPT-2 or TinyLlama shape's tables fits in one product, and a 256 k vocabulary still reads W_U once per ~64
#: rows instead of once per row.
TABLE_FLOATS = 1 << 24


def promoted_tables(rows: torch.Tensor, W_U: torch.Tensor, k: int) -> tuple[np.ndarray, ...]:
    """Top-k promoted and suppressed tokens of every row of `rows` [R, D'] read through the unembedding W_U [V, D']:
    (up ids, up logits, down ids, down logits), each [R, k]. All rows (every position's block updates and the target's
    heads) go through one dense product per TABLE_FLOATS-sized block of rows, so W_U is read once per block rather
    than once per position; the logits of a row are the same dot products as row @ W_U.T. `rows` has ≥ 1 row."""
    per = max(1, TABLE_FLOATS // max(int(W_U.shape[0]), 1))
    parts = [_topk(rows[r0 : r0 + per] @ W_U.t(), k) for r0 in range(0, rows.shape[0], per)]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def block_update_rows(c: Carried, n_layers: int) -> torch.Tensor:
    """[L, 2, D'] carried attention updates (heads + biases of that block's attention) and MLP updates."""
    import torch

    D = c.vectors.shape[1]
    out = torch.zeros(n_layers, 2, D)
    seen_attn_bias: set[int] = set()
    for i, (l, comp) in enumerate(zip(c.layers, c.components)):
        if comp == "attention":
            out[l - 1, 0] += c.vectors[i]
        elif comp == "mlp":
            out[l - 1, 1] += c.vectors[i]
        elif (
            comp == "bias"
            and 1 <= l <= n_layers
            and l not in seen_attn_bias
            and i > 0
            and c.components[i - 1] == "attention"
        ):
            out[l - 1, 0] += c.vectors[i]  # the attention output bias (or Gemma's norm shift) right after the heads
            seen_attn_bias.add(l)
    return out


def promote_window(T: int, position: int, L: int, D: int, V: int) -> list[int]:
    """Positions whose block updates get promoted / suppressed tables (see PROMOTE_MAX_MACS_CPU)."""
    from core.steps.logit_lens import grid_window

    per_pos = 2.0 * L * D * V
    if PROMOTE_MAX_MACS_CPU is None or per_pos * T <= PROMOTE_MAX_MACS_CPU:
        return list(range(T))
    n = max(1, int(PROMOTE_MAX_MACS_CPU // per_pos))
    c0, c1 = grid_window(T, position, n)
    return list(range(c0, c1))


def compute_dla(
    dec: Decomposition, position: int, token_id: int, tokenizer: object, *, k: int = PROMOTE_K
) -> DLASection:
    """DLA of `token_id` at `position` plus the promoted / suppressed tables (see DLASection)."""
    import torch

    P = dec.parts
    if not P.has_head:
        raise ArchitectureNotSupported(
            P.architecture, "direct logit attribution (the model has no language-model head)"
        )
    W_U, b_U = _unembed_weight(P)
    L, H = P.n_layers, P.heads.n_heads
    T = dec.embed.shape[0]
    with torch.inference_mode():
        c = carry(dec, position)
        vals = c.vectors @ W_U[token_id]  # [N]
        layers, comps, heads = list(c.layers), list(c.components), list(c.heads)
        if b_U is not None:
            vals = torch.cat([vals, b_U[token_id][None]])
            layers.append(L + 1)
            comps.append("bias")
            heads.append(-1)
        z = vals.sum()
        vals = vals * softcap_ratio(P, z)
        model_logit = float(dec.logits[position][token_id]) if dec.logits is not None else float(vals.sum())
        err = abs(float(vals.double().sum()) - model_logit)

        positions = promote_window(T, position, L, W_U.shape[1], W_U.shape[0])
        block_rows = [block_update_rows(c if t == position else carry(dec, t), L).reshape(2 * L, -1) for t in positions]
        head_rows = torch.stack([c.vectors[i] for i, comp in enumerate(c.components) if comp == "attention"])
        up_i, up_v, dn_i, dn_v = promoted_tables(torch.cat([*block_rows, head_rows]), W_U, k)
        n_blocks = 2 * L * len(positions)
        P_ = len(positions)
        bi, bl = up_i[:n_blocks].reshape(P_, L, 2, -1), up_v[:n_blocks].reshape(P_, L, 2, -1)
        di, dl = dn_i[:n_blocks].reshape(P_, L, 2, -1), dn_v[:n_blocks].reshape(P_, L, 2, -1)
        hi, hl, hdi, hdl = up_i[n_blocks:], up_v[n_blocks:], dn_i[n_blocks:], dn_v[n_blocks:]
    ids = set(np.concatenate([bi.ravel(), di.ravel(), hi.ravel(), hdi.ravel()]).tolist())
    ids.add(int(token_id))
    texts = {str(i): _text(tokenizer, i) for i in sorted(ids)}
    notes = []
    if P.residual == "post_ln":
        notes.append(
            "post-LN model: every part passes through each later layer's LayerNorm with its statistics "
            "frozen at this run, and the masked-LM head's GELU gate is frozen too; the parts sum to the logit "
            "exactly, but a part's value depends on that freezing more than in a pre-LN model"
        )
    if P.logit_softcap is not None:
        notes.append(
            f"the final soft-cap {P.logit_softcap:g}·tanh(z/{P.logit_softcap:g}) scales every part by the "
            "same factor cap(z)/z; promoted / suppressed tokens are read before the cap"
        )
    return DLASection(
        position=int(position),
        token_id=int(token_id),
        token=texts[str(int(token_id))],
        logit=model_logit,
        n_layers=L,
        n_heads=H,
        layers=np.asarray(layers, dtype=np.int64),
        components=comps,
        heads=np.asarray(heads, dtype=np.int64),
        values=vals.double().numpy(),
        sum_abs_error=err,
        promote_positions=positions,
        promote_block_ids=bi,
        promote_block_logits=bl,
        demote_block_ids=di,
        demote_block_logits=dl,
        promote_head_ids=hi.reshape(L, H, -1),
        promote_head_logits=hl.reshape(L, H, -1),
        demote_head_ids=hdi.reshape(L, H, -1),
        demote_head_logits=hdl.reshape(L, H, -1),
        token_texts=texts,
        residual=P.residual,
        notes=notes,
    )


def _text(tokenizer: object, i: int) -> str:
    try:
        return token_text(tokenizer, i)
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        return f"<id {int(i)}>"


def run_dla(ctx: StepContext) -> DLASection | None:
    """Analysis step "Direct logit attribution": the model's top prediction at the target position, decomposed
    (None for an encoder without a head, or when the architecture map does not know the model: then a warning)."""
    if ctx.family == "encoder" or ctx.capture.logits is None:
        return None
    _, why = try_model_parts(ctx.loaded.model, PEER_VIEWS, "are")
    if why:
        ctx.warn(why)
        return None
    dec = ctx.views_pass if ctx.views_pass is not None else shared_pass(ctx.loaded, ctx.capture)
    pos = ctx.target_position
    token = int(ctx.capture.logits[pos].argmax())
    try:
        sec = compute_dla(dec, pos, token, ctx.loaded.tokenizer)
    except ArchitectureNotSupported as exc:
        ctx.warn(str(exc))
        return None
    tol = (1e-4 if ctx.loaded.dtype == "float32" else 3e-2) * max(1.0, abs(sec.logit))
    if sec.sum_abs_error > tol:
        ctx.warn(
            f"direct logit attribution: the parts sum to {sec.logit + sec.sum_abs_error:.4g} or "
            f"{sec.logit - sec.sum_abs_error:.4g}, not the logit {sec.logit:.4g} ({ctx.loaded.dtype} rounding)"
        )
    return sec
