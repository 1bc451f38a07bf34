"""An SAE feature as a causal site (core.studies.sae_patching, `python -m core patch --sae`): SAEs written by the test
in SAELens's format on tiny random models. Feature patching is checked against a hook written here by hand on the HF
module that adds (a_clean − a_corrupted) · W_dec[F]; error + every feature against the whole site; ablation against
core.steps.sae.intervene; the whole site at hook_resid_pre against the residual row of ordinary patching."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
import pytest
import torch

from core.infra.errors import InputError
from core.model.arch import model_parts
from core.model.sae import load_sae, save_sae
from core.model.sites import site
from core.steps.sae import intervene
from core.studies.patching import PatchingSettings, run_patching
from core.studies.sae_patching import added_metrics, error_term, feature_term, recorded_run, run_sae_patching

CAUSAL = ("The dog sat on the log", "The log sat on the dog")
MASKED = ("The dog sat on the [MASK].", "A bird flew over the [MASK].")
ANSWERS = PatchingSettings(answer=" dog", wrong_answer="og")
BERT_ANSWERS = PatchingSettings(answer="test", wrong_answer="##ran")
D_SAE = 12


def _sae(folder, d_in, hook, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    save_sae(folder, W_enc=torch.randn(d_in, D_SAE, generator=g) / d_in**0.5,
             b_enc=torch.rand(D_SAE, generator=g) * 0.2, W_dec=torch.randn(D_SAE, d_in, generator=g),
             b_dec=torch.randn(d_in, generator=g) * 0.1, hook_name=hook, **kw)  # fmt: skip
    return load_sae(folder)


def _blocks(loaded):
    m = loaded.model
    return m.transformer.h if hasattr(m, "transformer") else m.model.layers


def _m(loaded, ids, a, b):
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits[0, -1].double()
    return float(logits[a] - logits[b])


def _ids(loaded, text):
    return loaded.tokenizer(text, return_tensors="pt")["input_ids"]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_feature_patch_equals_hand_written_hook(kind, tiny_gpt2, tiny_llama, tmp_path):
    loaded = tiny_gpt2 if kind == "gpt2" else tiny_llama
    sae = _sae(tmp_path / "s", 32, "blocks.1.hook_resid_pre")
    W_dec = sae.W_dec.double()
    c_ids, k_ids = _ids(loaded, CAUSAL[0]), _ids(loaded, CAUSAL[1])
    # the activations from hooks registered here by hand, through the encoder formula written out
    got = {}
    blk = _blocks(loaded)[1]
    h = blk.register_forward_pre_hook(
        lambda m, a, k: got.__setitem__("x", (a[0] if a else k["hidden_states"])[0].double()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            loaded.model(input_ids=c_ids)
            xc = got["x"]
            loaded.model(input_ids=k_ids)
            xk = got["x"]
    finally:
        h.remove()
    W_enc, b_enc = sae.W_enc.double(), sae.b_enc.double()
    fc, fk = torch.relu(xc @ W_enc + b_enc), torch.relu(xk @ W_enc + b_enc)
    feature = int((fc - fk).abs().sum(0).argmax())  # the feature whose activation differs most
    assert float((fc - fk)[:, feature].abs().max()) > 0
    res = run_sae_patching(loaded, *CAUSAL, sae, feature, ANSWERS)
    a, b = res.answer_id, res.wrong_id
    np.testing.assert_allclose(res.act_clean, fc[:, feature].numpy(), atol=1e-5)
    np.testing.assert_allclose(res.act_corrupted, fk[:, feature].numpy(), atol=1e-5)
    assert res.m_clean == pytest.approx(_m(loaded, c_ids, a, b), abs=1e-4)
    assert res.m_corrupted == pytest.approx(_m(loaded, k_ids, a, b), abs=1e-4)

    def by_hand(rows: list[int]) -> float:
        d = torch.zeros_like(xk)
        d[rows] = (fc[rows, feature] - fk[rows, feature])[:, None] * W_dec[feature]

        def add(m, a_, k):
            if a_:
                return (a_[0] + d.to(a_[0].dtype),), k
            return a_, {**k, "hidden_states": k["hidden_states"] + d.to(k["hidden_states"].dtype)}

        hh = blk.register_forward_pre_hook(add, with_kwargs=True)
        try:
            return _m(loaded, k_ids, a, b)
        finally:
            hh.remove()

    T = len(res.clean_tokens)
    assert res.feature_patch_all == pytest.approx(by_hand(list(range(T))), abs=1e-4)
    for p in range(T):
        assert res.feature_patch[p] == pytest.approx(by_hand([p]), abs=1e-4)
    assert res.feature_patch_all != pytest.approx(res.m_corrupted, abs=1e-6)  # the patch did something
    r = res.restored(res.feature_patch_all)
    assert r == pytest.approx((res.feature_patch_all - res.m_corrupted) / (res.m_clean - res.m_corrupted))


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_error_plus_all_features_equals_whole_site(kind, tiny_gpt2, tiny_bert, tmp_path):
    loaded = tiny_gpt2 if kind == "gpt2" else tiny_bert
    texts = CAUSAL if kind == "gpt2" else MASKED
    answers = ANSWERS if kind == "gpt2" else BERT_ANSWERS
    sae = _sae(tmp_path / "s", 32, "blocks.1.hook_resid_pre", seed=3)
    res = run_sae_patching(loaded, *texts, sae, 0, answers)
    # the whole site at every position = ordinary patching's residual row of block 1 (an independent code path)
    ref = run_patching(loaded, *texts, answers)
    assert res.m_clean == pytest.approx(ref.m_clean, abs=1e-5)
    assert res.m_corrupted == pytest.approx(ref.m_corrupted, abs=1e-5)
    assert res.site_patch_all == pytest.approx(float(ref.metric_all["residual"][1]), abs=1e-5)
    # restored divides by the margin m_clean − m_corrupted: a random tiny BERT's margin can be ~1e-2, so the 1e-5 of
    # float32 rounding between the two code paths (other batch shapes, other BLAS kernels) grows by 1/margin
    tol = max(1e-4, 4e-5 / abs(res.m_clean - res.m_corrupted))
    assert res.restored(res.site_patch_all) == pytest.approx(float(ref.restored_all("residual")[1]), abs=tol)
    # error + every feature, each term computed separately, added together
    s = site(model_parts(loaded.model), sae.hook_name)
    c_ids, k_ids = _ids(loaded, texts[0]), _ids(loaded, texts[1])
    mask = torch.ones_like(c_ids)
    pos = res.target_position
    xc, _ = recorded_run(loaded, s, c_ids, mask, pos)
    xk, _ = recorded_run(loaded, s, k_ids, mask, pos)
    delta = error_term(sae, xc) - error_term(sae, xk)
    for f in range(sae.d_sae):
        delta = delta + feature_term(sae, xc, f)[0] - feature_term(sae, xk, f)[0]
    every = torch.ones(1, xc.shape[0], dtype=torch.bool)
    summed = added_metrics(loaded, s, delta, k_ids, mask, pos, every, res.answer_id, res.wrong_id)[0]
    assert summed == pytest.approx(res.site_patch_all, abs=1e-5)
    if kind == "gpt2":  # the site matters: the check is not 0 = 0 (a random tiny BERT's answer margin at [MASK]
        # barely depends on the context, and its tokenizer is retrained per session: its margin can be ~1e-5)
        assert abs(res.site_patch_all - res.m_corrupted) > 1e-4
    # the error term alone, by the same additive delta
    err_only = added_metrics(loaded, s, error_term(sae, xc) - error_term(sae, xk), k_ids, mask, pos, every,
                             res.answer_id, res.wrong_id)[0]  # fmt: skip
    assert res.error_patch_all == pytest.approx(err_only, abs=1e-5)


@pytest.mark.parametrize("hook", ["blocks.0.hook_mlp_out", "blocks.1.attn.hook_z", "blocks.0.hook_resid_post"])
def test_ablation_equals_intervene(hook, tiny_llama, tmp_path):
    loaded = tiny_llama
    parts = model_parts(loaded.model)
    sae = _sae(tmp_path / "s", site(parts, hook).width, hook, seed=5, normalize_activations="layer_norm")
    c_ids = _ids(loaded, CAUSAL[0])
    mask = torch.ones_like(c_ids)
    xc, _ = recorded_run(loaded, site(parts, hook), c_ids, mask, c_ids.shape[1] - 1)
    feature = int(sae.encode(xc).sum(0).argmax())
    res = run_sae_patching(loaded, *CAUSAL, sae, feature, ANSWERS)
    a, b = res.answer_id, res.wrong_id
    with loaded.lock:
        every = intervene(loaded, c_ids, mask, sae, feature=feature)
        err = intervene(loaded, c_ids, mask, sae, remove_error=True)
        per = [intervene(loaded, c_ids, mask, sae, feature=feature, positions=[p]) for p in range(c_ids.shape[1])]
    assert res.feature_ablation_all == pytest.approx(float(every[-1, a] - every[-1, b]) - res.m_clean, abs=1e-4)
    assert res.error_ablation_all == pytest.approx(float(err[-1, a] - err[-1, b]) - res.m_clean, abs=1e-4)
    for p, lg in enumerate(per):
        assert res.feature_ablation[p] == pytest.approx(float(lg[-1, a] - lg[-1, b]) - res.m_clean, abs=1e-4)
    assert abs(res.feature_ablation_all) > 1e-6


def test_refusals(tiny_gpt2, tmp_path):
    sae = _sae(tmp_path / "s", 32, "blocks.0.hook_resid_pre")
    with pytest.raises(InputError, match="out of range"):
        run_sae_patching(tiny_gpt2, *CAUSAL, sae, D_SAE, ANSWERS)
    wide = _sae(tmp_path / "w", 48, "blocks.0.hook_resid_pre")
    with pytest.raises(InputError, match="wide"):
        run_sae_patching(tiny_gpt2, *CAUSAL, wide, 0, ANSWERS)
    with pytest.raises(InputError, match="token lengths"):
        run_sae_patching(tiny_gpt2, "The dog sat", "A dog sat on the mat today", sae, 0, ANSWERS)


def test_cli_patch_sae(tiny_dirs, tmp_path, capsys):
    from core.cli.main import main

    sae_dir = tmp_path / "s"
    _sae(sae_dir, 32, "blocks.1.hook_resid_pre")
    out = tmp_path / "o.zip"
    args = ["patch", "--model", str(tiny_dirs["gpt2"]), "--clean", CAUSAL[0], "--corrupt", CAUSAL[1],
            "--answer", " dog", "--wrong-answer", "og", "--sae", str(sae_dir), "--feature", "2",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    with zipfile.ZipFile(out) as z:
        rows = list(csv.reader(io.StringIO(z.read("sae_patching.csv").decode())))
        summary = json.loads(z.read("sae_patching.json"))
        assert "manifest.json" in z.namelist()
    assert rows[0][:6] == ["site", "intervention", "position", "restored", "delta_m", "m"]
    kinds = {(r[0], r[1]) for r in rows[1:]}
    assert kinds == {("site", "patch"), ("feature", "patch"), ("error", "patch"), ("feature", "ablate"),
                     ("error", "ablate")}  # fmt: skip
    assert summary["feature"] == 2 and summary["sae"]["hook_name"] == "blocks.1.hook_resid_pre"
    # bad input: one line on stderr, exit 2
    capsys.readouterr()
    assert main([*args[:-4], "--feature", "99", "--out", str(tmp_path / "x.zip")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of range" in err[0]
    assert main([*args[:-4], "--feature", "1", "--hook", "blocks.0.hook_mlp_out", "--out", str(tmp_path / "y")]) == 2
    # two SAEs: --hook names the one to use; without it, one line
    other = tmp_path / "t"
    _sae(other, 32, "blocks.0.hook_mlp_out", seed=1)
    two = [*args[:-4], "--sae", str(other), "--feature", "2"]
    assert main([*two, "--out", str(tmp_path / "two.zip")]) == 2
    assert "--hook" in capsys.readouterr().err
    assert main([*two, "--hook", "blocks.0.hook_mlp_out", "--out", str(tmp_path / "two.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "two.zip") as z:
        assert json.loads(z.read("sae_patching.json"))["sae"]["hook_name"] == "blocks.0.hook_mlp_out"
    assert main(["patch", "--model", str(tiny_dirs["gpt2"]), "--clean", "a b", "--corrupt", "c d",
                 "--sae", str(sae_dir), "--out", str(tmp_path / "z")]) == 2  # fmt: skip


def test_causal_page_sae_tab(tiny_dirs, tmp_path):
    from test_causal_page import CLEAN, CORRUPT, ForwardCounter, causal_page

    from app.state import Keys

    at = causal_page(tiny_dirs["gpt2"])
    assert "SAE feature" not in [t.label for t in at.tabs]  # no SAE folders in the sidebar: no tab
    folder = tmp_path / "my-sae"
    _sae(folder, 32, "blocks.1.hook_resid_pre")
    at.session_state[Keys.SAE_DIRS] = str(folder)
    at.text_area(key=Keys.PATCH_CLEAN).input(CLEAN)
    at.text_area(key=Keys.PATCH_CORRUPT).input(CORRUPT)
    at.text_input(key=Keys.PATCH_ANSWER).input(" dog")
    at.text_input(key=Keys.PATCH_WRONG).input("og")
    at.run()
    assert "SAE feature" in [t.label for t in at.tabs]
    at.number_input(key=Keys.SAE_PATCH_FEATURE).set_value(3).run()
    with ForwardCounter() as fc:
        at.button(key=Keys.SAE_PATCH_RUN).click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert fc.calls > 0
    res = at.session_state[Keys.SAE_PATCH_RESULT]
    assert res is not None and res.feature == 3 and not at.session_state[Keys.SAE_PATCH_ERROR]
    ref = run_sae_patching(_loaded_for(tiny_dirs), *CAUSAL, load_sae(folder), 3, ANSWERS)
    assert res.feature_patch_all == pytest.approx(ref.feature_patch_all, abs=1e-6)
    shown = {m.label: m.value for m in at.metric}
    assert shown["Restored by the feature"] == f"{ref.restored(ref.feature_patch_all):.3f}"
    assert shown["Ablating the feature: Δm"] == f"{ref.feature_ablation_all:+.3f}"
    with ForwardCounter() as fc:
        at.number_input(key=Keys.SAE_PATCH_FEATURE).set_value(4).run()  # changed, not run
    assert fc.calls == 0 and at.session_state[Keys.SAE_PATCH_RESULT] is res
    with zipfile.ZipFile(io.BytesIO(at.session_state[Keys.SAE_PATCH_ZIP]())) as z:  # the CLI's bundle, built on click
        assert {"sae_patching.csv", "plots/sae_patching.png", "report.pdf"} <= set(z.namelist())


def _loaded_for(tiny_dirs):
    from core.model.loading import load_model

    return load_model(str(tiny_dirs["gpt2"]))
