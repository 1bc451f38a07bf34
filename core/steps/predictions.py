"""What the model predicts: mask filling (masked LMs), the next token (causal LMs), and streamed continuation.

Two parts:

* `run_step` (analysis step "Predictions") reads the logits already captured by the one forward pass
  (`ctx.capture.logits`, [T, V]) and fills `result.predictions` with a `Predictions` section. No extra forward pass.
* The generation API (`GenerationSettings`, `generate_stream`, `generate`) is never run by `analyze()`; the app
  calls it only when the user asks for a continuation. It reuses the KV cache, is deterministic for a seed (its own
  `torch.Generator`, never the global RNG), stoppable through a `threading.Event`, and holds the model's lock.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from typing import Any

from core.infra.devices import fast_attention
from core.infra.errors import InputError
from core.infra.serialize import serializable
from core.model.loading import LoadedModel
from core.model.tokens import context_length
from core.steps.context import StepContext

log = logging.getLogger(__name__)

KINDS = ("mask_fill", "next_token", "unavailable")

UNAVAILABLE_MESSAGE = (
    "Predictions are not available for this model: it is an encoder without a language-model head, so it does not "
    "score tokens. Load a masked LM (e.g. bert-base-uncased) to fill masked words, or a causal LM (e.g. gpt2) to "
    "see next-token predictions. The rest of the analysis works as usual."
)


def no_mask_message(mask_token: str | None) -> str:
    """The calm message for a masked-LM text that holds no mask token."""
    mt = mask_token or "[MASK]"
    return (
        f"The text has no {mt} token, so there is nothing to fill. Choose a word to mask (in the app, or "
        f"`--mask-word WORD` on the command line), or write {mt} in the text where a word should be predicted."
    )


@serializable
@dataclass(frozen=True)
class PredictionSection:
    """The model's own predictions, read from the captured logits.

    kind: "mask_fill" (masked LM: one candidate list per mask token), "next_token" (causal LM: the last position),
        or "unavailable" (encoder without a language-model head; `message` says so calmly).
    message: a user-facing note ("" when there is nothing to say).
    positions: token positions that were predicted (mask positions, or [T-1]).
    candidates: one list per position of {"token": str, "token_id": int, "probability": float}, the top_k of
        p = softmax(logits[position]) over the whole vocabulary, sorted by probability (descending).
    top_k: the number of candidates asked for.
    """

    kind: str
    message: str = ""
    positions: list[int] = field(default_factory=list)
    candidates: list[list[dict[str, Any]]] = field(default_factory=list)
    top_k: int = 10

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown prediction kind {self.kind!r}")


def token_text(tokenizer: Any, token_id: int) -> str:
    """Readable text of one token id (the tokenizer's own decoding, e.g. ' the' rather than 'Ġthe'; a partial UTF-8
    character as its bytes, core.model.tokens.token_text)."""
    from core.model.tokens import token_text as text_of

    return text_of(tokenizer, token_id)


def top_candidates(logits_row: Any, k: int, tokenizer: Any) -> list[dict[str, Any]]:
    """Top-k of p = softmax(z) for one logits row z [V] (torch): [{"token", "token_id", "probability"}], sorted."""
    import torch

    probs = torch.softmax(logits_row.float(), dim=-1)
    k = min(int(k), probs.shape[-1])
    vals, ids = torch.topk(probs, k)
    return [
        {"token": token_text(tokenizer, int(i)), "token_id": int(i), "probability": float(v)}
        for v, i in zip(vals.tolist(), ids.tolist())
    ]


def compute_predictions(loaded: LoadedModel, token_ids: list[int], logits: Any, top_k: int) -> PredictionSection:
    """Predictions from captured logits [T, V] (torch, or None for an encoder without a head).

    masked_lm: every position whose id is the tokenizer's mask_token_id; causal_lm: position T-1.
    """
    if logits is None or loaded.family == "encoder":
        return PredictionSection(kind="unavailable", message=UNAVAILABLE_MESSAGE, top_k=top_k)
    tok = loaded.tokenizer
    if loaded.family == "masked_lm":
        mask_id = getattr(tok, "mask_token_id", None)
        positions = [i for i, t in enumerate(token_ids) if mask_id is not None and t == mask_id]
        if not positions:
            return PredictionSection(
                kind="mask_fill", message=no_mask_message(getattr(tok, "mask_token", None)), top_k=top_k
            )
        return PredictionSection(
            kind="mask_fill",
            positions=positions,
            candidates=[top_candidates(logits[p], top_k, tok) for p in positions],
            top_k=top_k,
        )
    last = len(token_ids) - 1
    return PredictionSection(
        kind="next_token", positions=[last], candidates=[top_candidates(logits[last], top_k, tok)], top_k=top_k
    )


def run_predictions(ctx: StepContext) -> PredictionSection:
    """Analysis step "Predictions": the model's own predictions from `ctx.capture.logits` (no forward pass)."""
    import torch

    with torch.inference_mode():
        return compute_predictions(ctx.loaded, ctx.token_ids, ctx.capture.logits, ctx.settings.top_k)


