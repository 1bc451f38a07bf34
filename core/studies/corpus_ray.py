"""The Ray engine of corpus mode: the local engine's numbers, with the texts streamed through Ray Data workers.

`run_corpus_ray(model_id, source, settings, address=..., workers=N, gpus_per_worker=G)` reads the texts with a Ray
Data reader (`CorpusSource`: text lines, CSV or JSONL column, Parquet column), so the driver never holds them, and
runs two stages of actors that each load the model ONCE per worker:

1. tokenise: per text its token count, its eligible-token count, whether it was cut, its sha256 (or its error);
2. forward: the texts grouped into exactly the local engine's batches (sorted by token count, `batch_size` each), so
   padding is the same and so are the states; per text `core.studies.corpus.text_statistics` (its single-text
   metrics and its share of the seeded token sample, drawn by `sample_tokens` from the stage-1 counts).

The driver keeps only the per-text statistics and the pooled sample (at most `max_points` states per layer) and
finishes with the local engine's `finish_corpus`, so `--engine ray` equals `--engine local` (tested at 1e-6). With a
result cache the run looks itself up after stage 1 (the texts' sha256 are then known) under the local engine's key,
so the two engines share entries and a hit skips stage 2.

A worker that dies is restarted and its batch retried by Ray Data (tested with `$TMA_FAULT_ONCE`, a marker-file path:
the first worker to find it absent creates it and exits mid-batch). Ray is optional and imported only here.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.infra import serialize
from core.infra.errors import InputError
from core.infra.guards import check_text_length, max_corpus_texts
from core.model.info import ModelInfo
from core.run.cache import ResultCache
from core.run.checkpoint import WorkFolder
from core.run.progress import ProgressFn, scaled, silent
from core.steps import metrics
from core.studies.corpus import (
    FORWARD_SHARE,
    CorpusResult,
    CorpusSettings,
    batch_name,
    batch_unit,
    corpus_cache_key,
    fast_attention,
    finish_corpus,
    forward_batches,
    restore_batch,
    sample_tokens,
    text_sha256,
    text_statistics,
)
from core.studies.pairs_ray import _connect, file_columns

#: environment variable naming a marker file: a worker that finds it absent creates it and exits (fault tests)
ENV_FAULT = "TMA_FAULT_ONCE"
#: texts per Ray Data batch in the tokenising stage
TOKENIZE_BATCH = 256


@dataclass(frozen=True)
class CorpusSource:
    """Where the texts are: `kind` "lines" | "csv" | "jsonl" | "parquet", the file path(s) and, except for lines,
    the column holding the texts; or "items": `texts` already read (the app's upload, sent with the job; `n_blank`
    blank ones were skipped when reading)."""

    kind: str
    path: str
    column: str | None = None
    texts: tuple[str, ...] = ()
    n_blank: int = 0

    @classmethod
    def from_texts(cls, texts: tuple[str, ...] | list[str], n_blank: int = 0) -> CorpusSource:
        return cls("items", "", None, tuple(texts), n_blank)

    def dataset(self) -> Any:
        """A Ray Dataset with one column "text" (raw: blank texts kept, stripped later), in file order."""
        import ray.data

        if self.kind == "lines":
            ds = ray.data.read_text(self.path, drop_empty_lines=False)
        elif self.kind == "csv":
            ds = ray.data.read_csv(self.path)
        elif self.kind == "jsonl":
            ds = ray.data.read_json(self.path, lines=True)
        elif self.kind == "parquet":
            ds = ray.data.read_parquet(self.path)
        elif self.kind == "items":
            return ray.data.from_items([{"text": t} for t in self.texts])
        else:
            raise InputError(f"unknown corpus source kind {self.kind!r}")
        if self.kind != "lines":
            if not self.column:
                raise InputError(f"a {self.kind} corpus needs --column (the column that holds the texts)")
            try:
                cols = file_columns(self.path, self.kind)
            except ValueError as exc:
                raise InputError(f"{self.kind} file '{self.path}' cannot be read: {exc}") from None
            if self.column not in cols:
                raise InputError(
                    f"{self.kind} file '{self.path}' has no column '{self.column}'; its columns are: "
                    f"{', '.join(str(c) for c in cols)}"
                )
            ds = ds.select_columns([self.column]).rename_columns({self.column: "text"})
        return ds


def _tag(batch: dict[str, np.ndarray], batch_of: np.ndarray, skip: np.ndarray) -> dict[str, np.ndarray]:
    """Each text's local-engine batch number, from its index ("id", from the zipped range); the texts of batches
    that `skip` marks (finished before a resume) are left out."""
    ids = np.asarray(batch["id"], dtype=np.int64)
    keep = ~skip[batch_of[ids]]
    return {"text": np.asarray(batch["text"])[keep], "id": ids[keep], "batch": batch_of[ids][keep]}


def _clean(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stripped non-blank texts, as the local readers keep them."""
    texts = [("" if t is None else str(t)).strip() for t in batch["text"]]
    return {"text": np.array([t for t in texts if t], dtype=object)}


