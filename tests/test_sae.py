"""Sparse-autoencoder features (core.model.sae, core.model.sites, core.steps.sae): SAEs written by the test in
SAELens's format on tiny random GPT-2 and Llama models. Activations are checked against the encoder formula
(written out in numpy below) applied to activations captured by hooks placed by hand on the named modules."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

from core.analysis.pipeline import analyze
from core.analysis.result import AnalysisResult, results_equal
from core.infra.errors import InputError
from core.model.sae import load_sae, save_sae

TEXT = "The cat sat on the mat. The dog sat on the log."


def _base(loaded):
    m = loaded.model
    return m.transformer if hasattr(m, "transformer") else m.model


def _blocks(loaded):
    b = _base(loaded)
    return b.h if hasattr(b, "h") else b.layers


def _analyze(loaded, **settings):
    """The analysis with the slow steps that SAE features do not need switched off."""
    return analyze(loaded, TEXT, compute_gradients=False, neuron_factors=0, **settings)


def _hand_capture(loaded, hook: str, layer: int, text: str = TEXT) -> np.ndarray:
    """The activation at a site, captured by a hook registered here by hand on the HF module (float64 [T, W])."""
    blk = _blocks(loaded)[layer]
    gpt2 = hasattr(_base(loaded), "h")
    got = {}
    if hook == "hook_resid_pre":
        h = blk.register_forward_pre_hook(
            lambda m, a, k: got.__setitem__("x", (a[0] if a else k["hidden_states"])), with_kwargs=True
        )
    elif hook == "hook_resid_post":
        h = blk.register_forward_hook(lambda m, a, o: got.__setitem__("x", o[0] if isinstance(o, tuple) else o))
    elif hook == "hook_mlp_out":
        mod = blk.mlp.c_proj if gpt2 else blk.mlp.down_proj
        h = mod.register_forward_hook(lambda m, a, o: got.__setitem__("x", o))
    elif hook == "hook_attn_out":
        mod = blk.attn.c_proj if gpt2 else blk.self_attn.o_proj
        h = mod.register_forward_hook(lambda m, a, o: got.__setitem__("x", o))
    else:  # attn.hook_z
        mod = blk.attn.c_proj if gpt2 else blk.self_attn.o_proj
        h = mod.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0]))
    try:
        enc = loaded.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            loaded.model(**enc)
    finally:
        h.remove()
    return got["x"][0].double().numpy()


def _formula(x, W_enc, b_enc, b_dec, arch, apply_b_dec, threshold=None, k=None):
    """The SAE encoder written out in numpy (float64)."""
    xin = x - b_dec if apply_b_dec else x
    pre = xin @ W_enc + b_enc
    f = np.maximum(pre, 0)
    if arch == "jumprelu":
        f = f * (pre > threshold)
    if arch == "topk":
        out = np.zeros_like(pre)
        idx = np.argsort(-pre, axis=1, kind="stable")[:, :k]
        np.put_along_axis(out, idx, np.maximum(np.take_along_axis(pre, idx, 1), 0), 1)
        f = out
    return f


def _random_sae(folder, d_in, d_sae, hook, arch, apply_b_dec, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    b_enc = torch.randn(d_sae, generator=g) * 0.1
    W_dec = torch.randn(d_sae, d_in, generator=g) / d_sae**0.5
    b_dec = torch.randn(d_in, generator=g) * 0.1
    threshold = torch.rand(d_sae, generator=g) * 0.3 if arch == "jumprelu" else None
    k = 5 if arch == "topk" else None
    save_sae(folder, W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, hook_name=hook, architecture=arch,
             threshold=threshold, k=k, apply_b_dec_to_input=apply_b_dec, **kw)  # fmt: skip
    return {"W_enc": W_enc.double().numpy(), "b_enc": b_enc.double().numpy(), "b_dec": b_dec.double().numpy(),
            "threshold": None if threshold is None else threshold.double().numpy(), "k": k}  # fmt: skip


def _load_folder(folder):
    from core.model.loading import load_model

    return load_model(str(folder), dtype="float32", device="cpu")


def _dense(sec, T, d_sae):
    out = np.zeros((T, d_sae))
    out[sec.positions, sec.features] = sec.activations
    return out


@pytest.mark.parametrize("model_name", ["tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_activations_equal_the_encoder_formula_on_hand_hooked_activations(
    request, tmp_path, model_name, arch, apply_b_dec
):
    loaded = request.getfixturevalue(model_name)
    D = loaded.model.config.hidden_size
    hooks = [("blocks.0.hook_resid_pre", 0, "hook_resid_pre", D), ("blocks.1.hook_mlp_out", 1, "hook_mlp_out", D),
             ("blocks.1.attn.hook_z", 1, "attn.hook_z", D), ("blocks.0.hook_resid_post", 0, "hook_resid_post", D),
             ("blocks.0.hook_attn_out", 0, "hook_attn_out", D)]  # fmt: skip
    dirs, weights = [], {}
    for i, (name, _l, _h, width) in enumerate(hooks):
        d = tmp_path / f"sae{i}"
        weights[name] = _random_sae(d, width, 48, name, arch, apply_b_dec, seed=i)
        dirs.append(str(d))
    res = _analyze(loaded, sae_dirs=tuple(dirs))
    assert res.sae is not None and len(res.sae.saes) == len(hooks)
    for name, layer, hook, _w in hooks:
        sec = res.sae.by_hook(name)
        x = _hand_capture(loaded, hook, layer)
        w = weights[name]
        want = _formula(x, w["W_enc"], w["b_enc"], w["b_dec"], arch, apply_b_dec, w["threshold"], w["k"])
        got = _dense(sec, res.n_tokens, 48)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
        assert (sec.l0 == (want > 0).sum(1)).all()


def test_the_bundle_csv_holds_the_formula_values(tmp_path, tiny_llama):
    from core.export.bundle import bundle_files

    w = _random_sae(tmp_path / "s", 32, 40, "blocks.1.hook_resid_pre", "standard", True)
    res = _analyze(tiny_llama, sae_dirs=(str(tmp_path / "s"),))
    files = bundle_files(res)
    plots = ("plots/sae_heatmap.png", "plots/sae_strips.png", "plots/sae_target.png")
    for name in ("sae_features.csv", "sae_summary.csv", "sae_feature_logits.csv", *plots):
        assert name in files, name
    rows = list(csv.DictReader(io.StringIO(files["sae_features.csv"].decode())))
    assert list(rows[0]) == ["hook", "position", "token", "feature", "activation"]
    x = _hand_capture(tiny_llama, "hook_resid_pre", 1)
    want = _formula(x, w["W_enc"], w["b_enc"], w["b_dec"], "standard", True)
    got = np.zeros_like(want)
    for r in rows:
        got[int(r["position"]), int(r["feature"])] = float(r["activation"])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    summary = list(csv.DictReader(io.StringIO(files["sae_summary.csv"].decode())))
    assert [int(r["l0"]) for r in summary] == list((want > 0).sum(1))
    assert b"SAE" in files["report.pdf"] or len(files["report.pdf"]) > 1000


def test_planted_feature_fires_on_its_token_only(tmp_path, tiny_llama):
    """Llama's block-0 input is the token embedding itself: a feature whose encoder column is token y's embedding
    direction, with a bias halfway between y's own projection (1) and the largest other one, fires exactly on y."""
    tok = tiny_llama.tokenizer
    ids = tok(TEXT)["input_ids"]
    y = ids[2]
    E = tiny_llama.model.model.embed_tokens.weight.detach().double()
    e = E[y]
    proj = (E @ e) / (e @ e)  # 1 at y
    others = torch.cat([proj[:y], proj[y + 1 :]])
    assert float(others.max()) < 0.99
    cut = (1 + float(others.max())) / 2
    W_enc = torch.zeros(32, 4)
    W_enc[:, 1] = (e / (e @ e)).float()
    b_enc = torch.tensor([-5.0, -cut, -5.0, -5.0])
    save_sae(tmp_path / "p", W_enc=W_enc, b_enc=b_enc, W_dec=torch.randn(4, 32), b_dec=torch.zeros(32),
             hook_name="blocks.0.hook_resid_pre")  # fmt: skip
    res = _analyze(tiny_llama, sae_dirs=(str(tmp_path / "p"),))
    prof = res.sae.saes[0].feature_profile(1)
    fired = {int(t) for t in np.flatnonzero(prof > 0)}
    assert fired == {i for i, t in enumerate(ids) if t == y}
    assert fired  # the token occurs


