"""The whole app in a real browser: a `streamlit run` server and headless Chromium driven by playwright.

Analyse with the bundled MiniLM, visit every page, see the charts (SVG) and the images, no exception box anywhere.
Then the sweep over the six pages after a run (one server, one browser page per model): on MiniLM, a Corpus run and
a Compare run each survive a visit to Overall in the middle of the run (inputs, progress, result); on a tiny local
GPT-2 folder (a causal LM, so the Causal page applies) every page after its run — patching with its download, head
ablation drawn after its button, a corpus run, a comparison with its download. Each page is measured at 1 280 and
1 920 px (nothing outside the main column, no sideways scroll). Screenshots go to artifacts/screenshots/ (sweep/
for the sweep; CI keeps the folder). Needs /usr/bin/chromium (never `playwright install`).
"""

from __future__ import annotations

import shutil
import urllib.parse
from pathlib import Path

import pytest
from browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    MAIN,
    check_layout,
    check_timing_line,
    no_exception_box,
    settle,
)

from core.infra.presets import BUNDLED_ID

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
#: Every URL the module's page asked for (see outside_requests).
REQUESTED: list[str] = []


@pytest.fixture(scope="module")
def server(app_server):
    return app_server[0]


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    shutil.rmtree(SWEEP, ignore_errors=True)  # no picture of an earlier run left beside this run's
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser):
    """The MiniLM session: analysed by the first test, used by the next ones."""
    pg = browser.new_page(viewport={"width": WIDTHS[0], "height": HEIGHT})
    pg.set_default_timeout(60_000)
    pg.on("request", lambda r: REQUESTED.append(r.url))
    yield pg
    pg.close()


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


# ----------------------------------------------------------------------------------------------------------------
# The sweep: every page after a run, at two widths; runs that survive navigation

SWEEP = SHOTS / "sweep"
WIDTHS = (1280, 1920)
HEIGHT = 900
#: No page may be taller than this (px): the long Details tabs are text, Compare and Corpus stay well below it.
MAX_PAGE_PX = 6000
#: Pages and tabs with charts only (Overall, the Layer Analysis tabs, Causal) stay well below that.
MAX_CHART_PAGE_PX = 4000
METRIC = f'{MAIN} [data-testid="stMetric"]'
PROGRESS = f'{MAIN} [data-testid="stProgress"]'
CORPUS_DONE = f"{MAIN} .st-key-corpus_download button"
CMP_DONE = f"{MAIN} .st-key-cmp_download button"
#: Ten base texts for the corpus runs.
BASE_LINES = (
    "The cat sat on the mat near the red door.",
    "Paris is the capital of France and a large city.",
    "Rivers flow into the sea after heavy rain.",
    "A small bird sang in the morning light.",
    "The quick brown fox jumps over the lazy dog.",
    "Transformers read tokens in layers of attention.",
    "The old library keeps its books in long rows.",
    "Snow covered the hills before the first week of winter.",
    "She wrote the numbers into a report for later.",
    "The train left the station at nine in the evening.",
)
# forty texts (each base line and three numbered variants): long enough a run that the page is left while it goes on
# (ten texts finished before the progress bar was seen in one two-process CI run)
CORPUS_LINES = "\n".join([*BASE_LINES, *(f"{line[:-1]}, part {k}." for k in (2, 3, 4) for line in BASE_LINES)])
N_CORPUS = len(CORPUS_LINES.splitlines())
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
#: The Layer Analysis tabs whose content a causal LM changes (MiniLM, an encoder, has no logit lens or logit
#: attribution; the causal mask and a 2-block flow graph look different): the other tabs are MiniLM's, same code.
CAUSAL_LM_TABS = ("Attention", "Logit lens", "Logit attribution", "Flow routes")
DETAIL_TABS = ("Layer metrics", "Attention", "Attribution", "Predictions", "Logit lens", "Visual guide", "Methodology")
#: name -> column width, page height, widest item, charts (written to sweep/measurements.json).
MEASURED: dict[str, dict] = {}


