"""Tables of a comparison of two runs (core.studies.compare): run labels, the metric overlay in long form, the CKA
matrix as rows, the predictions side by side — what the Compare page and the comparison bundle show.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.steps.metrics import METRIC_NAMES
from core.studies.compare import AXES, ComparisonResult, RunSummary

CKA_CSV_HEADER = ("layer_a", "layer_b", "cka")


def short_id(model_id: str) -> str:
    """The last part of a model id or folder, at most 32 characters (legends and axis titles have little room)."""
    return model_id.rstrip("/").rsplit("/", 1)[-1][-32:] or model_id


def run_label(s: RunSummary) -> str:
    """ "A: <model>" for legends."""
    return f"{s.label}: {short_id(s.model_id)}"


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
                        "run": run_label(s),
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
