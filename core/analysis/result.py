"""The one result object of an analysis run. Pages, the PDF, the CLI and the cache all read this.

Optional sections (attention analysis, attribution, predictions, logit lens, and the deeper views) are frozen
dataclasses defined next to the code that computes them; a section is None when it was not computed or does not
apply to the model. `views` lists the deeper views that were computed (core.analysis.pipeline.add_views adds the
others).
"""

from __future__ import annotations

import dataclasses
import mmap
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from core.infra import serialize
from core.infra.errors import InputError
from core.model.info import ModelInfo
from core.run.settings import AnalysisSettings
from core.steps.ablation import HeadAblationSection
from core.steps.attention import AttentionSection
from core.steps.attribution import AttributionSection
from core.steps.dla import DLASection
from core.steps.flow import FlowSection
from core.steps.logit_lens import LensSection
from core.steps.metrics import METRIC_NAMES
from core.steps.neurons import NeuronFactorSection
from core.steps.predictions import PredictionSection
from core.steps.qk import QKSection
from core.steps.sae import SAESection

__all__ = ["AnalysisResult", "ModelInfo", "results_equal"]

serializable = serialize.serializable
serializable(AnalysisSettings)


@serializable
@dataclass
class AnalysisResult:
    """Everything one analysis produced.

    Shapes: L = layers, H = heads, T = tokens, D = hidden width.
    hidden_states: float32 [L+1, T, D]; index 0 is the embedding output, index l the output of block l. The last
        entry is the residual stream *before* the model's final norm (GPT-2 ln_f, Llama norm), so every layer is
        on the same footing; `final_norm` records whether the model has one.
    attentions: [L, H, T, T], rows (queries) sum to 1; float32, or float16 for a 16-bit model (core.model.capture.
        attention_dtype: half the memory; the bundle's attentions.npy is float32). [L, H, 0, 0] when the maps were
        not held (past core.analysis.pipeline.HOLD_ATTENTIONS_BYTES): read a layer's maps with `attention_maps`,
        the one accessor every consumer uses, which recomputes them with the model when they were not held.
    layer_metrics: {metric: float64 [L+1]} in METRIC_NAMES order.
    """

    model: ModelInfo
    text: str
    analysed_text: str
    settings: AnalysisSettings
    tokens: list[str]
    display_tokens: list[str]
    token_ids: list[int]
    special_mask: list[bool]
    target_position: int
    target_reason: str
    hidden_states: np.ndarray
    attentions: np.ndarray
    layer_metrics: dict[str, np.ndarray]
    metric_tokens: str  # "all tokens" or "special tokens excluded"
    final_norm: bool
    attention: AttentionSection | None = None
    attribution: AttributionSection | None = None
    predictions: PredictionSection | None = None
    logit_lens: LensSection | None = None
    dla: DLASection | None = None
    flow: FlowSection | None = None
    head_ablation: HeadAblationSection | None = None
    neuron_factors: NeuronFactorSection | None = None
    query_key: QKSection | None = None
    sae: SAESection | None = None  # sparse-autoencoder features (settings.sae_dirs), core.steps.sae
    views: list[str] = field(default_factory=list)  # the deeper views computed (core.analysis.pipeline.VIEWS names)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    core_version: str = ""
    created_at: str = ""
    duration_s: float = 0.0
    cache_hit: bool = False
    cache_key: str = ""

    # -- shape helpers -------------------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.attentions.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.attentions.shape[1])

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def maps_held(self) -> bool:
        """Whether `attentions` holds every layer's maps (else `attention_maps` recomputes a layer's)."""
        return self.attentions.ndim == 4 and self.attentions.shape[-1] == self.n_tokens > 0

    def attention_maps(self, layer: int) -> np.ndarray:
        """Layer `layer`'s attention maps [H, T, T] (float32, or float16 for a 16-bit model; negative indices count
        from the end): the held array's slice, or the layer recomputed by the model the result was made with
        (core.analysis.pipeline.attach_model; InputError when no model is attached). The last recomputed layer is
        kept, so the pickers of one layer cost one pass."""
        L = self.n_layers
        if not -L <= layer < L:
            raise IndexError(f"layer {layer} does not exist: the model has {L} layers")
        layer %= L
        if self.maps_held:
            return self.attentions[layer]
        return _recomputed(self.cache_key, layer, self.model.model_id)

    @property
    def predicted_text(self) -> str | None:
        """The attribution's predicted token as the predictions section decoded it. The attribution stores the
        tokenizer's raw token ("âĢ" for a byte-level BPE token holding part of a UTF-8 character); where the
        predictions section decoded the same id at the same position its text is taken ("<0xE2><0x80>"), else the raw
        token. None without an attribution or a prediction."""
        attr = self.attribution
        if attr is None or not attr.predicted_token:
            return None
        pred = self.predictions
        if pred is not None and attr.target_position in pred.positions:
            for c in pred.candidates[pred.positions.index(attr.target_position)]:
                if c.get("token_id") == attr.predicted_id:
                    return str(c.get("token"))
        return str(attr.predicted_token)

    @property
    def family(self) -> str:
        return self.model.family

    def metrics_table(self) -> list[dict[str, float]]:
        """Rows of layer_metrics.csv: {"layer": l, metric: value, ...} for l = 0 … L."""
        n = len(next(iter(self.layer_metrics.values())))
        return [{"layer": l, **{m: float(self.layer_metrics[m][l]) for m in METRIC_NAMES}} for l in range(n)]

    def metrics_frame(self) -> pd.DataFrame:
        """The layer-metric table as a pandas DataFrame (pandas imported lazily)."""
        import pandas as pd

        return pd.DataFrame(self.metrics_table())

    # -- persistence ----------------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return serialize.dumps(self)

    @staticmethod
    def from_bytes(data: bytes | bytearray | memoryview | mmap.mmap) -> AnalysisResult:
        obj = serialize.loads(data)
        if not isinstance(obj, AnalysisResult):
            raise ValueError("the data does not hold an AnalysisResult")
        return obj

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as fh:
            fh.write(self.to_bytes())

    @staticmethod
    def load(path: str | Path) -> AnalysisResult:
        with open(path, "rb") as fh:
            return AnalysisResult.from_bytes(fh.read())

    def replace(self, **changes: Any) -> AnalysisResult:
        return dataclasses.replace(self, **changes)


