"""Result round trip (no pickle) and the disk cache: a hit skips the model, a changed setting misses."""

import dataclasses
import io
import json
import struct
import zipfile

import numpy as np
import pytest

from core import AnalysisResult, AnalysisSettings, analyze
from core.analysis.pipeline import cache_key
from core.analysis.result import results_equal
from core.infra.errors import InputError
from core.run.cache import ResultCache

TEXT = "The cat sat on the mat."


class ForwardCounter:
    def __init__(self, loaded):
        self.n = 0
        self.handle = loaded.model.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.n += 1

    def close(self):
        self.handle.remove()


def test_result_round_trips_without_pickle(tiny_gpt2, tmp_path):
    r = analyze(tiny_gpt2, TEXT)
    data = r.to_bytes()
    back = AnalysisResult.from_bytes(data)
    assert results_equal(r, back, ignore=())
    r.save(tmp_path / "r.tma")
    assert results_equal(AnalysisResult.load(tmp_path / "r.tma"), r, ignore=())
    from core.infra import serialize

    assert data.startswith(serialize.MAGIC)  # JSON header + raw arrays (see core.infra.serialize), no pickle opcodes
    (hlen,) = struct.unpack("<Q", data[len(serialize.MAGIC) : len(serialize.MAGIC) + 8])
    header = json.loads(data[len(serialize.MAGIC) + 8 : len(serialize.MAGIC) + 8 + hlen])
    assert set(header) == {"object", "arrays"} and header["object"]["__dataclass__"].endswith("AnalysisResult")


def test_loading_refuses_foreign_classes():
    from core.infra import serialize

    doc = {"__dataclass__": "os.path.Foo", "fields": {}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("object.json", json.dumps(doc))
        npz = io.BytesIO()
        np.savez(npz)
        zf.writestr("arrays.npz", npz.getvalue())
    with pytest.raises(ValueError, match="refusing"):
        serialize.loads(buf.getvalue())


def test_cache_hit_returns_equal_result_without_running_the_model(tiny_gpt2, result_cache):
    counter = ForwardCounter(tiny_gpt2)
    try:
        first = analyze(tiny_gpt2, TEXT, cache=result_cache, compute_gradients=False)
        runs_after_first = counter.n
        assert runs_after_first >= 1 and not first.cache_hit
        second = analyze(tiny_gpt2, TEXT, cache=result_cache, compute_gradients=False)
        assert counter.n == runs_after_first  # no forward pass at all
        assert second.cache_hit
        assert results_equal(first, second)
        third = analyze(tiny_gpt2, TEXT, cache=result_cache, compute_gradients=False, exclude_special_tokens=True)
        assert counter.n > runs_after_first and not third.cache_hit
    finally:
        counter.close()


def test_cache_key_covers_every_input(tiny_gpt2):
    info = tiny_gpt2.info()
    s = AnalysisSettings()
    base = cache_key(info, TEXT, s)
    assert cache_key(info, TEXT, s) == base
    assert cache_key(info, TEXT + " ", s) != base
    assert cache_key(info, TEXT, s.replace(top_k=5)) != base
    assert cache_key(dataclasses.replace(info, revision="other"), TEXT, s) != base
    assert cache_key(dataclasses.replace(info, dtype="bfloat16"), TEXT, s) != base
    import core.run.cache as cache_mod

    old = cache_mod.CORE_VERSION
    try:
        cache_mod.CORE_VERSION = "999"
        assert cache_key(info, TEXT, s) != base
    finally:
        cache_mod.CORE_VERSION = old


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TMA_CACHE_DIR", str(tmp_path / "here"))
    c = ResultCache()
    try:
        assert c.directory == tmp_path / "here"
        assert (tmp_path / "here").is_dir()
    finally:
        c.close()


def test_unreadable_cache_entry_is_dropped(result_cache):
    result_cache._cache.set("k", b"garbage")
    assert result_cache.get("k", AnalysisResult) is None
    assert "k" not in result_cache


def test_settings_validate_themselves():
    with pytest.raises(InputError):
        AnalysisSettings(max_tokens=0)
    with pytest.raises(InputError):
        AnalysisSettings(top_k=1000)
    with pytest.raises(InputError, match="unknown setting"):
        AnalysisSettings.from_dict({"nope": 1})
    s = AnalysisSettings.from_dict({"top_k": 3})
    assert s.top_k == 3 and hash(s) == hash(AnalysisSettings(top_k=3))


def test_model_lock_serialises_concurrent_analyses(tiny_gpt2):
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"The cat sat on mat number {i}." for i in range(6)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda t: analyze(tiny_gpt2, t, compute_gradients=False), texts))
    for t, r in zip(texts, results):
        solo = analyze(tiny_gpt2, t, compute_gradients=False)
        np.testing.assert_array_equal(r.attentions, solo.attentions)


