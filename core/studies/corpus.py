"""Corpus mode: layer geometry over many texts, with 95 % intervals over texts.

`analyze_corpus(model, texts, settings, progress)` tokenises every text, runs batched forward passes that return
hidden states only (the fused SDPA attention may be used: no attention weights are needed here), keeps a seeded
uniform sample of at most `max_points` token states per layer (a finished batch keeps nothing beyond its share of
the sample, so memory stays bounded for 10 000 texts), computes the five single-text layer metrics of every text,
and the pooled metrics of core.studies.geometry with 95 % intervals over texts (each metric's method chosen by
simulation, see core.studies.intervals; the estimand: the metric's expected value on another corpus of as many
texts from the same source). The result is a typed, pickle-free `CorpusResult` that round-trips through the cache.

Padding never changes a real token's state: the attention mask hides pad keys, and position ids are counted over
real tokens only, so left- and right-padding tokenizers both give the per-text states (tested).

Input readers (`texts_from_lines`, `texts_from_csv`) turn an uploaded or given file into texts: blank lines are
skipped and counted, bytes that are not UTF-8 and a corpus larger than the limit are refused with a clear message.
The limit on texts is core.infra.guards' `$TMA_MAX_CORPUS_TEXTS` (default 200, for public deployments); the CLI's
--max-texts replaces it for a local run. Each text is also bounded by `$TMA_MAX_TEXT_CHARS`.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import inspect
import io
import logging
import mmap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

import numpy as np

from core.infra import serialize
from core.infra.errors import InputError
from core.infra.guards import check_text_length, max_corpus_texts
from core.infra.threads import single_threaded
from core.infra.version import CORE_VERSION
from core.model.hooks import hooked
from core.model.info import ModelInfo
from core.model.loading import LoadedModel, final_norm, load_model
from core.model.provenance import package_versions
from core.model.tokens import Encoded, encode_texts
from core.run.cache import ResultCache, run_key
from core.run.checkpoint import WorkFolder
from core.run.progress import ProgressFn, scaled, silent
from core.run.settings import Settings, setting
from core.steps import metrics
from core.studies import geometry, intervals

log = logging.getLogger(__name__)

ENV_MAX_TEXTS = "TMA_MAX_CORPUS_TEXTS"
MAX_CORPUS_BYTES = 64 * 1024 * 1024
#: Share of the progress bar given to the forward passes (the rest: the pooled metrics and their bootstrap).
FORWARD_SHARE = 0.5
#: below this many texts the intervals' simulated coverage falls short for some metrics (README, Corpus mode)
FEW_TEXTS = 30


# ----------------------------------------------------------------------------------------------------------------
# Settings


@serialize.serializable
@dataclass(frozen=True)
class CorpusSettings(Settings):
    """Settings of one corpus analysis; every field enters the cache key. Rules live in each field's metadata
    (core.run.settings.setting)."""

    cli_title: ClassVar[str] = "corpus settings"

    max_tokens: int = setting(
        128, "truncate every text to this many tokens (special tokens included)", min=2, max=4096, label="Max tokens"
    )
    batch_size: int = setting(
        8, "texts per forward pass (padded with the attention mask)", min=1, max=512, label="Batch size"
    )
    bootstrap: int = setting(
        200,
        "bootstrap resamples of the texts for the 95 % intervals (0: no intervals)",
        min=0,
        max=5000,
        label="Bootstrap resamples",
    )
    max_points: int = setting(
        5000,
        "token states kept per layer for the pooled metrics (seeded uniform sample)",
        min=10,
        max=50_000,
        label="Pooled token states per layer",
    )
    include_special_tokens: bool = setting(
        False, "include special tokens ([CLS], [SEP], BOS…) in the metrics", label="Include special tokens"
    )
    seed: int = setting(0, "seed of the token sample and of the bootstrap", min=0, max=2**31 - 1, label="Seed")
    bootstrap_rank: int = setting(
        128,
        "principal directions in which the bootstrap recomputes spectra exactly "
        "(the rest of the variance is exact in total, its shape held fixed)",
        min=1,
        max=8192,
        label="Bootstrap rank",
    )


# ----------------------------------------------------------------------------------------------------------------
# Reading a corpus


@dataclass(frozen=True)
class CorpusTexts:
    """Texts read from a file or pasted lines: `texts` (non-blank, in order) and how many blank ones were skipped."""

    texts: tuple[str, ...]
    n_blank: int = 0


def decode_utf8(data: bytes | str, what: str = "the file") -> str:
    """UTF-8 text of `data` (a BOM is dropped); InputError naming the line of the first bad byte otherwise."""
    if isinstance(data, str):
        return data
    if len(data) > MAX_CORPUS_BYTES:
        raise InputError(f"{what} is larger than {MAX_CORPUS_BYTES // (1024 * 1024)} MB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{what} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8 and try again"
        ) from None


def _check_count(texts: Sequence[str], limit: int | None, what: str) -> None:
    """The corpus rules: at least one text, at most `limit` (default `guards.max_corpus_texts()`), each text within
    `$TMA_MAX_TEXT_CHARS`."""
    limit = max_corpus_texts() if limit is None else limit
    n = len(texts)
    if n == 0:
        raise InputError(f"{what} holds no text: every line is blank")
    if n > limit:
        raise InputError(
            f"{what} holds {n} texts, more than the limit of {limit} "
            f"(--max-texts, or ${ENV_MAX_TEXTS} on a server); split the corpus or raise the limit"
        )
    for i, t in enumerate(texts):
        check_text_length(t, what=f"text {i + 1} of {what}")


def texts_from_lines(data: bytes | str, *, limit: int | None = None, what: str = "the corpus") -> CorpusTexts:
    """One text per line; blank lines are skipped and counted. Refuses an empty corpus and one over `limit`
    (default `max_corpus_texts()`) before anything is computed."""
    text = decode_utf8(data, what)
    if not text:
        raise InputError(f"{what} is empty")
    lines = text.splitlines()
    texts = tuple(line.strip() for line in lines if line.strip())
    _check_count(texts, limit, what)
    return CorpusTexts(texts, len(lines) - len(texts))


def csv_columns(data: bytes | str, what: str = "the CSV file") -> list[str]:
    """Column names of a CSV file (its header row)."""
    text = decode_utf8(data, what)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise InputError(f"{what} is empty or has no header row")
    return [h.strip() for h in header]


def text_column(data: bytes | str, what: str = "the CSV file", rows: int = 200) -> str:
    """The column that most likely holds the texts: one named "text" (any case), else the column whose cells are
    longest on average over the first `rows` rows (an id or a label column loses to a column of sentences); the first
    such column on a tie."""
    text = decode_utf8(data, what)
    cols = csv_columns(text, what)
    named = [c for c in cols if c.lower() == "text"]
    if named:
        return named[0]
    reader = csv.reader(io.StringIO(text))
    next(reader, None)
    total = [0] * len(cols)
    try:
        for i, row in enumerate(reader):
            if i >= rows:
                break
            for j, cell in enumerate(row[: len(cols)]):
                total[j] += len(cell.strip())
    except csv.Error as exc:
        raise InputError(f"{what} is not valid CSV: {exc}") from None
    return cols[max(range(len(cols)), key=lambda j: (total[j], -j))]


def texts_from_csv(
    data: bytes | str, column: str, *, limit: int | None = None, what: str = "the CSV file"
) -> CorpusTexts:
    """The texts of one column of a CSV file with a header row; blank cells are skipped and counted."""
    text = decode_utf8(data, what)
    cols = csv_columns(text, what)
    if column not in cols:
        raise InputError(f"{what} has no column '{column}'; its columns are: {', '.join(cols)}")
    reader = csv.DictReader(io.StringIO(text), fieldnames=cols)
    next(reader, None)
    try:
        cells = [(row.get(column) or "").strip() for row in reader]
    except csv.Error as exc:
        raise InputError(f"{what} is not valid CSV: {exc}") from None
    texts = tuple(c for c in cells if c)
    _check_count(texts, limit, what)
    return CorpusTexts(texts, len(cells) - len(texts))


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def corpus_sha256(texts: Sequence[str]) -> str:
    """sha256 over the per-text sha256s in order (so the order of the texts matters)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(text_sha256(t).encode("ascii"))
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# The result


