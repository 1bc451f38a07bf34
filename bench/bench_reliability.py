"""What the reliability layer costs (issue 15): the guards before a load, the cache's fault handling, and analyses of
one shared model from 4 threads against the same 4 run one after the other.

    python bench/bench_reliability.py

Prints a markdown table of medians. The machine is shared: read the ratios, and the load average printed with it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import load_gpt2_small, timeit

TEXTS = [
    "The cat sat on the mat. " * 8,
    "Paris is the capital of France. " * 8,
    "A bird flew over the house. " * 8,
    "Attention heads look at previous tokens. " * 8,
]


def main() -> None:
    from core.analysis.pipeline import analyze
    from core.infra import guards
    from core.model.loading import resolve_source
    from core.run.cache import ResultCache

    loaded = load_gpt2_small()
    config = json.loads((Path(loaded.local_path or "") / "config.json").read_text())
    rows: list[tuple[str, float]] = []
    rows.append(
        ("estimate_parameters (GPT-2-small config)", timeit(lambda: guards.estimate_parameters(config), repeat=200))
    )
    rows.append(
        (
            "check_model_id + resolve_source (hub id, offline)",
            timeit(lambda: _swallow(lambda: resolve_source("some-org/some-model")), repeat=50),
        )
    )
    rows.append(
        (
            "check_model_id (5000-character id, refused)",
            timeit(lambda: _swallow(lambda: guards.check_model_id("x" * 5000)), repeat=200),
        )
    )

    tmp = Path(tempfile.mkdtemp(prefix="tma-bench-rel-"))
    try:

        def open_healthy() -> None:
            ResultCache(tmp / "ok", size_limit_mb=64).close()

        def open_corrupt() -> None:
            folder = tmp / "bad"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(tmp / "bad.corrupt", ignore_errors=True)
            folder.mkdir()
            (folder / "cache.db").write_bytes(b"not a database" * 1000)
            c = ResultCache(folder, size_limit_mb=64)
            assert c.take_warnings()
            c.close()

        rows.append(("open a healthy cache", timeit(open_healthy, repeat=10)))
        rows.append(("open a corrupt cache (move aside + fresh)", timeit(open_corrupt, repeat=10)))

        settings = {"compute_gradients": False}
        seq = timeit(lambda: [analyze(loaded, t, **settings) for t in TEXTS], repeat=3)
        with ThreadPoolExecutor(max_workers=4) as pool:
            par = timeit(lambda: list(pool.map(lambda t: analyze(loaded, t, **settings), TEXTS)), repeat=3)
        rows.append(("4 analyses one after the other (GPT-2-small shape, ~64 tokens)", seq))
        rows.append(("the same 4 from 4 threads (model lock serialises)", par))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, {os.cpu_count()} CPUs\n")
    print("| step | median |\n|---|---|")
    for name, secs in rows:
        print(f"| {name} | {_fmt(secs)} |")


def _swallow(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - the refusal is what is timed
        pass


def _fmt(secs: float) -> str:
    if secs < 1e-3:
        return f"{secs * 1e6:.0f} µs"
    if secs < 1:
        return f"{secs * 1e3:.1f} ms"
    return f"{secs:.2f} s"


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
