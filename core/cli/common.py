"""Shared pieces of the CLI's subcommands (core.cli.main and core/cli/*.py): the one-line parser, exit codes, reading a
text argument, the model options, AnalysisSettings' fields as options (built by core.run.settings.Settings), the
one check of --out and the input files that every subcommand makes before it loads a model (check_paths), and
one-line messages.

Errors end with a non-zero exit and one line on stderr: EXIT_INPUT (2) for bad arguments or input, EXIT_MODEL (1)
for a model that cannot be loaded, EXIT_INTERNAL (3) for a bug.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from core.infra.errors import InputError
from core.infra.presets import BUNDLED_ID, PRESET_IDS
from core.run.settings import DEVICES, DTYPES, AnalysisSettings, max_text_chars

if TYPE_CHECKING:
    from core.run.checkpoint import WorkFolder

EXIT_MODEL, EXIT_INPUT, EXIT_INTERNAL = 1, 2, 3
#: Bytes read at most from a text file (the character bound of AnalysisSettings.check_text applies after).
MAX_TEXT_BYTES = 1_000_000


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage + message on an error; we print one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT, f"error: {message} (see --help)\n")


def fail(message: str) -> NoReturn:
    """Stop the subcommand with a bad-input error (exit 2, one line)."""
    raise InputError(message)


def add_model_options(p: argparse.ArgumentParser, *, flag: str = "--model", required: bool = True) -> None:
    p.add_argument(
        flag,
        required=required,
        help=f"Hugging Face id, local model folder, or a preset ({', '.join(PRESET_IDS)}); "
        f"'{BUNDLED_ID}' is bundled and works offline",
    )


def add_load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype", default="auto", choices=list(DTYPES), help="weights dtype (auto: float32 on CPU, bfloat16 on a GPU)"
    )
    p.add_argument(
        "--device", default="auto", choices=list(DEVICES), help="device (auto: CUDA, then Apple MPS, then the CPU)"
    )
    p.add_argument(
        "--device-map",
        default=None,
        choices=["auto", "none"],
        help="auto: spread the layers over the GPUs (then the CPU) through accelerate, for models larger "
        "than one GPU (default: none, the whole model on --device)",
    )


def add_text_options(p: argparse.ArgumentParser, name: str = "text", *, required: bool = True) -> None:
    """--<name> TEXT | --<name>-file FILE ('-' = standard input)."""
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument(f"--{name}", help=f"the {name.replace('_', ' ')}")
    g.add_argument(f"--{name}-file", type=Path, help="read it from this UTF-8 file ('-' for standard input)")


def read_text(args: argparse.Namespace, name: str = "text") -> str | None:
    """The text of --<name> or --<name>-file (None when neither was given), checked by AnalysisSettings."""
    value = getattr(args, name, None)
    path: Path | None = getattr(args, f"{name}_file", None)
    if value is None and path is None:
        return None
    if value is None:
        assert path is not None
        if str(path) == "-":
            value = sys.stdin.read(MAX_TEXT_BYTES + 1)
        else:
            value = _read_text_file(path)
    return AnalysisSettings.check_text(value)


def _read_text_file(path: Path) -> str:
    """A UTF-8 text file's content, or a one-line InputError that says what is wrong with the path."""
    check_input_file(path, "text file")
    shown = _shown(path)
    try:
        if path.stat().st_size > MAX_TEXT_BYTES:
            fail(
                f"text file '{shown}' is larger than {MAX_TEXT_BYTES:,} bytes (texts are limited to "
                f"{max_text_chars():,} characters)"
            )
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        fail(f"text file '{shown}' is not UTF-8 text")
    except OSError as exc:  # a name too long, no permission, a device that cannot be read…
        fail(f"text file '{shown}' cannot be read ({exc.strerror or type(exc).__name__})")


def _shown(path: Path) -> str:
    return str(path) if len(str(path)) <= 120 else str(path)[:119] + "…"


def check_input_file(path: Path, what: str) -> None:
    """Fail (exit 2, one line) unless `path` is a readable file; '-' (standard input) passes. Says "is a folder",
    "does not exist" or "cannot be read (…)" in words."""
    import os

    if str(path) == "-":
        return
    shown = _shown(path)
    try:
        if path.is_dir():
            fail(f"{what} '{shown}' is a folder, not a file")
        if not path.is_file():
            fail(f"{what} '{shown}' does not exist")
        if not os.access(path, os.R_OK):
            fail(f"{what} '{shown}' cannot be read (permission denied)")
    except OSError as exc:  # a name too long, a broken mount…
        fail(f"{what} '{shown}' cannot be read ({exc.strerror or type(exc).__name__})")