#: cache key -> layer -> maps [H, T, T]: how a result whose maps were not held gets a layer's maps back
#: (core.analysis.pipeline registers one per analysis and in attach_model). Bounded: the oldest are forgotten.
_MAP_SOURCES: dict[str, Callable[[int], np.ndarray]] = {}
_MAX_SOURCES = 64
#: the last recomputed layer: (cache key, layer, maps)
_LAST_MAPS: list[tuple[str, int, np.ndarray]] = []
_MAPS_LOCK = threading.Lock()


def register_map_source(key: str, source: Callable[[int], np.ndarray]) -> None:
    """Let the results with cache key `key` recompute a layer's maps with `source(layer)`."""
    with _MAPS_LOCK:
        _MAP_SOURCES.pop(key, None)
        _MAP_SOURCES[key] = source
        while len(_MAP_SOURCES) > _MAX_SOURCES:
            _MAP_SOURCES.pop(next(iter(_MAP_SOURCES)))
        _LAST_MAPS[:] = [e for e in _LAST_MAPS if e[0] != key]


def has_map_source(key: str) -> bool:
    """Whether results with cache key `key` can recompute a layer's maps in this process."""
    with _MAPS_LOCK:
        return bool(key) and key in _MAP_SOURCES


def _recomputed(key: str, layer: int, model_id: str) -> np.ndarray:
    with _MAPS_LOCK:
        for k, l, maps in _LAST_MAPS:
            if k == key and l == layer:
                return maps
        source = _MAP_SOURCES.get(key) if key else None
    if source is None:
        raise InputError(
            "the attention maps of this long text were not kept with the result (they are recomputed one layer at "
            f"a time from the model): load {model_id} to see them"
        )
    _LAST_MAPS.clear()  # one recomputed layer at a time: drop the previous one before computing the next
    maps = source(layer)
    maps.flags.writeable = False
    with _MAPS_LOCK:
        _LAST_MAPS[:] = [(key, layer, maps)]
    return maps


def results_equal(a: Any, b: Any, *, ignore: tuple[str, ...] = ("cache_hit", "timings", "duration_s")) -> bool:
    """Deep equality of results and sections (arrays compared exactly, NaN equal to NaN)."""
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        if type(a) is not type(b):
            return False
        return all(
            results_equal(getattr(a, f.name), getattr(b, f.name), ignore=ignore)
            for f in dataclasses.fields(a)
            if f.name not in ignore
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(results_equal(a[k], b[k], ignore=ignore) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(results_equal(x, y, ignore=ignore) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b