# ----------------------------------------------------------------------------------------------------------------
# Generation (only on request; never part of analyze())

STOP_REASONS = ("eos", "max_new_tokens", "stopped", "context")


@serializable
@dataclass(frozen=True)
class GenerationSettings:
    """Settings of one continuation.

    max_new_tokens: at most this many tokens are generated (1 … 2048).
    do_sample: False = greedy (argmax at every step); True = sample from softmax(z / temperature) restricted to
        the top-p nucleus (the smallest set of most probable tokens whose probabilities sum to >= top_p).
    temperature: > 0 (only used when sampling). top_p: in (0, 1] (only used when sampling).
    seed: seeds the private torch.Generator of the sampler, so a run repeats exactly.
    use_chat_template: wrap the text as a user message with the tokenizer's chat template when it has one.
    system_prompt: optional system message (chat template only).
    """

    max_new_tokens: int = 40
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    use_chat_template: bool = True
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise InputError(msg)

        need(
            isinstance(self.max_new_tokens, int)
            and not isinstance(self.max_new_tokens, bool)
            and 1 <= self.max_new_tokens <= 2048,
            f"max_new_tokens must be an integer between 1 and 2048, got {self.max_new_tokens!r}",
        )
        need(isinstance(self.do_sample, bool), "do_sample must be true or false")
        need(isinstance(self.use_chat_template, bool), "use_chat_template must be true or false")
        need(
            isinstance(self.temperature, (int, float))
            and not isinstance(self.temperature, bool)
            and 0 < float(self.temperature) <= 100,
            f"temperature must be a number above 0 (at most 100), got {self.temperature!r}",
        )
        need(
            isinstance(self.top_p, (int, float)) and not isinstance(self.top_p, bool) and 0 < float(self.top_p) <= 1,
            f"top_p must be in (0, 1], got {self.top_p!r}",
        )
        need(
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**63,
            f"seed must be a non-negative integer, got {self.seed!r}",
        )
        need(self.system_prompt is None or isinstance(self.system_prompt, str), "system_prompt must be text or empty")

    @property
    def greedy(self) -> bool:
        """True for greedy decoding (argmax at every step)."""
        return not self.do_sample

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the settings (for manifests and JSON)."""
        return asdict(self)


@serializable
@dataclass
class GenerationResult:
    """One finished continuation.

    text: the generated continuation (special tokens skipped), equal to "".join of the streamed pieces.
    prompt: the prompt as the model saw it (decoded prompt_ids); prompt_ids: its token ids.
    token_ids / tokens: the generated ids and their token strings (an EOS that ended the run is not included).
    stopped_reason: "eos", "max_new_tokens", "stopped" (stop_event) or "context" (the context window is full).
    chat_template_used: whether the chat template wrapped the text.
    """

    text: str
    prompt: str
    prompt_ids: list[int]
    token_ids: list[int]
    tokens: list[str]
    settings: GenerationSettings
    stopped_reason: str
    chat_template_used: bool
    duration_s: float = 0.0


def _require_causal(loaded: LoadedModel) -> None:
    if loaded.family != "causal_lm":
        what = "a masked language model" if loaded.family == "masked_lm" else "an encoder without a language-model head"
        raise InputError(
            f"text generation needs a causal language model (e.g. gpt2 or TinyLlama); '{loaded.model_id}' is {what}"
        )


def _ids_of(encoded: Any) -> list[int]:
    """input_ids of what apply_chat_template / a tokenizer call returned (a dict-like or a plain list)."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return [int(i) for i in encoded]


