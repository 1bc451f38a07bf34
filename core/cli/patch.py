"""`python -m core patch`: activation patching of a clean and a corrupted text, written as a small bundle.

    python -m core patch --model M --clean "The Eiffel Tower is in" --corrupt "The Colosseum is in" --out p.zip
    python -m core patch --model M --clean C --corrupt K --sae DIR --feature F [--hook NAME] --out p.zip
    python -m core patch --model M --pairs pairs.csv [--clean-column clean] [--corrupt-column corrupt] \
        [--answer-column A] [--wrong-column B] [--atp-only | --top K] --out p.zip

Bundle of one pair: patching.csv (first columns exactly `layer,position,component,restored`; position −1 = every
position at once), patching.json (answers, m_clean, m_corrupted, target, both token lists, sanity, warnings),
plots/*.png and manifest.json and report.pdf. Bundle of a pair data set (core/studies/pairs.py): patching.csv
(`layer,position,component,restored,n_pairs,ci_low,ci_high,atp`: restored = the mean over pairs of each pair's
restored fraction, its Student-t interval over pairs, and attribution patching's estimate), patching_pairs.csv
(every pair's cells), patching.json (pairs, answers, near ties, exact-vs-AtP correlation), plots/*.png,
manifest.json and report.pdf; every finished pair is kept in OUT.partial/ beside --out (core.run.checkpoint, both
engines) until the bundle is written, and `--resume` continues an interrupted data set from those pairs (refused
with one line when the model, a setting or the pairs differ: the local engine fingerprints the parsed pairs, the Ray
engine, which never parses the file, its bytes and the columns named, so a data set resumes on the engine it began
on). Bundle of one SAE feature (core/cli/sae_patch.py):
sae_patching.csv, sae_patching.json, manifest.json. Bad input: one line on stderr and exit 2 (the exit codes of
core/cli/main.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.cli.common import (
    ProgressBar,
    add_load_options,
    add_model_options,
    add_resume_option,
    add_text_options,
    check_out,
    check_paths,
    fail,
    open_work,
    out_path,
    print_warnings,
    read_text,
)
from core.infra.formats import csv_bytes, json_bytes, write_files
from core.studies.pairs import PairsResult
from core.studies.patching import PatchingResult, PatchingSettings

if TYPE_CHECKING:
    from core.run.checkpoint import WorkFolder

CSV_HEADER = ["layer", "position", "component", "restored", "m_patched", "clean_token", "corrupted_token"]
PAIRS_CSV_HEADER = ["layer", "position", "component", "restored", "n_pairs", "ci_low", "ci_high", "atp", "token"]
PAIRS_CELLS_HEADER = ["pair", "layer", "position", "component", "restored", "atp", "m_patched", "atp_delta", "near_tie"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "patch",
        help="activation patching: which layers and positions carry the answer (clean -> corrupted)",
        description="Patch activations of a clean run into a corrupted run of the same token length and write "
        "patching.csv, patching.json, plots and a manifest (a .zip file or a folder).",
    )
    add_model_options(p)
    add_text_options(p, "clean", required=False)
    add_text_options(p, "corrupt", required=False)
    g = p.add_argument_group("a data set of pairs (instead of --clean / --corrupt)")
    g.add_argument("--pairs", type=Path, default=None, help="a .csv (header row) or .jsonl file of prompt pairs")
    g.add_argument("--clean-column", default="clean", help="column of the clean texts (default clean)")
    g.add_argument("--corrupt-column", default="corrupt", help="column of the corrupted texts (default corrupt)")
    g.add_argument("--answer-column", default=None, help="column of the answers (default: --answer, else top-1)")
    g.add_argument(
        "--wrong-column", default=None, help="column of the wrong answers (default: --wrong-answer, else top-1)"
    )
    g.add_argument(
        "--atp-only", action="store_true", help="attribution patching alone (no exact grid), for large data sets"
    )
    g.add_argument("--top", type=int, default=None, metavar="K", help="patch exactly only the K sites of largest |atp|")
    g.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process (default, no Ray import); ray: Ray Data workers, one model replica each",
    )
    g.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray cluster)")
    g.add_argument("--workers", type=int, default=2, help="Ray workers (model replicas), default 2")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (default 0)")
    add_resume_option(g, "pairs")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (pairs done / total with the rate)")
    s = p.add_argument_group("one sparse-autoencoder feature as the site (core/studies/sae_patching.py)")
    s.add_argument("--sae", action="append", default=None, metavar="DIR", help="SAE folder(s) in SAELens's format")
    s.add_argument("--feature", type=int, default=None, metavar="F", help="the feature to patch and ablate")
    s.add_argument("--hook", default=None, metavar="NAME", help="which --sae, by its hook (needed with several)")
    PatchingSettings.add_cli_arguments(p)  # --answer, --wrong-answer, --max-tokens, --no-per-position-components
    p.add_argument("--out", required=True, type=out_path, help="output: a path ending in .zip, or a folder")
    add_load_options(p)
    p.add_argument("--no-cache", action="store_true", help="do not read or write the result cache")
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="patching cache folder (default $TMA_CACHE_DIR/patching)"
    )
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(run=run)
    return p


def patching_csv(result: PatchingResult) -> bytes:
    rows: list[list[Any]] = []
    for layer, pos, comp, restored, metric in result.rows():
        toks = ("", "") if pos < 0 else (result.clean_tokens[pos], result.corrupted_tokens[pos])
        rows.append([layer, pos, comp, restored, metric, *toks])
    return csv_bytes(CSV_HEADER, rows)


def bundle(result: PatchingResult) -> dict[str, bytes]:
    """All files of the patch bundle {safe name: bytes}."""
    from core.export.report import patching_report
    from core.figures.causal import patching_files
    from core.model.provenance import package_versions, provenance

    # a result stored before patching recorded its package versions names the ones installed now
    prov = provenance(
        result.model, core_version=result.core_version, versions=result.versions or package_versions()
    ).to_dict()
    versions = prov.pop("package_versions")
    core_version = prov.pop("core_version")
    manifest = {
        "kind": "activation_patching",
        **prov,
        "clean_text": result.clean_text,
        "corrupted_text": result.corrupted_text,
        "token_count": result.n_tokens,
        "layers": result.n_layers,
        "settings": result.settings.to_dict(),
        "target_position": result.target_position,
        "target_reason": result.target_reason,
        "core_version": core_version,
        "package_versions": versions,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cache_hit": result.cache_hit,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "warnings": list(result.warnings),
    }
    files = {
        "manifest.json": json_bytes(manifest),
        "patching.csv": patching_csv(result),
        "patching.json": json_bytes(result.summary()),
    }
    files.update(patching_files(result))
    files["report.pdf"] = patching_report(result, files)
    return files


def pairs_csv(result: PairsResult) -> bytes:
    rows = [[*row, result.tokens[row[1]] if row[1] >= 0 else ""] for row in result.rows()]
    return csv_bytes(PAIRS_CSV_HEADER, rows)


def pairs_cells_csv(result: PairsResult) -> bytes:
    return csv_bytes(PAIRS_CELLS_HEADER, ([*r[:-1], int(r[-1])] for r in result.pair_rows()))


def pairs_bundle(result: PairsResult, source: str) -> dict[str, bytes]:
    """All files of the bundle of a pair data set {safe name: bytes}."""
    from core.export.pairs_report import pairs_report
    from core.figures.pairs import pairs_files
    from core.model.provenance import package_versions, provenance

    prov = provenance(result.model, core_version=result.core_version, versions=package_versions()).to_dict()
    versions = prov.pop("package_versions")
    prov.pop("core_version")
    manifest = {
        "kind": "activation_patching_pairs",
        **prov,
        "pairs_file": source,
        "n_pairs": len(result.pairs),
        "n_pairs_used": int(result.used.sum()),
        "near_ties": len(result.near_ties),
        "token_count": result.n_tokens,
        "layers": result.n_layers,
        "settings": result.settings.to_dict(),
        "target_position": result.target_position,
        "target_reason": result.target_reason,
        "core_version": result.core_version,
        "package_versions": versions,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cache_hit": result.cache_hit,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "warnings": list(result.warnings),
    }
    files = {
        "manifest.json": json_bytes(manifest),
        "patching.csv": pairs_csv(result),
        "patching_pairs.csv": pairs_cells_csv(result),
        "patching.json": json_bytes(result.summary()),
    }
    files.update(pairs_files(result))
    files["report.pdf"] = pairs_report(result, files)
    return files


def _run_on_ray(args: argparse.Namespace, settings: Any, progress: Any, work: WorkFolder) -> PairsResult:
    """`--engine ray`: the pairs file read by Ray Data on the cluster and its pairs run on Ray Data workers
    (core/studies/pairs_ray.py); the driver never parses the file. No result cache."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        fail("--engine ray needs Ray: pip install -r requirements-ray.txt")
    if args.workers < 1 or args.gpus_per_worker < 0:
        fail("--workers must be at least 1 and --gpus-per-worker at least 0")
    from core.studies.pairs_ray import PairSource, run_pairs_ray

    source = PairSource(
        str(args.pairs.resolve()),
        clean_column=args.clean_column,
        corrupt_column=args.corrupt_column,
        answer_column=args.answer_column,
        wrong_column=args.wrong_column,
    )
    return run_pairs_ray(
        args.model,
        source,
        settings,
        dtype=args.dtype,
        device=args.device,
        address=args.address or os.environ.get("TMA_RAY_ADDRESS") or None,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        progress=progress,
        work=work,
    )


