"""The ZIP downloads of the Compare, Causal and Corpus pages, as plain builder functions (tested without Streamlit:
AppTest cannot read a download button's bytes), and `OnceBytes`, which builds one result's ZIP once — on the first
click of its download button, not on every rerun — and hands the same bytes to every later click.

Each bundle is the one the CLI writes: `python -m core compare` (core.export.compare.comparison_files: a/ and b/
bundles, comparison.json, cka.csv, plots, report.pdf), `python -m core patch` (core.cli.patch.bundle) and
`python -m core corpus` (core.export.corpus_bundle.corpus_bundle_files).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from core.analysis.result import AnalysisResult
from core.infra.formats import zip_bytes
from core.infra.options import ExportOptions
from core.studies.compare import ComparisonResult
from core.studies.corpus import CorpusResult
from core.studies.patching import PatchingResult
from core.studies.sae_corpus import SAEFeatureExamples
from core.studies.sae_patching import SAEPatchingResult


def comparison_zip(
    a: AnalysisResult,
    b: AnalysisResult,
    cmp: ComparisonResult | None = None,
    *,
    session_entries: Sequence[dict[str, Any]] = (),
    animations: bool = True,
    debiased: bool = False,
) -> bytes:
    """The comparison bundle of the CLI's `compare` as ZIP bytes: a/ and b/ (each run's full bundle), comparison.json,
    cka.csv (when CKA is defined), plots/*.png and report.pdf."""
    from core.export.bundle import bundle_files
    from core.export.compare import comparison_files

    options = ExportOptions(session_entries=tuple(session_entries), animations=animations)
    return zip_bytes(comparison_files(a, b, cmp, bundle=lambda r: bundle_files(r, options), debiased_csv=debiased))


def patching_zip(result: PatchingResult) -> bytes:
    """The patching bundle of the CLI's `patch`: patching.csv, patching.json, plots, manifest.json, report.pdf."""
    from core.cli.patch import bundle

    return zip_bytes(bundle(result))


def sae_patching_zip(result: SAEPatchingResult) -> bytes:
    """The bundle of the CLI's `patch --sae`: sae_patching.csv / .json, manifest, plots/sae_patching.png, report.pdf."""
    from core.export.sae_patching_bundle import sae_patching_files

    return zip_bytes(sae_patching_files(result))


def corpus_zip(result: CorpusResult, sae: Sequence[SAEFeatureExamples] | None = None) -> bytes:
    """The corpus bundle of the CLI's `corpus`: corpus_metrics.csv, per_text_metrics.csv, manifest, plots, report;
    with `sae` (core.studies.sae_corpus results) also sae_feature_examples.csv and sae_feature_stats.csv."""
    from core.export.corpus_bundle import corpus_bundle_files
    from core.studies.sae_corpus import sae_corpus_files

    files = corpus_bundle_files(result)
    if sae:
        files.update(sae_corpus_files(sae))
    return zip_bytes(files)


class OnceBytes:
    """Bytes built by `build()` on the first call and returned as they are on every later call (thread-safe: a
    download button's callable runs outside the script thread). `key` names what they were built from."""

    def __init__(self, key: str, build: Callable[[], bytes]):
        self.key = key
        self._build: Callable[[], bytes] | None = build
        self._data: bytes | None = None
        self._lock = threading.Lock()
        self.builds = 0

    def __call__(self) -> bytes:
        with self._lock:
            if self._data is None:
                assert self._build is not None
                self._data = self._build()
                self._build = None  # drop the closure (and the results it holds) once the bytes exist
                self.builds += 1
            return self._data

    @property
    def ready(self) -> bool:
        return self._data is not None


def once(state: Any, state_key: str, key: str, build: Callable[[], bytes]) -> OnceBytes:
    """The session's OnceBytes for `key` under `state_key`: the kept one when it was made for the same key, else a
    new one (which replaces it: one ZIP per page is kept)."""
    kept = state.get(state_key)
    if isinstance(kept, OnceBytes) and kept.key == key:
        return kept
    made = OnceBytes(key, build)
    state[state_key] = made
    return made
