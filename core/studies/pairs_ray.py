"""The Ray engine of patching over pairs: the same per-pair cells as the local loop, computed by Ray Data workers.

`run_pairs_ray(model_id, pairs, settings, address=..., workers=N, gpus_per_worker=G)` sends the pairs through a
Ray Data pipeline whose stage is an actor class that loads the model ONCE per worker (one replica per worker, G
GPUs each) and returns, per pair, the serialized `core.studies.pairs.PairCells` that `pair_cells` computes locally;
the driver puts them back in input order (Ray Data's preserve_order) and merges them with the local engine's
`merge_cells`, so both engines give the same numbers. `--top K` runs a second stage of the same kind for the K
exact sites. A worker that dies is restarted and its batch retried by Ray Data (tested with `$TMA_FAULT_ONCE`, a
marker-file path, as for the corpus engine: the first worker to find it absent creates it and exits after its
first pair, before returning the batch). `work` (core.run.checkpoint) keeps every pair's cells as they come back,
the same units as the local engine's, and a resumed run sends only the missing pairs. Without `address` a local
Ray cluster is started with `workers` CPUs and shut down afterwards; with one (`ray://…` or `auto`) the run joins
that cluster, whose workers need this repository on their Python path (`ray job submit --working-dir .`).

Ray is optional (requirements-ray.txt) and imported only here, only when this engine is chosen.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.infra import serialize
from core.infra.errors import InputError
from core.model.info import ModelInfo
from core.run.checkpoint import WorkFolder
from core.run.progress import ProgressFn
from core.studies.pairs import (
    Pair,
    PairCells,
    PairsResult,
    PairsSettings,
    check_shapes,
    exact_sites,
    merge_cells,
    pair_cells,
    pair_name,
    top_name,
    top_sites,
)

ROOT = Path(__file__).resolve().parents[2]
#: Pairs per Ray Data batch (small: one batch is one worker's unit of work and of retry).
BATCH_PAIRS = 4
#: environment variable naming a marker file: a worker that finds it absent creates it and exits (fault tests)
ENV_FAULT = "TMA_FAULT_ONCE"


class _ModelWorker:
    """Base of the Ray Data stages: loads the model once when the actor starts."""

    def __init__(
        self, model_id: str, dtype: str, device: str, settings: dict[str, Any], n_pairs: int, fault: str = ""
    ) -> None:
        from core.model.loading import load_model

        self.loaded = load_model(model_id, dtype=dtype, device=device)
        self.settings = PairsSettings(**settings)
        self.n_pairs = n_pairs
        self.fault = fault

    def _maybe_fail(self) -> None:
        """Fault injection for the tests: die (no cleanup, as a killed process) the first time the marker is absent."""
        if self.fault and not os.path.exists(self.fault):
            with open(self.fault, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)


class PairCellsWorker(_ModelWorker):
    """Per-pair cells: batch {"index", "clean", "corrupt", "answer", "wrong"} → {"index", "cells", "error"}."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cells, errors = [], []
        with self.loaded.lock:
            for clean, corrupt, answer, wrong in zip(
                batch["clean"], batch["corrupt"], batch["answer"], batch["wrong"], strict=True
            ):
                pair = Pair(str(clean), str(corrupt), str(answer) or None, str(wrong) or None)
                try:
                    cells.append(
                        serialize.dumps(pair_cells(self.loaded, pair, self.settings, in_data_set=self.n_pairs > 1))
                    )
                    errors.append("")
                except InputError as exc:  # reported by the driver with the pair's number
                    cells.append(b"")
                    errors.append(str(exc))
                self._maybe_fail()  # mid-batch: after a pair's cells, before the batch is returned
            info = serialize.dumps(self.loaded.info())
        return {
            "index": np.asarray(batch["index"]),
            "cells": np.array(cells, dtype=object),
            "error": np.array(errors, dtype=object),
            "info": np.array([info] * len(cells), dtype=object),
        }


class ExactSitesWorker(_ModelWorker):
    """Exact values of the top-K sites: batch {"index", "clean", "corrupt", "answer_id", "wrong_id"} → {"index",
    "values"} (the sites travel in the settings' companion argument)."""

    def __init__(
        self,
        model_id: str,
        dtype: str,
        device: str,
        settings: dict[str, Any],
        n_pairs: int,
        top: list[Any],
        fault: str = "",
    ) -> None:
        super().__init__(model_id, dtype, device, settings, n_pairs, fault)
        self.top = tuple((str(c), int(l), int(p)) for c, l, p in top)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = []
        with self.loaded.lock:
            for clean, corrupt, a, b in zip(
                batch["clean"], batch["corrupt"], batch["answer_id"], batch["wrong_id"], strict=True
            ):
                pair = Pair(str(clean), str(corrupt))
                values.append(exact_sites(self.loaded, pair, self.settings.max_tokens, int(a), int(b), self.top))
        return {"index": np.asarray(batch["index"]), "values": np.array(values, dtype=np.float64)}


