"""Corpus mode at scale: the driver's peak memory and the wall time for 10³, 10⁴, 10⁵ short texts, per engine.

    python bench/bench_ray_memory.py [--texts 1000 10000 100000] [--engines local ray1 ray2] [--timeout 1800]

Each run is `python -m core corpus --model TINY --text-file F --out OUT --engine … --no-cache` executed through
`core.cli.main.main` in a fresh child process (`--child`), on the tiny random GPT-2 of tests/tiny_models.py (2 blocks,
d = 32; written once under $TMPDIR/tma-bench/tiny-gpt2), with short texts of 4–12 random words of its training corpus
(seeded). Engines: `local` (this process), `ray1` / `ray2` (`--engine ray --workers 1|2`, a local Ray cluster started
by the driver, as a user without a cluster gets).

Per run, measured inside the driver process (the one that runs the CLI; a sampling thread reads /proc/self/status
every 20 ms):

* peak_rss_mb: ru_maxrss of the driver (everything it mapped and touched, including pages of Ray's shared-memory
  object store it read);
* peak_anon_mb: the peak of RssAnon, the driver's own heap (Python objects, numpy arrays) without shared pages;
* base_anon_mb: RssAnon just before the run (the interpreter with this script's imports);
* worker_peak_rss_mb: the largest RSS of any Ray worker process (`ray::…`) seen, sampled every 0.5 s with psutil;
* wall_s and texts_per_s (texts over the whole command: cluster start, model loads, both stages, the pooled metrics
  with 200 bootstrap resamples and the bundle), with the 1-minute load average before and after.

`--stats` measures instead the CPU time of one text's statistics (the five single-text metrics at every layer, as a
worker computes them after its forward pass) at the tiny, GPT-2-small and 8 B (33 × 128 × 4096) shapes.

One JSON line per run on stdout; a markdown table at the end. On a shared machine read the memory columns as exact
and the times as an order of magnitude (the load average says how busy the machine was).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT / "tests"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_DIR = Path(os.environ.get("TMA_BENCH_DIR") or Path(tempfile.gettempdir()) / "tma-bench")
ENGINES = {"local": [], "ray1": ["--engine", "ray", "--workers", "1"], "ray2": ["--engine", "ray", "--workers", "2"]}


def tiny_model() -> Path:
    folder = BENCH_DIR / "tiny-gpt2"
    if not (folder / "model.safetensors").is_file():
        from tiny_models import build_tiny

        build_tiny("gpt2", folder)
    return folder


def corpus_file(n: int, seed: int = 0) -> Path:
    """n short texts (4–12 random words of the tiny model's corpus), one per line, written once."""
    path = BENCH_DIR / f"short-texts-{n}-{seed}.txt"
    if path.is_file():
        return path
    import numpy as np
    from tiny_models import CORPUS

    words = sorted({w.strip(".,").lower() for line in CORPUS for w in line.split()} - {""})
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(words, size=int(rng.integers(4, 13)))) + "." for _ in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(n: int, engine: str) -> dict[str, Any]:
    """One CLI run in this process, with the driver's memory sampled (see the module docstring)."""
    import psutil

    from core.cli.main import main

    model, texts = tiny_model(), corpus_file(n)
    out = Path(tempfile.mkdtemp(prefix="tma-ray-mem-")) / "out"
    argv = ["corpus", "--model", str(model), "--text-file", str(texts), "--out", str(out), "--max-texts", str(n),
            "--no-cache", "--no-progress", "--quiet", "--dtype", "float32", "--device", "cpu",
            *ENGINES[engine]]  # fmt: skip
    peak = {"anon": 0, "shmem": 0, "worker": 0}
    stop = threading.Event()
    me = psutil.Process()

    def sample() -> None:
        k = 0
        while not stop.wait(0.02):
            peak["anon"] = max(peak["anon"], _status_kb("RssAnon"))
            peak["shmem"] = max(peak["shmem"], _status_kb("RssShmem"))
            k += 1
            if k % 25 == 0:
                for p in me.children(recursive=True):
                    try:
                        if p.name().startswith("ray::") or "ray::" in " ".join(p.cmdline()[:1]):
                            peak["worker"] = max(peak["worker"], p.memory_info().rss // 1024)
                    except psutil.Error:
                        pass

    base = _status_kb("RssAnon")
    load0 = os.getloadavg()[0]
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t = time.perf_counter()
    rc = main(argv)
    wall = time.perf_counter() - t
    stop.set()
    th.join()
    peak["anon"] = max(peak["anon"], _status_kb("RssAnon"))
    return {
        "texts": n,
        "engine": engine,
        "rc": rc,
        "wall_s": round(wall, 1),
        "texts_per_s": round(n / wall, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_anon_mb": round(peak["anon"] / 1024, 1),
        "peak_shmem_mb": round(peak["shmem"] / 1024, 1),
        "base_anon_mb": round(base / 1024, 1),
        "worker_peak_rss_mb": round(peak["worker"] / 1024, 1) if peak["worker"] else None,
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }


def stats_cost(shapes: list[tuple[int, int, int]], repeat: int = 3) -> list[dict[str, Any]]:
    """CPU seconds of one text's statistics (`core.studies.corpus.text_statistics`: the five single-text metrics at
    every layer, single-threaded, as a Ray worker computes them after its forward pass) on random states of
    shape [L+1, T, D]: the part of a GPU worker's time per text that a faster GPU does not shorten."""
    import numpy as np

    from core.studies.corpus import text_statistics

    out = []
    rng = np.random.default_rng(0)
    for layers, tokens, width in shapes:
        H = rng.standard_normal((layers, tokens, width)).astype(np.float32)
        keep = np.ones(tokens, dtype=bool)
        ranks = np.arange(min(4, tokens))
        text_statistics(H, keep, ranks)  # warm-up
        cpu = []
        for _ in range(repeat):
            c = time.process_time()
            text_statistics(H, keep, ranks)
            cpu.append(time.process_time() - c)
        s = min(cpu)
        out.append({"shape": [layers, tokens, width], "stats_cpu_s_per_text": round(s, 4),
                    "texts_per_s_per_core": round(1 / s, 1), "load": round(os.getloadavg()[0], 2)})  # fmt: skip
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| texts | engine | wall s | texts/s | driver peak RSS MB | driver peak anon MB | worker peak RSS MB | load |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['texts']} | {r['engine']} | {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['texts']} | {r['engine']} | {r['wall_s']} | {r['texts_per_s']} | {r['peak_rss_mb']} | "
            f"{r['peak_anon_mb']} | {r['worker_peak_rss_mb'] or '–'} | {r['load_before']}→{r['load_after']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--engines", nargs="+", choices=sorted(ENGINES), default=["local", "ray1", "ray2"])
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run before it is stopped")
    ap.add_argument(
        "--stats",
        action="store_true",
        help="only the CPU cost of one text's statistics at the tiny, GPT-2-small (64 and 128 tokens) and 8 B shapes",
    )
    ap.add_argument("--child", nargs=2, metavar=("N", "ENGINE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1])), flush=True)
        return
    if args.stats:
        for row in stats_cost([(3, 12, 32), (13, 64, 768), (13, 128, 768), (33, 128, 4096)]):
            print(json.dumps(row), flush=True)
        return
    tiny_model()
    rows = []
    for n in args.texts:
        corpus_file(n)
        for engine in args.engines:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(n), engine]
            # its own session: a run past the timeout is stopped with the Ray processes it started
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                    start_new_session=True)  # fmt: skip
            try:
                stdout, stderr = proc.communicate(timeout=args.timeout)
                lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
                row = json.loads(lines[-1]) if lines else {"texts": n, "engine": engine, "error": stderr[-300:]}
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                row = {"texts": n, "engine": engine, "error": f"stopped after {args.timeout:.0f} s"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
