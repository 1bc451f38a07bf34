"""SAE features over a corpus: for every feature, its top-activating tokens with their contexts (the examples
Neuronpedia shows), its firing rate and its mean activation.

`sae_corpus(loaded, texts, sae_dirs)` runs one forward pass per text with the SAEs' sites recorded (core.model.sites,
hooks through core.model.hooks.hooked), encodes each site's activations with its SAE (core.model.sae) and keeps,
per feature, the `top_n` largest activations over the whole corpus (a running top-n merged text by text, so memory
is d_sae × top_n whatever the corpus size), the number of tokens where it fires and the sum of its activations.
Special tokens (BOS, [CLS] …) are left out unless `include_special` (SAEs are usually trained without BOS, whose
activations are atypical). Examples are ordered by activation, ties by text then position.

`SAECorpusScan` is that running state on its own: fed text by text (`add`), it can be written out (`part`) and merged
with another scan's part (`merge`) — the top-n of a union of top-n lists is the top-n of the union, and counts and
sums add — so the Ray engine (core.studies.sae_corpus_ray) gives the local engine's examples and statistics.

`sae_corpus_cached` goes through the result cache (core.run.cache): the key holds the model's provenance, the
texts' sha256, the settings (max_tokens, top_n, include_special) and the SAE folders' sha256 (cfg.json + weights), in
order — changed weights never serve a stale result.

    firing rate = #{tokens with f > 0} / #tokens        mean activation = Σ f / #tokens
    mean when active = Σ f / #{tokens with f > 0}
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.infra import serialize
from core.infra.errors import InputError
from core.infra.serialize import serializable
from core.model.arch import model_parts, try_model_parts
from core.model.hooks import hooked
from core.model.sae import SAE, load_sae
from core.model.sites import recorders
from core.model.tokens import tokenize

if TYPE_CHECKING:
    import torch

    from core.model.loading import LoadedModel
    from core.run.cache import ResultCache

EXAMPLES_HEADER = ["hook", "feature", "rank", "text_index", "position", "token", "activation", "context"]
STATS_HEADER = ["hook", "feature", "firing_rate", "mean_activation", "mean_when_active", "max_activation"]
#: Tokens of context on each side of an example.
CONTEXT_TOKENS = 8
#: Open and close marks around the example token in a context.
MARK_OPEN, MARK_CLOSE = "⟦", "⟧"


@serializable
@dataclass(frozen=True)
class SAEFeatureExamples:
    """One SAE over a corpus. d_sae features; N examples.

    fire_count int64 [d_sae], act_sum float64 [d_sae], act_max float32 [d_sae] over n_tokens tokens;
    examples (ex_*, [N]): feature, rank (1 = strongest), text index, position, token, activation, context
    (the example token in ⟦ ⟧ with CONTEXT_TOKENS tokens either side). ex_marks int32 [N, 2]: the character offsets
    of ⟦ and ⟧ in each context (a text may hold those characters itself, so the marks are not searched for).
    """

    name: str
    hook_name: str
    d_sae: int
    n_texts: int
    n_tokens: int
    fire_count: np.ndarray
    act_sum: np.ndarray
    act_max: np.ndarray
    ex_feature: np.ndarray
    ex_rank: np.ndarray
    ex_text: np.ndarray
    ex_position: np.ndarray
    ex_activation: np.ndarray
    ex_token: list[str]
    ex_context: list[str]
    ex_marks: np.ndarray | None = None

    def example_rows(self) -> list[list[object]]:
        """sae_feature_examples.csv rows (EXAMPLES_HEADER)."""
        return [
            [self.hook_name, int(f), int(r), int(t), int(p), tok, float(a), ctx]
            for f, r, t, p, a, tok, ctx in zip(
                self.ex_feature,
                self.ex_rank,
                self.ex_text,
                self.ex_position,
                self.ex_activation,
                self.ex_token,
                self.ex_context,
            )
        ]

    def stats_rows(self) -> list[list[object]]:
        """sae_feature_stats.csv rows (STATS_HEADER) of every feature that fired at least once."""
        n = max(self.n_tokens, 1)
        rows: list[list[object]] = []
        for f in np.flatnonzero(self.fire_count > 0):
            c = int(self.fire_count[f])
            s = float(self.act_sum[f])
            rows.append([self.hook_name, int(f), c / n, s / n, s / c, float(self.act_max[f])])
        return rows

    def context_parts(self, i: int) -> tuple[str, str, str]:
        """Example i's context as (before, token, after), split at its marks."""
        ctx = self.ex_context[i]
        if self.ex_marks is None:  # a result stored before the marks were kept: the first open, the last close
            a, b = ctx.find(MARK_OPEN), ctx.rfind(MARK_CLOSE)
        else:
            a, b = int(self.ex_marks[i, 0]), int(self.ex_marks[i, 1])
        return ctx[:a], ctx[a + 1 : b], ctx[b + 1 :]

    @property
    def n_dead(self) -> int:
        return int((self.fire_count == 0).sum())


