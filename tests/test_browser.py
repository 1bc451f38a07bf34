"""The whole app in a real browser: a `streamlit run` server and headless Chromium driven by playwright.

Analyse with the bundled MiniLM, visit every page, see the charts (SVG) and the images, no exception box anywhere;
screenshots go to artifacts/screenshots/ (CI keeps the folder). Needs /usr/bin/chromium (never `playwright install`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, EXCEPTION, IDLE, need_browser, streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
#: Every URL the module's page asked for (see outside_requests).
REQUESTED: list[str] = []


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    with streamlit_server(tmp_path_factory, "browser") as (url, _log):
        yield url


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1500, "height": 1900})
        pg.set_default_timeout(60_000)
        pg.on("request", lambda r: REQUESTED.append(r.url))
        yield pg
        browser.close()


def settle(pg, content: str | None = None, timeout: float = 120_000) -> None:
    """Wait until the expected content is there and the script has finished its run."""
    if content:
        pg.wait_for_selector(content, timeout=timeout, state="attached")
    pg.wait_for_selector(IDLE, timeout=timeout)
    pg.wait_for_timeout(800)  # charts finish drawing after the script run
    pg.wait_for_selector(IDLE, timeout=timeout)


def no_exception_box(pg) -> None:
    boxes = pg.locator(EXCEPTION)
    assert boxes.count() == 0, boxes.first.inner_text()


def click(pg, selector: str) -> None:
    """Click the visible match (Streamlit also renders a hidden twin of a button with a tooltip, for sizing)."""
    pg.locator(selector + ":visible").first.click()


def go(pg, title: str, content: str) -> None:
    pg.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    settle(pg, content)


def outside_requests(server: str) -> list[str]:
    """The URLs the page asked of any host but the app's server (the app must work offline: a ":material/…" page
    icon made Streamlit's frontend fetch the favicon from fonts.gstatic.com)."""
    from urllib.parse import urlsplit

    host = urlsplit(server).netloc
    return sorted(
        {u for u in REQUESTED if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).netloc != host}
    )


def test_whole_app_in_a_browser(server, page):
    pg = page
    pg.goto(server + "/")
    settle(pg, '[data-testid="stSidebar"] .st-key-analyze button')
    no_exception_box(pg)
    assert "press analyze" in pg.locator('[data-testid="stMain"]').inner_text().lower()  # the hint
    pg.screenshot(path=str(SHOTS / "00_start.png"), full_page=True)

    # analyse with the bundled MiniLM (the default model)
    click(pg, '[data-testid="stSidebar"] .st-key-analyze button')
    settle(pg, '[data-testid="stMain"] [data-testid="stMetric"]', timeout=240_000)
    no_exception_box(pg)
    main = pg.locator('[data-testid="stMain"]')
    assert main.locator("svg").count() >= 7, "the metric charts render as SVG"
    assert "not available" in main.inner_text().lower()  # MiniLM has no LM head: the calm message
    assert "model=" in pg.url and "all-MiniLM" in pg.url  # the URL keeps the model
    pg.screenshot(path=str(SHOTS / "01_overall.png"), full_page=True)

    # the export: the sidebar's download button builds the ZIP on click
    with pg.expect_download(timeout=120_000) as dl:
        click(pg, '[data-testid="stSidebar"] [data-testid="stDownloadButton"] button')
    path = dl.value.path()
    import zipfile

    names = zipfile.ZipFile(path).namelist()
    assert "manifest.json" in names and "layer_metrics.csv" in names and "session_log.html" in names
    settle(pg)

    # Layer Analysis: attention heatmap, heads, attribution, animations
    go(pg, "Layer Analysis", '[data-testid="stMain"] [data-testid="stTab"]')
    no_exception_box(pg)
    assert "layer_analysis" in pg.url
    assert main.locator('[data-testid="stVegaLiteChart"] svg').count() >= 1
    pg.screenshot(path=str(SHOTS / "02_layer_attention.png"), full_page=True)
    for i, tab in enumerate(["Heads", "Token attribution", "Logit lens", "Animations"], start=3):
        pg.locator('[data-testid="stTab"]', has_text=tab).first.click()
        pg.wait_for_timeout(1200)
        settle(pg)
        no_exception_box(pg)
        if tab == "Heads":
            assert main.locator('[role="tabpanel"]:visible svg').count() >= 2
        if tab == "Animations":
            img = main.locator('[data-testid="stImage"] img:visible')
            img.first.wait_for(timeout=60_000)
            assert img.count() == 2
            assert pg.evaluate("(el) => el.naturalWidth", img.first.element_handle()) > 0
        pg.screenshot(path=str(SHOTS / f"0{i}_layer_{tab.split()[0].lower()}.png"), full_page=True)

    # a head change re-draws without an exception
    pg.locator('[data-testid="stTab"]', has_text="Attention").first.click()
    settle(pg)

    # Details page: the formulas render
    go(pg, "Details", '[data-testid="stMain"] .katex')
    no_exception_box(pg)
    pg.screenshot(path=str(SHOTS / "07_details.png"), full_page=False)

    # back to Overall: the result is still there
    go(pg, "Overall", '[data-testid="stMain"] [data-testid="stMetric"]')
    no_exception_box(pg)

    # nothing of all this asked the internet for anything; the favicon is inlined
    assert len(REQUESTED) > 10, "the request listener saw the page's own requests"
    assert not outside_requests(server), outside_requests(server)
    icon = pg.evaluate("() => document.querySelector(\"link[rel='shortcut icon']\").href")
    assert icon.startswith("data:image/svg+xml"), icon[:80]


def test_offline_banner_in_a_browser(server, page):
    pg = page
    pg.goto(server + "/?model=gpt2")
    settle(pg, '[data-testid="stSidebar"] .st-key-text textarea')
    pg.locator('[data-testid="stSidebar"] .st-key-text textarea').fill("A text that must survive the error.")
    pg.locator('[data-testid="stSidebar"] .st-key-text textarea').blur()
    settle(pg)
    click(pg, '[data-testid="stSidebar"] .st-key-analyze button')
    settle(pg, '[data-testid="stAlertContentError"]', timeout=60_000)
    no_exception_box(pg)
    assert "not available" in pg.locator('[data-testid="stAlertContentError"]').first.inner_text().lower()
    assert (
        pg.locator('[data-testid="stSidebar"] .st-key-text textarea').input_value()
        == "A text that must survive the error."
    )
    pg.screenshot(path=str(SHOTS / "08_offline_banner.png"), full_page=False)
    click(pg, ".st-key-switch_bundled button")
    settle(pg, '[data-testid="stMain"] [data-testid="stMetric"]', timeout=240_000)
    no_exception_box(pg)
    assert (
        pg.locator('[data-testid="stSidebar"] .st-key-text textarea').input_value()
        == "A text that must survive the error."
    )


def teardown_module(module):  # keep the folder even when empty, so CI always has something to upload
    SHOTS.mkdir(parents=True, exist_ok=True)
    _ = shutil  # noqa: F841
