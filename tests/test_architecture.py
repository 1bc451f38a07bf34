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


#: The layer packages of core/, from the ground up: each may import only itself and the packages before it.
LAYERS = ("infra", "run", "model", "steps", "analysis", "studies", "present", "figures", "export", "cli")


def _module_name(path: Path) -> str:
    """'pkg.mod' for core/pkg/mod.py, 'pkg' for core/pkg/__init__.py, 'mod' for core/mod.py."""
    rel = path.relative_to(CORE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) or "__init__"


def _core_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in CORE.rglob("*.py")}


def _core_imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of core/ that `path` imports, at run time or for type checking only (both count: a type-only
    import is still an arrow in the picture and a reason the two modules change together)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                if not node.module or node.module.split(".")[0] != "core":
                    continue
                mod = node.module.partition(".")[2]
            names = [f"{mod}.{a.name}" if mod else a.name for a in node.names] + [mod]
        elif isinstance(node, ast.Import):
            names = [a.name.partition(".")[2] for a in node.names if a.name.startswith("core.")]
        for name in names:
            # the longest prefix that is a module: 'model.loading.LoadedModel' -> 'model.loading'
            parts = name.split(".")
            for k in range(len(parts), 0, -1):
                cand = ".".join(parts[:k])
                if cand in modules:
                    out.add(cand)
                    break
    return out - {here}


def import_graph() -> dict[str, set[str]]:
    modules = _core_modules()
    return {name: _core_imports(path, set(modules)) for name, path in modules.items() if name != "__init__"}


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


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Arrows that run back up: a module importing a package above its own (or a module outside the layers)."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for mod, deps in sorted(graph.items()):
        top = mod.split(".")[0]
        if top in ("__main__",):
            continue
        for dep in sorted(deps):
            d = dep.split(".")[0]
            if top not in rank or d not in rank:
                bad.append(f"{mod} -> {dep} (outside the layer packages)")
            elif rank[d] > rank[top]:
                bad.append(f"{mod} -> {dep} ({top} is below {d})")
    return bad


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_layer_check_finds_a_planted_arrow_up():
    assert layer_violations({"infra.x": {"model.y"}, "model.y": {"infra.x"}}) == [
        "infra.x -> model.y (infra is below model)"
    ]
    assert layer_violations({"cli.main": {"infra.x", "cli.common"}}) == []


def test_the_import_reader_sees_relative_absolute_and_type_only_imports(tmp_path, monkeypatch):
    src = (
        "from typing import TYPE_CHECKING\n"
        "from .loading import x\nfrom ..infra import serialize\nimport core.run.cache\n"
        "if TYPE_CHECKING:\n    from core.analysis.result import AnalysisResult\n"
    )
    path = CORE / "model" / "capture.py"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: src)
    mods = {"model.loading", "infra.serialize", "run.cache", "analysis.result", "model.capture"}
    assert _core_imports(path, mods) == {"model.loading", "infra.serialize", "run.cache", "analysis.result"}


def test_core_has_no_import_cycle_type_only_imports_counted():
    assert find_cycle(import_graph()) is None


def test_each_package_imports_only_the_layers_below_it():
    assert layer_violations(import_graph()) == []


