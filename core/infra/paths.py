"""Where the app keeps files on disk by default (a leaf module: anything may import it)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$TMA_CACHE_DIR, else $XDG_CACHE_HOME/tma, else ~/.cache/tma."""
    env = os.environ.get("TMA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tma"
