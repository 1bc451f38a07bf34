"""The bundle writer by writer: GPT-2-small shape (random weights, no download) at 128 tokens.

    python -m bench.bench_export [--repeat 3] [--tokens 128] [--no-animations]

`python -m bench` reports the whole bundle; this script splits it over core.export.bundle.WRITERS, the PDF report and
the ZIP, in wall and process CPU time (the CPU time is what an idle machine would take: the writers are
single-threaded matplotlib / fpdf work), with the load average, because timings on a shared machine vary with load.
"""

from __future__ import annotations

import argparse
import os
import time

from bench.run import _settings, build_shape, text_of_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--no-animations", action="store_true")
    args = ap.parse_args()

    from core import analyze
    from core.export.bundle import WRITERS
    from core.export.report import report_files
    from core.infra.formats import zip_bytes
    from core.infra.options import ExportOptions
    from core.infra.threads import gc_paused
    from core.model.loading import load_model

    loaded = load_model(str(build_shape("gpt2")), dtype="float32", device="cpu")
    result = analyze(
        loaded, text_of_tokens(loaded.tokenizer, args.tokens), settings=_settings(max_tokens=args.tokens), views="all"
    )
    opts = ExportOptions(animations=not args.no_animations)
    per: dict[str, list[float]] = {}
    wall, cpu = [], []
    for _ in range(args.repeat + 1):  # the first run is cold (imports, fonts) and not counted
        t0, c0 = time.perf_counter(), time.process_time()
        files: dict[str, bytes] = {}
        with gc_paused():  # as core.export.bundle.bundle_files runs them
            for writer in WRITERS:
                t = time.perf_counter()
                files.update(writer(result, opts))
                per.setdefault(writer.__name__, []).append(time.perf_counter() - t)
            t = time.perf_counter()
            files.update(report_files(result, files, opts))
            per.setdefault("report_files (PDF)", []).append(time.perf_counter() - t)
        t = time.perf_counter()
        data = zip_bytes(files)
        per.setdefault("zip", []).append(time.perf_counter() - t)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(
        f"GPT-2-small shape, {result.n_tokens} tokens, {len(files)} files, {len(data) / 1e6:.1f} MB; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; warm runs (s):"
    )
    for name, ts in per.items():
        print(f"  {name:34s} " + "  ".join(f"{x:6.2f}" for x in ts[1:]))
    print(f"  {'TOTAL wall':34s} " + "  ".join(f"{x:6.2f}" for x in wall[1:]))
    print(f"  {'TOTAL process CPU':34s} " + "  ".join(f"{x:6.2f}" for x in cpu[1:]))


if __name__ == "__main__":
    main()
