"""Byte encoders of the bundle's file formats: CSV, NumPy .npy, JSON and ZIP.

A leaf module: it imports nothing from core, so every writer can use it without an import cycle.
"""

from __future__ import annotations

import csv
import io
import json
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


def write_files(files: Mapping[str, bytes], out: str | Path) -> Path:
    """Write {member name: bytes} to `out`: a .zip file, or a folder (created) otherwise. Returns `out`."""
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
