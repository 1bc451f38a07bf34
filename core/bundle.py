"""The analysis bundle: one pure function from a result to named files. The app's ZIP export and the CLI both use
`bundle_files`, so the two hold the same files (the session log aside).

Member names are fixed, safe names, never derived from user text. Later sections add their writers to
`BUNDLE_WRITERS`; each returns {name: bytes}.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import METRIC_NAMES
from .result import AnalysisResult

Writer = Callable[[AnalysisResult, dict[str, Any]], dict[str, bytes]]

#: (module, function) pairs of extra writers, run in order after the foundation files.
BUNDLE_WRITERS: list[tuple[str, str]] = [
    (".figures", "figure_files"),
    (".session_log", "session_log_files"),
    (".export", "hidden_states_files"),
    (".prediction_plots", "bundle_writer"),
    (".attention_plots", "attention_bundle_files"),
    (".report", "report_files"),  # keep LAST: the PDF embeds the plots/*.png written by the writers above
]


def manifest(result: AnalysisResult) -> dict[str, Any]:
    m = result.model
    return {
        "model_id": m.get("model_id"),
        "family": m.get("family"),
        "source": m.get("source"),
        "revision": m.get("revision"),
        "local_path": m.get("local_path"),
        "architecture": m.get("architecture"),
        "dtype": m.get("dtype"),
        "device": m.get("device"),
        "attn_implementation": m.get("attn_implementation"),
        "text": result.text,
        "analysed_text": result.analysed_text,
        "token_count": result.n_tokens,
        "layers": result.n_layers,
        "heads": result.n_heads,
        "hidden_size": m.get("hidden_size"),
        "settings": result.settings.to_dict(),
        "metric_tokens": result.metric_tokens,
        "last_hidden_state_before_final_norm": result.final_norm,
        "target_position": result.target_position,
        "target_token": result.tokens[result.target_position] if result.tokens else None,
        "target_reason": result.target_reason,
        "core_version": result.core_version,
        "package_versions": result.versions,
        "created_at": result.created_at,
        "duration_s": round(result.duration_s, 4),
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "cache_hit": result.cache_hit,
        "warnings": list(result.warnings),
    }


def csv_bytes(header: list[str], rows: list[list[Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([f"{v:.9g}" if isinstance(v, float) else v for v in r])
    return buf.getvalue().encode("utf-8")


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def foundation_files(result: AnalysisResult) -> dict[str, bytes]:
    header = ["layer", *METRIC_NAMES]
    rows = [[r["layer"], *(r[m] for m in METRIC_NAMES)] for r in result.metrics_table()]
    return {
        "manifest.json": json.dumps(manifest(result), indent=2, ensure_ascii=False).encode("utf-8"),
        "layer_metrics.csv": csv_bytes(header, rows),
        "attentions.npy": npy_bytes(result.attentions.astype(np.float32)),
        "tokens.json": json.dumps(result.tokens, ensure_ascii=False).encode("utf-8"),
    }


def bundle_files(result: AnalysisResult, *, options: dict[str, Any] | None = None) -> dict[str, bytes]:
    """All bundle members as {safe name: bytes}. `options` reach the extra writers (e.g. a session log)."""
    opts = dict(options or {})
    files = foundation_files(result)
    for module, fn in BUNDLE_WRITERS:
        writer: Writer = getattr(importlib.import_module(module, __package__), fn)
        files.update(writer(result, {**opts, "files": files}))
    return files


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def write_files(files: dict[str, bytes], out: str | Path) -> Path:
    """Write bundle members to `out`: a .zip file, or a folder (created) otherwise. Returns `out`."""
    out = Path(out)
    if out.suffix.lower() == ".zip":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(zip_bytes(files))
    else:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return out


def write_bundle(result: AnalysisResult, out: str | Path, *, options: dict[str, Any] | None = None) -> Path:
    """Build the bundle of `result` and write it to `out` (.zip or folder). Returns the path written."""
    return write_files(bundle_files(result, options=options), out)
