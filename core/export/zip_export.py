"""The export: the one ZIP the sidebar's download button and the CLI produce.

`build_zip(result, options)` = core.export.bundle.bundle_files (the same files as the CLI; only the session log's length
differs) packed as a ZIP; `export_run` writes it to a path. Member names are fixed safe names, never user text.
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.analysis.result import AnalysisResult
from core.export.bundle import bundle_files
from core.export.runs import save_run
from core.infra.formats import write_files, zip_bytes
from core.infra.options import ExportOptions

log = logging.getLogger(__name__)


def build_zip(
    result: AnalysisResult,
    options: ExportOptions | None = None,
    *,
    save: bool = False,
    runs_root: str | Path | None = None,
) -> bytes:
    """The analysis bundle as ZIP bytes. With save=True the same files are also kept under assets/runs/<run-id>/
    (core.export.runs.save_run, bounded retention)."""
    files = bundle_files(result, options)
    if save:
        save_run(result, files, root=runs_root)
    return zip_bytes(files)


def export_run(
    result: AnalysisResult,
    out: str | Path,
    options: ExportOptions | None = None,
    save: bool = True,
    runs_root: str | Path | None = None,
) -> tuple[Path, Path | None]:
    """The CLI's export: build the bundle once, write it to `out` (.zip or folder) and, with save=True, keep a copy
    under assets/runs/<run-id>/. Returns (out, run folder or None). A run copy that cannot be written (read-only
    disk) is logged, never fatal."""
    files = bundle_files(result, options)
    path = write_files(files, out)
    run_dir = None
    if save:
        try:
            run_dir = save_run(result, files, root=runs_root)
        except OSError as exc:
            log.warning("could not keep the run under assets/runs: %s", exc)
    return path, run_dir
