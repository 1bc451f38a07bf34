"""Disk cache of analysis results.

The key holds the core version, model id, resolved revision (or folder fingerprint), dtype, device, text and every
setting, so a change of formula (a core version bump) or of any input never serves a stale result. Values are the
pickle-free bytes of `AnalysisResult.to_bytes()`. The folder is `$TMA_CACHE_DIR` (default `~/.cache/tma`), bounded
by `$TMA_CACHE_SIZE_MB` (default 1024 MB) with least-recently-used eviction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from .model_info import ModelInfo
from .result import AnalysisResult
from .settings import AnalysisSettings
from .version import CORE_VERSION

log = logging.getLogger(__name__)

DEFAULT_SIZE_MB = 1024


def default_cache_dir() -> Path:
    env = os.environ.get("TMA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tma"


def cache_key(model_info: ModelInfo, text: str, settings: AnalysisSettings) -> str:
    """sha256 over everything that decides the numbers of a result."""
    payload = {
        "core_version": CORE_VERSION,
        "model_id": model_info.model_id,
        "revision": model_info.revision,
        "dtype": model_info.dtype,
        "device": model_info.device,
        "text": text,
        "settings": settings.to_dict(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResultCache:
    """A bounded diskcache of AnalysisResult bytes. Safe to share between threads and processes."""

    def __init__(self, directory: str | Path | None = None, size_limit_mb: int | None = None):
        import diskcache

        self.directory = Path(directory) if directory else default_cache_dir()
        limit = size_limit_mb or int(os.environ.get("TMA_CACHE_SIZE_MB", DEFAULT_SIZE_MB))
        self._cache = diskcache.Cache(str(self.directory), size_limit=limit * 1024 * 1024,
                                      eviction_policy="least-recently-used")

    def get(self, key: str) -> AnalysisResult | None:
        data = self._cache.get(key)
        if data is None:
            return None
        try:
            return AnalysisResult.from_bytes(data)
        except Exception as exc:  # an entry written by an incompatible version: drop it
            log.warning("dropping unreadable cache entry %s: %s", key[:12], exc)
            self._cache.delete(key)
            return None

    def set(self, key: str, result: AnalysisResult) -> None:
        self._cache.set(key, result.to_bytes())

    def get_bytes(self, key: str) -> bytes | None:
        """The raw bytes stored under `key` (any result type serialised with core.serialize), or None."""
        data = self._cache.get(key)
        return data if isinstance(data, bytes) else None

    def set_bytes(self, key: str, data: bytes) -> None:
        """Store raw bytes under `key` (bounded and evicted like every entry)."""
        self._cache.set(key, data)

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        self._cache.clear()

    def close(self) -> None:
        self._cache.close()
