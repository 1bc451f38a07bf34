"""The Ray engine of patching over pairs: the same per-pair cells as the local loop, computed by Ray Data workers.

`run_pairs_ray(model_id, pairs, settings, address=..., workers=N, gpus_per_worker=G)` sends the pairs through a
Ray Data pipeline whose stage is an actor class that loads the model ONCE per worker (one replica per worker, G
GPUs each) and returns, per pair, the serialized `core.studies.pairs.PairCells` that `pair_cells` computes locally;
the driver puts them back in input order (Ray Data's preserve_order) and merges them with the local engine's
`merge_cells`, so both engines give the same numbers. `--top K` runs a second stage of the same kind for the K
exact sites. The pairs are a list (the app's upload, sent to the cluster with `from_items`) or a `PairSource`: a
.csv / .jsonl file read by Ray Data's own readers (read_csv / read_json), so the driver never reads or parses the
file; it keeps only what the result holds (every pair's texts, answers and cells). A worker that dies is
restarted and its batch retried by Ray Data (tested with `$TMA_FAULT_ONCE`, a marker-file path, as for the corpus
engine: the first worker to find it absent creates it and exits after its first pair, before returning the batch).
`work` (core.run.checkpoint) keeps every pair's cells as they come back, the same units as the local engine's
(pair_name(i), top_name(i)); a resumed run does not compute the finished pairs again: a list sends only the
missing pairs, a PairSource still streams every row (the driver never indexes the file) but its workers are given
the finished indices and return those pairs' texts only, their cells coming from the work folder. Without
`address` a local Ray cluster is started with `workers` + 1 CPUs and shut down afterwards; with one (`ray://…` or
`auto`) the run joins that cluster, whose workers need this repository on their Python path (`ray job submit
--working-dir .`).

Ray is optional (requirements-ray.txt) and imported only here, only when this engine is chosen.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.infra import serialize
from core.infra.errors import InputError
from core.model.info import ModelInfo
from core.run.checkpoint import WorkFolder
from core.run.progress import ProgressFn
from core.studies.pairs import (
    MAX_PAIRS,
    PAIR_FORMATS,
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


@dataclass(frozen=True)
class PairSource:
    """A pairs file read by Ray Data (`path`: .csv with a header row, or .jsonl, on a file system every worker can
    read, or s3://…) and the columns that hold each field (answer / wrong: None = the top-1 predictions)."""

    path: str
    clean_column: str = "clean"
    corrupt_column: str = "corrupt"
    answer_column: str | None = None
    wrong_column: str | None = None

    @property
    def name(self) -> str:
        return self.path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]

    def columns(self) -> dict[str, str | None]:
        return {"clean": self.clean_column, "corrupt": self.corrupt_column, "answer": self.answer_column,
                "wrong": self.wrong_column}  # fmt: skip

    def dataset(self) -> Any:
        """A Ray Dataset of the file's rows with the columns "clean", "corrupt", "answer", "wrong", "invalid" (as
        `core.studies.pairs.parse_pairs` reads them: cells kept as text, empty answers = the top-1; "invalid": the
        row's error, else "")."""
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import ray.data

        suffix = "." + self.name.rsplit(".", 1)[-1].lower() if "." in self.name else ""
        if suffix not in PAIR_FORMATS:
            raise InputError(f"pairs file '{self.name}' must end in .csv or .jsonl")
        wanted = [c for c in self.columns().values() if c]
        ds: Any
        if suffix == ".csv":  # every cell as text (" 5" stays " 5"), quoted cells may hold line breaks
            ds = ray.data.read_csv(
                self.path,
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in wanted}, strings_can_be_null=False
                ),
            )
        else:
            ds = ray.data.read_json(self.path, lines=True)
        try:
            cols = file_columns(self.path, suffix.lstrip("."), newlines_in_values=True)
        except ValueError as exc:  # the reader's parse error, as one line
            raise InputError(f"pairs file '{self.name}' cannot be read: {exc}") from None
        flags = {"clean": "--clean-column", "corrupt": "--corrupt-column", "answer": "--answer-column",
                 "wrong": "--wrong-column"}  # fmt: skip
        for key, col in self.columns().items():
            if col and col not in cols:
                shown = ", ".join(cols[:12]) or "none"
                raise InputError(
                    f"pairs file '{self.name}' has no column '{col}' (columns: {shown}); name it with {flags[key]}"
                )
        return ds.map_batches(_pair_rows, fn_kwargs={"columns": self.columns()}, batch_format="pandas")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    found = [ln for ln in lines if "Error" in ln and ":" in ln]
    return (found[-1] if found else lines[0] if lines else type(exc).__name__)[:300]


