"""The export (issue 6): bundle contents, CSV columns, shapes, the PDF report, the HTML session log, run retention,
and the figure data functions. A real result from the tiny GPT-2 fixture; robust to which other sections exist."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile

import numpy as np
import pytest

from core.export.bundle import bundle_files
from core.export.pdf import PLACEHOLDER, safe_text
from core.export.report import build_report
from core.export.runs import list_runs, make_run_id, safe_member, save_run
from core.export.session_log import entry_from_result, render_html
from core.export.zip_export import build_zip, export_run
from core.figures.metrics import FIGURES
from core.infra.formats import member_bytes
from core.infra.options import ExportOptions
from core.present import docs
from core.present.summaries import metric_correlations, normalized_metrics, summary_figures
from core.steps.metrics import METRIC_NAMES

USER_TEXT = "Secretword <script>alert('x')</script> & the cat sat on the mat 😀 猫 naïve."
SAFE_NAME = re.compile(r"^[a-z0-9_]+(/[a-z0-9_]+)*\.[a-z0-9]+$")
FOUNDATION = ("manifest.json", "layer_metrics.csv", "attentions.npy", "tokens.json")
MINE = ("report.pdf", "session_log.html", *FIGURES)


@pytest.fixture(scope="module")
def result(tiny_gpt2):
    from core.analysis.pipeline import analyze

    return analyze(tiny_gpt2, USER_TEXT, ig_steps=4)


@pytest.fixture(scope="module")
def files(result):
    entries = [entry_from_result(result), entry_from_result(result.replace(cache_hit=True), duration_s=0.01)]
    return bundle_files(result, ExportOptions(session_entries=tuple(entries), hidden_states=True))


def _pdf(data: bytes):
    from pypdf import PdfReader

    return PdfReader(io.BytesIO(data))


# ---------------------------------------------------------------------------------------------------------------
# Bundle


def test_bundle_holds_every_listed_file(files, result):
    for name in (*FOUNDATION, *MINE, "hidden_states.npz"):
        assert name in files and len(files[name]) > 0, name
    # every figure of a computed section is there (the writers of the other parts add them)
    if result.predictions is not None:
        assert "plots/predictions.png" in files
    if result.logit_lens is not None:
        assert {"plots/logit_lens.png", "plots/logit_lens_layers.png"} <= set(files)
    if result.attention is not None:
        assert "plots/head_clusters.png" in files
    if result.attribution is not None:
        assert "plots/token_attribution.png" in files
    if result.attention is not None:  # animations are on by default
        assert any(n.startswith("animations/") and n.endswith(".gif") for n in files)
    for name, data in files.items():
        if name.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        if name.endswith(".gif"):
            assert data[:6] in (b"GIF87a", b"GIF89a"), name


def test_report_comes_last_and_embeds_every_plot(result):
    files = bundle_files(result)
    assert list(files)[-1] == "report.pdf"
    from pypdf import PdfReader

    n_images = sum(len(page.images) for page in PdfReader(io.BytesIO(files["report.pdf"])).pages)
    assert n_images == sum(1 for n in files if n.startswith("plots/"))


def test_hidden_states_only_when_asked(result, files):
    assert "hidden_states.npz" not in bundle_files(result)
    with np.load(io.BytesIO(files["hidden_states.npz"]), allow_pickle=False) as z:
        hs = z["hidden_states"]
        assert hs.dtype == np.float16 and hs.shape == result.hidden_states.shape
        np.testing.assert_allclose(hs.astype(np.float32), result.hidden_states, rtol=2e-3, atol=2e-3)
        assert z["token_ids"].tolist() == result.token_ids


def test_layer_metrics_csv_columns(files, result):
    rows = list(csv.reader(io.StringIO(files["layer_metrics.csv"].decode("utf-8"))))
    assert rows[0] == ["layer", *METRIC_NAMES]
    assert len(rows) - 1 == result.n_layers + 1
    assert [int(r[0]) for r in rows[1:]] == list(range(result.n_layers + 1))
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], result.layer_metrics["effective_rank"], rtol=1e-8)


def test_attentions_shape_matches_tokens(files, result):
    tokens = json.loads(files["tokens.json"])
    att = np.load(io.BytesIO(member_bytes(files["attentions.npy"])), allow_pickle=False)
    assert att.shape == (result.n_layers, result.n_heads, len(tokens), len(tokens))


def test_member_names_are_fixed_and_safe(files):
    for name in files:
        assert SAFE_NAME.match(name), name
        assert safe_member(name)
        assert "secretword" not in name.lower() and "script" not in name.lower()


def test_build_zip_equals_the_bundle(result, files):
    data = build_zip(result, ExportOptions(session_entries=(entry_from_result(result),), hidden_states=True))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert set(zf.namelist()) == set(files)
        assert zf.read("layer_metrics.csv") == files["layer_metrics.csv"]


# ---------------------------------------------------------------------------------------------------------------
# PDF


def test_pdf_opens_with_model_name_and_images(files, result):
    reader = _pdf(files["report.pdf"])
    text = "\n".join(p.extract_text() for p in reader.pages)
    model = result.model.model_id
    assert model.replace("\n", "") in text.replace("\n", "")
    n_images = sum(len(p.images) for p in reader.pages)
    n_plots = sum(1 for n in files if n.startswith("plots/") and n.endswith(".png"))
    assert n_plots >= len(FIGURES) and n_images == n_plots
    assert "Effective rank" in text and "Page 1 / " in text
    assert docs.formula_text("participation_ratio").split(",")[0] in text
    for name in FIGURES:
        assert name in text  # each embedded plot carries its caption
    if result.predictions is not None and result.predictions.candidates:
        assert "Predictions" in text


def test_pdf_sections_with_and_without_optional_sections(result):
    bare = result.replace(attention=None, attribution=None, predictions=None, logit_lens=None)
    text = "\n".join(p.extract_text() for p in _pdf(build_report(bare, {})).pages)
    assert "Layer metrics" in text and "Top 10 heads" not in text
    if result.attention is not None:
        text = "\n".join(p.extract_text() for p in _pdf(build_report(result, {})).pages)
        assert "heads by attention entropy" in text


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "encoder", "llama"])
def test_bundle_and_pdf_for_other_families(family, tiny_bert, tiny_encoder, tiny_llama):
    from core.analysis.pipeline import analyze

    loaded = {"bert": tiny_bert, "encoder": tiny_encoder, "llama": tiny_llama}[family]
    r = analyze(loaded, "The cat sat on the [MASK] <b>.", ig_steps=2)
    files = bundle_files(r)
    for name in (*FOUNDATION, *MINE):
        assert name in files, name
    reader = _pdf(files["report.pdf"])
    assert sum(len(p.images) for p in reader.pages) == sum(1 for n in files if n.startswith("plots/"))
    text = "\n".join(p.extract_text() for p in reader.pages)
    if r.predictions is not None and r.predictions.kind == "unavailable":
        assert "not available" in text


@pytest.mark.parametrize(
    "text", ["emoji 😀🎉👩‍🔬 and flags 🇫🇷", "中文 日本語 한국어", "mixed ∑ λ → ∞ \u200b\x07 نص عربي"]
)
def test_unicode_text_gives_a_valid_pdf(result, text):
    data = build_report(result.replace(text=text), {})
    reader = _pdf(data)
    assert len(reader.pages) >= 3
    assert data.startswith(b"%PDF")


def test_safe_text_keeps_what_it_can_draw():
    assert safe_text("naïve σ λ ∑ → 1") == "naïve σ λ ∑ → 1"
    assert safe_text("a\x07b\u200bc") == f"a{PLACEHOLDER}bc"  # a control is boxed, a zero-width space dropped
    assert safe_text("猫") in ("猫", PLACEHOLDER)  # a CJK fallback font may be installed
    assert safe_text(None) == ""


# ---------------------------------------------------------------------------------------------------------------
# Session log


def test_session_log_escapes_user_text(files):
    page = files["session_log.html"].decode("utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count('class="entry"') == 2
    assert "cache hit" in page and "cache miss" in page
    assert page.index("Analysis 1") < page.index("Analysis 2")


def test_session_log_entry_fields(result):
    e = entry_from_result(result, duration_s=1.5)
    assert {"time", "model", "settings", "text", "duration_s", "cache_hit", "warnings"} <= set(e)
    assert e["duration_s"] == 1.5 and e["text"] == USER_TEXT
    json.dumps(e)  # plain data, fit for session state
    page = render_html([{**e, "model": "<b>m</b>", "warnings": ["<i>w</i>"]}, {}])
    assert "<b>m</b>" not in page and "&lt;b&gt;m&lt;/b&gt;" in page and "&lt;i&gt;w&lt;/i&gt;" in page
    assert "<script" not in render_html([]) and "No analysis" in render_html([])


def test_session_log_defaults_to_the_result(result):
    page = bundle_files(result)["session_log.html"].decode("utf-8")
    assert page.count('class="entry"') == 1


# ---------------------------------------------------------------------------------------------------------------
# Runs on disk


def test_retention_removes_the_oldest_runs(result, tmp_path):
    root = tmp_path / "runs"
    (root / "keep-me").mkdir(parents=True)  # not a run: never touched
    made = [save_run(result, {"a.txt": b"1", "plots/b.png": b"2"}, root=root, keep=3) for _ in range(5)]
    left = list_runs(root)
    assert [p.name for p in left] == [p.name for p in made[-3:]]
    assert not made[0].exists() and not made[1].exists()
    assert (root / "keep-me").is_dir()
    assert (left[-1] / "plots" / "b.png").read_bytes() == b"2"
    assert not list(root.glob(".tmp-*"))


def test_run_ids_are_safe_and_env_overridable(result, tmp_path, monkeypatch):
    rid = make_run_id(result.replace(cache_key="../../EVIL key<>"))
    assert re.fullmatch(r"[0-9a-z-]+", rid)
    monkeypatch.setenv("TMA_RUNS_DIR", str(tmp_path / "env-runs"))
    path = save_run(result, {"x.json": b"{}"})
    assert path.parent == tmp_path / "env-runs"
    with pytest.raises(ValueError, match="unsafe"):
        save_run(result, {"../escape.txt": b"x"}, root=tmp_path / "r2")
    assert not (tmp_path / "r2").exists() or not any((tmp_path / "r2").iterdir())


def test_export_run_writes_out_and_keeps_the_run(result, tmp_path):
    out, run_dir = export_run(
        result,
        tmp_path / "b.zip",
        ExportOptions(session_entries=(entry_from_result(result),)),
        runs_root=tmp_path / "runs",
    )
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
    assert run_dir is not None and run_dir.parent == tmp_path / "runs"
    assert {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()} == names
    folder, _ = export_run(result, tmp_path / "folder", save=False)
    assert (folder / "report.pdf").is_file() and (folder / "plots" / "layer_metrics.png").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Figure data


def _metrics(**cols):
    base = {m: np.arange(4, dtype=float) for m in METRIC_NAMES}
    base.update({k: np.asarray(v, dtype=float) for k, v in cols.items()})
    return base


def test_metric_correlations_analytic():
    m = _metrics(
        participation_ratio=[0.0, 1.0, 8.0, 27.0],  # monotone, not linear
        intrinsic_dim_95=[3.0, 2.0, 1.0, 0.0],  # exactly anti-linear
        activation_entropy=[5.0, 5.0, 5.0, 5.0],
    )  # constant
    i = {n: k for k, n in enumerate(METRIC_NAMES)}
    P, S = metric_correlations(m, "pearson"), metric_correlations(m, "spearman")
    assert P.shape == S.shape == (len(METRIC_NAMES), len(METRIC_NAMES))
    assert P[i["effective_rank"], i["cosine_to_input"]] == pytest.approx(1.0)
    assert P[i["effective_rank"], i["intrinsic_dim_95"]] == pytest.approx(-1.0)
    assert P[i["effective_rank"], i["participation_ratio"]] < 0.99
    assert S[i["effective_rank"], i["participation_ratio"]] == pytest.approx(1.0)
    assert np.isnan(P[i["activation_entropy"]]).all() and np.isnan(S[:, i["activation_entropy"]]).all()
    np.testing.assert_allclose(P, P.T, equal_nan=True)
    x = np.array([1.0, 3.0, 2.0, 5.0])
    y = np.array([2.0, 1.0, 4.0, 3.0])
    r = metric_correlations(_metrics(effective_rank=x, participation_ratio=y), "pearson")[0, 1]
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1])
    with pytest.raises(ValueError):
        metric_correlations(m, "kendall")


def test_spearman_handles_ties():
    x = np.array([1.0, 2.0, 2.0, 3.0])
    y = np.array([1.0, 2.5, 2.5, 4.0])
    assert metric_correlations(_metrics(effective_rank=x, participation_ratio=y), "spearman")[0, 1] == pytest.approx(
        1.0
    )


def test_normalized_metrics_and_summary(result):
    N = normalized_metrics(result)
    assert N.shape == (len(METRIC_NAMES), result.n_layers + 1)
    for row, name in zip(N, METRIC_NAMES):
        x = result.layer_metrics[name]
        if np.nanmax(x) > np.nanmin(x):
            assert np.nanmin(row) == 0.0 and np.nanmax(row) == 1.0
    assert (normalized_metrics(_metrics(activation_entropy=[2, 2, 2, 2]))[3] == 0.5).all()
    s = summary_figures(result)
    assert s["tokens"] == result.n_tokens and s["token_bound"] == result.n_tokens - 1
    assert s["layers"] == result.n_layers
    assert max(result.layer_metrics["effective_rank"]) <= s["token_bound"] + 1e-9
    assert s["effective_rank_first"] == pytest.approx(result.layer_metrics["effective_rank"][0])


def test_one_token_text_still_exports(tiny_gpt2):
    from core.analysis.pipeline import analyze

    r = analyze(tiny_gpt2, "a", ig_steps=2)
    assert r.n_tokens == 1  # every spectral metric is NaN here
    files = bundle_files(r)
    for name in (*FOUNDATION, *MINE):
        assert name in files, name
    assert len(_pdf(files["report.pdf"]).pages) >= 3
    s = summary_figures(r)
    assert s["token_bound"] == 0 and s["effective_rank_min_layer"] is None
    assert np.isnan(metric_correlations(r, "spearman")[0]).all()


def test_report_ends_with_the_documentation_pages_laid_out_once(result, files):
    """The "Formulas and interpretation" pages follow the report, with an outline entry each; they come from one
    layout per process, and hold every registry entry of the report's kinds."""
    from core.export.report import _DOC_KINDS, _documentation_pdf, build_report
    from core.present import docs

    reader = _pdf(files["report.pdf"])
    titles = [o.title for o in reader.outline]
    assert titles == ["Report", "Formulas and interpretation"]
    start = reader.get_destination_page_number(reader.outline[1])
    doc_text = " ".join(p.extract_text() for p in reader.pages[start:])
    assert doc_text.startswith("Formulas and interpretation")
    for kind in _DOC_KINDS:
        for e in docs.entries(kind):
            assert e.title.split()[0] in doc_text, e.key
    assert "Formulas and interpretation" not in " ".join(p.extract_text() for p in reader.pages[:start])
    assert reader.metadata.title.startswith("Transformer Model Analysis - ")
    before = _documentation_pdf.cache_info().hits
    build_report(result, files)
    assert _documentation_pdf.cache_info().hits == before + 1


