"""`python -m core compare`: two runs side by side, headless.

    python -m core compare --model A [--model-b B] --text T [--text-b T2] --out OUT(.zip|dir)

Run B defaults to run A's model and text, so give --model-b (one text on two models), --text-b (two texts on one
model) or both. Each run is an ordinary analysis (the result cache applies); the output holds both runs' bundles
under a/ and b/ (core.export.bundle.bundle_files, the same files as `python -m core analyze`), comparison.json,
cka.csv (exactly `layer_a,layer_b,cka`, when both runs hold the same tokens), plots/*.png and report.pdf (a summary
page, the comparison figures, then both runs' reports). Bad input: one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.cli.common import (
    add_load_options,
    add_model_options,
    add_settings_options,
    add_text_options,
    check_paths,
    fail,
    out_path,
    print_warnings,
    read_text,
    settings_from_args,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the `compare` subcommand on the subparsers object `sub`."""
    c = sub.add_parser(
        "compare",
        help="compare two runs (two texts on one model, or one text on two models)",
        description="Analyse run A and run B and write both bundles plus the comparison (linear CKA, metrics "
        "overlay, entropy difference, predictions and attributions side by side) as a .zip file or a "
        "folder. Run B takes run A's model and text unless --model-b / --text-b say otherwise.",
    )
    add_model_options(c)
    c.add_argument("--model-b", default=None, help="run B's model (default: run A's)")
    add_text_options(c)
    g = c.add_mutually_exclusive_group()
    g.add_argument("--text-b", dest="text_b", default=None, help="run B's text (default: run A's)")
    g.add_argument(
        "--text-b-file",
        dest="text_b_file",
        type=Path,
        default=None,
        help="read run B's text from this UTF-8 file ('-' for standard input)",
    )
    c.add_argument("--out", required=True, type=out_path, help="output: a path ending in .zip, or a folder")
    add_load_options(c)
    add_settings_options(c)
    e = c.add_argument_group("output")
    e.add_argument(
        "--debiased",
        action="store_true",
        help="write the debiased CKA into cka.csv (comparison.json holds both variants)",
    )
    e.add_argument("--no-animations", action="store_true", help="skip the layer-transition GIFs in a/ and b/")
    c.add_argument("--no-cache", action="store_true", help="do not read or write the result cache")
    c.add_argument("--cache-dir", type=Path, default=None, help="result cache folder (default $TMA_CACHE_DIR)")
    c.add_argument("--quiet", action="store_true", help="print nothing on success")
    c.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    c.set_defaults(run=run)
    return c


def run(args: argparse.Namespace) -> int:
    """Analyse both runs (a model named twice is loaded once), compare them and write the output. Bad input raises
    core.infra.errors.InputError before any model loads (core.cli.main turns it into one stderr line and exit 2)."""
    from core.analysis.pipeline import analyze
    from core.export.bundle import bundle_files
    from core.export.compare import comparison_files
    from core.export.session_log import entry_from_result
    from core.infra.formats import write_files
    from core.infra.options import ExportOptions
    from core.model.loading import load_model
    from core.run.cache import ResultCache
    from core.studies.compare import compare

    # before anything runs: a wrong --out must not cost two runs
    check_paths(args, {"text_file": "text file", "text_b_file": "run B's text file"})
    text = read_text(args)
    assert text is not None  # the text group is required
    text_b = read_text(args, "text_b")
    text_b = text if text_b is None else text_b
    model_b = args.model_b or args.model
    if model_b == args.model and text_b == text:
        fail("run B equals run A: give --model-b, --text-b or both")
    settings = settings_from_args(args)
    out: Path = args.out
    cache = None if args.no_cache else ResultCache(args.cache_dir)
    t0 = time.perf_counter()
    try:
        loaded_a = load_model(args.model, dtype=args.dtype, device=args.device)
        loaded_b = loaded_a if model_b == args.model else load_model(model_b, dtype=args.dtype, device=args.device)
        result_a = analyze(loaded_a, text, settings=settings, cache=cache)
        result_b = analyze(loaded_b, text_b, settings=settings, cache=cache)
    finally:
        if cache is not None:
            cache.close()
    cmp = compare(result_a, result_b)
    entries = (entry_from_result(result_a), entry_from_result(result_b))
    options = ExportOptions(session_entries=entries, animations=not args.no_animations)
    files = comparison_files(
        result_a, result_b, cmp, bundle=lambda r: bundle_files(r, options), debiased_csv=args.debiased
    )
    path = write_files(files, out)
    if not args.quiet:
        for label, r in (("A", result_a), ("B", result_b)):
            print_warnings([f"run {label}: {w}" for w in r.warnings])
        cka = (
            f"CKA {cmp.cka.shape[0]}×{cmp.cka.shape[1]} layers over {cmp.cka_tokens} tokens"
            if cmp.cka is not None
            else "no CKA (the runs hold different tokens)"
        )
        sys.stdout.write(
            f"wrote {path} (A: {cmp.a.model_id}, {len(cmp.a.tokens)} tokens; B: {cmp.b.model_id}, "
            f"{len(cmp.b.tokens)} tokens; {cka}; {time.perf_counter() - t0:.1f} s)\n"
        )
    return 0