@serialize.serializable
@dataclass(frozen=True)
class CorpusResult:
    """Everything one corpus analysis produced. G texts, L+1 layers (0 = embedding output; the last one before
    the model's final norm, as in single-text analyses).

    estimate, ci_low, ci_high: {pooled metric (geometry.POOLED_METRICS): float64 [L+1]}; linearity[0] is NaN
        (linearity l compares layer l−1 with l); intervals are NaN with one text or bootstrap = 0.
    interval_methods: {pooled metric: interval method of core.studies.intervals} (empty without intervals).
    per_text: {single-text metric (metrics.METRIC_NAMES): float64 [G, L+1]}.
    n_points: [L+1] pooled token states; n_duplicates: [L+1] exact duplicates removed before TwoNN.
    text_tokens: int [G] tokens of each text after truncation; metric_tokens: [G] the tokens the metrics used.
    """

    model: ModelInfo
    settings: CorpusSettings
    n_texts: int
    n_blank_skipped: int
    text_sha256: tuple[str, ...]
    corpus_sha256: str
    text_tokens: np.ndarray
    metric_tokens: np.ndarray
    n_truncated: int
    estimate: dict[str, np.ndarray]
    ci_low: dict[str, np.ndarray]
    ci_high: dict[str, np.ndarray]
    n_points: np.ndarray
    n_duplicates: np.ndarray
    per_text: dict[str, np.ndarray]
    attn_implementation: str
    final_norm: bool
    warnings: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    core_version: str = ""
    created_at: str = ""
    duration_s: float = 0.0
    cache_hit: bool = False
    cache_key: str = ""
    interval_methods: dict[str, str] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        """Number of hidden-state layers including the embedding output (L+1)."""
        return int(self.n_points.shape[0])

    @property
    def has_intervals(self) -> bool:
        return bool(np.isfinite(self.ci_low["effective_rank"]).any())

    def interval_note(self) -> str:
        """What the intervals estimate and how, in one paragraph (page caption, PDF); "" without intervals."""
        if not self.has_intervals:
            return ""
        return (
            f"95 % intervals for {intervals.ESTIMAND} — here {self.n_texts} texts. Methods, chosen per metric by "
            f"simulation: {intervals.describe_methods(self.interval_methods)}. Bounded metrics are clipped to their "
            "range; the estimate always lies inside its interval."
        )

    def metric_rows(self) -> list[list[Any]]:
        """Rows of corpus_metrics.csv: [layer, metric, estimate, ci_low, ci_high, n_texts, n_points], one per
        (layer, metric); linearity starts at layer 1."""
        rows: list[list[Any]] = []
        for layer in range(self.n_layers):
            for m in geometry.POOLED_METRICS:
                if m == "linearity" and layer == 0:
                    continue
                n = self.n_points[layer] - (self.n_duplicates[layer] if m == "twonn_dimension" else 0)
                rows.append(
                    [
                        layer,
                        m,
                        float(self.estimate[m][layer]),
                        float(self.ci_low[m][layer]),
                        float(self.ci_high[m][layer]),
                        self.n_texts,
                        int(n),
                    ]
                )
        return rows

    def per_text_rows(self) -> list[list[Any]]:
        """Rows of per_text_metrics.csv: [text_index, layer, *metrics.METRIC_NAMES]."""
        return [
            [g, layer, *(float(self.per_text[m][g, layer]) for m in metrics.METRIC_NAMES)]
            for g in range(self.n_texts)
            for layer in range(self.n_layers)
        ]

    def per_text_summary(self, metric: str) -> dict[str, np.ndarray]:
        """Median and interquartile range over texts of one single-text metric: {"median", "q25", "q75"} [L+1]."""
        v = self.per_text[metric]
        q = np.full((3, v.shape[1] if v.ndim == 2 else self.n_layers), np.nan)
        # layers where no text has a value stay NaN: computed only over the others, so numpy never warns "All-NaN
        # slice" on the console (np.errstate does not cover that warning, and catch_warnings is not thread-safe)
        some = np.isfinite(v).any(axis=0) if v.size else np.zeros(q.shape[1], bool)
        if some.any():
            q[:, some] = np.nanquantile(v[:, some], [0.25, 0.5, 0.75], axis=0)
        if not some.all():
            log.debug("%s: no text has a value at layer(s) %s", metric, np.flatnonzero(~some).tolist())
        return {"q25": q[0], "median": q[1], "q75": q[2]}

    def to_bytes(self) -> bytes:
        return serialize.dumps(self)

    @staticmethod
    def from_bytes(data: bytes | bytearray | memoryview | mmap.mmap) -> CorpusResult:
        obj = serialize.loads(data)
        if not isinstance(obj, CorpusResult):
            raise ValueError("the data does not hold a CorpusResult")
        return obj

    def replace(self, **changes: Any) -> CorpusResult:
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------------------------------
# The batched forward passes (texts are tokenised by core.model.tokens, as every run's are)


