"""Library chatter kept off the user's console and the server log: demoted to DEBUG.

fontTools logs about thirty INFO lines ("glyf pruned", "cmap subsetted" …) for every font subset fpdf2 embeds in a
PDF; at the app's INFO level they were three quarters of the server log. `quiet_library_logs()` (called once by
core/__init__.py, so every entry point — app, CLI, tests, bench — has it) attaches a filter to those loggers that
passes such a record only when DEBUG is enabled for it, relabelled DEBUG. Warnings and errors pass unchanged.

Warnings we handle ourselves are silenced where they arise instead: the tokenizer's "longer than the maximum
sequence length" (the full length is counted with verbose=False; the truncation reaches the user as the result's
own warning) and numpy's "All-NaN slice" (reductions run only over the columns that hold values).
"""

from __future__ import annotations

import logging

#: Loggers whose INFO (and lower) records are demoted to DEBUG.
CHATTY_LOGGERS = ("fontTools.subset", "fontTools.subset.timer", "fontTools.ttLib.ttFont")


class DemoteToDebug(logging.Filter):
    """Records below WARNING become DEBUG records: kept when DEBUG is enabled for their logger, dropped otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def quiet_library_logs() -> None:
    """Attach DemoteToDebug to every CHATTY_LOGGERS logger (once; calling again changes nothing)."""
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DemoteToDebug) for f in logger.filters):
            logger.addFilter(DemoteToDebug())
