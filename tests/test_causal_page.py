"""AppTest of the Causal page: run activation patching from the page, redraw without running the model (global
forward-hook counter), the tiny-difference warning, unequal lengths, and the head-ablation tab."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.state import OTHER_MODEL, Keys

ROOT = Path(__file__).resolve().parents[1]
MAIN = str(ROOT / "app" / "main.py")
CAUSAL = "../pages/causal.py"
CLEAN, CORRUPT = "The dog sat on the log", "The log sat on the dog"


class ForwardCounter:
    """Counts every torch module call in the process (any model run makes it positive)."""

    def __init__(self) -> None:
        self.calls = 0

    def __enter__(self) -> ForwardCounter:  # noqa: PYI034
        from torch.nn.modules.module import register_module_forward_pre_hook

        def hook(_module, _args):
            self.calls += 1

        self._handle = register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def causal_page(model_dir, result=None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state[Keys.MODEL_CHOICE] = OTHER_MODEL
    at.session_state[Keys.MODEL_CUSTOM] = str(model_dir)
    if result is not None:
        at.session_state[Keys.RESULT] = result
    at.run()
    at.switch_page(CAUSAL).run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def _run_patching(at, clean, corrupt, answer="", wrong=""):
    at.text_area(key=Keys.PATCH_CLEAN).input(clean)
    at.text_area(key=Keys.PATCH_CORRUPT).input(corrupt)
    at.text_input(key=Keys.PATCH_ANSWER).input(answer)
    at.text_input(key=Keys.PATCH_WRONG).input(wrong)
    at.run()
    at.button(key=Keys.PATCH_RUN).click().run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_run_then_widgets_never_run_the_model(tiny_dirs):
    at = causal_page(tiny_dirs["gpt2"])
    assert at.title[0].value == "Causal evidence"
    with ForwardCounter() as fc:
        at.text_area(key=Keys.PATCH_CLEAN).input(CLEAN)
        at.text_area(key=Keys.PATCH_CORRUPT).input(CORRUPT)
        at.run()
    assert fc.calls == 0  # typing shows live token counts, no model run
    assert any(c.value == "7 tokens" for c in at.caption)
    with ForwardCounter() as fc:
        _run_patching(at, CLEAN, CORRUPT)
    assert fc.calls > 0
    res = at.session_state[Keys.PATCH_RESULT]
    assert res is not None and res.n_tokens == 7 and not at.session_state[Keys.PATCH_ERROR]
    assert len(at.get("vega_lite_chart")) >= 2  # heatmap + component bars
    assert any("Details: Activation patching" in e.label for e in at.expander)
    # the answers read as in every other table (␣dog, not 'Ġdog'); the caption has no nested brackets
    from core.present.tables import readable_token

    shown = [m.value for m in at.metric][:2]
    assert shown == [readable_token(res.answer_token), readable_token(res.wrong_token)]
    assert not any("Ġ" in v or "'" in v for v in shown)
    line = next(c.value for c in at.caption if "m_clean =" in c.value.replace("\\", ""))
    assert "position 6: last token" in line.replace("\\", "") and "))" not in line.replace("\\", "")
    with ForwardCounter() as fc:
        at.radio(key=Keys.PATCH_COMPONENT).set_value("mlp").run()
        at.radio(key=Keys.PATCH_COMPONENT).set_value("attention").run()
        at.text_area(key=Keys.PATCH_CLEAN).input("The cat sat").run()  # edited, not run
    assert not at.exception
    assert fc.calls == 0, f"{fc.calls} module calls on widget changes"
    assert at.session_state[Keys.PATCH_RESULT] is res
    # the same run again comes from the patching cache: no model call
    with ForwardCounter() as fc:
        _run_patching(at, CLEAN, CORRUPT)
    assert at.session_state[Keys.PATCH_RESULT].cache_hit and fc.calls == 0


def test_unequal_lengths_and_same_answers_are_explained(tiny_dirs):
    at = causal_page(tiny_dirs["gpt2"])
    _run_patching(at, "The cat sat on the mat", "The dog sat on the log")
    assert any("different token lengths" in w.value for w in at.warning)
    assert "clean 9 tokens" in at.session_state[Keys.PATCH_ERROR]
    assert any("clean 9 tokens" in t.value for t in at.text)  # shown as plain text, never Markdown
    _run_patching(at, CLEAN, CORRUPT, answer=" dog", wrong=" dog")
    assert "another pair" in at.session_state[Keys.PATCH_ERROR]


def test_tiny_difference_warning(tiny_dirs):
    """The unscaled tiny BERT barely reacts to its input: |m_clean − m_corrupted| ~ 1e-3."""
    at = causal_page(tiny_dirs["bert"])
    _run_patching(at, "The dog sat on the [MASK].", "A bird flew over the [MASK].", answer="test", wrong="##ran")
    res = at.session_state[Keys.PATCH_RESULT]
    assert res is not None and res.tiny_difference
    assert any("is tiny" in w.value for w in at.warning)


def test_encoder_is_told_to_pick_an_lm(tiny_dirs):
    at = causal_page(tiny_dirs["bert-encoder"])
    assert any("no language-model head" in i.value for i in at.info)


@pytest.fixture(scope="module")
def ablated(tiny_gpt2):
    from core.analysis.pipeline import analyze

    return analyze(tiny_gpt2, "The dog sat on the log", head_ablation=True, views="all")


def test_head_ablation_tab(tiny_dirs, ablated):
    assert ablated.head_ablation is not None
    with ForwardCounter() as fc:
        at = causal_page(tiny_dirs["gpt2"], result=ablated)
    assert fc.calls == 0
    assert any("Spearman" in c.value for c in at.caption)
    assert len(at.get("vega_lite_chart")) >= 2
    import json

    from app.causal_widgets import SCATTER_MIN_HEIGHT

    scatter = next(
        json.loads(c.proto.spec)
        for c in at.get("vega_lite_chart")
        if "zero-ablation drop" in c.proto.spec and '"circle"' in c.proto.spec
    )
    assert scatter["height"] >= SCATTER_MIN_HEIGHT  # never squeezed onto a line in a half-width column
    assert scatter["title"]["text"] == "Gradient score vs exact zero ablation"
    assert scatter["encoding"]["x"]["axis"]["labelFlush"] is True  # the last x label stays inside the chart


def test_head_ablation_tab_without_section(tiny_dirs, tiny_gpt2):
    from core.analysis.pipeline import analyze

    at = causal_page(tiny_dirs["gpt2"], result=analyze(tiny_gpt2, "The dog sat on the log"))
    assert any("Head ablation" in i.value for i in at.info)