@contextlib.contextmanager
def fast_attention(loaded: LoadedModel) -> Iterator[str]:
    """Switch the model to SDPA attention for a hidden-states-only pass, and back afterwards (hold loaded.lock).

    Yields the implementation in use ("sdpa", or the model's own when it cannot switch)."""
    model = loaded.model
    before = getattr(model.config, "_attn_implementation", None) or "eager"
    switched = False
    if before != "sdpa" and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("sdpa")
            switched = True
        except Exception as exc:  # an architecture without SDPA support keeps its own attention
            log.info("SDPA not available for %s (%s); keeping %s", loaded.model_id, exc, before)
    try:
        yield "sdpa" if switched or before == "sdpa" else before
    finally:
        if switched:
            model.set_attn_implementation(before)


def _pad_id(tok: Any) -> int:
    for v in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id):
        if v is not None:
            return int(v)
    return 0


def forward_batches(
    loaded: LoadedModel, encoded: Sequence[Encoded], batch_size: int, order: Sequence[int] | None = None
) -> Iterator[tuple[list[int], list[np.ndarray], bool]]:
    """Batched forward passes that return hidden states only; the caller holds loaded.lock.

    Texts are padded on the tokenizer's side (`padding_side`) with the attention mask; position ids count real
    tokens only. Yields (text indices, [float32 [L+1, T_g, D] per text, real tokens only], whether the model has a
    final norm (then the last state is its input, as in core.model.capture)).
    """
    import torch

    model = loaded.model
    tok = loaded.tokenizer
    left = getattr(tok, "padding_side", "right") == "left"
    pad = _pad_id(tok)
    takes_positions = "position_ids" in inspect.signature(model.forward).parameters
    norm = final_norm(model)
    idx_all = list(order) if order is not None else list(range(len(encoded)))
    for start in range(0, len(idx_all), batch_size):
        idx = idx_all[start : start + batch_size]
        lens = [len(encoded[i].ids) for i in idx]
        T = max(lens)
        ids = torch.full((len(idx), T), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for r, i in enumerate(idx):
            n = lens[r]
            sl = slice(T - n, T) if left else slice(0, n)
            ids[r, sl] = torch.tensor(encoded[i].ids, dtype=torch.long)
            mask[r, sl] = 1
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(loaded.device),
            "attention_mask": mask.to(loaded.device),
            "output_hidden_states": True,
            "return_dict": True,
        }
        if takes_positions:
            kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0).to(loaded.device)
        pre_norm: dict[str, Any] = {}

        def grab(_module: Any, args: Any, _pre: dict[str, Any] = pre_norm) -> None:
            _pre["h"] = args[0]

        with hooked([(norm, "pre", grab)] if norm is not None else []), torch.inference_mode():
            out = model(**kwargs)
        hs = list(out.hidden_states)
        if "h" in pre_norm:
            hs[-1] = pre_norm["h"]
        stacked = torch.stack(hs, dim=1).float().cpu().numpy()  # [B, L+1, T, D]
        per_text = []
        for r in range(len(idx)):
            n = lens[r]
            per_text.append(stacked[r, :, T - n :] if left else stacked[r, :, :n])
        yield idx, per_text, "h" in pre_norm