def test_one_settings_base_validates_every_run_from_its_field_metadata():
    """AnalysisSettings, CorpusSettings and PatchingSettings share core.run.settings.Settings: each bounded
    integer refuses one below its min and one above its max with the same message, accepts both bounds, and a
    bool refuses 1; to_dict / from_dict / replace / help come from the base."""
    import dataclasses

    from core.run.settings import Settings, field_kind
    from core.studies.corpus import CorpusSettings
    from core.studies.patching import PatchingSettings

    for cls in (AnalysisSettings, CorpusSettings, PatchingSettings):
        assert issubclass(cls, Settings)
        base = cls()
        assert cls.from_dict(base.to_dict()) == base and hash(cls()) == hash(base)
        for f in dataclasses.fields(cls):
            assert set(f.metadata) <= {"help", "min", "max", "cli", "label", "choices"} and cls.help(f.name)
            kind = field_kind(f)
            if kind is bool:
                with pytest.raises(InputError, match=f"{f.name} must be true or false"):
                    cls(**{f.name: 1})
                continue
            lo, hi = cls.bounds(f.name)
            if kind is int and lo is not None and hi is not None:
                for bad in (lo - 1, hi + 1):
                    with pytest.raises(InputError, match=f"{f.name} must be .*an integer between {lo} and {hi}"):
                        cls(**{f.name: bad})
                assert getattr(base.replace(**{f.name: hi}), f.name) == hi
                assert getattr(cls(**{f.name: lo}), f.name) == lo
            if kind is str:
                with pytest.raises(InputError, match=f"{f.name} must be empty or a non-empty word"):
                    cls(**{f.name: "  "})


def test_the_settings_base_checks_choices_floats_and_rules_between_fields():
    """A settings class of the test's own: choices, a float with bounds, a required int, and a check() rule."""
    from dataclasses import dataclass

    from core.run.settings import Settings, setting

    @dataclass(frozen=True)
    class Toy(Settings):
        mode: str = setting("fast", "how to run", choices=("fast", "exact"))
        alpha: float = setting(0.05, "test level", min=0.0, max=0.5)
        n: int = setting(3, "count", min=1)
        strict: bool = setting(False, "be strict")

        def check(self) -> None:
            if self.strict and self.mode == "fast":
                raise InputError("strict needs the exact mode")

    assert Toy(mode="exact", alpha=0.5, n=1).alpha == 0.5
    for bad, message in [
        ({"mode": "slow"}, "mode must be one of fast, exact, got 'slow'"),
        ({"alpha": 0.6}, "alpha must be a number between 0.0 and 0.5"),
        ({"alpha": float("nan")}, "alpha must be a number between"),
        ({"n": 0}, "n must be an integer ≥ 1, got 0"),
        ({"n": None}, "n must be set"),
        ({"n": 2.0}, "n must be an integer ≥ 1"),
        ({"strict": True}, "strict needs the exact mode"),
    ]:
        with pytest.raises(InputError, match=message):
            Toy(**bad)
