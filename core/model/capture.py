"""One forward pass that captures tokens, hidden states, attentions and logits (the text is tokenised by
core.model.tokens, the one tokenisation path of every run).

Attention maps are handed over one layer at a time as the forward pass produces them (a post-hook on each
attention module of the architecture map, whose output holds the layer's weights with eager attention): a caller's
`attention_sink` folds them in (core.steps.attention.AttentionFolder, core.steps.attribution.
RolloutFolder), and the capture keeps all L maps only when they fit in `hold_bytes`. Past that bound no more than
one layer's maps is alive at a time, and `layer_attentions` recomputes one layer's maps, bit for bit the same, by a
pass that stops after that layer. Past that bound a model whose eager attention is the plain form (Llama, Qwen2,
Mistral, Phi-3) runs `row_chunked_attention` for the pass: the same numbers, one block of query rows at a time, so
that eager attention's scores and softmax over the whole layer never exist. An architecture the map does not
know is captured with `output_attentions` as before (every map held, then handed over layer by layer).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.infra.errors import InputError
from core.infra.memory import BufferPool, env_count, map_large_buffers
from core.model.arch import final_norm, model_parts, try_model_parts
from core.model.hooks import Registration, attention_function, hooked
from core.model.loading import LoadedModel
from core.model.sites import recorders
from core.model.tokens import Tokens, token_text, tokenize
from core.run.settings import AnalysisSettings


@dataclass
class Capture:
    """Raw captures of one forward pass (batch of one).

    input_ids: torch long [1, T] on the model's device; attention_mask likewise.
    hidden_states: float32 numpy [L+1, T, D] (last entry before the final norm, see AnalysisResult).
    attentions: numpy [L, H, T, T], float32, or float16 for a 16-bit model (see `attention_dtype`); [L, H, 0, 0]
        when the maps were not held (past `hold_bytes`, see `capture`): `layer_attentions` recomputes a layer.
    logits: torch float32 [T, V] on the model's device, a `PositionLogits` (the rows at the positions the caller
        asked for, indexed by position like the full tensor) or None for an encoder without a head.
    sites: the activations of the named sites the caller asked for (e.g. `blocks.3.hook_resid_pre`, for the
        sparse autoencoders), recorded in the same pass.
    """

    text: str
    input_ids: Any
    attention_mask: Any
    tokens: list[str]
    display_tokens: list[str]
    special_mask: list[bool]
    hidden_states: np.ndarray
    attentions: np.ndarray
    logits: Any
    final_norm: bool
    truncated: bool
    warnings: list[str] = field(default_factory=list)
    sites: dict[str, Any] = field(default_factory=dict)  # named sites (core.model.sites): torch float32 [T, W], CPU


class PositionLogits:
    """The model's logits at some token positions: `rows` torch float32 [P, V], `positions` (sorted) the token
    position of each row. Indexed like the full [T, V] tensor it stands for: `logits[p]` is the row of position p,
    `logits[a:b]` the rows of positions a..b-1 ([b-a, V]); a position that was not kept raises KeyError, naming it.

    The capture pass of an analysis computes the language-model head only at the positions its steps read (the
    target, the last token, the mask tokens, the logit lens's columns): for GPT-2 the head over all T positions is
    about a third of the forward pass, and every other row was thrown away.
    """

    def __init__(self, rows: Any, positions: Iterable[int]) -> None:
        self.rows = rows
        self.positions = [int(p) for p in positions]
        self._row_of = {p: i for i, p in enumerate(self.positions)}
        if len(self._row_of) != rows.shape[0]:
            raise ValueError(f"{rows.shape[0]} logit rows for {len(self._row_of)} positions")

    def _row(self, position: int) -> int:
        try:
            return self._row_of[int(position)]
        except KeyError:
            raise KeyError(
                f"the capture pass kept the logits at positions {self.positions}, not at {int(position)}"
            ) from None

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            start = 0 if key.start is None else int(key.start)
            stop = max(self.positions, default=-1) + 1 if key.stop is None else int(key.stop)
            return self.rows[[self._row(p) for p in range(start, stop, key.step or 1)]]
        return self.rows[self._row(int(key))]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.rows.shape)

    def aminmax(self) -> Any:
        """Smallest and largest logit over the kept rows (as torch.aminmax)."""
        return self.rows.aminmax()


def _head_slicer(positions: list[int], T: int) -> Callable[..., Any]:
    """Forward pre-hook for the output embedding (the unembedding): hands it only the rows at `positions` of its
    [1, T, D] input (any other input is left as it is)."""

    def hook(_module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if args else None
        if x is None or x.dim() != 3 or x.shape[1] != T:
            return None
        return (x[:, positions], *args[1:])

    return hook


def apply_mask_word(text: str, word: str, mask_token: str | None) -> str:
    """Replace the first whole-word, case-insensitive occurrence of `word` in `text` by `mask_token`."""
    if not mask_token:
        raise InputError("this model has no mask token, so a word cannot be masked")
    pattern = re.compile(r"(?<!\w)" + re.escape(word.strip()) + r"(?!\w)", re.IGNORECASE)
    new, n = pattern.subn(mask_token, text, count=1)
    if n == 0:
        raise InputError(f"the word '{word.strip()}' does not occur in the text, so it cannot be masked")
    return new


def stack_float32(tensors: list[Any], dtype: Any = np.float32) -> np.ndarray:
    """numpy [N, ...] (float32 unless `dtype` says otherwise) of the batch-row 0 of each tensor [1, ...] (any dtype,
    any device), filled one entry at a time; each tensor's slot in the list is cleared once it is copied, so that
    the model-dtype maps and their copy are never all held at once (np.stack of .float() copies would hold both,
    plus a float32 temporary).
    """
    import torch

    first = tensors[0][0]
    out = np.empty((len(tensors), *first.shape), dtype=dtype)
    dst = torch.from_numpy(out)
    for i in range(len(tensors)):
        dst[i].copy_(tensors[i][0])  # converts the dtype and moves to the CPU in one pass
        tensors[i] = None
    return out


#: on_attention(layer, maps [H, T, T]): receives each layer's attention maps as the forward pass produces them.
AttentionSink = Callable[[int, np.ndarray], None]


#: Where the capture's held attention maps live: $TMA_MAP_BUFFERS buffers (default 2; 0: a fresh array each time),
#: reused once the results that held them are gone (core.infra.memory.BufferPool: a fresh 151 MB array cost the
#: capture pass of a 512-token GPT-2 text 0.7 s of first-touch faults on a cloud VM). An idle process keeps at most
#: that many arrays of held maps resident (each ≤ 256 MiB, HOLD_ATTENTIONS_BYTES); the peak is the same either way
#: (a new analysis allocates its maps while the previous result still holds its own).
MAP_BUFFERS = BufferPool(keep=env_count("TMA_MAP_BUFFERS", 2))


#: The name under which `row_chunked_attention` is registered with transformers' AttentionInterface.
ROW_CHUNKED = "tma_row_chunked_eager"
#: Bytes of one block of float32 scores [B, H, rows, S] in `row_chunked_attention` (TinyLlama at 2048 tokens:
#: 128 query rows, against 512 MiB for the whole layer).
CHUNK_BYTES = 32 * 2**20


def row_blocks(n_rows: int, rows: int) -> list[tuple[int, int]]:
    """[(start, stop)] covering 0..n_rows in blocks of `rows` rounded down to a multiple of 8 (at least 8), the
    remainder joined to the last block (so no block is shorter than the others): a matrix product of fewer rows
    than the CPU kernel's tile takes another path (a 1-row product is a matrix-vector product) and rounds the last
    bit differently, while blocks of whole tiles give the whole product's numbers bit for bit (checked with
    torch's CPU matmul in float32 and bfloat16, 25 to 1000 rows)."""
    rows = max(8, rows // 8 * 8)
    starts = list(range(0, n_rows, rows))
    if len(starts) > 1 and n_rows - starts[-1] < rows:
        starts.pop()
    return [(a, starts[i + 1] if i + 1 < len(starts) else n_rows) for i, a in enumerate(starts)]


def row_chunked_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float,
    dropout: float = 0.0,
    **_kwargs: Any,
) -> tuple[Any, Any]:
    """Eager attention, softmax(q kᵀ · scaling + mask) v over key-value heads repeated H/KV times (transformers'
    eager_attention_forward of Llama, Qwen2, Mistral and Phi-3, step for step), one block of query rows at a time:
    the scores, their float32 softmax and its model-dtype copy exist for `CHUNK_BYTES` of rows, never for the whole
    layer; the weights [B, H, T, S] (model dtype) are filled block by block and returned as eager attention returns
    them. Each row's scaling, mask and softmax are the same function of the same row, and the matrix products of
    whole-tile blocks (`row_blocks`) give the whole product's numbers: the same maps and outputs as the eager path,
    bit for bit on a CPU (another BLAS, or a GPU, may round a block's last bit differently: 1e-6). Inference only
    (no dropout)."""
    import torch

    if module.training and dropout > 0:
        raise RuntimeError("the row-chunked attention is for inference: the model must be in eval mode")
    groups = int(getattr(module, "num_key_value_groups", 1))
    if groups > 1:  # repeat_kv: [B, KV, S, d] -> [B, KV·groups, S, d], kv head h // groups for query head h
        b, kv, s, d = key.shape
        key = key[:, :, None].expand(b, kv, groups, s, d).reshape(b, kv * groups, s, d)
        value = value[:, :, None].expand(b, kv, groups, s, d).reshape(b, kv * groups, s, d)
    B, H, T, _ = query.shape
    S = key.shape[2]
    weights = query.new_empty((B, H, T, S))
    out = query.new_empty((B, H, T, value.shape[-1]))
    key_t = key.transpose(2, 3)
    for r0, r1 in row_blocks(T, CHUNK_BYTES // max(1, B * H * S * 4)):
        scores = torch.matmul(query[:, :, r0:r1], key_t) * scaling
        if attention_mask is not None:
            scores = scores + (attention_mask if attention_mask.shape[2] == 1 else attention_mask[:, :, r0:r1])
        block = torch.nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        del scores
        weights[:, :, r0:r1] = block
        out[:, :, r0:r1] = torch.matmul(block, value)
        del block
    return out.transpose(1, 2).contiguous(), weights


def _row_chunked_name(parts: Any) -> str | None:
    """ROW_CHUNKED, registered with transformers (the attention function and eager attention's mask) on first use,
    when the architecture map says the model's eager attention is the plain form (`ModelParts.row_chunked`); None
    (the model's own eager path) otherwise."""
    if parts is None or not parts.row_chunked:
        return None
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    if ROW_CHUNKED not in AttentionInterface._global_mapping:
        AttentionInterface.register(ROW_CHUNKED, row_chunked_attention)
        AttentionMaskInterface.register(ROW_CHUNKED, eager_mask)
    return ROW_CHUNKED


class _StopPass(Exception):
    """Raised by `layer_attentions`'s hook once it has the layer it wants: the rest of the pass is not needed."""


def _map_taker(layer: int, held: np.ndarray | None, dtype: Any, sink: AttentionSink | None) -> Callable[..., Any]:
    """Post-hook of one attention module (eager attention returns (output, weights [1, H, T, T], ...)): the
    layer's maps converted to `dtype` (in place into `held[layer]` when the maps are held, else one layer's
    array), handed to `sink`. The module's output is left as it is."""
    import torch

    def hook(_module: Any, _args: Any, output: Any) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if weights is None:
            raise RuntimeError("the model returned no attentions; it must run with attn_implementation='eager'")
        if held is not None:
            maps = held[layer]
            torch.from_numpy(maps).copy_(weights[0])  # dtype conversion and the move to the CPU in one pass
        elif weights.device.type == "cpu" and weights.dtype == torch.from_numpy(np.empty(0, dtype)).dtype:
            maps = weights[0].numpy()  # already what the sink reads (a float32 model on the CPU): no copy
        else:
            maps = np.empty(tuple(weights.shape[1:]), dtype=dtype)
            torch.from_numpy(maps).copy_(weights[0])
        if sink is not None:
            sink(layer, maps)

    return hook


def layer_attentions(loaded: LoadedModel, input_ids: Any, attention_mask: Any, layer: int) -> np.ndarray:
    """The attention maps of one layer, numpy [H, T, T] in `attention_dtype`, recomputed by a forward pass that
    stops after that layer's attention (an architecture the map does not know runs the whole pass). The same
    computation as the capture pass on the same input, so the same values. Call under the model's lock."""
    import torch

    model = loaded.model
    ids = input_ids.to(loaded.device)
    mask = attention_mask.to(loaded.device)
    dtype = attention_dtype(loaded.dtype)
    parts, _ = try_model_parts(model)
    if parts is None:
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, output_attentions=True, return_dict=True)
        return stack_float32([out.attentions[layer]], dtype)[0]
    if not 0 <= layer < parts.n_layers:
        raise IndexError(f"layer {layer} does not exist: the model has {parts.n_layers} layers")
    got: dict[int, np.ndarray] = {}

    def keep(index: int, maps: np.ndarray) -> None:
        got[index] = maps
        raise _StopPass

    try:
        with hooked([(parts.blocks[layer].attention, "post", _map_taker(layer, None, dtype, keep))]):
            with attention_function(model, _row_chunked_name(parts)), torch.inference_mode():
                model(input_ids=ids, attention_mask=mask, return_dict=True)
    except _StopPass:
        pass
    if layer not in got:
        raise RuntimeError(f"the pass did not reach the attention of layer {layer}")
    return got[layer]


def attention_dtype(model_dtype: str) -> Any:
    """numpy dtype in which the analysis keeps a model's attention maps: float16 for a bfloat16 or float16 model,
    else float32. float16 holds every bfloat16 probability ≥ 2⁻¹⁴ (6.1e-5) exactly (11 significant bits against
    bfloat16's 8) and smaller ones to within 6e-8, and halves the largest array of a long text (TinyLlama at 2048
    tokens: 5.9 GB instead of 11.8 GB). Every consumer widens one layer at a time; the bundle's attentions.npy is
    float32."""
    return np.float16 if model_dtype in ("bfloat16", "float16") else np.float32


def typed_special_note(tokenizer: Any, ids: list[int], special: list[bool], added: list[bool]) -> list[str]:
    """Special-token strings typed in the text ("[CLS] [SEP]", "<|endoftext|>") become the model's own special
    tokens: a one-line note naming them (the mask token aside), or an InputError when nothing but special tokens
    is left to analyse."""
    typed = [tokenizer.convert_ids_to_tokens(i) for i, s, a in zip(ids, special, added) if s and not a]
    names = ", ".join(f"'{t}'" for t in dict.fromkeys(typed))
    if all(special):
        raise InputError(
            f"the text is only special tokens ({names} typed as text): the model reads them as its own markers, "
            "not as words; type a sentence to analyse"
            if typed
            else "the text left no token but the model's special tokens: type a sentence to analyse"
        )
    mask = getattr(tokenizer, "mask_token", None)  # "[MASK]" typed is how a masked LM is asked: no note for it
    typed = [t for t in typed if t != mask]
    names = ", ".join(f"'{t}'" for t in dict.fromkeys(typed))
    if not typed:
        return []
    return [
        f"the text contains {names} typed as text: the tokenizer made {'it' if len(set(typed)) == 1 else 'them'} "
        "the model's special token, not words (analysed as such; switch on exclude_special_tokens to leave "
        "special tokens out of the layer metrics)"
    ]


def capture(
    loaded: LoadedModel,
    text: str,
    settings: AnalysisSettings,
    logit_positions: Callable[[list[int], list[bool]], Iterable[int]] | None = None,
    sites: Iterable[str] = (),
    attention_sink: Callable[[list[int], list[bool]], AttentionSink] | None = None,
    hold_bytes: int | None = None,
    chunk_bytes: int | None = None,
) -> Capture:
    """Tokenise `text` and run one forward pass with hidden states and attentions (no gradients).

    logit_positions(token_ids, special_mask): the positions whose logits the caller reads; the language-model head
    then runs on those rows only and `Capture.logits` is a `PositionLogits`. None: the logits at every position
    ([T, V] tensor). sites: names of core.model.sites whose activations to record in the same pass.
    attention_sink(token_ids, special_mask): called once the text is tokenised; the function it returns,
    on_attention(layer, maps), is called once per layer, in layer order, with that layer's maps (numpy [H, T, T] in
    `attention_dtype`, the same values `Capture.attentions[layer]` would hold), while the pass runs.
    hold_bytes: keep all maps in `Capture.attentions` only when L·H·T² values take at most this many bytes
    (None: always); otherwise it is an empty [L, H, 0, 0] array and at most one layer's maps is alive at a time.
    chunk_bytes: past this many bytes of maps (None: `hold_bytes`) and when they are not held, a model whose eager
    attention is the plain form (`ModelParts.row_chunked`) runs `row_chunked_attention`, so that one layer's
    scores and softmax are never whole; below it (short texts) the model's own eager attention, as always. Past it
    the process's large buffers are also mapped and returned to the system when freed (core.infra.memory), so that
    the heap's holes do not add to the resident memory of this and the later passes (the gradient pass).
    """
    import torch

    prep = prepare(loaded, text, settings)
    ids, mask, enc, special = prep.input_ids, prep.attention_mask, prep.tokens, prep.tokens.special

    model = loaded.model
    norm = final_norm(model)
    pre_norm: dict[str, Any] = {}

    def grab(_module, args, _kwargs=None):
        pre_norm["h"] = args[0]

    hooks: list[Registration] = [(norm, "pre", grab)] if norm is not None else []
    T = int(ids.shape[1])
    kept: list[int] | None = None
    if logit_positions is not None:
        kept = kept_positions(logit_positions, prep)
        hooks += head_slicer(model, kept, T)
    recorded: dict[str, Any] = {}
    site_names = list(sites)
    if site_names:
        hooks += recorders(model_parts(model), site_names, recorded)
    on_attention = attention_sink(enc.ids, special) if attention_sink is not None else None
    parts, _ = try_model_parts(model)
    L, H = (parts.n_layers, parts.heads.n_heads) if parts is not None else (loaded.n_layers, loaded.n_heads)
    att_dtype = attention_dtype(loaded.dtype)
    hold = hold_bytes is None or L * H * T * T * np.dtype(att_dtype).itemsize <= hold_bytes
    att = MAP_BUFFERS.empty((L, H, T, T), att_dtype) if hold else np.empty((L, H, 0, 0), dtype=att_dtype)
    streamed = parts is not None
    if streamed and (hold or on_attention is not None):  # nobody reads the maps (the views' pass): no hooks
        assert parts is not None
        hooks += [
            (block.attention, "post", _map_taker(layer, att if hold else None, att_dtype, on_attention))
            for layer, block in enumerate(parts.blocks)
        ]
    map_bytes = L * H * T * T * np.dtype(att_dtype).itemsize
    limit = hold_bytes if chunk_bytes is None else chunk_bytes
    long_text = not hold and limit is not None and map_bytes > limit
    chunked = _row_chunked_name(parts) if long_text else None  # short texts: the model's own eager path
    if long_text:  # from here on, buffers of a few MiB and up go back to the system when freed
        map_large_buffers()
    with hooked(hooks), attention_function(model, chunked), torch.inference_mode():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            output_hidden_states=True,
            output_attentions=not streamed,
            return_dict=True,
        )

    if not streamed:
        if not out.attentions or out.attentions[0] is None:
            raise RuntimeError("the model returned no attentions; it must run with attn_implementation='eager'")
        full = stack_float32(list(out.attentions), att_dtype)
        for layer in range(full.shape[0]):
            if on_attention is not None:
                on_attention(layer, full[layer])
        att = full if hold else np.empty((full.shape[0], full.shape[1], 0, 0), dtype=att_dtype)
    hs = list(out.hidden_states)
    has_norm = "h" in pre_norm
    if has_norm:
        hs[-1] = pre_norm["h"]
    logits = getattr(out, "logits", None)
    del out  # from here on `hs` holds the only references: each is released once copied
    pre_norm.clear()
    hidden = stack_float32(hs)
    logits = position_logits(logits, kept, T)

    if hidden.shape[0] != att.shape[0] + 1:
        raise RuntimeError(f"expected {att.shape[0] + 1} hidden states, got {hidden.shape[0]}")
    return assemble(loaded, prep, hidden, att, logits, has_norm, recorded)