def _pair_rows(batch: Any, columns: dict[str, str | None]) -> dict[str, np.ndarray]:
    """A raw batch (pandas) → the standard columns, with parse_pairs' checks: the clean and corrupted texts must be
    non-empty text, answers text or empty."""
    n = len(batch)
    out: dict[str, list[str]] = {k: [] for k in ("clean", "corrupt", "answer", "wrong", "invalid")}
    for i in range(n):
        bad = ""
        for key, col in columns.items():
            v = batch[col].iloc[i] if col else None
            if isinstance(v, float) and np.isnan(v):
                v = None
            if key in ("clean", "corrupt"):
                if not isinstance(v, str) or not v.strip():
                    bad = bad or f"the {key} text ('{col}') is empty or not text"
                    v = ""
            elif v is not None and not isinstance(v, str):
                bad = bad or f"the {key} ('{col}') is not text"
                v = ""
            out[key].append(v or "")
        out["invalid"].append(bad)
    return {k: np.array(v, dtype=object) for k, v in out.items()}


def _index(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The zipped range's "id" as the pair's "index"."""
    out = {k: v for k, v in batch.items() if k != "id"}
    out["index"] = np.asarray(batch["id"], dtype=np.int64)
    return out


def _with_answers(batch: dict[str, np.ndarray], answer_ids: np.ndarray, wrong_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Stage 2's rows from the re-read file: each pair's answer and wrong-answer ids found in stage 1."""
    ids = np.asarray(batch["id"], dtype=np.int64)
    return {"index": ids, "clean": batch["clean"], "corrupt": batch["corrupt"], "answer_id": answer_ids[ids],
            "wrong_id": wrong_ids[ids]}  # fmt: skip


class _ModelWorker:
    """Base of the Ray Data stages: loads the model once when the actor starts."""

    def __init__(
        self,
        model_id: str,
        dtype: str,
        device: str,
        settings: dict[str, Any],
        n_pairs: int,
        fault: str = "",
        skip: list[int] | None = None,
    ) -> None:
        from core.model.loading import load_model

        self.loaded = load_model(model_id, dtype=dtype, device=device)
        self.settings = PairsSettings(**settings)
        self.n_pairs = n_pairs
        self.fault = fault
        self.skip = frozenset(int(i) for i in skip or ())  # pairs finished before (a resumed run): not computed

    def _maybe_fail(self) -> None:
        """Fault injection for the tests: die (no cleanup, as a killed process) the first time the marker is absent."""
        if self.fault and not os.path.exists(self.fault):
            with open(self.fault, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)


class PairCellsWorker(_ModelWorker):
    """Per-pair cells: batch {"index", "clean", "corrupt", "answer", "wrong"[, "invalid"]} → the pair's texts and
    {"index", "cells", "error", "info"}; a pair in `skip` comes back with its texts only (empty cells)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cells, errors = [], []
        invalid = batch.get("invalid", [""] * len(batch["clean"]))
        with self.loaded.lock:
            for index, clean, corrupt, answer, wrong, bad in zip(
                batch["index"], batch["clean"], batch["corrupt"], batch["answer"], batch["wrong"], invalid, strict=True
            ):
                pair = Pair(str(clean), str(corrupt), str(answer) or None, str(wrong) or None)
                if int(index) in self.skip:  # finished in an earlier run: the driver has its cells
                    cells.append(b"")
                    errors.append("")
                    continue
                if bad:  # the file's row was refused by the reader's checks (PairSource)
                    cells.append(b"")
                    errors.append(str(bad))
                    continue
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
            "clean": np.asarray(batch["clean"], dtype=object),
            "corrupt": np.asarray(batch["corrupt"], dtype=object),
            "answer": np.asarray(batch["answer"], dtype=object),
            "wrong": np.asarray(batch["wrong"], dtype=object),
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
        skip: list[int] | None = None,
    ) -> None:
        super().__init__(model_id, dtype, device, settings, n_pairs, fault, skip)
        self.top = tuple((str(c), int(l), int(p)) for c, l, p in top)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = []
        with self.loaded.lock:
            for index, clean, corrupt, a, b in zip(
                batch["index"], batch["clean"], batch["corrupt"], batch["answer_id"], batch["wrong_id"], strict=True
            ):
                if int(index) in self.skip:  # finished in an earlier run: the driver has its values
                    values.append([float("nan")] * len(self.top))
                    continue
                pair = Pair(str(clean), str(corrupt))
                values.append(exact_sites(self.loaded, pair, self.settings.max_tokens, int(a), int(b), self.top))
        return {"index": np.asarray(batch["index"]), "values": np.array(values, dtype=np.float64)}


PEEK_ROWS = 1000  # JSON lines read for the column names (pandas, as Ray Data's JSON-lines reader)


def file_columns(path: str, kind: str, *, newlines_in_values: bool = False) -> list[str]:
    """The column names of a "csv", "jsonl" or "parquet" file (a folder: its first file), read where the cluster
    reads (one small task with no CPU reserved), so the driver never opens the file.

    Not `Dataset.columns()`: for CSV and JSON lines that runs a one-row read and then force-cancels the read task
    just as it finishes, and Ray 2.60's driver can abort on that race ("Check failed: Tried to complete task that
    was not pending", task_manager.cc): it killed a test process once in CI. Raises ValueError(one line) when the
    file cannot be parsed."""
    import ray

    status, value = ray.get(ray.remote(num_cpus=0, max_retries=0)(_peek_columns).remote(path, kind, newlines_in_values))
    if status != "ok":
        raise ValueError(value)
    return [str(c) for c in value]


def _peek_columns(path: str, kind: str, newlines_in_values: bool) -> tuple[str, Any]:
    """On a worker: ("ok", names) read as Ray Data's readers read them, or ("error", the parse error's line). The
    path is opened as Ray Data opens it: a local path or a URI (`s3://…`, `file://…`) through pyarrow's file systems,
    compression detected from the extension; a folder stands for its first file."""
    try:
        import io

        import pyarrow.fs as pafs

        fs, where = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), os.path.abspath(path))
        if fs.get_file_info(where).type == pafs.FileType.Directory:
            inside = fs.get_file_info(pafs.FileSelector(where, recursive=False))
            files = sorted(i.path for i in inside if i.is_file and not i.base_name.startswith((".", "_")))
            where = files[0] if files else where
        if kind == "parquet":
            import pyarrow.parquet as pq

            return "ok", list(pq.read_schema(where, filesystem=fs).names)
        with fs.open_input_stream(where, compression="detect") as stream:
            if kind == "csv":
                import pyarrow.csv as pacsv

                opts = pacsv.ParseOptions(newlines_in_values=newlines_in_values)
                return "ok", list(pacsv.open_csv(stream, parse_options=opts).schema.names)
            if kind == "jsonl":
                import pandas as pd

                text = io.TextIOWrapper(io.BufferedReader(stream), encoding="utf-8")
                return "ok", [str(c) for c in pd.read_json(text, lines=True, nrows=PEEK_ROWS).columns]
        return "error", f"unknown file kind {kind!r}"
    except Exception as exc:  # noqa: BLE001 - the parse error goes back as one line
        return "error", _first_line(exc)


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


def _count(ds: Any, source: PairSource) -> int:
    try:
        return int(ds.count())
    except InputError:
        raise
    except Exception as exc:  # a malformed file: pyarrow's parse error, as one line
        raise InputError(f"pairs file '{source.name}' cannot be read: {_first_line(exc)}") from None


def _rows(ds: Any, source: PairSource | None = None) -> Iterator[dict[str, Any]]:
    """The rows of a Ray Dataset. Closing this iterator (an interruption) stops its pipeline and actors; with a
    file (`source`), the reader's parse errors (already surfaced by the count) come as one line (InputError)."""
    it = iter(ds.iter_rows())
    try:
        yield from it
    except InputError:
        raise
    except Exception as exc:
        if source is None or ("Arrow" not in str(exc) and "JSON" not in str(exc)):
            raise
        raise InputError(f"pairs file '{source.name}' cannot be read: {_first_line(exc)}") from None
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _finished(work: WorkFolder | None, name: Any, P: int) -> list[int]:
    """The indices i < P whose unit name(i) the work folder holds."""
    return [i for i in range(P) if work is not None and work.has(name(i))]


