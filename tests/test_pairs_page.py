"""AppTest of the Causal page's pair data set tab (app/pairs_widgets.py): pasted pairs run on the button, the
result shows exact beside AtP with their correlation, widget changes after the run never run the model, and bad
input is a message, not a traceback."""

from __future__ import annotations

import pytest
from test_causal_page import ForwardCounter, causal_page
from test_pairs import hidden_pairs

from app.pairs_widgets import PairKeys


def _paste(at, text: str, fmt: str = "csv"):
    at.radio(key=PairKeys.PASTE_FORMAT).set_value(fmt)
    at.text_area(key=PairKeys.PASTE).input(text)
    at.run()
    at.button(key=PairKeys.RUN).click().run()
    assert not at.exception, [e.message for e in at.exception]
    return at


@pytest.fixture(scope="module")
def pasted(tiny_gpt2):
    pairs = hidden_pairs(tiny_gpt2.tokenizer, 3, seed=99)
    return "clean,corrupt\n" + "".join(f"{p.clean},{p.corrupt}\n" for p in pairs)


def test_pairs_tab_runs_on_the_button_and_redraws_without_the_model(tiny_dirs, pasted):
    at = causal_page(tiny_dirs["gpt2"])
    with ForwardCounter() as fc:
        _paste(at, pasted)
    assert fc.calls > 0
    res = at.session_state[PairKeys.RESULT]
    assert res is not None and len(res.pairs) == 3 and not at.session_state[PairKeys.ERROR]
    assert any(m.label == "Exact vs AtP r" for m in at.metric)
    assert len(at.get("vega_lite_chart")) >= 2  # exact | AtP side by side, and their scatter
    assert any("Details: Attribution patching" in e.label for e in at.expander)
    with ForwardCounter() as fc:
        at.radio(key=PairKeys.COMPONENT).set_value("mlp").run()
        at.radio(key=PairKeys.MODE).set_value("atp").run()
    assert not at.exception and fc.calls == 0
    assert at.session_state[PairKeys.RESULT] is res


def test_pairs_tab_bad_input_is_a_message(tiny_dirs, pasted):
    at = causal_page(tiny_dirs["gpt2"])
    _paste(at, pasted.replace("clean,corrupt", "a,b"))
    assert "no column 'clean'" in at.session_state[PairKeys.ERROR]
    assert any("no column 'clean'" in t.value for t in at.text)
    _paste(at, pasted + "The dog sat,The dog sat\n")
    assert "different token lengths" in at.session_state[PairKeys.ERROR]
