"""core.studies.compare: linear CKA (its defining properties, checked against the textbook formulas) and compare() on
real results of tiny models: 6 against 12 layers on one tokenizer, different tokenizers, different texts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.present.compare import cka_rows_table, metric_overlay_rows, prediction_rows
from core.steps.metrics import METRIC_NAMES
from core.studies.compare import ComparisonResult, cka_matrix, compare, layer_cka, linear_cka

RNG = np.random.default_rng(13)


def _orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _hsic_song(K: np.ndarray, L: np.ndarray) -> float:
    """The unbiased HSIC estimator exactly as Song et al. (2012) write it."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    one = np.ones(n)
    return float(
        (
            np.trace(Kt @ Lt)
            + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ Kt @ Lt @ one)
        )
        / (n * (n - 3))
    )


def _cka_textbook(X: np.ndarray, Y: np.ndarray, debiased: bool) -> float:
    K, L = X @ X.T, Y @ Y.T  # uncentred features on purpose: the estimators centre themselves
    if debiased:
        return _hsic_song(K, L) / np.sqrt(_hsic_song(K, K) * _hsic_song(L, L))
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n

    def hsic(A: np.ndarray, B: np.ndarray) -> float:
        return float(np.trace(A @ H @ B @ H) / (n - 1) ** 2)

    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


# ----------------------------------------------------------------------------------------------------------------
# linear_cka


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_of_a_representation_with_itself_is_one(debiased):
    X = RNG.standard_normal((20, 7)) + 5.0  # an offset the centring must remove
    assert linear_cka(X, X, debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matches_the_textbook_formulas(debiased):
    X = RNG.standard_normal((15, 6)) + 2.0
    Y = X @ RNG.standard_normal((6, 9)) + 0.5 * RNG.standard_normal((15, 9)) - 1.0
    expected = _cka_textbook(X, Y, debiased)
    assert linear_cka(X, Y, debiased=debiased) == pytest.approx(expected, rel=1e-10)
    assert 0.2 < expected < 1.0  # a related pair: the check is not comparing two zeros


def test_centred_cka_in_feature_space_and_one_dimensional_case():
    X, Y = RNG.standard_normal((12, 5)), RNG.standard_normal((12, 3))
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    feature_form = np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))
    assert linear_cka(X, Y) == pytest.approx(feature_form, rel=1e-10)
    # one feature each: linear CKA is the squared Pearson correlation (hand-checkable: r = 0.98198 here)
    x, y = np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [2.0], [4.0]])
    r = np.corrcoef(x[:, 0], y[:, 0])[0, 1]
    assert linear_cka(x, y) == pytest.approx(r**2, rel=1e-12)
    assert r**2 == pytest.approx(0.964285714, rel=1e-8)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("side", ["x", "y"])
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(debiased, side):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((30, 8))
    Y = np.tanh(X @ rng.standard_normal((8, 10))) + 0.3 * rng.standard_normal((30, 10))
    base = linear_cka(X, Y, debiased=debiased)
    if side == "x":
        moved = (
            linear_cka(X @ _orthogonal(8, rng), Y, debiased=debiased),
            linear_cka(X * 37.5, Y, debiased=debiased),
            linear_cka(0.01 * X @ _orthogonal(8, rng), Y, debiased=debiased),
        )
    else:
        moved = (
            linear_cka(X, Y @ _orthogonal(10, rng), debiased=debiased),
            linear_cka(X, Y * 1e-3, debiased=debiased),
            linear_cka(X, 250.0 * Y @ _orthogonal(10, rng), debiased=debiased),
        )
    for v in moved:
        assert v == pytest.approx(base, rel=1e-9, abs=1e-12)
    # not invariant to an arbitrary (non-orthogonal) linear map: the invariance above is a real property
    skew = np.diag(np.linspace(0.1, 10, 8))
    assert abs(linear_cka(X @ skew, Y, debiased=debiased) - base) > 1e-3


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_is_symmetric(debiased):
    X, Y = RNG.standard_normal((25, 4)), RNG.standard_normal((25, 11))
    Y[:, :4] += X
    assert linear_cka(X, Y, debiased=debiased) == pytest.approx(linear_cka(Y, X, debiased=debiased), rel=1e-12)