def at_both_widths(pg, name: str, bound: int = MAX_PAGE_PX) -> dict:
    """The page as it is, measured and photographed at 1 280 and at 1 920 px (charts re-lay out on resize), without
    a second visit; returns the 1 280 px measurement."""
    out = {}
    for width in WIDTHS:
        pg.set_viewport_size({"width": width, "height": HEIGHT})
        pg.wait_for_timeout(500)
        settle(pg)
        out[width] = check_layout(pg, SWEEP, f"{name}_{width}", bound, MEASURED)
    pg.set_viewport_size({"width": WIDTHS[0], "height": HEIGHT})
    return out[WIDTHS[0]]


def tab(pg, label: str, content: str | None = None) -> None:
    pg.locator(f'{MAIN} [data-testid="stTab"]', has_text=label).first.click()
    pg.wait_for_timeout(500)
    settle(pg, content)


def analyse(pg, url: str, model: str) -> None:
    """Press Analyze, wait for the result. A preset's timing line is checked; a folder's family is known only after
    its analysis, so the sidebar is drawn again at once and the line is gone: then the footer only."""
    click(pg, '[data-testid="stSidebar"] .st-key-analyze button')
    settle(pg, METRIC, timeout=240_000)
    no_exception_box(pg)
    if model == BUNDLED_ID:
        check_timing_line(pg, url, model)
    else:
        assert "Last analysis:" in pg.locator('[data-testid="stSidebar"]').inner_text()


def paste_corpus(pg) -> None:
    """Corpus page, "Paste lines", the forty texts."""
    go(pg, "Corpus", f"{MAIN} .st-key-corpus_run")
    pg.locator(f"{MAIN} .st-key-corpus_source label", has_text="Paste lines").click()
    settle(pg, f"{MAIN} .st-key-corpus_paste textarea")
    area = pg.locator(f"{MAIN} .st-key-corpus_paste textarea")
    area.fill(CORPUS_LINES)
    area.blur()
    settle(pg)


def corpus_inputs_kept(pg) -> None:
    assert pg.locator(f"{MAIN} .st-key-corpus_source label", has_text="Paste lines").locator("input").is_checked()
    assert pg.locator(f"{MAIN} .st-key-corpus_paste textarea").input_value() == CORPUS_LINES


def corpus_result(pg) -> None:
    settle(pg, CORPUS_DONE, timeout=240_000)
    no_exception_box(pg, "corpus")
    assert f"{N_CORPUS} texts" in pg.locator(f'{MAIN} [data-testid="stAlertContentSuccess"]').first.inner_text()
    assert pg.locator(f'{MAIN} [data-testid="stVegaLiteChart"] svg').count() >= 5


def compare_result(pg) -> None:
    settle(pg, CMP_DONE, timeout=240_000)
    no_exception_box(pg, "compare")
    assert pg.locator(f"{MAIN} .st-key-cmp_download button:visible").first.is_enabled()
    assert pg.locator(f'{MAIN} [data-testid="stVegaLiteChart"] svg').count() >= 3


def leave_and_return(pg, title: str, ready: str, done: str) -> bool:
    """Right after a Run press: to Overall and back to `title` (its `ready` element drawn again). Returns whether
    the run was still going when the page was left (its progress bar shown; `done` is the finished result)."""
    pg.wait_for_selector(f"{PROGRESS}, {done}", timeout=60_000)
    left_mid_run = pg.locator(PROGRESS).count() > 0
    go(pg, "Overall", METRIC)
    pg.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    pg.wait_for_selector(ready, timeout=60_000)
    if pg.locator(PROGRESS).count() > 0:  # still running on return: the progress is shown again
        pg.screenshot(path=str(SWEEP / f"{title.lower()}_running_on_return.png"))
    return left_mid_run