def uses_chat_template(loaded: LoadedModel, gen: GenerationSettings) -> bool:
    """True when the prompt is wrapped by the chat template (asked for, and the tokenizer has one)."""
    return bool(gen.use_chat_template and loaded.has_chat_template)


def prompt_ids(loaded: LoadedModel, text: str, gen: GenerationSettings) -> list[int]:
    """Token ids the model is fed: the chat template (messages [system?, user], generation prompt added) when
    `uses_chat_template`, else the plain tokenisation with the tokenizer's special tokens (e.g. BOS)."""
    tok = loaded.tokenizer
    if not uses_chat_template(loaded, gen):
        return _ids_of(tok(text))
    user = {"role": "user", "content": text}
    if gen.system_prompt:
        try:
            return _ids_of(
                tok.apply_chat_template(
                    [{"role": "system", "content": gen.system_prompt}, user], add_generation_prompt=True, tokenize=True
                )
            )
        except Exception as exc:  # some templates reject a system role: fold it into the user message
            log.info("chat template rejected a system message (%s); prepending it to the user message", exc)
            user = {"role": "user", "content": f"{gen.system_prompt}\n\n{text}"}
    return _ids_of(tok.apply_chat_template([user], add_generation_prompt=True, tokenize=True))


def eos_ids(loaded: LoadedModel) -> set[int]:
    """Token ids that end a continuation: the generation config's eos_token_id(s) and the tokenizer's EOS."""
    out: set[int] = set()
    cfg = getattr(loaded.model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None) if cfg is not None else None
    if isinstance(eos, int):
        out.add(eos)
    elif isinstance(eos, (list, tuple)):
        out.update(int(e) for e in eos)
    if getattr(loaded.tokenizer, "eos_token_id", None) is not None:
        out.add(int(loaded.tokenizer.eos_token_id))
    return out


def choose_next(logits: Any, gen: GenerationSettings, generator: Any) -> int:
    """Next token id from one logits row z [V] (torch float32 on CPU).

    Greedy: argmax z. Sampling: p = softmax(z / temperature); sort p descending, keep the tokens whose preceding
    cumulative probability is < top_p (so the nucleus always holds the most probable token), renormalise and draw
    one with `torch.multinomial(..., generator=generator)`.
    """
    import torch

    if not gen.do_sample:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / float(gen.temperature), dim=-1)
    if gen.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = (torch.cumsum(sorted_p, dim=-1) - sorted_p) < float(gen.top_p)
        keep[0] = True
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


class _Run:
    """State of one generation, filled by `_generate` as it goes."""

    def __init__(self) -> None:
        self.prompt_ids: list[int] = []
        self.token_ids: list[int] = []
        self.stopped_reason = ""
        self.chat_template_used = False