def test_independent_random_matrices_debiased_near_zero_centred_biased_up():
    rng = np.random.default_rng(7)
    n, p = 64, 256
    debiased = [linear_cka(rng.standard_normal((n, p)), rng.standard_normal((n, p)), debiased=True) for _ in range(5)]
    centred = linear_cka(rng.standard_normal((n, p)), rng.standard_normal((n, p)))
    assert all(abs(v) < 0.05 for v in debiased), debiased
    assert centred > 0.5  # wide random features: the centred estimator is far from 0, which debiasing removes


def test_cka_edge_cases():
    X = RNG.standard_normal((5, 3))
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(X, X[:4])
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(X[0], X[0])
    assert np.isnan(linear_cka(X, np.ones((5, 2))))  # constant over the examples
    assert np.isnan(linear_cka(X[:3], X[:3], debiased=True))  # debiased needs n >= 4
    assert np.isnan(linear_cka(X[:1], X[:1]))


def test_cka_matrix_equals_pairwise_cka():
    Ha = RNG.standard_normal((3, 10, 6))
    Hb = RNG.standard_normal((4, 10, 5))
    Hb[1] = Ha[2] @ _orthogonal(6, RNG)[:, :5]
    for debiased in (False, True):
        M = cka_matrix(Ha, Hb, debiased=debiased)
        assert M.shape == (3, 4)
        expected = [[linear_cka(Ha[i], Hb[j], debiased=debiased) for j in range(4)] for i in range(3)]
        np.testing.assert_allclose(M, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="same tokens"):
        cka_matrix(Ha, Hb[:, :9])


# ----------------------------------------------------------------------------------------------------------------
# compare() on real results of tiny models


