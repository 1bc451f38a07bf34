"""The analysis bundle: one pure function from a result to named files. The app's ZIP export and the CLI both use
`bundle_files`, so the two hold the same files (the session log aside).

`WRITERS` is the explicit, ordered list of writer functions `writer(result, options) -> {name: bytes}`; the PDF
report runs last, on purpose outside the list, because it embeds the plots/*.png the writers made. Member names are
fixed, safe names, never derived from user text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.analysis.result import AnalysisResult
from core.export.hidden_states import hidden_states_files
from core.export.report import report_files
from core.export.session_log import session_log_files
from core.figures.attention import attention_bundle_files
from core.figures.causal import head_ablation_files
from core.figures.metrics import figure_files
from core.figures.neurons import neuron_factor_files
from core.figures.predictions import prediction_bundle_files
from core.figures.qk import query_key_files
from core.figures.routes import peer_bundle_files
from core.figures.sae import sae_files
from core.infra.formats import Member, NpyMember, csv_bytes, json_bytes, write_files
from core.infra.options import ExportOptions
from core.infra.threads import gc_paused
from core.model.provenance import provenance
from core.steps.metrics import METRIC_NAMES

__all__ = ["WRITERS", "ExportOptions", "bundle_files", "manifest", "write_bundle"]

Writer = Callable[[AnalysisResult, ExportOptions], Mapping[str, Member]]


def manifest(result: AnalysisResult) -> dict[str, Any]:
    """manifest.json: the provenance record (core.model.provenance: model, core and package versions as computed),
    then what was analysed, how, and what it cost."""
    prov = provenance(result.model, core_version=result.core_version, versions=result.versions).to_dict()
    versions = prov.pop("package_versions")
    core_version = prov.pop("core_version")
    return {
        **prov,
        "text": result.text,
        "analysed_text": result.analysed_text,
        "token_count": result.n_tokens,
        "layers": result.n_layers,
        "heads": result.n_heads,
        "hidden_size": result.model.hidden_size,
        "settings": result.settings.to_dict(),
        "metric_tokens": result.metric_tokens,
        "last_hidden_state_before_final_norm": result.final_norm,
        "target_position": result.target_position,
        "target_token": result.tokens[result.target_position] if result.tokens else None,
        "target_reason": result.target_reason,
        "core_version": core_version,
        "package_versions": versions,
        "created_at": result.created_at,
        "duration_s": round(result.duration_s, 4),
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "cache_hit": result.cache_hit,
        "warnings": list(result.warnings),
    }


#: attentions.npy (float32 [L, H, T, T]) is in the bundle up to this size (the README states it): past it the
#: file is left out (the manifest says so) unless the export asks for it (ExportOptions.extra["attentions_npy"]).
ATTENTIONS_NPY_MAX_BYTES = 2 * 2**30


def attentions_member(result: AnalysisResult) -> NpyMember:
    """attentions.npy as a member written one layer at a time (result.attention_maps: a layer whose maps were not
    held is recomputed), never the whole float32 array in memory."""
    L, H, T = result.n_layers, result.n_heads, result.n_tokens
    return NpyMember((L, H, T, T), np.float32, result.attention_maps)


def attentions_npy_kept(result: AnalysisResult, options: ExportOptions) -> bool:
    """Whether the bundle holds attentions.npy: up to ATTENTIONS_NPY_MAX_BYTES, or when the export asks for it."""
    asked = options.extra.get("attentions_npy")
    if asked is not None:
        return bool(asked)
    return attentions_member(result).nbytes <= ATTENTIONS_NPY_MAX_BYTES


def foundation_files(result: AnalysisResult, options: ExportOptions) -> dict[str, Member]:
    """manifest.json, layer_metrics.csv, attentions.npy (float32 [L, H, T, T], written layer by layer; left out
    past ATTENTIONS_NPY_MAX_BYTES), tokens.json."""
    header = ["layer", *METRIC_NAMES]
    rows = [[r["layer"], *(r[m] for m in METRIC_NAMES)] for r in result.metrics_table()]
    man = manifest(result)
    files: dict[str, Member] = {"layer_metrics.csv": csv_bytes(header, rows)}
    if attentions_npy_kept(result, options):
        files["attentions.npy"] = attentions_member(result)
    else:
        gb = attentions_member(result).nbytes / 2**30
        man["attentions_npy"] = (
            f"left out: {gb:.1f} GB of float32 maps, past the bundle's bound of "
            f"{ATTENTIONS_NPY_MAX_BYTES / 2**30:.0f} GB"
        )
    return {"manifest.json": json_bytes(man), **files, "tokens.json": json_bytes(result.tokens)}


#: The writers, in order. Each returns {member name: bytes}; the report is added after them (see bundle_files).
WRITERS: list[Writer] = [
    foundation_files,
    figure_files,
    session_log_files,
    hidden_states_files,
    prediction_bundle_files,
    attention_bundle_files,
    peer_bundle_files,
    head_ablation_files,
    neuron_factor_files,
    query_key_files,
    sae_files,
]


def bundle_files(result: AnalysisResult, options: ExportOptions | None = None) -> dict[str, Member]:
    """All bundle members as {safe name: bytes}: every writer of WRITERS, then report.pdf (which embeds the
    plots/*.png written before it). attentions.npy is an NpyMember (core.infra.formats): written layer by layer
    when the files are (write_files, zip_bytes); member_bytes gives its bytes."""
    opts = options or ExportOptions()
    files: dict[str, Member] = {}
    with gc_paused():  # thousands of short-lived matplotlib objects: see core.infra.threads.gc_paused
        for writer in WRITERS:
            files.update(writer(result, opts))
        files.update(report_files(result, files, opts))
    return files


def write_bundle(result: AnalysisResult, out: str | Path, options: ExportOptions | None = None) -> Path:
    """Build the bundle of `result` and write it to `out` (.zip or folder). Returns the path written."""
    return write_files(bundle_files(result, options), out)