def test_the_manifest_opens_with_the_one_provenance_record(files, result, tiny_gpt2):
    """manifest.json holds core.model.provenance's record of the run: the model as loaded (the same from the
    LoadedModel and from the result's ModelInfo), the core version and every package version as computed."""
    from core.export.bundle import manifest
    from core.model.provenance import provenance
    from tests.manifests import assert_names_every_package

    man = json.loads(files["manifest.json"])
    record = provenance(tiny_gpt2).to_dict()
    assert provenance(result.model).to_dict() == record
    for key, value in record.items():
        assert man[key] == value, key
    assert man["revision"] == tiny_gpt2.info().revision and man["attn_implementation"] == "eager"
    assert_names_every_package(man["package_versions"])
    # a result read back from the cache names the packages that computed it, not the ones installed now
    old = result.replace(versions={"torch": "1.0", "scikit-learn": "0.1"}, core_version="0.0.9")
    old_man = manifest(old)
    assert old_man["package_versions"] == {"torch": "1.0", "scikit-learn": "0.1"}
    assert old_man["core_version"] == "0.0.9"


# ----------------------------------------------------------------------------------------------------------------
# Byte-level and exotic token text in every figure: readable symbols, never "Glyph … missing"

BYTE_LEVEL_TEXT = "Line one\r\nline two\ttab ✓ naïve 中文 emoji 🙂 end\u200b."