class _TopN:
    """Running top-n (activation, text, position) per feature: values [n, d_sae], -inf where empty. Order: by
    activation (descending), ties by text, then position (ascending) — whatever order the entries arrive in."""

    def __init__(self, n: int, d_sae: int) -> None:
        self.n = n
        self.val = np.full((n, d_sae), -np.inf, dtype=np.float64)
        self.text = np.full((n, d_sae), -1, dtype=np.int64)
        self.pos = np.full((n, d_sae), -1, dtype=np.int64)

    def add(self, f: np.ndarray, text_index: int) -> None:
        """Merge the activations f [T, d_sae] of one text (non-firing entries never enter)."""
        k = min(self.n, f.shape[0])
        idx = np.argsort(-f, axis=0, kind="stable")[:k]  # the k largest per feature in this text
        v = np.take_along_axis(f, idx, axis=0).astype(np.float64)
        v[v <= 0] = -np.inf
        self.merge(v, np.full_like(idx, text_index, dtype=np.int64), idx.astype(np.int64))

    def merge(self, val: np.ndarray, text: np.ndarray, pos: np.ndarray) -> None:
        """Merge another top list ([m, d_sae] each; -inf where empty): the top-n of the union."""
        val = np.concatenate([self.val, val])
        text = np.concatenate([self.text, text])
        pos = np.concatenate([self.pos, pos])
        order = np.lexsort((pos, text, -val), axis=0)[: self.n]
        self.val = np.take_along_axis(val, order, axis=0)
        self.text = np.take_along_axis(text, order, axis=0)
        self.pos = np.take_along_axis(pos, order, axis=0)


def context(tokenizer: Any, ids: Sequence[int], p: int, width: int = CONTEXT_TOKENS) -> tuple[str, int, int]:
    """The example at position p with `width` tokens either side, the token in ⟦ ⟧; and the marks' offsets."""
    a, b = max(0, p - width), min(len(ids), p + width + 1)
    left, tok, right = (
        tokenizer.decode(list(ids[a:p])),
        tokenizer.decode([ids[p]]),
        tokenizer.decode(list(ids[p + 1 : b])),
    )
    return left + MARK_OPEN + tok + MARK_CLOSE + right, len(left), len(left) + 1 + len(tok)


def check_saes(loaded: LoadedModel, sae_dirs: Sequence[str]) -> list[SAE]:
    """The SAEs of `sae_dirs`, checked against the model; one-line InputError otherwise."""
    parts, why = try_model_parts(loaded.model, "SAE features", "are")
    if parts is None:
        raise InputError(str(why))
    saes: list[SAE] = [load_sae(d) for d in sae_dirs]
    if len({s.hook_name for s in saes}) != len(saes):
        raise InputError("two SAEs read the same hook: one SAE per hook")
    for s in saes:
        s.check_model(parts, loaded.model_id)
    return saes


def check_top_n(top_n: int) -> None:
    if not 1 <= top_n <= 100:
        raise InputError(f"the number of examples per feature must be between 1 and 100, got {top_n}")


