"""One forward pass that captures tokens, hidden states, attentions and logits (the text is tokenised by
core.model.tokens, the one tokenisation path of every run)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.infra.errors import InputError
from core.model.arch import final_norm, model_parts
from core.model.hooks import Registration, hooked
from core.model.loading import LoadedModel
from core.model.sites import recorders
from core.model.tokens import tokenize
from core.run.settings import AnalysisSettings


@dataclass
class Capture:
    """Raw captures of one forward pass (batch of one).

    input_ids: torch long [1, T] on the model's device; attention_mask likewise.
    hidden_states: float32 numpy [L+1, T, D] (last entry before the final norm, see AnalysisResult).
    attentions: numpy [L, H, T, T], float32, or float16 for a 16-bit model (see `attention_dtype`).
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


def _stack_float32(tensors: list[Any], dtype: Any = np.float32) -> np.ndarray:
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
) -> Capture:
    """Tokenise `text` and run one forward pass with hidden states and attentions (no gradients).

    logit_positions(token_ids, special_mask): the positions whose logits the caller reads; the language-model head
    then runs on those rows only and `Capture.logits` is a `PositionLogits`. None: the logits at every position
    ([T, V] tensor). sites: names of core.model.sites whose activations to record in the same pass.
    """
    import torch

    if not isinstance(text, str) or not text.strip():
        raise InputError("the text is empty: type a sentence to analyse")
    enc = tokenize(loaded, text, settings.max_tokens)
    ids = enc.input_ids.to(loaded.device)
    mask = enc.attention_mask.to(loaded.device)
    if ids.shape[1] == 0:
        raise InputError("the text produced no tokens")
    special = enc.special
    warnings: list[str] = typed_special_note(loaded.tokenizer, enc.ids, special, enc.added)
    if enc.warning:
        warnings.append(enc.warning)

    model = loaded.model
    norm = final_norm(model)
    pre_norm: dict[str, Any] = {}

    def grab(_module, args, _kwargs=None):
        pre_norm["h"] = args[0]

    hooks: list[Registration] = [(norm, "pre", grab)] if norm is not None else []
    T = int(ids.shape[1])
    kept: list[int] | None = None
    if logit_positions is not None:
        kept = sorted({int(p) for p in logit_positions(enc.ids, special) if 0 <= int(p) < T})
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None and kept and len(kept) < T:
            hooks.append((head, "pre", _head_slicer(kept, T)))
    recorded: dict[str, Any] = {}
    site_names = list(sites)
    if site_names:
        hooks += recorders(model_parts(model), site_names, recorded)
    with hooked(hooks), torch.inference_mode():
        out = model(
            input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True, return_dict=True
        )

    if not out.attentions or out.attentions[0] is None:
        raise RuntimeError("the model returned no attentions; it must run with attn_implementation='eager'")
    hs = list(out.hidden_states)
    has_norm = "h" in pre_norm
    if has_norm:
        hs[-1] = pre_norm["h"]
    logits = getattr(out, "logits", None)
    atts = list(out.attentions)
    del out  # from here on `hs` and `atts` hold the only references: each is released once copied
    pre_norm.clear()
    hidden = _stack_float32(hs)
    att = _stack_float32(atts, attention_dtype(loaded.dtype))
    if logits is not None:
        logits = logits[0].float()
        if kept is not None and logits.shape[0] == len(kept) < T:
            logits = PositionLogits(logits, kept)

    if hidden.shape[0] != att.shape[0] + 1:
        raise RuntimeError(f"expected {att.shape[0] + 1} hidden states, got {hidden.shape[0]}")
    tok = loaded.tokenizer
    id_list = ids[0].tolist()
    return Capture(
        text=text,
        input_ids=ids,
        attention_mask=mask,
        tokens=tok.convert_ids_to_tokens(id_list),
        display_tokens=[tok.decode([i]) for i in id_list],
        special_mask=special,
        hidden_states=hidden,
        attentions=att,
        logits=logits,
        final_norm=has_norm,
        truncated=enc.truncated,
        warnings=warnings,
        sites=recorded,
    )