def test_perfect_sae_has_fvu_zero_and_cosine_one(tmp_path, tiny_gpt2):
    """d_sae = d_in, identity encoder and decoder, b_dec = −c with apply_b_dec_to_input: x + c > 0 passes the ReLU
    unchanged and the decoder adds b_dec back, so x̂ = x."""
    x = _hand_capture(tiny_gpt2, "hook_resid_post", 0)
    c = float(np.abs(x).max()) + 1.0
    eye = torch.eye(32)
    save_sae(tmp_path / "id", W_enc=eye, b_enc=torch.zeros(32), W_dec=eye, b_dec=torch.full((32,), -c),
             hook_name="blocks.0.hook_resid_post", apply_b_dec_to_input=True)  # fmt: skip
    res = _analyze(tiny_gpt2, sae_dirs=(str(tmp_path / "id"),))
    s = res.sae.saes[0]
    assert s.fvu_total == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(s.fvu, 0.0, atol=1e-9)
    np.testing.assert_allclose(s.cosine, 1.0, atol=1e-9)
    assert (s.l0 == 32).all()


def test_fvu_of_a_zero_decoder_is_the_uncentred_share(tmp_path, tiny_gpt2):
    """x̂ = b_dec = x̄ (the text's mean) → FVU_t = ‖x_t − x̄‖² / mean_s ‖x_s − x̄‖², which averages to 1."""
    x = _hand_capture(tiny_gpt2, "hook_resid_pre", 1)
    mean = torch.tensor(x.mean(0)).float()
    save_sae(tmp_path / "z", W_enc=torch.zeros(32, 8), b_enc=torch.zeros(8), W_dec=torch.zeros(8, 32), b_dec=mean,
             hook_name="blocks.1.hook_resid_pre")  # fmt: skip
    s = _analyze(tiny_gpt2, sae_dirs=(str(tmp_path / "z"),)).sae.saes[0]
    var = ((x - x.mean(0)) ** 2).sum(1)
    np.testing.assert_allclose(s.fvu, var / var.mean(), rtol=1e-4)
    assert s.fvu_total == pytest.approx(1.0, rel=1e-4)


