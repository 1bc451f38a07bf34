"""What an analysis step reads: `StepContext`, built once per analysis by core.analysis.pipeline.analyze().

A step is a plain function `run_xxx(ctx: StepContext) -> XxxSection | None`; it reads the context, never mutates
the result, and reports user-visible warnings through `ctx.warn(message)`. The model's lock is held while steps
run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.model.capture import Capture
from core.model.loading import LoadedModel
from core.run.settings import AnalysisSettings


@dataclass
class StepContext:
    """Inputs of the analysis steps.

    hidden_states: float32 [L+1, T, D] (last entry before the final norm); attentions: [L, H, T, T] (float32;
    float16 for a 16-bit model).
    target_position: the position whose prediction is attributed (see core.analysis.pipeline.choose_target).
    attention_folder: the head features folded in layer by layer during the capture pass (a core.steps.attention.
    AttentionFolder) and rollout: the attention rollout folded in likewise (float64 [T, T]); None when the steps
    compute them from `attentions` (then [L, H, T, T], held).
    views_pass: the deeper views' one forward pass (a core.steps.dla.Decomposition, typed Any here because
    core.steps.dla imports this module), set by the pipeline when DLA or flow runs, read by both; None: each step
    runs or shares its own (core.steps.dla.shared_pass). mlp_activations: (layers, float32 [len(layers), T, d_ff])
    the neuron activations the same pass recorded for the neuron factors; None: the step records them itself.
    """

    loaded: LoadedModel
    settings: AnalysisSettings
    capture: Capture
    tokens: list[str]
    display_tokens: list[str]
    token_ids: list[int]
    special_mask: list[bool]
    family: str
    target_position: int
    hidden_states: np.ndarray
    attentions: np.ndarray
    attention_folder: Any = None
    rollout: np.ndarray | None = None
    views_pass: Any = None
    mlp_activations: tuple[tuple[int, ...], np.ndarray] | None = None
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Add a warning that the pages, the manifest and the PDF show."""
        if message not in self.warnings:
            self.warnings.append(message)