def check_paths(args: argparse.Namespace, inputs: dict[str, str]) -> None:
    """The one check every subcommand makes before it loads a model: each input file named in `inputs`
    ({argument name: what it is, e.g. {"text_file": "text file"}}) that was given is a readable file, and --out
    (when the subcommand has one) can be written (check_out). Fails with exit 2 and one line."""
    for name, what in inputs.items():
        path = getattr(args, name, None)
        if path is not None:
            check_input_file(Path(path), what)
    out = getattr(args, "out", None)
    if out is not None:
        check_out(Path(out))


def add_settings_options(p: argparse.ArgumentParser) -> None:
    """One option per AnalysisSettings field, with its help text and default (a new field appears by itself; the
    rules are core.run.settings.Settings.add_cli_arguments')."""
    AnalysisSettings.add_cli_arguments(p)


def settings_from_args(args: argparse.Namespace) -> AnalysisSettings:
    """AnalysisSettings from the options made by add_settings_options."""
    return AnalysisSettings.from_cli(args)


def out_path(value: str) -> Path:
    """argparse type of --out: an empty value would become '.' (the bundle spilled into the working folder)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty; give a path ending in .zip, or a folder")
    return Path(value)


def check_out(out: Path) -> None:
    """Fail (exit 2) before any analysis when `out` cannot be written: an existing file must be a .zip we may
    replace, an existing folder must be empty or an earlier bundle (it is replaced whole: core.infra.formats.
    write_files), and the nearest existing folder on the way to `out`'s parent — where the bundle is written under
    a temporary name and renamed into place — must be a folder we can create a file in (probed for real, so a
    read-only mount is caught as well as permissions)."""
    import os
    import tempfile

    from core.infra.formats import replaceable_folder

    shown = _shown(out)
    try:
        if out.exists() and out.is_file() and out.suffix.lower() != ".zip":
            fail(f"--out '{shown}' is an existing file; give a .zip path or a folder")
        if out.exists() and out.is_dir() and out.suffix.lower() == ".zip":
            fail(f"--out '{shown}' is an existing folder; give another .zip path")
        if out.is_file() and not os.access(out, os.W_OK):
            fail(f"--out '{shown}' is a read-only file")
        if out.is_dir() and not replaceable_folder(out):
            fail(
                f"--out '{shown}' is a folder that holds other files (no earlier bundle); give a new or empty "
                "folder, or a .zip path"
            )
        probe = out.parent
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
        if not probe.is_dir():
            fail(f"--out '{shown}' cannot be created: '{_shown(probe)}' is a file, not a folder")
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".tma-write-check-"):
            pass
    except OSError as exc:
        fail(f"--out '{shown}' is not writable ({exc.strerror or type(exc).__name__})")


def add_resume_option(p: argparse.ArgumentParser | argparse._ArgumentGroup, unit: str) -> None:
    p.add_argument(
        "--resume",
        action="store_true",
        help=f"continue an interrupted run from the {unit} it finished (kept in OUT.partial/ beside --out; "
        "refused when the model, settings or input differ)",
    )


def open_work(args: argparse.Namespace, fp: dict[str, object], unit: tuple[str, str]) -> WorkFolder:
    """The run's work folder beside --out (core.run.checkpoint): its finished units when --resume (an InputError
    when it holds another run), else a fresh one. Says on stderr what it found (unless --quiet); `unit`: the
    unit's name, singular and plural ("pair", "pairs")."""
    from core.run.checkpoint import WorkFolder, work_path

    path = work_path(args.out)
    work = WorkFolder.open(path, fp, resume=bool(args.resume))
    if not getattr(args, "quiet", False):
        n = work.resumed
        if args.resume and n:
            sys.stderr.write(f"note: resuming from '{_shown(path)}': {n} finished {unit[n != 1]} kept\n")
        elif args.resume:
            sys.stderr.write(f"note: --resume: nothing finished in '{_shown(path)}'; starting from the beginning\n")
        elif (path / "run.json").is_file():
            sys.stderr.write(f"note: '{_shown(path)}' holds an interrupted run; starting over (--resume continues)\n")
    return work


class ProgressBar:
    """A core.run.progress callback drawn as one tqdm bar on stderr: the stage in words ("Pair 3 of 8 (1.2
    pairs/s)"), the whole run's share done. `show=False` draws nothing. Use as a context manager (closes the bar)."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.bar: Any = None

    def __call__(self, label: str, fraction: float) -> None:
        if not self.show:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                desc=label,
                total=100,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
                bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}]",
            )
        # drawn at once: tqdm skips updates closer than 0.1 s apart, and the last stage ("Pair 3 of 3") must show
        self.bar.set_description_str(label, refresh=True)
        self.bar.update(max(0.0, round(100 * fraction, 1) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def print_warnings(warnings: list[str]) -> None:
    """The result's warnings (truncation, ignored options, cache faults) on stderr, one line each."""
    for w in warnings:
        sys.stderr.write(f"warning: {one_line(w)}\n")


def one_line(message: str, limit: int = 400) -> str:
    """A message as one short line: newlines folded, long ones shortened."""
    s = " ".join(str(message).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"
