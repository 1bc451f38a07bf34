"""The one disk cache of every kind of run (analysis, corpus, patching) and its one key builder.

`run_key(provenance, settings, **inputs)` hashes the core version, the model's provenance (id, resolved revision or
folder fingerprint, dtype, device), the run's inputs (text, corpus hash, text pair …) and every setting, so a change
of formula (a core version bump) or of any input never serves a stale result. Values are the pickle-free bytes of a
result's `to_bytes()`; `get(key, kind)` rebuilds them with `kind.from_bytes`. The folder is `$TMA_CACHE_DIR` (default
`~/.cache/tma`), bounded by `$TMA_CACHE_SIZE_MB` (default 1024 MB) with least-recently-used eviction.

The cache is an optimisation, never a reason for an analysis to fail: every exception from opening, reading or
writing it (a corrupt database after a crash, an unreadable value, a missing or read-only folder, a full disk) is
caught, logged once, and turned into one warning that `take_warnings()` hands to the analysis of the calling thread.
A corrupt cache folder is moved aside (renamed to `<folder>.corrupt`, replacing an older such copy, so at most one
is kept) and a fresh one is created; a folder that cannot be opened at all leaves the cache off, retried after
`RETRY_S` seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from core.infra.guards import scrub_paths
from core.infra.paths import default_cache_dir
from core.infra.version import CORE_VERSION

log = logging.getLogger(__name__)

DEFAULT_SIZE_MB = 1024
#: Seconds before a cache that could not be opened is tried again.
RETRY_S = 60.0

T = TypeVar("T")
R_co = TypeVar("R_co", covariant=True)


class Storable(Protocol):
    """What the cache stores: a result that turns itself into pickle-free bytes."""

    def to_bytes(self) -> bytes: ...


class Loader(Protocol[R_co]):
    """What rebuilds it: a result class, whose `from_bytes(data)` is a static or class method."""

    def from_bytes(self, data: bytes | mmap.mmap, /) -> R_co: ...


class HasSettings(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def run_key(provenance: dict[str, Any], settings: HasSettings, **inputs: Any) -> str:
    """sha256 over everything that decides the numbers of a run: the core version, the model's provenance
    (`ModelInfo.key_fields()`: id, revision, dtype, device), the run's inputs and every setting. Keys of one kind of
    run never meet another's: their inputs differ by name (text; kind + corpus_sha256; kind + clean + corrupted)."""
    payload = {"core_version": CORE_VERSION, **provenance, **inputs, "settings": settings.to_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def is_corruption(exc: BaseException) -> bool:
    """True for SQLite errors that mean the database file itself is damaged (not locked, not read-only)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    msg = str(exc).lower()
    return (not isinstance(exc, sqlite3.OperationalError)) or "malformed" in msg or "not a database" in msg


def describe(exc: BaseException) -> str:
    """A short reason with file paths left out (users of a public server need not see its folders)."""
    if type(exc).__name__ == "Timeout":  # diskcache hides the sqlite error: a locked or read-only database
        return "the database is locked or read-only"
    if isinstance(exc, OSError) and exc.strerror:
        line = exc.strerror
    else:
        line = str(exc).splitlines()[0] if str(exc) else ""
        line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return scrub_paths(line)[:160]


def cache_size_mb(value: int | None = None) -> int:
    """The size bound in MB: `value`, else $TMA_CACHE_SIZE_MB, else DEFAULT_SIZE_MB (a bad value is ignored)."""
    if value:
        return int(value)
    raw = os.environ.get("TMA_CACHE_SIZE_MB", "").strip()
    try:
        return max(1, int(float(raw))) if raw else DEFAULT_SIZE_MB
    except ValueError:
        log.warning("ignoring TMA_CACHE_SIZE_MB=%r: not a number", raw)
        return DEFAULT_SIZE_MB


class ResultCache:
    """A bounded diskcache of result bytes (analysis, corpus, patching — anything Storable). Safe to share between
    threads and processes.

    No method raises because of the cache itself: faults become a log line and one warning per call, collected for
    the calling thread by `take_warnings()`.
    """

    def __init__(self, directory: str | Path | None = None, size_limit_mb: int | None = None):
        self.directory = Path(directory) if directory else default_cache_dir()
        self.size_limit = cache_size_mb(size_limit_mb) * 1024 * 1024
        self._lock = threading.RLock()
        self._local = threading.local()
        self._cache: Any = None
        self._retry_at = 0.0
        self._reason = ""
        self._open()

    # --- opening and recovering ---------------------------------------------------------------------------------

    def _new(self) -> Any:
        import diskcache

        return diskcache.Cache(str(self.directory), size_limit=self.size_limit, eviction_policy="least-recently-used")

    def _open(self) -> None:
        with self._lock:
            try:
                self._cache = self._new()
                return
            except Exception as exc:  # noqa: BLE001 - a cache fault never fails an analysis
                if is_corruption(exc) and self._move_aside(exc):
                    try:
                        self._cache = self._new()
                        return
                    except Exception as exc2:  # noqa: BLE001 - a cache fault never fails an analysis
                        exc = exc2
                self._cache = None
                self._retry_at = time.monotonic() + RETRY_S
                self._reason = describe(exc)
                log.warning("result cache at %s unavailable, analyses run without it: %r", self.directory, exc)
                self._warn_unavailable()

    def _move_aside(self, exc: BaseException) -> bool:
        """Rename the corrupt folder to `<folder>.corrupt` (an older copy there is removed). True when done."""
        aside = self.directory.with_name(self.directory.name + ".corrupt")
        try:
            if self._cache is not None:
                try:
                    self._cache.close()
                except Exception as close_exc:  # noqa: BLE001 - a broken database may not close cleanly
                    log.debug("closing the corrupt cache failed: %r", close_exc)
                self._cache = None
            if aside.exists():
                import shutil

                shutil.rmtree(aside, ignore_errors=True)
            os.replace(self.directory, aside)
        except OSError as move_exc:
            log.warning("corrupt result cache at %s could not be moved aside: %r", self.directory, move_exc)
            return False
        log.warning(
            "result cache at %s was corrupt (%s); moved aside to %s and a fresh one created", self.directory, exc, aside
        )
        self._warn(f"the result cache was corrupt ({describe(exc)}); it was moved aside and a fresh one started")
        return True

    def _warn(self, message: str) -> None:
        pending = getattr(self._local, "warnings", None)
        if pending is None:
            pending = self._local.warnings = []
        if not pending:  # one warning per analysis: the first fault; later ones are in the log
            pending.append(message)

    def _warn_unavailable(self) -> None:
        self._warn(f"the result cache cannot be used ({self._reason}); the analysis ran without it")

    def take_warnings(self) -> list[str]:
        """The calling thread's cache warning since the last call (at most one; then forgotten)."""
        pending = getattr(self._local, "warnings", None) or []
        self._local.warnings = []
        return list(pending)

    @property
    def available(self) -> bool:
        return self._cache is not None

    def _call(self, what: str, fn: Callable[[Any], T], default: T) -> T:
        """Run fn(diskcache) with every fault turned into a warning and `default`; corruption → a fresh cache."""
        with self._lock:
            cache = self._cache
            if cache is None and time.monotonic() >= self._retry_at:
                self._open()
                cache = self._cache
        if cache is None:
            self._warn_unavailable()
            return default
        try:
            return fn(cache)
        except Exception as exc:  # noqa: BLE001 - a cache fault never fails an analysis
            if is_corruption(exc):
                with self._lock:
                    if self._cache is cache and self._move_aside(exc):
                        self._open()
                    elif self._cache is not cache:  # another thread has already replaced it
                        self._warn(f"the result cache was corrupt ({describe(exc)}) and has been replaced")
                    else:
                        self._warn(f"the result cache is corrupt ({describe(exc)}); the analysis ran without it")
                return default
            log.warning("result cache %s failed: %r", what, exc)
            self._warn(f"the result cache could not be {what} ({describe(exc)}); the analysis ran without it")
            return default

    # --- values --------------------------------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes | None:
        """The raw bytes stored under `key` (any result type serialised with core.infra.serialize), or None (missing, or
        the cache failed: see take_warnings)."""
        data = self._call("read", lambda c: c.get(key), None)
        if data is not None and not isinstance(data, bytes):
            self._drop(key, TypeError(f"expected bytes, found {type(data).__name__}"))
            return None
        return data

    def set_bytes(self, key: str, data: bytes) -> bool:
        """Store raw bytes under `key` (bounded and evicted like every entry); False (and a warning) when the cache
        could not be written."""
        return self._call("written", lambda c: bool(c.set(key, data)), False)

    def _drop(self, key: str, exc: BaseException) -> None:
        log.warning("dropping unreadable cache entry %s: %r", key[:12], exc)
        self._warn(f"a cached result could not be read ({describe(exc)}); it was dropped and computed again")
        self._call("cleaned", lambda c: c.delete(key), False)

    def _read(self, key: str) -> bytes | mmap.mmap | None:
        """The stored bytes of `key`: a read-only memory map of the entry's file when diskcache keeps it in a file
        (large results), so that a hit reads only the pages that are used (the arrays are views on it, see
        core.infra.serialize), else the bytes themselves. None when missing or the cache failed."""

        def fetch(cache: Any) -> bytes | mmap.mmap | None:
            handle = cache.get(key, read=True)
            if handle is None or isinstance(handle, bytes):  # small values come back as bytes from the database
                return handle
            try:
                try:
                    return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                except (OSError, ValueError):  # no file behind the handle, or an empty file
                    return bytes(handle.read())
            finally:
                handle.close()

        return self._call("read", fetch, None)

    def get(self, key: str, kind: Loader[T]) -> T | None:
        """The stored result under `key` rebuilt as `kind` (its from_bytes), or None. An entry that cannot be
        rebuilt (another version's, or damaged bytes) is dropped."""
        data = self._read(key)
        if data is None:
            return None
        try:
            return kind.from_bytes(data)
        except Exception as exc:  # noqa: BLE001 - an entry of an incompatible version, or damaged bytes
            self._drop(key, exc)
            return None

    def set(self, key: str, result: Storable) -> bool:
        try:
            data = result.to_bytes()
        except Exception as exc:  # a bug, not a cache fault: say so, keep the result
            log.exception("could not serialise the result for the cache")
            self._warn(f"the result could not be cached ({describe(exc)})")
            return False
        return self.set_bytes(key, data)

    def __contains__(self, key: str) -> bool:
        return self._call("read", lambda c: key in c, False)

    def __len__(self) -> int:
        return self._call("read", lambda c: len(c), 0)

    def volume(self) -> int:
        """Bytes on disk (diskcache's estimate), 0 when unavailable."""
        return self._call("read", lambda c: int(c.volume()), 0)

    def clear(self) -> None:
        self._call("cleared", lambda c: c.clear(), 0)

    def close(self) -> None:
        with self._lock:
            if self._cache is not None:
                try:
                    self._cache.close()
                except Exception as exc:  # noqa: BLE001 - a cache fault never fails an analysis
                    log.warning("closing the result cache failed: %r", exc)