# ----------------------------------------------------------------------------------------------------------------
# The analysis


def corpus_cache_key(model_info: ModelInfo, corpus_hash: str, settings: CorpusSettings) -> str:
    """core.run.cache.run_key over the model, the texts (their sha256) and every corpus setting."""
    return run_key(
        model_info.key_fields(), settings, kind="corpus", corpus_sha256=corpus_hash, intervals=geometry.INTERVAL_METHOD
    )


def sample_tokens(eligible: Sequence[int], max_points: int, seed: int) -> list[np.ndarray]:
    """Seeded uniform sample without replacement of at most `max_points` of all eligible tokens.

    eligible: per text, the number of its eligible tokens. Returns, per text, the sorted ranks (0 … e_g−1) of its
    sampled tokens among its eligible ones.
    """
    counts = np.asarray(eligible, dtype=np.int64)
    total = int(counts.sum())
    offsets = np.concatenate([[0], np.cumsum(counts)])
    if total <= max_points:
        chosen = np.arange(total)
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(total, size=max_points, replace=False))
    owner = np.searchsorted(offsets, chosen, side="right") - 1
    return [chosen[owner == g] - offsets[g] for g in range(counts.size)]


def analyze_corpus(
    model: LoadedModel | str,
    texts: Sequence[str] | CorpusTexts,
    settings: CorpusSettings | None = None,
    progress: ProgressFn | None = None,
    *,
    cache: ResultCache | None = None,
    dtype: str = "auto",
    device: str = "auto",
    limit: int | None = None,
    work: WorkFolder | None = None,
) -> CorpusResult:
    """Analyse a corpus: pooled layer geometry with bootstrap intervals, and the single-text metrics of each text.

    model: a LoadedModel, or an id / folder loaded first. texts: the texts (blank ones are skipped and counted),
    or a CorpusTexts from a reader. cache: the ResultCache; a hit runs no forward pass.
    limit: most texts accepted (default `max_corpus_texts()`). progress(label, fraction) (core.run.progress): "Forward
    passes: k of G texts" over the first part of the bar, then "Pooled metrics: layer l of L+1".
    work: a work folder (core.run.checkpoint): each finished batch is kept there (`batch_unit`), and batches already
    there are read back instead of run again — the batches are the same ones, so the numbers are too.
    """
    t_start = time.perf_counter()
    st = settings or CorpusSettings()
    report = progress or silent
    if isinstance(texts, CorpusTexts):
        n_blank, all_texts = texts.n_blank, list(texts.texts)
    else:
        raw = [t for t in texts]
        if any(not isinstance(t, str) for t in raw):
            raise InputError("every text must be a string")
        all_texts = [t.strip() for t in raw if t.strip()]
        n_blank = len(raw) - len(all_texts)
    _check_count(all_texts, limit, "the corpus")
    loaded = model if isinstance(model, LoadedModel) else load_model(str(model), dtype=dtype, device=device)
    info = loaded.info()
    c_hash = corpus_sha256(all_texts)
    key = corpus_cache_key(info, c_hash, st)
    hit = cache.get(key, CorpusResult) if cache is not None else None
    if hit is not None:
        report("Loaded from cache", 1.0)
        return hit.replace(cache_hit=True, duration_s=time.perf_counter() - t_start, n_blank_skipped=n_blank)

    timings: dict[str, float] = {}
    G = len(all_texts)
    t0 = time.perf_counter()
    encoded = encode_texts(loaded, all_texts, st.max_tokens)
    keep_masks = [np.array([st.include_special_tokens or not s for s in e.special], dtype=bool) for e in encoded]
    sample = sample_tokens([int(k.sum()) for k in keep_masks], st.max_points, st.seed)
    n_points = int(sum(s.size for s in sample))
    timings["tokenize_s"] = time.perf_counter() - t0

    n_layers = loaded.n_layers + 1
    pool: np.ndarray | None = None
    groups = np.repeat(np.arange(G), [s.size for s in sample])
    offsets = np.concatenate([[0], np.cumsum([s.size for s in sample])]).astype(np.int64)
    per_text = {m: np.full((G, n_layers), np.nan) for m in metrics.METRIC_NAMES}
    order = sorted(range(G), key=lambda i: len(encoded[i].ids))  # similar lengths batch together: less padding
    batches = [order[i : i + st.batch_size] for i in range(0, G, st.batch_size)]
    if work is not None:
        work.check_model(info)
    t_forward = t_metrics = 0.0
    done = 0
    has_norm = False
    todo: list[int] = []
    for b, idx in enumerate(batches):
        if work is not None and work.has(batch_name(b)):
            unit = work.load(batch_name(b))
            pool, has_norm = restore_batch(unit, per_text, pool, offsets, n_points), bool(unit["has_norm"])
            done += len(idx)
        else:
            todo += idx  # whole batches in order: forward_batches cuts them back into the same batches
    share = FORWARD_SHARE if st.bootstrap and G > 1 else 0.9  # without a bootstrap the pooled metrics are quick
    forward, pooled_stage = scaled(report, 0.0, share), scaled(report, share, 1.0)
    forward(f"Forward passes: {done} of {G} texts", done / G)
    batch_no = {idx[0]: b for b, idx in enumerate(batches)}
    with loaded.lock, fast_attention(loaded) as attn_used:
        t1 = time.perf_counter()
        for idx, states, norm_seen in forward_batches(loaded, encoded, st.batch_size, todo):
            has_norm = norm_seen
            t2 = time.perf_counter()
            t_forward += t2 - t1
            stats = []
            for g, H in zip(idx, states):
                if pool is None:
                    pool = np.empty((H.shape[0], n_points, H.shape[2]), dtype=np.float32)
                lm, picked = text_statistics(H, keep_masks[g], sample[g])
                pool[:, offsets[g] : offsets[g + 1]] = picked
                for m in metrics.METRIC_NAMES:
                    per_text[m][g] = lm[m]
                stats.append((g, lm, picked))
            if work is not None:
                work.save(batch_name(batch_no[idx[0]]), batch_unit(stats, norm_seen, attn_used))
            done += len(idx)
            t1 = time.perf_counter()
            t_metrics += t1 - t2
            forward(f"Forward passes: {done} of {G} texts", done / G)
    timings["forward_s"] = t_forward
    timings["per_text_metrics_s"] = t_metrics
    return finish_corpus(
        info,
        st,
        pool,
        groups,
        per_text,
        text_sha=tuple(text_sha256(t) for t in all_texts),
        corpus_hash=c_hash,
        text_tokens=np.array([len(e.ids) for e in encoded], dtype=np.int64),
        metric_tokens=np.array([int(k.sum()) for k in keep_masks], dtype=np.int64),
        n_truncated=sum(e.truncated for e in encoded),
        n_blank=n_blank,
        attn_used=attn_used,
        has_norm=has_norm,
        timings=timings,
        t_start=t_start,
        key=key,
        progress=pooled_stage,
        cache=cache,
    )