def test_fvu_leaves_the_special_tokens_out(tmp_path, tiny_llama):
    """Llama prepends <s>: x̄ and the overall FVU run over the ordinary tokens S only (as SAELens's evals), so a
    decoder that outputs the ordinary tokens' mean has FVU 1 whatever <s> is; <s> keeps its FVU_t against the same
    denominator. Checked against numpy on hand-captured activations."""
    x = _hand_capture(tiny_llama, "hook_resid_pre", 1)
    res = _analyze(tiny_llama, sae_dirs=())
    special = np.asarray(res.special_mask)
    assert special[0] and not special[1:].any()  # the <s> the claim is about
    ordinary = x[~special]
    mean = ordinary.mean(0)
    save_sae(tmp_path / "z", W_enc=torch.zeros(32, 8), b_enc=torch.zeros(8), W_dec=torch.zeros(8, 32),
             b_dec=torch.tensor(mean).float(), hook_name="blocks.1.hook_resid_pre")  # fmt: skip
    s = _analyze(tiny_llama, sae_dirs=(str(tmp_path / "z"),)).sae.saes[0]
    denom = ((ordinary - mean) ** 2).sum(1).mean()
    np.testing.assert_allclose(s.fvu, ((x - mean) ** 2).sum(1) / denom, rtol=1e-4)
    assert s.fvu_total == pytest.approx(1.0, rel=1e-4)
    with_s = ((x - x.mean(0)) ** 2).sum(1)  # what the whole text would give: another number
    assert abs(((x - mean) ** 2).sum() / with_s.sum() - 1.0) > 1e-3


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm", "expected_average_only_in"])
def test_normalize_activations(tmp_path, tiny_gpt2, norm):
    _random_sae(tmp_path / "n", 32, 24, "blocks.1.hook_resid_pre", "standard", True, normalize_activations=norm)
    sae = load_sae(tmp_path / "n")
    x = torch.tensor(_hand_capture(tiny_gpt2, "hook_resid_pre", 1)).float()
    if norm == "constant_norm_rescale":
        xn = x * (32**0.5) / x.norm(dim=-1, keepdim=True)
    elif norm == "layer_norm":
        xc = x - x.mean(-1, keepdim=True)
        xn = xc / (xc.std(-1, keepdim=True) + 1e-5)
    else:
        xn = x
    pre = (xn - sae.b_dec) @ sae.W_enc + sae.b_enc
    torch.testing.assert_close(sae.encode(x), torch.relu(pre), atol=1e-5, rtol=0)
    f, xh = sae.encode_decode(x)
    y = f @ sae.W_dec + sae.b_dec
    if norm == "constant_norm_rescale":
        y = y / ((32**0.5) / x.norm(dim=-1, keepdim=True))
    elif norm == "layer_norm":
        y = y * (x - x.mean(-1, keepdim=True)).std(-1, keepdim=True) + x.mean(-1, keepdim=True)
    torch.testing.assert_close(xh, y, atol=1e-5, rtol=1e-5)


