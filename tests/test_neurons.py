"""Neuron factors: the captured activations are what each architecture's MLP feeds its output projection (checked
against a hand computation from the MLP input), the capture stops after the chosen layers, and the NMF factors
reproduce the activations within the solver's reported error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.steps.neurons import (
    capture_mlp_activations,
    factorize,
    layer_range,
    mlp_output_projections,
    neuron_factors,
)

TEXT = "The quick brown fox jumps over the lazy dog. The cat sat on the mat."


def _ids(loaded, text=TEXT):
    enc = loaded.tokenizer(text, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _blocks(model):
    base = model.base_model
    return base.h if hasattr(base, "h") else base.layers if hasattr(base, "layers") else base.encoder.layer


def _hand_activations(loaded, ids, mask):
    """Hook each MLP's *input* and compute its neuron activations by hand from the weights."""
    import torch

    model = loaded.model
    mtype = model.config.model_type
    inputs: dict[int, torch.Tensor] = {}
    handles = []
    for i, block in enumerate(_blocks(model)):
        mlp = block.mlp if mtype != "bert" else block.intermediate
        handles.append(mlp.register_forward_pre_hook(lambda _m, a, i=i: inputs.__setitem__(i, a[0][0].detach())))
    try:
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    out = []
    for i, block in enumerate(_blocks(model)):
        x = inputs[i].double()
        if mtype == "gpt2":  # gelu_new: 0.5 z (1 + tanh(√(2/π) (z + 0.044715 z³))), Conv1D: x W + b
            z = x @ block.mlp.c_fc.weight.double() + block.mlp.c_fc.bias.double()
            a = 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
        elif mtype == "bert":  # exact gelu: z Φ(z)
            z = x @ block.intermediate.dense.weight.double().T + block.intermediate.dense.bias.double()
            a = 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
        else:  # SwiGLU: silu(gate x) * (up x)
            g = x @ block.mlp.gate_proj.weight.double().T
            a = g * torch.sigmoid(g) * (x @ block.mlp.up_proj.weight.double().T)
        out.append(a.numpy())
    return np.stack(out)


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_captured_activations_equal_hand_computation(kind, tiny_gpt2, tiny_bert, tiny_llama):
    loaded = {"gpt2": tiny_gpt2, "bert": tiny_bert, "llama": tiny_llama}[kind]
    ids, mask = _ids(loaded)
    acts = capture_mlp_activations(loaded.model, ids, mask, [0, 1])
    hand = _hand_activations(loaded, ids, mask)
    assert acts.shape == hand.shape == (2, ids.shape[1], 128 if kind == "gpt2" else 64)  # GPT-2: 4 × 32
    np.testing.assert_allclose(acts, hand, rtol=1e-4, atol=1e-5)
    assert (acts < 0).any()  # all three activations have negative values, so the clipping is exercised


def test_capture_stops_after_the_last_layer(tiny_gpt2):
    model = tiny_gpt2.model
    ids, mask = _ids(tiny_gpt2)
    calls = []
    handle = model.lm_head.register_forward_pre_hook(lambda *_: calls.append(1))
    later = _blocks(model)[1].register_forward_pre_hook(lambda *_: calls.append(2))
    try:
        only0 = capture_mlp_activations(model, ids, mask, [0])
    finally:
        handle.remove()
        later.remove()
    assert calls == []  # neither block 1 nor the unembedding ran
    both = capture_mlp_activations(model, ids, mask, [0, 1])
    np.testing.assert_array_equal(only0[0], both[0])
    with pytest.raises(ValueError, match="outside"):
        capture_mlp_activations(model, ids, mask, [2])


def test_nmf_reproduces_activations_within_reported_error(tiny_gpt2):
    ids, mask = _ids(tiny_gpt2)
    acts = capture_mlp_activations(tiny_gpt2.model, ids, mask, [0, 1])
    section, fac = neuron_factors(acts, [0, 1], k=6, seed=0)
    A = np.maximum(acts, 0).transpose(1, 0, 2).reshape(acts.shape[1], -1)
    residual = float(np.linalg.norm(A.astype(np.float64) - fac.W.astype(np.float64) @ fac.H.astype(np.float64)))
    assert residual == pytest.approx(fac.error, rel=1e-4)  # the stored factors are the ones the solver scored
    assert section.error == fac.error and section.relative_error == pytest.approx(fac.error / np.linalg.norm(A))
    assert section.relative_error < 1.0 and (section.token_factors >= 0).all()
    assert section.token_factors.shape == (ids.shape[1], 6)
    # each listed top neuron carries its weight in H, and the list is sorted
    for f in range(6):
        cols = np.array([section.layers.index(x) for x in section.top_layer[f]]) * section.d_ff + section.top_neuron[f]
        np.testing.assert_array_equal(fac.H[f, cols], section.top_weight[f])
        assert (np.diff(section.top_weight[f]) <= 0).all()
        assert section.top_weight[f, 0] == fac.H[f].max()


