"""`python -m core compare`: two runs side by side, headless.

    python -m core compare --model A [--model-b B] --text T [--text-b T2] --out OUT(.zip|dir)

Run B defaults to run A's model and text, so give --model-b (one text on two models), --text-b (two texts on one
model) or both. Each run is an ordinary analysis (the result cache applies); the output holds both runs' bundles
under a/ and b/ (core.bundle.bundle_files, the same files as `python -m core analyze`), comparison.json,
cka.csv (exactly `layer_a,layer_b,cka`, when both runs hold the same tokens), plots/*.png and report.pdf (a summary
page, the comparison figures, then both runs' reports). Bad input: one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .errors import InputError

NAME = "compare"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the `compare` subcommand on the subparsers object `sub`."""
    c = sub.add_parser(
        NAME, help="compare two runs (two texts on one model, or one text on two models)",
        description="Analyse run A and run B and write both bundles plus the comparison (CKA, metrics overlay, "
                    "entropy difference, predictions side by side) as a .zip file or a folder.")
    c.add_argument("--model", required=True, help="run A's model: Hugging Face id, local folder or preset")
    c.add_argument("--model-b", default=None, help="run B's model (default: run A's)")
    c.add_argument("--text", required=True, help="run A's text")
    c.add_argument("--text-b", default=None, help="run B's text (default: run A's)")
    c.add_argument("--out", required=True, type=Path, help="output: a path ending in .zip, or a folder")
    c.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="weights dtype")
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="device")
    c.add_argument("--max-tokens", type=int, default=256, help="truncate each text to this many tokens (default 256)")
    c.add_argument("--no-gradients", action="store_true", help="skip gradient-based attributions")
    c.add_argument("--no-animations", action="store_true", help="skip the layer-transition GIFs in a/ and b/")
    c.add_argument("--debiased", action="store_true",
                   help="write the debiased CKA into cka.csv (comparison.json holds both)")
    c.add_argument("--no-cache", action="store_true", help="do not read or write the result cache")
    c.add_argument("--cache-dir", type=Path, default=None, help="result cache folder (default $TMA_CACHE_DIR)")
    c.add_argument("--quiet", action="store_true", help="print nothing on success")
    c.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return c


def run(args: argparse.Namespace) -> int:
    """Analyse both runs, compare them and write the output. Raises core.errors.InputError for bad input (the
    dispatcher turns it into one stderr line and exit 2)."""
    from .analysis import analyze
    from .bundle import bundle_files, write_files
    from .cache import ResultCache
    from .compare import compare, comparison_files
    from .models import load_model
    from .settings import AnalysisSettings

    model_b = args.model_b or args.model
    text_b = args.text if args.text_b is None else args.text_b
    if model_b == args.model and text_b == args.text:
        raise InputError("run B equals run A: give --model-b, --text-b or both")
    for name, text in (("--text", args.text), ("--text-b", text_b)):
        if not text.strip():
            raise InputError(f"{name} is empty: give a sentence to analyse")
    out: Path = args.out
    if out.exists() and out.is_file() and out.suffix.lower() != ".zip":
        raise InputError(f"--out '{out}' is an existing file; give a .zip path or a folder")
    settings = AnalysisSettings(max_tokens=args.max_tokens, compute_gradients=not args.no_gradients,
                                animations=not args.no_animations)
    cache = None if args.no_cache else ResultCache(args.cache_dir)
    t0 = time.perf_counter()
    loaded_a = load_model(args.model, dtype=args.dtype, device=args.device)
    loaded_b = loaded_a if model_b == args.model else load_model(model_b, dtype=args.dtype, device=args.device)
    result_a = analyze(loaded_a, args.text, settings=settings, cache=cache)
    result_b = analyze(loaded_b, text_b, settings=settings, cache=cache)
    cmp = compare(result_a, result_b)
    files = comparison_files(result_a, result_b, cmp, bundle=bundle_files, debiased_csv=args.debiased)
    path = write_files(files, out)
    if not args.quiet:
        cka = (f"CKA {cmp.cka.shape[0]}×{cmp.cka.shape[1]} over {cmp.cka_tokens} tokens" if cmp.cka is not None
               else "no CKA (different tokens)")
        print(f"wrote {path} (A: {cmp.a.model_id}, {len(cmp.a.tokens)} tokens; B: {cmp.b.model_id}, "
              f"{len(cmp.b.tokens)} tokens; {cka}; {time.perf_counter() - t0:.1f} s)")
    if cache is not None:
        cache.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (used until the subcommand is registered in core.cli): same exits as the CLI."""
    from .cli import EXIT_INPUT, EXIT_INTERNAL, EXIT_MODEL, _OneLineParser, _quiet_libraries
    from .errors import TMAError

    parser = _OneLineParser(prog="python -m core")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    add_parser(sub)
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return run(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except TMAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return EXIT_INTERNAL
