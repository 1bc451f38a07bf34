"""Headless CLI: `python -m core <subcommand> …`; `analyze` writes the same bundle as the app's ZIP export.

Each subcommand is one `add_*(sub)` function that builds its parser and sets `run`; `SUBCOMMANDS` lists them in
order. A new subcommand lives in its own module core/cli_<name>.py (shared pieces: core.cli.common) and adds one
line here. Errors end with a non-zero exit and one line on stderr: 2 for bad arguments or input, 1 for a model that
cannot be loaded, 3 for an unexpected failure (`--debug` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from core.cli import corpus as cli_corpus
from core.cli import patch as cli_patch
from core.cli import sae as cli_sae
from core.cli.common import (
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_MODEL,
    OneLineParser,
    add_load_options,
    add_model_options,
    add_settings_options,
    add_text_options,
    check_paths,
    one_line,
    out_path,
    print_warnings,
    read_text,
    settings_from_args,
)
from core.cli.compare import add_parser as add_compare
from core.infra.errors import InputError, TMAError


def add_analyze(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    a = sub.add_parser(
        "analyze",
        help="analyse a text and write the analysis bundle",
        description="Analyse a text with a model and write the analysis bundle (a .zip file or a folder).",
    )
    add_model_options(a)
    add_text_options(a)
    a.add_argument("--out", required=True, type=out_path, help="output: a path ending in .zip, or a folder")
    add_load_options(a)
    add_settings_options(a)
    e = a.add_argument_group("bundle")
    e.add_argument("--no-animations", action="store_true", help="skip the layer-transition GIFs")
    e.add_argument("--hidden-states", action="store_true", help="add hidden_states.npz (float16) to the bundle")
    e.add_argument(
        "--views",
        default="all",
        help="the deeper views in the bundle: 'all' (default), 'none', or a comma-separated list of "
        "dla, flow, head_ablation, neuron_factors, query_key",
    )
    a.add_argument("--no-cache", action="store_true", help="do not read or write the result cache")
    a.add_argument("--cache-dir", type=Path, default=None, help="result cache folder (default $TMA_CACHE_DIR)")
    a.add_argument("--quiet", action="store_true", help="print nothing on success")
    a.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    a.set_defaults(run=run_analyze)
    return a


def add_generate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    g = sub.add_parser(
        "generate",
        help="continue a text with a causal LM, streamed to standard output",
        description="Continue a text with a causal language model (greedy unless --sample).",
    )
    add_model_options(g)
    add_text_options(g)
    g.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate at most (default 40)")
    g.add_argument("--sample", action="store_true", help="sample (temperature, top-p) instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--no-chat-template", action="store_true", help="do not wrap the prompt in the chat template")
    g.add_argument("--system", default=None, help="system message (chat template only)")
    add_load_options(g)
    g.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    g.set_defaults(run=run_generate)
    return g


#: The subcommands, in the order `--help` lists them.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], argparse.ArgumentParser]] = [
    add_analyze,
    add_generate,
    cli_patch.add_parser,
    cli_corpus.add_parser,
    add_compare,
    cli_sae.add_parser,
]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m core", description="Transformer Model Analysis, headless.")
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = p.add_subparsers(
        dest="command", required=True, parser_class=OneLineParser
    )
    for add in SUBCOMMANDS:
        add(sub)
    return p


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s: %(message)s")


def run_analyze(args: argparse.Namespace) -> int:
    from core.analysis.pipeline import analyze, view_names
    from core.export.session_log import entry_from_result
    from core.export.zip_export import export_run
    from core.infra.options import ExportOptions
    from core.run.cache import ResultCache

    check_paths(args, {"text_file": "text file"})  # before anything runs: a wrong --out must not cost a whole run
    text = read_text(args)
    assert text is not None  # the text group is required
    settings = settings_from_args(args)
    out: Path = args.out
    views = (
        "all"
        if args.views.strip() == "all"
        else [v.strip() for v in args.views.split(",") if v.strip() not in ("", "none")]
    )
    view_names(views)  # an unknown name fails here, before the model loads
    cache = None if args.no_cache else ResultCache(args.cache_dir)
    t0 = time.perf_counter()
    result = analyze(
        args.model,
        text,
        settings=settings,
        cache=cache,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        views=views,
    )
    options = ExportOptions(
        session_entries=(entry_from_result(result),),
        hidden_states=args.hidden_states,
        animations=not args.no_animations,
    )
    path, _run = export_run(result, out, options)
    if not args.quiet:
        print_warnings(list(result.warnings))
        print(
            f"wrote {path} ({result.model.model_id}, {result.n_tokens} tokens, {result.n_layers} layers, "
            f"{'cache hit' if result.cache_hit else 'computed'}, {time.perf_counter() - t0:.1f} s)"
        )
        if result.predictions is not None and result.predictions.kind == "mask_fill" and result.predictions.message:
            print(f"note: {result.predictions.message}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from core.model.loading import load_model
    from core.steps.predictions import GenerationSettings, generate_stream

    check_paths(args, {"text_file": "text file"})
    text = read_text(args)
    assert text is not None
    gen = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        use_chat_template=not args.no_chat_template,
        system_prompt=args.system,
    )
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map)
    for piece in generate_stream(loaded, text, gen):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    try:
        return int(args.run(args))
    except InputError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_INPUT
    except TMAError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_MODEL
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for a user, unless asked for
        if getattr(args, "debug", False):
            raise
        line = one_line(str(exc).splitlines()[0], 200) if str(exc) else ""
        print(f"error: unexpected {type(exc).__name__}: {line} (rerun with --debug for details)", file=sys.stderr)
        return EXIT_INTERNAL
