"""SAE features on the Corpus page (app/sae_corpus_widgets.py, core/present/sae_tables.py): a Corpus-page run uses
the sidebar's SAE folders; the page shows a feature's firing rate, mean activation and top examples (the token
highlighted, every text HTML-escaped) and the features sorted by firing rate, without a model run on widget changes;
the ZIP holds the two SAE CSVs; a bad folder is one line before any run."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
from test_app_pages import ForwardCounter, make_app, no_exception
from test_sae_app import _sae

from core.present import sae_tables
from core.studies.sae_corpus import SAEFeatureExamples, context, sae_corpus

CORPUS = "../pages/corpus.py"
TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "A <b>bird</b> flew over the house.", "Dogs."]


def _corpus_app(tiny_dirs, folder: str, **state):
    """The Corpus page with the tiny GPT-2, the SAE folder in the sidebar and the texts pasted (set in the session,
    as the widgets keep them: fewer script runs)."""
    at = make_app(
        None,
        model_choice="Other: a Hugging Face id or a local folder",
        model_custom=str(tiny_dirs["gpt2"]),
        sae_dirs_text=folder,
        corpus_source="Paste lines",
        corpus_paste="\n".join(TEXTS),
        corpus_bootstrap=10,
        **state,
    ).run()
    at.switch_page(CORPUS).run()
    return at


def test_a_corpus_page_run_uses_the_sidebar_saes(tiny_dirs, tiny_gpt2, tmp_path, monkeypatch):
    folder = _sae(tmp_path / "page-sae", hook="blocks.0.hook_resid_post", d_sae=12)
    at = _corpus_app(tiny_dirs, folder, corpus_sae_top=3)
    assert at.number_input(key="corpus_sae_top").value == 3
    at.button(key="corpus_run").click().run()
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    got = at.session_state["corpus_sae"]
    assert got is not None and len(got) == 1
    ex = got[0]
    want = sae_corpus(tiny_gpt2, TEXTS, [folder], top_n=3)[0]  # the same SAE run directly on the fixture's model
    np.testing.assert_array_equal(ex.fire_count, want.fire_count)
    np.testing.assert_array_equal(ex.ex_feature, want.ex_feature)
    np.testing.assert_array_equal(ex.ex_text, want.ex_text)
    np.testing.assert_array_equal(ex.ex_position, want.ex_position)
    np.testing.assert_allclose(ex.ex_activation, want.ex_activation, rtol=1e-5, atol=1e-6)
    assert ex.n_texts == len(TEXTS) and max(np.bincount(ex.ex_feature)) <= 3

    # default feature: the most frequently firing one (ties: larger peak, then lower index), computed independently
    rate = ex.fire_count / ex.n_tokens
    best = max(range(ex.d_sae), key=lambda f: (rate[f], float(ex.act_max[f]), -f))
    feature = at.selectbox(key="corpus_sae_feature")
    assert feature.value == best
    assert any(m.label == "Firing rate" and m.value == f"{rate[best]:.2%}" for m in at.metric)
    table = next(d.value for d in at.dataframe if "firing_rate" in d.value.columns)
    assert list(table["firing_rate"]) == sorted(table["firing_rate"], reverse=True)
    np.testing.assert_allclose(table["firing_rate"], rate[table["feature"]])
    np.testing.assert_allclose(table["mean_activation"], ex.act_sum[table["feature"]] / ex.n_tokens)
    assert set(table["feature"]) == set(np.flatnonzero(ex.fire_count))
    html_blocks = [h.proto.body for h in at.get("html")]
    assert any("<mark" in h for h in html_blocks) and not any("<b>bird" in h for h in html_blocks)

    # another feature: drawn from the stored result, no model run
    other = sae_tables.features_by_firing_rate(ex)[1]
    with ForwardCounter() as fc:
        at.selectbox(key="corpus_sae_feature").set_value(int(other)).run()
    no_exception(at)
    assert fc.calls == 0 and at.session_state["corpus_sae_feature"] == int(other)

    # the ZIP holds the two CSVs (the examples are the run's); the corpus files themselves (plots, PDF: ~7 s) are
    # core.export.corpus_bundle's, tested in test_corpus.py
    from core.export import corpus_bundle

    monkeypatch.setattr(corpus_bundle, "corpus_bundle_files", lambda result: {"corpus_metrics.csv": b"stub"})
    data = at.session_state["corpus_zip"]()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = set(z.namelist())
        rows = list(csv.DictReader(io.StringIO(z.read("sae_feature_examples.csv").decode("utf-8"))))
    assert {"sae_feature_examples.csv", "sae_feature_stats.csv", "corpus_metrics.csv"} <= names
    assert len(rows) == len(ex.ex_feature) and rows[0]["hook"] == "blocks.0.hook_resid_post"


def test_a_bad_sae_folder_is_one_line_before_the_run(tiny_dirs, tmp_path):
    at = _corpus_app(tiny_dirs, str(tmp_path / "no-such-sae"))
    at.button(key="corpus_run").click().run()
    no_exception(at)
    msg = at.session_state["corpus_error"]
    assert msg and "\n" not in msg and str(tmp_path) not in msg
    assert at.error and not at.get("download_button")  # shown on the page; no run, no result


def test_examples_html_escapes_text_and_splits_at_the_stored_marks(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    ids = tok("a ⟦x⟧ <script>alert(1)</script> & b")["input_ids"]
    p = len(ids) // 2
    ctx, a, b = context(tok, ids, p, width=len(ids))
    assert ctx[a] == "⟦" and ctx[b] == "⟧" and ctx[a + 1 : b] == tok.decode([ids[p]])
    ex = SAEFeatureExamples(
        name="s", hook_name="blocks.0.hook_resid_post", d_sae=2, n_texts=1, n_tokens=len(ids),
        fire_count=np.array([1, 0]), act_sum=np.array([2.0, 0.0]), act_max=np.array([2.0, 0.0], dtype=np.float32),
        ex_feature=np.array([0]), ex_rank=np.array([1]), ex_text=np.array([0]), ex_position=np.array([p]),
        ex_activation=np.array([2.0], dtype=np.float32), ex_token=[tok.convert_ids_to_tokens(ids[p])],
        ex_context=[ctx], ex_marks=np.array([[a, b]], dtype=np.int32),
    )  # fmt: skip
    assert ex.context_parts(0) == (ctx[:a], ctx[a + 1 : b], ctx[b + 1 :])
    out = sae_tables.feature_examples_html(ex, 0)
    assert "<script" not in out and "&lt;script&gt;" in out and "&amp; b" in out
    assert sae_tables.feature_examples_html(ex, 1) == ""
    assert sae_tables.features_by_firing_rate(ex) == [0]
