"""Byte encoders of the bundle's file formats (CSV, NumPy .npy, JSON and ZIP), and `write_files`, the one place
a bundle reaches the disk.

`write_files` never leaves a half-written bundle: everything is written under a temporary name beside `out` (the
same folder, hence the same file system) and renamed into place at the end. An interrupted run (Ctrl-C, a killed
process, a full disk) leaves `out` absent, or as it was before: never a mix of an old and a new bundle.

A leaf module: it imports nothing from core, so every writer can use it without an import cycle.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """UTF-8 CSV with a header row; floats written with 9 significant digits, "\\n" line ends."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([f"{v:.9g}" if isinstance(v, float) else v for v in r])
    return buf.getvalue().encode("utf-8")


def npy_bytes(arr: np.ndarray) -> bytes:
    """The array in NumPy's .npy format (never pickled)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    """Indented UTF-8 JSON (non-ASCII characters kept as they are)."""
    return json.dumps(obj, indent=2, ensure_ascii=False).encode("utf-8")


def zip_bytes(files: Mapping[str, bytes]) -> bytes:
    """A ZIP archive of {member name: bytes}, deflated at level 1 (fast; PNG/GIF hardly compress further)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


#: Files at the top of a folder that mark it as an earlier bundle, which a new bundle may replace as a whole.
BUNDLE_MARKERS = ("manifest.json", "comparison.json", "sae_ablation.json")


def replaceable_folder(path: Path) -> bool:
    """True when the existing folder `path` is empty or holds an earlier bundle (BUNDLE_MARKERS): write_files may
    replace it. A folder of other files is never replaced (it would be deleted)."""
    names = {p.name for p in path.iterdir()}
    return not names or any(m in names for m in BUNDLE_MARKERS)


def write_files(files: Mapping[str, bytes], out: str | Path) -> Path:
    """Write {member name: bytes} to `out`: a .zip file, or a folder otherwise. Returns `out`.

    Atomic on one file system: the ZIP is written to a temporary file beside `out` and renamed over it; a folder is
    written whole into a temporary folder beside `out`, then renamed into place. An earlier bundle folder at `out`
    is replaced as a whole (its files that the new bundle lacks go too): it is renamed aside first and deleted
    after; an exception between the two renames puts it back, a killed process leaves `out` absent and the
    earlier bundle in `.<name>.old-*/bundle` beside it. A folder that is neither empty nor a bundle is refused
    (ValueError); the CLI's check_out refuses it before any run."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".zip":
        tmp = out.parent / f".{out.name}.new-{uuid.uuid4().hex[:12]}"
        try:
            with open(tmp, "xb") as fh:  # made with the umask, as `out` would be
                fh.write(zip_bytes(files))
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return out
    if out.is_dir() and not replaceable_folder(out):
        raise ValueError(f"'{out}' is a folder of other files, not an earlier bundle: it is not replaced")
    tmpdir = _sibling(out, "new")
    old: Path | None = None
    try:
        for name, data in files.items():
            target = tmpdir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if out.is_dir():
            old = _sibling(out, "old")
            os.replace(out, old / "bundle")
        os.replace(tmpdir, out)
    except BaseException:
        if old is not None and (old / "bundle").is_dir() and not out.exists():
            os.replace(old / "bundle", out)  # interrupted between the two renames: the earlier bundle goes back
        shutil.rmtree(tmpdir, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def _sibling(out: Path, what: str) -> Path:
    """A new empty folder `.<name>.<what>-<random>` beside `out` (made with the umask, as `out` would be)."""
    while True:
        path = out.parent / f".{out.name}.{what}-{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