class SAECorpusScan:
    """The running statistics of some SAEs over texts (see the module docstring): `add` one text, `part` to write
    them out, `merge` another scan's part, `results` at the end."""

    def __init__(self, saes: Sequence[SAE], top_n: int, max_tokens: int, include_special: bool) -> None:
        check_top_n(top_n)
        self.saes = list(saes)
        self.max_tokens = max_tokens
        self.include_special = include_special
        self.tops = [_TopN(top_n, s.d_sae) for s in saes]
        self.fire = [np.zeros(s.d_sae, dtype=np.int64) for s in saes]
        self.total = [np.zeros(s.d_sae, dtype=np.float64) for s in saes]
        self.peak = [np.zeros(s.d_sae, dtype=np.float32) for s in saes]
        self.n_tokens = 0

    def add(self, loaded: LoadedModel, text_index: int, text: str) -> list[int]:
        """One forward pass over `text` (the caller holds loaded.lock); returns its token ids."""
        import torch

        enc = tokenize(loaded, text, self.max_tokens)
        keep = np.array([self.include_special or not s for s in enc.special])
        store: dict[str, torch.Tensor] = {}
        regs = recorders(model_parts(loaded.model), [s.hook_name for s in self.saes], store)
        with torch.inference_mode(), hooked(regs):
            loaded.model(input_ids=enc.input_ids.to(loaded.device), attention_mask=enc.attention_mask.to(loaded.device))
        for j, s in enumerate(self.saes):
            with torch.inference_mode():
                f = s.encode(store[s.hook_name]).numpy()
            f[~keep] = 0.0
            self.fire[j] += (f > 0).sum(0)
            self.total[j] += f.sum(0, dtype=np.float64)
            np.maximum(self.peak[j], f.max(0), out=self.peak[j])
            self.tops[j].add(f, text_index)
        self.n_tokens += int(keep.sum())
        return enc.ids

    def part(self) -> dict[str, Any]:
        """The state as plain arrays (core.infra.serialize can write it; `merge` reads it)."""
        return {
            "n_tokens": self.n_tokens,
            "saes": [
                {
                    "fire": self.fire[j],
                    "total": self.total[j],
                    "peak": self.peak[j],
                    "val": t.val,
                    "text": t.text,
                    "pos": t.pos,
                }  # fmt: skip
                for j, t in enumerate(self.tops)
            ],
        }

    def merge(self, part: Mapping[str, Any]) -> None:
        """Add another scan's `part()` (of other texts, with the same SAEs and settings)."""
        if len(part["saes"]) != len(self.saes):
            raise ValueError("a part of other SAEs")
        self.n_tokens += int(part["n_tokens"])
        for j, p in enumerate(part["saes"]):
            self.fire[j] += p["fire"]
            self.total[j] += p["total"]
            np.maximum(self.peak[j], p["peak"], out=self.peak[j])
            self.tops[j].merge(np.asarray(p["val"]), np.asarray(p["text"]), np.asarray(p["pos"]))

    def texts_needed(self) -> set[int]:
        """The texts that hold an example (their token ids make the contexts)."""
        out: set[int] = set()
        for t in self.tops:
            out.update(int(i) for i in np.unique(t.text[np.isfinite(t.val)]))
        return out

    def results(self, n_texts: int, token_ids: Mapping[int, Sequence[int]], tokenizer: Any) -> list[SAEFeatureExamples]:
        """One SAEFeatureExamples per SAE; token_ids: the ids of at least every text of `texts_needed()`."""
        out = []
        for j, s in enumerate(self.saes):
            top = self.tops[j]
            r, feat = np.nonzero(np.isfinite(top.val))
            order = np.lexsort((r, feat))
            r, feat = r[order], feat[order]
            tx, ps = top.text[r, feat], top.pos[r, feat]
            ctx = [context(tokenizer, token_ids[int(t)], int(p)) for t, p in zip(tx, ps)]
            out.append(
                SAEFeatureExamples(
                    name=s.name,
                    hook_name=s.hook_name,
                    d_sae=s.d_sae,
                    n_texts=n_texts,
                    n_tokens=self.n_tokens,
                    fire_count=self.fire[j],
                    act_sum=self.total[j],
                    act_max=self.peak[j],
                    ex_feature=feat.astype(np.int32),
                    ex_rank=(r + 1).astype(np.int32),
                    ex_text=tx.astype(np.int32),
                    ex_position=ps.astype(np.int32),
                    ex_activation=top.val[r, feat].astype(np.float32),
                    ex_token=[tokenizer.convert_ids_to_tokens(int(token_ids[int(t)][p])) for t, p in zip(tx, ps)],
                    ex_context=[c for c, _, _ in ctx],
                    ex_marks=np.array([(a, b) for _, a, b in ctx], dtype=np.int32).reshape(-1, 2),
                )
            )
        return out


