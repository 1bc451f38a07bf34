"""The layout in a real browser for a long text: every page and tab at 1 280 and 1 920 px wide, for a 512-token text
analysed with the bundled MiniLM (512 positions). (The short-text case is test_browser's sweep, on the same server.)

Asserted from the DOM: no chart, image, HTML block, table or element reaches past the main column, the page never
scrolls sideways, and no page or tab is taller than a bound. Screenshots go to artifacts/screenshots/layout/ (CI
keeps the folder) so a person can look at them. Needs /usr/bin/chromium (Debian's package; never `playwright
install`). The server is conftest's app_server ($TMA_BROWSER_PORT picks its port).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    MAIN,
    check_layout,
    check_timing_line,
    settle,
)

from core.infra.presets import BUNDLED_ID as BUNDLED

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots" / "layout"
WIDTHS = (1280, 1920)
HEIGHT = 900
LONG_TEXT = " ".join(
    [
        (
            "The researchers measured how each layer of the model spreads its tokens over many "
            "directions, and they wrote every number into a report for later comparison."
        )
    ]
    * 20
)
#: Tabs with charts only (Overall, the Layer Analysis tabs) stay well below it, whatever the text length.
MAX_CHART_PAGE_PX = 4000


@pytest.fixture(scope="module")
def server(app_server):
    return app_server[0]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def analyse(pg, server: str, text: str, max_tokens_steps: int) -> None:
    """Type the text, move "Max tokens" right by `max_tokens_steps` options (128 → 512 is 2), press Analyze."""
    pg.goto(server + "/")
    settle(pg, '[data-testid="stSidebar"] .st-key-analyze button')
    box = pg.locator('[data-testid="stSidebar"] .st-key-text textarea')
    box.fill(text)
    box.blur()
    settle(pg)
    if max_tokens_steps:
        pg.locator('[data-testid="stSidebar"] [data-testid="stExpander"] summary', has_text="Settings").click()
        thumb = pg.locator('.st-key-max_tokens input[type="range"]')  # the slider's keyboard handle
        thumb.focus()
        for _ in range(max_tokens_steps):
            thumb.press("ArrowRight")
            pg.wait_for_timeout(200)
        settle(pg)
        assert "512" in pg.locator(".st-key-max_tokens").inner_text()
    pg.locator('[data-testid="stSidebar"] .st-key-analyze button:visible').first.click()
    settle(pg, f'{MAIN} [data-testid="stMetric"]', timeout=400_000)
    check_timing_line(pg, server, BUNDLED)


#: name -> the measured column width, page height and widest item (written next to the screenshots).
MEASURED: dict[str, dict] = {}


def check(pg, name: str, bound: int) -> dict:
    """Screenshot, then the DOM assertions: inside the column, no sideways scroll, bounded height."""
    return check_layout(pg, SHOTS, name, bound, MEASURED)


def go(pg, title: str, content: str) -> None:
    pg.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    settle(pg, content)


def tab(pg, label: str) -> None:
    pg.locator(f'{MAIN} [data-testid="stTab"]', has_text=label).first.click()
    pg.wait_for_timeout(600)
    settle(pg)


LAYER_TABS = (
    "Attention",
    "Heads",
    "Token attribution",
    "Logit lens",
    "Animations",
    "Neurons",
    "Logit attribution",
    "Flow routes",
)


def at_both_widths(pg, name: str, bound: int = MAX_CHART_PAGE_PX) -> dict:
    """The page as it is at 1 280 and at 1 920 px (charts re-lay out on resize); the 1 280 px measurement."""
    out = {}
    for width in WIDTHS:
        pg.set_viewport_size({"width": width, "height": HEIGHT})
        pg.wait_for_timeout(500)
        settle(pg)
        out[width] = check(pg, f"{name}_{width}", bound)
    pg.set_viewport_size({"width": WIDTHS[0], "height": HEIGHT})
    return out[WIDTHS[0]]


def test_layout_of_a_long_text_at_two_widths(server, browser):
    pg = browser.new_page(viewport={"width": WIDTHS[0], "height": HEIGHT})
    pg.set_default_timeout(90_000)
    try:
        analyse(pg, server, LONG_TEXT, 2)
        header = pg.locator(f"{MAIN} [data-testid='stCaptionContainer']").first.inner_text()
        assert "512 tokens" in header, header
        go(pg, "Overall", f'{MAIN} [data-testid="stMetric"]')
        m = at_both_widths(pg, "512tok_overall")
        assert m["charts"] >= 7, "five metric charts, the correlation and the normalised heatmap"

        go(pg, "Layer Analysis", f'{MAIN} [data-testid="stTab"]')
        for t in LAYER_TABS:
            tab(pg, t)
            if t == "Animations":
                pg.locator(f'{MAIN} [data-testid="stImage"] img:visible').first.wait_for(timeout=180_000)
            if t == "Attention":  # a head picked: the single-head view must stay bounded
                pg.locator(f"{MAIN} .st-key-head").click()
                pg.locator('[role="option"]', has_text="head 3").first.click()
                settle(pg, f'{MAIN} [data-testid="stMetric"]')
            at_both_widths(pg, f"512tok_layer_{t.replace(' ', '_').lower()}")

        go(pg, "Causal", f"{MAIN} h1")
        at_both_widths(pg, "512tok_causal")
    finally:
        pg.close()