def test_core_is_a_few_files_over_layer_packages_each_saying_what_it_holds():
    top_files = sorted(p.name for p in CORE.glob("*.py"))
    assert len(top_files) <= 10, top_files
    packages = sorted(p.name for p in CORE.iterdir() if (p / "__init__.py").exists())
    assert sorted(packages) == sorted(LAYERS)
    for name in packages:
        doc = ast.get_docstring(ast.parse((CORE / name / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "may import" in doc, f"core/{name}/__init__.py needs a docstring saying what it may import"


def test_diskcache_is_imported_by_one_core_module():
    users = sorted(
        _module_name(p)
        for p in CORE.rglob("*.py")
        if re.search(r"^\s*(import diskcache|from diskcache)", p.read_text(encoding="utf-8"), re.M)
    )
    assert users == ["run.cache"], users


def test_no_file_in_core_app_or_pages_is_over_900_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for folder in ("core", "app", "pages")
        for p in (ROOT / folder).rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 900
    }
    assert long == {}


def test_no_module_is_loaded_by_name_and_nothing_uses_pyplot():
    for folder in ("core", "app", "pages"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "import_module" not in text, f"{path.name} loads a module by name"
            assert not re.search(r"matplotlib\.pyplot|from matplotlib import pyplot", text), f"{path.name} uses pyplot"


def _figure_makers(result):
    from core.figures import animations
    from core.figures import attention as ap
    from core.figures import metrics as figures
    from core.figures import predictions as pp
    from core.figures import routes as peer_plots
    from core.figures.plotting import png

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
    from core.analysis.pipeline import analyze

    result = analyze(tiny_gpt2, "The quick brown fox jumps over the lazy dog.", views="all")
    makers = _figure_makers(result)
    single = {name: make() for name, make in makers.items()}
    jobs = [name for name in makers for _ in range(4)]
    with cf.ThreadPoolExecutor(max_workers=4) as pool:
        drawn = list(pool.map(lambda name: (name, makers[name]()), jobs))
    for name, data in drawn:
        assert data == single[name], f"{name} differs when drawn from several threads"


def test_the_readme_model_table_is_the_preset_table():
    from core.infra.presets import PRESETS

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
    from core.cli.main import build_parser
    from core.run.settings import AnalysisSettings, setting_fields

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
    from core.cli.common import settings_from_args
    from core.cli.main import build_parser
    from core.run.settings import AnalysisSettings

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
    from core.analysis import pipeline as analysis

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

    from core.figures import plotting

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

    from core.infra.threads import gc_paused

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


# ----------------------------------------------------------------------------------------------------------------
# Hooks registered in one place; architecture knowledge in one map

#: torch's hook registrations on modules (forward, forward-pre, full backward, backward-pre, global module hooks).
HOOK_CALL = re.compile(r"^register_(module_)?(forward|full_backward|backward)(_pre)?_hook$")


def hook_registrations(paths: list[Path]) -> dict[str, list[int]]:
    """Per file (relative to the repository): the lines that call a torch hook registration."""
    out: dict[str, list[int]] = {}
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and HOOK_CALL.match(node.attr):
                out.setdefault(p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(p), []).append(
                    node.lineno
                )
    return out


def test_hook_counter_finds_a_planted_registration(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f(m, g):\n    return m.register_forward_pre_hook(g), m.register_full_backward_hook(g)\n")
    assert hook_registrations([planted]) == {str(planted): [2, 2]}


def test_forward_hooks_are_registered_in_at_most_two_core_modules():
    """Every hook goes through core.model.hooks.hooked (removed in its `finally`): torch's register_*_hook calls
    appear in at most two core modules, hooks.py among them. A third module registering a hook fails here."""
    found = hook_registrations(sorted(CORE.rglob("*.py")))
    assert "core/model/hooks.py" in found
    assert len(found) <= 2, f"hooks registered outside core.model.hooks.hooked: {found}"


#: Words the map's module paths share with ordinary code (the project's own fields and variables): not evidence of
#: architecture knowledge on their own. Every other component of a path the map reaches is.
COMMON_WORDS = frozenset(
    {"activation", "attention", "attn", "embeddings", "encoder", "h", "key", "layer", "layers", "mlp", "model"}
    | {"norm", "output", "predictions", "query", "self", "transform", "value"}
)
#: (file, strings) that look like architecture names but are not: a Hub model id, and the size guard's parameter
#: formulas by model type (core/infra/guards.py reads a raw config.json before anything is loaded, for every model a
#: user may try, most of them outside the map; infra may not import the map).
NOT_ARCHITECTURE_KNOWLEDGE = {
    "core/infra/presets.py": {"gpt2"},
    "core/infra/guards.py": {"*model types*"},
    "core/model/sae.py": {"layer_norm"},  # SAELens's normalize_activations value, not RoBERTa's module
}
IDENTIFIER = re.compile(r"^[A-Za-z_][\w.]*$")


def architecture_names() -> tuple[set[str], set[str]]:
    """(module names the map reaches that are its own, the model types it knows), read from core/model/arch.py: the
    dotted paths given to _m / _opt_m / _each, less COMMON_WORDS and the names of the map's own fields."""
    import dataclasses

    from core.model import arch

    paths: set[str] = set()
    for node in ast.walk(ast.parse((CORE / "model" / "arch.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("_m", "_opt_m", "_each"):
            if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                paths |= set(node.args[1].value.split("."))
    fields = {
        f.name
        for cls in (arch.Block, arch.ModelParts, arch.QueryKey, arch.Rotary, arch.HeadLayout)
        for f in dataclasses.fields(cls)
    }
    return paths - COMMON_WORDS - fields, set(arch.BUILDERS)


def architecture_mentions(paths: list[Path], names: set[str], model_types: set[str]) -> list[str]:
    """'file:line name' for each attribute access or identifier-like string (docstrings aside) that names a module
    of the map, and each string that is a model type the map knows."""
    hits = []
    for p in paths:
        rel = p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(p)
        allowed = NOT_ARCHITECTURE_KNOWLEDGE.get(rel, set())
        tree = ast.parse(p.read_text(encoding="utf-8"))
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in names:
                hits.append(f"{rel}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if not IDENTIFIER.match(node.value) or node.value in allowed:
                    continue
                if node.value in model_types:
                    if "*model types*" not in allowed:
                        hits.append(f"{rel}:{node.lineno} model type {node.value!r}")
                elif set(node.value.split(".")) & names:
                    hits.append(f"{rel}:{node.lineno} {node.value!r}")
    return hits


def test_architecture_scan_finds_planted_knowledge(tmp_path):
    names, model_types = architecture_names()
    assert {"c_attn", "o_proj", "down_proj", "input_layernorm", "rotary_emb", "q_lin"} <= names
    assert {"gpt2", "llama", "bert"} <= model_types
    planted = tmp_path / "planted.py"
    planted.write_text(
        '"""Mentions ln_f in prose only."""\n'
        "def f(model, mt):\n"
        "    blocks = model.transformer.h\n"
        '    if mt == "llama":\n'
        '        return getattr(blocks[0], "self_attn.o_proj")\n'
        "    return blocks[0].attn.c_proj\n"
    )
    assert sorted(architecture_mentions([planted], names, model_types)) == [
        f"{planted}:3 .transformer",
        f"{planted}:4 model type 'llama'",
        f"{planted}:5 'self_attn.o_proj'",
        f"{planted}:6 .c_proj",
    ]


def test_architecture_knowledge_lives_in_the_map_only():
    """A new architecture touches one file (core/model/arch.py): no other module of core/, app/ or pages/ names a
    module the map reaches or a model type it knows."""
    names, model_types = architecture_names()
    files = [
        p
        for p in sorted([*CORE.rglob("*.py"), *(ROOT / "app").rglob("*.py"), *(ROOT / "pages").rglob("*.py")])
        if p != CORE / "model" / "arch.py"
    ]
    assert architecture_mentions(files, names, model_types) == []


def test_the_map_docstring_says_how_to_add_a_family():
    from core.model import arch

    doc = arch.__doc__ or ""
    assert "Adding a family touches this file only" in doc
    assert all(word in doc for word in ("BUILDERS", "ARCH_PREFIXES", "builder"))


def _app_graph() -> dict[str, set[str]]:
    """app/ modules and the app/ modules each imports (at run time or inside functions)."""
    app = ROOT / "app"
    names = {p.stem for p in app.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for p in app.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "app":
                    deps |= {a.name for a in node.names if a.name in names}
                elif node.module.startswith("app."):
                    deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("app.")}
        graph[p.stem] = deps - {p.stem}
    return graph


def test_app_has_no_import_cycle():
    assert find_cycle(_app_graph()) is None
