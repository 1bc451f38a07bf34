"""Transformer Model Analysis core: all computation, no UI. Importing it does not import torch.

Main entry points:
    load_model(model_id, dtype="auto", device="auto") -> LoadedModel
    analyze(model, text, **settings) -> AnalysisResult
    bundle_files(result) / write_bundle(result, out)
"""

from .analysis import analyze
from .bundle import bundle_files, write_bundle
from .cache import ResultCache
from .errors import InputError, ModelUnavailableError, TMAError
from .models import LoadedModel, load_model
from .presets import BUNDLED_ID, PRESETS
from .result import AnalysisResult
from .settings import AnalysisSettings
from .version import CORE_VERSION

__all__ = [
    "analyze",
    "bundle_files",
    "write_bundle",
    "ResultCache",
    "InputError",
    "ModelUnavailableError",
    "TMAError",
    "BUNDLED_ID",
    "PRESETS",
    "LoadedModel",
    "load_model",
    "AnalysisResult",
    "AnalysisSettings",
    "CORE_VERSION",
]
