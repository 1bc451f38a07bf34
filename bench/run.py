"""The benchmark: one markdown table of what an analysis costs next to the bare forward pass.

    python -m bench                 # GPT-2-small, BERT-base, TinyLlama-1.1B shapes at 32 / 128 / 512 tokens
    python -m bench --quick         # ~1 minute: GPT-2 and BERT shapes at 128 tokens, 3 repeats
    python -m bench --long          # adds the TinyLlama shape at 2048 tokens (peak memory; --long-tokens 2048,4096)
    python -m bench --narrow        # adds the narrow Llama (TinyLlama's attention geometry at width 256, float32, no
                                    # gradients: the attention maps dominate) at the --long-tokens lengths
    python -m bench --device cuda   # the same on a GPU (bench/gpu_check.sh runs it, with --no-views)

Models are random-weight models built from their configs (GPT2Config(), BertConfig(), and the TinyLlama-1.1B
LlamaConfig of issue 14) with a small tokenizer trained on the spot: no download. They are written once under
$TMA_BENCH_DIR (default $TMPDIR/tma-bench). The TinyLlama shape runs in bfloat16 (2.2 GB of weights, the dtype
a user runs it in on a CPU), the others in float32 (on a GPU: the device's default dtype, see --dtype).

Columns, per shape and text length T (all times are medians of `--repeat` interleaved repeats: floor, analysis,
gradient step and cache hit take turns, so that a busy machine slows each of them alike; on a shared machine
read the ratios, not the seconds):

* floor: the bare forward pass *with* eager attention weights and hidden states (what any hand-written
  pipeline that shows attentions needs), under torch.inference_mode;
* analyze: `core.analyze()` without gradients (layer metrics, attention analysis, rollout, predictions, the
  default logit lens), and `ratio` = analyze / floor;
* grad: the gradient step of the default analysis (gradient × input and per-head scores: one forward and one
  backward pass);
* hit: `analyze()` answered by the disk cache (key, read, deserialise), and `hit %` = hit / analyze;
* views: `add_views(result, "all")`, the deeper views computed on request (direct logit attribution, flow routes,
  neuron factors, query–key vectors; one more forward pass shared by all), as the Layer Analysis page, the export and
  the CLI add them; below the table each view's share of it, its process CPU time next to the floor's, the first-visit
  wait (Layer Analysis opened PAUSE_S = 5 s after the analysis, the views running as the app's background job
  since the analysis ended) and a plain torch.matmul's GFLOP/s for reference;
* peak RSS: ru_maxrss of a fresh process that loads the model and runs one analysis with the default settings
  (gradients on) at T tokens: one process per row, so that peaks of different rows do not mix;
* bundle: the ZIP bundle of the default analysis with every view (figures, animations, PDF) at 128 tokens.

The table goes to standard output and to artifacts/bench.md (with the machine, the load average and the
command). Each measurement runs in its own subprocess (`--child`), which prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (str(ROOT / "tests"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

BENCH_DIR = Path(os.environ.get("TMA_BENCH_DIR") or Path(tempfile.gettempdir()) / "tma-bench")
ARTIFACT = ROOT / "artifacts" / "bench.md"

#: shape name -> (label, dtype on a CPU). Configs are in `build_shape`.
SHAPES: dict[str, tuple[str, str]] = {
    "gpt2": ("GPT-2-small shape (124 M)", "float32"),
    "bert": ("BERT-base shape (110 M)", "float32"),
    "tinyllama": ("TinyLlama-1.1B shape", "bfloat16"),
    # TinyLlama's attention geometry (22 layers, 32 heads, 4 kv heads) at width 256: the maps dominate its memory
    "narrow-llama": ("narrow Llama (TinyLlama attention, width 256)", "float32"),
}
TOKENS = (32, 128, 512)
#: Address-space limit of a memory child in GB (--memory-limit-gb), 0 = none.
MEMORY_LIMIT_GB = 0.0
BUNDLE_TOKENS = 128
#: Measure add_views (the views column); --no-views skips it (the GPU check keeps under its 5 minutes).
MEASURE_VIEWS = True
SENTENCE = "The quick brown fox jumps over the lazy dog while the cat sat on the mat and watched the birds. "


# ----------------------------------------------------------------------------------------------------------------
# Model folders


def build_shape(shape: str) -> Path:
    """Folder of the random-weight model of `shape` (built once, then reused)."""
    folder = BENCH_DIR / f"{shape}-shape-random"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    import torch
    from tiny_models import _bpe_tokenizer, _wordpiece_tokenizer
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if shape == "gpt2":
        tok = _bpe_tokenizer(bos=False)
        model: Any = GPT2LMHeadModel(GPT2Config())
    elif shape == "bert":
        tok = _wordpiece_tokenizer()
        model = BertForMaskedLM(BertConfig())
    elif shape == "tinyllama":
        tok = _bpe_tokenizer(bos=True)
        cfg = LlamaConfig(
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            vocab_size=32000,
            max_position_embeddings=4096,  # rotary: only the length allowed (4096-token memory rows)
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # never materialise 4.4 GB of float32 weights
        try:
            model = LlamaForCausalLM(cfg)
        finally:
            torch.set_default_dtype(old)
    elif shape == "narrow-llama":
        tok = _bpe_tokenizer(bos=True)
        model = LlamaForCausalLM(
            LlamaConfig(
                hidden_size=256,
                intermediate_size=704,
                num_hidden_layers=22,
                num_attention_heads=32,
                num_key_value_heads=4,
                vocab_size=32000,
                max_position_embeddings=4096,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
            )
        )
    else:
        raise SystemExit(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def text_of_tokens(tokenizer: Any, n: int) -> str:
    """A text that tokenises to at least n tokens (the analysis truncates it to exactly n)."""
    text = SENTENCE
    while len(tokenizer(text)["input_ids"]) < n:
        text += SENTENCE
    return text


# ----------------------------------------------------------------------------------------------------------------
# Measurements (run in a child process)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024


def _settings(**values: Any) -> Any:
    """AnalysisSettings with the given values, leaving out fields this version of core does not have."""
    from core.run.settings import AnalysisSettings

    known = {f.name for f in dataclasses.fields(AnalysisSettings)}
    return AnalysisSettings(**{k: v for k, v in values.items() if k in known})


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _load(shape: str, dtype: str, device: str, device_map: str | None = None) -> Any:
    from core.model.loading import load_model

    kw = {"device_map": device_map} if device_map else {}
    return load_model(str(build_shape(shape)), dtype=dtype, device=device, **kw)


def child_timings(shape: str, tokens: list[int], repeat: int, dtype: str, device: str, bundle: bool) -> dict:
    """Interleaved medians of floor / analyze / grad / hit for each length; the bundle at BUNDLE_TOKENS."""
    import torch

    from core.run.cache import ResultCache

    lm = _load(shape, dtype, device)
    out: dict[str, Any] = {
        "shape": shape,
        "dtype": lm.dtype,
        "device": str(lm.device),
        "threads": torch.get_num_threads(),
        "rows": {},
    }
    cache_dir = tempfile.mkdtemp(prefix="tma-bench-cache-")
    cache = ResultCache(cache_dir, size_limit_mb=4096)
    for T in tokens:
        out["rows"][str(T)] = _time_length(lm, T, repeat, device, cache, bundle)
    cache.close()
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _time_length(lm: Any, T: int, repeat: int, device: str, cache: Any, bundle: bool) -> dict:
    """One row of child_timings: interleaved floor / analyze / grad / hit at T tokens (and the bundle)."""
    import torch

    from core import analyze
    from core.analysis.pipeline import add_views
    from core.steps.attribution import gradient_x_input

    text = text_of_tokens(lm.tokenizer, T)
    st = _settings(max_tokens=T, compute_gradients=False, animations=False)
    enc = lm.tokenizer(text, return_tensors="pt", truncation=True, max_length=T)
    ids, mask = enc["input_ids"].to(lm.device), enc["attention_mask"].to(lm.device)

    def floor() -> None:
        with torch.inference_mode():
            lm.model(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
        _sync(device)

    res: list[Any] = []

    def analysis() -> None:
        res[:] = [analyze(lm, text, settings=st)]
        _sync(device)

    def grad() -> None:
        r = res[0]
        pos = r.target_position
        with lm.lock:
            gradient_x_input(lm, ids, mask, pos, _predicted(r), heads=True)
        _sync(device)

    def hit() -> None:
        r = analyze(lm, text, settings=st, cache=cache)
        assert r.cache_hit, "the cache did not answer"

    def views() -> None:
        add_views(lm, res[0], "all")  # res[0] holds no views: each call computes all of them
        _sync(device)

    floor()
    analysis()  # warm-up; also the result the gradient step and the cache need
    cache.set(res[0].cache_key, res[0])
    hit()
    grad()
    fns: list[tuple[str, Callable[[], None]]] = [
        ("floor", floor),
        ("analyze", analysis),
        ("grad", grad),
        ("hit", hit),
        *([("views", views)] if MEASURE_VIEWS else []),
    ]
    samples: dict[str, list[float]] = {k: [] for k, _ in fns}
    for _ in range(repeat):
        for name, fn in fns:
            t = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t)
    row: dict[str, Any] = {k: statistics.median(v) for k, v in samples.items()}
    row["samples"] = samples
    row["n_tokens"] = res[0].n_tokens
    row["steps"] = {k: round(v, 4) for k, v in res[0].timings.items()}
    row["matmul_gflops"] = matmul_gflops(lm, T, device)
    if MEASURE_VIEWS:
        cpu = {name: _cpu_time(fn) for name, fn in (("floor", floor), ("views", views))}
        row["floor_cpu"], row["views_cpu"] = cpu["floor"], cpu["views"]
        row["view_steps"] = {
            k: round(v, 4) for k, v in add_views(lm, res[0], "all").timings.items() if k not in res[0].timings
        }
        row["first_visit"] = first_visit_wait(lm, res[0], device)
    if device.startswith("cuda"):
        row["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    if bundle and T == BUNDLE_TOKENS:
        # the default analysis (gradients on) with every deeper view, as the app's export and the CLI write it
        full = analyze(lm, text, settings=_settings(max_tokens=T), views="all")
        row["bundle"], row["bundle_mb"], row["bundle_files"] = _time_bundle(full, repeat=2)
    return row


#: The pause between the end of the analysis and the user opening Layer Analysis (the first-visit wait).
PAUSE_S = 5.0


def _cpu_time(fn: Callable[[], None]) -> float:
    """Process CPU time of one call (all threads): steadier than wall time on a shared machine."""
    t = time.process_time()
    fn()
    return time.process_time() - t


def first_visit_wait(lm: Any, result: Any, device: str) -> float:
    """Seconds a user waits for every view when opening Layer Analysis PAUSE_S after the analysis ended: the app
    starts add_views as a background job right then (app.loading.background_views); the page waits for the rest."""
    import threading

    from core.analysis.pipeline import add_views

    done = threading.Event()

    def job() -> None:
        add_views(lm, result, "all")
        _sync(device)
        done.set()

    threading.Thread(target=job, daemon=True).start()
    time.sleep(PAUSE_S)
    t = time.perf_counter()
    done.wait()
    return time.perf_counter() - t


def matmul_gflops(lm: Any, T: int, device: str) -> float:
    """GFLOP/s of a plain torch.matmul [T, D] × [D, 4D] in the model's dtype on its device (the reference peak)."""
    import torch

    D = int(lm.model.config.hidden_size)
    dtype = next(lm.model.parameters()).dtype
    a = torch.randn(T, D, dtype=dtype, device=lm.device)
    b = torch.randn(D, 4 * D, dtype=dtype, device=lm.device)
    with torch.inference_mode():
        torch.matmul(a, b)
        _sync(device)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            torch.matmul(a, b)
            _sync(device)
            best = min(best, time.perf_counter() - t)
    return 2.0 * T * D * 4 * D / best / 1e9