def test_feature_ablation_equals_a_hand_written_hook(tmp_path, tiny_gpt2):
    """Removing feature f changes the logits exactly as subtracting a_f · W_dec[f] by a hand-written hook."""
    from core.steps.sae import intervene

    _random_sae(tmp_path / "a", 32, 40, "blocks.0.hook_resid_post", "standard", False)
    sae = load_sae(tmp_path / "a")
    x = torch.tensor(_hand_capture(tiny_gpt2, "hook_resid_post", 0)).float()
    f = sae.encode(x)
    feat = int(f.sum(0).argmax())
    assert float(f[:, feat].max()) > 0
    enc = tiny_gpt2.tokenizer(TEXT, return_tensors="pt")
    got = intervene(tiny_gpt2, enc["input_ids"], enc["attention_mask"], sae, feature=feat, scale=0.0)
    delta = f[:, feat : feat + 1] * sae.W_dec[feat]  # [T, D]

    def hook(m, a, o):
        return (o[0] - delta.unsqueeze(0), *o[1:]) if isinstance(o, tuple) else o - delta.unsqueeze(0)

    h = tiny_gpt2.model.transformer.h[0].register_forward_hook(hook)
    try:
        with torch.no_grad():
            want = tiny_gpt2.model(**enc).logits[0]
    finally:
        h.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        clean = tiny_gpt2.model(**enc).logits[0]
    assert float((got - clean).abs().max()) > 1e-4  # the ablation did something
    # doubling adds the same change the other way
    twice = intervene(tiny_gpt2, enc["input_ids"], enc["attention_mask"], sae, feature=feat, scale=2.0)
    assert float((twice - clean).abs().max()) > 1e-4
    # removing the error term: the site carries x̂ exactly
    no_err = intervene(tiny_gpt2, enc["input_ids"], enc["attention_mask"], sae, remove_error=True)
    xh = sae.encode_decode(x)[1]
    h = tiny_gpt2.model.transformer.h[0].register_forward_hook(
        lambda m, a, o: (xh.unsqueeze(0), *o[1:]) if isinstance(o, tuple) else xh.unsqueeze(0)
    )
    try:
        with torch.no_grad():
            want2 = tiny_gpt2.model(**enc).logits[0]
    finally:
        h.remove()
    torch.testing.assert_close(no_err, want2, atol=1e-5, rtol=1e-5)


def test_logit_effects_follow_the_frozen_final_norm(tmp_path, tiny_gpt2):
    """A feature's effect = W_U (γ/σ_t · centre(W_dec[f])) with ln_f's σ frozen at the feature's peak position."""
    _random_sae(tmp_path / "l", 32, 16, "blocks.1.hook_resid_pre", "standard", False)
    res = _analyze(tiny_gpt2, sae_dirs=(str(tmp_path / "l"),))
    s = res.sae.saes[0]
    sae = load_sae(tmp_path / "l")
    assert s.logit_features.size > 0
    ln = tiny_gpt2.model.transformer.ln_f
    W_U = tiny_gpt2.model.lm_head.weight.detach().double()
    for i, (f, t) in enumerate(zip(s.logit_features, s.logit_positions)):
        h = torch.tensor(res.hidden_states[-1][t]).double()
        sigma = torch.sqrt(h.var(unbiased=False) + ln.eps)
        d = sae.W_dec[f].double()
        z = W_U @ (ln.weight.detach().double() * (d - d.mean()) / sigma)
        top = torch.topk(z, s.promote_ids.shape[1])
        assert list(s.promote_ids[i]) == top.indices.tolist()
        np.testing.assert_allclose(s.promote_effects[i], top.values.numpy(), rtol=1e-4, atol=1e-6)
        assert s.suppress_effects[i, 0] == pytest.approx(float(z.min()), rel=1e-4)
        assert t == int(np.argmax(s.feature_profile(int(f)))) or s.feature_profile(int(f)).max() == 0


