"""SAE features over a corpus on a Ray cluster: `python -m core corpus --engine ray --sae DIR`, the local engine's
examples and statistics (core.studies.sae_corpus) with the texts streamed through Ray Data workers.

`run_sae_corpus_ray(model_id, source, sae_dirs, settings, top_n=...)` reads the texts with the corpus engine's
reader (core.studies.corpus_ray.CorpusSource: blank texts dropped, the rest numbered in file order as the local
readers number them), and a pool of actors, each loading the model and the SAEs ONCE, scans a batch of texts at a
time with a fresh `SAECorpusScan` (one forward pass per text, as locally). A batch comes back as its scan's `part()`
— per feature the batch's top-n (activation, text, position), its firing count, activation sum and peak — plus the
token ids of the texts that hold one of those examples. The driver merges the parts into one scan (the top-n of a
union of top-n lists is exact, ordered by activation then text then position whatever order the batches arrive
in; counts and sums add), keeps the token ids of only the texts that still hold an example, and makes the contexts
at the end. Driver memory: d_sae × top_n per SAE plus those texts' ids, never the corpus.

Ray is optional and imported only here (and in core.studies.corpus_ray).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.infra import serialize
from core.infra.errors import InputError
from core.infra.guards import max_corpus_texts
from core.run.progress import ProgressFn, silent
from core.studies.corpus import CorpusSettings
from core.studies.corpus_ray import TOKENIZE_BATCH, CorpusSource, _clean
from core.studies.pairs_ray import _connect
from core.studies.sae_corpus import SAECorpusScan, SAEFeatureExamples, check_top_n

#: texts per Ray Data batch of the SAE stage (one part per batch comes back to the driver)
SAE_BATCH = 32


class SAEScanWorker:
    """One actor: the model and the SAEs loaded once; a batch {"text", "id"} → one row {"part", "error", "n"}: the
    batch's serialised `SAECorpusScan.part()` with the token ids of its texts that hold an example, or a one-line
    error (a refusal of the SAEs is data, so that Ray does not restart an actor that can never start); n: texts."""

    def __init__(self, model_id: str, dtype: str, device: str, sae_dirs: list[str], top_n: int,
                 max_tokens: int, include_special: bool) -> None:  # fmt: skip
        from core.model.loading import load_model
        from core.studies.sae_corpus import check_saes

        self.loaded = load_model(model_id, dtype=dtype, device=device)
        self.error = ""
        self.saes: list[Any] = []
        try:
            self.saes = check_saes(self.loaded, sae_dirs)
        except InputError as exc:
            self.error = str(exc)
        self.args = (top_n, max_tokens, include_special)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.error:
            return {"part": np.array([b""], dtype=object), "error": np.array([self.error], dtype=object),
                    "n": np.array([0], dtype=np.int64)}  # fmt: skip
        scan = SAECorpusScan(self.saes, *self.args)
        ids: dict[int, list[int]] = {}
        with self.loaded.lock:
            for text, g in zip(batch["text"], batch["id"], strict=True):
                ids[int(g)] = scan.add(self.loaded, int(g), str(text))
        keep = scan.texts_needed()
        part = scan.part()
        part["ids"] = {str(g): np.asarray(v, dtype=np.int64) for g, v in ids.items() if g in keep}
        return {"part": np.array([serialize.dumps(part)], dtype=object), "error": np.array([""], dtype=object),
                "n": np.array([len(ids)], dtype=np.int64)}  # fmt: skip


class PartMerger:
    """The driver's side: worker parts (`SAEScanWorker` blobs) merged into one scan, in any order, keeping the token
    ids of only the texts that still hold an example."""

    def __init__(self, scan: SAECorpusScan) -> None:
        self.scan = scan
        self.token_ids: dict[int, np.ndarray] = {}

    def add(self, blob: bytes) -> None:
        part = serialize.loads(blob)
        self.scan.merge(part)
        self.token_ids.update((int(g), np.array(v)) for g, v in part["ids"].items())
        keep = self.scan.texts_needed()
        for g in [g for g in self.token_ids if g not in keep]:
            del self.token_ids[g]

    def results(self, n_texts: int, tokenizer: Any) -> list[SAEFeatureExamples]:
        return self.scan.results(n_texts, {g: v.tolist() for g, v in self.token_ids.items()}, tokenizer)


def run_sae_corpus_ray(
    model_id: str,
    source: CorpusSource,
    sae_dirs: Sequence[str],
    settings: CorpusSettings | None = None,
    progress: ProgressFn | None = None,
    *,
    top_n: int = 10,
    dtype: str = "auto",
    device: str = "auto",
    address: str | None = None,
    workers: int = 2,
    gpus_per_worker: float = 0.0,
    limit: int | None = None,
) -> list[SAEFeatureExamples]:
    """`core.studies.sae_corpus.sae_corpus` on a Ray cluster (see the module docstring): the same examples and
    statistics; max_tokens and include_special_tokens come from `settings`. One-line InputError for an SAE that
    cannot be used with the model, an empty corpus or one over `limit` texts."""
    import ray
    import ray.data

    from core.model.loading import load_tokenizer
    from core.model.sae import load_sae

    st = settings or CorpusSettings()
    report = progress or silent
    check_top_n(top_n)
    if not (isinstance(workers, int) and workers >= 1):
        raise InputError(f"--workers must be a positive integer, got {workers!r}")
    saes = [load_sae(d) for d in sae_dirs]  # a missing or malformed folder: one line before the cluster
    limit = max_corpus_texts() if limit is None else limit
    started = _connect(address, workers)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        texts = source.dataset().map_batches(_clean, batch_size=TOKENIZE_BATCH)
        G = texts.count()
        if G == 0:
            raise InputError("the corpus holds no text: every line is blank")
        if G > limit:
            raise InputError(
                f"the corpus holds more than {limit} texts, the limit (--max-texts); split it or raise the limit"
            )
        args = {"model_id": model_id, "dtype": dtype, "device": device, "sae_dirs": [str(d) for d in sae_dirs],
                "top_n": top_n, "max_tokens": st.max_tokens, "include_special": st.include_special_tokens}  # fmt: skip
        ds = texts.zip(ray.data.range(G)).map_batches(
            SAEScanWorker,
            fn_constructor_kwargs=args,
            batch_size=SAE_BATCH,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
            num_gpus=gpus_per_worker or None,
        )
        merged = PartMerger(SAECorpusScan(saes, top_n, st.max_tokens, st.include_special_tokens))
        done, t1 = 0, time.perf_counter()
        report(f"SAE features: 0 of {G} texts", 0.0)
        for b in ds.iter_batches(batch_format="numpy", batch_size=None):
            for blob, err, n in zip(b["part"], b["error"], b["n"], strict=True):
                if err:
                    raise InputError(str(err))
                merged.add(blob)
                done += int(n)
            rate = done / max(time.perf_counter() - t1, 1e-9)
            report(f"SAE features: {done} of {G} texts ({rate:.1f} texts/s)", done / G)
        if done != G:
            raise RuntimeError(f"the Ray workers returned {done} of {G} texts")
        return merged.results(G, load_tokenizer(model_id))
    finally:
        if started:
            ray.shutdown()
