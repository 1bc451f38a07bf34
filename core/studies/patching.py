"""Activation patching (causal tracing): which activations of a clean run restore its answer in a corrupted run.

Two texts of the same token length: a *clean* one (e.g. "The Eiffel Tower is in the city of") and a *corrupted*
one that changes the answer ("The Colosseum is in the city of"). At the target position (the last token for a
causal LM, the first mask for a masked LM, the same position in both) A is the clean run's top-1 token and B the
corrupted run's (or both given by the user); the metric is the logit difference m = logit_A − logit_B.

For every block l and position p the corrupted run is repeated with one activation replaced by the clean run's:

* ``residual``: the input of block l (transformers' ``hidden_states[l]``) at position p;
* ``attention``: the output of block l's attention output projection (what the attention adds to the residual
  stream, before dropout / the residual add / BERT's post-LayerNorm);
* ``mlp``: the output of block l's MLP down projection (likewise);

and each is also patched at every position at once (position −1). The score is
``restored = (m_patched − m_corrupted) / (m_clean − m_corrupted)``: 1 = the clean answer is fully restored, 0 = no
effect. Sanity rows: the residual at every position of the first block restores exactly 1 (the whole input is
clean), and a patch of nothing restores 0.

Numbering: the arrays are indexed 0…L−1 (array row l = block l + 1); everything a reader sees (patching.csv's
`layer` column, the figures, the PDF, warnings) numbers blocks 1…L as the rest of the app does.

Batched: all positions of one layer and one component run as one forward pass whose batch rows differ only in which
position is patched (chunked so the activations stay under PATCH_MEMORY_BUDGET), so the full grid costs about 3·L
batched forward passes. Hooks live only inside ``hooked`` (removed in a ``finally``). Pure computation: no
Streamlit; the app and the CLI call ``run_patching`` (or ``patch`` with a cache).

Module lookups for all of this are in ONE function, ``patch_sites``, which reads the per-architecture map of
core/model/arch.py (blocks, attention output projection, MLP output projection). What every study of one
clean/corrupted pair settles the same way lives here once and core/studies/sae_patching.py and pairs.py call it:
the texts and target (``encode_texts``), the answers, their margins and the tiny-margin warning (``pick_answers``,
``Answers``), the fields that name the pair in a result (``pair_fields``, ``OnePairResult``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from core.infra.errors import InputError
from core.infra.serialize import Stored, serializable
from core.infra.version import CORE_VERSION
from core.model.forward import chunk_rows, target_logits
from core.model.hooks import Registration, first_input, hooked, main_output, replace_output, with_first_input
from core.model.info import ModelInfo
from core.model.provenance import package_versions
from core.model.tokens import tokenize
from core.run.cache import ResultCache, run_key
from core.run.progress import ProgressFn, silent
from core.run.settings import Settings, setting

if TYPE_CHECKING:
    import torch

    from core.model.loading import LoadedModel

log = logging.getLogger(__name__)

COMPONENTS = ("residual", "attention", "mlp")


#: |m_clean − m_corrupted| below this (in logits) makes `restored` meaningless: a warning says so.
TINY_DIFFERENCE = 0.1


@serializable
@dataclass(frozen=True)
class PatchingSettings(Settings):
    """What decides the numbers of a patching run besides the model and the texts (rules in each field's metadata,
    core.run.settings.setting)."""

    cli_title: ClassVar[str] = "patching settings"

    answer: str | None = setting(
        None,
        "answer token A: a vocabulary token such as 'ĠParis', or text that is one token such as ' Paris' "
        "(default: the clean run's top-1 prediction)",
        label="Answer token",
    )
    wrong_answer: str | None = setting(
        None,
        "wrong answer token B, written like the answer (default: the corrupted run's top-1 prediction)",
        label="Wrong answer token",
    )
    max_tokens: int = setting(
        128,
        "longest text accepted, in tokens: a longer clean or corrupted text is refused, as patching needs both whole",
        min=2,
        max=1024,
        label="Max tokens",
    )
    per_position_components: bool = setting(
        True,
        "patch the attention and MLP outputs one position at a time (about three times the forward passes; the "
        "residual stream is always patched per position, and every component at all positions at once)",
        label="Attention and MLP per position",
    )

    def __post_init__(self) -> None:
        for name, default in (("answer", "clean"), ("wrong_answer", "corrupted")):  # in words, before the base's rules
            if getattr(self, name) == "":
                raise InputError(
                    f"the {name.replace('_', ' ')} is empty: name one token (such as ' Paris', with its leading "
                    f"space), or leave it out to take the {default} run's top-1 prediction"
                )
        super().__post_init__()


class OnePairResult:
    """What every result of one clean/corrupted pair shares (PatchingResult, sae_patching.SAEPatchingResult): the
    token count, the denominator of `restored`, and the answers' part of its summary. A plain base class, not a
    dataclass: the fields are each result's own (declared here for the type checker only)."""

    clean_tokens: tuple[str, ...]
    target_position: int
    target_reason: str
    answer_id: int
    answer_token: str
    wrong_id: int
    wrong_token: str
    answers_from: str
    m_clean: float
    m_corrupted: float

    @property
    def n_tokens(self) -> int:
        return len(self.clean_tokens)

    @property
    def denominator(self) -> float:
        return self.m_clean - self.m_corrupted

    @property
    def tiny_difference(self) -> bool:
        """|m_clean − m_corrupted| < TINY_DIFFERENCE: `restored` divides by almost nothing."""
        return abs(self.denominator) < TINY_DIFFERENCE

    def answers_summary(self) -> dict[str, Any]:
        """The target, answers and margins as the summary JSON (patching.json, sae_patching.json) holds them."""
        return {
            "target_position": self.target_position,
            "target_reason": self.target_reason,
            "answer": {"id": self.answer_id, "token": self.answer_token},
            "wrong_answer": {"id": self.wrong_id, "token": self.wrong_token},
            "answers_from": self.answers_from,
            "metric": "logit(answer) - logit(wrong_answer) at the target",
            "m_clean": self.m_clean,
            "m_corrupted": self.m_corrupted,
        }