def test_whole_app_in_a_browser(server, page):
    """MiniLM: the hint, an analysis, the export, then every page and tab at 1 280 and 1 920 px."""
    pg = page
    pg.goto(server + "/")
    settle(pg, '[data-testid="stSidebar"] .st-key-analyze button')
    no_exception_box(pg)
    assert "press analyze" in pg.locator('[data-testid="stMain"]').inner_text().lower()  # the hint
    pg.screenshot(path=str(SHOTS / "00_start.png"))

    # analyse with the bundled MiniLM (the default model)
    analyse(pg, server, BUNDLED_ID)
    main = pg.locator('[data-testid="stMain"]')
    assert main.locator("svg").count() >= 7, "the metric charts render as SVG"
    assert "not available" in main.inner_text().lower()  # MiniLM has no LM head: the calm message
    assert "model=" in pg.url and "all-MiniLM" in pg.url  # the URL keeps the model
    m = at_both_widths(pg, "minilm_overall", MAX_CHART_PAGE_PX)
    assert m["charts"] >= 7, "five metric charts, the correlation and the normalised heatmap"

    # the export: the sidebar's download button builds the ZIP on click
    with pg.expect_download(timeout=120_000) as dl:
        click(pg, '[data-testid="stSidebar"] [data-testid="stDownloadButton"] button')
    path = dl.value.path()
    import zipfile

    names = zipfile.ZipFile(path).namelist()
    assert "manifest.json" in names and "layer_metrics.csv" in names and "session_log.html" in names
    settle(pg)

    # Layer Analysis: every tab
    go(pg, "Layer Analysis", f'{MAIN} [data-testid="stTab"]')
    assert "layer_analysis" in pg.url
    assert main.locator('[data-testid="stVegaLiteChart"] svg').count() >= 1
    for t in LAYER_TABS:
        tab(pg, t)
        if t == "Heads":
            assert main.locator('[role="tabpanel"]:visible svg').count() >= 2
        if t == "Animations":
            img = main.locator('[data-testid="stImage"] img:visible')
            img.first.wait_for(timeout=120_000)
            img.nth(1).wait_for(timeout=120_000)
            assert img.count() == 2
            assert pg.evaluate("(el) => el.naturalWidth", img.first.element_handle()) > 0
        at_both_widths(pg, f"minilm_layer_{t.replace(' ', '_').lower()}", MAX_CHART_PAGE_PX)

    # Causal: MiniLM has no LM head — the calm message, no patching inputs
    go(pg, "Causal", f"{MAIN} h1")
    assert "no language-model head" in pg.locator(MAIN).inner_text()
    at_both_widths(pg, "minilm_causal", MAX_CHART_PAGE_PX)

    # Details: the formulas render, every tab (they do not depend on the text)
    go(pg, "Details", f"{MAIN} .katex")
    for t in DETAIL_TABS:
        tab(pg, t)
        at_both_widths(pg, f"details_{t.split()[0].lower()}")

    # back to Overall: the result is still there
    go(pg, "Overall", METRIC)
    no_exception_box(pg)

    # nothing of all this asked the internet for anything; the favicon is inlined
    assert len(REQUESTED) > 10, "the request listener saw the page's own requests"
    assert not outside_requests(server), outside_requests(server)
    icon = pg.evaluate("() => document.querySelector(\"link[rel='shortcut icon']\").href")
    assert icon.startswith("data:image/svg+xml"), icon[:80]


def test_corpus_and_compare_runs_survive_navigation(server, page):
    """MiniLM (analysed by the tests above): a Corpus run left for Overall while it runs and a Compare run left
    right after its press (two analyses: mid-run unless the machine is very fast) come back with their inputs and
    finish there; both pages measured at two widths after the run."""
    pg = page
    pg.set_viewport_size({"width": WIDTHS[0], "height": HEIGHT})
    if not pg.url.startswith(server):  # run on its own (-k): analyse first
        pg.goto(server + "/")
        settle(pg, '[data-testid="stSidebar"] .st-key-analyze button')
        analyse(pg, server, BUNDLED_ID)
    go(pg, "Overall", METRIC)
    paste_corpus(pg)
    click(pg, f"{MAIN} .st-key-corpus_run button")
    # forty texts on MiniLM take seconds: the page is left while the run goes on
    assert leave_and_return(pg, "Corpus", f"{MAIN} .st-key-corpus_paste textarea", CORPUS_DONE)
    corpus_inputs_kept(pg)
    corpus_result(pg)
    corpus_inputs_kept(pg)
    at_both_widths(pg, "minilm_corpus")

    go(pg, "Compare", f"{MAIN} .st-key-cmp_go")
    # two new texts (neither is the sidebar's analysed one), so both runs are computed: the run lasts long enough to
    # be left; whether it is still going when the page is left depends on the machine, so that is not asserted
    texts = [CORPUS_LINES.splitlines()[1], CORPUS_LINES.splitlines()[7]]
    for w, text in zip("ab", texts):
        area = pg.locator(f"{MAIN} .st-key-cmp_text_{w} textarea")
        area.fill(text)
        area.blur()
        settle(pg)
    click(pg, f"{MAIN} .st-key-cmp_go button")
    leave_and_return(pg, "Compare", f"{MAIN} .st-key-cmp_text_b textarea", CMP_DONE)
    assert [pg.locator(f"{MAIN} .st-key-cmp_text_{w} textarea").input_value() for w in "ab"] == texts
    compare_result(pg)
    at_both_widths(pg, "minilm_compare")


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


