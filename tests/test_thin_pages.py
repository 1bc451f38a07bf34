"""Pages stay thin (they read state and call widgets: no chart spec, cache or model run in pages/), no file of the
app passes 900 lines, and the widget modules are named for what they draw."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_PAGES = ("alt.", "st.cache_", "analyze(", "patch(", "analyze_corpus(", "load_model(")


def test_pages_hold_no_chart_spec_cache_or_model_run():
    found = []
    for path in sorted((ROOT / "pages").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for needle in FORBIDDEN_IN_PAGES:
            if re.search(r"(?<![\w.])" + re.escape(needle), text):
                found.append(f"{path.name}: {needle}")
    assert found == []


def test_the_check_would_see_a_forbidden_call():
    """The pattern above matches the calls it forbids (and not a longer name that merely ends like one)."""
    pattern = r"(?<![\w.])" + re.escape("patch(")
    assert re.search(pattern, "res = patch(loaded, a, b)") and not re.search(pattern, "dispatch(x)")
    assert re.search(r"(?<![\w.])" + re.escape("alt."), "c = alt.Chart(df)")


def test_no_app_or_page_file_passes_900_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for folder in ("app", "pages")
        for p in (ROOT / folder).glob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 900
    }
    assert long == {}


def test_views_has_one_meaning_and_no_module_is_named_after_a_peer():
    names = {p.stem for folder in ("app", "pages") for p in (ROOT / folder).glob("*.py")}
    assert not [n for n in names if "views" in n or n.startswith("peer")]