def _generate(
    loaded: LoadedModel, text: str, gen: GenerationSettings, stop_event: threading.Event | None, run: _Run
) -> Generator[str, None, None]:
    """Yield decoded text pieces; one model call per token, feeding only the new token with past_key_values."""
    import torch

    _require_causal(loaded)
    if not isinstance(text, str) or not text.strip():
        raise InputError("the text is empty: type a prompt to continue")
    if not isinstance(gen, GenerationSettings):
        raise InputError("generation settings must be a GenerationSettings")
    tok = loaded.tokenizer
    # sdpa: generation needs no attention weights (the switch is restored when the generator ends or is closed)
    with loaded.lock, fast_attention(loaded.model):
        run.chat_template_used = uses_chat_template(loaded, gen)
        run.prompt_ids = prompt_ids(loaded, text, gen)
        limit = context_length(loaded)
        if not run.prompt_ids:
            raise InputError("the prompt produced no tokens")
        if limit is not None and len(run.prompt_ids) >= limit:
            raise InputError(f"the prompt has {len(run.prompt_ids)} tokens; this model reads at most {limit}")
        stops = eos_ids(loaded)
        generator = torch.Generator(device="cpu").manual_seed(int(gen.seed))
        model = loaded.model
        ids = torch.tensor([run.prompt_ids], dtype=torch.long, device=loaded.device)
        past = None
        # transformers >= 5.2x names the KV cache argument `cache` (`past_key_values` before)
        params = inspect.signature(model.forward).parameters
        cache_kw = "cache" if "cache" in params else "past_key_values"
        extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        emitted = ""
        n_total = len(run.prompt_ids)
        while True:
            if stop_event is not None and stop_event.is_set():
                run.stopped_reason = "stopped"
                break
            if len(run.token_ids) >= gen.max_new_tokens:
                run.stopped_reason = "max_new_tokens"
                break
            if limit is not None and n_total >= limit:
                run.stopped_reason = "context"
                break
            # inference mode only around the model call: the consumer runs between pieces, outside it
            with torch.inference_mode():
                mask = torch.ones((1, n_total), dtype=torch.long, device=loaded.device)
                out = model(
                    input_ids=ids, attention_mask=mask, use_cache=True, return_dict=True, **{cache_kw: past}, **extra
                )
                past = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
                nxt = choose_next(out.logits[0, -1].float().cpu(), gen, generator)
            if nxt in stops:
                run.stopped_reason = "eos"
                break
            run.token_ids.append(nxt)
            n_total += 1
            ids = torch.tensor([[nxt]], dtype=torch.long, device=loaded.device)
            full = tok.decode(run.token_ids, skip_special_tokens=True)
            if full.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                continue
            if full.startswith(emitted):
                piece, emitted = full[len(emitted) :], full
                if piece:
                    yield piece
        full = tok.decode(run.token_ids, skip_special_tokens=True)
        if full != emitted and full.startswith(emitted) and full[len(emitted) :]:
            yield full[len(emitted) :]


def generate_stream(
    loaded: LoadedModel, text: str, gen: GenerationSettings, stop_event: threading.Event | None = None
) -> Generator[str, None, None]:
    """Continue `text` and yield decoded text pieces as they are generated.

    One forward pass per new token with the KV cache (only the new token is fed); stops at an EOS token, after
    gen.max_new_tokens tokens, when the context window is full, or as soon as `stop_event` is set. Deterministic for
    a given seed. Holds `loaded.lock` from the first piece until the generator finishes or is closed, so consume it
    in one thread. Raises InputError for a model without a causal LM head.
    """
    _require_causal(loaded)
    return _generate(loaded, text, gen, stop_event, _Run())


def generate(
    loaded: LoadedModel, text: str, gen: GenerationSettings | None = None, stop_event: threading.Event | None = None
) -> GenerationResult:
    """Run `generate_stream` to the end and return a GenerationResult (for the CLI and tests)."""
    gen = gen or GenerationSettings()
    _require_causal(loaded)
    run = _Run()
    t0 = time.perf_counter()
    for _piece in _generate(loaded, text, gen, stop_event, run):
        pass
    tok = loaded.tokenizer
    return GenerationResult(
        text=tok.decode(run.token_ids, skip_special_tokens=True),
        prompt=tok.decode(run.prompt_ids),
        prompt_ids=list(run.prompt_ids),
        token_ids=list(run.token_ids),
        tokens=tok.convert_ids_to_tokens(run.token_ids),
        settings=gen,
        stopped_reason=run.stopped_reason,
        chat_template_used=run.chat_template_used,
        duration_s=time.perf_counter() - t0,
    )