@serializable
@dataclass(frozen=True)
class PatchingResult(OnePairResult, Stored):
    """One patching run. L = blocks, T = tokens.

    metric[c]: float64 [L, T] — m after patching component c (COMPONENTS) of block l at position p alone;
    metric_all[c]: float64 [L] — m after patching component c of block l at every position at once. Components not
    run per position hold NaN. m_clean / m_corrupted: m of the unpatched runs. sanity_block0: restored by the
    residual at every position of block 0 (should be 1); sanity_identity: restored by a patch of nothing (0).
    """

    model: ModelInfo
    settings: PatchingSettings
    clean_text: str
    corrupted_text: str
    clean_tokens: tuple[str, ...]
    corrupted_tokens: tuple[str, ...]
    target_position: int
    target_reason: str
    answer_id: int
    answer_token: str
    wrong_id: int
    wrong_token: str
    answers_from: str  # "top-1 predictions" | "given" | "answer given, wrong answer predicted" …
    m_clean: float
    m_corrupted: float
    metric: dict[str, np.ndarray]
    metric_all: dict[str, np.ndarray]
    sanity_block0: float
    sanity_identity: float
    warnings: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    core_version: str = CORE_VERSION
    cache_key: str = ""
    cache_hit: bool = False
    #: core.model.provenance.package_versions() when the run was computed (empty for a result stored before)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.metric["residual"].shape[0])

    def restored(self, component: str) -> np.ndarray:
        """(m_patched − m_corrupted) / (m_clean − m_corrupted), float64 [L, T]."""
        return restored_score(self.metric[component], self.m_clean, self.m_corrupted)

    def restored_all(self, component: str) -> np.ndarray:
        """Restored by patching every position of each block at once, float64 [L]."""
        return restored_score(self.metric_all[component], self.m_clean, self.m_corrupted)

    def rows(self) -> list[tuple[int, int, str, float, float]]:
        """Rows of patching.csv: (layer, position, component, restored, metric); layer = block 1…L (array row
        layer − 1), position −1 = all positions."""
        out: list[tuple[int, int, str, float, float]] = []
        for c in COMPONENTS:
            r, ra = self.restored(c), self.restored_all(c)
            for l in range(self.n_layers):
                out.append((l + 1, -1, c, float(ra[l]), float(self.metric_all[c][l])))
                for p in range(self.n_tokens):
                    if np.isfinite(self.metric[c][l, p]):
                        out.append((l + 1, p, c, float(r[l, p]), float(self.metric[c][l, p])))
        return out

    def summary(self) -> dict[str, Any]:
        """What patching.json holds: answers, m values, target, both token lists, sanity, warnings."""
        return {
            "model": self.model.to_dict(),
            "settings": self.settings.to_dict(),
            "clean_text": self.clean_text,
            "corrupted_text": self.corrupted_text,
            "clean_tokens": list(self.clean_tokens),
            "corrupted_tokens": list(self.corrupted_tokens),
            **self.answers_summary(),
            "sanity": {"first_block_all_positions": self.sanity_block0, "identity": self.sanity_identity},
            "warnings": list(self.warnings),
            "timings": self.timings,
            "core_version": self.core_version,
        }


