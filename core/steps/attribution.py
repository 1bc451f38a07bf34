"""Token and per-head attribution for one target position.

* Attention rollout (Abnar & Zuidema 2020), from the captured attentions (no model needed).
* Gradient × input and integrated gradients on the input *token* embeddings (the tensor passed as
  `inputs_embeds`; position and token-type embeddings are added inside the model and are not attributed).
* Per-head scores: gradient × head output at the input of each layer's attention output projection.

The attributed scalar is f(x) = log p(y* | x) at the target position, y* the model's top prediction there (masked
LM: the prediction at the mask; causal LM: the next-token prediction made at the target position, normally the last
one). Encoders without a language-model head get rollout only, with a note.

Gradients never touch the model's parameters (they keep requires_grad=False): only the input embeddings and the
hooked head outputs take gradients, under `torch.enable_grad()`; hooks are removed in a `finally`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.infra.devices import fast_attention
from core.infra.serialize import serializable
from core.model.arch import encoder_head, try_model_parts
from core.model.capture import Capture
from core.model.forward import supports_logits_to_keep
from core.model.hooks import hooked
from core.model.loading import LoadedModel
from core.steps.context import StepContext

log = logging.getLogger(__name__)

HEAD_METHOD = (
    "gradient x head output: score(l, h) = sum over positions t and the head's dimensions d of z[t, d] * df/dz[t, d], "
    "where z is the input of layer l's attention output projection (GPT-2 attn.c_proj, Llama self_attn.o_proj, "
    "BERT attention.output.dense), i.e. the concatenated per-head attention outputs, split into heads; f is the "
    "log-probability of the predicted token at the target position. It is the first-order (Taylor) estimate of "
    "f(z) - f(z with head h zeroed); positive = the head supports the prediction."
)

#: Integration schedule of integrated gradients: Gauss–Legendre nodes u_k in [0, 1] and α = u^IG_POWER.
IG_POWER = 3.0
IG_SCHEDULE = (
    f"Gauss-Legendre nodes in u on [0, 1] with alpha = u^{IG_POWER:g} (weights {IG_POWER:g} u^"
    f"{IG_POWER - 1:g} w_k): more points near the zero baseline, where RMSNorm/LayerNorm of a near-zero "
    "input changes fastest; the number of nodes is doubled until the completeness gap is small"
)

#: Adaptive integrated gradients: double the steps until the completeness gap is at most IG_TOLERANCE of
#: |f(x) − f(x')| (or IG_ABS_TOLERANCE nats, for a tiny difference), or IG_MAX_STEPS is reached.
IG_TOLERANCE = 0.01
IG_ABS_TOLERANCE = 1e-3
IG_MAX_STEPS = 512

IG_BASELINE = "zero token embeddings (position embeddings are added by the model and not interpolated)"

#: Bytes of activations kept for the backward pass per batch row are estimated as
#: 4 · L · T · (16 · D + 3 · H · T); integrated gradients run in chunks that keep under this budget.
IG_MEMORY_BUDGET = 1_000_000_000


@serializable
@dataclass(frozen=True)
class AttributionSection:
    """Attribution of the prediction at one target position.

    rollout: float64 [T] (target row of rollout_matrix); rollout_matrix: float64 [T, T], rows sum to 1.
    grad_x_input, integrated_gradients: float64 [T] or None (signed sums over the embedding dimensions).
    ig_completeness_gap: |Σ_t IG_t − (f(x) − f(x'))| (absolute, in nats); ig_completeness_gap_relative: the same
    divided by |f(x) − f(x')|; ig_steps: the Gauss–Legendre nodes of the kept estimate (adaptive: doubled from the
    ig_steps setting until the relative gap ≤ IG_TOLERANCE or IG_MAX_STEPS); ig_converged: whether it met the
    tolerance; ig_history: [steps, relative gap] of each try. head_scores: float64 [L, H] or None; head_method
    documents it.
    target_logprob: f(x); baseline_logprob: f(x') for the IG baseline x'.
    """

    target_position: int
    target_token: str
    rollout: np.ndarray
    rollout_matrix: np.ndarray
    predicted_token: str | None = None
    predicted_id: int | None = None
    grad_x_input: np.ndarray | None = None
    integrated_gradients: np.ndarray | None = None
    ig_steps: int = 0
    ig_completeness_gap: float | None = None
    head_scores: np.ndarray | None = None
    head_method: str = HEAD_METHOD
    notes: list[str] = field(default_factory=list)
    ig_completeness_gap_relative: float | None = None
    ig_baseline: str = IG_BASELINE
    ig_schedule: str = IG_SCHEDULE
    target_logprob: float | None = None
    baseline_logprob: float | None = None
    ig_converged: bool | None = None
    ig_history: list[list[float]] = field(default_factory=list)

    def methods(self) -> dict[str, np.ndarray]:
        """The token-level scores present: {"rollout", "grad_x_input", "integrated_gradients"} → [T]."""
        out = {"rollout": self.rollout}
        if self.grad_x_input is not None:
            out["grad_x_input"] = self.grad_x_input
        if self.integrated_gradients is not None:
            out["integrated_gradients"] = self.integrated_gradients
        return out


# ----------------------------------------------------------------------------------------------------------------
# Attention rollout (pure)


class RolloutFolder:
    """Attention rollout folded in one layer at a time (`add(layer, maps [H, T, T])`, layers in order): the running
    product R_l = Â_l R_{l−1} is all it keeps (one T×T float64 matrix), so the maps of all layers are never needed
    at once. `result()` is R = Â_L ⋯ Â_1, the same product in the same order as `attention_rollout`."""

    def __init__(self) -> None:
        self.R: Any = None
        self.n_layers = 0

    def add(self, layer: int, maps: np.ndarray) -> None:
        import torch

        if layer != self.n_layers:
            raise ValueError(f"layer {layer} came out of order (expected {self.n_layers})")
        maps = np.asarray(maps)
        if maps.ndim != 3 or maps.shape[-1] != maps.shape[-2]:
            raise ValueError(f"a layer's attention must be [H, T, T], got shape {maps.shape}")
        T = maps.shape[-1]
        A = maps.mean(0, dtype=np.float64)  # float16 maps are averaged in float64, not in float16
        A[np.arange(T), np.arange(T)] += 1.0
        A /= A.sum(-1, keepdims=True)
        a_hat = torch.from_numpy(A)
        # the product through torch: its thread pool is the one the forward pass just used (numpy's BLAS pool
        # would contend with torch's spinning threads), 1.7× numpy's single thread at 512 tokens
        self.R = a_hat if self.R is None else a_hat @ self.R
        self.n_layers += 1

    def result(self) -> np.ndarray:
        """R float64 [T, T] (see `attention_rollout`)."""
        if self.R is None:
            raise ValueError("no layer was folded in")
        return np.asarray(self.R.numpy())


def attention_rollout(att: np.ndarray) -> np.ndarray:
    """Attention rollout R = Â_L ⋯ Â_1 with Â_l = row_normalise(A_l + I), A_l = mean over heads of layer l.

    att [L, H, T, T] (rows sum to 1) → R float64 [T, T]; R[i, j] = share of position i's final representation that
    flows from input token j; rows of R sum to 1. Computed one layer at a time with `RolloutFolder` (two T×T
    float64 matrices, not L of them: 0.74 GB for TinyLlama at 2048 tokens).
    """
    att = np.asarray(att)
    if att.ndim != 4 or att.shape[-1] != att.shape[-2]:
        raise ValueError(f"attention must be [L, H, T, T], got shape {att.shape}")
    folder = RolloutFolder()
    for l in range(att.shape[0]):
        folder.add(l, att[l])
    return folder.result()


# ----------------------------------------------------------------------------------------------------------------
# Model plumbing


def head_projection_modules(model: Any, n_layers: int) -> list[Any] | None:
    """The L modules whose input is the concatenated per-head attention output, in layer order (from the one
    architecture map, `core.model.arch.model_parts`), or None when the architecture is not in the map."""
    parts, _ = try_model_parts(model)
    if parts is None or parts.n_layers != n_layers:
        return None
    return [b.out_proj for b in parts.blocks]


def target_logprob_fn(loaded: Any, attention_mask: Any, position: int, token_id: int) -> Callable[[Any], Any]:
    """A function embeds [B, T, D] → f [B] = log_softmax(logits at `position`)[token_id] (float32).

    Causal LMs run only the prefix 0..position (later tokens cannot change the prediction there) and compute the
    head at that one position; BERT-style masked LMs run the encoder and apply the head at `position` only;
    anything else runs the whole model and picks the position.
    """
    import torch

    model = loaded.model
    if loaded.family == "causal_lm":
        keep = supports_logits_to_keep(model)
        mask = attention_mask[:, : position + 1]

        def f(emb):
            kw = {"logits_to_keep": 1} if keep else {}
            out = model(
                inputs_embeds=emb[:, : position + 1],
                attention_mask=mask.expand(emb.shape[0], -1),
                use_cache=False,
                **kw,
            )
            return torch.log_softmax(out.logits[:, -1].float(), -1)[:, token_id]

        return f

    split = encoder_head(model)

    def g(emb):
        m = attention_mask.expand(emb.shape[0], -1)
        if split is not None:
            encoder, head = split
            h = encoder(inputs_embeds=emb, attention_mask=m).last_hidden_state
            logits = head(h[:, position : position + 1])[:, 0]
        else:
            logits = model(inputs_embeds=emb, attention_mask=m).logits[:, position]
        return torch.log_softmax(logits.float(), -1)[:, token_id]

    return g


def token_embeddings(loaded: Any, input_ids: Any) -> Any:
    """Input token embeddings [1, T, D] (detached): what `inputs_embeds` replaces."""
    import torch

    with torch.no_grad():
        return loaded.model.get_input_embeddings()(input_ids).detach()


#: The gradient pass recomputes each block's activations during the backward pass (activation checkpointing) when
#: keeping them would take more than this many bytes: TinyLlama at 512 tokens in bfloat16 keeps about 0.7 GB,
#: which put the default analysis 0.35 GB over its 3.5 GB budget; the price is one more forward pass of the
#: blocks inside the backward pass.
CHECKPOINT_MIN_BYTES = 512 * 2**20


def saved_activation_bytes(loaded: Any, n_tokens: int) -> int:
    """Estimate of what autograd keeps for the backward pass of one sequence: per block and token about four
    hidden-width and four MLP-width values (norm inputs, attention output, MLP gate / up / activation), in the
    model's dtype."""
    d = int(loaded.hidden_size or 0)
    parts, _ = try_model_parts(loaded.model)
    inner = parts.mlp_width if parts is not None else 4 * d
    size = 2 if loaded.dtype in ("bfloat16", "float16") else 4
    return int(loaded.n_layers) * int(n_tokens) * (4 * d + 4 * int(inner)) * size


def _block_list(model: Any, n_layers: int) -> list[Any]:
    """The model's L transformer blocks from the architecture map ([] when the map does not know the model: the
    gradient pass then runs without checkpointing)."""
    parts, _ = try_model_parts(model)
    if parts is None or parts.n_layers != n_layers:
        return []
    return [b.module for b in parts.blocks]


@contextlib.contextmanager
def checkpointed_blocks(model: Any, n_layers: int, enabled: bool = True) -> Iterator[bool]:
    """Inside: each block's forward runs under torch.utils.checkpoint (non-reentrant: the autograd graph is the
    usual one, so gradients with respect to tensors inside a block still work; its saved activations are dropped
    and recomputed in the backward pass). Yields whether it is on. The blocks' own forward is restored on exit
    (also one that accelerate's hooks put on the instance)."""
    import torch.utils.checkpoint as ckpt

    blocks = _block_list(model, n_layers) if enabled else []
    saved: list[tuple[Any, Any]] = []
    try:
        for b in blocks:
            own = b.__dict__.get("forward")
            inner = b.forward

            def run(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
                return ckpt.checkpoint(_inner, *args, use_reentrant=False, **kwargs)

            saved.append((b, own))
            b.forward = run
        yield bool(blocks)
    finally:
        for b, own in saved:
            if own is None:
                del b.forward
            else:
                b.forward = own


def _head_tap() -> Any:
    """The autograd function behind the head scores (built on first use: torch is imported lazily). Forward:
    z ↦ z (a view, so the model computes exactly what it computes without it), keeping z for the backward pass;
    backward: hands (z, ∂f/∂z) to the tap's `sink`, passes ∂f/∂z on unchanged. Inside a checkpointed block z is a
    saved tensor like any other: dropped after the forward pass and recomputed in the backward pass, so neither
    the L head outputs nor their L gradients are ever held together (TinyLlama at 2048 tokens in bfloat16: 2 ×
    176 MiB)."""
    global _HEAD_TAP
    if _HEAD_TAP is None:
        import torch

        class HeadTap(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, z: Any, sink: Callable[[Any, Any], None]) -> Any:
                ctx.save_for_backward(z)
                ctx.sink = sink
                return z.view_as(z)

            @staticmethod
            def backward(ctx: Any, grad: Any) -> tuple[Any, None]:
                (z,) = ctx.saved_tensors
                ctx.sink(z, grad)
                return grad, None

        _HEAD_TAP = HeadTap
    return _HEAD_TAP


_HEAD_TAP: Any = None


def head_score_row(z: Any, grad: Any, n_heads: int) -> np.ndarray:
    """score_h = Σ_t Σ_{d ∈ head h} z_td · g_td for one layer: z, grad [1, T', H·d_h] → float64 [H]."""
    zz = (z.detach() * grad)[0]  # [T', H*dh], in the model's dtype
    return zz.reshape(zz.shape[0], n_heads, -1).sum((0, 2)).double().cpu().numpy()


def gradient_x_input(
    loaded: Any,
    input_ids: Any,
    attention_mask: Any,
    position: int,
    token_id: int,
    heads: bool = True,
    checkpoint: bool | None = None,
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Gradient × input and (optionally) gradient × head output, from one forward and one backward pass.

    x = token embeddings [T, D]; gxi_t = Σ_d x_td ∂f/∂x_td → float64 [T].
    With heads: z_l = input of layer l's output projection [T, H·d_h]; score_lh = Σ_t Σ_{d ∈ head h} z_ltd ∂f/∂z_ltd
    → float64 [L, H] (None when the projections are not found), each layer's row reduced in the backward pass as
    its ∂f/∂z arrives (`_head_tap`). Returns (gxi, head_scores, f(x)).
    Hooks are registered inside try/finally; the model's parameters never get gradients. checkpoint: recompute the
    blocks' activations in the backward pass (None: when keeping them would pass CHECKPOINT_MIN_BYTES).
    """
    import torch

    n_layers, n_heads = loaded.n_layers, loaded.n_heads
    mods = head_projection_modules(loaded.model, n_layers) if heads else None
    rows: dict[int, np.ndarray] = {}
    taps = [0]  # the taps applied by the forward pass (a checkpointed block applies its tap again when recomputed)
    tap = _head_tap()

    def tapper(layer: int) -> Callable[..., Any]:
        def sink(z: Any, grad: Any) -> None:
            rows[layer] = head_score_row(z, grad, n_heads)

        def pre(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
            taps[0] += 1
            return (tap.apply(args[0], sink), *args[1:])

        return pre

    x = token_embeddings(loaded, input_ids)
    f = target_logprob_fn(loaded, attention_mask, position, token_id)
    T = position + 1 if loaded.family == "causal_lm" else int(x.shape[1])  # a causal LM runs the prefix only
    recompute = checkpoint if checkpoint is not None else saved_activation_bytes(loaded, T) > CHECKPOINT_MIN_BYTES
    # sdpa: the same gradients as eager attention (tests/test_perf_paths.py) without keeping the T×T maps; the taps
    # stay on through the backward pass, where checkpointed blocks run their forward again
    with (
        fast_attention(loaded.model),
        checkpointed_blocks(loaded.model, n_layers, recompute),
        torch.inference_mode(False),
        torch.enable_grad(),
        hooked((m, "pre", tapper(layer)) for layer, m in enumerate(mods or [])),
    ):
        emb = x.clone().requires_grad_(True)
        val = f(emb)
        applied = taps[0]
        (grad,) = torch.autograd.grad(val.sum(), [emb])
    gxi = (grad * emb.detach())[0].sum(-1).double().cpu().numpy()
    scores = None
    if mods:
        if applied != n_layers:
            raise RuntimeError(f"expected {n_layers} head outputs, captured {applied}")
        # a layer the gradient does not reach scores 0
        scores = np.stack([rows.get(layer, np.zeros(n_heads)) for layer in range(n_layers)])
    return gxi, scores, float(val.detach()[0])


def ig_nodes(steps: int, power: float = IG_POWER) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature of ∫_0^1 g(α) dα with α = u^power and Gauss–Legendre nodes in u: (alphas [m], weights [m]).

    ∫_0^1 g(α) dα = ∫_0^1 g(u^p) p u^(p−1) du ≈ Σ_k w_k p u_k^(p−1) g(u_k^p), (u_k, w_k) the m-point
    Gauss–Legendre rule mapped to [0, 1]. Exact for polynomials in u of degree ≤ 2m − 1."""
    x, w = np.polynomial.legendre.leggauss(steps)
    u, wu = (x + 1.0) / 2.0, w / 2.0
    return u**power, wu * power * u ** (power - 1.0)


@dataclass(frozen=True)
class IGRun:
    """One integrated-gradients estimate: scores [T], f(x), f(x'), steps used, completeness gap (absolute, nats,
    and relative to |f(x) − f(x')|), whether it met the tolerance, and each tried (steps, relative gap)."""

    scores: np.ndarray
    fx: float
    f0: float
    steps: int
    gap: float
    gap_relative: float
    converged: bool
    history: tuple[tuple[int, float], ...] = ()


def integrated_gradients(
    loaded: Any,
    input_ids: Any,
    attention_mask: Any,
    position: int,
    token_id: int,
    steps: int = 32,
    power: float = IG_POWER,
) -> tuple[np.ndarray, float, float]:
    """Integrated gradients (Sundararajan et al. 2017) on the token embeddings, zero baseline x' = 0, `steps` nodes.

    IG_t = Σ_d (x_td − x'_td) · ∫_0^1 ∂f/∂x_td (x' + α (x − x')) dα → float64 [T], the integral taken with the
    Gauss–Legendre rule of `ig_nodes` (α = u^p; p = 1 is plain Gauss–Legendre in α, p > 1 puts more of the nodes
    near the baseline, where a norm layer of a near-zero input — Llama's RMSNorm sees α·x with no position
    embedding added — changes fastest). Completeness: Σ_t IG_t ≈ f(x) − f(x'). Returns (IG, f(x), f(x')).
    The interpolants run in batches that keep the activation memory under IG_MEMORY_BUDGET.
    """
    import torch

    x = token_embeddings(loaded, input_ids)
    x0 = torch.zeros_like(x)
    f = target_logprob_fn(loaded, attention_mask, position, token_id)
    T = x.shape[1]
    per_row = 4 * loaded.n_layers * T * (16 * loaded.hidden_size + 3 * loaded.n_heads * T)
    chunk = int(max(1, min(steps, IG_MEMORY_BUDGET // max(per_row, 1))))
    a_np, w_np = ig_nodes(steps, power)
    alphas = torch.from_numpy(a_np).to(x.dtype).to(x.device)
    weights = torch.from_numpy(w_np).to(x.dtype).to(x.device)
    total = torch.zeros_like(x[0])
    with fast_attention(loaded.model), torch.inference_mode(False), torch.enable_grad():
        for s in range(0, steps, chunk):
            a = alphas[s : s + chunk].view(-1, 1, 1)
            emb = (x0 + a * (x - x0)).requires_grad_(True)
            (g,) = torch.autograd.grad(f(emb).sum(), [emb])
            total += (g * weights[s : s + chunk].view(-1, 1, 1)).sum(0)
    with fast_attention(loaded.model), torch.no_grad():
        ends = f(torch.cat([x, x0]))
    ig = ((x - x0)[0] * total).sum(-1).double().cpu().numpy()
    return ig, float(ends[0]), float(ends[1])


def adaptive_integrated_gradients(
    loaded: Any,
    input_ids: Any,
    attention_mask: Any,
    position: int,
    token_id: int,
    steps: int = 32,
    max_steps: int = IG_MAX_STEPS,
    tolerance: float = IG_TOLERANCE,
    power: float = IG_POWER,
) -> IGRun:
    """`integrated_gradients` with `steps`, 2·steps, 4·steps … nodes until the completeness gap
    |Σ IG − (f(x) − f(x'))| ≤ tolerance · |f(x) − f(x')| (or ≤ IG_ABS_TOLERANCE nats), or the next doubling would
    pass `max_steps` (then the last estimate is kept, converged = False). Gauss–Legendre rules are not nested, so
    each doubling recomputes: the worst case costs about 2 × max_steps gradient evaluations."""
    m = max(1, min(steps, max_steps))
    history: list[tuple[int, float]] = []
    while True:
        ig, fx, f0 = integrated_gradients(loaded, input_ids, attention_mask, position, token_id, steps=m, power=power)
        gap = abs(float(ig.sum()) - (fx - f0))
        rel = gap / max(abs(fx - f0), 1e-12)
        history.append((m, rel))
        ok = rel <= tolerance or gap <= IG_ABS_TOLERANCE
        if ok or 2 * m > max_steps:
            return IGRun(ig, fx, f0, m, gap, rel, ok, tuple(history))
        m *= 2


# ----------------------------------------------------------------------------------------------------------------
# The analysis step


def _pad(v: np.ndarray, T: int) -> np.ndarray:
    out = np.zeros(T)
    out[: len(v)] = v
    return out


def attribute(
    loaded: LoadedModel,
    capture: Capture,
    attentions: np.ndarray | None,
    position: int,
    tokens: list[str],
    *,
    compute_gradients: bool = True,
    with_ig: bool = True,
    ig_steps: int = 32,
    warn: Callable[[str], None] | None = None,
    rollout: np.ndarray | None = None,
) -> AttributionSection:
    """All attributions for `position` of one capture (see the module docstring). Call under the model lock.

    with_ig: also run adaptive integrated gradients (from ig_steps nodes, doubled until the completeness gap is
    ≤ 1 % or 512 nodes); the section records the nodes used (0 when they are not run). `warn` receives the messages
    a user must see (a failed gradient pass); the section's `notes` explain what is shown and why. `rollout`: the
    rollout matrix when it was folded in during the capture pass (`RolloutFolder`); else it is computed from
    `attentions`.
    """
    import torch

    warn = warn or (lambda msg: None)
    T = len(tokens)
    if rollout is None:
        if attentions is None:
            raise ValueError("attribution needs the attention maps or their rollout")
        rollout = attention_rollout(attentions)
    R = rollout
    base: dict[str, Any] = dict(
        target_position=position, target_token=tokens[position], rollout=R[position].copy(), rollout_matrix=R
    )
    notes: list[str] = []
    logits = capture.logits
    if loaded.family == "encoder" or logits is None:
        notes.append(
            "this model has no language-model head, so there is no prediction to attribute: "
            "only attention rollout is shown (gradient methods need a predicted token)"
        )
        return AttributionSection(**base, notes=notes)
    pred = int(torch.argmax(logits[position]).item())
    tok = loaded.tokenizer.convert_ids_to_tokens([pred])[0]
    base.update(
        predicted_id=pred, predicted_token=tok if isinstance(tok, str) else f"<id {pred}>"
    )  # ids past the vocabulary
    if not compute_gradients:
        notes.append("gradient methods are switched off (compute_gradients = false)")
        return AttributionSection(**base, notes=notes)
    ids, mask = capture.input_ids, capture.attention_mask
    if loaded.family == "causal_lm" and position < T - 1:
        notes.append(f"tokens after position {position} cannot affect its prediction: their scores are 0")
    grads: dict[str, Any] = {}
    try:
        gxi, heads, fx = gradient_x_input(loaded, ids, mask, position, pred, heads=True)
        grads.update(grad_x_input=_pad(gxi, T), head_scores=heads, target_logprob=fx)
        if heads is None:
            _, why = try_model_parts(loaded.model, "per-head attribution")
            notes.append(
                why
                or "per-head scores are not available: the attention output projections of this "
                "architecture were not recognised"
            )
        ref = float(torch.log_softmax(logits[position].float(), -1)[pred])
        if abs(ref - fx) > 1e-3 * max(1.0, abs(ref)):
            notes.append(
                f"the gradient pass gave log p = {fx:.4f}, the analysis pass {ref:.4f} "
                "(numerical precision of the model's dtype)"
            )
        if with_ig:
            run = adaptive_integrated_gradients(loaded, ids, mask, position, pred, steps=ig_steps)
            grads.update(
                integrated_gradients=_pad(run.scores, T),
                baseline_logprob=run.f0,
                ig_steps=run.steps,
                ig_completeness_gap=run.gap,
                ig_completeness_gap_relative=run.gap_relative,
                ig_converged=run.converged,
                ig_history=[[float(m), float(g)] for m, g in run.history],
            )
            if not run.converged:
                notes.append(
                    f"integrated gradients are {100 * run.gap_relative:.1f} % off completeness after "
                    f"{run.steps} steps (the cap): read the scores as approximate"
                )
    except RuntimeError as exc:  # e.g. out of memory on a large model
        log.warning("gradient attribution failed: %s", exc)
        msg = f"the gradient methods failed: {str(exc).splitlines()[0]}"
        notes.append(msg)
        warn(msg)
    return AttributionSection(**base, **grads, notes=notes)


def run_attribution(ctx: StepContext) -> AttributionSection:
    """Analysis step "Attribution": rollout, gradient × input, head scores (and IG) for the target position."""
    return attribute(
        ctx.loaded,
        ctx.capture,
        ctx.attentions,
        ctx.target_position,
        ctx.tokens,
        compute_gradients=ctx.settings.compute_gradients,
        with_ig=ctx.settings.integrated_gradients,
        ig_steps=ctx.settings.ig_steps,
        warn=ctx.warn,
        rollout=ctx.rollout,
    )
