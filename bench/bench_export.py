"""Benchmark: bundle time (core.export.build_zip) for a GPT-2-small-shaped random model at 128 tokens.

GPT2Config() defaults (12 layers, 12 heads, width 768, vocab 50257), random weights, no download. The tokenizer is
a tiny byte-level BPE trained on the spot; the text is cut to exactly 128 tokens. The analysis runs once (not timed
here); then the export is timed `--repeat` times, per writer and in total. Run from the repository root:

    . .venv/bin/activate && python bench/bench_export.py [--repeat 3] [--tokens 128] [--no-animations]

The machine's load average is printed too: timings on a shared 2-core box vary by 2x with load.

Measured (2026-11-27, the 2-core dev box, CPU, float32, 128 tokens, animations on, 27 files, 5.5 MB ZIP, 14-page
PDF), with other test runs on the box (load average 3.3):
  warm bundle 5.0-6.3 s wall, 4.0-4.3 s CPU time; cold (first call in a process: imports, fonts) 7.7 s wall.
  Per writer, warm: layer-metric figures 0.6 s, prediction plots 0.4-0.7 s, attention/attribution plots and the
  two GIFs 3.0-4.3 s, PDF report 0.6 s, ZIP 0.2 s. At load 5.5 the same run took 7.8-9 s wall, 4.3 s CPU.
  The CPU time (what an idle 2-core box would take, the work being single-threaded matplotlib/fpdf) meets the
  5 s target; the GIF writer is the largest share.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_gpt2_small(folder: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tiny_models import _bpe_tokenizer

    torch.manual_seed(0)
    tok = _bpe_tokenizer(bos=False)
    cfg = GPT2Config(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # defaults: 12 × 12 × 768
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--no-animations", action="store_true")
    ap.add_argument("--ig-steps", type=int, default=4, help="IG steps of the (untimed) analysis; no effect on the export")
    args = ap.parse_args()

    from core.analysis import analyze
    from core.bundle import BUNDLE_WRITERS, foundation_files, zip_bytes
    from core.export import build_zip, export_options
    from core.models import load_model
    from core.session_log import entry_from_result

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        loaded = load_model(str(build_gpt2_small(Path(tmp) / "gpt2")), dtype="float32", device="cpu")
        print(f"model built and loaded in {time.perf_counter() - t:.1f} s "
              f"({loaded.n_layers} layers, {loaded.n_heads} heads, width {loaded.hidden_size})")
        text = " ".join(["The quick brown fox jumps over the lazy dog while the cat sat on the mat."] * 40)
        t = time.perf_counter()
        result = analyze(loaded, text, max_tokens=args.tokens, animations=not args.no_animations,
                          ig_steps=args.ig_steps)
        print(f"analysis: {result.n_tokens} tokens in {time.perf_counter() - t:.1f} s")
        entries = [entry_from_result(result)]

        opts = export_options(entries, hidden_states=False)
        per: dict[str, list[float]] = {}
        totals, cpu_totals = [], []
        for rep in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            files = foundation_files(result)
            per.setdefault("foundation", []).append(time.perf_counter() - t0)
            for module, fn in BUNDLE_WRITERS:
                t = time.perf_counter()
                writer = getattr(importlib.import_module(module, "core"), fn)
                files.update(writer(result, {**opts, "files": files}))
                per.setdefault(f"{module.lstrip('.')}.{fn}", []).append(time.perf_counter() - t)
            t = time.perf_counter()
            data = zip_bytes(files)
            per.setdefault("zip", []).append(time.perf_counter() - t)
            totals.append(time.perf_counter() - t0)
            cpu_totals.append(time.process_time() - c0)
        print(f"\nper writer (s), runs 1..{args.repeat}:")
        for name, ts in per.items():
            print(f"  {name:42s} " + "  ".join(f"{x:6.2f}" for x in ts))
        print(f"  {'TOTAL (wall)':42s} " + "  ".join(f"{x:6.2f}" for x in totals))
        print(f"  {'TOTAL (CPU time of this process)':42s} " + "  ".join(f"{x:6.2f}" for x in cpu_totals))
        t = time.perf_counter()
        z = build_zip(result, entries)
        t_zip = time.perf_counter() - t
        print(f"\nbuild_zip (warm): {t_zip:.2f} s, {len(z) / 1e6:.1f} MB, {len(files)} files "
              f"(PDF {len(files['report.pdf']) / 1e6:.2f} MB); zip of the timed run {len(data) / 1e6:.1f} MB")
        print(f"load average: {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")
        print(f"first (cold) run: {totals[0]:.2f} s; best warm run: {min(totals[1:] or totals):.2f} s wall, "
              f"{min(cpu_totals[1:] or cpu_totals):.2f} s CPU; target < 5 s")


if __name__ == "__main__":
    main()
