"""The bundle of an SAE-feature patching run (`python -m core patch --sae DIR --feature F`): one pure function from a
core.studies.sae_patching.SAEPatchingResult to named files.

  sae_patching.csv    site,intervention,position,restored,delta_m,m,clean_activation,corrupted_activation,
                      clean_token,corrupted_token (position −1 = every position)
  sae_patching.json   the SAE, the feature, the answers, m_clean / m_corrupted and the every-position numbers
  manifest.json       model provenance, SAE, hook, feature, timings, warnings
  plots/sae_patching.png   core.figures.sae.patching_figure
  report.pdf          the run, the every-position table, the figure and the definitions (core.export.pdf)
Member names are fixed; nothing is derived from user text.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np

from core.export.pdf import Document
from core.figures import plotting
from core.figures.sae import patching_figure
from core.infra.formats import csv_bytes, json_bytes
from core.present import docs
from core.present.chart_spec import target_phrase
from core.studies.sae_patching import CSV_HEADER, SAEPatchingResult

#: docs entries in the PDF's definitions
DOC_KEYS = ("sae_feature_patching",)


def report_pdf(result: SAEPatchingResult, figure_png: bytes) -> bytes:
    """report.pdf: what was run, the every-position numbers, the figure and the definitions."""
    w = Document(f"Transformer Model Analysis - {result.model.model_id} - SAE feature patching")
    w.page()
    w.outline("Report")
    w.h1("SAE feature as a causal site - report")
    w.kv(
        [
            ("Model", result.model.model_id),
            ("SAE", f"{result.sae_name} at {result.hook_name} ({result.d_sae} features)"),
            ("Feature", result.feature),
            ("Clean text", result.clean_text),
            ("Corrupted text", result.corrupted_text),
            ("Target", target_phrase(result.target_position, result.target_reason)),
            ("Metric", f"logit({result.answer_token!r}) - logit({result.wrong_token!r}) at the target"),
            ("m clean / corrupted", f"{result.m_clean:.4g} / {result.m_corrupted:.4g}"),
            ("Core version", result.core_version),
        ]
    )
    for msg in result.warnings:
        w.para(f"• {msg}")
    w.h2("At every position")
    w.table(
        ["intervention", "restored", "delta m"],
        [
            [
                f"patch feature {result.feature}",
                result.restored(result.feature_patch_all),
                result.feature_patch_all - result.m_corrupted,
            ],
            [
                "patch SAE error term",
                result.restored(result.error_patch_all),
                result.error_patch_all - result.m_corrupted,
            ],
            ["patch whole site", result.restored(result.site_patch_all), result.site_patch_all - result.m_corrupted],
            [f"ablate feature {result.feature} (clean run)", "", result.feature_ablation_all],
            ["ablate SAE error term (clean run)", "", result.error_ablation_all],
        ],  # fmt: skip
        widths=(80, 50, 50),
    )
    strongest = np.argsort(-np.abs(np.nan_to_num(result.feature_ablation)), kind="stable")[:10]
    w.h2("Strongest positions (feature ablated)")
    w.table(
        ["pos", "clean token", "activation clean", "activation corrupted", "restored (patch)", "delta m (ablate)"],
        [[int(p), repr(result.clean_tokens[p]), float(result.act_clean[p]), float(result.act_corrupted[p]),
          result.restored(float(result.feature_patch[p])), float(result.feature_ablation[p])] for p in strongest],
        widths=(12, 40, 32, 34, 32, 30),
    )  # fmt: skip
    w.figure(figure_png, docs.caption("sae_feature_patching"))
    w.page()
    w.outline("Formulas and interpretation")
    w.h1("Formulas and interpretation")
    for key in DOC_KEYS:
        e = docs.doc(key)
        w.definition(e.title, docs.formula_text(e.key), docs.interpretation(e.key), e.pitfalls)
    return w.output()


def sae_patching_files(result: SAEPatchingResult, *, pdf: bool = True) -> dict[str, bytes]:
    """The files of the SAE-feature patching bundle {name: bytes}; pdf=False leaves the figure and report out."""
    from core.model.provenance import package_versions, provenance

    prov = provenance(result.model, core_version=result.core_version, versions=package_versions()).to_dict()
    manifest = {
        "kind": "sae_feature_patching",
        **prov,
        "sae": result.sae_name,
        "hook_name": result.hook_name,
        "feature": result.feature,
        "token_count": result.n_tokens,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "warnings": list(result.warnings),
    }
    files = {
        "manifest.json": json_bytes(manifest),
        "sae_patching.csv": csv_bytes(CSV_HEADER, result.rows()),
        "sae_patching.json": json_bytes(result.summary()),
    }
    if pdf:
        fig = patching_figure(result)
        png = plotting.png(fig)
        files["plots/sae_patching.png"] = png
        files["report.pdf"] = report_pdf(result, png)
    return files
