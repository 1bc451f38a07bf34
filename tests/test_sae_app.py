"""AppTest of the SAE widgets (app/sae_widgets.py): the sidebar's SAE folder field feeds the analysis, the Layer
Analysis page's SAE tab shows the three views, and choosing a feature or a token runs no model."""

from __future__ import annotations

import torch
from test_app_pages import LAYERS, ForwardCounter, analyse_with, make_app, no_exception

from core.model.sae import save_sae


def _sae(folder, hook="blocks.1.hook_resid_pre", d_in=32, d_sae=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    save_sae(folder, W_enc=torch.randn(d_in, d_sae, generator=g), b_enc=torch.zeros(d_sae),
             W_dec=torch.randn(d_sae, d_in, generator=g), b_dec=torch.zeros(d_in), hook_name=hook)  # fmt: skip
    return str(folder)


def test_sae_folder_in_the_sidebar_then_views_without_model_runs(tiny_dirs, tmp_path):
    folder = _sae(tmp_path / "my-sae")
    at = make_app()
    at.session_state["sae_dirs_text"] = folder
    at = analyse_with(at, str(tiny_dirs["gpt2"]), "The cat sat on the mat. The dog sat on the log.")
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    r = at.session_state["result"]
    assert r.sae is not None and r.sae.saes[0].hook_name == "blocks.1.hook_resid_pre"
    assert r.settings.sae_dirs == (folder,)
    assert any("my-sae" in c.value and "standard" in c.value for c in at.sidebar.caption)
    at.switch_page(LAYERS).run()
    no_exception(at)
    assert "SAE features" in [t.label for t in at.tabs]
    feature = at.selectbox(key="sae_feature")
    token = at.selectbox(key="sae_token")
    assert feature.options and token.value == r.target_position
    with ForwardCounter() as fc:
        feature.set_value(r.sae.saes[0].strongest(3)[-1]).run()
        at.selectbox(key="sae_token").set_value(1).run()
    no_exception(at)
    assert fc.calls == 0, f"{fc.calls} module calls on SAE widget changes"
    assert at.session_state["sae_token"] == 1
    assert len(at.dataframe) >= 1, "the token's feature table"


def test_a_bad_sae_folder_is_a_message(tiny_dirs, tmp_path):
    folder = _sae(tmp_path / "wide", d_in=16)
    at = make_app()
    at.session_state["sae_dirs_text"] = folder
    at = analyse_with(at, str(tiny_dirs["gpt2"]), "The cat sat on the mat.")
    no_exception(at)
    assert at.error and "16-wide" in at.session_state["error"]["message"]  # the banner (markdown-escaped)
    assert at.session_state["result"] is None


def test_without_sae_the_tab_says_how(tiny_dirs):
    at = analyse_with(make_app(), str(tiny_dirs["gpt2"]), "The cat sat on the mat.")
    at.switch_page(LAYERS).run()
    no_exception(at)
    assert any("SAE folders" in i.value for i in at.info)
