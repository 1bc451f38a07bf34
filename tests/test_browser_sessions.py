"""Six browser sessions at once on one server: each analyses its own text (some with changed settings, most with the
defaults) at the same moment, and each shows its own tokens, its own settings and both animations; one session
leaves the page during its analysis and finds the result on return. Also: a Markdown model id from a shared link is
not a live link in the error banner. Port 8614 (this test's own), Debian's chromium, the bundled MiniLM offline."""

from __future__ import annotations

import os
import re
import urllib.request
from pathlib import Path

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, EXCEPTION, IDLE, need_browser, streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
PORT = int(os.environ.get("TMA_BROWSER_SESSIONS_PORT") or 0) or None
METRIC = '[data-testid="stMain"] [data-testid="stMetric"]'
LONG = " ".join(["The long river crossed the valley and the town slept under the stars."] * 6)

#: (text, changed settings or None). Changed: Max tokens 32 and gradients off; the others must keep the defaults.
SESSIONS: list[tuple[str, dict | None]] = [
    ("The quick brown fox jumps over the lazy dog.", None),
    ("Paris is the capital of France and a large city.", {"max_tokens": 32, "gradients": False}),
    ("Rivers flow into the sea after heavy rain.", None),
    (LONG, {"max_tokens": 32, "gradients": False}),
    ("A small test with the numbers one two three.", None),
    ("Birds sing in the morning light over the hills.", None),
]
DEFAULT_MAX_TOKENS = 128


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    with streamlit_server(tmp_path_factory, "sessions", PORT) as served:
        yield served


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def settle(pg, content: str | None = None, timeout: float = 240_000) -> None:
    if content:
        pg.wait_for_selector(content, timeout=timeout, state="attached")
    pg.wait_for_selector(IDLE, timeout=timeout)
    pg.wait_for_timeout(600)
    pg.wait_for_selector(IDLE, timeout=timeout)


def click(pg, selector: str) -> None:
    pg.locator(selector + ":visible").first.click()


def go(pg, title: str) -> None:
    pg.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()


def expected_tokens(text: str, max_tokens: int) -> int:
    from transformers import AutoTokenizer

    from core.model.loading import bundled_model_path

    tok = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    return len(tok(text, truncation=True, max_length=max_tokens)["input_ids"])


def toggle_checked(pg, key: str) -> bool:
    return pg.locator(f'[data-testid="stSidebar"] .st-key-{key} input').first.is_checked()


def test_six_sessions_at_once(server, browser):
    url, log_path = server
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1600}) for _ in SESSIONS]
    pages = [c.new_page() for c in contexts]
    for pg in pages:
        pg.set_default_timeout(120_000)
        pg.goto(url + "/")
    for pg, (text, change) in zip(pages, SESSIONS):
        settle(pg, '[data-testid="stSidebar"] .st-key-analyze button')
        area = pg.locator('[data-testid="stSidebar"] .st-key-text textarea').first
        area.fill(text)
        area.blur()
        settle(pg)
        if change:
            pg.locator('[data-testid="stSidebar"] [data-testid="stExpander"] summary').first.click()
            slider = pg.locator('[data-testid="stSidebar"] .st-key-max_tokens input[type="range"]').first
            slider.focus()
            slider.press("Home")  # the first choice: 32
            settle(pg)
            pg.locator('[data-testid="stSidebar"] .st-key-compute_gradients label').first.click()
            settle(pg)
            assert not toggle_checked(pg, "compute_gradients")

    # all six press Analyze at about the same moment; session 0 leaves for Details during its analysis
    for pg in pages:
        click(pg, '[data-testid="stSidebar"] .st-key-analyze button')
    pages[0].wait_for_timeout(500)
    go(pages[0], "Details")

    settle(pages[0], '[data-testid="stMain"] .katex', timeout=600_000)
    go(pages[0], "Overall")
    for i, (pg, (text, change)) in enumerate(zip(pages, SESSIONS)):
        try:
            settle(pg, METRIC, timeout=400_000)
        except Exception:
            SHOTS.mkdir(parents=True, exist_ok=True)
            for k, other in enumerate(pages):
                other.screenshot(path=str(SHOTS / f"sessions_{k}.png"), full_page=True)
            raise AssertionError(
                f"session {i} shows no result; screenshots in {SHOTS}; server log tail:\n"
                + log_path.read_text()[-2000:]
            ) from None
        assert pg.locator(EXCEPTION).count() == 0, f"session {i}: " + pg.locator(EXCEPTION).first.inner_text()
        header = pg.locator('[data-testid="stMain"] [data-testid="stCaptionContainer"]').all_inner_texts()
        joined = " ".join(header)
        max_tokens = (change or {}).get("max_tokens", DEFAULT_MAX_TOKENS)
        grads = "off" if change and change.get("gradients") is False else "on"
        n = expected_tokens(text, max_tokens)
        assert f" {n} tokens" in joined, f"session {i}: expected {n} tokens in {joined[:300]}"
        assert text[:60] in joined, f"session {i} shows another text: {joined[:300]}"
        assert f"Settings: max tokens {max_tokens} · gradients {grads}" in joined, f"session {i}: {joined[:400]}"
        if change is None:  # untouched sessions: the sidebar still shows the defaults
            assert toggle_checked(pg, "compute_gradients") and toggle_checked(pg, "animations"), f"session {i}"
        if text == LONG:
            assert "truncated to 32 tokens" in pg.locator('[data-testid="stMain"]').inner_text()

    # every session renders both animations of its own result
    for pg in pages:
        go(pg, "Layer Analysis")
    for pg in pages:
        settle(pg, '[data-testid="stMain"] [data-testid="stTab"]')
        pg.locator('[data-testid="stTab"]', has_text="Animations").first.click()
    for i, pg in enumerate(pages):
        img = pg.locator('[data-testid="stMain"] [data-testid="stImage"] img:visible')
        img.nth(1).wait_for(timeout=600_000)
        settle(pg)
        assert img.count() == 2, f"session {i}"
        for k in range(2):
            assert pg.evaluate("(el) => el.naturalWidth", img.nth(k).element_handle()) > 0, f"session {i}"
        assert "could not be rendered" not in pg.locator('[data-testid="stMain"]').inner_text()
        assert pg.locator(EXCEPTION).count() == 0
    for c in contexts:
        c.close()
    server_log = log_path.read_text()
    for bad in ("copy_from_bbox", "get_renderer", "Traceback"):
        assert bad not in server_log, server_log[-3000:]


def test_markdown_model_id_is_not_a_link(server, browser):
    url, _ = server
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.set_default_timeout(120_000)
    hostile = "[Click to fix](http://evil.example)"
    pg.goto(url + "/?model=" + urllib.request.quote(hostile))
    settle(pg, '[data-testid="stSidebar"] .st-key-analyze button')
    click(pg, '[data-testid="stSidebar"] .st-key-analyze button')
    settle(pg, '[data-testid="stAlertContentError"]', timeout=120_000)
    banner = pg.locator('[data-testid="stAlertContentError"]').first
    assert hostile in banner.inner_text()  # shown literally
    assert banner.locator("a").count() == 0, banner.inner_html()  # no link in the banner
    assert pg.locator('a[href^="http://evil"], a[href^="https://evil"]').count() == 0  # none anywhere on the page
    assert re.search(r"does not exist|not a Hugging Face", banner.inner_text())
    ctx.close()
