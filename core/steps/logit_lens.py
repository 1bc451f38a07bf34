"""The logit lens: what each layer's hidden state would predict if the model stopped there.

For every layer l = 0 … L (0 = embeddings), the residual stream h_l [T, D] is decoded with the model's own head:

* causal LMs (GPT-2, Llama …): z_l = cap(W_U · norm(h_l) (+ bias)), with `norm` the final norm module (GPT-2 ln_f,
  Llama RMSNorm) applied to h_l itself, so its statistics (mean / RMS) are recomputed on that layer's vector, and
  `cap` the final logit transform (Gemma-2: c · tanh(z / c); the identity elsewhere);
* masked LMs (BERT): z_l = decoder(transform(h_l)), the MLM head (dense → activation → LayerNorm → decoder).

The head is read from the one architecture map, `core.model.arch.model_parts`.

`core.model.capture` stores the last hidden state *before* the final norm, so decoding layer L reproduces the model's
own logits exactly; the step checks this invariant on every run and records the largest difference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.infra.devices import output_device
from core.infra.serialize import serializable
from core.model.arch import ArchitectureNotSupported, model_parts, try_model_parts
from core.model.loading import LoadedModel
from core.model.tokens import token_text
from core.steps.context import StepContext

if TYPE_CHECKING:
    from core.run.settings import AnalysisSettings

log = logging.getLogger(__name__)

#: Logits held in memory at once (floats) while decoding the layers × positions grid: 2**24 floats = 64 MiB.
CHUNK_FLOATS = 2**24
#: The layers × positions grid costs (L+1)·T·D·V multiply-adds, i.e. (L+1)× the model's own LM head: for GPT-2
#: small (L+1 = 13, V = 50257) about 4-5× a whole forward pass. On a CPU the analysis step decodes the full grid
#: only while it is cheap (at most GRID_SMALL_MACS, or GRID_SHARE_CPU of the forward pass), and otherwise the
#: window of positions around the decoded position that costs at most GRID_SHARE_CPU × the forward pass (≈ the
#: parameter count × T multiply-adds), never fewer than GRID_MIN_COLUMNS columns nor more than GRID_MAX_MACS_CPU
#: multiply-adds. GPT-2 small: 4 columns at 128 tokens, 6 at 512. The page shows exactly the decoded window; the
#: lens_full_grid setting decodes every position. On a GPU the grid is always complete. Set GRID_SHARE_CPU = None
#: for complete grids everywhere.
GRID_SHARE_CPU: float | None = 0.05
GRID_MIN_COLUMNS = 4
GRID_SMALL_MACS = 2e8
GRID_MAX_MACS_CPU: float | None = 8e9


@serializable
@dataclass(frozen=True)
class LensSection:
    """Logit-lens read-out of one analysis. L = layers (L+1 rows, 0 = embeddings), T = tokens, k = top_k.

    position: the decoded position (settings.lens_position, else the analysis target position).
    layers: int [L+1] = 0 … L.
    top_tokens: [L+1][k] token texts; top_ids int64 [L+1, k]; top_probs float64 [L+1, k]: the top-k of
        p_l = softmax(z_l[position]) per layer, sorted descending.
    final_token / final_token_id: the model's own prediction at `position` (argmax of its final logits).
    final_prob float64 [L+1]: p_l[final_token_id] per layer (the last entry is the model's own probability).
    entropy float64 [L+1]: H(p_l) = -sum_v p_l,v ln p_l,v in nats, at `position`.
    grid_tokens [L+1][T] / grid_ids int64 [L+1, T] / grid_probs float64 [L+1, T]: the top-1 token of every layer at
        every position of `grid_positions` and its probability (the heatmap).
    method: how the layers were decoded (the head that was applied).
    last_layer_max_abs_diff: max |z_L - model logits| at `position` over the vocabulary (should be ~0).
    vocab_size: V (ln V is the entropy of a uniform distribution over the vocabulary).
    grid_positions: the grid columns that were decoded, contiguous: all positions unless the CPU budget
        (GRID_MAX_MACS_CPU) bounded them to a window around `position`; the other columns hold NaN / -1 / "".
    """

    position: int
    layers: np.ndarray
    top_tokens: list[list[str]]
    top_ids: np.ndarray
    top_probs: np.ndarray
    final_token: str
    final_token_id: int
    final_prob: np.ndarray
    entropy: np.ndarray
    grid_tokens: list[list[str]]
    grid_probs: np.ndarray
    grid_ids: np.ndarray
    method: str = ""
    last_layer_max_abs_diff: float = 0.0
    vocab_size: int = 0
    grid_positions: list[int] = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        return int(len(self.layers)) - 1


def lens_decoder(loaded: LoadedModel) -> tuple[Callable[[Any], Any], str] | None:
    """A function decoding hidden states h [N, D] (model dtype, model device, taken before the final norm) to
    logits [N, V], with its description, or None when the model has no language-model head.

    The head comes from the one architecture map (`core.model.arch.model_parts`): final norm (GPT-2 ln_f, Llama norm),
    the masked-LM transform (BERT, RoBERTa, DistilBERT), the unembedding, and the final logit transform (Gemma-2's
    soft-capping c · tanh(z / c)), so decoding the last layer reproduces the model's own logits. Raises
    `ArchitectureNotSupported` (its message says "not available for <architecture>") for an unknown architecture.
    """
    if loaded.family not in ("masked_lm", "causal_lm"):
        return None
    parts = model_parts(loaded.model)
    if not parts.has_head:
        return None
    return parts.decode, parts.describe()


def _vocab_size(loaded: LoadedModel) -> int | None:
    """Rows of the output embedding (V), or the config's vocab_size; None when neither is known."""
    emb = loaded.model.get_output_embeddings() if hasattr(loaded.model, "get_output_embeddings") else None
    weight = getattr(emb, "weight", None)
    if weight is not None and weight.ndim == 2:
        return int(weight.shape[0])
    v = getattr(loaded.model.config, "vocab_size", None)
    return int(v) if isinstance(v, int) and v > 0 else None


def grid_window(T: int, position: int, max_positions: int | None) -> tuple[int, int]:
    """Columns [c0, c1) of the layers × positions grid: all T, or `max_positions` columns centred on `position`
    (clipped to the text)."""
    if max_positions is None or max_positions >= T:
        return 0, T
    n = max(1, int(max_positions))
    c0 = min(max(0, position - n // 2), T - n)
    return c0, c0 + n


def _n_parameters(loaded: LoadedModel) -> int:
    return int(sum(p.numel() for p in loaded.model.parameters()))


def grid_max_positions(loaded: LoadedModel, n_layers1: int, T: int, D: int) -> int | None:
    """Grid columns the analysis step decodes: None (all T) on a GPU or when the full grid fits the budget, else
    the largest window (at least 1 column) that fits it. The budget in multiply-adds is
    min(GRID_MAX_MACS_CPU, max(GRID_SHARE_CPU · parameters · T, GRID_MIN_COLUMNS · (L+1)·D·V, GRID_SMALL_MACS))."""
    V = _vocab_size(loaded)
    if GRID_SHARE_CPU is None or not V or str(loaded.device).startswith(("cuda", "mps")):
        return None
    per_column = float(n_layers1) * D * V
    budget = max(GRID_SHARE_CPU * _n_parameters(loaded) * T, GRID_MIN_COLUMNS * per_column, GRID_SMALL_MACS)
    if GRID_MAX_MACS_CPU is not None:
        budget = min(budget, GRID_MAX_MACS_CPU)
    if per_column * T <= budget:
        return None
    return max(1, int(budget // per_column))


def compute_logit_lens(
    loaded: LoadedModel,
    hidden_states: np.ndarray,
    position: int,
    top_k: int,
    final_logits: Any = None,
    chunk_floats: int = CHUNK_FLOATS,
    grid_max_positions: int | None = None,
) -> LensSection | None:
    """Decode every layer's hidden state at every position. hidden_states: float32 [L+1, T, D].

    The (L+1)·T' rows (T' = the grid columns, all T unless `grid_max_positions` bounds them to a window around
    `position`) are decoded in chunks of at most `chunk_floats` logits, one matmul per chunk, each chunk reduced at
    once to the top-1 id and probability max_v softmax(z)_v per row. The rows at `position` are kept as logits and
    read out in float64: top-k of p_l = softmax(z_l), p_l[final id] and the entropy -sum_v p_l,v ln p_l,v.
    `final_logits` [T, V] (torch) are the model's own logits: they give the final prediction, the grid row of layer L
    (z_L equals them, so that row is not decoded again) and the exactness check of layer L (max |z_L - logits| at
    `position`, where z_L is decoded for the read-out). Grid columns outside the window hold probability NaN,
    id -1 and token "". Returns None when the model has no head to decode with.
    """
    import torch

    try:
        dec = lens_decoder(loaded)
    except ArchitectureNotSupported as exc:
        log.info("%s", exc)
        return None
    if dec is None:
        return None
    decode, method = dec
    n_layers1, T, D = hidden_states.shape
    if not 0 <= position < T:
        raise ValueError(f"logit-lens position {position} is outside 0..{T - 1}")
    c0, c1 = grid_window(T, position, grid_max_positions)
    W = c1 - c0  # grid columns decoded
    pw = position - c0  # the decoded position inside the window
    model_dtype = next(loaded.model.parameters()).dtype
    head_device = output_device(loaded.model)  # with a device map, the head may sit apart from the embeddings
    # With the model's own logits at hand, the grid row of layer L is read from them (z_L equals them: see the
    # module docstring) and layer L is decoded at `position` only, for the read-out and the exactness check.
    n_dec = n_layers1 - 1 if final_logits is not None else n_layers1  # layers whose grid rows are decoded
    H = torch.from_numpy(np.ascontiguousarray(hidden_states[:n_dec, c0:c1])).reshape(n_dec * W, D)
    tok = loaded.tokenizer

    grid_ids = torch.empty(n_layers1 * W, dtype=torch.long)
    grid_probs = torch.empty(n_layers1 * W, dtype=torch.float64)
    pos_rows: dict[int, torch.Tensor] = {}  # layer -> logits z_l [V] at `position`
    max_diff = 0.0
    V = _vocab_size(loaded)
    n_rows = n_dec * W
    if final_logits is not None:  # layer L at `position` rides along as one more row: one pass over the head
        last_row = np.ascontiguousarray(hidden_states[n_layers1 - 1, position : position + 1])
        H = torch.cat([H, torch.from_numpy(last_row)])
    n_total = H.shape[0]
    z_last: torch.Tensor | None = None
    with torch.inference_mode():
        rows_per_chunk = max(1, chunk_floats // V) if V else max(1, W)  # unknown V: sized after the first chunk
        start = 0
        while start < n_total:
            stop = min(start + rows_per_chunk, n_total)
            x = H[start:stop].to(device=head_device, dtype=model_dtype)
            z = decode(x).float()  # [n, V]
            if not V:
                V = z.shape[-1]
                rows_per_chunk = max(1, chunk_floats // V)
            g = min(stop, n_rows)  # grid rows of this chunk: start..g-1
            if g > start:
                # top-1 per row: max_v softmax(z)_v and its id (torch's fused softmax is several times faster on
                # CPU than logsumexp over the same [n, V] block)
                pmax, arg = torch.softmax(z[: g - start], dim=-1).max(dim=-1)
                grid_ids[start:g] = arg.cpu()
                grid_probs[start:g] = pmax.double().cpu()
                for layer in range(start // W, (g - 1) // W + 1):  # rows at `position` in this chunk
                    r = layer * W + pw
                    if start <= r < g:
                        pos_rows[layer] = z[r - start].cpu()
            if stop > n_rows:
                z_last = z[n_rows - start]
            start = stop
        if final_logits is not None and z_last is not None:
            last = n_layers1 - 1
            ref = final_logits[c0:c1]
            step = max(1, chunk_floats // max(int(ref.shape[-1]), 1))
            for s0 in range(0, W, step):
                block = ref[s0 : s0 + step].float()
                pmax, arg = torch.softmax(block, dim=-1).max(dim=-1)
                n = block.shape[0]
                grid_ids[last * W + s0 : last * W + s0 + n] = arg.cpu()
                grid_probs[last * W + s0 : last * W + s0 + n] = pmax.double().cpu()
            pos_rows[last] = z_last.cpu()
            max_diff = float((z_last - final_logits[position].to(z_last.device).float()).abs().max())
        final_row = final_logits[position].float().cpu() if final_logits is not None else pos_rows[n_layers1 - 1]
        final_id = int(torch.argmax(final_row))

        # the read-out at `position` in float64: log p_l = z_l - logsumexp(z_l)
        logp = torch.log_softmax(torch.stack([pos_rows[l] for l in range(n_layers1)]).double(), dim=-1)  # [L+1, V]
        p = logp.exp()
        entropy = -(p * logp).nan_to_num(0.0).sum(-1)  # 0 · log 0 = 0
        k = min(int(top_k), p.shape[-1])
        top_p, top_i = torch.topk(p, k, dim=-1)
        final_prob = p[:, final_id]

    names: dict[int, str] = {-1: ""}

    def text(i: int) -> str:
        if i not in names:
            names[i] = token_text(tok, i)
        return names[i]

    gi = np.full((n_layers1, T), -1, dtype=np.int64)
    gi[:, c0:c1] = grid_ids.reshape(n_layers1, W).numpy()
    gp = np.full((n_layers1, T), np.nan)
    gp[:, c0:c1] = grid_probs.reshape(n_layers1, W).numpy()
    return LensSection(
        position=int(position),
        layers=np.arange(n_layers1),
        top_tokens=[[text(i) for i in row] for row in top_i.tolist()],
        top_ids=top_i.numpy().astype(np.int64),
        top_probs=top_p.numpy().astype(np.float64),
        final_token=text(final_id),
        final_token_id=final_id,
        final_prob=final_prob.numpy().astype(np.float64),
        entropy=entropy.numpy().astype(np.float64),
        grid_tokens=[[text(i) for i in row] for row in gi.tolist()],
        grid_probs=gp,
        grid_ids=gi,
        method=method,
        last_layer_max_abs_diff=float(max_diff),
        vocab_size=int(p.shape[-1]),
        grid_positions=list(range(c0, c1)),
    )


def exactness_tolerance(dtype: str, final_logits: Any) -> float:
    """Largest accepted |z_L - logits|: 1e-4 (float32) or 3e-2 (16-bit) times max(1, max |logits|)."""
    if final_logits is None:
        return 1e-4 if dtype == "float32" else 3e-2
    lo, hi = final_logits.aminmax()  # max |logits| in one pass, without an |logits| copy
    scale = max(1.0, float(hi), -float(lo))
    return (1e-4 if dtype == "float32" else 3e-2) * scale


def lens_columns(
    loaded: LoadedModel, settings: AnalysisSettings, T: int, target: int
) -> tuple[int, int | None, tuple[int, int]]:
    """What the "Logit lens" step decodes for a text of T tokens: (position, the grid's column
    budget passed to compute_logit_lens, the grid's columns [c0, c1)). The position is settings.lens_position when
    it lies inside the text, else the target position. The capture pass keeps the model's logits at these columns
    and at the position (see `logit_positions` in core.analysis.pipeline)."""
    pos = settings.lens_position
    if pos is None or pos >= T:
        pos = target
    window = None if settings.lens_full_grid else grid_max_positions(loaded, loaded.n_layers + 1, T, loaded.hidden_size)
    return pos, window, grid_window(T, pos, window)


def run_logit_lens(ctx: StepContext) -> LensSection | None:
    """Analysis step "Logit lens" (None for an encoder without a head)."""
    cap = ctx.capture
    T = len(ctx.tokens)
    if ctx.settings.lens_position is not None and ctx.settings.lens_position >= T:
        ctx.warn(
            f"lens_position {ctx.settings.lens_position} is past the last token (the text has {T} tokens): the "
            f"logit lens decodes the target position {ctx.target_position} instead"
        )
    if cap.logits is None or ctx.family == "encoder":
        log.info("logit lens skipped: %s has no language-model head", ctx.loaded.model_id)
        return None
    pos, window, _ = lens_columns(ctx.loaded, ctx.settings, T, ctx.target_position)
    lens = compute_logit_lens(
        ctx.loaded, ctx.hidden_states, pos, ctx.settings.top_k, final_logits=cap.logits, grid_max_positions=window
    )
    if lens is None:
        _, why = try_model_parts(ctx.loaded.model, "the logit lens")
        ctx.warn(why or "the logit lens is not available: this model's language-model head was not recognised")
    elif lens.last_layer_max_abs_diff > exactness_tolerance(ctx.loaded.dtype, cap.logits):
        ctx.warn(
            f"the logit lens does not reproduce this model's own logits at the last layer (largest difference "
            f"{lens.last_layer_max_abs_diff:.3g}): its head may do more than norm + unembedding; read the lens "
            "with care"
        )
    return lens
