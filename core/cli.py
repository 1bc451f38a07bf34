"""Headless CLI: `python -m core analyze --model M (--text T | --text-file F) --out OUT`.

It builds the same bundle as the app's ZIP export. Errors end with a non-zero exit and one line on stderr:
exit 2 for bad arguments or input, 1 for a model that cannot be loaded, 3 for an unexpected failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from .errors import InputError, TMAError
from .models import BUNDLED_ID, PRESETS

EXIT_MODEL, EXIT_INPUT, EXIT_INTERNAL = 1, 2, 3
MAX_TEXT_BYTES = 1_000_000


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line
        self.exit(EXIT_INPUT, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="python -m core", description="Transformer Model Analysis, headless.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    a = sub.add_parser(
        "analyze", help="analyse a text and write the analysis bundle",
        description="Analyse a text with a model and write the analysis bundle (a .zip file or a folder).",
        epilog=f"Presets: {', '.join(PRESETS)}. '{BUNDLED_ID}' is bundled and works offline.")
    a.add_argument("--model", required=True,
                   help="Hugging Face id, local model folder, or a preset (the bundled MiniLM works offline)")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to analyse")
    src.add_argument("--text-file", type=Path, help="read the text from this UTF-8 file ('-' for standard input)")
    a.add_argument("--out", required=True, type=Path, help="output: a path ending in .zip, or a folder")
    a.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (auto: float32 on CPU, bfloat16 on CUDA)")
    a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="device (auto: CUDA if present)")
    a.add_argument("--max-tokens", type=int, default=256, help="truncate the text to this many tokens (default 256)")
    a.add_argument("--exclude-special-tokens", action="store_true",
                   help="leave special tokens ([CLS], [SEP], BOS…) out of the layer metrics")
    a.add_argument("--top-k", type=int, default=10, help="candidates listed per prediction (default 10)")
    a.add_argument("--target-position", type=int, default=None,
                   help="token position to attribute (default: mask / last token / 0 by family)")
    a.add_argument("--mask-word", default=None,
                   help="masked LMs: replace the first occurrence of this word by the mask token")
    a.add_argument("--no-gradients", action="store_true", help="skip gradient-based attributions")
    a.add_argument("--integrated-gradients", action="store_true",
                   help="also run integrated gradients (slow: --ig-steps forward+backward passes)")
    a.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps (default 32)")
    a.add_argument("--n-clusters", type=int, default=None, help="head clusters (default: chosen by silhouette)")
    a.add_argument("--lens-position", type=int, default=None, help="logit-lens position (default: target position)")
    a.add_argument("--lens-full-grid", action="store_true",
                   help="decode the logit-lens grid at every position (on a CPU long texts get a window by default)")
    a.add_argument("--no-animations", action="store_true", help="skip the layer-transition GIFs")
    a.add_argument("--hidden-states", action="store_true", help="add hidden_states.npz (float16) to the bundle")
    a.add_argument("--no-cache", action="store_true", help="do not read or write the result cache")
    a.add_argument("--cache-dir", type=Path, default=None, help="result cache folder (default $TMA_CACHE_DIR)")
    a.add_argument("--quiet", action="store_true", help="print nothing on success")
    a.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    g = sub.add_parser("generate", help="continue a text with a causal LM, streamed to standard output",
                       description="Continue a text with a causal language model (greedy unless --sample).")
    g.add_argument("--model", required=True, help="Hugging Face id or local folder of a causal LM")
    gsrc = g.add_mutually_exclusive_group(required=True)
    gsrc.add_argument("--text", help="the prompt")
    gsrc.add_argument("--text-file", type=Path, help="read the prompt from this UTF-8 file ('-' for standard input)")
    g.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate at most (default 40)")
    g.add_argument("--sample", action="store_true", help="sample (temperature, top-p) instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default 1.0)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--no-chat-template", action="store_true", help="do not wrap the prompt in the chat template")
    g.add_argument("--system", default=None, help="system message (chat template only)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="weights dtype")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="device")
    g.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        return args.text
    if str(args.text_file) == "-":
        return sys.stdin.read(MAX_TEXT_BYTES + 1)
    if not args.text_file.is_file():
        raise InputError(f"text file '{args.text_file}' does not exist")
    if args.text_file.stat().st_size > MAX_TEXT_BYTES:
        raise InputError(f"text file '{args.text_file}' is larger than {MAX_TEXT_BYTES} bytes")
    try:
        return args.text_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"text file '{args.text_file}' is not UTF-8 text") from None


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s: %(message)s")


def run_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze
    from .cache import ResultCache
    from .export import export_run
    from .session_log import entry_from_result
    from .settings import AnalysisSettings

    text = _read_text(args)
    settings = AnalysisSettings(
        max_tokens=args.max_tokens, exclude_special_tokens=args.exclude_special_tokens, top_k=args.top_k,
        target_position=args.target_position, mask_word=args.mask_word, compute_gradients=not args.no_gradients,
        integrated_gradients=args.integrated_gradients,
        ig_steps=args.ig_steps, n_clusters=args.n_clusters, lens_position=args.lens_position, lens_full_grid=args.lens_full_grid,
        animations=not args.no_animations)
    out: Path = args.out
    if out.exists() and out.is_file() and out.suffix.lower() != ".zip":
        raise InputError(f"--out '{out}' is an existing file; give a .zip path or a folder")
    cache = None if args.no_cache else ResultCache(args.cache_dir)
    t0 = time.perf_counter()
    result = analyze(args.model, text, settings=settings, cache=cache, dtype=args.dtype, device=args.device)
    entry = entry_from_result(result)
    path, _run = export_run(result, out, [entry], hidden_states=args.hidden_states)
    if not args.quiet:
        print(f"wrote {path} ({result.model['model_id']}, {result.n_tokens} tokens, {result.n_layers} layers, "
              f"{'cache hit' if result.cache_hit else 'computed'}, {time.perf_counter() - t0:.1f} s)")
        if result.predictions is not None and result.predictions.kind == "mask_fill" and result.predictions.message:
            print(f"note: {result.predictions.message}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from .models import load_model
    from .predictions import GenerationSettings, generate_stream

    text = _read_text(args)
    gen = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                             top_p=args.top_p, seed=args.seed, use_chat_template=not args.no_chat_template,
                             system_prompt=args.system)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
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
        if args.command == "analyze":
            return run_analyze(args)
        if args.command == "generate":
            return run_generate(args)
        parser.error(f"unknown command {args.command}")
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except TMAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for a user, unless asked for
        if getattr(args, "debug", False):
            raise
        line = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: unexpected {type(exc).__name__}: {line} (rerun with --debug for details)", file=sys.stderr)
        return EXIT_INTERNAL
    return 0