def restored_score(m_patched: np.ndarray, m_clean: float, m_corrupted: float) -> np.ndarray:
    """(m_patched − m_corrupted) / (m_clean − m_corrupted); NaN where the denominator is exactly 0."""
    den = m_clean - m_corrupted
    m = np.asarray(m_patched, dtype=np.float64)
    if den == 0:
        return np.full_like(m, np.nan)
    return (m - m_corrupted) / den


# ----------------------------------------------------------------------------------------------------------------
# Module lookups: the ONE place that knows where blocks, attention and MLP outputs live (→ core/model/arch.py)


@dataclass(frozen=True)
class PatchSites:
    """Per-block modules: `blocks[l]` takes the residual stream as its first input; `attention[l]` is the attention
    output projection (its input = the heads concatenated head-major, its output = what attention adds to the
    residual); `mlp[l]` is the MLP's output projection."""

    blocks: tuple[Any, ...]
    attention: tuple[Any, ...]
    mlp: tuple[Any, ...]

    def registrations(self, pre: Callable[..., Any], post: Callable[[str], Callable[..., Any]]) -> list[Registration]:
        """Hooks on every site (for `hooked`): `pre` (a "pre_kwargs" hook) on each block's input, the residual;
        post("attention") / post("mlp") on each attention / MLP output projection."""
        regs: list[Registration] = [(b, "pre_kwargs", pre) for b in self.blocks]
        regs += [(m, "post", post("attention")) for m in self.attention]
        regs += [(m, "post", post("mlp")) for m in self.mlp]
        return regs


def patch_sites(model: Any, n_layers: int) -> PatchSites:
    """The blocks, attention output projections and MLP output projections of `model`, from the one architecture
    map (`core.model.arch.model_parts`). Raises InputError (the map's "not available for <architecture>" line) when the
    architecture is not in the map."""
    from core.model.arch import ArchitectureNotSupported, model_parts

    try:
        parts = model_parts(model)
    except ArchitectureNotSupported as exc:
        raise InputError(str(ArchitectureNotSupported(exc.architecture, "activation patching"))) from exc
    if parts.n_layers != n_layers:
        raise InputError(
            f"activation patching expected {n_layers} blocks in {parts.architecture}, the architecture "
            f"map found {parts.n_layers}"
        )
    return PatchSites(
        tuple(b.module for b in parts.blocks),
        tuple(b.out_proj for b in parts.blocks),
        tuple(b.mlp_out for b in parts.blocks),
    )


# ----------------------------------------------------------------------------------------------------------------
# Hooks


# ----------------------------------------------------------------------------------------------------------------
# Forward passes


def capture_sites(
    loaded: LoadedModel, sites: PatchSites, input_ids: torch.Tensor, attention_mask: torch.Tensor, position: int
) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor]:
    """One forward pass that records every patchable activation: ({component: L tensors [T, D]}, logits [V])."""
    acts: dict[str, list[Any]] = {c: [] for c in COMPONENTS}

    def pre(_m, args, kwargs):
        acts["residual"].append(first_input(args, kwargs)[0].detach().clone())

    def post(kind):
        def hook(_m, _args, out):
            acts[kind].append(main_output(out)[0].detach().clone())

        return hook

    with hooked(sites.registrations(pre, post)):
        logits = target_logits(loaded, input_ids, attention_mask, position)[0]
    return acts, logits


