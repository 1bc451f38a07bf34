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
from collections.abc import Callable, Iterable, Mapping, Sequence
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


class NpyMember:
    """A .npy member written one leading slice at a time, never built in memory: `part(i)` gives slice i (shape
    `shape[1:]`, converted to `dtype` as it is written). `save(path)` fills a numpy.lib.format.open_memmap file
    slice by slice; `write_to(fh)` streams the same bytes (header, then each slice) into an open file, e.g. a ZIP
    member; `to_bytes()` is for callers that need the bytes (np.save's format, the same bytes)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any, part: Callable[[int], np.ndarray]) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.part = part

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def _slice(self, i: int) -> np.ndarray:
        arr = np.ascontiguousarray(self.part(i), dtype=self.dtype)
        if arr.shape != self.shape[1:]:
            raise ValueError(f"slice {i} has shape {arr.shape}, expected {self.shape[1:]}")
        return arr

    def save(self, path: str | Path) -> None:
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=self.shape)
        try:
            for i in range(self.shape[0]):
                mm[i] = self._slice(i)
                mm.flush()
        finally:
            del mm

    def _header(self, fh: Any) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        try:  # the same choice as np.save: version 1.0 unless the header is too long for it
            np.lib.format.write_array_header_1_0(fh, header)
        except ValueError:
            np.lib.format.write_array_header_2_0(fh, header)

    def write_to(self, fh: Any) -> None:
        self._header(fh)
        for i in range(self.shape[0]):
            fh.write(self._slice(i).tobytes())

    def __len__(self) -> int:
        """Length of the .npy file in bytes (header and data), as len() of its bytes."""
        head = io.BytesIO()
        self._header(head)
        return len(head.getvalue()) + self.nbytes

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        self.write_to(buf)
        return buf.getvalue()


#: A bundle member: its bytes, or a .npy written slice by slice (NpyMember).
Member = bytes | NpyMember


def member_bytes(data: Member) -> bytes:
    """The bytes of a bundle member (an NpyMember is written out in memory)."""
    return data.to_bytes() if isinstance(data, NpyMember) else data


def write_member(data: Member, target: Path) -> None:
    """Write one member to the file `target` (an NpyMember slice by slice through open_memmap)."""
    if isinstance(data, NpyMember):
        data.save(target)
    else:
        target.write_bytes(data)


def _zip_into(zf: zipfile.ZipFile, files: Mapping[str, Member]) -> None:
    for name, data in files.items():
        if isinstance(data, NpyMember):
            with zf.open(name, "w", force_zip64=data.nbytes >= 2**31) as fh:
                data.write_to(fh)
        else:
            zf.writestr(name, data)


def zip_bytes(files: Mapping[str, Member]) -> bytes:
    """A ZIP archive of {member name: bytes}, deflated at level 1 (fast; PNG/GIF hardly compress further)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        _zip_into(zf, files)
    return buf.getvalue()


#: Files at the top of a folder that mark it as an earlier bundle, which a new bundle may replace as a whole.
BUNDLE_MARKERS = ("manifest.json", "comparison.json", "sae_ablation.json")


def replaceable_folder(path: Path) -> bool:
    """True when the existing folder `path` is empty or holds an earlier bundle (BUNDLE_MARKERS): write_files may
    replace it. A folder of other files is never replaced (it would be deleted)."""
    names = {p.name for p in path.iterdir()}
    return not names or any(m in names for m in BUNDLE_MARKERS)


def write_files(files: Mapping[str, Member], out: str | Path) -> Path:
    """Write {member name: bytes} to `out`: a .zip file, or a folder otherwise. Returns `out`.

    Atomic on one file system: the ZIP is written to a temporary file beside `out` and renamed over it; a folder is
    written whole into a temporary folder beside `out`, then renamed into place. An earlier bundle folder at `out`
    is replaced as a whole (its files that the new bundle lacks go too): it is renamed aside first and deleted
    after; an exception between the two renames puts it back, a killed process leaves `out` absent and the
    earlier bundle in `.<name>.old-*/bundle` beside it. A folder that is neither empty nor a bundle is refused
    (ValueError); the CLI's check_out refuses it before any run. An NpyMember is streamed into the ZIP or filled
    slice by slice into its file (open_memmap): never whole in memory."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".zip":
        tmp = out.parent / f".{out.name}.new-{uuid.uuid4().hex[:12]}"
        try:
            with open(tmp, "xb") as fh:  # made with the umask, as `out` would be
                with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
                    _zip_into(zf, files)
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
            write_member(data, target)
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