def test_nmf_recovers_a_planted_low_rank_matrix():
    rng = np.random.default_rng(0)
    W0 = rng.random((40, 3)) * (rng.random((40, 3)) < 0.5)
    H0 = rng.random((3, 300)) * (rng.random((3, 300)) < 0.3)
    A = (W0 @ H0).astype(np.float32)
    fac = factorize(A, 3, seed=0)
    assert fac.error / fac.norm < 1e-2
    assert np.linalg.norm(A - fac.W @ fac.H) == pytest.approx(fac.error, rel=1e-3)
    again = factorize(A, 3, seed=0)
    np.testing.assert_array_equal(fac.W, again.W)  # seeded: the same factors every run


def test_clipped_fraction_and_layout_by_hand():
    acts = np.array([[[1.0, -1.0], [2.0, 0.0]], [[0.0, -2.0], [3.0, 1.0]]], np.float32)  # [2 layers, 2 tokens, 2]
    section, _fac = neuron_factors(acts, [3, 4], k=1, top_n=4)
    assert section.clipped_fraction == pytest.approx(3.0 / 10.0)
    assert section.layers == (3, 4) and section.d_ff == 2
    # A = [[1, 0, 0, 0], [2, 0, 3, 1]]: the factor's heaviest neuron is layer 4 neuron 0
    assert (int(section.top_layer[0, 0]), int(section.top_neuron[0, 0])) == (4, 0)
    rows = section.factor_rows(["a", "b"])
    assert rows[0][:3] == [0, 0, "a"] and len(rows) == 2
    assert section.top_rows()[0][:4] == [0, 0, 5, 0]  # layer index 4 is block 5 in the CSV
    assert section.neuron_name(0, 0) == "L5·N0" and section.blocks == (4, 5)


def test_zero_matrix_and_k_capped():
    fac = factorize(np.zeros((3, 5), np.float32), 6)
    assert fac.W.shape == (3, 3) and fac.error == 0.0
    with pytest.raises(ValueError):
        factorize(-np.ones((2, 2), np.float32), 1)


def test_layer_range():
    # blocks are numbered 1…L in the settings; the range comes back as the model's 0-based layer indices
    assert layer_range(4, None, None) == [0, 1, 2, 3]
    assert layer_range(4, 3, 9) == [2, 3]
    assert layer_range(4, 1, 1) == [0]
    for first, last in ((3, 1), (0, 2)):
        with pytest.raises(ValueError, match="numbered 1…4"):
            layer_range(4, first, last)


def test_unknown_architecture_says_so():
    from types import SimpleNamespace

    import torch

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(model_type="odd", architectures=["OddForCausalLM"])
            self.lin = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="neuron factors are not available for OddForCausalLM"):
        mlp_output_projections(Odd())


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "phi3", "gpt_neox", "opt", "distilbert", "roberta"])
def test_mlp_projection_found_for_other_architectures(arch):
    """The lookup finds the MLP's output projection (its input is d_ff = 64 wide; the hidden width is 32, so the
    attention output projection or a norm would not match) in every block."""
    import torch
    from test_qk import tiny_model

    model = tiny_model(arch)
    ids = torch.randint(3, 60, (1, 7))
    acts = capture_mlp_activations(model, ids, None, [0, 1])
    assert acts.shape == (2, 7, 64)
    assert np.isfinite(acts).all() and not np.allclose(acts[0], acts[1])


# ----------------------------------------------------------------------------------------------------------------
# In the analysis, the bundle and the page


@pytest.fixture(scope="module")
def llama_result(tiny_llama):
    from core import analyze

    return analyze(tiny_llama, "Paris is the capital of France and the cat sat on the mat", ig_steps=4, views="all")


