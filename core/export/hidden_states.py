"""Bundle writer of the optional hidden_states.npz."""

from __future__ import annotations

import io

import numpy as np

from core.analysis.result import AnalysisResult
from core.infra.options import ExportOptions


def hidden_states_files(result: AnalysisResult, options: ExportOptions) -> dict[str, bytes]:
    """hidden_states.npz when options.hidden_states is true.

    Arrays: hidden_states float16 [L+1, T, D] (last entry before the final norm, as in the result),
    token_ids int64 [T], special_mask bool [T]. Written with np.savez (no pickle; the ZIP deflates it).
    """
    if not options.hidden_states:
        return {}
    buf = io.BytesIO()
    np.savez(
        buf,
        hidden_states=np.asarray(result.hidden_states).astype(np.float16),
        token_ids=np.asarray(result.token_ids, dtype=np.int64),
        special_mask=np.asarray(result.special_mask, dtype=bool),
    )
    return {"hidden_states.npz": buf.getvalue()}
