"""The process allocator for long texts (core.infra.memory): once switched on, a freed buffer of MMAP_THRESHOLD
bytes or more leaves the resident memory at once (glibc keeps it in its heap otherwise), and the capture switches
it on for a long text only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.infra import memory
from core.model import capture as capture_module
from core.run.settings import AnalysisSettings

PROBE = r"""
import importlib.util, json, sys
import numpy as np
spec = importlib.util.spec_from_file_location("memory", sys.argv[2])  # the module alone, without core's imports
memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory)

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

on = sys.argv[1] == "on"
switched = memory.map_large_buffers() if on else False
# free one 6 MiB buffer first: glibc then serves every buffer up to 6 MiB from its heap unless the threshold is fixed
np.ones(6 * 2**20 // 8)
bufs = [np.ones(6 * 2**20 // 8) for _ in range(40)]  # 240 MiB, all touched
before = rss_mib()
del bufs[::2]  # every other buffer: holes in the middle of the heap, none at its top
print(json.dumps({"switched": switched, "threshold": memory.large_buffer_threshold(), "freed": before - rss_mib()}))
"""


def _probe(mode: str) -> dict:
    path = str(Path(memory.__file__))
    out = subprocess.run([sys.executable, "-c", PROBE, mode, path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_large_buffers_leave_the_resident_memory_once_switched_on():
    on, off = _probe("on"), _probe("off")
    assert on["switched"] and on["threshold"] == 4 * 2**20
    assert on["freed"] > 110  # the 20 freed buffers (120 MiB) are gone from the resident memory
    assert off["threshold"] is None and off["freed"] < 30  # glibc's own threshold keeps the holes resident


def test_the_capture_switches_it_on_for_a_long_text_only(tiny_llama, monkeypatch):
    calls = []
    monkeypatch.setattr(capture_module, "map_large_buffers", lambda: calls.append(1) or True)
    loaded = tiny_llama
    text = "The quick brown fox jumps over the lazy dog."
    capture_module.capture(loaded, text, AnalysisSettings(compute_gradients=False))  # maps held: a short text
    assert calls == []
    capture_module.capture(loaded, text, AnalysisSettings(compute_gradients=False), hold_bytes=0, chunk_bytes=0)
    assert calls == [1]


def _address(a) -> int:
    return int(a.__array_interface__["data"][0])


def test_a_pooled_buffer_is_reused_only_once_no_array_holds_it():
    """BufferPool.empty hands out a buffer again only when no array made from it is alive (a slice, a strided
    view of a reshape, a torch tensor over it all count), keeps at most `keep` buffers, and serves small requests
    and requests under half a buffer's size with other memory."""
    import numpy as np
    import torch

    shape = (2, 5, 2**20)  # 40 MiB of float32: above POOLED_MIN_BYTES
    holders = (lambda a: a[1, 2:], lambda a: a.reshape(-1)[::7], lambda a: torch.from_numpy(a[0]))
    for make in holders:
        pool = memory.BufferPool(keep=1)
        a = pool.empty(shape, np.float32)
        first = _address(a)
        a[:] = 1.0
        holder = make(a)
        del a
        b = pool.empty(shape, np.float32)  # the holder keeps the one pooled buffer: fresh memory
        assert _address(b) != first and pool.held_bytes() == 40 * 2**20
        b[:] = 2.0
        assert float(holder.sum()) == float(holder.numel() if hasattr(holder, "numel") else holder.size)
        del holder
        c = pool.empty(shape, np.float32)
        assert _address(c) == first and c.shape == shape and c.dtype == np.float32

    pool = memory.BufferPool(keep=2)
    big = (25, 2**20)  # 100 MiB of float32
    a, b = pool.empty(big, np.float32), pool.empty(big, np.float32)
    assert pool.held_bytes() == 2 * 100 * 2**20
    c = pool.empty(big, np.float32)  # both pooled buffers in use: other memory, not pooled
    assert pool.held_bytes() == 2 * 100 * 2**20 and not np.shares_memory(c, a) and not np.shares_memory(c, b)
    del a, c
    small = pool.empty((4, 2**20), np.float32)  # 16 MiB: under POOLED_MIN_BYTES
    assert pool.held_bytes() == 2 * 100 * 2**20
    # 40 MiB: under half of the free 100 MiB buffer, which is dropped (the texts got shorter) for a pooled 40 MiB
    under_half = pool.empty((10, 2**20), np.float32)
    assert pool.held_bytes() == 100 * 2**20 + 40 * 2**20
    assert not any(np.shares_memory(x, b) for x in (small, under_half)) and not np.shares_memory(small, under_half)
    del under_half
    d = pool.empty((15, 2**20), np.float64)  # 120 MiB: larger than the free 40 MiB buffer, dropped in turn
    assert pool.held_bytes() == 100 * 2**20 + 120 * 2**20 and len(pool._buffers) == 2
    where = _address(d)
    del d
    assert _address(pool.empty((15, 2**20), np.float64)) == where


def test_the_captures_held_maps_reuse_a_released_result_s_memory_and_never_a_live_one(tiny_gpt2, monkeypatch):
    """Two captures in a row: while the first capture is alive its maps keep their values (the second gets other
    memory); once it is released the next capture's maps live where its maps were."""
    import numpy as np

    monkeypatch.setattr(memory, "POOLED_MIN_BYTES", 0)
    pool = memory.BufferPool(keep=2)
    monkeypatch.setattr(capture_module, "MAP_BUFFERS", pool)
    st = AnalysisSettings(compute_gradients=False)
    one = capture_module.capture(tiny_gpt2, "The quick brown fox jumps over the lazy dog.", st)
    kept = one.attentions.copy()
    two = capture_module.capture(tiny_gpt2, "A quick brown dog jumps over the lazy fox again.", st)
    assert _address(two.attentions) != _address(one.attentions)
    np.testing.assert_array_equal(one.attentions, kept)
    where = _address(one.attentions)
    del one
    three = capture_module.capture(tiny_gpt2, "The quick brown fox jumps over the lazy dog.", st)
    assert _address(three.attentions) == where
    assert any(np.shares_memory(three.attentions, buf) for buf in pool._buffers)  # the pool's, not the heap's
    np.testing.assert_array_equal(three.attentions, kept)  # the same text: the same maps, written in place
    assert not np.shares_memory(two.attentions, three.attentions)


def test_the_pool_size_comes_from_the_environment(monkeypatch, caplog):
    """TMA_MAP_BUFFERS sets how many buffers of held maps a process keeps (0: none, every array fresh); an unset,
    empty or malformed value gives the default, a malformed one with a logged line."""
    import numpy as np

    for raw, want in (("", 2), ("0", 0), ("1", 1), (" 3 ", 3), ("two", 2), ("-1", 2)):
        monkeypatch.setenv("TMA_MAP_BUFFERS", raw)
        assert memory.env_count("TMA_MAP_BUFFERS", 2) == want
    assert "not a count" in caplog.text
    pool = memory.BufferPool(keep=0)
    a = pool.empty((10, 2**20), np.float32)
    del a
    assert pool.held_bytes() == 0 and pool.empty((10, 2**20), np.float32).shape == (10, 2**20)


def test_a_result_whose_maps_live_in_a_pooled_buffer_round_trips_through_the_cache(tiny_gpt2, monkeypatch, tmp_path):
    """The held maps of an analysis are a view of a pooled buffer: the result cache stores and rebuilds it whole
    (the same numbers), and a second analysis that takes over the buffer once the first result is released leaves
    the cached copy untouched."""
    import numpy as np

    from core import analyze
    from core.analysis.result import AnalysisResult, results_equal
    from core.run.cache import ResultCache

    monkeypatch.setattr(memory, "POOLED_MIN_BYTES", 0)
    pool = memory.BufferPool(keep=1)
    monkeypatch.setattr(capture_module, "MAP_BUFFERS", pool)
    st = AnalysisSettings(compute_gradients=False)
    cache = ResultCache(tmp_path / "cache")
    try:
        first = analyze(tiny_gpt2, "The quick brown fox jumps over the lazy dog.", settings=st, cache=cache)
        assert any(np.shares_memory(first.attentions, b) for b in pool._buffers)
        kept = first.attentions.copy()
        del first
        other = analyze(tiny_gpt2, "A lazy dog sleeps under the quick brown fox.", settings=st)
        assert any(np.shares_memory(other.attentions, b) for b in pool._buffers)  # took over the buffer
        again = cache.get(
            analyze(tiny_gpt2, "The quick brown fox jumps over the lazy dog.", settings=st).cache_key, AnalysisResult
        )
        assert again is not None and np.array_equal(again.attentions, kept)
        fresh = analyze(tiny_gpt2, "The quick brown fox jumps over the lazy dog.", settings=st)
        assert results_equal(again, fresh, ignore=("cache_hit", "timings", "duration_s", "created_at"))
    finally:
        cache.close()
