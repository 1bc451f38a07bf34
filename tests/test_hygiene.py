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
