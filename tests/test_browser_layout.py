"""The layout in a real browser: every page and tab at 1 280 and 1 920 px wide, for a 13-token and a 512-token text
analysed with the bundled MiniLM (512 positions).

Asserted from the DOM: no chart, image or HTML block reaches past the main column, the page never scrolls sideways,
and no page or tab is taller than a bound. Screenshots go to artifacts/screenshots/layout/ (CI keeps the folder) so
a person can look at them. Needs /usr/bin/chromium (Debian's package; never `playwright install`).

Run time: two analyses (the long one dominates) and ~30 page views; $TMA_BROWSER_PORT picks the server port.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from browser_support import CHROMIUM, CHROMIUM_ARGS, IDLE, need_browser, streamlit_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots" / "layout"
MAIN = '[data-testid="stMainBlockContainer"]'
WIDTHS = (1280, 1920)
HEIGHT = 900
SHORT_TEXT = "The cat sat on the mat near the red door."  # 13 tokens with [CLS] and [SEP]
LONG_TEXT = " ".join(
    [
        (
            "The researchers measured how each layer of the model spreads its tokens over many "
            "directions, and they wrote every number into a report for later comparison."
        )
    ]
    * 20
)
#: No page or tab may be taller than this (px). The long Details tabs are text; everything else is far below.
MAX_PAGE_PX = 6000
#: Tabs with charts only (Overall, the Layer Analysis tabs) stay well below it, whatever the text length.
MAX_CHART_PAGE_PX = 4000

#: Measures the main column and everything drawn inside it (charts, images, HTML blocks, tables).
MEASURE = """() => {
  const main = document.querySelector('[data-testid="stMainBlockContainer"]');
  const box = main.getBoundingClientRect();
  const style = getComputedStyle(main);  // the content box: the column without its padding
  const col = {left: box.left + parseFloat(style.paddingLeft), right: box.right - parseFloat(style.paddingRight)};
  col.width = col.right - col.left;
  const visible = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const items = [];
  const sel = '[data-testid="stVegaLiteChart"] svg.marks, [data-testid="stVegaLiteChart"] canvas, '
            + '[data-testid="stImage"] img, [data-testid="stHtml"], [data-testid="stDataFrame"]';
  for (const el of main.querySelectorAll(sel)) {
    if (!visible(el)) continue;
    const r = el.getBoundingClientRect();
    items.push({kind: el.tagName.toLowerCase() + ':' + (el.closest('[data-testid]') || el).dataset.testid,
                left: r.left, right: r.right, width: r.width, height: r.height});
  }
  return {colLeft: col.left, colRight: col.right, colWidth: col.width, pageHeight: main.scrollHeight,
          docWidth: document.documentElement.scrollWidth, viewport: window.innerWidth,
          charts: items.filter(i => i.kind.startsWith('svg') || i.kind.startsWith('canvas')).length,
          items: items};
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    port = int(os.environ.get("TMA_BROWSER_PORT") or 0) or None
    with streamlit_server(tmp_path_factory, "layout", port, ("--server.fileWatcherType", "none")) as (url, _log):
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def settle(pg, content: str | None = None, timeout: float = 180_000) -> None:
    if content:
        pg.wait_for_selector(content, timeout=timeout, state="attached")
    pg.wait_for_selector(IDLE, timeout=timeout)
    pg.wait_for_timeout(700)  # charts finish drawing after the script run
    pg.wait_for_selector(IDLE, timeout=timeout)


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
    # one timing per analysis; the first analysis of the server loads the model as its own, named step
    # the job's timing line under the Analyze button (the "Last analysis" line repeats the analysis time only)
    status = pg.locator(
        '[data-testid="stSidebar"] [data-testid="stCaptionContainer"]', has_text="computed in", has_not_text="Last"
    ).first
    label = status.inner_text()
    first = not ANALYSED
    ANALYSED.append(text)
    assert ("first time only" in label) == first, label
    assert len(re.findall(r"\d\.\d s\b", label)) == (2 if first else 1), label  # "…loaded in 8.1 s … in 1.8 s"
    footer = pg.locator('[data-testid="stSidebar"]').inner_text()
    assert "Last analysis:" in footer and "computed in" in footer


#: Texts analysed on this module's server so far (the first one loads the model).
ANALYSED: list[str] = []
#: name -> the measured column width, page height and widest item (written next to the screenshots).
MEASURED: dict[str, dict] = {}


def check(pg, name: str, bound: int) -> dict:
    """Screenshot, then the DOM assertions: inside the column, no sideways scroll, bounded height."""
    assert pg.locator('[data-testid="stException"]').count() == 0, name
    m = pg.evaluate(MEASURE)
    # The app scrolls inside its main area, so a "full page" screenshot is one viewport: grow the viewport to the
    # content for the picture (bounded), then measure again at the original size.
    size = pg.viewport_size
    pg.set_viewport_size({"width": size["width"], "height": int(min(m["pageHeight"] + 150, 12_000))})
    pg.wait_for_timeout(300)
    pg.screenshot(path=str(SHOTS / f"{name}.png"))
    pg.set_viewport_size(size)
    pg.wait_for_timeout(300)
    m = pg.evaluate(MEASURE)
    assert m["docWidth"] <= m["viewport"] + 1, f"{name}: the page scrolls sideways ({m['docWidth']} px)"
    for it in m["items"]:
        assert it["left"] >= m["colLeft"] - 1 and it["right"] <= m["colRight"] + 1, (
            f"{name}: {it['kind']} spans {it['left']:.0f}–{it['right']:.0f} px, the main column "
            f"{m['colLeft']:.0f}–{m['colRight']:.0f} px"
        )
    assert m["pageHeight"] <= bound, f"{name}: the page is {m['pageHeight']} px tall (bound {bound})"
    MEASURED[name] = {
        "column_px": round(m["colWidth"]),
        "page_height_px": m["pageHeight"],
        "widest_item_px": round(max((i["width"] for i in m["items"]), default=0)),
        "charts": m["charts"],
    }
    (SHOTS / "measurements.json").write_text(json.dumps(MEASURED, indent=1))
    return m


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
DETAIL_TABS = ("Layer metrics", "Attention", "Attribution", "Predictions", "Logit lens", "Visual guide", "Methodology")


@pytest.mark.parametrize("label,text,steps,n_tokens", [("13tok", SHORT_TEXT, 0, 13), ("512tok", LONG_TEXT, 2, 512)])
def test_layout_at_two_widths(server, browser, label, text, steps, n_tokens):
    pg = browser.new_page(viewport={"width": WIDTHS[0], "height": HEIGHT})
    pg.set_default_timeout(90_000)
    try:
        analyse(pg, server, text, steps)
        header = pg.locator(f"{MAIN} [data-testid='stCaptionContainer']").first.inner_text()
        assert f"{n_tokens} tokens" in header, header
        for width in WIDTHS:
            pg.set_viewport_size({"width": width, "height": HEIGHT})
            go(pg, "Overall", f'{MAIN} [data-testid="stMetric"]')
            m = check(pg, f"{label}_{width}_overall", MAX_CHART_PAGE_PX)
            assert m["charts"] >= 7, "five metric charts, the correlation and the normalised heatmap"

            go(pg, "Layer Analysis", f'{MAIN} [data-testid="stTab"]')
            for t in LAYER_TABS:
                tab(pg, t)
                if t == "Animations":
                    pg.locator(f'{MAIN} [data-testid="stImage"] img:visible').first.wait_for(timeout=180_000)
                if t == "Attention" and n_tokens > 128:  # a head picked: the single-head view must stay bounded
                    pg.locator(f"{MAIN} .st-key-head").click()
                    pg.locator('[role="option"]', has_text="head 3").first.click()
                    settle(pg, f'{MAIN} [data-testid="stMetric"]')
                check(pg, f"{label}_{width}_layer_{t.replace(' ', '_').lower()}", MAX_CHART_PAGE_PX)

            go(pg, "Causal", f"{MAIN} h1")
            check(pg, f"{label}_{width}_causal", MAX_CHART_PAGE_PX)

            if n_tokens == 13:  # the Details page does not depend on the text: once per width is enough
                go(pg, "Details", f"{MAIN} .katex")
                for t in DETAIL_TABS:
                    tab(pg, t)
                    check(pg, f"details_{width}_{t.split()[0].lower()}", MAX_PAGE_PX)
    finally:
        pg.close()