def patched_metrics(
    loaded: LoadedModel,
    sites: PatchSites,
    component: str,
    layer: int,
    clean: torch.Tensor,
    corrupt_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position: int,
    masks: torch.Tensor,
    answer: int,
    wrong: int,
    chunk: int | None = None,
) -> np.ndarray:
    """m = logit_A − logit_B of the corrupted run with `component` of block `layer` patched from `clean` [T', D].

    masks: bool [R, T'] — row r patches the positions where masks[r] is True (all False = no patch). The R rows run
    as batches of at most `chunk` rows. Returns float64 [R]."""
    import torch

    R, Tp = masks.shape
    chunk = chunk or chunk_rows(loaded, Tp)
    module = {"residual": sites.blocks, "attention": sites.attention, "mlp": sites.mlp}[component][layer]
    out = np.empty(R)
    for s in range(0, R, chunk):
        rows = masks[s : s + chunk]
        sel = rows[..., None]

        def swap(h: torch.Tensor, sel: torch.Tensor = sel) -> torch.Tensor:
            if h.shape[1] != Tp:
                raise RuntimeError(f"patch of {Tp} positions met an activation of {h.shape[1]}")
            return torch.where(sel, clean.to(h.dtype), h)

        def pre(
            _m: Any, args: tuple[Any, ...], kwargs: dict[str, Any], swap: Callable[[torch.Tensor], torch.Tensor] = swap
        ) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return with_first_input(args, kwargs, swap(first_input(args, kwargs)))

        def post(_m: Any, _args: Any, o: Any, swap: Callable[[torch.Tensor], torch.Tensor] = swap) -> Any:
            return replace_output(o, swap(main_output(o)))

        regs: list[Registration] = [
            (module, "pre_kwargs" if component == "residual" else "post", pre if component == "residual" else post)
        ]
        ids = corrupt_ids.expand(rows.shape[0], -1)
        with hooked(regs):
            logits = target_logits(loaded, ids, attention_mask, position)
        out[s : s + rows.shape[0]] = (logits[:, answer] - logits[:, wrong]).double().cpu().numpy()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Inputs: tokens, target, answers


def _tokenize(loaded: LoadedModel, text: str, max_tokens: int, label: str) -> tuple[Any, Any, list[str]]:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"the {label} text is empty: type a sentence")
    enc = tokenize(loaded, text, max_tokens)
    if enc.truncated:
        raise InputError(
            f"the {label} text is longer than {enc.limit} tokens ({enc.limit_reason}); "
            "shorten it: patching needs both texts whole"
        )
    dev = loaded.model.device
    ids = enc.input_ids.to(dev)
    mask = enc.attention_mask.to(dev)
    return ids, mask, loaded.tokenizer.convert_ids_to_tokens(ids[0].tolist())


def choose_patch_target(loaded: LoadedModel, clean_ids: list[int], corrupt_ids: list[int]) -> tuple[int, str]:
    """The target position (same in both texts): last token (causal LM) or the first mask (masked LM)."""
    if loaded.family == "causal_lm":
        return len(clean_ids) - 1, "last token (next-token prediction)"
    if loaded.family != "masked_lm":
        raise InputError(
            "activation patching needs a model with a language-model head (a masked or causal LM); "
            f"'{loaded.model_id}' is an encoder without one"
        )
    mask_id = loaded.tokenizer.mask_token_id
    mask_tok = loaded.tokenizer.mask_token
    if mask_id is None or mask_id not in clean_ids:
        raise InputError(f"the clean text has no {mask_tok} token: put {mask_tok} where the answer goes, in both texts")
    pos = clean_ids.index(mask_id)
    if mask_id not in corrupt_ids or corrupt_ids.index(mask_id) != pos:
        where = corrupt_ids.index(mask_id) if mask_id in corrupt_ids else None
        raise InputError(
            f"the first {mask_tok} is at position {pos} in the clean text but "
            f"{'missing' if where is None else f'at position {where}'} in the corrupted text: "
            "both texts need it at the same position"
        )
    return pos, "first mask token"


