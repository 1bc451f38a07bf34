"""`python -m core corpus`: corpus mode from the command line.

    python -m core corpus --model M --text-file F --out OUT(.zip|dir)
    python -m core corpus --model M --csv F --column C --out OUT
    python -m core corpus --model M --parquet F --column C --engine ray --out OUT   (also --jsonl)
    python -m core corpus --model M --text-file F --sae SAE_DIR [--sae SAE_DIR2] --out OUT

With --sae the bundle also holds sae_feature_examples.csv (each feature's top-activating tokens with their contexts)
and sae_feature_stats.csv (firing rate, mean activation) from core.studies.sae_corpus (with --engine ray:
core.studies.sae_corpus_ray, the same examples).

Writes the corpus bundle (core.export.corpus_bundle) with a progress bar on standard error (tqdm). Bad input ends with
one line on stderr and exit 2 (1: model unavailable, 3: unexpected failure), like `analyze`; nothing is written
unless the whole analysis succeeded, and the bundle is renamed into place whole (core.infra.formats.write_files).

Each finished batch of texts is kept in OUT.partial/ beside --out (core.run.checkpoint, both engines) until the
bundle is written; `--resume` continues an interrupted run from those batches (the same batches: the same numbers),
and is refused with one line when the model, a setting or the input file differ.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.cli.common import (
    ProgressBar,
    add_load_options,
    add_model_options,
    add_resume_option,
    check_input_file,
    check_paths,
    fail,
    open_work,
    out_path,
)
from core.infra.guards import DEFAULT_MAX_CORPUS_TEXTS, max_corpus_texts
from core.studies.corpus import ENV_MAX_TEXTS, CorpusSettings, CorpusTexts

if TYPE_CHECKING:
    from core.run.cache import ResultCache
    from core.run.checkpoint import WorkFolder
    from core.studies.corpus_ray import CorpusSource

NAME = "corpus"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the `corpus` subcommand on the subparsers object `sub` (its `run` is set as the default)."""
    c = sub.add_parser(
        NAME,
        help="layer geometry over a corpus of texts, with 95 %% intervals over texts",
        description=(
            "Analyse many texts: pooled per-layer metrics (effective rank, participation ratio, d95, TwoNN, "
            "two anisotropies, linearity) with 95 %% intervals over texts, and the single-text "
            "metrics of every text. Writes corpus_metrics.csv, per_text_metrics.csv, manifest.json, "
            "plots/*.png and report.pdf to a .zip or a folder."
        ),
    )
    add_model_options(c)
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--text-file", type=Path, help="UTF-8 text file, one text per line ('-' for standard input)")
    src.add_argument("--csv", type=Path, help="UTF-8 CSV file with a header row (pick the column with --column)")
    src.add_argument("--jsonl", type=Path, help="JSON-lines file, one object per text (--column; --engine ray)")
    src.add_argument("--parquet", type=Path, help="Parquet file, one row per text (--column; --engine ray)")
    c.add_argument(
        "--column",
        default=None,
        help="the CSV column that holds the texts (with --csv; default: a column named 'text', else the one with "
        "the longest cells)",
    )
    c.add_argument("--out", required=True, type=out_path, help="output: a path ending in .zip, or a folder")
    c.add_argument(
        "--max-texts",
        type=int,
        default=None,
        help=f"refuse a corpus with more texts than this (default ${ENV_MAX_TEXTS}, else {DEFAULT_MAX_CORPUS_TEXTS})",
    )
    CorpusSettings.add_cli_arguments(c)
    c.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process (default, no Ray import); ray: Ray Data workers, one model replica each",
    )
    c.add_argument("--address", default=None, help="Ray cluster address (default $TMA_RAY_ADDRESS, else a local one)")
    c.add_argument("--workers", type=int, default=2, help="Ray workers (model replicas), default 2")
    c.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (default 0)")
    c.add_argument(
        "--sae",
        action="append",
        metavar="DIR",
        default=None,
        help="a sparse-autoencoder folder (SAELens format; repeat for several): each feature's top-activating "
        "tokens with contexts, firing rate and mean activation over the corpus",
    )
    c.add_argument("--sae-top", type=int, default=10, help="examples kept per SAE feature (default 10; 1 to 100)")
    add_load_options(c)
    add_resume_option(c, "batches of texts")
    c.add_argument("--no-cache", action="store_true", help="do not read or write the result cache")
    c.add_argument("--cache-dir", type=Path, default=None, help="result cache folder (default $TMA_CACHE_DIR)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--quiet", action="store_true", help="print nothing on success (implies --no-progress)")
    c.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    c.set_defaults(run=run)
    return c


