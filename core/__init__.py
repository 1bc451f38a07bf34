"""Transformer Model Analysis core: all computation, no UI. Importing it does not import torch.

Main entry points:
    load_model(model_id, dtype="auto", device="auto") -> LoadedModel
    analyze(model, text, **settings) -> AnalysisResult
    bundle_files(result) / write_bundle(result, out)
"""

from core.analysis.pipeline import analyze
from core.analysis.result import AnalysisResult
from core.export.bundle import bundle_files, write_bundle
from core.infra.errors import InputError, ModelUnavailableError, TMAError
from core.infra.logs import quiet_library_logs
from core.infra.presets import BUNDLED_ID, PRESETS
from core.infra.version import CORE_VERSION
from core.model.loading import LoadedModel, load_model
from core.run.cache import ResultCache
from core.run.settings import AnalysisSettings

quiet_library_logs()  # fontTools' INFO chatter at DEBUG, for every entry point (core.infra.logs)

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