def encode_texts(
    loaded: LoadedModel, clean_text: str, corrupted_text: str, max_tokens: int
) -> tuple[tuple[Any, Any, list[str]], tuple[Any, Any, list[str]], int, str]:
    """((ids, mask, tokens) of the clean text, the same of the corrupted text, target position, its reason): ids and
    masks [1, T] on the model's device. InputError for an empty or too long text, texts of different token lengths
    (naming both lengths and token lists) or a target that differs between them."""
    enc_c = _tokenize(loaded, clean_text, max_tokens, "clean")
    enc_k = _tokenize(loaded, corrupted_text, max_tokens, "corrupted")
    c_toks, k_toks = enc_c[2], enc_k[2]
    if len(c_toks) != len(k_toks):
        raise InputError(
            f"the texts have different token lengths: clean {len(c_toks)} tokens {c_toks}, "
            f"corrupted {len(k_toks)} tokens {k_toks}; patching needs the same length "
            "(change a word for one of the same token count)"
        )
    pos, reason = choose_patch_target(loaded, enc_c[0][0].tolist(), enc_k[0][0].tolist())
    return enc_c, enc_k, pos, reason


def resolve_answer(loaded: LoadedModel, answer: str, label: str) -> int:
    """Token id of `answer`: a vocabulary token as written ("ĠParis"), else text that tokenises to one token."""
    tok = loaded.tokenizer
    vocab = tok.get_vocab()
    if answer in vocab:
        return int(vocab[answer])
    pieces = tok(answer, add_special_tokens=False)["input_ids"]
    if len(pieces) == 1:
        return int(pieces[0])
    shown = tok.convert_ids_to_tokens(pieces)
    raise InputError(f"the {label} '{answer}' is not one token: it splits into {shown}; give one vocabulary token")


def _token_str(loaded: LoadedModel, i: int) -> str:
    t = loaded.tokenizer.convert_ids_to_tokens([i])[0]
    return t if isinstance(t, str) else f"<id {i}>"


def answers_source(settings: PatchingSettings) -> str:
    """Where A and B came from, in words (the results' `answers_from`)."""
    return {
        (False, False): "top-1 predictions",
        (True, True): "given",
        (True, False): "answer given, wrong answer = corrupted top-1",
        (False, True): "answer = clean top-1, wrong answer given",
    }[(settings.answer is not None, settings.wrong_answer is not None)]


def pick_answers(
    loaded: LoadedModel,
    settings: PatchingSettings,
    clean_logits: torch.Tensor,
    corrupt_logits: torch.Tensor,
    *,
    allow_same: bool = False,
) -> tuple[int, int]:
    """The one rule of answers: (A, B) = (given or the clean top-1, given or the corrupted top-1), logits [V] at the
    target. InputError when A == B (m ≡ 0), unless allow_same (in a data set of pairs such a pair is a near tie)."""
    a = resolve_answer(loaded, settings.answer, "answer") if settings.answer else int(clean_logits.argmax())
    b = (
        resolve_answer(loaded, settings.wrong_answer, "wrong answer")
        if settings.wrong_answer
        else int(corrupt_logits.argmax())
    )
    if a == b and not allow_same:
        raise InputError(
            f"the answer and the wrong answer are the same token '{_token_str(loaded, a)}' "
            f"({answers_source(settings)}): patching measures logit(answer) − logit(wrong answer), which is then 0. "
            "Choose another pair of texts whose predictions differ, or name two different answers"
        )
    return a, b