def run_pairs_ray(
    model_id: str,
    pairs: list[Pair] | PairSource,
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
    """`run_pairs` on a Ray cluster (see the module docstring); the same InputErrors, the same numbers. `pairs`: a
    list, or a PairSource whose file is read by Ray Data (the driver never parses it). work: a work folder
    (core.run.checkpoint) keeping each pair's cells and top-K values; the pairs in it are not computed again."""
    import ray
    import ray.data

    settings = settings or PairsSettings()
    report = progress or (lambda label, frac: None)
    source = pairs if isinstance(pairs, PairSource) else None
    if source is None and not pairs:
        raise InputError("the pair data set is empty")
    if not (isinstance(workers, int) and workers >= 1):
        raise InputError(f"--workers must be a positive integer, got {workers!r}")
    t0 = time.perf_counter()
    P = len(pairs) if isinstance(pairs, list) else 0  # a file's pairs are counted on the cluster
    found: dict[int, PairCells] = {i: work.load(pair_name(i)) for i in _finished(work, pair_name, P)} if work else {}
    share = 0.98 if settings.top_k else 1.0
    # a file is always streamed (its pairs' texts come back from the workers); a list only when some pair is missing
    needed = source is not None or len(found) < P or settings.top_k is not None
    started = _connect(address, workers) if needed else False
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        if source is not None:  # streamed from the file; counted first (P enters every pair's settings)
            read = source.dataset()
            P = _count(read, source)
            if P == 0:
                raise InputError(f"pairs file '{source.name}' holds no pairs")
            if P > MAX_PAIRS:
                raise InputError(f"pairs file '{source.name}' holds {P:,} pairs; at most {MAX_PAIRS:,} are accepted")
            if work is not None:
                found = {i: work.load(pair_name(i)) for i in _finished(work, pair_name, P)}
            ds0 = read.zip(ray.data.range(P)).map_batches(_index)
        else:
            assert isinstance(pairs, list)
            rows = [
                {"index": i, "clean": p.clean, "corrupt": p.corrupt, "answer": p.answer or "", "wrong": p.wrong or ""}
                for i, p in enumerate(pairs)
                if i not in found
            ]
            ds0 = ray.data.from_items(rows) if rows else None
        resumed = len(found)
        args = {
            "model_id": model_id,
            "dtype": dtype,
            "device": device,
            "settings": settings.to_dict(),
            "n_pairs": P,
            "fault": os.environ.get(ENV_FAULT, ""),
        }
        info: ModelInfo | None = work.model() if work is not None and ds0 is None else None
        got_pairs: dict[int, Pair] = {}
        if ds0 is not None:
            skip = sorted(found) if source is not None else []  # a file's finished pairs: their texts only
            ds = _stage(ds0, PairCellsWorker, {**args, "skip": skip}, workers, gpus_per_worker)
            for row in _rows(ds, source):
                i = int(row["index"])
                if source is not None:
                    got_pairs[i] = Pair(
                        str(row["clean"]), str(row["corrupt"]), str(row["answer"]) or None, str(row["wrong"]) or None
                    )
                if row["error"]:
                    raise InputError(f"pair {i + 1}: {row['error']}")
                if info is None:
                    loaded_info = serialize.loads(row["info"])
                    assert isinstance(loaded_info, ModelInfo)
                    info = loaded_info
                    if work is not None:
                        work.check_model(info)
                if i in found:  # finished before (a resumed file): its cells are the work folder's
                    continue
                cell = serialize.loads(row["cells"])
                assert isinstance(cell, PairCells)
                found[i] = cell
                if work is not None:
                    work.save(pair_name(i), cell)
                rate = (len(found) - resumed) / max(time.perf_counter() - t0, 1e-9)
                report(f"Pair {len(found)} of {P} ({rate:.2f} pairs/s)", len(found) / P * share)
        cells = [found[i] for i in range(P)]
        if source is not None:
            pairs = [got_pairs[i] for i in range(P)]
        assert isinstance(pairs, list)
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
                for i in _finished(work, top_name, P):
                    got[i] = [float(v) for v in work.load(top_name(i))["values"]]
            rows2: Any = None
            if source is not None and len(got) < P:  # the file read again, each pair given stage 1's answers
                ids = {
                    "answer_ids": np.array([c.answer_id for c in cells], dtype=np.int64),
                    "wrong_ids": np.array([c.wrong_id for c in cells], dtype=np.int64),
                }
                rows2 = source.dataset().zip(ray.data.range(P)).map_batches(_with_answers, fn_kwargs=ids)
            elif source is None:
                items = [
                    {
                        "index": i,
                        "clean": p.clean,
                        "corrupt": p.corrupt,
                        "answer_id": c.answer_id,
                        "wrong_id": c.wrong_id,
                    }  # fmt: skip
                    for i, (p, c) in enumerate(zip(pairs, cells, strict=True))
                    if i not in got
                ]
                rows2 = ray.data.from_items(items) if items else None
            if rows2 is not None:
                skip = sorted(got) if source is not None else []
                top_args = {**args, "top": [list(s) for s in top], "skip": skip}
                ds2 = _stage(rows2, ExactSitesWorker, top_args, workers, gpus_per_worker)
                for r in _rows(ds2, source):
                    i = int(r["index"])
                    if i in got:  # finished before (a resumed file)
                        continue
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
