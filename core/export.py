"""The export: the one ZIP the sidebar's download button and the CLI produce, plus the optional hidden states.

`build_zip(result, session_entries, hidden_states)` = core.bundle.bundle_files (the same files as the CLI; only the
session log's length differs) packed as a ZIP. Member names are fixed safe names, never user text.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import bundle_files, write_files, zip_bytes

log = logging.getLogger(__name__)


def hidden_states_files(result: Any, options: dict[str, Any]) -> dict[str, bytes]:
    """Bundle writer: hidden_states.npz when options["hidden_states"] is true.

    Arrays: hidden_states float16 [L+1, T, D] (last entry before the final norm, as in the result),
    token_ids int64 [T], special_mask bool [T]. Written with np.savez (no pickle; the ZIP deflates it).
    """
    if not options.get("hidden_states"):
        return {}
    buf = io.BytesIO()
    np.savez(buf, hidden_states=np.asarray(result.hidden_states).astype(np.float16),
             token_ids=np.asarray(result.token_ids, dtype=np.int64),
             special_mask=np.asarray(result.special_mask, dtype=bool))
    return {"hidden_states.npz": buf.getvalue()}


def export_options(session_entries: list[dict[str, Any]] | None = None, hidden_states: bool = False) -> dict[str, Any]:
    """The options both the app and the CLI pass to bundle_files."""
    return {"session": list(session_entries) if session_entries else None, "hidden_states": bool(hidden_states)}


def build_files(result: Any, session_entries: list[dict[str, Any]] | None = None,
                hidden_states: bool = False) -> dict[str, bytes]:
    """All bundle members {safe name: bytes}."""
    return bundle_files(result, options=export_options(session_entries, hidden_states))


def build_zip(result: Any, session_entries: list[dict[str, Any]] | None = None, hidden_states: bool = False, *,
              save: bool = False, runs_root: str | Path | None = None) -> bytes:
    """The analysis bundle as ZIP bytes. With save=True the same files are also kept under assets/runs/<run-id>/
    (core.runs.save_run, bounded retention)."""
    files = build_files(result, session_entries, hidden_states)
    if save:
        from .runs import save_run

        save_run(result, files, root=runs_root)
    return zip_bytes(files)


def export_run(result: Any, out: str | Path, session_entries: list[dict[str, Any]] | None = None,
               hidden_states: bool = False, save: bool = True,
               runs_root: str | Path | None = None) -> tuple[Path, Path | None]:
    """The CLI's export: build the bundle once, write it to `out` (.zip or folder) and, with save=True, keep a copy
    under assets/runs/<run-id>/. Returns (out, run folder or None). A run copy that cannot be written (read-only
    disk) is logged, never fatal."""
    files = build_files(result, session_entries, hidden_states)
    path = write_files(files, out)
    run_dir = None
    if save:
        from .runs import save_run

        try:
            run_dir = save_run(result, files, root=runs_root)
        except OSError as exc:
            log.warning("could not keep the run under assets/runs: %s", exc)
    return path, run_dir
