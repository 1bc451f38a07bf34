"""The shape of the code base, checked: no import cycles in core/, no module loaded by name, no pyplot, figures
that can be drawn from several threads at once, one preset table (the README's agrees), settings that drive the
CLI and the sidebar defaults."""

from __future__ import annotations

import ast
import concurrent.futures as cf
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core"


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (imports for annotations only never run)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
                continue
            todo.append(child)
    return out


def _core_imports(path: Path) -> set[str]:
    """Modules of core/ that `path` imports when it runs (top level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                if node.module:
                    out.add(node.module.split(".")[0])
                else:
                    out |= {a.name for a in node.names}
            elif node.level == 0 and node.module and node.module.split(".")[0] == "core":
                parts = node.module.split(".")
                if len(parts) > 1:
                    out.add(parts[1])
                else:
                    out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("core.")}
    modules = {p.stem for p in CORE.glob("*.py")}
    return (out & modules) - {path.stem}


def import_graph() -> dict[str, set[str]]:
    return {p.stem: _core_imports(p) for p in CORE.glob("*.py") if p.stem != "__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if m == "__init__":
                continue
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_core_has_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_no_module_is_loaded_by_name_and_nothing_uses_pyplot():
    for folder in ("core", "app", "pages"):
        for path in (ROOT / folder).glob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "import_module" not in text, f"{path.name} loads a module by name"
            assert not re.search(r"matplotlib\.pyplot|from matplotlib import pyplot", text), f"{path.name} uses pyplot"


def _figure_makers(result):
    from core import animations, figures, peer_plots
    from core import attention_plots as ap
    from core import prediction_plots as pp
    from core.plotting import png

    makers = {name: (lambda fn=fn: fn(result)) for name, fn in figures.FIGURES.items()}
    makers.update(
        {
            "entropy": lambda: ap.entropy_heatmap(result),
            "clusters": lambda: ap.head_clusters_plot(result),
            "mean_attention": lambda: ap.mean_attention_heatmap(result, -1),
            "single_head": lambda: ap.single_head_plot(result, 0, 1),
            "token_attribution": lambda: ap.token_attribution_plot(result),
            "head_attribution": lambda: ap.head_attribution_heatmap(result),
            "lens": lambda: pp.logit_lens_heatmap_png(result.logit_lens, result.display_tokens),
            "lens_layers": lambda: pp.logit_lens_layers_png(result.logit_lens),
            "predictions": lambda: pp.predictions_png(result.predictions, result.display_tokens),
            "dla": lambda: png(peer_plots.dla_figure(result.dla), tight=True),
            "flow": lambda: png(peer_plots.flow_figure(result.flow), tight=True),
            "gif_attention": lambda: animations.attention_layers_gif(result),
            "gif_tokens": lambda: animations.token_trajectories_gif(result),
        }
    )
    return makers


@pytest.mark.slow
def test_every_figure_drawn_from_four_threads_equals_a_single_threaded_drawing(tiny_gpt2):
    from core.analysis import analyze

    result = analyze(tiny_gpt2, "The quick brown fox jumps over the lazy dog.", views="all")
    makers = _figure_makers(result)
    single = {name: make() for name, make in makers.items()}
    jobs = [name for name in makers for _ in range(4)]
    with cf.ThreadPoolExecutor(max_workers=4) as pool:
        drawn = list(pool.map(lambda name: (name, makers[name]()), jobs))
    for name, data in drawn:
        assert data == single[name], f"{name} differs when drawn from several threads"


def test_the_readme_model_table_is_the_preset_table():
    from core.presets import PRESETS

    families = {"encoder": "encoder", "masked_lm": "masked LM", "causal_lm": "causal LM"}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    readme = readme[readme.index("## Models") :]
    readme = readme[: readme.index("\n## ", 3)]  # the Models section only
    rows = {
        m.group(1): [c.strip() for c in m.group(2).split("|")]
        for m in re.finditer(r"^\| `([^`]+)` \|(.*)\|$", readme, flags=re.M)
    }
    for p in PRESETS:
        assert p.id in rows, f"{p.id} is missing from the README's model table"
        family, parameters, offline = rows[p.id][:3]
        assert family == families[p.family] and parameters == p.parameters, p.id
        assert offline.startswith("**yes**") == p.offline, p.id


def test_every_setting_is_a_cli_option_and_a_sidebar_default(capsys):
    from app.state import DEFAULTS, Keys
    from core.cli import build_parser
    from core.settings import AnalysisSettings, setting_fields

    with pytest.raises(SystemExit):
        build_parser().parse_args(["analyze", "--help"])
    help_text = capsys.readouterr().out
    for f in setting_fields():
        flag = f.metadata.get("cli") or ("--no-" if f.default is True else "--") + f.name.replace("_", "-")
        assert flag in help_text, f"setting {f.name} has no CLI option {flag}"
    sidebar = {
        Keys.MAX_TOKENS: "max_tokens",
        Keys.COMPUTE_GRADIENTS: "compute_gradients",
        Keys.IG_STEPS: "ig_steps",
        Keys.EXCLUDE_SPECIAL: "exclude_special_tokens",
    }
    for key, name in sidebar.items():
        assert DEFAULTS[key] == AnalysisSettings.default(name)


def test_cli_options_build_the_same_settings():
    from core.cli import build_parser
    from core.cli_common import settings_from_args
    from core.settings import AnalysisSettings

    args = build_parser().parse_args(
        [
            "analyze",
            "--model",
            "m",
            "--text",
            "t",
            "--out",
            "o.zip",
            "--top-k",
            "3",
            "--no-gradients",
            "--lens-full-grid",
            "--max-tokens",
            "64",
        ]
    )
    assert settings_from_args(args) == AnalysisSettings(
        top_k=3, compute_gradients=False, lens_full_grid=True, max_tokens=64
    )
    assert (
        settings_from_args(build_parser().parse_args(["analyze", "--model", "m", "--text", "t", "--out", "o"]))
        == AnalysisSettings()
    )


def test_a_failing_optional_view_costs_that_view_not_the_analysis(tiny_gpt2, monkeypatch):
    from core import analysis

    def broken(ctx):
        raise RuntimeError("Tensor on device meta is not on the expected device cpu")

    monkeypatch.setitem(analysis.VIEWS, "dla", ("Direct logit attribution", broken))
    r = analysis.analyze(tiny_gpt2, "The cat sat on the mat.", compute_gradients=False, views="all")
    assert r.dla is None and r.attention is not None and r.logit_lens is not None and r.flow is not None
    assert "dla" in r.views  # computed (and failed): add_views does not try it again
    assert any("Direct logit attribution could not be computed" in w and "meta" in w for w in r.warnings)


def test_tight_png_from_one_draw_matches_savefig_tight():
    """plotting.png(tight=True) cuts the content's box out of one drawing: the size of savefig's tight PNG (within
    the rounding of the box's edges); content past the figure's edge goes through savefig."""
    import io

    from PIL import Image

    from core import plotting

    fig = plotting.figure(4, 3)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 2])
    ax.set_title("a title")
    ax.set_xlabel("x")
    fig.subplots_adjust(left=0.25, right=0.8, top=0.8, bottom=0.25)  # room on every side: the one-draw path
    assert plotting._tight_crop(fig) is not None
    fast = Image.open(io.BytesIO(plotting.png(fig, tight=True)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=plotting.DPI, bbox_inches="tight")
    ref = Image.open(buf)
    assert abs(fast.size[0] - ref.size[0]) <= 2 and abs(fast.size[1] - ref.size[1]) <= 2
    assert fast.size[0] < 4 * plotting.DPI and fast.size[1] < 3 * plotting.DPI  # it was cropped
    outside = plotting.figure(2, 2)
    outside.subplots().plot([0, 1])
    outside.text(-0.4, 0.5, "past the left edge")
    assert plotting._tight_crop(outside) is None
    wide = Image.open(io.BytesIO(plotting.png(outside, tight=True)))
    assert wide.size[0] > 2 * plotting.DPI  # savefig made room for the text


def test_gc_paused_nests_and_restores_the_collector():
    import concurrent.futures as cf
    import gc

    from core.threads import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():  # nested
            assert not gc.isenabled()

        def other_user() -> None:
            with gc_paused():
                pass

        with cf.ThreadPoolExecutor(1) as pool:  # another user ends first: still paused for this one
            pool.submit(other_user).result()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()  # a caller that had paused it itself keeps it paused
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
