"""Information-flow routes (Ferrando & Voita 2024, "Information Flow Routes: Automatically Interpreting Language
Models at Scale"): which earlier representations each representation is mostly built from.

Nodes are residual-stream states (layer, position): x_0,t the embedding output, a_l,t the state after block l's
attention, m_l,t block l's MLP output, x_l,t the block output. Each state y that is a sum is split into its parts c:

* after the attention of block l at position i: y = x_{l-1},i (residual) + Σ_j z_{j→i} + b_O, with one part per
  source token j, z_{j→i} = Σ_h A^h_ij v^h_j W_O^h (v^h_j the value vector of j for head h; through Gemma-2's update
  norm with its statistics frozen), as in the paper; b_O, the output bias, is a part with no edge;
* after the MLP of block l: y = a_l,i (residual) + MLP update.

Post-LN models (BERT …) split the sum their residual LayerNorm receives (x + update), before the norm.

The contribution of a part is its proximity to the whole, max(‖y‖₁ − ‖y − c‖₁, 0), normalised over the parts of y
(so the contributions of each y are in [0, 1] and sum to 1; if every proximity of a y were 0 its parts would
share equally). The edge j → i of block l carries the contribution of z_{j→i}. Per head, for the edges of at least
HEAD_STORE_MIN, each head's part A^h_ij v^h_j W_O^h gets its proximity under the same normaliser as y's parts (the
tooltips and flow_edges.csv): these head rows show which heads carry an edge; being proximities of sub-parts they
need not add up to the edge's weight exactly. (The LLM Transparency Tool makes every (token, head) pair a part and
sums over heads; that costs H times more — 12× on GPT-2 small — for the same graph in most cases.) The graph keeps
the edges whose weight is at least a threshold (default 0.04, as in the LLM Transparency Tool) that are reachable
backwards from the chosen token's last state, down to the embeddings.

Everything is computed once from the decomposition pass (`core.steps.dla.decomposition_pass`): the page's threshold and
token widgets only prune the stored contributions, they run no model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.infra.serialize import serializable
from core.model.arch import frozen_norm, try_model_parts
from core.steps.context import StepContext
from core.steps.dla import PEER_VIEWS, release_pass, shared_pass

if TYPE_CHECKING:
    import torch

    from core.steps.dla import Decomposition

#: Default edge threshold of the graph (the LLM Transparency Tool's default; the paper uses thresholds of this size).
DEFAULT_THRESHOLD = 0.04
#: Threshold slider bounds on the page (a rule kept once, here).
THRESHOLD_MIN = 0.01
THRESHOLD_MAX = 0.5
#: Per-head contributions are stored (for the CSV and the tooltips) when at least this large.
HEAD_STORE_MIN = 0.005
#: Floats of the [J, I, D] block of token parts held at once (2**19 = 2 MiB, about a core's L2 cache: the sub_,
#: abs_ and sum passes over it then stay in cache). Routes of a 512-token text on a 2-core Xeon (AVX-512):
#: BERT shape 806 ms, GPT-2 shape 501 ms (943 and 611 ms with 2**20; 2**18, more and smaller products, 927 and
#: 578 ms); at TinyLlama's width one 64-query block takes 26.8 ms (2**19), 28.3 ms (2**18), 31.6 ms (2**20).
CHUNK_FLOATS = 2**19
#: Queries per block (I): each batched product is QUERY_BLOCK × H by H × D per source, large enough for the matrix
#: kernel (blocks of 2 queries, as before issue 24's second round, spent most of the time in per-product overhead:
#: 4× slower for the same arithmetic, BERT shape at 512 tokens); the sources are then cut to fit CHUNK_FLOATS.
QUERY_BLOCK = 64
#: A normalising sum below this counts as 0 (see `contributions`).
EPS = 1e-9

KINDS = ("attention", "residual", "mlp")


def contributions(parts: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """Normalised proximity of each part to the whole. parts [P, *B, D], whole [*B, D] → [P, *B]; for every batch
    entry the P values are in [0, 1] and sum to 1. prox = max(‖y‖₁ − ‖y − c‖₁, 0) / Σ_parts; in the degenerate case
    where every proximity is 0 the parts share equally."""
    prox = _proximity(parts, whole)
    return _normalise(prox, prox.sum(0))


def _proximity(parts: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """max(‖y‖₁ − ‖y − c‖₁, 0): parts [P, *B, D], whole [*B, D] → [P, *B]."""
    return (whole.abs().sum(-1) - (whole - parts).abs().sum(-1)).clamp(min=0)


def _normalise(prox: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    import torch

    uniform = torch.full_like(prox, 1.0 / prox.shape[0])
    return torch.where(total > EPS, prox / total.clamp(min=EPS), uniform)


def _frozen_apply(parts: torch.Tensor, scale: torch.Tensor, centre: bool) -> torch.Tensor:
    """A frozen norm (scale broadcast against parts [.., D]) applied to decomposition parts."""
    if centre:
        parts = parts - parts.mean(-1, keepdim=True)
    return parts * scale


@dataclass(frozen=True)
class Edge:
    """One graph edge. Nodes are "x{l}_{t}" (block output, l = 0 embeddings), "a{l}_{t}" (after attention) and
    "m{l}_{t}" (MLP output). kind: attention / residual / mlp; head −1 unless a per-head row."""

    layer: int
    source: str
    target: str
    kind: str
    head: int
    weight: float


@serializable
@dataclass(frozen=True)
class FlowSection:
    """Contributions of every part of every state (see the module docstring). L blocks, T tokens.

    attn [L, T, T] float32: attn[l, i, j] = contribution of token j (through all heads of block l + 1) to a_{l+1},i;
    attn_residual [L, T], attn_bias [L, T]: the residual's and the output bias's share of a_{l+1},i;
    mlp [L, T], mlp_residual [L, T]: the MLP's and the residual's share of x_{l+1},i;
    head_layer / head_target / head_source / head_index int32 [E], head_weight float32 [E]: the per-head
    contributions that are at least HEAD_STORE_MIN.
    position: the default token (the analysis target); threshold: the default threshold.
    """

    n_layers: int
    n_heads: int
    tokens: list[str]
    attn: np.ndarray
    attn_residual: np.ndarray
    attn_bias: np.ndarray
    mlp: np.ndarray
    mlp_residual: np.ndarray
    head_layer: np.ndarray
    head_target: np.ndarray
    head_source: np.ndarray
    head_index: np.ndarray
    head_weight: np.ndarray
    position: int
    threshold: float = DEFAULT_THRESHOLD
    notes: list[str] = field(default_factory=list)

    def heads_of(self, layer: int, target: int, source: int) -> list[tuple[int, float]]:
        """[(head, weight)] of the stored per-head parts of edge source → target in block `layer` (1-based),
        largest first."""
        sel = (self.head_layer == layer - 1) & (self.head_target == target) & (self.head_source == source)
        out = [(int(h), float(w)) for h, w in zip(self.head_index[sel], self.head_weight[sel])]
        return sorted(out, key=lambda hw: -hw[1])

    def routes(self, position: int | None = None, threshold: float | None = None) -> list[Edge]:
        """The graph edges with weight ≥ threshold reachable backwards from x_L,position (see the module docstring),
        ordered from the top layer down. Pure numpy: runs no model."""
        pos = self.position if position is None else int(position)
        thr = self.threshold if threshold is None else float(threshold)
        T = len(self.tokens)
        if not 0 <= pos < T:
            raise ValueError(f"position {pos} is outside 0..{T - 1}")
        edges: list[Edge] = []
        frontier = {pos}  # positions whose x_l node is reached
        for l in range(self.n_layers, 0, -1):
            a_nodes: set[int] = set()
            for i in sorted(frontier):
                w_res, w_mlp = float(self.mlp_residual[l - 1, i]), float(self.mlp[l - 1, i])
                if w_mlp >= thr:
                    edges.append(Edge(l, f"m{l}_{i}", f"x{l}_{i}", "mlp", -1, w_mlp))
                    edges.append(Edge(l, f"a{l}_{i}", f"m{l}_{i}", "mlp", -1, w_mlp))
                    a_nodes.add(i)
                if w_res >= thr:
                    edges.append(Edge(l, f"a{l}_{i}", f"x{l}_{i}", "residual", -1, w_res))
                    a_nodes.add(i)
            nxt: set[int] = set()
            for i in sorted(a_nodes):
                w_res = float(self.attn_residual[l - 1, i])
                if w_res >= thr:
                    edges.append(Edge(l, f"x{l - 1}_{i}", f"a{l}_{i}", "residual", -1, w_res))
                    nxt.add(i)
                row = self.attn[l - 1, i]
                for j in np.flatnonzero(row >= thr).tolist():
                    edges.append(Edge(l, f"x{l - 1}_{j}", f"a{l}_{i}", "attention", -1, float(row[j])))
                    nxt.add(j)
            frontier = nxt
        return edges

    def csv_rows(
        self, position: int | None = None, threshold: float | None = None
    ) -> list[tuple[int, str, str, str, int, float]]:
        """flow_edges.csv rows (layer, source, target, kind, head, weight): the kept edges, head −1, with the edge
        weight; each attention edge is followed by one row per head whose part is stored (≥ HEAD_STORE_MIN) with
        that head's proximity share (see the module docstring)."""
        rows: list[tuple[int, str, str, str, int, float]] = []
        for e in self.routes(position, threshold):
            if e.kind != "attention":
                rows.append((e.layer, e.source, e.target, e.kind, -1, e.weight))
                continue
            i, j = int(e.target.split("_")[1]), int(e.source.split("_")[1])
            rows.append((e.layer, e.source, e.target, "attention", -1, e.weight))
            rows.extend((e.layer, e.source, e.target, "attention", h, w) for h, w in self.heads_of(e.layer, i, j))
        return rows


