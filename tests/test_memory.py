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
