"""House rules that a test can enforce."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_never_imports_streamlit():
    offenders = [p.name for p in (ROOT / "core").rglob("*.py") if "streamlit" in _imports(p)]
    assert offenders == []


def test_no_trust_remote_code_anywhere():
    for p in (
        list((ROOT / "core").rglob("*.py")) + list((ROOT / "app").rglob("*.py")) + list((ROOT / "pages").rglob("*.py"))
    ):
        forbidden = "trust_remote_code" + "=True"  # spelt in two parts so this file does not contain it
        assert forbidden not in p.read_text(encoding="utf-8").replace(" ", ""), p


def test_importing_core_does_not_import_torch():
    code = "import sys, core; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_requirements_pin_torch_with_an_upper_bound():
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    torch = [l for l in lines if l.startswith("torch")]
    assert torch and "<=" in torch[0]


# ----------------------------------------------------------------------------------------------------------------
# A quiet console: library chatter at DEBUG, handled warnings silenced where they arise, nothing left in the checkout


def test_fonttools_subset_chatter_is_kept_at_debug(tiny_gpt2, caplog):
    import logging

    from core import analyze
    from core.export.report import build_report

    result = analyze(tiny_gpt2, "The cat sat on the mat.", compute_gradients=False)
    caplog.set_level(logging.INFO)  # the app's level
    build_report(result)
    assert not [r for r in caplog.records if r.name.startswith("fontTools")]
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="fontTools.subset")  # asked for: there, as DEBUG
    build_report(result)
    chatter = [r for r in caplog.records if r.name.startswith("fontTools")]
    assert chatter and {r.levelname for r in chatter} == {"DEBUG"}


def test_a_cut_text_does_not_trigger_the_tokenizers_length_warning(minilm):
    import logging

    from core.model.tokens import encode_texts, tokenize

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("transformers.tokenization_utils_base")
    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    minilm.tokenizer.deprecation_warnings.clear()  # the tokenizer warns once; make sure it would
    try:
        enc = tokenize(minilm, "word " * 700, 512)
        cut = encode_texts(minilm, ["word " * 700, "short"], 512)
    finally:
        logger.removeHandler(handler)
    assert enc.truncated and [c.truncated for c in cut] == [True, False]  # the cut is still seen and reported
    assert not [r for r in records if "longer than the specified maximum" in r.getMessage()]


def test_corpus_quantiles_over_an_empty_layer_do_not_warn():
    import types
    import warnings

    import numpy as np

    from core.studies.corpus import CorpusResult

    v = np.array([[1.0, np.nan, 3.0], [2.0, np.nan, np.nan], [4.0, np.nan, 5.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "All-NaN slice encountered" would fail here
        s = CorpusResult.per_text_summary(types.SimpleNamespace(per_text={"m": v}, n_layers=3), "m")  # type: ignore[arg-type]
    np.testing.assert_allclose(s["median"], [2.0, np.nan, 4.0])
    np.testing.assert_allclose(s["q25"], [1.5, np.nan, 3.5])


def test_runs_stay_out_of_the_checkout(monkeypatch):
    from core.export.runs import runs_root

    assert ROOT not in runs_root().resolve().parents  # the test session's runs live under pytest's tmp folder
    monkeypatch.delenv("TMA_RUNS_DIR")
    assert runs_root() == ROOT / "assets" / "runs"  # the documented default, ignored by git
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "assets/runs/20260101-000000-000000-abc"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0
