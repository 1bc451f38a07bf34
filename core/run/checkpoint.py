"""Work folders of resumable runs: each finished unit of a long run is kept on disk as it finishes, so that an
interrupted run (Ctrl-C, a killed process, a lost machine) resumes from what finished instead of starting over.

A run (corpus mode: one unit per batch of texts; patching over pairs: one unit per pair, plus one per pair for the
top-K exact stage) writes into a work folder next to its output, `<OUT>.partial/` (`work_path(out)`):

* `run.json` — the run's fingerprint (`fingerprint(...)`: kind, core version, model / dtype / device as asked,
  every setting, the sha256 of the input), written when the first unit is;
* `units/<name>.tma` — one unit, in core.infra.serialize's pickle-free format (a dict of arrays and numbers, or a
  @serializable dataclass), written to a temporary name and renamed, so a unit is whole or absent, never torn;
* `units/model.tma` — the ModelInfo of the model that computed the units (`check_model`): a resumed run whose model
  resolves to another revision, dtype or device is refused instead of mixing results of two models.

`WorkFolder.open(path, fingerprint, resume=True)` keeps the units of a folder whose fingerprint is equal and refuses
one of another run with one line naming what differs (InputError); `resume=False` discards an earlier folder when
the first unit of the new run is written. Both engines (local and Ray) store the same units, so a run interrupted on
one may resume on the other. The caller removes the folder (`remove()`) once the output is written.

`$TMA_INTERRUPT_AFTER=k` (tests): the k-th unit saved through one WorkFolder raises KeyboardInterrupt right after
it is written — an interruption after exactly k finished units, as a Ctrl-C there would leave it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from core.infra import serialize
from core.infra.errors import InputError
from core.infra.version import CORE_VERSION

#: environment variable: raise KeyboardInterrupt after this many units were saved through one WorkFolder (tests)
ENV_INTERRUPT = "TMA_INTERRUPT_AFTER"
SUFFIX = ".partial"
FORMAT = 1
_MODEL = "model"


def work_path(out: str | Path) -> Path:
    """The work folder of a run writing `out`: `<out>.partial` beside it (out.zip → out.zip.partial/)."""
    out = Path(out)
    return out.with_name(out.name + SUFFIX)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (the driver never holds a large input whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(kind: str, model: str, dtype: str, device: str, settings: dict[str, Any], **inputs: Any) -> dict:
    """What decides the units of a run: its kind, the core version, the model as asked (id or folder, dtype,
    device), every setting and the inputs (e.g. the input file's sha256 and the column read). JSON-able."""
    return {
        "format": FORMAT,
        "kind": kind,
        "core_version": CORE_VERSION,
        "model": str(model),
        "dtype": str(dtype),
        "device": str(device),
        "settings": json.loads(json.dumps(settings, sort_keys=True)),
        "input": json.loads(json.dumps(inputs, sort_keys=True)),
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    words = {"model": "the model", "dtype": "the dtype", "device": "the device", "input": "the input"}
    out = []
    for key in ("kind", "core_version", "model", "dtype", "device", "input"):
        if old.get(key) != new.get(key):
            out.append(words.get(key, f"the {key.replace('_', ' ')}"))
    old_s, new_s = old.get("settings") or {}, new.get("settings") or {}
    changed = sorted(k for k in set(old_s) | set(new_s) if old_s.get(k) != new_s.get(k))
    if changed:
        out.append("the setting(s) " + ", ".join(changed))
    if not out and old != new:
        out.append("the run's format")
    return out


class WorkFolder:
    """The units of one run in `<OUT>.partial/` (see the module docstring). Not thread-safe: one driver writes."""

    def __init__(self, path: Path, fp: dict[str, Any], units: set[str], *, fresh: bool) -> None:
        self.path = Path(path)
        self.fingerprint = fp
        self._units = set(units)
        self._fresh = fresh  # an earlier folder (if any) is discarded when the first unit is written
        self.resumed = len(self._units - {_MODEL})
        self._saved = 0

    @classmethod
    def open(cls, path: str | Path, fp: dict[str, Any], *, resume: bool) -> WorkFolder:
        """The work folder at `path` for the run `fp`. With resume, an existing folder of the same fingerprint
        gives back its units and one of another run is an InputError (one line); without, it starts empty."""
        path = Path(path)
        if not resume or not (path / "run.json").is_file():
            return cls(path, fp, set(), fresh=True)
        try:
            old = json.loads((path / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(
                f"--resume: '{path}' cannot be read ({type(exc).__name__}); delete it or run without --resume"
            ) from None
        if old != fp:
            diff = ", ".join(_differences(old if isinstance(old, dict) else {}, fp))
            raise InputError(
                f"--resume: '{path}' holds an interrupted run of other inputs ({diff} differ); "
                "delete it or run without --resume"
            )
        units = {p.name[: -len(".tma")] for p in (path / "units").glob("*.tma")}
        return cls(path, fp, units, fresh=False)

    def has(self, name: str) -> bool:
        return name in self._units

    def load(self, name: str) -> Any:
        """The unit `name` as it was saved (arrays come back read-only)."""
        return serialize.loads((self.path / "units" / f"{name}.tma").read_bytes())

    def save(self, name: str, obj: Any) -> None:
        """Keep one finished unit (written whole under a temporary name, then renamed into place)."""
        if self._fresh:
            if self.path.exists():
                shutil.rmtree(self.path)
            (self.path / "units").mkdir(parents=True)
            _write_atomic(self.path / "run.json", json.dumps(self.fingerprint, indent=1).encode("utf-8"))
            self._fresh = False
        _write_atomic(self.path / "units" / f"{name}.tma", serialize.dumps(obj))
        self._units.add(name)
        if name == _MODEL:
            return
        self._saved += 1
        stop = os.environ.get(ENV_INTERRUPT, "")
        if stop.isdigit() and self._saved == int(stop):
            raise KeyboardInterrupt(f"{ENV_INTERRUPT}={stop}")

    def check_model(self, info: Any) -> None:
        """Refuse (InputError) to resume units computed by another model than `info` (a ModelInfo: id, revision,
        dtype, device); record `info` when the folder has none yet."""
        if self.has(_MODEL):
            old = self.load(_MODEL)
            if old.key_fields() != info.key_fields():
                a, b = old.key_fields(), info.key_fields()
                diff = ", ".join(f"{k} {a[k]} → {b[k]}" for k in a if a[k] != b.get(k))
                raise InputError(
                    f"--resume: the finished units in '{self.path}' were computed by another model ({diff}); "
                    "delete the folder or run without --resume"
                )
        else:
            self.save(_MODEL, info)

    def model(self) -> Any:
        """The ModelInfo recorded by check_model (None when none was)."""
        return self.load(_MODEL) if self.has(_MODEL) else None

    def remove(self) -> None:
        """Delete the folder (the run's output is written; its units are no longer needed)."""
        shutil.rmtree(self.path, ignore_errors=True)


def _write_atomic(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
