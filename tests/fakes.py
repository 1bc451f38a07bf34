"""Real result objects built from hand-chosen numbers (no model): for tests of views, charts and figures."""

from __future__ import annotations

import numpy as np

from core.analysis.result import AnalysisResult
from core.model.info import ModelInfo
from core.run.settings import AnalysisSettings
from core.steps.metrics import METRIC_NAMES

MODEL = ModelInfo(
    model_id="hand-made",
    family="encoder",
    source="local",
    revision="sha256:0",
    local_path=None,
    dtype="float32",
    device="cpu",
    attn_implementation="eager",
    architecture="BertModel",
    n_layers=1,
    n_heads=1,
    hidden_size=2,
)


def result_with_metrics(metrics: dict[str, list[float]], n_tokens: int = 3) -> AnalysisResult:
    """An AnalysisResult whose layer metrics are `metrics` ({name: one value per layer}); every other field is a
    consistent placeholder of the right shape (1 head, n_tokens tokens, hidden width 2)."""
    lm = {k: np.asarray(v, dtype=float) for k, v in metrics.items()}
    n1 = len(next(iter(lm.values())))
    for name in METRIC_NAMES:  # a metric the caller did not give: a plain rising line
        lm.setdefault(name, np.arange(n1, dtype=float))
    T = n_tokens
    att = np.full((n1 - 1, 1, T, T), 1.0 / T, dtype=np.float32)
    return AnalysisResult(
        model=MODEL,
        text="a b c",
        analysed_text="a b c",
        settings=AnalysisSettings(),
        tokens=["a", "b", "c"][:T],
        display_tokens=["a", "b", "c"][:T],
        token_ids=list(range(T)),
        special_mask=[False] * T,
        target_position=0,
        target_reason="hand-made",
        hidden_states=np.zeros((n1, T, 2), dtype=np.float32),
        attentions=att,
        layer_metrics=lm,
        metric_tokens="all tokens",
        final_norm=False,
    )
