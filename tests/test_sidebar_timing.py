"""AppTest: the sidebar's timing line of an analysis ("Model loaded in … (first time only) · computed in …") stays
after the sidebar redraws itself. A model whose family the app did not know before the run (a local folder, a hub
id typed in) makes the sidebar redraw at once (st.rerun, for the mask-word picker); the line used to vanish there."""

from __future__ import annotations

from test_app_pages import analyse_with, make_app, no_exception

from app.state import Keys


def _timing_lines(at) -> list[str]:
    return [c.value for c in at.sidebar.caption if "computed in" in c.value.lower() or "from cache" in c.value.lower()]


def test_a_folder_model_keeps_its_timing_line_after_the_redraw(tiny_dirs):
    folder = str(tiny_dirs["gpt2"])  # tests/tiny_models.build_tiny: a complete model folder
    at = analyse_with(make_app(compute_gradients=False, integrated_gradients=False), folder, "A folder model.")
    no_exception(at)
    assert at.session_state[Keys.RESULT] is not None
    lines = _timing_lines(at)
    # the line below the progress (capitalised) and the footer's "Last analysis: … · computed in …"
    assert any(line.startswith(("Model loaded in", "Computed in", "From cache")) for line in lines), lines
    assert Keys.TIMING_AFTER_RERUN not in at.session_state or not at.session_state[Keys.TIMING_AFTER_RERUN]
    at.run()  # the next interaction: the line was shown once, as for a preset
    assert not any(line.startswith(("Model loaded in", "Computed in", "From cache")) for line in _timing_lines(at))
