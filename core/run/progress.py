"""The one progress signature of every kind of run (analysis, corpus, patching, comparison).

`progress(label, fraction)`: `label` says in words what runs now ("Layer 3 of 12", "Forward passes: 16 of 40
texts"), `fraction` is the share of the whole run done, in [0, 1], never decreasing within a run. The callback may be
called from a worker thread: it must only record the values (no Streamlit calls). `scaled` maps a stage's own
0 → 1 onto a slice of the run's bar, `silent` is the callback that does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

#: progress(label, fraction): see the module docstring.
ProgressFn = Callable[[str, float], None]


def silent(_label: str, _fraction: float) -> None:
    """The progress callback that reports nowhere (the default of every run)."""


def scaled(progress: ProgressFn, start: float, end: float) -> ProgressFn:
    """A callback for one stage of a run: its fraction f in [0, 1] reaches `progress` as start + f·(end − start)."""

    def report(label: str, fraction: float) -> None:
        f = min(max(float(fraction), 0.0), 1.0)
        progress(label, start + f * (end - start))

    return report