def node_position(node: str) -> tuple[str, int, int]:
    """("x" | "a" | "m", layer, token) of a node name."""
    kind, rest = node[0], node[1:]
    layer, tok = rest.split("_")
    return kind, int(layer), int(tok)


def node_stage(node: str) -> float:
    """Vertical stage of a node in the layered drawing: x_l at 2l, a_l at 2l − 1, m_l at 2l − 0.5."""
    kind, layer, _ = node_position(node)
    return {"x": 2.0 * layer, "a": 2.0 * layer - 1.0, "m": 2.0 * layer - 0.5}[kind]


def describe_node(node: str, tokens: Iterable[str]) -> str:
    kind, layer, t = node_position(node)
    toks = list(tokens)
    tok = toks[t] if 0 <= t < len(toks) else "?"
    what = {
        "x": "embedding" if layer == 0 else f"after block {layer}",
        "a": f"after attention of block {layer}",
        "m": f"MLP of block {layer}",
    }[kind]
    return f"{tok!r} (position {t}), {what}"


def compute_flow(dec: Decomposition, tokens: list[str], position: int, chunk_floats: int = CHUNK_FLOATS) -> FlowSection:
    """All contributions of the decomposition pass `dec` (see the module docstring), float32 on the CPU. Cost per
    block: the [J, I, D] token parts c_{j→i} as one batched matrix product per chunk of queries (`torch.bmm` of
    A [J, I, H] by v W_O [J, H, D] for a block of QUERY_BLOCK queries and as many sources as fit; only the sources a
    block attends to: causal models skip the upper triangle), then ‖y_i − c_{j→i}‖₁ in place, plus the head parts
    of the edges ≥ HEAD_STORE_MIN, chunk_floats // (H · D) edges at a time (they were chunk_floats // D, H times
    the chunk: 64 MB blocks at TinyLlama's width, each pass over them from main memory; a 2-layer model of its width
    took 3.9–4.2 s at 512 tokens, now 1.6 s, and 1.0–1.1 → 0.39 s at 128). Memory: a chunk holds about
    `chunk_floats` floats, whatever the length of the text.
    Equal to the pre-issue-24 loop (tests/flow_reference.py) up to float rounding."""
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
            vW = torch.einsum("thd,hde->the", v, W).contiguous()  # [T_j, H, D]: v_j^h W_O^h
            A = dec.attentions[l].float()  # [H, T_i, T_j] (a 16-bit model's maps widened here)
            bias = P.out_bias(b)
            bvec = bias.detach().float().cpu() if bias is not None else None
            scale = None
            if b.attn_update_norm is not None:  # Gemma-2: the parts pass the update norm, frozen per query
                sc, shift, centre = frozen_norm(b.attn_update_norm, dec.attn_out[l])
                scale = (sc, centre)
                extra = shift if bvec is None else sc * (bvec - bvec.mean() if centre else bvec) + shift
                bvec = None if not bool((extra != 0).any()) else extra  # per query [T, D] or [D]
            # centring over D is linear, so it commutes with Σ_h A^h_ij (…): centre v W_O once, not every part
            vWc = vW - vW.mean(-1, keepdim=True) if scale is not None and scale[1] else vW
            x = dec.resid_pre[l]  # [T, D]
            y = dec.attn_sum[l]  # [T, D]: x + attention update (post-LN: before the LayerNorm)
            y_l1 = y.abs().sum(-1)  # [T]
            reach = A.amax(0) > 0  # [T_i, T_j]: sources a query attends to
            D = vW.shape[-1]
            per_source = max(1, chunk_floats // (QUERY_BLOCK * D))  # sources per product: [J', I, D] ≈ chunk_floats
            per_edge = max(1, chunk_floats // (H * D))  # head parts [E', H, D]: about chunk_floats too
            A_jih = A.permute(2, 1, 0)  # [T_j, T_i, H] view: the left factor of the batched product
            for i0 in range(0, T, QUERY_BLOCK):
                i1 = min(T, i0 + QUERY_BLOCK)
                I = i1 - i0
                J = int(reach[i0:i1].nonzero()[:, 1].max()) + 1 if bool(reach[i0:i1].any()) else 1
                whole = y[i0:i1]  # [I, D]
                a = A_jih[:J, i0:i1].contiguous()  # [J, I, H]
                tok_prox = torch.empty(J, I)
                for j0 in range(0, J, per_source):
                    j1 = min(J, j0 + per_source)
                    diff = torch.bmm(a[j0:j1], vWc[j0:j1])  # [J', I, D]: the token parts c_{j→i}
                    if scale is not None:
                        diff.mul_(scale[0][i0:i1])
                    # in place (sub_, abs_, then one sum): linalg.vector_norm(ord=1) measured 1.5× slower here
                    torch.sub(y_l1[i0:i1], diff.sub_(whole).abs_().sum(-1), out=tok_prox[j0:j1])
                    del diff
                tok_prox.clamp_(min=0)  # [J, I]
                tok_prox.masked_fill_(~reach[i0:i1, :J].t(), 0.0)  # an unattended source's part is 0: exactly 0
                extras = [x[i0:i1][None]]
                if bvec is not None:
                    extras.append((bvec[i0:i1] if bvec.dim() == 2 else bvec.expand(I, -1))[None])
                prox = torch.cat([tok_prox, _proximity(torch.cat(extras), whole)])  # [J + 1 (+1), I]
                total = prox.sum(0)  # [I]
                c = _normalise(prox, total)
                attn[l, i0:i1, :J] = c[:J].t().numpy()
                attn_res[l, i0:i1] = c[J].numpy()
                if bvec is not None:
                    attn_bias[l, i0:i1] = c[J + 1].numpy()
                # per-head parts of the edges worth a tooltip: proximity of A^h_ij v_j^h W_O^h under y_i's normaliser
                big = (c[:J].t() >= HEAD_STORE_MIN).nonzero()  # [E, 2] (i - i0, j), by query then source
                for e0 in range(0, big.shape[0], per_edge):
                    ii, jj = big[e0 : e0 + per_edge, 0], big[e0 : e0 + per_edge, 1]
                    hp = vWc[jj].mul_(A[:, i0:i1][:, ii, jj].t()[..., None])  # [E', H, D], one copy, then in place
                    if scale is not None:
                        hp.mul_(scale[0][i0:i1][ii][:, None])
                    hprox = (y_l1[i0:i1][ii][:, None] - hp.sub_(whole[ii][:, None]).abs_().sum(-1)).clamp_(
                        min=0
                    )  # [E', H]
                    del hp
                    hw_e = hprox / total[ii].clamp(min=EPS)[:, None]  # [E', H]
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


@dataclass(frozen=True)
class DrawNode:
    """A node of the layered drawing: x = token position (+0.25 for MLP nodes), y = stage (node_stage)."""

    node: str
    x: float
    y: float
    kind: str
    layer: int
    token: str
    label: str


@dataclass(frozen=True)
class DrawEdge:
    """An edge of the layered drawing from (x, y) to (x2, y2); tooltip names the heads of attention edges."""

    x: float
    y: float
    x2: float
    y2: float
    kind: str
    weight: float
    layer: int
    source: str
    target: str
    tooltip: str


def layout(section: FlowSection, edges: list[Edge]) -> tuple[list[DrawNode], list[DrawEdge]]:
    """Coordinates of the layered drawing of `edges` (x = token position, y = stage)."""
    names = {e.source for e in edges} | {e.target for e in edges}
    nodes = []
    for n in sorted(names, key=lambda s: (node_stage(s), node_position(s)[2])):
        kind, layer, t = node_position(n)
        nodes.append(
            DrawNode(
                node=n,
                x=float(t) + (0.25 if kind == "m" else 0.0),
                y=node_stage(n),
                kind=kind,
                layer=layer,
                token=section.tokens[t],
                label=describe_node(n, section.tokens),
            )
        )
    pos = {d.node: (d.x, d.y) for d in nodes}
    recs = []
    for e in edges:
        (x1, y1), (x2, y2) = pos[e.source], pos[e.target]
        tip = f"{e.kind} {e.weight:.3f}"
        if e.kind == "attention":
            i, j = node_position(e.target)[2], node_position(e.source)[2]
            top = section.heads_of(e.layer, i, j)[:4]
            tip += " · heads " + ", ".join(f"{h}: {w:.3f}" for h, w in top) if top else ""
        recs.append(
            DrawEdge(
                x=x1,
                y=y1,
                x2=x2,
                y2=y2,
                kind=e.kind,
                weight=e.weight,
                layer=e.layer,
                source=e.source,
                target=e.target,
                tooltip=tip,
            )
        )
    return nodes, recs


def max_stage(n_layers: int) -> float:
    return 2.0 * n_layers


def line_width(weight: float) -> float:
    """Stroke width of an edge in the drawings (points), growing with its weight."""
    return 0.4 + 4.0 * math.sqrt(max(0.0, weight))


def run_flow(ctx: StepContext) -> FlowSection | None:
    """Analysis step "Information-flow routes": every contribution, the target position as the default token (None
    with a warning when the architecture map does not know the model). Releases the shared decomposition pass."""
    _, why = try_model_parts(ctx.loaded.model, PEER_VIEWS, "are")
    if why:
        ctx.warn(why)
        return None
    if ctx.views_pass is not None:  # the pipeline's one pass for the views
        return compute_flow(ctx.views_pass, list(ctx.display_tokens), ctx.target_position)
    try:
        dec = shared_pass(ctx.loaded, ctx.capture)
        return compute_flow(dec, list(ctx.display_tokens), ctx.target_position)
    finally:
        release_pass(ctx.capture)