@dataclass
class Prepared:
    """A text tokenised for one forward pass: input_ids / attention_mask torch long [1, T] on the model's device,
    the tokenisation (`tokens`: ids, special-token flags, truncation) and the notes about it for the user."""

    text: str
    input_ids: Any
    attention_mask: Any
    tokens: Tokens
    warnings: list[str]


def prepare(loaded: LoadedModel, text: str, settings: AnalysisSettings) -> Prepared:
    """Tokenise `text` for a capture pass (InputError for an empty text or one that gives no tokens)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("the text is empty: type a sentence to analyse")
    enc = tokenize(loaded, text, settings.max_tokens)
    ids = enc.input_ids.to(loaded.device)
    mask = enc.attention_mask.to(loaded.device)
    if ids.shape[1] == 0:
        raise InputError("the text produced no tokens")
    warnings: list[str] = typed_special_note(loaded.tokenizer, enc.ids, enc.special, enc.added)
    if enc.warning:
        warnings.append(enc.warning)
    return Prepared(text=text, input_ids=ids, attention_mask=mask, tokens=enc, warnings=warnings)


def kept_positions(logit_positions: Callable[[list[int], list[bool]], Iterable[int]], prep: Prepared) -> list[int]:
    """The positions (sorted, in range) whose logits a caller reads, for one prepared text."""
    T = int(prep.input_ids.shape[1])
    return sorted({int(p) for p in logit_positions(prep.tokens.ids, prep.tokens.special) if 0 <= int(p) < T})


def head_slicer(model: Any, kept: list[int], T: int) -> list[Registration]:
    """The hook (none, or one) that runs the language-model head on the rows at `kept` only: none when the model
    has no output embedding or every position is kept."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and kept and len(kept) < T:
        return [(head, "pre", _head_slicer(kept, T))]
    return []


