"""`ModelInfo`: the plain description of a loaded model that every result, manifest and cache key carries."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from core.infra.serialize import serializable


@serializable
@dataclass(frozen=True)
class ModelInfo:
    """Which model produced a result, and how it was loaded.

    source: "bundled" | "local" | "hub"; revision: the hub commit, or "sha256:<fingerprint>" of a local folder;
    local_path: the folder a local or bundled model was read from (None for hub models).
    """

    model_id: str
    family: str
    source: str
    revision: str
    local_path: str | None
    dtype: str
    device: str
    attn_implementation: str
    architecture: str
    n_layers: int
    n_heads: int
    hidden_size: int
    has_chat_template: bool = False

    def to_dict(self) -> dict[str, str | int | bool | None]:
        return dataclasses.asdict(self)

    def key_fields(self) -> dict[str, str]:
        """What of the model decides a run's numbers, for core.run.cache.run_key: id, revision, dtype, device."""
        return {"model_id": self.model_id, "revision": self.revision, "dtype": self.dtype, "device": self.device}
