"""Run artifacts on disk: each exported bundle is also written under <root>/<run-id>/, with bounded retention.

root: the `root` argument, else $TMA_RUNS_DIR, else <repository>/assets/runs. A run id is
"<UTC yyyymmdd-HHMMSS-ffffff>-<first 12 hex digits of the cache key>" (only [0-9a-z-]), so ids sort by time and
never hold user text. A run is written to a hidden temporary folder and renamed into place, so a half-written run is
never seen; past `keep` runs the oldest (by id) are removed. Only folders that look like run ids are ever removed.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

from core.analysis.result import AnalysisResult
from core.infra.formats import Member, write_member

log = logging.getLogger(__name__)

DEFAULT_KEEP = 20
RUN_ID = re.compile(r"^\d{8}-\d{6}-\d{6}-[0-9a-z]{1,12}(-\d+)?$")
_SAFE_MEMBER = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def runs_root(root: str | Path | None = None) -> Path:
    """The runs folder: `root`, else $TMA_RUNS_DIR, else <repository>/assets/runs."""
    if root is not None:
        return Path(root)
    env = os.environ.get("TMA_RUNS_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "assets" / "runs"  # <repository>/core/export/runs.py


def make_run_id(result: AnalysisResult, now: _dt.datetime | None = None) -> str:
    """Time (UTC, microseconds) + up to 12 lowercase hex/alnum characters of the cache key."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    key = re.sub(r"[^0-9a-z]", "", (result.cache_key or "").lower())[:12] or "nokey"
    return f"{now:%Y%m%d-%H%M%S-%f}-{key}"


def safe_member(name: str) -> bool:
    """True for a relative bundle member name made of safe characters, with no '..' part."""
    return bool(_SAFE_MEMBER.match(name)) and ".." not in name.split("/")


def list_runs(root: str | Path | None = None) -> list[Path]:
    """Run folders under the root, oldest first."""
    base = runs_root(root)
    if not base.is_dir():
        return []
    return sorted((p for p in base.iterdir() if p.is_dir() and RUN_ID.match(p.name)), key=lambda p: p.name)


def prune_runs(root: str | Path | None = None, keep: int = DEFAULT_KEEP) -> list[Path]:
    """Remove the oldest runs beyond `keep`; returns the removed folders."""
    runs = list_runs(root)
    removed = runs[: max(len(runs) - max(keep, 0), 0)]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)  # another session may be pruning too
    return removed


def save_run(
    result: AnalysisResult, files: Mapping[str, Member], root: str | Path | None = None, keep: int = DEFAULT_KEEP
) -> Path:
    """Write `files` ({member name: bytes}, e.g. core.export.bundle.bundle_files) to <root>/<run-id>/ and prune to
    `keep` runs. Returns the run folder. Raises ValueError for an unsafe member name (nothing is written then)."""
    bad = [n for n in files if not safe_member(n)]
    if bad:
        raise ValueError(f"unsafe bundle member name(s): {bad[:3]}")
    base = runs_root(root)
    base.mkdir(parents=True, exist_ok=True)
    run_id = make_run_id(result)
    tmp = base / f".tmp-{uuid.uuid4().hex}"
    try:
        for name, data in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_member(data, target)
        tmp.mkdir(parents=True, exist_ok=True)
        final = base / run_id
        n = 1
        while True:
            try:
                os.rename(tmp, final)
                break
            except OSError:
                if not final.exists():
                    raise
                n += 1
                final = base / f"{run_id}-{n}"
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_runs(base, keep)
    log.info("saved run %s (%d files)", final.name, len(files))
    return final