@pytest.fixture(scope="module")
def tiny_lm(browser, server, tiny_dirs):
    """A second session on the same server, with a tiny random GPT-2 saved to a local folder as its model."""
    ctx = browser.new_context(viewport={"width": WIDTHS[0], "height": HEIGHT})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(server + "/?model=" + urllib.parse.quote(str(tiny_dirs["gpt2"])))
    settle(pg, '[data-testid="stSidebar"] .st-key-analyze button')
    yield pg, server, str(tiny_dirs["gpt2"])
    ctx.close()


def test_six_pages_on_a_tiny_causal_lm(tiny_lm):
    """Every page after its run on a causal LM, at two widths: Overall, the Layer Analysis tabs a causal LM changes,
    Causal (patching and its download, head ablation drawn after its button), Details, Corpus, Compare (and its
    download)."""
    pg, url, folder = tiny_lm
    analyse(pg, url, folder)
    assert "not available" not in pg.locator(MAIN).inner_text().lower()  # a causal LM predicts: no calm message
    at_both_widths(pg, "gpt2_overall", MAX_CHART_PAGE_PX)

    go(pg, "Layer Analysis", f'{MAIN} [data-testid="stTab"]')
    for t in CAUSAL_LM_TABS:
        tab(pg, t)
        at_both_widths(pg, f"gpt2_layer_{t.replace(' ', '_').lower()}", MAX_CHART_PAGE_PX)

    go(pg, "Causal", f"{MAIN} .st-key-patch_run button")
    # the random model predicts the same token after both texts: name two answers (vocabulary tokens)
    for key, token in (("patch_answer", "Ġthe"), ("patch_wrong", "Ġdog")):
        pg.locator(f"{MAIN} .st-key-{key} input").fill(token)
        pg.locator(f"{MAIN} .st-key-{key} input").press("Enter")
        settle(pg)
    click(pg, f"{MAIN} .st-key-patch_run button")
    error = f'{MAIN} [data-testid="stAlertContentError"]'
    settle(pg, f"{MAIN} .st-key-patch_download button, {error}", timeout=120_000)
    assert pg.locator(error).count() == 0, pg.locator(MAIN).inner_text()[-1500:]
    no_exception_box(pg, "patching")
    assert pg.locator(f"{MAIN} .st-key-patch_download button:visible").first.is_enabled()
    assert pg.locator(f'{MAIN} [role="tabpanel"]:visible [data-testid="stVegaLiteChart"] svg').count() >= 2
    at_both_widths(pg, "gpt2_causal_patching")
    tab(pg, "Pair data set")
    at_both_widths(pg, "gpt2_causal_pairs")
    tab(pg, "Head ablation", f"{MAIN} .st-key-head_ablation_go button")
    click(pg, f"{MAIN} .st-key-head_ablation_go button")  # the same text analysed again, with head ablation
    pg.wait_for_timeout(500)
    settle(pg)
    tab(pg, "Head ablation")
    figure = pg.locator(f'{MAIN} [role="tabpanel"]:visible [data-testid="stVegaLiteChart"]', has_text="Mean ablation")
    figure.locator("svg").first.wait_for(timeout=120_000)
    assert figure.count() == 1
    assert pg.locator(f"{MAIN} .st-key-head_ablation_go button:visible").count() == 0
    at_both_widths(pg, "gpt2_causal_head_ablation")

    go(pg, "Details", f"{MAIN} .katex")
    at_both_widths(pg, "gpt2_details")

    paste_corpus(pg)
    click(pg, f"{MAIN} .st-key-corpus_run button")
    corpus_result(pg)
    at_both_widths(pg, "gpt2_corpus")

    go(pg, "Compare", f"{MAIN} .st-key-cmp_go")
    click(pg, f"{MAIN} .st-key-cmp_go button")
    compare_result(pg)
    at_both_widths(pg, "gpt2_compare")


def teardown_module(module):  # keep the folder even when empty, so CI always has something to upload
    SHOTS.mkdir(parents=True, exist_ok=True)