def sae_corpus(
    loaded: LoadedModel,
    texts: Sequence[str],
    sae_dirs: Sequence[str],
    *,
    max_tokens: int = 128,
    top_n: int = 10,
    include_special: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[SAEFeatureExamples]:
    """Top examples, firing rates and mean activations of every feature of each SAE over `texts` (see the module
    docstring). One-line InputError for an SAE that cannot be used with the model. progress(k, G) after each text."""
    check_top_n(top_n)
    scan = SAECorpusScan(check_saes(loaded, sae_dirs), top_n, max_tokens, include_special)
    token_ids: dict[int, list[int]] = {}
    with loaded.lock:
        for i, text in enumerate(texts):
            token_ids[i] = scan.add(loaded, i, text)
            if progress is not None:
                progress(i + 1, len(texts))
    return scan.results(len(texts), token_ids, loaded.tokenizer)


def sae_corpus_files(results: Sequence[SAEFeatureExamples]) -> dict[str, bytes]:
    """sae_feature_examples.csv and sae_feature_stats.csv for the corpus bundle."""
    from core.infra.formats import csv_bytes

    ex: list[list[object]] = []
    st: list[list[object]] = []
    for r in results:
        ex += r.example_rows()
        st += r.stats_rows()
    return {
        "sae_feature_examples.csv": csv_bytes(EXAMPLES_HEADER, ex),
        "sae_feature_stats.csv": csv_bytes(STATS_HEADER, st),
    }


@serializable
@dataclass(frozen=True)
class SAECorpusResult:
    """Every SAE's examples of one corpus run, as the result cache stores them."""

    saes: tuple[SAEFeatureExamples, ...]
    cache_key: str = ""
    cache_hit: bool = False

    def to_bytes(self) -> bytes:
        return serialize.dumps(self)

    @staticmethod
    def from_bytes(data: bytes | bytearray | memoryview | mmap.mmap) -> SAECorpusResult:
        obj = serialize.loads(data)
        if not isinstance(obj, SAECorpusResult):
            raise ValueError("the data does not hold an SAECorpusResult")
        return obj


@dataclass(frozen=True)
class _KeySettings:
    max_tokens: int
    top_n: int
    include_special: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sae_corpus_key(loaded: LoadedModel, texts: Sequence[str], sae_dirs: Sequence[str], *, max_tokens: int,
                   top_n: int, include_special: bool) -> str:  # fmt: skip
    """The result-cache key of an `sae_corpus` run (see the module docstring)."""
    from core.model.sae import fingerprints
    from core.run.cache import run_key
    from core.studies.corpus import corpus_sha256

    return run_key(
        loaded.info().key_fields(),
        _KeySettings(max_tokens, top_n, include_special),
        kind="sae_corpus",
        corpus_sha256=corpus_sha256(texts),
        sae=fingerprints(list(sae_dirs)),
    )


def sae_corpus_cached(
    loaded: LoadedModel,
    texts: Sequence[str],
    sae_dirs: Sequence[str],
    *,
    cache: ResultCache | None,
    max_tokens: int = 128,
    top_n: int = 10,
    include_special: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SAECorpusResult:
    """`sae_corpus` through the result cache (None: no cache); a hit runs no forward pass."""
    check_top_n(top_n)
    kw: dict[str, Any] = {"max_tokens": max_tokens, "top_n": top_n, "include_special": include_special}
    key = sae_corpus_key(loaded, texts, sae_dirs, **kw)
    hit = cache.get(key, SAECorpusResult) if cache is not None else None
    if hit is not None:
        return SAECorpusResult(hit.saes, key, cache_hit=True)
    out = SAECorpusResult(tuple(sae_corpus(loaded, texts, sae_dirs, progress=progress, **kw)), key)
    if cache is not None:
        cache.set(key, out)
    return out