@pytest.fixture(scope="module")
def gpt2_depths(tmp_path_factory, tiny_dirs):
    """Tiny GPT-2 models with 6 and 12 layers that share the tiny GPT-2 tokenizer (same tokens for one text)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from core.model.loading import load_model

    tok = AutoTokenizer.from_pretrained(str(tiny_dirs["gpt2"]))
    out = {}
    for n in (6, 12):
        folder = tmp_path_factory.mktemp(f"gpt2-{n}")
        torch.manual_seed(n)
        cfg = GPT2Config(
            n_layer=n,
            n_head=4,
            n_embd=32,
            n_positions=128,
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        GPT2LMHeadModel(cfg).eval().save_pretrained(folder)
        tok.save_pretrained(folder)
        out[n] = load_model(str(folder), dtype="float32", device="cpu")
    return out


@pytest.fixture(scope="module")
def runs(gpt2_depths, tiny_gpt2, tiny_bert):
    from core.analysis.pipeline import analyze

    text = "The cat sat on the mat."
    kw = {"ig_steps": 2}
    return {
        "g6": analyze(gpt2_depths[6], text, **kw),
        "g12": analyze(gpt2_depths[12], text, **kw),
        "gpt2": analyze(tiny_gpt2, text, **kw),
        "gpt2_other_text": analyze(tiny_gpt2, "The dog sat on the log today.", **kw),
        "bert": analyze(tiny_bert, text, **kw),
    }


def test_relative_depth_overlay_6_vs_12_layers(runs):
    cmp = compare(runs["g6"], runs["g12"])
    assert (cmp.a.n_layers, cmp.b.n_layers) == (6, 12)
    assert cmp.default_axis == "relative"
    np.testing.assert_allclose(cmp.a.depth, np.arange(7) / 6)
    np.testing.assert_allclose(cmp.b.depth, np.arange(13) / 12)
    rows = metric_overlay_rows(cmp)
    assert len(rows) == (7 + 13) * len(METRIC_NAMES)
    for run, n in ((cmp.a, 6), (cmp.b, 12)):
        mine = [r for r in rows if r["run"].startswith(run.label) and r["metric"] == "effective_rank"]
        assert [r["x"] for r in mine] == pytest.approx([l / n for l in range(n + 1)])
        assert [r["value"] for r in mine] == pytest.approx(run.metrics["effective_rank"].tolist(), nan_ok=True)
    # A's layer 3 and B's layer 6 sit at the same depth, 0.5
    a3 = next(r for r in rows if r["run"].startswith("A") and r["layer"] == 3)
    b6 = next(r for r in rows if r["run"].startswith("B") and r["layer"] == 6)
    assert a3["x"] == b6["x"] == 0.5
    absolute = metric_overlay_rows(cmp, "absolute")
    assert max(r["x"] for r in absolute if r["run"].startswith("B")) == 12
    with pytest.raises(ValueError):
        metric_overlay_rows(cmp, "sideways")


def test_one_tokenizer_two_depths_gives_cka_but_no_entropy_difference(runs):
    cmp = compare(runs["g6"], runs["g12"])
    assert cmp.same_tokens and not cmp.same_model
    assert cmp.cka.shape == (7, 13) and cmp.cka_debiased.shape == (7, 13)
    assert cmp.cka_unavailable_reason == ""
    assert cmp.cka_tokens == runs["g6"].n_tokens
    # both models embed the same ids through different random tables; the values are valid CKAs
    assert np.all((cmp.cka >= 0) & (cmp.cka <= 1))
    assert cmp.cka[3, 6] == pytest.approx(linear_cka(runs["g6"].hidden_states[3], runs["g12"].hidden_states[6]))
    assert cmp.entropy_diff is None and "12 layers" in cmp.entropy_unavailable_reason
    assert set(cmp.attribution_agreement) >= {"rollout"}


def test_different_tokenizations_give_the_calm_message_not_an_error(runs):
    cmp = compare(runs["gpt2"], runs["bert"])
    assert not cmp.same_tokens
    assert cmp.cka is None and cmp.cka_debiased is None and cmp.cka_tokens == 0
    reason = cmp.cka_unavailable_reason
    assert "tokenizers differ" in reason and reason.endswith(".") and "\n" not in reason
    assert cmp.attribution_agreement == {}
    assert not cmp.same_model and cmp.entropy_diff is None
    # the side-by-side parts are still there
    assert cmp.predictions_a.kind == "next_token" and cmp.predictions_b.kind == "mask_fill"
    assert cmp.attribution_a is not None and cmp.attribution_b is not None
    assert len(cmp.attribution_b.tokens) == runs["bert"].n_tokens


def test_a_truncated_run_is_explained_as_truncation(runs, tiny_gpt2):
    from core.analysis.pipeline import analyze

    short = analyze(tiny_gpt2, "The cat sat on the mat.", max_tokens=4, ig_steps=2)
    cmp = compare(runs["gpt2"], short)
    assert cmp.cka is None and "max-tokens" in cmp.cka_unavailable_reason


def test_two_texts_on_one_model(runs):
    a, b = runs["gpt2"], runs["gpt2_other_text"]
    cmp = compare(a, b)
    assert cmp.same_model and not cmp.same_tokens and cmp.default_axis == "absolute"
    assert "different texts" in cmp.cka_unavailable_reason
    np.testing.assert_allclose(cmp.entropy_diff, b.attention.entropy - a.attention.entropy)
    np.testing.assert_allclose(
        cmp.normalized_entropy_diff, b.attention.normalized_entropy - a.attention.normalized_entropy
    )
    assert cmp.entropy_unavailable_reason == ""
    table = prediction_rows(cmp)
    assert len(table) == max(len(cmp.predictions_a.tokens), len(cmp.predictions_b.tokens)) > 0
    assert table[0]["A"] == a.predictions.candidates[0][0]["token"]
    assert table[0]["p(B)"] == pytest.approx(b.predictions.candidates[0][0]["probability"])


def test_a_run_against_itself(runs):
    r = runs["gpt2"]
    cmp = compare(r, r)
    np.testing.assert_allclose(np.diag(cmp.cka), 1.0, atol=1e-9)
    np.testing.assert_allclose(cmp.cka, cmp.cka.T, atol=1e-12)
    assert np.all(cmp.entropy_diff == 0)
    assert cmp.shared_predictions == list(dict.fromkeys(cmp.predictions_a.tokens))
    assert all(v == pytest.approx(1.0) for v in cmp.attribution_agreement.values())


def test_layer_cka_within_one_run(runs):
    r = runs["g6"]
    for debiased in (False, True):
        M = layer_cka(r, debiased=debiased)
        assert M.shape == (7, 7)
        np.testing.assert_allclose(np.diag(M), 1.0, atol=1e-9)
        np.testing.assert_allclose(M, M.T, atol=1e-12)
        assert M[0, 6] == pytest.approx(linear_cka(r.hidden_states[0], r.hidden_states[6], debiased=debiased))


def test_comparison_round_trips_and_writes_plain_json(runs):
    from core.analysis.result import results_equal
    from core.infra import serialize

    cmp = compare(runs["g6"], runs["g12"])
    back = serialize.loads(serialize.dumps(cmp))
    assert isinstance(back, ComparisonResult) and results_equal(back, cmp)
    doc = json.loads(json.dumps(cmp.to_dict(), allow_nan=False))
    assert doc["a"]["n_layers"] == 6 and len(doc["cka"]) == 7 and len(doc["cka"][0]) == 13
    rows = cka_rows_table(cmp.cka)
    assert len(rows) == 7 * 13 and rows[14][:2] == [1, 1]
    other = compare(runs["gpt2"], runs["bert"]).to_dict()
    assert other["cka"] is None and other["cka_unavailable_reason"]


# ----------------------------------------------------------------------------------------------------------------
# The CLI end to end on tiny models


def run_compare(argv: list[str]) -> int:
    from core.cli.main import main

    return main(["compare", *argv])


@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory, tiny_dirs, gpt2_depths):
    import os

    tmp = tmp_path_factory.mktemp("cli-compare")
    os.environ.setdefault("TMA_CACHE_DIR", str(tmp / "cache"))
    g6, g12 = (str(gpt2_depths[n].local_path or gpt2_depths[n].model_id) for n in (6, 12))
    gpt2, bert = str(tiny_dirs["gpt2"]), str(tiny_dirs["bert"])
    common = ["--no-animations", "--no-gradients"]
    codes = {
        "depths": run_compare(
            [
                "--model",
                g6,
                "--model-b",
                g12,
                "--text",
                "The cat sat on the mat.",
                "--out",
                str(tmp / "depths.zip"),
                *common,
            ]
        ),
        "tokenizers": run_compare(
            [
                "--model",
                gpt2,
                "--model-b",
                bert,
                "--text",
                "The cat sat on the mat.",
                "--out",
                str(tmp / "tok"),
                *common,
            ]
        ),
    }
    return tmp, codes


@pytest.mark.slow
def test_cli_compare_writes_both_bundles_cka_and_report(cli_outputs):
    import io
    import zipfile

    from pypdf import PdfReader

    tmp, codes = cli_outputs
    assert codes["depths"] == 0
    with zipfile.ZipFile(tmp / "depths.zip") as zf:
        names = set(zf.namelist())
        files = {
            n: zf.read(n)
            for n in (
                "comparison.json",
                "cka.csv",
                "report.pdf",
                "a/layer_metrics.csv",
                "b/layer_metrics.csv",
                "a/report.pdf",
                "b/report.pdf",
            )
        }
    assert {"a/manifest.json", "b/manifest.json", "a/attentions.npy", "b/tokens.json"} <= names
    assert {
        "plots/metrics_overlay.png",
        "plots/cka.png",
        "plots/cka_debiased.png",
        "plots/layer_cka_a.png",
        "plots/layer_cka_b.png",
    } <= names
    assert "plots/entropy_difference.png" not in names  # 6 and 12 layers: not one architecture
    lines = files["cka.csv"].decode().splitlines()
    assert lines[0] == "layer_a,layer_b,cka"
    assert len(lines) == 1 + 7 * 13
    assert lines[1].startswith("0,0,") and lines[-1].startswith("6,12,")
    doc = json.loads(files["comparison.json"])
    assert doc["a"]["n_layers"] == 6 and doc["b"]["n_layers"] == 12 and doc["default_axis"] == "relative"
    assert doc["cka_csv"] == "centred"
    assert float(lines[1].split(",")[2]) == pytest.approx(doc["cka"][0][0], rel=1e-6)
    assert len(files["b/layer_metrics.csv"].decode().splitlines()) == 1 + 13
    report = PdfReader(io.BytesIO(files["report.pdf"]))
    pages_a = len(PdfReader(io.BytesIO(files["a/report.pdf"])).pages)
    pages_b = len(PdfReader(io.BytesIO(files["b/report.pdf"])).pages)
    assert len(report.pages) > pages_a + pages_b  # the comparison pages, then both runs' reports
    assert "comparison of two runs" in report.pages[0].extract_text()
    titles = [o.title for o in report.outline]
    assert titles[0] == "Comparison" and titles[-2:] == ["Run A report", "Run B report"]


@pytest.mark.slow
def test_cli_compare_different_tokenizers_writes_no_cka(cli_outputs):
    tmp, codes = cli_outputs
    assert codes["tokenizers"] == 0
    out = tmp / "tok"
    assert (out / "a" / "manifest.json").is_file() and (out / "b" / "manifest.json").is_file()
    assert not (out / "cka.csv").exists() and not (out / "plots" / "cka.png").exists()
    doc = json.loads((out / "comparison.json").read_text())
    assert doc["cka"] is None and "tokenizers differ" in doc["cka_unavailable_reason"]
    assert json.loads((out / "a" / "manifest.json").read_text())["family"] == "causal_lm"
    assert json.loads((out / "b" / "manifest.json").read_text())["family"] == "masked_lm"


@pytest.mark.parametrize(
    "extra",
    [
        ["--text", "   ", "--text-b", "x"],
        ["--text", "The cat.", "--text-b", "  "],
        ["--text", "The cat."],  # B equals A
        ["--text", "The cat.", "--text-b", "The dog.", "--max-tokens", "0"],
    ],
)
def test_cli_compare_bad_input_is_one_line_and_exit_2(tmp_path, capsys, tiny_dirs, extra):
    out = tmp_path / "x.zip"
    code = run_compare(["--model", str(tiny_dirs["gpt2"]), *extra, "--out", str(out)])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    assert not out.exists()


def test_python_m_core_compare_bad_input_and_help(tmp_path):
    """The real entry point: the subcommand is registered, and bad input is one stderr line with exit 2 before any
    model loads."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMA_CACHE_DIR": str(tmp_path / "cache")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "core", "compare", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    helped = cli("--help")
    assert helped.returncode == 0
    for opt in ("--model", "--model-b", "--text", "--text-b", "--out", "--debiased", "--max-tokens", "--dtype"):
        assert opt in helped.stdout, opt
    out = tmp_path / "x.zip"
    for args in (
        ["--model", "m", "--text", "same", "--out", str(out)],
        ["--model", "m", "--text", "a", "--text-b", " ", "--out", str(out)],
        ["--model", "m", "--out", str(out)],
    ):
        proc = cli(*args)
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
        assert "Traceback" not in proc.stderr and not out.exists()