def position_logits(logits: Any, kept: list[int] | None, T: int) -> Any:
    """The float32 logits [rows, V] of batch row 0 as `Capture.logits` holds them: a `PositionLogits` when the head
    ran on the `kept` rows only, else the [T, V] tensor (None stays None)."""
    if logits is None:
        return None
    logits = logits[0].float()
    if kept is not None and logits.shape[0] == len(kept) < T:
        return PositionLogits(logits, kept)
    return logits


def assemble(
    loaded: LoadedModel,
    prep: Prepared,
    hidden_states: np.ndarray,
    attentions: np.ndarray,
    logits: Any,
    has_final_norm: bool,
    sites: dict[str, Any] | None = None,
) -> Capture:
    """The Capture of one pass over a prepared text (see `Capture` for the arrays)."""
    tok = loaded.tokenizer
    id_list = prep.input_ids[0].tolist()
    return Capture(
        text=prep.text,
        input_ids=prep.input_ids,
        attention_mask=prep.attention_mask,
        tokens=tok.convert_ids_to_tokens(id_list),
        display_tokens=[token_text(tok, i) for i in id_list],
        special_mask=prep.tokens.special,
        hidden_states=hidden_states,
        attentions=attentions,
        logits=logits,
        final_norm=has_final_norm,
        truncated=prep.tokens.truncated,
        warnings=list(prep.warnings),
        sites=sites or {},
    )
