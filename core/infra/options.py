"""Options of an export that change no computed number (so they stay out of the settings and the cache key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExportOptions:
    """What goes into a bundle besides the analysis itself.

    session_entries: session-log entries (core.export.session_log) to list; None = one entry for this result.
    hidden_states: add hidden_states.npz (float16).
    animations: render the layer-transition GIFs (animations/*.gif).
    """

    session_entries: tuple[dict[str, Any], ...] | None = None
    hidden_states: bool = False
    animations: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