@dataclass(frozen=True)
class Answers:
    """A and B of one pair, where they came from, and m = logit_A − logit_B of both unpatched runs: the fields of
    every one-pair result under these names (PatchingResult, SAEPatchingResult, pairs.PairCells)."""

    answer_id: int
    answer_token: str
    wrong_id: int
    wrong_token: str
    answers_from: str
    m_clean: float
    m_corrupted: float

    @staticmethod
    def of(
        loaded: LoadedModel,
        settings: PatchingSettings,
        picked: tuple[int, int],
        clean_logits: torch.Tensor,
        corrupt_logits: torch.Tensor,
    ) -> Answers:
        """The answers `picked` = (A, B) (by `pick_answers`) with their tokens and margins from logits [V]."""
        a, b = picked
        return Answers(
            answer_id=a,
            answer_token=_token_str(loaded, a),
            wrong_id=b,
            wrong_token=_token_str(loaded, b),
            answers_from=answers_source(settings),
            m_clean=float(clean_logits[a] - clean_logits[b]),
            m_corrupted=float(corrupt_logits[a] - corrupt_logits[b]),
        )

    def warnings(self) -> list[str]:
        """The warning of a tiny |m_clean − m_corrupted| (< TINY_DIFFERENCE), or none."""
        gap = abs(self.m_clean - self.m_corrupted)
        if gap < TINY_DIFFERENCE:
            return [
                f"|m_clean − m_corrupted| = {gap:.3g} is tiny: 'restored' divides by it and blows up; choose texts "
                "whose answers differ more"
            ]
        return []


def choose_answers(
    loaded: LoadedModel, settings: PatchingSettings, clean_logits: torch.Tensor, corrupt_logits: torch.Tensor
) -> Answers:
    """`pick_answers` (A ≠ B) and `Answers.of` in one."""
    picked = pick_answers(loaded, settings, clean_logits, corrupt_logits)
    return Answers.of(loaded, settings, picked, clean_logits, corrupt_logits)


def pair_fields(
    clean_text: str, corrupted_text: str, encoded: tuple[Any, Any, int, str], answers: Answers
) -> dict[str, Any]:
    """The fields of a one-pair result (PatchingResult, SAEPatchingResult) that say which pair it is: both texts,
    their tokens, the target and `answers`; `encoded` is `encode_texts`'s answer."""
    enc_c, enc_k, pos, reason = encoded
    return {
        "clean_text": clean_text,
        "corrupted_text": corrupted_text,
        "clean_tokens": tuple(enc_c[2]),
        "corrupted_tokens": tuple(enc_k[2]),
        "target_position": pos,
        "target_reason": reason,
        **dataclasses.asdict(answers),
    }


# ----------------------------------------------------------------------------------------------------------------
# The run