def test_token_labels_use_symbols_the_fonts_have():
    from core.figures import plotting

    assert plotting.token_label("\r\n\t") == "⇤↵⇥"
    assert plotting.token_label(" the") == "␣the" and plotting.token_label("") == "∅"
    assert plotting.raw_token_label("Ġthe") == "␣the" and plotting.raw_token_label("Ċ") == "↵"
    assert plotting.raw_token_label("č") == "⇤" and plotting.raw_token_label("▁Paris") == "␣Paris"
    assert plotting.token_label("中🙂") == "\\u4e2d\\U0001f642"  # no font we ship has them: named, not a box
    assert plotting.token_label("\u200b") == "\\u200b" and plotting.token_label("naïve $x$") == "naïve \\$x\\$"
    for label in ("⇤↵⇥␣∅…", plotting.token_label(BYTE_LEVEL_TEXT)):
        assert {ord(c) for c in label} <= plotting._font_chars(), label


@pytest.mark.filterwarnings("error:Glyph")
def test_every_figure_of_a_byte_level_text_draws_without_missing_glyphs(tiny_gpt2):
    """GPT-2's byte-level tokens of a text with \\r\\n, a tab, a zero-width space, CJK and an emoji: every figure of
    the bundle, the comparison and the patch bundle is drawn (a glyph warning is an error here, and a figure that
    fails is left out of its bundle, so a missing file is the failure)."""
    from core import analyze
    from core.cli.patch import bundle as patch_bundle
    from core.export.compare import comparison_files
    from core.studies.compare import compare
    from core.studies.patching import run_patching

    a = analyze(tiny_gpt2, BYTE_LEVEL_TEXT, ig_steps=4, head_ablation=True, views="all")
    assert "\r" in a.display_tokens and any("č" in t for t in a.tokens)  # the byte-level marks are there
    b = analyze(tiny_gpt2, "The cat sat on the mat.\r\n🙂", ig_steps=4)
    files = bundle_files(a, ExportOptions(animations=True))
    expected = {
        "plots/attention_mean_last_layer.png",
        "plots/token_attribution.png",
        "plots/query_key.png",
        "plots/neuron_factors.png",
        "plots/neuron_factor_neurons.png",
        "plots/head_ablation.png",
        "animations/attention_layers.gif",
        "animations/token_trajectories.gif",
    }
    assert expected <= set(files), expected - set(files)
    assert sum(name.endswith(".png") for name in files) >= 15
    cmp_files = comparison_files(a, b, compare(a, b), bundle=lambda r: bundle_files(r, ExportOptions(animations=False)))
    assert "report.pdf" in cmp_files and "plots/metrics_overlay.png" in cmp_files
    res = run_patching(tiny_gpt2, "The dog sat\r\non the log", "The log sat\r\non the dog")
    patch_files = patch_bundle(res)
    assert {"plots/patching_residual.png", "plots/patching_components.png", "report.pdf"} <= set(patch_files)