class _Worker:
    def __init__(self, model_id: str, dtype: str, device: str, settings: dict[str, Any], fault: str) -> None:
        from core.model.loading import load_model

        self.loaded = load_model(model_id, dtype=dtype, device=device)
        self.settings = CorpusSettings.from_dict(settings)
        self.fault = fault

    def _maybe_fail(self) -> None:
        """Fault injection for the tests: die (no cleanup, as a killed process) the first time the marker is absent."""
        if self.fault and not os.path.exists(self.fault):
            with open(self.fault, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)


class TokenizeWorker(_Worker):
    """Stage 1: batch {"text"} (raw) → per raw text {"blank", "n_ids", "eligible", "truncated", "sha", "error"}."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from core.model.tokens import encode_texts

        raw = [("" if t is None else str(t)).strip() for t in batch["text"]]
        texts = [t for t in raw if t]
        errors = []
        for t in texts:
            try:
                check_text_length(t, what="a text of the corpus")
                errors.append("")
            except InputError as exc:
                errors.append(str(exc))
        enc = encode_texts(self.loaded, texts, self.settings.max_tokens) if texts else []
        st = self.settings
        out: dict[str, list[Any]] = {k: [] for k in ("blank", "n_ids", "eligible", "truncated", "sha", "error")}
        it = iter(zip(texts, enc, errors, strict=True))
        for r in raw:
            if not r:
                for k, v in (("blank", True), ("n_ids", 0), ("eligible", 0), ("truncated", False)):
                    out[k].append(v)
                out["sha"].append("")
                out["error"].append("")
                continue
            t, e, err = next(it)
            out["blank"].append(False)
            out["n_ids"].append(len(e.ids))
            out["eligible"].append(sum(1 for s in e.special if st.include_special_tokens or not s))
            out["truncated"].append(bool(e.truncated))
            out["sha"].append(text_sha256(t))
            out["error"].append(err)
        return {
            "blank": np.array(out["blank"], dtype=bool),
            "n_ids": np.array(out["n_ids"], dtype=np.int64),
            "eligible": np.array(out["eligible"], dtype=np.int64),
            "truncated": np.array(out["truncated"], dtype=bool),
            "sha": np.array(out["sha"], dtype=object),
            "error": np.array(out["error"], dtype=object),
            "info": np.array([serialize.dumps(self.loaded.info())] + [b""] * (len(raw) - 1), dtype=object),
        }


class ForwardWorker(_Worker):
    """Stage 2: one local-engine batch {"text", "id", "batch"} → per text {"id", "metrics" [5·(L+1)] bytes, "k",
    "states" (its sampled states, float32 [L+1, k, D] bytes), "has_norm", "attn"}."""

    def __init__(self, *args: Any, sample_flat: np.ndarray, sample_off: np.ndarray, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sample_flat = sample_flat
        self.sample_off = sample_off

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from core.model.tokens import encode_texts

        st = self.settings
        texts = [str(t) for t in batch["text"]]
        ids = [int(i) for i in batch["id"]]
        enc = encode_texts(self.loaded, texts, st.max_tokens)
        # the local engine's order inside its batch: by token count, ties by text index
        order = sorted(range(len(texts)), key=lambda r: (len(enc[r].ids), ids[r]))
        out: dict[str, list[Any]] = {k: [] for k in ("id", "metrics", "k", "states", "has_norm", "attn")}
        with self.loaded.lock, fast_attention(self.loaded) as attn:
            for idx, states, norm_seen in forward_batches(self.loaded, enc, len(texts), order):
                self._maybe_fail()  # mid-batch: after the forward pass, before any result is returned
                for r, H in zip(idx, states, strict=True):
                    g = ids[r]
                    keep = np.array([st.include_special_tokens or not s for s in enc[r].special], dtype=bool)
                    ranks = self.sample_flat[self.sample_off[g] : self.sample_off[g + 1]]
                    lm, picked = text_statistics(H, keep, ranks)
                    out["id"].append(g)
                    out["metrics"].append(
                        np.stack([np.asarray(lm[m], dtype=np.float64) for m in metrics.METRIC_NAMES]).tobytes()
                    )
                    out["k"].append(int(picked.shape[1]))
                    out["states"].append(np.ascontiguousarray(picked, dtype=np.float32).tobytes())
                    out["has_norm"].append(bool(norm_seen))
                    out["attn"].append(attn)
        return {
            "id": np.array(out["id"], dtype=np.int64),
            "metrics": np.array(out["metrics"], dtype=object),
            "k": np.array(out["k"], dtype=np.int64),
            "states": np.array(out["states"], dtype=object),
            "has_norm": np.array(out["has_norm"], dtype=bool),
            "attn": np.array(out["attn"], dtype=object),
        }


def _actors(workers: int, gpus_per_worker: float) -> dict[str, Any]:
    import ray.data

    return {
        "compute": ray.data.ActorPoolStrategy(size=workers),
        "num_cpus": 1,
        "num_gpus": gpus_per_worker or None,
    }


def run_corpus_ray(
    model_id: str,
    source: CorpusSource,
    settings: CorpusSettings | None = None,
    progress: ProgressFn | None = None,
    *,
    dtype: str = "auto",
    device: str = "auto",
    address: str | None = None,
    workers: int = 2,
    gpus_per_worker: float = 0.0,
    limit: int | None = None,
    work: WorkFolder | None = None,
    cache: ResultCache | None = None,
) -> CorpusResult:
    """`analyze_corpus` on a Ray cluster (see the module docstring); the same InputErrors, the same numbers. cache:
    the result cache, under the local engine's key (model, the texts' sha256, every setting): the texts are never
    all on the driver, so the key is known once stage 1 has hashed them on the workers; a hit skips the forward
    stage, and a local run of the same corpus hits what a Ray run stored, and the other way round. work: a work
    folder (core.run.checkpoint) that keeps each finished batch, the local engine's units; on a resume stage 1 runs
    again (the counts) and only the batches not in it go to the forward workers."""
    import ray
    import ray.data

    t_start = time.perf_counter()
    st = settings or CorpusSettings()
    report = progress or silent
    if not (isinstance(workers, int) and workers >= 1):
        raise InputError(f"--workers must be a positive integer, got {workers!r}")
    limit = max_corpus_texts() if limit is None else limit
    started = _connect(address, workers)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        args = {
            "model_id": model_id,
            "dtype": dtype,
            "device": device,
            "settings": st.to_dict(),
            "fault": os.environ.get(ENV_FAULT, ""),
        }
        # stage 1: counts per text, streamed; the driver keeps a few numbers per text
        t0 = time.perf_counter()
        counted = source.dataset().map_batches(
            TokenizeWorker, fn_constructor_kwargs=args, batch_size=TOKENIZE_BATCH, **_actors(workers, gpus_per_worker)
        )
        n_ids: list[int] = []
        eligible: list[int] = []
        shas: list[str] = []
        n_blank, n_trunc = source.n_blank, 0
        info: ModelInfo | None = None
        for b in counted.iter_batches(batch_format="numpy", batch_size=TOKENIZE_BATCH):
            for blob in b["info"] if info is None else ():
                if blob:
                    loaded_info = serialize.loads(blob)
                    assert isinstance(loaded_info, ModelInfo)
                    info = loaded_info
                    break
            for blank, n, e, cut, sha, err in zip(
                b["blank"], b["n_ids"], b["eligible"], b["truncated"], b["sha"], b["error"], strict=True
            ):
                if blank:
                    n_blank += 1
                    continue
                if err:
                    raise InputError(f"text {len(n_ids) + 1}: {err}")
                n_ids.append(int(n))
                eligible.append(int(e))
                shas.append(str(sha))
                n_trunc += bool(cut)
            if len(n_ids) > limit:
                raise InputError(
                    f"the corpus holds more than {limit} texts, the limit (--max-texts); split it or raise the limit"
                )
        G = len(n_ids)
        if G == 0:
            raise InputError("the corpus holds no text: every line is blank")
        timings = {"tokenize_s": time.perf_counter() - t0}
        assert info is not None
        h = hashlib.sha256()
        for sha in shas:  # core.studies.corpus.corpus_sha256 from the per-text hashes
            h.update(sha.encode("ascii"))
        c_hash = h.hexdigest()
        key = corpus_cache_key(info, c_hash, st)
        hit = cache.get(key, CorpusResult) if cache is not None else None
        if hit is not None:  # the same corpus and settings ran before, on either engine: no forward stage
            report("Loaded from cache", 1.0)
            return hit.replace(cache_hit=True, duration_s=time.perf_counter() - t_start, n_blank_skipped=n_blank)
        sample = sample_tokens(eligible, st.max_points, st.seed)
        sizes = np.array([s.size for s in sample], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        n_points = int(offsets[-1])
        flat = np.concatenate(sample).astype(np.int64) if n_points else np.zeros(0, dtype=np.int64)
        # the local engine's batches: texts sorted by token count (stable), batch_size each
        order = sorted(range(G), key=lambda i: n_ids[i])
        batch_of = np.empty(G, dtype=np.int64)
        batch_of[np.asarray(order, dtype=np.int64)] = np.arange(G) // st.batch_size
        n_batches = -(-G // st.batch_size)
        batch_len = np.bincount(batch_of, minlength=n_batches)
        n_layers = info.n_layers + 1
        pool: np.ndarray | None = None
        per_text = {name: np.full((G, n_layers), np.nan) for name in metrics.METRIC_NAMES}
        done, has_norm, attn_used = 0, False, "eager"
        skip = np.zeros(n_batches, dtype=bool)
        if work is not None:
            work.check_model(info)
            for b in range(n_batches):
                if work.has(batch_name(b)):
                    unit = work.load(batch_name(b))
                    pool = restore_batch(unit, per_text, pool, offsets, n_points)
                    has_norm, attn_used = bool(unit["has_norm"]), str(unit["attn"])
                    skip[b] = True
                    done += int(batch_len[b])
        share = FORWARD_SHARE if st.bootstrap and G > 1 else 0.9
        forward, pooled_stage = scaled(report, 0.0, share), scaled(report, share, 1.0)
        forward(f"Forward passes: {done} of {G} texts", done / G)
        resumed = done
        pending: dict[int, list[tuple[int, dict[str, np.ndarray], np.ndarray]]] = {}
        t1 = time.perf_counter()
        for b in _forward(source, G, batch_of, skip, args, flat, offsets, workers, gpus_per_worker):
            for g, mb, k, sb, norm_seen, attn in zip(
                b["id"], b["metrics"], b["k"], b["states"], b["has_norm"], b["attn"], strict=True
            ):
                m = np.frombuffer(mb, dtype=np.float64).reshape(len(metrics.METRIC_NAMES), -1)
                for j, name in enumerate(metrics.METRIC_NAMES):
                    per_text[name][int(g)] = m[j]
                H = np.zeros((n_layers, 0, 0), dtype=np.float32)
                if int(k):
                    H = np.frombuffer(sb, dtype=np.float32).reshape(n_layers, int(k), -1)
                    if pool is None:
                        pool = np.empty((n_layers, n_points, H.shape[2]), dtype=np.float32)
                    pool[:, offsets[g] : offsets[g + 1]] = H
                has_norm, attn_used = bool(norm_seen), str(attn)
                done += 1
                if work is not None:  # a batch is kept once all its texts are back
                    nb = int(batch_of[int(g)])
                    got = pending.setdefault(nb, [])
                    got.append((int(g), {name: m[j] for j, name in enumerate(metrics.METRIC_NAMES)}, H))
                    if len(got) == batch_len[nb]:
                        work.save(batch_name(nb), batch_unit(pending.pop(nb), has_norm, attn_used))
            rate = (done - resumed) / max(time.perf_counter() - t1, 1e-9)
            forward(f"Forward passes: {done} of {G} texts ({rate:.1f} texts/s)", done / G)
        timings["forward_and_per_text_metrics_s"] = time.perf_counter() - t1
        if done != G:
            raise RuntimeError(f"the Ray workers returned {done} of {G} texts")
        groups = np.repeat(np.arange(G), sizes)
        return finish_corpus(
            info,
            st,
            pool if n_points else None,
            groups,
            per_text,
            text_sha=tuple(shas),
            corpus_hash=c_hash,
            text_tokens=np.asarray(n_ids, dtype=np.int64),
            metric_tokens=np.asarray(eligible, dtype=np.int64),
            n_truncated=n_trunc,
            n_blank=n_blank,
            attn_used=attn_used,
            has_norm=has_norm,
            timings=timings,
            t_start=t_start,
            key=key,
            progress=pooled_stage,
            cache=cache,
        )
    finally:
        if started:
            ray.shutdown()


def _forward(
    source: CorpusSource,
    G: int,
    batch_of: np.ndarray,
    skip: np.ndarray,
    args: dict[str, Any],
    flat: np.ndarray,
    offsets: np.ndarray,
    workers: int,
    gpus_per_worker: float,
) -> Iterator[dict[str, np.ndarray]]:
    """Stage 2's result blocks (the batches not marked in `skip`). Closing the iterator (an interruption) stops
    the pipeline and its actors, so a resumed run in the same cluster finds its CPUs free."""
    import ray.data

    if skip.all():
        return
    ds = (
        source.dataset()
        .map_batches(_clean, batch_size=TOKENIZE_BATCH)
        .zip(ray.data.range(G))
        .map_batches(_tag, fn_kwargs={"batch_of": batch_of, "skip": skip}, batch_size=TOKENIZE_BATCH)
        .groupby("batch")
        .map_groups(
            ForwardWorker,
            fn_constructor_kwargs={**args, "sample_flat": flat, "sample_off": offsets},
            batch_format="numpy",
            **_actors(workers, gpus_per_worker),
        )
    )
    it = iter(ds.iter_batches(batch_format="numpy", batch_size=None))
    try:
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