def test_comparison_figures_are_thread_safe(runs):
    """The figures are drawn on private Figure objects: four threads at once give the same bytes as one."""
    import concurrent.futures as cf

    from core.figures.compare import comparison_plots

    cmp = compare(runs["gpt2"], runs["gpt2_other_text"])
    single = comparison_plots(cmp, runs["gpt2"], runs["gpt2_other_text"])
    assert set(single) == {
        "plots/metrics_overlay.png",
        "plots/layer_cka_a.png",
        "plots/layer_cka_b.png",
        "plots/entropy_difference.png",
    }
    with cf.ThreadPoolExecutor(max_workers=4) as pool:
        drawn = list(pool.map(lambda _: comparison_plots(cmp, runs["gpt2"], runs["gpt2_other_text"]), range(4)))
    assert all(d == single for d in drawn)


def test_figures_follow_the_chart_rules(runs):
    """Attention blocks are numbered 1 … L in the entropy-difference figure; metric axes start where the Overall
    page's do (0 for effective rank, at most 0 and at least 1 for the cosine)."""
    from core.figures.compare import entropy_difference_figure, overlay_figure

    cmp = compare(runs["gpt2"], runs["gpt2_other_text"])
    L = runs["gpt2"].n_layers
    ax = entropy_difference_figure(cmp.entropy_diff, "t").axes[0]
    assert ax.get_ylim() == (L + 0.5, 0.5)
    axes = overlay_figure(cmp).axes
    assert axes[0].get_ylim()[0] == 0.0  # effective rank
    low, high = axes[4].get_ylim()  # cosine to input
    assert low <= 0.0 and high >= 1.0


def test_comparison_json_holds_each_runs_provenance_record(runs):
    """comparison.json names, for run A and run B, the one provenance record (core.model.provenance) of each run
    as it was computed: its model and every package version, scikit-learn and the bundled model's included."""
    from core.export.compare import comparison_files
    from core.model.provenance import provenance
    from tests.manifests import assert_names_every_package

    a, b = runs["g6"], runs["bert"]
    doc = json.loads(comparison_files(a, b)["comparison.json"])
    for label, r in (("a", a), ("b", b)):
        assert doc["provenance"][label] == provenance(r.model).to_dict()
        assert_names_every_package(doc["provenance"][label]["package_versions"])
    assert doc["provenance"]["a"]["model_id"] != doc["provenance"]["b"]["model_id"]