def _connect(address: str | None, workers: int) -> bool:
    """Join the cluster at `address`, or start a local one with `workers` + 1 CPUs; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    for k in ("HF_HUB_OFFLINE", "HF_HOME", "TMA_CACHE_DIR", "TOKENIZERS_PARALLELISM"):
        if k in os.environ:
            env[k] = os.environ[k]
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
        return True
    # one CPU per worker actor and one for Ray Data's own tasks (file reads, the corpus engine's shuffle)
    ray.init(num_cpus=workers + 1, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    return True


def _stage(ds: Any, cls: type, args: dict[str, Any], workers: int, gpus_per_worker: float) -> Any:
    """One Ray Data stage: a pool of `workers` actors of `cls` (one model replica each). Ray Data restarts a dead
    actor and retries its batch (its defaults: max_restarts = max_task_retries = −1, i.e. without limit)."""
    import ray.data

    return ds.map_batches(
        cls,
        fn_constructor_kwargs=args,
        batch_size=BATCH_PAIRS,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
        num_gpus=gpus_per_worker or None,
    )


def _rows(ds: Any) -> Iterator[dict[str, Any]]:
    """The rows of a Ray Dataset; closing this iterator (an interruption) stops its pipeline and actors."""
    it = iter(ds.iter_rows())
    try:
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def run_pairs_ray(
    model_id: str,
    pairs: list[Pair],
    settings: PairsSettings | None = None,
    *,
    dtype: str = "auto",
    device: str = "auto",
    address: str | None = None,
    workers: int = 2,
    gpus_per_worker: float = 0.0,
    progress: ProgressFn | None = None,
    work: WorkFolder | None = None,
) -> PairsResult:
    """`run_pairs` on a Ray cluster (see the module docstring); the same InputErrors, the same numbers. work: a
    work folder (core.run.checkpoint) keeping each pair's cells and top-K values; pairs in it are not sent again."""
    import ray
    import ray.data

    settings = settings or PairsSettings()
    report = progress or (lambda label, frac: None)
    if not pairs:
        raise InputError("the pair data set is empty")
    if not (isinstance(workers, int) and workers >= 1):
        raise InputError(f"--workers must be a positive integer, got {workers!r}")
    t0 = time.perf_counter()
    P = len(pairs)
    found: dict[int, PairCells] = {}
    if work is not None:
        for i in range(P):
            if work.has(pair_name(i)):
                found[i] = work.load(pair_name(i))
    resumed = len(found)
    share = 0.98 if settings.top_k else 1.0
    started = _connect(address, workers) if resumed < P or settings.top_k is not None else False
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        rows = [
            {"index": i, "clean": p.clean, "corrupt": p.corrupt, "answer": p.answer or "", "wrong": p.wrong or ""}
            for i, p in enumerate(pairs)
            if i not in found
        ]
        args = {
            "model_id": model_id,
            "dtype": dtype,
            "device": device,
            "settings": settings.to_dict(),
            "n_pairs": P,
            "fault": os.environ.get(ENV_FAULT, ""),
        }
        info: ModelInfo | None = work.model() if work is not None and not rows else None
        if rows:
            ds = _stage(ray.data.from_items(rows), PairCellsWorker, args, workers, gpus_per_worker)
            for row in _rows(ds):
                i = int(row["index"])
                if row["error"]:
                    raise InputError(f"pair {i + 1}: {row['error']}")
                if info is None:
                    loaded_info = serialize.loads(row["info"])
                    assert isinstance(loaded_info, ModelInfo)
                    info = loaded_info
                    if work is not None:
                        work.check_model(info)
                cell = serialize.loads(row["cells"])
                assert isinstance(cell, PairCells)
                found[i] = cell
                if work is not None:
                    work.save(pair_name(i), cell)
                rate = (len(found) - resumed) / max(time.perf_counter() - t0, 1e-9)
                report(f"Pair {len(found)} of {P} ({rate:.2f} pairs/s)", len(found) / P * share)
        cells = [found[i] for i in range(P)]
        check_shapes([c.n_tokens for c in cells], [c.target for c in cells])
        timings = {"pairs": time.perf_counter() - t0}
        top: tuple[tuple[str, int, int], ...] = ()
        values = None
        if settings.top_k is not None:
            t = time.perf_counter()
            top = top_sites(cells, settings.top_k)
            report(f"Exact patching of the top {len(top)} sites", 0.99)
            got: dict[int, list[float]] = {}
            if work is not None:
                for i in range(P):
                    if work.has(top_name(i)):
                        got[i] = [float(v) for v in work.load(top_name(i))["values"]]
            rows2 = [
                {"index": i, "clean": p.clean, "corrupt": p.corrupt, "answer_id": c.answer_id, "wrong_id": c.wrong_id}
                for i, (p, c) in enumerate(zip(pairs, cells, strict=True))
                if i not in got
            ]
            if rows2:
                ds2 = _stage(
                    ray.data.from_items(rows2),
                    ExactSitesWorker,
                    {**args, "top": [list(s) for s in top]},
                    workers,
                    gpus_per_worker,
                )
                for r in _rows(ds2):
                    i = int(r["index"])
                    got[i] = [float(v) for v in r["values"]]
                    if work is not None:
                        work.save(top_name(i), {"values": np.array(got[i], dtype=np.float64)})
            values = [got[i] for i in range(P)]
            timings["exact_top"] = time.perf_counter() - t
        report("Done", 1.0)
        timings["total"] = time.perf_counter() - t0
        if info is None:
            raise InputError(
                "--resume: the work folder holds every pair but not the model that computed them; delete it"
            )
        return merge_cells(info, settings, pairs, cells, top, values, timings)
    finally:
        if started:
            ray.shutdown()
