"""Information-flow routes (core/steps/flow.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.steps.dla import decomposition_pass
from core.steps.flow import DEFAULT_THRESHOLD, compute_flow, contributions, layout
from tests.tiny_models import FAMILIES, tiny_family_loaded

TEXT = "The quick brown fox jumps over the lazy dog."


def _flow(loaded, text=TEXT, chunk_floats=None):
    enc = loaded.tokenizer(text, return_tensors="pt")
    dec = decomposition_pass(loaded, enc["input_ids"], enc["attention_mask"])
    toks = loaded.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    kw = {"chunk_floats": chunk_floats} if chunk_floats else {}
    return dec, compute_flow(dec, toks, len(toks) - 1, **kw)


def test_contributions_hand_computed():
    """y = (1, 1); parts (1, 0), (0, 1): ‖y‖₁ = 2, ‖y − c‖₁ = 1 each → proximities 1, 1 → 0.5, 0.5.
    A part opposite to y gets the floor (max(…, 0))."""
    y = torch.tensor([[1.0, 1.0]])
    parts = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    np.testing.assert_allclose(contributions(parts, y).numpy(), [[0.5], [0.5]], atol=1e-8)
    parts = torch.tensor([[[1.5, 1.5]], [[-0.5, -0.5]]])  # ‖y − c‖₁ = 1 and 3: proximities 1 and max(−1, 0) = 0
    c = contributions(parts, y)
    assert float(c[0, 0]) == pytest.approx(1.0, abs=1e-6) and float(c[1, 0]) < 1e-6


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama", *FAMILIES])
def test_contributions_in_unit_interval_and_sum_to_one(kind):
    loaded = tiny_family_loaded(kind)
    _dec, f = _flow(loaded)
    L, T = f.n_layers, len(f.tokens)
    assert f.attn.shape == (L, T, T)
    for arr in (f.attn, f.attn_residual, f.attn_bias, f.mlp, f.mlp_residual):
        assert (arr >= 0).all() and (arr <= 1 + 1e-6).all()
    np.testing.assert_allclose(f.attn.sum(-1) + f.attn_residual + f.attn_bias, 1.0, atol=1e-5)
    np.testing.assert_allclose(f.mlp + f.mlp_residual, 1.0, atol=1e-5)
    if loaded.family == "causal_lm":  # a later token cannot feed an earlier one
        assert np.triu(f.attn, 1).max() == 0
    # head rows exist only for edges of at least HEAD_STORE_MIN, each in [0, 1]
    assert (f.head_weight >= 0.005).all() and (f.head_weight <= 1 + 1e-6).all()
    assert (f.attn[f.head_layer, f.head_target, f.head_source] >= 0.005).all()


def test_head_rows_are_proximities_under_the_same_normaliser():
    """Hand check of one head row on GPT-2: prox(A^h_ij v_j^h W_O^h, y_i) / Σ prox of the token parts of y_i."""
    loaded = tiny_family_loaded("gpt2")
    dec, f = _flow(loaded)
    l, h_rows = (
        0,
        [
            (t, s, h, w)
            for L_, t, s, h, w in zip(f.head_layer, f.head_target, f.head_source, f.head_index, f.head_weight)
            if L_ == 0
        ],
    )
    i, j, h, w = h_rows[len(h_rows) // 2]
    P = dec.parts
    W = P.head_out_weights(P.blocks[l]).detach()
    vW = dec.values[l][:, P.heads.kv_head(int(h))] @ W[h]  # [T, D]
    y, x = dec.attn_sum[l, i], dec.resid_pre[l, i]
    prox = lambda c: max(float(y.abs().sum() - (y - c).abs().sum()), 0.0)
    A = dec.attentions[l]
    tok_parts = [sum(A[hh, i, jj] * (dec.values[l][jj, hh] @ W[hh]) for hh in range(f.n_heads)) for jj in range(i + 1)]
    Z = sum(prox(c) for c in tok_parts) + prox(x) + prox(P.out_bias(P.blocks[l]).detach())
    assert w == pytest.approx(prox(A[h, i, j] * vW[j]) / Z, rel=1e-4, abs=1e-6)
    assert f.attn[l, i, j] == pytest.approx(prox(tok_parts[j]) / Z, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama", *FAMILIES])
@pytest.mark.parametrize("chunk_floats", [None, 1000])
def test_batched_path_equals_the_pre_issue_24_loop(kind, chunk_floats):
    """The batched products (baddbmm + one L1 reduction) give the contributions and head rows of the old einsum
    loop, kept in tests/flow_reference.py, on every family (Gemma-2's frozen update norm included). Both are float32
    differences ‖y‖₁ − ‖y − c‖₁ of near-equal sums, so they agree to float rounding of ‖y‖₁ (≈ 1e-5 of a share)."""
    from tests.flow_reference import compute_flow_reference

    loaded = tiny_family_loaded(kind)
    dec, new = _flow(loaded, chunk_floats=chunk_floats)
    kw = {"chunk_floats": chunk_floats} if chunk_floats else {}
    old = compute_flow_reference(dec, list(new.tokens), len(new.tokens) - 1, **kw)
    for name in ("attn", "attn_residual", "attn_bias", "mlp", "mlp_residual"):
        np.testing.assert_allclose(getattr(new, name), getattr(old, name), atol=2e-5, err_msg=name)
    key = lambda f: {
        (int(a), int(b), int(c), int(d)): float(w)
        for a, b, c, d, w in zip(f.head_layer, f.head_target, f.head_source, f.head_index, f.head_weight)
    }
    kn, ko = key(new), key(old)
    # a head row sits on the HEAD_STORE_MIN boundary only by float rounding: compare the rows clear of it
    clear = lambda k: {e for e, w in k.items() if abs(w - 0.005) > 5e-5}
    assert clear(kn) == clear(ko)
    if kind == "gpt2":  # the hand-checked family has head rows
        assert len(kn) > 0
    np.testing.assert_allclose([kn[e] for e in sorted(clear(kn))], [ko[e] for e in sorted(clear(kn))], atol=2e-5)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_chunking_does_not_change_the_result(kind, monkeypatch):
    """One source per product (chunk_floats 1000), and short query blocks (the text spans several, the last one
    shorter; causal and not): the same contributions and head rows as one block of everything."""
    from core.steps import flow

    loaded = tiny_family_loaded(kind)
    _, a = _flow(loaded)
    _, b = _flow(loaded, chunk_floats=1000)
    monkeypatch.setattr(flow, "QUERY_BLOCK", next(q for q in (5, 7) if len(a.tokens) % q))
    _, c = _flow(loaded, chunk_floats=1000)
    assert len(a.tokens) > 2 * flow.QUERY_BLOCK
    # the batched product sums over heads in an order that depends on the chunk's shape: float32 rounding only
    for other in (b, c):
        for name in ("attn", "attn_residual", "attn_bias", "mlp", "mlp_residual"):
            np.testing.assert_allclose(getattr(a, name), getattr(other, name), atol=2e-5, err_msg=name)
        rows = lambda f: sorted(zip(f.head_layer, f.head_target, f.head_source, f.head_index))
        assert rows(other) == rows(a) or kind == "bert"  # bert: rows on the HEAD_STORE_MIN boundary may move
    # the head rows come in the order of the single block: by layer, then query, then source, then head
    assert [tuple(r) for r in zip(c.head_layer, c.head_target, c.head_source)] == sorted(
        zip(c.head_layer, c.head_target, c.head_source)
    )


def _plant_copy_head(model, head=0, value_gain=20.0):
    """Block 1 head `head` of a tiny GPT-2 attends to position 0 from every query (a huge key on position 0's
    position embedding), with a large value/output so its update dominates."""
    D, H = model.config.n_embd, model.config.n_head
    dh = D // H
    with torch.no_grad():
        model.transformer.wpe.weight[0, 0] = 60.0  # ln_1(h_0)[0] ≈ √D, other positions O(1)
        W = model.transformer.h[0].attn.c_attn.weight  # Conv1D [D, 3D]: q | k | v
        b = model.transformer.h[0].attn.c_attn.bias
        cols = slice(head * dh, (head + 1) * dh)
        W[:, cols] = 0.0
        b[cols] = 10.0  # q = 10·1
        kcols = slice(D + head * dh, D + (head + 1) * dh)
        W[:, kcols] = 0.0
        W[0, kcols] = 1.0  # k = ln_1(h)[0]·1
        b[kcols] = 0.0
        vcols = slice(2 * D + head * dh, 2 * D + (head + 1) * dh)
        W[:, vcols] *= value_gain


def test_planted_copy_head_yields_the_edge_to_token_0():
    loaded = tiny_family_loaded("gpt2")
    _plant_copy_head(loaded.model)
    dec, f = _flow(loaded)
    T = len(f.tokens)
    assert float(dec.attentions[0][0, T - 1, 0]) > 0.99  # the plant works
    edges = f.routes(T - 1, DEFAULT_THRESHOLD)
    att = [e for e in edges if e.kind == "attention" and e.layer == 1 and e.target == f"a1_{T - 1}"]
    assert any(e.source == "x0_0" for e in att)
    w0 = f.attn[0, T - 1, 0]
    assert w0 == f.attn[0, T - 1].max() and w0 > 0.2
    assert f.heads_of(1, T - 1, 0)[0][0] == 0  # head 0 carries it
    # the same model without the plant has no such dominant edge
    plain = tiny_family_loaded("gpt2")
    _, g = _flow(plain)
    assert g.attn[0, T - 1, 0] < w0 / 2


def test_pruning_is_a_backward_closure():
    loaded = tiny_family_loaded("llama")
    _, f = _flow(loaded)
    T = len(f.tokens)
    for thr in (0.01, 0.04, 0.2):
        edges = f.routes(T - 1, thr)
        assert all(e.weight >= thr for e in edges)
        targets = {e.target for e in edges} | {f"x{f.n_layers}_{T - 1}"}
        for e in edges:  # every kept edge leads to a node that is itself on a route to the chosen token
            assert e.target in targets
        sources_reached = {e.source for e in edges}
        assert all(s in targets or s.startswith("x0_") for s in sources_reached)
    assert len(f.routes(T - 1, 0.01)) >= len(f.routes(T - 1, 0.2))
    rows = f.csv_rows(T - 1, 0.04)
    assert all(len(r) == 6 for r in rows)
    assert sum(r[4] == -1 for r in rows) == len(f.routes(T - 1, 0.04))
    nodes, recs = layout(f, f.routes(T - 1, 0.04))
    assert len(recs) == len(f.routes(T - 1, 0.04)) and all(r.tooltip.startswith(r.kind) for r in recs)
    assert {n.node for n in nodes} == {e.source for e in f.routes(T - 1, 0.04)} | {
        e.target for e in f.routes(T - 1, 0.04)
    }


# ----------------------------------------------------------------------------------------------------------------
# The analysis step, the bundle and the page


@pytest.fixture(scope="module")
def analysed(tiny_gpt2, tiny_bert):
    from core.analysis.pipeline import analyze

    return {
        "gpt2": analyze(tiny_gpt2, "The cat sat on the mat.", ig_steps=2, views="all"),
        "bert": analyze(tiny_bert, "The cat sat on the [MASK].", ig_steps=2, views="all"),
    }


def test_default_analysis_has_dla_and_flow_and_the_bundle_files(analysed):
    import csv
    import io

    from pypdf import PdfReader

    from core.export.bundle import bundle_files
    from core.infra.serialize import dumps, loads

    for name, r in analysed.items():
        assert r.dla is not None and r.flow is not None, name
        assert r.dla.position == r.target_position and r.flow.position == r.target_position
        assert abs(float(r.dla.values.sum()) - r.dla.logit) <= 1e-4 * max(1.0, abs(r.dla.logit))
        files = bundle_files(r)
        rows = list(csv.reader(io.StringIO(files["direct_logit_attribution.csv"].decode())))
        assert rows[0] == ["layer", "component", "head", "logit"]
        assert len(rows) - 1 == len(r.dla.values)
        rows = list(csv.reader(io.StringIO(files["flow_edges.csv"].decode())))
        assert rows[0] == ["layer", "source", "target", "kind", "head", "weight"] and len(rows) > 1
        assert files["plots/flow_routes.png"][:4] == b"\x89PNG" and "plots/direct_logit_attribution.png" in files
        pdf = " ".join(" ".join(p.extract_text() for p in PdfReader(io.BytesIO(files["report.pdf"])).pages).split())
        assert "Direct logit attribution" in pdf and "Information-flow routes" in pdf
        back = loads(dumps(r))  # the result (with both sections) round-trips through the pickle-free format
        np.testing.assert_array_equal(back.flow.attn, r.flow.attn)
        assert back.dla.token_texts == r.dla.token_texts


def test_unknown_architecture_is_one_line_in_manifest_page_and_pdf(analysed, monkeypatch):
    """A model the map does not know: no DLA / flow sections, one 'not available for' warning (manifest), the same
    line on the page and in the PDF."""
    import dataclasses
    import io
    import json

    from core.analysis.pipeline import analyze
    from core.export.bundle import bundle_files
    from core.figures.routes import unavailable_line
    from core.model import arch
    from tests.tiny_models import tiny_family_loaded

    loaded = tiny_family_loaded("gpt2")
    monkeypatch.delitem(arch.BUILDERS, "gpt2")
    loaded = dataclasses.replace(loaded, architecture="GPTJForCausalLM")
    loaded.model.config.architectures = ["GPTJForCausalLM"]
    r = analyze(loaded, "The cat sat on the mat.", ig_steps=2, compute_gradients=False, views="all")
    assert r.dla is None and r.flow is None
    lines = [
        w
        for w in r.warnings
        if w.startswith(
            "direct logit attribution, promoted tokens and information-flow "
            "routes are not available for GPTJForCausalLM"
        )
    ]
    assert len(lines) == 1, r.warnings  # one line for the three views
    assert any(w.startswith("the logit lens is not available for GPTJForCausalLM") for w in r.warnings)
    files = bundle_files(r)
    assert lines[0] in json.loads(files["manifest.json"])["warnings"]
    assert "direct_logit_attribution.csv" not in files and "flow_edges.csv" not in files
    from pypdf import PdfReader

    from core.export.report import build_report

    text = " ".join(p.extract_text() for p in PdfReader(io.BytesIO(build_report(r, files))).pages)
    assert "not available for GPTJForCausalLM" in " ".join(text.split())
    assert "not available for GPTJForCausalLM" in (unavailable_line(r, "dla") or "")
    assert "not available for GPTJForCausalLM" in (unavailable_line(r, "flow") or "")


def _counter():
    from tests.test_app_pages import ForwardCounter

    return ForwardCounter()


def test_peer_tabs_draw_and_widget_changes_run_no_model(analysed):
    from tests.test_app_pages import LAYERS, make_app, no_exception

    r = analysed["gpt2"]
    at = make_app(r).run()
    at.switch_page(LAYERS).run()
    no_exception(at)
    assert [t.label for t in at.tabs][-2:] == ["Logit attribution", "Flow routes"]
    T = r.n_tokens
    with _counter() as fc:
        at.selectbox(key="flow_position").set_value(1).run()
        at.slider(key="flow_threshold").set_value(0.2).run()
        at.selectbox(key="dla_update").set_value("one head").run()
        at.selectbox(key="dla_head").set_value(3).run()
        at.selectbox(key="dla_block").set_value(1).run()
        at.selectbox(key="dla_update").set_value("MLP update").run()
        at.selectbox(key="dla_position").set_value(T - 2).run()
    no_exception(at)
    assert fc.calls == 0, f"{fc.calls} module calls on peer-view widget changes"
    specs = " ".join(c.proto.spec or "" for c in at.get("vega_lite_chart"))
    assert "Direct logit attribution" in specs and "strokeWidth" in specs


def test_peer_tabs_show_the_not_available_line(analysed):
    import dataclasses

    from tests.test_app_pages import LAYERS, make_app, no_exception

    r = analysed["gpt2"]
    r2 = r.replace(dla=None, flow=None, model=dataclasses.replace(r.model, architecture="GPTJForCausalLM"))
    at = make_app(r2).run()
    at.switch_page(LAYERS).run()
    no_exception(at)
    infos = [i.value for i in at.info]
    assert sum("not available for GPTJForCausalLM" in v for v in infos) == 2


def test_page_chart_labels_at_most_every_nth_token(tiny_gpt2):
    """The Flow routes chart labels every token of a short text, and every n-th (plus the chosen one) of a long one,
    as the bundle's PNG does."""
    from app.routes_widgets import flow_chart
    from core import analyze
    from core.figures.routes import FLOW_LABEL_MAX

    r = analyze(tiny_gpt2, "the cat sat on the mat and " * 20, views=["flow"], compute_gradients=False)
    T = r.n_tokens
    assert T > FLOW_LABEL_MAX
    chart = flow_chart(r.flow, T - 2, 0.04)
    labels = chart.layer[2].data
    step = max(1, T // FLOW_LABEL_MAX)
    assert list(labels["x"]) == sorted(set(range(0, T, step)) | {T - 2})
    short = analyze(tiny_gpt2, "The cat sat.", views=["flow"], compute_gradients=False)
    assert list(flow_chart(short.flow, 0, 0.04).layer[2].data["x"]) == list(range(short.n_tokens))


def test_page_chart_ticks_only_real_stages(tiny_gpt2):
    """The y axis of the Flow routes chart ticks the stages 0, 2, …, 2L only: the token labels sit below stage 0 and
    the axis showed a stage −1 there (issue 25)."""
    from app.routes_widgets import flow_chart
    from core import analyze

    r = analyze(tiny_gpt2, "The cat sat on the mat.", views=["flow"], compute_gradients=False)
    spec = flow_chart(r.flow, r.n_tokens - 1, 0.04).to_dict()
    ticks = {
        tuple(layer["encoding"]["y"]["axis"]["values"]) for layer in spec["layer"] if "axis" in layer["encoding"]["y"]
    }
    assert ticks == {tuple(range(0, 2 * r.n_layers + 1, 2))}


def test_page_chart_numbers_positions_on_top_and_names_tokens_below(tiny_gpt2):
    """The Flow routes chart's position numbers sit on the top axis: the rotated token labels under the graph reach
    into the bottom axis and covered its numbers (seen in a browser on a 128-token text)."""
    from app.routes_widgets import flow_chart
    from core import analyze

    r = analyze(tiny_gpt2, "The cat sat on the mat.", views=["flow"], compute_gradients=False)
    spec = flow_chart(r.flow, r.n_tokens - 1, 0.04).to_dict()
    orients = {layer["encoding"]["x"]["axis"].get("orient") for layer in spec["layer"]}
    assert orients == {"top"}
    text = [layer for layer in spec["layer"] if layer["mark"]["type"] == "text"]
    assert len(text) == 1 and text[0]["mark"]["angle"] == 270