def run_patching(
    loaded: LoadedModel,
    clean_text: str,
    corrupted_text: str,
    settings: PatchingSettings | None = None,
    progress: ProgressFn | None = None,
) -> PatchingResult:
    """Activation patching clean → corrupted for every block, position and component (see the module docstring).

    Raises InputError for texts of different token lengths (naming both lengths and token lists), a target that
    differs between the texts, answers that are not single tokens, or A == B (a data set of pairs calls it for
    each pair; `patch`, the one-pair entry of the CLI and the page, also refuses identical texts and m_clean ==
    m_corrupted). Call with the model's lock free or
    held by this thread (it takes `loaded.lock`)."""
    settings = settings or PatchingSettings()
    report = progress or silent
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    with loaded.lock:
        encoded = encode_texts(loaded, clean_text, corrupted_text, settings.max_tokens)
        (c_ids, c_mask, c_toks), (k_ids, k_mask, _), pos, _ = encoded
        sites = patch_sites(loaded.model, loaded.n_layers)
        report("Clean and corrupted runs", 0.0)
        t = time.perf_counter()
        clean_acts, clean_logits = capture_sites(loaded, sites, c_ids, c_mask, pos)
        corrupt_logits = target_logits(loaded, k_ids, k_mask, pos)[0]
        timings["clean_and_corrupted"] = time.perf_counter() - t

        answers = choose_answers(loaded, settings, clean_logits, corrupt_logits)
        a, b, m_clean, m_corrupt = answers.answer_id, answers.wrong_id, answers.m_clean, answers.m_corrupted

        import torch

        T = len(c_toks)
        Tp = pos + 1 if loaded.family == "causal_lm" else T  # later positions cannot change a causal prediction
        eye = torch.eye(Tp, dtype=torch.bool, device=c_ids.device)
        every = torch.ones(1, Tp, dtype=torch.bool, device=c_ids.device)
        nothing = torch.zeros(1, Tp, dtype=torch.bool, device=c_ids.device)
        metric = {c: np.full((loaded.n_layers, T), np.nan) for c in COMPONENTS}
        metric_all = {c: np.full(loaded.n_layers, np.nan) for c in COMPONENTS}
        sanity_identity = float("nan")
        L = loaded.n_layers
        for l in range(L):
            report(f"Layer {l + 1} of {L}", l / L)
            for c in COMPONENTS:
                t = time.perf_counter()
                per_pos = c == "residual" or settings.per_position_components
                parts = ([eye] if per_pos else []) + [every] + ([nothing] if (l == 0 and c == "residual") else [])
                vals = patched_metrics(
                    loaded, sites, c, l, clean_acts[c][l][:Tp], k_ids, k_mask, pos, torch.cat(parts), a, b
                )
                if per_pos:
                    metric[c][l, :Tp] = vals[:Tp]
                    metric[c][l, Tp:] = m_corrupt  # positions after a causal target: no effect by construction
                    vals = vals[Tp:]
                metric_all[c][l] = vals[0]
                if l == 0 and c == "residual":
                    sanity_identity = float(restored_score(np.array(vals[1]), m_clean, m_corrupt))
                timings[c] = timings.get(c, 0.0) + time.perf_counter() - t
        report("Done", 1.0)
    sanity_block0 = float(restored_score(np.array(metric_all["residual"][0]), m_clean, m_corrupt))
    warnings = answers.warnings()
    if not (abs(sanity_block0 - 1) < 1e-3 and abs(sanity_identity) < 1e-3):
        warnings.append(
            f"sanity check off: block 1 at every position restores {sanity_block0:.4g} (expected 1), "
            f"no patch {sanity_identity:.4g} (expected 0) — numerical precision of the model's dtype"
        )
    timings["total"] = time.perf_counter() - t0
    return PatchingResult(
        model=loaded.info(),
        settings=settings,
        **pair_fields(clean_text, corrupted_text, encoded, answers),
        metric=metric,
        metric_all=metric_all,
        sanity_block0=sanity_block0,
        sanity_identity=sanity_identity,
        warnings=tuple(warnings),
        timings=timings,
        versions=package_versions(),
    )


# ----------------------------------------------------------------------------------------------------------------
# Cache


def patching_cache_key(model_info: ModelInfo, clean_text: str, corrupted_text: str, settings: PatchingSettings) -> str:
    """core.run.cache.run_key over the model, both texts and the settings (answers included)."""
    return run_key(model_info.key_fields(), settings, kind="patching", clean=clean_text, corrupted=corrupted_text)


def patch(
    loaded: LoadedModel,
    clean_text: str,
    corrupted_text: str,
    settings: PatchingSettings | None = None,
    *,
    cache: ResultCache | None = None,
    progress: ProgressFn | None = None,
) -> PatchingResult:
    """`run_patching` behind the cache: the same model revision, texts, answers, settings and core version return
    the stored result without running the model. A run that cannot mean anything is refused with one line:
    identical texts (before any pass), or m_clean == m_corrupted (restored = 0/0 in every cell)."""
    settings = settings or PatchingSettings()
    if clean_text == corrupted_text:
        raise InputError(
            "the clean and the corrupted texts are identical: patching measures how much of the clean answer a "
            "patch restores in a corrupted run, so change a word in the corrupted text"
        )
    key = patching_cache_key(loaded.info(), clean_text, corrupted_text, settings)
    if cache is not None:
        hit = cache.get(key, PatchingResult)
        if hit is not None:
            if progress:
                progress("Loaded from cache", 1.0)
            return dataclasses.replace(hit, cache_hit=True)
    result = dataclasses.replace(run_patching(loaded, clean_text, corrupted_text, settings, progress), cache_key=key)
    if result.m_clean == result.m_corrupted:  # restored = 0/0 everywhere: refused rather than a table of NaN
        raise InputError(
            f"logit('{result.answer_token}') − logit('{result.wrong_token}') is {result.m_clean:.4g} in both runs, "
            "so 'restored' would divide by zero: the corrupted text does not change the answer; change a word "
            "that matters for it"
        )
    if cache is not None:
        cache.set(key, result)  # never raises: a full or read-only disk becomes one warning, the result is kept
    return result
