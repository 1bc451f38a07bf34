"""`python -m core patch`: activation patching of a clean and a corrupted text, written as a small bundle.

    python -m core patch --model M --clean "The Eiffel Tower is in" --corrupt "The Colosseum is in" --out p.zip

Bundle: patching.csv (first columns exactly `layer,position,component,restored`; position −1 = every position at
once), patching.json (answers, m_clean, m_corrupted, target, both token lists, sanity, warnings), plots/*.png and
manifest.json and report.pdf. Bad input: one line on stderr and exit 2 (the exit codes of core/cli/main.py).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path
from typing import Any

from core.cli.common import (
    add_load_options,
    add_model_options,
    add_text_options,
    fail,
    read_text,
)
from core.infra.formats import csv_bytes, json_bytes, write_files
from core.studies.patching import PatchingResult, PatchingSettings

CSV_HEADER = ["layer", "position", "component", "restored", "m_patched", "clean_token", "corrupted_token"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "patch",
        help="activation patching: which layers and positions carry the answer (clean -> corrupted)",
        description="Patch activations of a clean run into a corrupted run of the same token length and write "
        "patching.csv, patching.json, plots and a manifest (a .zip file or a folder).",
    )
    add_model_options(p)
    add_text_options(p, "clean")
    add_text_options(p, "corrupt")
    PatchingSettings.add_cli_arguments(p)  # --answer, --wrong-answer, --max-tokens, --no-per-position-components
    p.add_argument("--out", required=True, type=Path, help="output: a path ending in .zip, or a folder")
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


def run(args: argparse.Namespace) -> int:
    from core.model.loading import load_model
    from core.run.cache import ResultCache
    from core.studies.patching import patch

    clean, corrupt = read_text(args, "clean"), read_text(args, "corrupt")
    assert clean is not None and corrupt is not None  # both groups are required
    settings = PatchingSettings.from_cli(args)
    out: Path = args.out
    if out.exists() and out.is_file() and out.suffix.lower() != ".zip":
        fail(f"--out '{out}' is an existing file; give a .zip path or a folder")
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
