"""The documentation registry (core.present.docs) and the Details page.

"What core computes" is derived, not hand-listed: the layer metrics from METRIC_NAMES, the optional sections from
the fields of AnalysisResult that default to None, their contents from the fields of the section dataclasses that
a real analysis returns, and the figures from the files a real bundle holds.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from core.analysis.result import AnalysisResult
from core.present import docs
from core.steps.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = [f.name for f in dataclasses.fields(AnalysisResult) if f.default is None]
YEAR = re.compile(r"\((1[89]\d\d|20\d\d)\)")


@pytest.fixture(scope="module")
def results(tiny_gpt2, tiny_bert, tiny_encoder, tmp_path_factory):
    import torch

    from core.analysis.pipeline import analyze
    from core.model.sae import save_sae

    sae = tmp_path_factory.mktemp("sae") / "s"
    g = torch.Generator().manual_seed(0)
    save_sae(sae, W_enc=torch.randn(32, 16, generator=g), b_enc=torch.zeros(16), W_dec=torch.randn(16, 32, generator=g),
             b_dec=torch.zeros(32), hook_name="blocks.1.hook_resid_pre")  # fmt: skip
    return {
        "gpt2": analyze(
            tiny_gpt2, "The cat sat on the mat.", ig_steps=4, head_ablation=True, views="all", sae_dirs=(str(sae),)
        ),
        "bert": analyze(tiny_bert, "The cat sat on the [MASK].", ig_steps=4, views="all"),
        "encoder": analyze(tiny_encoder, "The cat sat on the mat.", ig_steps=4, views="all"),
    }


@pytest.fixture(scope="module")
def section_types(results) -> dict[str, type]:
    """Section name -> its dataclass, from real results (a section whose step is not registered is absent)."""
    out: dict[str, type] = {}
    for r in results.values():
        for s in SECTIONS:
            v = getattr(r, s)
            if v is not None:
                out.setdefault(s, type(v))
    return out


def computed_items(section_types: dict[str, type]) -> set[str]:
    items = {f"metric:{m}" for m in METRIC_NAMES}
    for s, cls in section_types.items():
        items |= {f"{s}.{f.name}" for f in dataclasses.fields(cls) if f.metadata.get("serialize", True)}
    return items


def test_sections_are_the_four_of_the_contract():
    assert set(SECTIONS) == {
        "attention",
        "attribution",
        "predictions",
        "logit_lens",
        "dla",
        "flow",
        "head_ablation",
        "neuron_factors",
        "query_key",
        "sae",
    }


def test_every_computed_item_has_an_entry(section_types):
    documented = {s for e in docs.DOCS.values() for s in e.sources}
    missing = sorted(computed_items(section_types) - documented)
    assert not missing, f"computed but not documented in core.present.docs: {missing}"


def test_every_layer_metric_is_an_entry_of_its_own():
    for name in METRIC_NAMES:
        assert docs.doc(name).kind == "layer_metric"
        assert docs.doc(name).sources == (f"metric:{name}",)
    assert {e.key for e in docs.entries("layer_metric")} == set(METRIC_NAMES)


def test_every_entry_names_something_core_computes(section_types):
    computed = computed_items(section_types)
    for e in docs.DOCS.values():
        if e.kind in ("figure", "animation"):
            assert e.files and not e.sources, e.key
            continue
        assert e.sources, f"{e.key} names nothing that core computes"
        for src in e.sources:
            if src.startswith("core."):
                module, name = src.split(":")
                assert callable(getattr(importlib.import_module(module), name, None)), src
            else:
                assert src in computed, f"{e.key}: {src} is not computed by core"


def test_every_figure_in_a_bundle_is_documented_and_every_figure_entry_is_produced(results):
    from core.export.bundle import bundle_files

    names: set[str] = set()
    for r in results.values():
        names |= {n for n in bundle_files(r) if n.startswith(("plots/", "animations/"))}
    undocumented = sorted(n for n in names if docs.figure_doc(n) is None)
    assert not undocumented, f"figures without a docs entry: {undocumented}"
    import fnmatch

    unmatched = [
        e.key
        for e in docs.entries("figure") + docs.entries("animation")
        if not any(fnmatch.fnmatchcase(n, p) for n in names for p in e.files)
    ]
    assert not unmatched, f"figure entries that no bundle file matches: {unmatched} (files: {sorted(names)})"


def test_entries_are_complete():
    for e in docs.DOCS.values():
        assert e.title and e.definition and e.short, e.key
        assert "\n" not in e.short and len(e.short) <= 160, e.key
        assert docs.caption(e.key) == e.short
        for ref in e.references:
            assert YEAR.search(ref), f"{e.key}: reference without a year: {ref}"
        if e.kind in ("figure", "animation"):
            assert e.how_to_read, e.key
        else:
            assert e.formula_latex and docs.formula_text(e.key), e.key
            assert e.high and e.low and e.encoder_vs_decoder and e.pitfalls and e.references, e.key
            assert "\\" not in docs.formula_text(e.key), f"{e.key}: LaTeX left in the plain formula"


@pytest.mark.parametrize("key", [k for k, e in docs.DOCS.items() if e.formula_latex])
def test_latex_is_balanced(key):
    tex = docs.doc(key).formula_latex
    depth = 0
    for i, ch in enumerate(tex):
        if ch == "{" and (i == 0 or tex[i - 1] != "\\"):
            depth += 1
        elif ch == "}" and (i == 0 or tex[i - 1] != "\\"):
            depth -= 1
        assert depth >= 0, key
    assert depth == 0, key
    assert tex.count(r"\left") == tex.count(r"\right"), key
    assert "$" not in tex


def test_required_pitfalls_and_references():
    for k in ("effective_rank", "participation_ratio", "intrinsic_dim_95"):
        text = " ".join(docs.doc(k).pitfalls)
        assert "T−1" in text and "token" in text, k  # the token-count ceiling
        assert "centr" in text.lower() and "special tokens" in text.lower(), k
    for e in docs.entries("attention"):
        text = " ".join(e.pitfalls)
        assert "Jain & Wallace 2019" in text and "Wiegreffe" in text, e.key
    refs = " ".join(r for e in docs.DOCS.values() for r in e.references)
    for needle in (
        "Roy",
        "Abnar",
        "Sundararajan",
        "Simonyan",
        "Shrikumar",
        "nostalgebraist",
        "Clark",
        "Michel",
        "Voita",
        "Jain",
        "Wiegreffe",
    ):
        assert needle in refs, needle


def test_methodology_and_visual_guide_cover_the_topics():
    text = " ".join(t + " " + p for t, p in docs.METHODOLOGY).lower()
    for topic in (
        "forward pass",
        "eager",
        "final norm",
        "centr",
        "special tokens",
        "target",
        "cache key",
        "dtype",
        "precision",
    ):
        assert topic in text, topic
    assert len(docs.VISUAL_GUIDE) == len(docs.entries("figure")) + len(docs.entries("animation"))
    assert all(t and p for t, p in docs.VISUAL_GUIDE)


def test_lookup_helpers():
    with pytest.raises(KeyError, match="no documentation entry"):
        docs.doc("nope")
    with pytest.raises(ValueError):
        docs.entries("nope")
    assert docs.formula_text("fig_layer_metrics") == ""
    assert docs.figure_doc("plots/layer_metrics.png").key == "fig_layer_metrics"
    assert docs.figure_doc("not-a-figure.txt") is None
    assert "High:" in docs.interpretation("effective_rank")
    with pytest.raises(dataclasses.FrozenInstanceError):
        docs.doc("effective_rank").title = "x"


def test_details_page_renders_every_formula_without_a_result():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "pages" / "details.py"), default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    bodies = [el.value.strip().removeprefix("$$").removesuffix("$$").strip() for el in at.latex]
    expected = [e.formula_latex for e in docs.DOCS.values() if e.formula_latex]
    assert sorted(bodies) == sorted(expected)
    headers = {el.value for el in at.subheader}
    for e in docs.DOCS.values():
        assert e.title in headers, e.key
    for title, _ in docs.METHODOLOGY:
        assert title in headers
    assert "result" not in at.session_state  # nothing was needed from an analysis


def test_long_formulas_break_at_top_level_separators_only():
    short = r"a = b,\qquad c = d"
    assert docs._split_lines(short) == short
    long = r"x = \frac{1}{2}\text{ a rather long explanation of x }" + r",\qquad " + r"y = \sum_{i} z_{i}" * 5
    out = docs._split_lines(long)
    assert out.startswith(r"\begin{gathered}") and out.count(r" \\ ") == 1 and r"\qquad" not in out
    inner = r"\text{" + "w" * 100 + r"\qquad v}"  # a separator inside braces is not a line break
    assert docs._split_lines(inner) == inner


def test_every_kind_module_is_collected_once_and_no_key_is_written_twice():
    """core.present.docs is a package of kind modules, each with ENTRIES; DOCS must hold every entry of every such
    module (a new module left out of DOCS would silently drop its entries) and no key twice (a dict keeps the last)."""
    import pkgutil

    modules = [
        importlib.import_module(f"core.present.docs.{m.name}")
        for m in pkgutil.iter_modules(docs.__path__)
        if hasattr(importlib.import_module(f"core.present.docs.{m.name}"), "ENTRIES")
    ]
    assert len(modules) >= 10
    keys = [e.key for m in modules for e in m.ENTRIES]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    assert set(keys) == set(docs.DOCS)
