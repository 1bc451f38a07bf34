"""16-bit dtypes on a CPU (issue 24): `--dtype auto` stays float32 on a CPU; an explicit bfloat16/float16 on a CPU
without native support warns once, with the slowdown against float32 measured on this machine."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.infra import devices
from core.model.loading import resolve_dtype


def _capability(monkeypatch, bf16: bool, amx: bool = False, amx_fp16: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: amx_fp16)


def test_auto_on_a_cpu_is_float32_whatever_the_cpu(monkeypatch):
    for native in (True, False):
        _capability(monkeypatch, bf16=native, amx=native)
        assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"  # an explicit choice is kept (and warned about)


def test_native_support_by_the_capability_queries(monkeypatch):
    _capability(monkeypatch, bf16=False)
    assert not devices.cpu_computes_natively("bfloat16") and not devices.cpu_computes_natively("float16")
    assert devices.cpu_computes_natively("float32")
    _capability(monkeypatch, bf16=True)
    assert devices.cpu_computes_natively("bfloat16")
    _capability(monkeypatch, bf16=False, amx=True, amx_fp16=True)
    assert devices.cpu_computes_natively("bfloat16") and devices.cpu_computes_natively("float16")


def test_warning_only_without_native_support_and_only_on_a_cpu(monkeypatch):
    monkeypatch.setattr(devices, "_slowdown", {"bfloat16": 37.4, "float16": 12.0})  # the measurement is cached
    _capability(monkeypatch, bf16=True, amx=True, amx_fp16=True)
    assert devices.cpu_dtype_warning("bfloat16", "cpu") is None
    assert devices.cpu_dtype_warning("float16", "cpu") is None
    _capability(monkeypatch, bf16=False)
    w = devices.cpu_dtype_warning("bfloat16", "cpu")
    assert (
        w is not None
        and "\n" not in w
        and "37.4× the time of float32" in w
        and w.endswith("load the model in float32 for speed")
    )
    assert "12.0× the time of float32" in (devices.cpu_dtype_warning("float16", "cpu") or "")
    assert devices.cpu_dtype_warning("float32", "cpu") is None
    monkeypatch.setattr(devices, "_slowdown", {"float16": 1.2})  # emulated but measured hardly slower: no advice
    assert devices.cpu_dtype_warning("float16", "cpu").endswith("(a 256² matmul measured here)")
    assert (
        devices.cpu_dtype_warning("bfloat16", "cuda:0") is None and devices.cpu_dtype_warning("bfloat16", "mps") is None
    )


def test_slowdown_is_measured_once_per_process(monkeypatch):
    monkeypatch.setattr(devices, "_slowdown", {})
    calls = []
    real = torch.matmul
    monkeypatch.setattr(torch, "matmul", lambda a, b: (calls.append(a.dtype), real(a, b))[1])
    s = devices.cpu_slowdown("bfloat16")
    assert s > 0 and calls.count(torch.bfloat16) == 4 and calls.count(torch.float32) == 4
    assert devices.cpu_slowdown("bfloat16") == s and len(calls) == 8  # cached


@pytest.mark.parametrize("native", [True, False])
def test_the_warning_reaches_the_result_and_manifest(tiny_gpt2, monkeypatch, native):
    from core.analysis.pipeline import analyze
    from core.export.bundle import manifest

    monkeypatch.setattr(devices, "_slowdown", {"bfloat16": 5.0})
    _capability(monkeypatch, bf16=native)
    lm = dataclasses.replace(tiny_gpt2, dtype="bfloat16")  # the label decides; the tiny weights stay float32
    r = analyze(lm, "The cat sat on the mat.", compute_gradients=False, views=[])
    hits = [w for w in r.warnings if "bfloat16 on this CPU" in w]
    assert len(hits) == (0 if native else 1)
    assert [w for w in manifest(r)["warnings"] if "bfloat16 on this CPU" in w] == hits
