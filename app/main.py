"""Entry point: `streamlit run app/main.py` from the repository root.

Streamlit puts only app/ on sys.path, so the repository root is inserted here first: `core`, `app` and the pages
import from it. The sidebar is drawn here so that it shows on every page; the pages only read the result.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import loading, sidebar  # noqa: E402
from app.state import Keys, init_state, keep_inputs  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

#: The favicon: a local SVG, which Streamlit inlines as a data: URI. A ":material/…" icon would make every browser
#: fetch it from fonts.gstatic.com (Streamlit 1.67's frontend), which fails offline with console errors.
PAGE_ICON = str(ROOT / "assets" / "favicon.svg")

st.set_page_config(
    page_title="Transformer Model Analysis", page_icon=PAGE_ICON, layout="wide", initial_sidebar_state="expanded"
)

PAGES = [
    st.Page("../pages/overall.py", title="Overall", icon=":material/monitoring:", url_path="overall", default=True),
    st.Page("../pages/layer_analysis.py", title="Layer Analysis", icon=":material/stacks:", url_path="layer_analysis"),
    st.Page("../pages/causal.py", title="Causal", icon=":material/science:", url_path="causal"),
    st.Page("../pages/details.py", title="Details", icon=":material/menu_book:", url_path="details"),
    st.Page("../pages/corpus.py", title="Corpus", icon=":material/library_books:", url_path="corpus"),
    st.Page("../pages/compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
]


def main() -> None:
    state = st.session_state
    init_state(state)
    keep_inputs(state)  # the pages' inputs survive a visit to another page
    if not state[Keys.URL_READ]:  # a shared link opens with its model (once per session)
        sidebar.url_to_state(st.query_params, state)
        state[Keys.URL_READ] = True

    page = st.navigation(PAGES, position="sidebar")
    target = sidebar.url_page(PAGES, state)  # ?page=compare of a shared link, once
    if target is not None and target is not page:
        st.switch_page(target)
    analyse = sidebar.draw()
    if state.get(Keys.PENDING_ANALYSIS):
        state[Keys.PENDING_ANALYSIS] = None
        analyse = True
    if analyse:
        sidebar.run_analysis()
    else:  # an analysis started before the user left the page: follow it here (or store its result)
        sidebar.follow_analysis()
    loading.collect_views()  # views finished in the background while no page followed them
    sidebar.draw_result_footer()

    model_id = sidebar.selected_model_id(state)  # the URL keeps the model (the page is in the path)
    if model_id and st.query_params.get("model") != model_id:
        st.query_params["model"] = model_id

    sidebar.draw_error_banner()
    page.run()


main()