def test_analysis_section_settings_and_bundle(tiny_gpt2, llama_result):
    import csv
    import io

    from core import analyze
    from core.export.bundle import bundle_files

    sec = llama_result.neuron_factors
    assert sec is not None and sec.layers == (0, 1) and sec.n_factors == 6 and sec.d_ff == 64  # stored as indices
    assert sec.blocks == (1, 2)  # shown as blocks 1…L
    assert llama_result.query_key is not None and "neuron_factors" in llama_result.timings
    off = analyze(tiny_gpt2, "The cat sat on the mat.", neuron_factors=0, compute_gradients=False, views="all")
    assert off.neuron_factors is None
    one = analyze(
        tiny_gpt2,
        "The cat sat on the mat.",
        neuron_factors=3,
        neuron_first_layer=2,  # the last of the two blocks
        compute_gradients=False,
        views="all",
    )
    assert one.neuron_factors is not None and one.neuron_factors.layers == (1,) and one.neuron_factors.n_factors == 3
    files = bundle_files(one)
    rows = list(csv.reader(io.StringIO(files["neuron_factors.csv"].decode())))
    assert rows[0] == ["factor", "position", "token", "activation"] and len(rows) == 1 + 3 * one.n_tokens
    assert rows[1][2] == one.tokens[0]
    top = list(csv.reader(io.StringIO(files["neuron_factor_neurons.csv"].decode())))
    assert top[0] == ["factor", "rank", "layer", "neuron", "weight"] and {r[2] for r in top[1:]} == {"2"}
    qk = list(csv.reader(io.StringIO(files["query_key.csv"].decode())))
    assert qk[0] == ["layer", "head", "kv_head", "query", "key", "token", "dot", "score", "weight"]
    assert {r[0] for r in qk[1:]} == {str(one.n_layers)}  # the last block, numbered 1…L
    weights = np.array([float(r[8]) for r in qk[1:] if r[1] == "0"])  # head 0 at the target query, last layer
    np.testing.assert_allclose(weights, one.attentions[-1, 0, one.target_position], atol=1e-5)
    for name in ("plots/neuron_factors.png", "plots/neuron_factor_neurons.png", "plots/query_key.png"):
        assert files[name][:8] == b"\x89PNG\r\n\x1a\n", name


def test_unknown_architecture_is_a_warning_not_a_gap(tiny_gpt2, monkeypatch):
    from core import analyze
    from core.steps import neurons, qk

    def refuse(model):
        raise ValueError(f"neuron factors are not available for {type(model).__name__}: test")

    def refuse_qk(model):
        raise ValueError(f"the query–key view is not available for {type(model).__name__} (test)")

    monkeypatch.setattr(neurons, "mlp_output_projections", refuse)
    monkeypatch.setattr(qk, "query_key_parts", refuse_qk)
    r = analyze(tiny_gpt2, "The dog sat on the log.", compute_gradients=False, views="all")
    assert r.neuron_factors is None and r.query_key is None
    assert any("neuron factors are not available for GPT2LMHeadModel" in w for w in r.warnings)
    assert any("query–key view is not available for GPT2LMHeadModel" in w for w in r.warnings)
    from core.export.bundle import manifest

    assert any("not available" in w for w in manifest(r)["warnings"])


def test_page_widgets_run_no_model(llama_result):
    from test_app_pages import LAYERS, ForwardCounter, make_app, no_exception

    r = llama_result
    at = make_app(r).run()
    at.switch_page(LAYERS).run()
    no_exception(at)
    assert len(at.get("html")) >= r.neuron_factors.n_factors  # one shaded text per factor
    with ForwardCounter() as fc:
        at.multiselect(key="nf_factors").set_value([1, 3]).run()
        at.selectbox(key="qk_head").set_value(3).run()  # the query–key view's own pickers, in its tab
        at.selectbox(key="qk_query").set_value(2).run()
        at.select_slider(key="qk_layer").set_value(1).run()  # index 1: shown as layer 2
    no_exception(at)
    assert fc.calls == 0, f"{fc.calls} module calls on neuron/query–key widget changes"
    assert at.session_state["qk_query"] == 2
    tables = [d.value for d in at.dataframe if "q·k" in d.value.columns]
    assert len(tables) == 1
    table = tables[0]  # the query–key table of layer 1, head 3, query 2
    np.testing.assert_allclose(table["weight"].to_numpy(), r.attentions[1, 3, 2], atol=1e-5)
    assert any("key-value head 1" in c.value for c in at.caption)


def test_sidebar_neuron_settings_reach_the_analysis(tiny_dirs):
    from test_app_pages import LAYERS, analyse_with, make_app, no_exception

    at = make_app().run()
    at.sidebar.number_input(key="neuron_factors").set_value(2)
    at.sidebar.number_input(key="neuron_first_layer").set_value(2)  # block 2 of 2
    at = analyse_with(at, str(tiny_dirs["gpt2"]), "The dog sat on the log.")
    no_exception(at)
    from app import jobs

    analysis_job = jobs.get({jobs.SESSION_KEY: at.session_state[jobs.SESSION_KEY]}, "analysis")
    assert analysis_job.result.neuron_factors is None  # the analysis leaves the deeper views to its follow-on job
    at.switch_page(LAYERS).run()
    no_exception(at)
    sec = at.session_state["result"].neuron_factors
    assert sec is not None and sec.n_factors == 2 and sec.layers == (1,) and sec.blocks == (2, 2)


