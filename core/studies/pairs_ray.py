"""The Ray engine of patching over pairs: the same per-pair cells as the local loop, computed by Ray Data workers.

`run_pairs_ray(model_id, pairs, settings, address=..., workers=N, gpus_per_worker=G)` sends the pairs through a
Ray Data pipeline whose stage is an actor class that loads the model ONCE per worker (one replica per worker, G
GPUs each) and returns, per pair, the serialized `core.studies.pairs.PairCells` that `pair_cells` computes locally;
the driver puts them back in input order (Ray Data's preserve_order) and merges them with the local engine's
`merge_cells`, so both engines give the same numbers. `--top K` runs a second stage of the same kind for the K
exact sites. A worker that dies is restarted and its batch retried by Ray Data. Without `address` a local
Ray cluster is started with `workers` CPUs and shut down afterwards; with one (`ray://…` or `auto`) the run joins
that cluster, whose workers need this repository on their Python path (`ray job submit --working-dir .`).

Ray is optional (requirements-ray.txt) and imported only here, only when this engine is chosen.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.infra import serialize
from core.infra.errors import InputError
from core.model.info import ModelInfo
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
    top_sites,
)

ROOT = Path(__file__).resolve().parents[2]
#: Pairs per Ray Data batch (small: one batch is one worker's unit of work and of retry).
BATCH_PAIRS = 4


class _ModelWorker:
    """Base of the Ray Data stages: loads the model once when the actor starts."""

    def __init__(self, model_id: str, dtype: str, device: str, settings: dict[str, Any], n_pairs: int) -> None:
        from core.model.loading import load_model

        self.loaded = load_model(model_id, dtype=dtype, device=device)
        self.settings = PairsSettings(**settings)
        self.n_pairs = n_pairs


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
        self, model_id: str, dtype: str, device: str, settings: dict[str, Any], n_pairs: int, top: list[Any]
    ) -> None:
        super().__init__(model_id, dtype, device, settings, n_pairs)
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
) -> PairsResult:
    """`run_pairs` on a Ray cluster (see the module docstring); the same InputErrors, the same numbers."""
    import ray
    import ray.data

    settings = settings or PairsSettings()
    report = progress or (lambda label, frac: None)
    if not pairs:
        raise InputError("the pair data set is empty")
    if not (isinstance(workers, int) and workers >= 1):
        raise InputError(f"--workers must be a positive integer, got {workers!r}")
    t0 = time.perf_counter()
    started = _connect(address, workers)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        rows = [
            {"index": i, "clean": p.clean, "corrupt": p.corrupt, "answer": p.answer or "", "wrong": p.wrong or ""}
            for i, p in enumerate(pairs)
        ]
        args = {
            "model_id": model_id,
            "dtype": dtype,
            "device": device,
            "settings": settings.to_dict(),
            "n_pairs": len(pairs),
        }
        ds = _stage(ray.data.from_items(rows), PairCellsWorker, args, workers, gpus_per_worker)
        P = len(pairs)
        found: dict[int, PairCells] = {}
        info: ModelInfo | None = None
        for done, row in enumerate(ds.iter_rows(), start=1):
            i = int(row["index"])
            if row["error"]:
                raise InputError(f"pair {i + 1}: {row['error']}")
            cell = serialize.loads(row["cells"])
            assert isinstance(cell, PairCells)
            found[i] = cell
            if info is None:
                loaded_info = serialize.loads(row["info"])
                assert isinstance(loaded_info, ModelInfo)
                info = loaded_info
            report(f"Pair {done} of {P} ({done / max(time.perf_counter() - t0, 1e-9):.2f} pairs/s)", done / P)
        cells = [found[i] for i in range(P)]
        check_shapes([c.n_tokens for c in cells], [c.target for c in cells])
        timings = {"pairs": time.perf_counter() - t0}
        top: tuple[tuple[str, int, int], ...] = ()
        values = None
        if settings.top_k is not None:
            t = time.perf_counter()
            top = top_sites(cells, settings.top_k)
            rows2 = [
                {"index": i, "clean": p.clean, "corrupt": p.corrupt, "answer_id": c.answer_id, "wrong_id": c.wrong_id}
                for i, (p, c) in enumerate(zip(pairs, cells, strict=True))
            ]
            ds2 = _stage(
                ray.data.from_items(rows2),
                ExactSitesWorker,
                {**args, "top": [list(s) for s in top]},
                workers,
                gpus_per_worker,
            )
            got = {int(r["index"]): [float(v) for v in r["values"]] for r in ds2.iter_rows()}
            values = [got[i] for i in range(P)]
            timings["exact_top"] = time.perf_counter() - t
        report("Done", 1.0)
        timings["total"] = time.perf_counter() - t0
        assert info is not None
        return merge_cells(info, settings, pairs, cells, top, values, timings)
    finally:
        if started:
            ray.shutdown()