def test_refusals_are_one_line(tmp_path, tiny_gpt2, monkeypatch):
    _random_sae(tmp_path / "wide", 48, 8, "blocks.0.hook_resid_pre", "standard", True)
    with pytest.raises(InputError, match="48-wide") as e:
        _analyze(tiny_gpt2, sae_dirs=(str(tmp_path / "wide"),))
    assert "\n" not in str(e.value)
    _random_sae(tmp_path / "deep", 32, 8, "blocks.7.hook_resid_pre", "standard", True)
    with pytest.raises(InputError, match="2 blocks"):
        _analyze(tiny_gpt2, sae_dirs=(str(tmp_path / "deep"),))
    _random_sae(tmp_path / "odd", 32, 8, "blocks.0.hook_q", "standard", True)
    with pytest.raises(InputError, match="unknown hook"):
        load_sae(tmp_path / "odd")
    _random_sae(tmp_path / "gated", 32, 8, "blocks.0.hook_resid_pre", "gated", True)
    with pytest.raises(InputError, match="architecture 'gated' is not supported"):
        load_sae(tmp_path / "gated")
    with pytest.raises(InputError, match="not an SAE folder"):
        load_sae(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        load_sae(tmp_path / "missing")
    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "cfg.json").write_text('{"d_in": 32, "d_sae": 8, "hook_name": "blocks.0.hook_resid_pre"}')
    (tmp_path / "pickle" / "sae_weights.pt").write_bytes(b"not read")
    with pytest.raises(InputError, match="only safetensors"):
        load_sae(tmp_path / "pickle")
    _random_sae(tmp_path / "a", 32, 8, "blocks.0.hook_resid_pre", "standard", True, seed=1)
    _random_sae(tmp_path / "b", 32, 8, "blocks.0.hook_resid_pre", "standard", True, seed=2)
    with pytest.raises(InputError, match="one SAE per hook"):
        _analyze(tiny_gpt2, sae_dirs=(str(tmp_path / "a"), str(tmp_path / "b")))
    # a model name that differs is a warning, not a refusal
    _random_sae(tmp_path / "other", 32, 8, "blocks.0.hook_resid_pre", "standard", True, model_name="pythia-70m")
    res = _analyze(tiny_gpt2, sae_dirs=(str(tmp_path / "other"),))
    assert any("trained on 'pythia-70m'" in w for w in res.warnings)
    # public instances
    monkeypatch.setenv("TMA_ALLOW_LOCAL_MODELS", "0")
    with pytest.raises(InputError, match="TMA_ALLOW_LOCAL_MODELS=0") as e:
        _analyze(tiny_gpt2, sae_dirs=(str(tmp_path / "missing-folder"),))
    assert "missing-folder" not in str(e.value)
    monkeypatch.setenv("TMA_ALLOW_LOCAL_MODELS", "1")
    _random_sae(tmp_path / "big", 32, 10_000, "blocks.0.hook_resid_pre", "standard", True)  # 2.4 MB of weights
    monkeypatch.setenv("TMA_MAX_SAE_MB", "1")
    with pytest.raises(InputError, match="TMA_MAX_SAE_MB"):
        load_sae(tmp_path / "big")


def test_result_round_trips_and_the_cache_key_follows_the_weights(tmp_path, tiny_gpt2):
    from core.analysis.pipeline import cache_key

    _random_sae(tmp_path / "r", 32, 16, "blocks.1.hook_resid_pre", "topk", True)
    res = _analyze(tiny_gpt2, sae_dirs=(str(tmp_path / "r"),))
    back = AnalysisResult.from_bytes(res.to_bytes())
    assert results_equal(res, back)
    assert isinstance(back.settings.sae_dirs, tuple)
    k1 = cache_key(tiny_gpt2.info(), TEXT, res.settings)
    _random_sae(tmp_path / "r", 32, 16, "blocks.1.hook_resid_pre", "topk", True, seed=9)
    assert cache_key(tiny_gpt2.info(), TEXT, res.settings) != k1
    plain = _analyze(tiny_gpt2)
    assert plain.sae is None and "sae_dirs" not in plain.settings.to_dict()


