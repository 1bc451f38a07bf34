"""Where the app's long runs go: this app process (the default), or a Ray cluster the operator names.

An operator who sets `TMA_RAY_ADDRESS` (`ray://HEAD:10001`, or `auto` on a cluster node) sends the Corpus page's
runs and the Causal page's pair data sets to that cluster, through the same engine code as the CLI's `--engine ray`
(core.studies.corpus_ray, core.studies.pairs_ray): `TMA_RAY_WORKERS` model replicas (default 2) with
`TMA_RAY_GPUS_PER_WORKER` GPUs each (default 0). The texts and pairs the user gave travel to the cluster with the
job (the app already holds them: they are bounded by its upload limits); the workers load the model by its id, so a
local folder must exist at the same path on them. A corpus run on the cluster goes through the app's result cache
under the local engine's key (it looks itself up once the workers have hashed the texts: a hit skips the forward
stage, and the local engine finds what the cluster stored); pair data sets on the cluster are not cached. Without
`TMA_RAY_ADDRESS` everything runs in this process as before, and nothing here imports Ray.

`current()` reads the setting (a bad value is an InputError naming the variable); `run_corpus` / `run_pairs` run a
job's work on the chosen engine; `Engine.label` is the line the pages show under a result.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.infra.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from core.run.cache import ResultCache
    from core.run.progress import ProgressFn
    from core.studies.corpus import CorpusResult, CorpusSettings, CorpusTexts
    from core.studies.pairs import Pair, PairsResult, PairsSettings
    from core.studies.sae_corpus import SAEFeatureExamples

ENV_ADDRESS = "TMA_RAY_ADDRESS"
ENV_WORKERS = "TMA_RAY_WORKERS"
ENV_GPUS = "TMA_RAY_GPUS_PER_WORKER"
LOCAL_LABEL = "this app process"


@dataclass(frozen=True)
class Engine:
    """The engine of one run: `address` None = this process."""

    address: str | None = None
    workers: int = 2
    gpus_per_worker: float = 0.0

    @property
    def is_ray(self) -> bool:
        return self.address is not None

    @property
    def label(self) -> str:
        if not self.is_ray:
            return LOCAL_LABEL
        gpus = f", {self.gpus_per_worker:g} GPU each" if self.gpus_per_worker else ""
        return f"the Ray cluster at {self.address} ({self.workers} worker{'s' * (self.workers != 1)}{gpus})"


def current() -> Engine:
    """The engine the operator chose through the environment (read at each run, so a restart is not needed)."""
    address = (os.environ.get(ENV_ADDRESS) or "").strip()
    if not address:
        return Engine()
    try:
        workers = int(os.environ.get(ENV_WORKERS) or 2)
        gpus = float(os.environ.get(ENV_GPUS) or 0)
    except ValueError:
        raise InputError(
            f"the operator setting ${ENV_WORKERS} must be a whole number and ${ENV_GPUS} a number"
        ) from None
    if workers < 1 or not gpus >= 0:
        raise InputError(f"the operator setting ${ENV_WORKERS} must be at least 1 and ${ENV_GPUS} at least 0")
    return Engine(address, workers, gpus)


_CONNECT = threading.Lock()


def _connected(engine: Engine) -> None:
    """Join the cluster once for the app's lifetime: the engines then never shut Ray down after a run, so two
    sessions' runs can share the connection."""
    import ray

    from core.studies.pairs_ray import _connect

    with _CONNECT:
        if not ray.is_initialized():
            _connect(engine.address, engine.workers)


def run_corpus(
    engine: Engine,
    model_id: str,
    dtype: str,
    texts: CorpusTexts,
    settings: CorpusSettings,
    progress: ProgressFn,
    *,
    sae_dirs: Sequence[str] = (),
    top_n: int = 10,
    cache: ResultCache | None = None,
) -> tuple[CorpusResult, tuple[SAEFeatureExamples, ...] | None]:
    """The Corpus page's run on `engine`'s cluster (the local path stays in app.corpus_widgets): the corpus result,
    through `cache` under the local engine's key, and, with SAE folders (at the same path on the workers), their
    feature examples (not cached)."""
    from core.run.progress import scaled
    from core.studies.corpus_ray import CorpusSource, run_corpus_ray

    _connected(engine)
    source = CorpusSource.from_texts(texts.texts, n_blank=texts.n_blank)
    where = {"address": engine.address, "workers": engine.workers, "gpus_per_worker": engine.gpus_per_worker}
    geometry = scaled(progress, 0.0, 0.7) if sae_dirs else progress
    result = run_corpus_ray(model_id, source, settings, geometry, dtype=dtype, cache=cache, **where)  # type: ignore[arg-type]
    if not sae_dirs:
        return result, None
    from core.studies.sae_corpus_ray import run_sae_corpus_ray

    stage = scaled(progress, 0.7, 1.0)
    saes = run_sae_corpus_ray(model_id, source, list(sae_dirs), settings, stage, top_n=top_n, dtype=dtype, **where)  # type: ignore[arg-type]
    return result, tuple(saes)


def run_pairs(
    engine: Engine,
    model_id: str,
    dtype: str,
    pairs: list[Pair],
    settings: PairsSettings,
    progress: ProgressFn,
) -> PairsResult:
    """The Causal page's pair data set on `engine`'s cluster."""
    from core.studies.pairs_ray import run_pairs_ray

    _connected(engine)
    return run_pairs_ray(
        model_id,
        pairs,
        settings,
        dtype=dtype,
        address=engine.address,
        workers=engine.workers,
        gpus_per_worker=engine.gpus_per_worker,
        progress=progress,
    )