def _read(path: Path, what: str) -> bytes:
    from core.studies.corpus import MAX_CORPUS_BYTES

    if str(path) == "-":
        data = sys.stdin.buffer.read(MAX_CORPUS_BYTES + 1)
    else:
        check_input_file(path, what)
        if path.stat().st_size > MAX_CORPUS_BYTES:
            fail(f"{what} '{path}' is larger than {MAX_CORPUS_BYTES // (1024 * 1024)} MB")
        data = path.read_bytes()
    return data


def read_corpus(args: argparse.Namespace) -> CorpusTexts:
    """The texts named by --text-file or --csv/--column, checked against the limit before any model is loaded."""
    from core.studies.corpus import text_column, texts_from_csv, texts_from_lines

    limit = args.max_texts if args.max_texts is not None else max_corpus_texts()
    if limit < 1:
        fail("--max-texts must be at least 1")
    if args.csv is not None:
        data = _read(args.csv, "CSV file")
        column = args.column or text_column(data, what=f"CSV file '{args.csv}'")  # "text", else the longest cells
        return texts_from_csv(data, column, limit=limit, what=f"CSV file '{args.csv}'")
    if args.column:
        fail("--column applies to --csv only")
    return texts_from_lines(_read(args.text_file, "text file"), limit=limit, what=f"text file '{args.text_file}'")


def settings_from_args(args: argparse.Namespace) -> CorpusSettings:
    """CorpusSettings from the options made by CorpusSettings.add_cli_arguments."""
    return CorpusSettings.from_cli(args)


def run(args: argparse.Namespace) -> int:
    """Run the `corpus` subcommand; raises core.infra.errors exceptions for the CLI's one-line error handling."""
    from core.export.corpus_bundle import corpus_bundle_files
    from core.run.cache import ResultCache
    from core.studies.corpus import analyze_corpus

    check_paths(  # before a run
        args, {"text_file": "text file", "csv": "CSV file", "jsonl": "JSON-lines file", "parquet": "Parquet file"}
    )
    out: Path = args.out
    settings = settings_from_args(args)
    for flag in ("jsonl", "parquet"):
        if args.engine == "local" and getattr(args, flag) is not None:
            fail(f"--{flag} needs --engine ray (the local engine reads --text-file or --csv)")
    if args.sae:
        from core.studies.sae_corpus import check_top_n

        check_top_n(args.sae_top)  # before the corpus pass, not after it
    t0 = time.perf_counter()
    show = not (args.quiet or args.no_progress)
    if args.engine == "ray":
        work = _work(args, settings)
        with ProgressBar(show) as progress:
            result, sae_files = _run_on_ray(args, settings, progress, work)
        return _finish(args, result, {**corpus_bundle_files(result), **sae_files}, out, t0, work)
    corpus = read_corpus(args)  # checked against the limit before any model is loaded
    work = _work(args, settings)
    model: Any = args.model
    sae_dirs = tuple(args.sae or ())
    if sae_dirs:  # one loaded model for both passes; a bad SAE folder is refused before any forward pass
        from core.model.loading import load_model
        from core.model.sae import load_sae

        for d in sae_dirs:
            load_sae(d)
        model = load_model(str(args.model), dtype=args.dtype, device=args.device)
    cache = None if args.no_cache else ResultCache(args.cache_dir)
    progress = ProgressBar(show)
    try:
        result = analyze_corpus(
            model,
            corpus,
            settings,
            progress,
            cache=cache,
            dtype=args.dtype,
            device=args.device,
            limit=args.max_texts if args.max_texts is not None else None,
            work=work,
        )
        files = corpus_bundle_files(result)
        if sae_dirs:  # through the result cache too (its key holds the SAEs' sha256)
            from core.studies.sae_corpus import sae_corpus_cached, sae_corpus_files

            examples = sae_corpus_cached(
                model, list(corpus.texts), sae_dirs, cache=cache, max_tokens=settings.max_tokens, top_n=args.sae_top,
                include_special=settings.include_special_tokens,
            )  # fmt: skip
            files.update(sae_corpus_files(examples.saes))
    finally:
        progress.close()
        if cache is not None:
            cache.close()
    return _finish(args, result, files, out, t0, work)


def _input(args: argparse.Namespace) -> tuple[str, Path]:
    """The run's input: its kind ("csv", "jsonl", "parquet" or "lines" for --text-file) and its path."""
    kind = next((k for k in ("csv", "jsonl", "parquet") if getattr(args, k) is not None), "lines")
    return kind, getattr(args, "text_file" if kind == "lines" else kind)


def _work(args: argparse.Namespace, settings: CorpusSettings) -> WorkFolder | None:
    """The run's work folder (core.run.checkpoint), fingerprinted by the model as asked, every setting and the
    input file's sha256 with its format and column; None for standard input (it cannot be read again)."""
    from core.run.checkpoint import fingerprint, sha256_file

    kind, path = _input(args)
    if str(path) == "-":
        if args.resume:
            fail("--resume needs an input file (standard input cannot be read again)")
        return None
    fp = fingerprint(
        "corpus",
        args.model,
        args.dtype,
        args.device,
        settings.to_dict(),
        format=kind,
        column=args.column,
        sha256=sha256_file(path),
    )
    return open_work(args, fp, ("batch of texts", "batches of texts"))


