"""Tokenisation: the one path from text to token ids for every kind of run (analysis, corpus, patching, generation).

* `context_length(loaded)`: the model's position limit; `token_limit(loaded, max_tokens)`: the limit a run
  truncates to, min(max_tokens, context length), and which of the two it was.
* `tokenize(loaded, text, max_tokens)`: one text as a batch of one (`Tokens`: torch ids and mask on the CPU, the
  special-token flags, whether truncation cut it and the warning that says so).
* `encode_texts(loaded, texts, max_tokens)`: many texts, unpadded (`Encoded` per text), for batched runs.
* `special_ids(tokenizer)` / `special_mask(tokenizer, ids, added)`: which tokens are special — added by the
  tokenizer ([CLS] … [SEP]) or typed in the text ("[SEP]" in a sentence becomes the real special id) — the same rule
  for every run, so a corpus's per-text metrics leave out exactly the tokens a single-text analysis leaves out.

Every text is tokenised with the model's special tokens and truncated to the limit; a text that was cut is flagged
(its full length is counted only when the truncated one reaches the limit, so short texts are tokenised once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.model.loading import LoadedModel

_CONTEXT_NAMES = ("max_position_embeddings", "n_positions", "n_ctx")


def context_length(loaded: LoadedModel) -> int | None:
    """The model's position limit (max_position_embeddings / n_positions / n_ctx), or None when it has none."""
    cfg = loaded.model.config
    for name in _CONTEXT_NAMES:
        v = getattr(cfg, name, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def token_limit(loaded: LoadedModel, max_tokens: int) -> tuple[int, str]:
    """(min(max_tokens, context length), what set it: "the Max tokens setting" or "the model's context length")."""
    ctx = context_length(loaded)
    if ctx is not None and ctx < max_tokens:
        return ctx, "the model's context length"
    return max_tokens, "the Max tokens setting"


def special_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's special tokens ([CLS], [SEP], [PAD], [MASK], BOS, EOS…), without the unknown token
    unless it doubles as another special token (GPT-2's <|endoftext|>): an [UNK] stands for real text."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    unk = getattr(tokenizer, "unk_token_id", None)
    others = {
        getattr(tokenizer, n, None)
        for n in ("bos_token_id", "eos_token_id", "pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id")
    }
    if unk is not None and unk not in others:
        ids.discard(unk)
    return frozenset(i for i in ids if isinstance(i, int))


def special_mask(
    tokenizer: Any,
    ids: Sequence[int],
    added_mask: Sequence[int] | None = None,
    specials: frozenset[int] | None = None,
) -> list[bool]:
    """True where the token is special: added by the tokenizer ([CLS] … [SEP]) or typed in the text ("[SEP]" in a
    sentence becomes the real special id, so it is special too). specials: `special_ids(tokenizer)` when already
    known (many texts of one tokenizer)."""
    specials = special_ids(tokenizer) if specials is None else specials
    added = added_mask if added_mask is not None else [0] * len(ids)
    return [bool(a) or i in specials for i, a in zip(ids, added)]


@dataclass(frozen=True)
class Tokens:
    """One tokenised text as a batch of one. input_ids / attention_mask: torch long [1, T] on the CPU; ids: the
    same ids as a list; special: True per special token (`special_mask`); added: True per special token the
    tokenizer added itself ([CLS], BOS …; a special token that is special but not added was typed in the text);
    truncated: the text was cut to `limit` tokens, set by `limit_reason`."""

    input_ids: Any
    attention_mask: Any
    ids: list[int]
    special: list[bool]
    truncated: bool
    limit: int
    limit_reason: str
    added: list[bool] = field(default_factory=list)

    @property
    def warning(self) -> str | None:
        """The truncation warning of an analysis ("the text was truncated to N tokens (why)"), None when whole."""
        return f"the text was truncated to {self.limit} tokens ({self.limit_reason})" if self.truncated else None


def tokenize(loaded: LoadedModel, text: str, max_tokens: int) -> Tokens:
    """Tokenise one text with the model's special tokens, truncated to `token_limit(loaded, max_tokens)`."""
    tok = loaded.tokenizer
    limit, reason = token_limit(loaded, max_tokens)
    enc = tok(text, return_tensors="pt", truncation=True, max_length=limit, return_special_tokens_mask=True)
    ids = enc["input_ids"][0].tolist()
    added = [bool(a) for a in enc["special_tokens_mask"][0].tolist()]
    # the full length, counted without the tokenizer's "longer than the maximum" warning (verbose=False): the cut
    # reaches the user as the result's own warning
    truncated = len(ids) >= limit and len(tok(text, truncation=False, verbose=False)["input_ids"]) > limit
    return Tokens(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        ids=ids,
        special=special_mask(tok, ids, added),
        truncated=truncated,
        limit=limit,
        limit_reason=reason,
        added=added,
    )


@dataclass
class Encoded:
    """One tokenised text of many: ids, special-token flags (`special_mask`), and whether truncation cut it."""

    ids: list[int]
    special: list[bool]
    truncated: bool


def encode_texts(loaded: LoadedModel, texts: Sequence[str], max_tokens: int) -> list[Encoded]:
    """Tokenise every text as `tokenize` does (same limit, same special tokens), unpadded, in one tokenizer call."""
    tok = loaded.tokenizer
    limit, _ = token_limit(loaded, max_tokens)
    enc = tok(list(texts), truncation=True, max_length=limit, return_special_tokens_mask=True)
    long_idx = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) >= limit]
    full = tok([texts[i] for i in long_idx], truncation=False, verbose=False)["input_ids"] if long_idx else []
    cut = {i for i, ids in zip(long_idx, full) if len(ids) > limit}
    specials = special_ids(tok)
    return [
        Encoded(list(ids), special_mask(tok, ids, sp, specials), i in cut)
        for i, (ids, sp) in enumerate(zip(enc["input_ids"], enc["special_tokens_mask"]))
    ]


# ----------------------------------------------------------------------------------------------------------------
# One token as text


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet inverted: the printable character that stands for each byte → the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_OF = _byte_level_table()


def bytes_text(data: bytes) -> str:
    """UTF-8 bytes as text, each byte that is not part of a whole character written as <0xNN> (b"\\xe2\\x80" →
    "<0xE2><0x80>", b" \\xc3" → " <0xC3>"), so two different partial characters never read the same."""
    text = data.decode("utf-8", errors="surrogateescape")
    return "".join(f"<0x{ord(c) - 0xDC00:02X}>" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


def token_text(tokenizer: Any, token_id: int) -> str:
    """The text of one token id as the tokenizer decodes it (" the", not "Ġthe"); a token that holds only part of a
    UTF-8 character (byte-level BPE, SentencePiece byte fallback) decodes to "\\ufffd" for every such token, so its
    bytes are shown instead (" <0xE2>"): two different tokens never read the same."""
    i = int(token_id)
    text = str(tokenizer.decode([i]))
    if "\ufffd" not in text:
        return text
    raw = tokenizer.convert_ids_to_tokens(i)
    if not isinstance(raw, str) or not raw:
        return f"{text}<id {i}>"
    if all(c in _BYTE_OF for c in raw):  # byte-level BPE (GPT-2, Llama 3, Qwen …)
        return bytes_text(bytes(_BYTE_OF[c] for c in raw))
    if "\ufffd" in raw:  # the vocabulary itself holds a replacement character: say which token it is
        return f"{raw}<id {i}>"
    return raw  # SentencePiece byte fallback: the token is already "<0xE2>"
