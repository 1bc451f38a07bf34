"""The app asks nothing of the internet: a real `streamlit run` server and headless Chromium load every page (no
analysis needed) and every request the page makes goes to the server itself. The favicon was the one that left
(a ":material/…" page icon makes Streamlit's frontend fetch an SVG from fonts.gstatic.com; offline: console errors).
Needs /usr/bin/chromium (never `playwright install`)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, IDLE, need_browser, streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAGES = ("", "layer_analysis", "causal", "corpus", "compare", "details")


def test_no_request_leaves_the_server(tmp_path_factory):
    need_browser()
    from playwright.sync_api import sync_playwright

    with streamlit_server(tmp_path_factory, "offline") as (url, _log), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            pg.set_default_timeout(60_000)
            requests: list[str] = []
            pg.on("request", lambda r: requests.append(r.url))
            server = urlsplit(url).netloc
            for name in PAGES:
                pg.goto(f"{url}/{name}")
                pg.wait_for_selector('[data-testid="stMain"] h1', state="attached")
                pg.wait_for_selector(IDLE)
                pg.wait_for_timeout(500)
            icon = pg.evaluate("() => document.querySelector(\"link[rel='shortcut icon']\").href")
        finally:
            browser.close()
    outside = sorted(
        {u for u in requests if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).netloc != server}
    )
    assert not outside, f"requests to other hosts: {outside}"
    assert len(requests) > 10  # the listener saw the page's own requests
    assert icon.startswith("data:image/svg+xml"), icon[:80]