def _run_on_ray(
    args: argparse.Namespace, settings: CorpusSettings, progress: Any, work: WorkFolder | None
) -> tuple[Any, dict[str, bytes]]:
    """`--engine ray`: the texts streamed from the file to Ray Data workers (core/studies/corpus_ray.py); with --sae
    a second pass on the same cluster (core/studies/sae_corpus_ray.py). Returns the result and the SAE files."""
    import importlib.util
    import os

    if importlib.util.find_spec("ray") is None:
        fail("--engine ray needs Ray: pip install -r requirements-ray.txt")
    if args.workers < 1 or args.gpus_per_worker < 0:
        fail("--workers must be at least 1 and --gpus-per-worker at least 0")
    from core.studies.corpus_ray import CorpusSource

    column = args.column
    if args.csv is not None and not column and args.csv.is_file():  # the same guess as the local engine's, from
        from core.studies.corpus import text_column  # the file's first rows (the file itself streams to Ray)

        with open(args.csv, "rb") as fh:
            head = fh.read(1 << 16)
        column = text_column(head[: head.rfind(b"\n") + 1] or head, what=f"CSV file '{args.csv}'")
    kind, path = _input(args)
    if kind != "lines" and not column:
        fail(f"--{kind} needs --column (the field that holds the texts)")
    if kind == "lines" and args.column:
        fail("--column applies to --csv, --jsonl and --parquet only")
    if str(path) == "-" or not path.is_file():
        fail(f"--engine ray reads a file: '{path}' does not exist (standard input is for the local engine)")
    source = CorpusSource(kind, str(path.resolve()), column)
    address = args.address or os.environ.get("TMA_RAY_ADDRESS") or None
    ray_args = {"dtype": args.dtype, "device": args.device, "address": address, "workers": args.workers,
                "gpus_per_worker": args.gpus_per_worker, "limit": args.max_texts}  # fmt: skip
    from core.run.cache import ResultCache

    cache = None if args.no_cache else ResultCache(args.cache_dir)  # the local engine's entries: either hits the other
    try:
        return _ray_passes(args, source, settings, progress, work, ray_args, address, cache)
    finally:
        if cache is not None:
            cache.close()


def _ray_passes(
    args: argparse.Namespace,
    source: CorpusSource,
    settings: CorpusSettings,
    progress: Any,
    work: WorkFolder | None,
    ray_args: dict[str, Any],
    address: str | None,
    cache: ResultCache | None,
) -> tuple[Any, dict[str, bytes]]:
    """The corpus pass on Ray (through the result cache) and, with --sae, the SAE pass on the same cluster."""
    from core.studies.corpus_ray import run_corpus_ray

    if not args.sae:
        return run_corpus_ray(args.model, source, settings, progress, work=work, cache=cache, **ray_args), {}
    import ray

    from core.model.sae import load_sae
    from core.run.progress import scaled
    from core.studies.pairs_ray import _connect
    from core.studies.sae_corpus import sae_corpus_files
    from core.studies.sae_corpus_ray import run_sae_corpus_ray

    for d in args.sae:  # a bad SAE folder is refused before any worker starts
        load_sae(d)
    started = _connect(address, args.workers)  # one cluster for both passes
    try:
        result = run_corpus_ray(
            args.model, source, settings, scaled(progress, 0.0, 0.7), work=work, cache=cache, **ray_args
        )
        sae = run_sae_corpus_ray(
            args.model, source, args.sae, settings, scaled(progress, 0.7, 1.0), top_n=args.sae_top, **ray_args
        )
    finally:
        if started:
            ray.shutdown()
    return result, sae_corpus_files(sae)


def _finish(
    args: argparse.Namespace, result: Any, files: dict[str, bytes], out: Path, t0: float, work: WorkFolder | None
) -> int:
    from core.export.corpus_bundle import write_bundle

    path = write_bundle(files, out)
    if work is not None:
        work.remove()  # the bundle is in place: the finished batches are no longer needed
    if not args.quiet:
        lines = [
            f"wrote {path} ({result.model.model_id}, {result.n_texts} texts, "
            f"{int(result.n_points.max())} pooled points, {result.n_layers - 1} layers, "
            f"{'cache hit' if result.cache_hit else 'computed'}, {time.perf_counter() - t0:.1f} s)"
        ]
        lines += [f"note: {w}" for w in result.warnings]
        sys.stdout.write("".join(line + "\n" for line in lines))
    return 0