def test_cli_analyze_with_sae(tmp_path, tiny_dirs, monkeypatch):
    from core.cli.main import main

    monkeypatch.setenv("TMA_RUNS_DIR", str(tmp_path / "runs"))
    w = _random_sae(tmp_path / "s", 32, 16, "blocks.0.hook_mlp_out", "jumprelu", False)
    out = tmp_path / "bundle"
    rc = main(["analyze", "--model", str(tiny_dirs["gpt2"]), "--text", TEXT, "--sae", str(tmp_path / "s"),
               "--no-gradients", "--views", "none", "--out", str(out)])  # fmt: skip
    assert rc in (0, None)
    assert (out / "sae_summary.csv").is_file() and (out / "sae_feature_logits.csv").is_file()
    rows = list(csv.DictReader(io.StringIO((out / "sae_features.csv").read_text(encoding="utf-8"))))
    loaded = _load_folder(tiny_dirs["gpt2"])
    x = _hand_capture(loaded, "hook_mlp_out", 0)
    want = _formula(x, w["W_enc"], w["b_enc"], w["b_dec"], "jumprelu", False, w["threshold"])
    got = np.zeros_like(want)
    for r in rows:
        got[int(r["position"]), int(r["feature"])] = float(r["activation"])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert (want > 0).sum() > 0


def test_cli_refuses_a_bad_sae_in_one_line(tmp_path, tiny_dirs, capsys, monkeypatch):
    from core.cli.main import main

    monkeypatch.setenv("TMA_RUNS_DIR", str(tmp_path / "runs"))
    _random_sae(tmp_path / "s", 16, 8, "blocks.0.hook_mlp_out", "standard", False)
    rc = main(["analyze", "--model", str(tiny_dirs["gpt2"]), "--text", TEXT, "--sae", str(tmp_path / "s"),
               "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "Loading weights" not in ln]
    assert len(lines) == 1 and "16-wide" in lines[0]


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_matches_sae_lens_encode(tmp_path, tiny_gpt2, arch, apply_b_dec):
    """sae-lens's own loader and encoder on the same folder (skipped where sae-lens is not installed)."""
    sae_lens = pytest.importorskip("sae_lens")
    _random_sae(tmp_path / "x", 32, 24, "blocks.1.hook_resid_pre", arch, apply_b_dec)
    ours = load_sae(tmp_path / "x")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "x"), device="cpu")
    x = torch.tensor(_hand_capture(tiny_gpt2, "hook_resid_pre", 1)).float()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode_decode(x)[1], theirs.decode(theirs.encode(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm", "expected_average_only_in"])
def test_normalisation_matches_sae_lens(tmp_path, tiny_gpt2, norm):
    sae_lens = pytest.importorskip("sae_lens")
    _random_sae(tmp_path / "x", 32, 24, "blocks.1.hook_resid_pre", "standard", True, normalize_activations=norm)
    ours = load_sae(tmp_path / "x")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "x"), device="cpu")
    x = torch.tensor(_hand_capture(tiny_gpt2, "hook_resid_pre", 1)).float()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode_decode(x)[1], theirs(x), atol=1e-4, rtol=1e-4)


CORPUS = ["The cat sat on the mat.", "The dog sat on the log.", "A bird flew over the house.", "Paris is the capital."]


