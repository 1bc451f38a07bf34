"""The SAE-feature patching bundle (core/export/sae_patching_bundle.py, core/figures/sae.py patching_figure): the
figure's bars are the run's restored shares and ablation Δm, computed here from the stored m values; the ZIP holds
the plot and a PDF with the report and the definitions."""

from __future__ import annotations

import numpy as np
from test_sae_patching import ANSWERS, CAUSAL, _sae

from core.export.pdf import outline_titles
from core.export.sae_patching_bundle import sae_patching_files
from core.figures.sae import patching_figure
from core.studies.sae_patching import run_sae_patching


def test_figure_bars_and_bundle_files(tiny_gpt2, tmp_path):
    sae = _sae(tmp_path / "s", 32, "blocks.1.hook_resid_pre")
    res = run_sae_patching(tiny_gpt2, *CAUSAL, sae, 2, ANSWERS)
    fig = patching_figure(res)
    top, bottom = fig.axes
    T = res.n_tokens
    heights = [p.get_height() for p in top.patches]
    want_feature = (res.feature_patch - res.m_corrupted) / (res.m_clean - res.m_corrupted)  # restored, by hand
    want_error = (res.error_patch - res.m_corrupted) / (res.m_clean - res.m_corrupted)
    np.testing.assert_allclose(heights[:T], np.nan_to_num(want_feature), atol=1e-12)
    np.testing.assert_allclose(heights[T : 2 * T], np.nan_to_num(want_error), atol=1e-12)
    np.testing.assert_allclose([p.get_height() for p in bottom.patches], res.feature_ablation, atol=1e-12)
    site = (res.site_patch_all - res.m_corrupted) / (res.m_clean - res.m_corrupted)
    assert any(np.isclose(line.get_ydata()[0], site) for line in top.lines)
    files = sae_patching_files(res)
    assert {"manifest.json", "sae_patching.csv", "sae_patching.json", "plots/sae_patching.png", "report.pdf"} == set(
        files
    )
    assert files["plots/sae_patching.png"].startswith(b"\x89PNG") and files["report.pdf"].startswith(b"%PDF")
    titles = [t for t, *_ in outline_titles(files["report.pdf"])]
    assert "Report" in titles and "Formulas and interpretation" in titles
    assert set(sae_patching_files(res, pdf=False)) == {"manifest.json", "sae_patching.csv", "sae_patching.json"}