def batch_name(b: int) -> str:
    """The work-folder unit of the engines' batch number `b` (texts sorted by token count, batch_size each)."""
    return f"batch-{b:07d}"


def batch_unit(stats: Sequence[tuple[int, dict[str, np.ndarray], np.ndarray]], has_norm: bool, attn: str) -> dict:
    """One finished batch as a work-folder unit (core.run.checkpoint), the same for both engines: per text (index
    g, its metrics {metric: [L+1]}, its sampled states [L+1, k, D]) → {"ids" [n], "metrics" [n, M, L+1], "k" [n],
    "states" [L+1, Σk, D] float32, "has_norm", "attn"} (texts without a sampled state may give any [L+1, 0, ·])."""
    per = [np.stack([np.asarray(lm[m], dtype=np.float64) for m in metrics.METRIC_NAMES]) for _, lm, _ in stats]
    parts = [np.asarray(p, dtype=np.float32) for _, _, p in stats if p.shape[1]]
    return {
        "ids": np.array([g for g, _, _ in stats], dtype=np.int64),
        "metrics": np.stack(per),
        "k": np.array([p.shape[1] for _, _, p in stats], dtype=np.int64),
        "states": np.concatenate(parts, axis=1) if parts else np.zeros((per[0].shape[1], 0, 0), dtype=np.float32),
        "has_norm": bool(has_norm),
        "attn": str(attn),
    }


