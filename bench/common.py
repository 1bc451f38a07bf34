"""Shared benchmark fixtures: a random-weight model of GPT-2-small shape (12 layers, 12 heads, 768 wide, 50257
vocabulary) built from its config, with a small trained tokenizer. No download; cached under $TMPDIR."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CACHE = Path(tempfile.gettempdir()) / "tma-bench"

TEXT_128 = "The quick brown fox jumps over the lazy dog while the cat sat on the mat and watched. " * 20


def gpt2_small_folder() -> Path:
    """Folder with a random GPT-2-small-shaped model (built once)."""
    folder = CACHE / "gpt2-small-random"
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from tiny_models import _bpe_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tok = _bpe_tokenizer(bos=False)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def load_gpt2_small():
    from core.model.loading import load_model

    return load_model(str(gpt2_small_folder()), dtype="float32", device="cpu")


def text_of_tokens(loaded, n: int = 128) -> str:
    """A text that tokenises to at least n tokens (analyze truncates to max_tokens=n)."""
    text = TEXT_128
    while len(loaded.tokenizer(text)["input_ids"]) < n:
        text += TEXT_128
    return text


#: The clock `timeit` reads: wall time, or process CPU time after `set_clock(cpu=True)` (a script's --cpu).
CLOCK = time.perf_counter


def set_clock(*, cpu: bool) -> None:
    """Time with process CPU time (cpu=True: robust when other jobs share the machine; with one torch thread it
    equals the work done) or wall time."""
    global CLOCK
    CLOCK = time.process_time if cpu else time.perf_counter


def timeit(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Median time of fn() in seconds on CLOCK, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = CLOCK()
        fn()
        times.append(CLOCK() - t)
    return statistics.median(times)


def add_clock_args(ap) -> None:
    """--threads N and --cpu, the timing options of the benchmark scripts; `use_clock_args` applies them."""
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: leave torch's)")
    ap.add_argument("--cpu", action="store_true", help="process CPU time instead of wall time (use with --threads 1)")


def use_clock_args(args) -> None:
    """Apply --threads (torch threads) and --cpu (`set_clock`) of `add_clock_args`."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    set_clock(cpu=args.cpu)


def forward_rows(loaded, text: str, settings, ids, repeat: int) -> list[tuple[str, float]]:
    """The two reference rows of a per-step benchmark, (name, median seconds on CLOCK): the bare forward pass of
    `ids` (input ids in, logits out) and the capturing one of `text` (attentions + hidden states returned)."""
    import torch

    from core.model.capture import capture

    def bare():
        with torch.inference_mode():
            loaded.model(input_ids=ids)

    return [
        (f"bare forward pass ({ids.shape[1]} tokens)", timeit(bare, repeat=repeat)),
        (
            "capturing forward pass (attentions + hidden states)",
            timeit(lambda: capture(loaded, text, settings), repeat=repeat),
        ),
    ]