def run_pairs_file(args: argparse.Namespace) -> int:
    """`patch --pairs F`: read and check the data set before loading the model, run, write the bundle."""
    from core.model.loading import load_model
    from core.run.cache import ResultCache
    from core.run.checkpoint import fingerprint, sha256_file
    from core.studies.pairs import PAIR_FORMATS, PairsSettings, parse_pairs, patch_pairs

    path: Path = args.pairs
    shown = str(path) if len(str(path)) <= 120 else str(path)[:119] + "…"
    try:
        if not path.is_file():
            fail(f"pairs file '{shown}' does not exist or is not a file")
        data = path.read_bytes() if args.engine == "local" else b""  # Ray Data reads it on the cluster
    except OSError as exc:
        fail(f"pairs file '{shown}' cannot be read ({exc.strerror or type(exc).__name__})")
    if args.engine == "ray" and path.suffix.lower() not in PAIR_FORMATS:
        fail(f"pairs file '{path.name}' must end in .csv or .jsonl")
    pairs = (
        parse_pairs(
            data,
            path.name,
            clean_column=args.clean_column,
            corrupt_column=args.corrupt_column,
            answer_column=args.answer_column,
            wrong_column=args.wrong_column,
        )
        if args.engine == "local"
        else []
    )
    settings = PairsSettings(
        answer=args.answer,
        wrong_answer=args.wrong_answer,
        max_tokens=args.max_tokens,
        per_position_components=args.per_position_components,
        atp_only=args.atp_only,
        top_k=args.top,
    )
    check_out(args.out)
    if args.engine == "ray":  # the file's bytes (hashed in chunks: the driver never holds or parses it) and columns
        try:
            digest = sha256_file(path)
        except OSError as exc:
            fail(f"pairs file '{shown}' cannot be read ({exc.strerror or type(exc).__name__})")
        columns = [args.clean_column, args.corrupt_column, args.answer_column, args.wrong_column]
        given: dict[str, Any] = {"sha256": digest, "format": path.suffix.lower(), "columns": columns}
    else:  # the pairs as parsed
        text = json.dumps([dataclasses.astuple(p) for p in pairs], ensure_ascii=False)
        given = {"pairs_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    fp = fingerprint("patching_pairs", args.model, args.dtype, args.device, settings.to_dict(), **given)
    work = open_work(args, fp, ("pair", "pairs"))
    with ProgressBar(not (args.quiet or args.no_progress)) as progress:
        if args.engine == "ray":
            result = _run_on_ray(args, settings, progress, work)
        else:
            loaded = load_model(args.model, dtype=args.dtype, device=args.device)
            cache = None if args.no_cache else ResultCache(args.cache_dir)
            try:
                result = patch_pairs(loaded, pairs, settings, cache=cache, progress=progress, work=work)
            finally:
                if cache is not None:
                    cache.close()
    out = write_files(pairs_bundle(result, path.name), args.out)
    work.remove()  # the bundle is in place: the finished pairs are no longer needed
    if not args.quiet:
        r = result.correlation()
        sys.stdout.write(
            f"wrote {out} ({len(result.pairs)} pairs, {int(result.used.sum())} in the means, "
            f"{len(result.near_ties)} near ties, {result.n_layers} layers x {result.n_tokens} positions, "
            f"exact vs AtP r = {r:.3f}, {'cache hit' if result.cache_hit else 'computed'})\n"
        )
        print_warnings(list(result.warnings))
    return 0


def run(args: argparse.Namespace) -> int:
    from core.model.loading import load_model
    from core.run.cache import ResultCache
    from core.studies.patching import patch

    check_paths(args, {"clean_file": "clean text file", "corrupt_file": "corrupted text file", "pairs": "pairs file"})
    clean, corrupt = read_text(args, "clean"), read_text(args, "corrupt")
    if args.pairs is not None:
        if clean is not None or corrupt is not None:
            fail("give either --pairs FILE or --clean and --corrupt, not both")
        if args.sae or args.feature is not None:
            fail("--sae / --feature patch one pair: give --clean and --corrupt, not --pairs")
        return run_pairs_file(args)
    if args.resume and (args.sae or args.feature is not None or args.hook is not None):
        fail("--resume applies to a data set of pairs (--pairs FILE)")
    if clean is None or corrupt is None:
        fail("give --clean and --corrupt (texts or files), or --pairs FILE")
    if args.sae or args.feature is not None or args.hook is not None:
        from core.cli.sae_patch import run_sae_patch

        return run_sae_patch(args, clean, corrupt)
    if args.atp_only or args.top is not None or args.engine != "local" or args.resume:
        fail("--atp-only, --top, --engine and --resume apply to a data set of pairs (--pairs FILE)")
    if clean == corrupt:
        fail(
            "the clean and the corrupted texts are identical: patching measures how much of the clean answer a "
            "patch restores in a corrupted run, so change a word in the corrupted text"
        )
    settings = PatchingSettings.from_cli(args)
    out: Path = args.out
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    cache = None if args.no_cache else ResultCache(args.cache_dir)
    try:
        result = patch(loaded, clean, corrupt, settings, cache=cache)
    finally:
        if cache is not None:
            cache.close()
    path = write_files(bundle(result), out)
    if not args.quiet:
        sys.stdout.write(
            f"wrote {path} (answer {result.answer_token!r} vs {result.wrong_token!r}, m_clean "
            f"{result.m_clean:.3f}, m_corrupted {result.m_corrupted:.3f}, {result.n_layers} layers x "
            f"{result.n_tokens} positions, {'cache hit' if result.cache_hit else 'computed'})\n"
        )
        for w in result.warnings:
            sys.stderr.write(f"warning: {w}\n")
    return 0