def restore_batch(
    unit: dict[str, Any],
    per_text: dict[str, np.ndarray],
    pool: np.ndarray | None,
    offsets: np.ndarray,
    n_points: int,
) -> np.ndarray | None:
    """Put a `batch_unit` back: its texts' metrics into `per_text` and their sampled states into `pool` [L+1, N, D]
    (allocated here, when None and the unit holds states). Returns the pool."""
    states = unit["states"]
    if pool is None and states.shape[1]:
        pool = np.empty((states.shape[0], n_points, states.shape[2]), dtype=np.float32)
    at = 0
    for g, m, k in zip(unit["ids"], unit["metrics"], unit["k"], strict=True):
        g, k = int(g), int(k)
        if offsets[g + 1] - offsets[g] != k:
            raise InputError("the work folder's batch does not match this run's token sample; delete the folder")
        if k:
            assert pool is not None
            pool[:, offsets[g] : offsets[g + 1]] = states[:, at : at + k]
            at += k
        for j, name in enumerate(metrics.METRIC_NAMES):
            per_text[name][g] = m[j]
    return pool


def text_statistics(H: np.ndarray, keep: np.ndarray, ranks: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One text's share of a corpus run, as both engines compute it: its single-text metrics {metric: [L+1]} and its
    sampled token states [L+1, k, D] (`ranks`: the sorted ranks of its sampled tokens among its eligible ones)."""
    kept = np.flatnonzero(keep)
    with single_threaded():  # small eigenproblems between torch passes: no thread contention
        lm = metrics.layer_metrics(H, keep)
    return lm, H[:, kept[np.asarray(ranks, dtype=np.int64)]]


def finish_corpus(
    info: ModelInfo,
    st: CorpusSettings,
    pool: np.ndarray | None,
    groups: np.ndarray,
    per_text: dict[str, np.ndarray],
    *,
    text_sha: tuple[str, ...],
    corpus_hash: str,
    text_tokens: np.ndarray,
    metric_tokens: np.ndarray,
    n_truncated: int,
    n_blank: int,
    attn_used: str,
    has_norm: bool,
    timings: dict[str, float],
    t_start: float,
    key: str,
    progress: ProgressFn,
    cache: ResultCache | None,
) -> CorpusResult:
    """The driver's half of a corpus run, shared by the local and the Ray engine: the pooled metrics with their
    intervals over the pooled sample `pool` [L+1, N, D] (`groups`: the text of each point), the warnings and the
    CorpusResult (stored in `cache` when one is given)."""
    G = int(text_tokens.size)
    n_layers = int(next(iter(per_text.values())).shape[1])
    n_points = 0 if pool is None else int(pool.shape[1])
    warnings: list[str] = []
    pooled_stage = progress
    if pool is None or n_points == 0:
        raise InputError(
            "no token is left to analyse: every text consists of special tokens only "
            "(include special tokens, or give longer texts)"
        )

    t3 = time.perf_counter()
    # one BLAS thread: right after torch its spinning OpenMP threads make threaded BLAS calls many times slower
    with single_threaded():
        pooled = geometry.pooled_geometry(
            pool,
            groups,
            G,
            n_resamples=st.bootstrap if G > 1 else 0,
            seed=st.seed,
            rank=st.bootstrap_rank,
            on_layer=lambda layer: pooled_stage(
                f"Pooled metrics: layer {layer + 1} of {n_layers}", (layer + 1) / n_layers
            ),
        )
    timings["pooled_metrics_and_bootstrap_s"] = time.perf_counter() - t3

    if G == 1:
        warnings.append(
            "one text: no confidence intervals (the bootstrap resamples texts) and no "
            "anisotropy_cosine (it needs pairs of points from different texts)"
        )
    elif st.bootstrap == 0:
        warnings.append("bootstrap = 0: no confidence intervals")
    elif G < FEW_TEXTS:
        warnings.append(
            f"{G} texts: in the coverage simulation intervals from fewer than {FEW_TEXTS} texts held their target "
            "less reliably (linearity in 80 % of corpora at 10 texts, the others in 92–98 %); read them as rough"
        )
    n_trunc = n_truncated
    if n_trunc:
        warnings.append(f"{n_trunc} of {G} texts were truncated to {st.max_tokens} tokens (or the context length)")
    total_eligible = int(metric_tokens.sum())
    if total_eligible > n_points:
        warnings.append(
            f"pooled metrics use a seeded uniform sample of {n_points} of the {total_eligible} token "
            f"states (max_points)"
        )
    hidden = int(pool.shape[2])
    if n_points < 2 * hidden:
        warnings.append(
            f"{n_points} pooled points for a hidden width of {hidden}: the spectral metrics are capped "
            f"by the point count and linearity is close to 1 by construction when points ≤ width"
        )
    if n_blank:
        warnings.append(f"{n_blank} blank line(s) skipped")

    result = CorpusResult(
        model=info,
        settings=st,
        n_texts=G,
        n_blank_skipped=n_blank,
        text_sha256=text_sha,
        corpus_sha256=corpus_hash,
        text_tokens=text_tokens,
        metric_tokens=metric_tokens,
        n_truncated=n_trunc,
        estimate=pooled.estimate,
        ci_low=pooled.ci_low,
        ci_high=pooled.ci_high,
        n_points=pooled.n_points,
        n_duplicates=pooled.n_points - pooled.n_distinct,
        per_text=per_text,
        attn_implementation=attn_used,
        final_norm=has_norm,
        warnings=tuple(warnings),
        timings=timings,
        versions=package_versions(),
        core_version=CORE_VERSION,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        duration_s=time.perf_counter() - t_start,
        cache_key=key,
        interval_methods=pooled.methods if G > 1 and st.bootstrap > 0 else {},
    )
    if cache is not None:
        cache.set(key, result)  # never raises: a full or read-only disk becomes one warning, the result is kept
    return result