@pytest.mark.parametrize("model_name", ["tiny_gpt2", "tiny_llama"])
def test_corpus_top_examples_equal_a_brute_force_scan(request, tmp_path, model_name):
    from core.studies.sae_corpus import sae_corpus

    loaded = request.getfixturevalue(model_name)
    _random_sae(tmp_path / "c", 32, 30, "blocks.1.hook_mlp_out", "standard", False)
    sae = load_sae(tmp_path / "c")
    got = sae_corpus(loaded, CORPUS, [str(tmp_path / "c")], top_n=3)[0]
    # brute force: every (activation, text, position) of every feature, from hand-hooked activations
    rows, n_tok = [], 0
    fire = np.zeros(30)
    total = np.zeros(30)
    for i, text in enumerate(CORPUS):
        x = torch.tensor(_hand_capture(loaded, "hook_mlp_out", 1, text)).float()
        f = sae.encode(x).double().numpy()
        ids = loaded.tokenizer(text)["input_ids"]
        special = [t in loaded.tokenizer.all_special_ids for t in ids]
        for p in range(f.shape[0]):
            if special[p]:
                continue
            n_tok += 1
            fire += f[p] > 0
            total += f[p]
            for j in np.flatnonzero(f[p] > 0):
                rows.append((int(j), -f[p, j], i, p))
    rows.sort()
    want = {}
    for j, neg, i, p in rows:
        want.setdefault(j, [])
        if len(want[j]) < 3:
            want[j].append((i, p, -neg))
    assert got.n_tokens == n_tok
    np.testing.assert_array_equal(got.fire_count, fire)
    np.testing.assert_allclose(got.act_sum, total, rtol=1e-5, atol=1e-6)
    have: dict[int, list] = {}
    for f_, r, t, p, a in zip(got.ex_feature, got.ex_rank, got.ex_text, got.ex_position, got.ex_activation):
        have.setdefault(int(f_), []).append((int(r), int(t), int(p), float(a)))
    assert sorted(have) == sorted(want)
    for j, exs in want.items():
        assert [r for r, *_ in have[j]] == list(range(1, len(exs) + 1))
        assert [(t, p) for _, t, p, _ in have[j]] == [(i, p) for i, p, _ in exs]
        np.testing.assert_allclose([a for *_, a in have[j]], [a for *_, a in exs], rtol=1e-4, atol=1e-5)
    ctx = got.ex_context[0]
    assert "⟦" in ctx and "⟧" in ctx


def test_cli_corpus_with_sae(tmp_path, tiny_dirs, monkeypatch):
    from core.cli.main import main

    monkeypatch.setenv("TMA_RUNS_DIR", str(tmp_path / "runs"))
    _random_sae(tmp_path / "s", 32, 16, "blocks.0.hook_resid_post", "topk", True)
    (tmp_path / "texts.txt").write_text("\n".join(CORPUS), encoding="utf-8")
    out = tmp_path / "corpus"
    args = ["corpus", "--model", str(tiny_dirs["gpt2"]), "--text-file", str(tmp_path / "texts.txt"),
            "--sae", str(tmp_path / "s"), "--out", str(out), "--bootstrap", "10", "--quiet", "--no-cache"]  # fmt: skip
    rc = main(args)
    assert rc in (0, None)
    rows = list(csv.DictReader(io.StringIO((out / "sae_feature_examples.csv").read_text(encoding="utf-8"))))
    assert rows and list(rows[0]) == ["hook", "feature", "rank", "text_index", "position", "token", "activation",
                                      "context"]  # fmt: skip
    stats = list(csv.DictReader(io.StringIO((out / "sae_feature_stats.csv").read_text(encoding="utf-8"))))
    assert all(0 < float(r["firing_rate"]) <= 1 for r in stats)


def test_cli_sae_ablate_writes_the_change_of_the_logits(tmp_path, tiny_dirs, tiny_gpt2, monkeypatch):
    from core.cli.main import main
    from core.steps.sae import intervene

    monkeypatch.setenv("TMA_RUNS_DIR", str(tmp_path / "runs"))
    _random_sae(tmp_path / "s", 32, 40, "blocks.0.hook_resid_post", "standard", False)
    sae = load_sae(tmp_path / "s")
    x = torch.tensor(_hand_capture(tiny_gpt2, "hook_resid_post", 0)).float()
    feat = int(sae.encode(x).sum(0).argmax())
    out = tmp_path / "abl"
    args = ["sae-ablate", "--model", str(tiny_dirs["gpt2"]), "--text", TEXT, "--sae", str(tmp_path / "s"),
            "--feature", str(feat), "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    rows = list(csv.DictReader(io.StringIO((out / "sae_ablation.csv").read_text(encoding="utf-8"))))
    enc = tiny_gpt2.tokenizer(TEXT, return_tensors="pt")
    changed = intervene(tiny_gpt2, enc["input_ids"], enc["attention_mask"], sae, feature=feat, scale=0.0)
    with torch.no_grad():
        clean = tiny_gpt2.model(**enc).logits[0]
    for t, r in enumerate(rows):
        y = int(clean[t].argmax())
        assert float(r["delta_logit"]) == pytest.approx(float(changed[t, y] - clean[t, y]), abs=1e-4)
        assert float(r["activation"]) == pytest.approx(float(sae.encode(x)[t, feat]), abs=1e-4)
    assert main([*args[:9], "--feature", "999", "--out", str(tmp_path / "x"), "--quiet"]) == 2
