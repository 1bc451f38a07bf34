"""Typed, self-checking analysis settings.

Everything that changes a computed number lives here, so that the object can be hashed into the cache key and
written into the manifest as is. Loading options (dtype, device) belong to the loaded model and enter the cache key
from there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from .errors import InputError

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class AnalysisSettings:
    """Settings of one analysis.

    max_tokens: the text is truncated to this many tokens (special tokens included); a warning says so.
    exclude_special_tokens: drop [CLS]/[SEP]/BOS… rows before computing the layer metrics.
    top_k: number of candidates listed for predictions and the logit lens.
    target_position: token position whose prediction is attributed; None picks it from the family
        (first mask for masked LMs, last token for causal LMs, 0 for encoders).
    mask_word: for masked LMs, replace the first occurrence of this word by the mask token before analysis.
    compute_gradients: run gradient × input and the per-head attribution (one forward + backward pass).
    integrated_gradients: also run integrated gradients (needs compute_gradients); off by default because it
        costs ig_steps forward + backward passes (~30–40× a forward pass at 32 steps on a CPU).
    ig_steps: Riemann steps of integrated gradients.
    n_clusters: number of head clusters; None chooses it by silhouette.
    lens_position: position decoded by the logit lens; None uses the target position.
    lens_full_grid: decode the logit-lens grid at every position even on a CPU, where by default a long text gets
        a window of positions around the lens position (the full grid costs ~4× a forward pass on GPT-2 at 128).
    animations: render the layer-transition GIFs.
    """

    max_tokens: int = 256
    exclude_special_tokens: bool = False
    top_k: int = 10
    target_position: int | None = None
    mask_word: str | None = None
    compute_gradients: bool = True
    integrated_gradients: bool = False
    ig_steps: int = 32
    n_clusters: int | None = None
    lens_position: int | None = None
    lens_full_grid: bool = False
    animations: bool = True

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise InputError(msg)

        need(isinstance(self.max_tokens, int) and 2 <= self.max_tokens <= 4096,
             f"max_tokens must be an integer between 2 and 4096, got {self.max_tokens!r}")
        need(isinstance(self.top_k, int) and 1 <= self.top_k <= 100, f"top_k must be between 1 and 100, got {self.top_k!r}")
        need(isinstance(self.ig_steps, int) and 1 <= self.ig_steps <= 512,
             f"ig_steps must be between 1 and 512, got {self.ig_steps!r}")
        need(self.n_clusters is None or (isinstance(self.n_clusters, int) and 1 <= self.n_clusters <= 64),
             f"n_clusters must be empty or between 1 and 64, got {self.n_clusters!r}")
        for name in ("target_position", "lens_position"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and v >= 0), f"{name} must be empty or a non-negative integer, got {v!r}")
        need(self.mask_word is None or (isinstance(self.mask_word, str) and self.mask_word.strip() != ""),
             "mask_word must be a non-empty word")
        for name in ("exclude_special_tokens", "compute_gradients", "integrated_gradients", "lens_full_grid", "animations"):
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None = None, **overrides: Any) -> "AnalysisSettings":
        merged = {**(data or {}), **overrides}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise InputError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**merged)

    def replace(self, **changes: Any) -> "AnalysisSettings":
        return dataclasses.replace(self, **changes)