@pytest.mark.parametrize("shape,density", [((96, 2000), 0.5), ((30, 700), 0.1)])
def test_factorize_is_scikit_learns_coordinate_descent(shape, density):
    """factorize runs scikit-learn's solver (init, Cython updates, stopping rule) with torch's products: the same
    iterations, factors and error as sklearn.decomposition.NMF run in float64, up to float32 rounding. (The
    iterations amplify rounding: scikit-learn's own float32 runs with one and two BLAS threads differ by 2e-4 of
    max W on the first case; ours is 7e-5 from the float64 run, scikit-learn's float32 run 1.4e-4.)"""
    import warnings

    from sklearn.decomposition import NMF

    from core.steps.neurons import MAX_ITER, TOL

    rng = np.random.default_rng(5)
    A = (rng.random(shape) * (rng.random(shape) < density)).astype(np.float32)
    fac = factorize(A, 6, seed=3)
    ref = NMF(n_components=6, init="nndsvda", solver="cd", tol=TOL, random_state=3, max_iter=MAX_ITER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        W = ref.fit_transform(A.astype(np.float64))
    assert fac.n_iter == ref.n_iter_
    np.testing.assert_allclose(fac.W, W, atol=3e-4 * W.max())
    np.testing.assert_allclose(fac.H, ref.components_, atol=3e-4 * ref.components_.max())
    assert fac.error == pytest.approx(ref.reconstruction_err_, rel=1e-6)
    assert fac.error == pytest.approx(np.linalg.norm(A.astype(np.float64) - fac.W @ fac.H.astype(np.float64)), rel=1e-6)


def test_factorize_takes_a_read_only_matrix():
    rng = np.random.default_rng(1)
    A = rng.random((12, 40)).astype(np.float32)
    frozen = A.copy()
    frozen.setflags(write=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "non-writable array" warning would fail here
        got = factorize(frozen, 3, seed=0)
    np.testing.assert_array_equal(got.W, factorize(A, 3, seed=0).W)


def test_frobenius_norm_is_a_float64_sum_of_squares():
    """The NMF's norms (‖A‖_F and the error) take each row in float32 and the rows in float64: within 1e-7 of the
    float64 sum of all squares, on a matrix the size of GPT-2's 12 MLPs at 512 tokens (19 M entries, where one
    float32 reduction of every square is 5e-6 off), with rows of very different scales."""
    import torch

    from core.steps.neurons import _frobenius

    rng = np.random.default_rng(2)
    A = np.maximum(rng.standard_normal((512, 36864), dtype=np.float32), 0)
    A *= np.logspace(-3, 3, 512, dtype=np.float32)[:, None]
    exact = float(np.sqrt(np.square(A, dtype=np.float64).sum()))
    assert _frobenius(torch.from_numpy(A)) == pytest.approx(exact, rel=1e-7)
    assert _frobenius(torch.zeros(3, 4)) == 0.0


def test_top_columns_are_the_stable_argsort_with_ties():
    """_top_columns gives the first n columns of the stable argsort of −H, ties (also across the n-th place) by
    column, as the full sort did."""
    from core.steps.neurons import _top_columns

    rng = np.random.default_rng(4)
    H = rng.integers(0, 5, size=(6, 300)).astype(np.float32)  # many ties, also at the cut
    H[2] = 0.0  # a factor that is all zero: the first n columns
    H[3, :10] = 7.0
    for n in (1, 5, 20, 299, 300, 400):
        want = np.argsort(-H, axis=1, kind="stable")[:, :n]
        np.testing.assert_array_equal(_top_columns(H, n), want)
    H = rng.random((6, 5000)).astype(np.float32)
    np.testing.assert_array_equal(_top_columns(H, 20), np.argsort(-H, axis=1, kind="stable")[:, :20])


def test_clipped_matrix_is_max_zero_laid_out_by_token():
    """A = max(acts, 0) as [T, L·d_ff] (column i·d_ff + n = layer i, neuron n), exactly; Σ|a| and Σ max(−a, 0)
    within 1e-7 of float64 sums."""
    from core.steps.neurons import _clipped_matrix

    rng = np.random.default_rng(6)
    acts = (rng.standard_normal((3, 50, 70)) * np.logspace(-2, 2, 50)[None, :, None]).astype(np.float32)
    A, total, clipped = _clipped_matrix(acts)
    np.testing.assert_array_equal(A, np.maximum(acts, 0.0).transpose(1, 0, 2).reshape(50, 210))
    assert total == pytest.approx(np.abs(acts.astype(np.float64)).sum(), rel=1e-7)
    assert clipped == pytest.approx(-np.minimum(acts.astype(np.float64), 0.0).sum(), rel=1e-7)
    A, total, clipped = _clipped_matrix(np.abs(acts))
    assert clipped == 0.0 and total == pytest.approx(A.astype(np.float64).sum(), rel=1e-7)
