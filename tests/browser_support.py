"""Shared pieces of the browser tests: Debian's chromium with the flags that work offline, a real `streamlit run`
server on a free (or given) port, polled on /_stcore/health and stopped by its PID, and the layout check (every
chart, image, HTML block, table and element inside the main column; no sideways scroll; a bounded height) with a
screenshot of the whole page for a person to look at."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
EXCEPTION = '[data-testid="stException"]'
MAIN = '[data-testid="stMainBlockContainer"]'
#: Seconds a stopping server gets after SIGTERM before SIGKILL.
STOP_GRACE_S = 2.0
SHOTS = ROOT / "artifacts" / "screenshots"

#: Measures the main column and everything drawn inside it: charts, images, HTML blocks, tables, and the outer box
#: of every element (a text area, a button row, a metric) — none may reach past the column's content box.
MEASURE = """() => {
  const main = document.querySelector('[data-testid="stMainBlockContainer"]');
  const box = main.getBoundingClientRect();
  const style = getComputedStyle(main);  // the content box: the column without its padding
  const col = {left: box.left + parseFloat(style.paddingLeft), right: box.right - parseFloat(style.paddingRight)};
  col.width = col.right - col.left;
  const visible = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const items = [];
  const sel = '[data-testid="stVegaLiteChart"] svg.marks, [data-testid="stVegaLiteChart"] canvas, '
            + '[data-testid="stImage"] img, [data-testid="stHtml"], [data-testid="stDataFrame"], '
            + '[data-testid="stElementContainer"], [data-testid="stHorizontalBlock"]';
  for (const el of main.querySelectorAll(sel)) {
    if (!visible(el)) continue;
    const r = el.getBoundingClientRect();
    const inner = el.dataset.testid === 'stElementContainer' && el.firstElementChild
      ? (el.firstElementChild.dataset.testid || el.firstElementChild.className) : '';
    items.push({kind: el.tagName.toLowerCase() + ':' + (el.closest('[data-testid]') || el).dataset.testid
                      + (inner ? '>' + inner : ''),
                left: r.left, right: r.right, width: r.width, height: r.height});
  }
  // a table wider than its frame scrolls inside it (not past the column): recorded, so a person can look
  const tablesScrolling = [];
  for (const el of main.querySelectorAll('[data-testid="stDataFrame"]')) {
    const sc = el.querySelector('.dvn-scroller');
    if (visible(el) && sc && sc.scrollWidth > sc.clientWidth + 1) tablesScrolling.push(sc.scrollWidth - sc.clientWidth);
  }
  const drawn = items.filter(i => i.kind.startsWith('svg') || i.kind.startsWith('canvas'));
  return {colLeft: col.left, colRight: col.right, colWidth: col.width, pageHeight: main.scrollHeight,
          docWidth: document.documentElement.scrollWidth, viewport: window.innerWidth,
          charts: drawn.length, items: items, tablesScrolling: tablesScrolling};
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_browser() -> None:
    """Skip the calling test module when chromium or playwright is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to run the browser test")
    pytest.importorskip("playwright.sync_api", reason="playwright (python package) is not installed")


@contextmanager
def streamlit_server(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
    start_timeout: float = 120,
) -> Iterator[tuple[str, Path]]:
    """Run app/main.py offline with its own result cache and runs folder; yields (url, server log path)."""
    port = port or free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TMA_CACHE_DIR=str(tmp_path_factory.mktemp(f"{name}-cache")),
        TMA_RUNS_DIR=str(tmp_path_factory.mktemp(f"{name}-runs")),
        TOKENIZERS_PARALLELISM="false",
    )
    log_path = tmp_path_factory.mktemp(f"{name}-server") / "streamlit.log"
    args = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app/main.py",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        *extra_args,
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + start_timeout
            while True:
                try:
                    with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("the streamlit server did not start:\n" + log_path.read_text()[-3000:])
                time.sleep(0.5)
            yield url, log_path
        finally:
            # A graceful stop takes 5–20 s on a busy machine (Streamlit's shutdown, then the interpreter's): the
            # server keeps nothing worth saving, so it gets STOP_GRACE_S seconds, then SIGKILL.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


#: (server url, model id) pairs that some session has analysed: the first analysis of a model on a server loads it.
LOADED: set[tuple[str, str]] = set()


def check_timing_line(pg, url: str, model: str) -> None:
    """The sidebar's timing line after an analysis: the first analysis of `model` on the server at `url` names the
    model load as its own step ("loaded in 8.1 s (first time only) … computed in 1.8 s"), later ones one time only;
    the footer repeats the last analysis. The browser test modules share one server (conftest's app_server), so
    the registry is shared too."""
    status = pg.locator(
        '[data-testid="stSidebar"] [data-testid="stCaptionContainer"]', has_text="computed in", has_not_text="Last"
    ).first
    label = status.inner_text()
    first = (url, model) not in LOADED
    LOADED.add((url, model))
    assert ("first time only" in label) == first, label
    assert len(re.findall(r"\d\.\d s\b", label)) == (2 if first else 1), label
    footer = pg.locator('[data-testid="stSidebar"]').inner_text()
    assert "Last analysis:" in footer and "computed in" in footer


def settle(pg, content: str | None = None, timeout: float = 180_000) -> None:
    """Wait until the expected content is there and the script has finished its run (charts draw just after)."""
    if content:
        pg.wait_for_selector(content, timeout=timeout, state="attached")
    pg.wait_for_selector(IDLE, timeout=timeout)
    pg.wait_for_timeout(700)
    pg.wait_for_selector(IDLE, timeout=timeout)


def no_exception_box(pg, where: str = "") -> None:
    boxes = pg.locator(EXCEPTION)
    assert boxes.count() == 0, f"{where}: " + boxes.first.inner_text()


def check_layout(pg, shots: Path, name: str, bound: int, measured: dict[str, dict] | None = None) -> dict:
    """No exception box; a screenshot of the whole main column (`shots`/`name`.png); then, at the page's own
    viewport, every measured item inside the column, no sideways scroll and a page no taller than `bound` px.
    Returns the measurement; with `measured`, also records it there and in `shots`/measurements.json."""
    no_exception_box(pg, name)
    pg.mouse.move(0, 0)  # no tooltip of the last clicked button in the picture
    m = pg.evaluate(MEASURE)
    # The app scrolls inside its main area, so a "full page" screenshot is one viewport: grow the viewport to the
    # content for the picture (bounded), then measure again at the original size.
    size = pg.viewport_size
    shots.mkdir(parents=True, exist_ok=True)
    pg.set_viewport_size({"width": size["width"], "height": int(min(m["pageHeight"] + 150, 12_000))})
    pg.wait_for_timeout(300)
    pg.screenshot(path=str(shots / f"{name}.png"))
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
    if measured is not None:
        measured[name] = {
            "column_px": round(m["colWidth"]),
            "page_height_px": m["pageHeight"],
            "widest_item_px": round(max((i["width"] for i in m["items"]), default=0)),
            "charts": m["charts"],
            "tables_scrolling_sideways_px": [round(w) for w in m["tablesScrolling"]],
        }
        (shots / "measurements.json").write_text(json.dumps(measured, indent=1))
    return m
