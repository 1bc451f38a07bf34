"""Tables of a comparison of two runs (core.studies.compare): run labels, the metric overlay in long form, the CKA
matrix as rows, the predictions side by side — what the Compare page and the comparison bundle show.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.steps.metrics import METRIC_NAMES
from core.studies.compare import AXES, ComparisonResult, RunSummary

CKA_CSV_HEADER = ("layer_a", "layer_b", "cka")


#: A run's text is cut to this many characters where it names the run (legends, axis titles, captions).
NAME_CHARS = 40


def short_id(model_id: str) -> str:
    """The last part of a model id or folder, at most 32 characters (legends and axis titles have little room)."""
    return model_id.rstrip("/").rsplit("/", 1)[-1][-32:] or model_id


def short_text(text: str, limit: int = NAME_CHARS) -> str:
    """A text as a name: on one line (every run of whitespace one space), at most `limit` characters (then cut
    with "…"), in quotes. Plain text: escape it for the medium (HTML, markdown, matplotlib) where it is shown."""
    flat = " ".join(str(text).split())
    if len(flat) > limit:
        flat = flat[: limit - 1].rstrip() + "\u2026"
    return f"\u201c{flat}\u201d"


def run_name(cmp: ComparisonResult, s: RunSummary) -> str:
    """What tells run `s` apart from the other run of `cmp`: its text when both runs use one model (two texts),
    its model when both read one text (two models), both otherwise. Models are named by short_id, or by their
    whole id when two different ids share the short one."""
    other = cmp.b if s is cmp.a else cmp.a
    model = short_id(s.model_id)
    if model == short_id(other.model_id) and s.model_id != other.model_id:
        model = s.model_id
    if s.model_id == other.model_id and s.text != other.text:
        return short_text(s.text)
    if s.text == other.text:
        return model
    return f"{model}, {short_text(s.text)}"


def run_label(cmp: ComparisonResult, s: RunSummary) -> str:
    """ "A: <name>" (run_name) for legends and tooltips."""
    return f"{s.label}: {run_name(cmp, s)}"


def metric_overlay_rows(cmp: ComparisonResult, axis: str | None = None) -> list[dict[str, Any]]:
    """Long-form rows of both runs' layer metrics: {"run", "metric", "layer", "depth", "x", "value"}.

    axis "relative" puts x = layer / L (both runs span [0, 1]); "absolute" puts x = layer; None takes the
    comparison's default_axis.
    """
    axis = axis or cmp.default_axis
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    rows: list[dict[str, Any]] = []
    for s in cmp.runs:
        xs = s.depth if axis == "relative" else s.layers
        for m in METRIC_NAMES:
            for layer, x, v in zip(s.layers.tolist(), xs.tolist(), s.metrics[m].tolist()):
                rows.append(
                    {
                        "run": run_label(cmp, s),
                        "metric": m,
                        "layer": int(layer),
                        "depth": float(layer / max(s.n_layers, 1)),
                        "x": float(x),
                        "value": float(v),
                    }
                )
    return rows


def cka_rows_table(matrix: np.ndarray) -> list[list[Any]]:
    """Rows [layer_a, layer_b, cka] of a CKA matrix, layer_a major (cka.csv)."""
    M = np.asarray(matrix, dtype=np.float64)
    return [[i, j, float(M[i, j])] for i in range(M.shape[0]) for j in range(M.shape[1])]


def prediction_rows(cmp: ComparisonResult) -> list[dict[str, Any]]:
    """The two top-k lists aligned by rank: {"rank", "A", "p(A)", "B", "p(B)"} (None past a shorter list)."""
    pa, pb = cmp.predictions_a, cmp.predictions_b
    rows = []
    for i in range(max(len(pa.tokens), len(pb.tokens))):
        rows.append(
            {
                "rank": i + 1,
                "A": pa.tokens[i] if i < len(pa.tokens) else None,
                "p(A)": pa.probabilities[i] if i < len(pa.probabilities) else None,
                "B": pb.tokens[i] if i < len(pb.tokens) else None,
                "p(B)": pb.probabilities[i] if i < len(pb.probabilities) else None,
            }
        )
    return rows


#: The header of cka.csv, exactly.
