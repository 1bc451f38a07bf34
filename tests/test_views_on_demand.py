"""The deeper views on request: analyze(views=...) and add_views() give the same sections, the cache keeps the
fuller result, and a result is never completed with another model."""

from __future__ import annotations

import pytest

from core.analysis import pipeline as analysis
from core.analysis.pipeline import VIEWS, add_views, analyze, view_names
from core.analysis.result import results_equal
from core.infra.errors import InputError

TEXT = "The cat sat on the mat because the mat was warm and the cat was tired."
IGNORE = ("cache_hit", "timings", "duration_s", "created_at")


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama", "tiny_bert"])
def test_add_views_later_equals_views_at_once(name, request):
    loaded = request.getfixturevalue(name)
    st = dict(compute_gradients=False, head_ablation=True)
    core_only = analyze(loaded, TEXT, **st)
    assert core_only.views == [] and all(getattr(core_only, v) is None for v in VIEWS)
    at_once = analyze(loaded, TEXT, views="all", **st)
    assert at_once.views == list(VIEWS)
    later = add_views(loaded, core_only, "all")
    assert later.views == list(VIEWS)
    assert results_equal(later, at_once, ignore=IGNORE), name
    if loaded.family != "encoder":
        assert later.dla is not None and later.flow is not None and later.query_key is not None
    # the core sections are the ones of the first run, untouched
    assert results_equal(later.replace(**{v: None for v in VIEWS}, views=[]), core_only, ignore=IGNORE)


def test_add_views_one_at_a_time_and_idempotent(tiny_gpt2):
    r = analyze(tiny_gpt2, TEXT, compute_gradients=False)
    r1 = add_views(tiny_gpt2, r, ["flow"])
    assert r1.views == ["flow"] and r1.flow is not None and r1.dla is None
    r2 = add_views(tiny_gpt2, r1, ["dla", "flow"])
    assert r2.views == ["dla", "flow"] and r2.flow is r1.flow and r2.dla is not None
    assert add_views(tiny_gpt2, r2, "dla") is r2  # nothing missing: no pass at all


def test_cache_keeps_the_fuller_result(tiny_gpt2, result_cache, monkeypatch):
    r = analyze(tiny_gpt2, TEXT, compute_gradients=False, cache=result_cache)
    full = add_views(tiny_gpt2, r, "all", cache=result_cache)
    hit = analyze(tiny_gpt2, TEXT, compute_gradients=False, cache=result_cache)
    assert hit.cache_hit and hit.views == list(VIEWS) and results_equal(hit, full, ignore=IGNORE)

    def no_capture(*a, **k):
        raise AssertionError("the cache held every view: no forward pass expected")

    monkeypatch.setattr(analysis, "capture", no_capture)
    again = add_views(tiny_gpt2, r, "all", cache=result_cache)  # r lacks them, the cache has them
    assert again.views == list(VIEWS)
    hit2 = analyze(tiny_gpt2, TEXT, compute_gradients=False, cache=result_cache, views="all")
    assert hit2.cache_hit and hit2.flow is not None


def test_cache_hit_without_the_views_gets_them(tiny_gpt2, result_cache):
    analyze(tiny_gpt2, TEXT, compute_gradients=False, cache=result_cache)
    r = analyze(tiny_gpt2, TEXT, compute_gradients=False, cache=result_cache, views=["dla"])
    assert r.cache_hit and r.views == ["dla"] and r.dla is not None


def test_views_need_the_same_model(tiny_gpt2, tiny_llama):
    r = analyze(tiny_gpt2, TEXT, compute_gradients=False)
    with pytest.raises(InputError, match="the deeper views need the model"):
        add_views(tiny_llama, r, "all")


def test_view_names():
    assert view_names("all") == list(VIEWS) and view_names(None) == [] and view_names(()) == []
    assert view_names(["query_key", "dla"]) == ["dla", "query_key"]
    with pytest.raises(InputError, match="unknown view"):
        view_names(["dla", "attention"])


def test_bundle_of_a_core_result_says_the_views_were_not_computed(tiny_gpt2):
    from core.figures.routes import unavailable_line

    r = analyze(tiny_gpt2, TEXT, compute_gradients=False)
    assert "not computed in this run" in (unavailable_line(r, "dla") or "")
    full = add_views(tiny_gpt2, r, "all")
    assert unavailable_line(full, "dla") is None


def test_app_export_adds_every_view_and_survives_a_failure(tiny_gpt2, tiny_dirs, monkeypatch):
    """The sidebar's download callback: a result without views is completed before the ZIP is built; when the
    model cannot be had, the ZIP is built from the result as it is."""
    import app.sidebar as sidebar
    from core.infra.options import ExportOptions

    built = []
    monkeypatch.setattr(sidebar, "build_zip", lambda r, options, save=False: built.append(r) or b"zip")
    r = analyze(tiny_gpt2, TEXT, compute_gradients=False)
    assert sidebar.export_bytes(r, ExportOptions(), (str(tiny_dirs["gpt2"]), "float32", "cpu")) == b"zip"
    assert built[-1].views == list(VIEWS) and built[-1].flow is not None
    assert sidebar.export_bytes(r, ExportOptions(), ("/no/such/model", "float32", "cpu")) == b"zip"
    assert built[-1] is r


def test_layer_page_tries_failed_views_once(tiny_gpt2, monkeypatch):
    """When the views cannot be computed, the page says so once per result; a widget change does not try again."""
    from test_app_pages import LAYERS, make_app, no_exception

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(analysis, "add_views", failing)
    r = analyze(tiny_gpt2, TEXT, compute_gradients=False)
    at = make_app(r).run()
    at.switch_page(LAYERS).run()
    no_exception(at)
    assert len(calls) == 1 and any("out of memory" in w.value for w in at.warning)
    at.select_slider(key="layer").set_value(1).run()
    no_exception(at)
    assert len(calls) == 1 and any("could not be computed" in w.value for w in at.warning)
    assert at.session_state["result"].views == []