def _predicted(result: Any) -> int:
    att = result.attribution
    if att is not None and att.predicted_id is not None:
        return int(att.predicted_id)
    return 0


def _time_bundle(result: Any, repeat: int) -> tuple[float, float, int]:
    """Best of `repeat` warm runs of the whole ZIP bundle (the first, cold run is not counted)."""
    from core.export.zip_export import build_zip

    times = []
    data = b""
    for _ in range(repeat + 1):
        t = time.perf_counter()
        data = build_zip(result)  # the default export: figures, animations, PDF
        times.append(time.perf_counter() - t)
    import io
    import zipfile

    n_files = len(zipfile.ZipFile(io.BytesIO(data)).namelist())
    return min(times[1:]), len(data) / 1e6, n_files


def child_memory(shape: str, T: int, dtype: str, device: str, device_map: str | None, gradients: bool = True) -> dict:
    """Peak RSS of load + one analysis with the default settings (gradients on unless `gradients` is False) at T
    tokens."""
    from core import analyze

    if MEMORY_LIMIT_GB:  # a shared machine: fail with MemoryError rather than wake the OOM killer
        limit = int(MEMORY_LIMIT_GB * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    out: dict[str, Any] = {"baseline_mb": peak_rss_mb()}
    t = time.perf_counter()
    lm = _load(shape, dtype, device, device_map)
    out["load_s"] = time.perf_counter() - t
    out["after_load_mb"] = peak_rss_mb()
    text = text_of_tokens(lm.tokenizer, T)
    t = time.perf_counter()
    r = analyze(lm, text, settings=_settings(max_tokens=T, **({} if gradients else {"compute_gradients": False})))
    out["analyze_s"] = time.perf_counter() - t
    out["peak_rss_mb"] = peak_rss_mb()
    out["n_tokens"] = r.n_tokens
    out["dtype"] = lm.dtype
    out["steps"] = {k: round(v, 3) for k, v in r.timings.items()}
    out["gradients"] = r.attribution is not None and r.attribution.grad_x_input is not None
    return out


# ----------------------------------------------------------------------------------------------------------------
# The parent: children, table, artifact


def _run_child(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "bench.run", "--child", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"child {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def render(results: list[dict], memory: dict[tuple[str, int], dict], meta: dict) -> str:
    lines = [
        "| shape | dtype | T | floor | analyze | ratio | grad | hit | hit % | views | peak RSS | bundle |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        label = SHAPES[res["shape"]][0]
        for T, row in res["rows"].items():
            mem = memory.get((res["shape"], int(T)))
            rss = f"{mem['peak_rss_mb'] / 1024:.2f} GB" if mem else "–"
            if "gpu_peak_mb" in row:
                rss += f" (GPU {row['gpu_peak_mb'] / 1024:.2f} GB)"
            bundle = (
                f"{row['bundle']:.2f} s ({row['bundle_files']} files, {row['bundle_mb']:.1f} MB)"
                if "bundle" in row
                else "–"
            )
            lines.append(
                f"| {label} | {res['dtype']} | {row['n_tokens']} | {_fmt_s(row['floor'])} | {_fmt_s(row['analyze'])} | "
                f"{row['analyze'] / row['floor']:.2f}× | {_fmt_s(row['grad'])} | {_fmt_s(row['hit'])} | "
                f"{100 * row['hit'] / row['analyze']:.1f} % | {_fmt_s(row.get('views'))} | {rss} | {bundle} |"
            )
    timed = {(r["shape"], int(T)) for r in results for T in r["rows"]}
    for (shape, T), mem in sorted(memory.items()):
        if (shape, T) in timed:
            continue
        lines.append(
            f"| {SHAPES[shape][0]} | {mem['dtype']} | {mem['n_tokens']} | – | "
            f"{_fmt_s(mem['analyze_s'])} (gradients {'on' if mem.get('gradients') else 'off'}) | – | – | – | – | – | "
            f"{mem['peak_rss_mb'] / 1024:.2f} GB | – |"
        )
    head = [
        f"# Benchmark ({meta['when']})",
        "",
        f"`{meta['command']}` on {meta['machine']}; device {meta['device']}; torch {meta['torch']}, "
        f"{meta['threads']} threads; load average {meta['load_before']} before, {meta['load_after']} after; "
        f"{meta['repeat']} interleaved repeats, medians; took {meta['took_s']:.0f} s.",
        "",
        "floor = bare forward with eager attention weights and hidden states; analyze = core.analyze() without "
        "gradients; ratio = analyze / floor; grad = the gradient step (gradient × input + head scores); "
        "hit = analyze() answered by the disk cache; views = add_views(): the deeper views (direct logit "
        "attribution, flow routes, neuron factors, query–key; one more forward pass), computed on request; "
        "peak RSS = load + one default analysis (gradients on) in a fresh process; bundle = the ZIP of the "
        "default analysis with every view (as the export and the CLI write it).",
        "",
    ]
    steps = []
    views = [
        "",
        "Views (add_views of every view; shares from result.timings; cpu = process CPU time of one call; first "
        f"visit = wait for all views when Layer Analysis opens {PAUSE_S:g} s after the analysis, the views running "
        "as the background job; matmul = torch.matmul [T, D] × [D, 4D] in the model's dtype):",
        "",
        "| shape | T | floor | views | views / floor | cpu views / cpu floor | first visit | first visit / floor "
        "| matmul | shares |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for res in results:
        for T, row in res["rows"].items():
            if "view_steps" not in row:
                continue
            vs = row["view_steps"]
            total = sum(vs.values()) or 1.0
            shares = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in vs.items())
            views.append(
                f"| {SHAPES[res['shape']][0]} | {row['n_tokens']} | {_fmt_s(row['floor'])} | {_fmt_s(row['views'])} | "
                f"{row['views'] / row['floor']:.1f}× | {row['views_cpu'] / row['floor_cpu']:.1f}× | "
                f"{_fmt_s(row['first_visit'])} | {row['first_visit'] / row['floor']:.2f}× | "
                f"{row['matmul_gflops']:.0f} GFLOP/s | {shares} |"
            )
    if len(views) == 5:  # no row: no table
        views = []
    for res in results:
        for T, row in res["rows"].items():
            steps.append(
                f"- {res['shape']} @ {T}: "
                + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in row["steps"].items())
                + "; views: "
                + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in row.get("view_steps", {}).items())
            )
    for (shape, T), mem in sorted(memory.items()):
        steps.append(
            f"- {shape} @ {T}, default analysis (gradients {'on' if mem['gradients'] else 'off'}): load "
            f"{mem['load_s']:.1f} s, analysis {mem['analyze_s']:.1f} s; "
            + ", ".join(f"{k} {v:.2f} s" for k, v in mem["steps"].items())
        )
    return "\n".join(head + lines + views + ["", "Steps of one analysis (from result.timings):", "", *steps, ""])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="GPT-2 and BERT shapes at 128 tokens only (~1 minute)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {', '.join(SHAPES)}")
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="comma-separated text lengths")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved repeats per measurement (median)")
    ap.add_argument("--long", action="store_true", help="also the peak memory of a long TinyLlama analysis")
    ap.add_argument(
        "--long-tokens",
        default="2048",
        help="its lengths, comma-separated (default 2048; 4096 for the long-context row)",
    )
    ap.add_argument(
        "--narrow",
        action="store_true",
        help="also the peak memory of the narrow Llama (TinyLlama's attention geometry, width 256, float32, no "
        "gradients) at the --long-tokens lengths: the attention maps dominate its memory",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS processes")
    ap.add_argument("--no-views", action="store_true", help="skip the views column (add_views of every view)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    ap.add_argument(
        "--dtype", default=None, help="dtype of every shape (default: float32, TinyLlama bfloat16; auto on a GPU)"
    )
    ap.add_argument(
        "--large-repeat",
        type=int,
        default=None,
        help="repeats for the TinyLlama shape (default: --repeat); its forward pass takes seconds",
    )
    ap.add_argument(
        "--memory-limit-gb",
        type=float,
        default=0.0,
        help="address-space limit of the peak-memory processes (0: none); on a shared machine a "
        "run over it fails instead of starting the OOM killer",
    )
    ap.add_argument("--out", type=Path, default=ARTIFACT, help="where the markdown table goes")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed per child process")
    # child mode
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["timings", "memory"], help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device-map", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-gradients", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    tokens = [int(t) for t in args.tokens.split(",") if t]
    global MEMORY_LIMIT_GB, MEASURE_VIEWS
    MEMORY_LIMIT_GB = args.memory_limit_gb
    MEASURE_VIEWS = not args.no_views
    if args.child:
        import torch

        torch.manual_seed(0)
        dtype = args.dtype or "float32"
        if args.mode == "timings":
            out = child_timings(args.shape, tokens, args.repeat, dtype, args.device, args.bundle)
        else:
            out = child_memory(args.shape, tokens[0], dtype, args.device, args.device_map, not args.no_gradients)
        print(json.dumps(out))
        return 0

    shapes = [s for s in args.shapes.split(",") if s]
    repeat = args.repeat
    if args.quick:
        shapes, tokens, repeat = ["gpt2", "bert"], [BUNDLE_TOKENS], min(repeat, 3)
    gpu = args.device not in ("cpu",)
    t0 = time.perf_counter()
    load_before = f"{os.getloadavg()[0]:.1f}"
    for s in shapes + (["tinyllama"] if args.long else []) + (["narrow-llama"] if args.narrow else []):
        build_shape(s)

    def dtype_of(shape: str) -> str:
        if args.dtype:
            return args.dtype
        return "auto" if gpu else SHAPES[shape][1]

    results, memory = [], {}
    for shape in shapes:
        sh_tokens = tokens
        common = ["--shape", shape, "--dtype", dtype_of(shape), "--device", args.device]
        bundle = BUNDLE_TOKENS in sh_tokens and shape == shapes[0]
        print(f"[bench] {shape}: timings at {sh_tokens} tokens …", file=sys.stderr, flush=True)
        rep = args.large_repeat if (shape == "tinyllama" and args.large_repeat) else repeat
        results.append(
            _run_child(
                [
                    "--mode",
                    "timings",
                    "--tokens",
                    ",".join(map(str, sh_tokens)),
                    "--repeat",
                    str(rep),
                    *common,
                    *(["--bundle"] if bundle else []),
                    *(["--no-views"] if args.no_views else []),
                ],
                args.timeout,
            )
        )
        if not args.no_memory:
            for T in sh_tokens:
                print(f"[bench] {shape}: peak memory at {T} tokens …", file=sys.stderr, flush=True)
                memory[(shape, T)] = _run_child(
                    ["--mode", "memory", "--tokens", str(T), *common, "--memory-limit-gb", str(args.memory_limit_gb)],
                    args.timeout,
                )
    long_rows = [("tinyllama", True)] * args.long + [("narrow-llama", False)] * args.narrow
    for shape, grads in long_rows:
        for n in [int(t) for t in str(args.long_tokens).split(",") if t]:
            print(f"[bench] {shape}: peak memory at {n} tokens …", file=sys.stderr, flush=True)
            try:
                memory[(shape, n)] = _run_child(
                    [
                        "--mode",
                        "memory",
                        "--tokens",
                        str(n),
                        "--shape",
                        shape,
                        "--dtype",
                        dtype_of(shape),
                        "--device",
                        args.device,
                        "--memory-limit-gb",
                        str(args.memory_limit_gb),
                        *([] if grads else ["--no-gradients"]),
                    ],
                    args.timeout,
                )
            except RuntimeError as exc:
                print(f"[bench] the {shape} {n}-token run failed: {exc}", file=sys.stderr)

    import torch

    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_before": load_before,
        "load_after": f"{os.getloadavg()[0]:.1f}",
        "repeat": repeat,
        "took_s": time.perf_counter() - t0,
    }
    table = render(results, memory, meta)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(f"[bench] written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
