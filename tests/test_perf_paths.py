"""Every fast path of issue 14 against its plain reference: sdpa vs eager gradients and generation, the logit lens
read from the model's logits vs decoded, the layer-by-layer float32 capture vs a plain stack, per-layer attention
entropy vs the whole-array formula, zero-copy deserialisation vs the old format, device selection, and the
device-map path (accelerate) on a CPU, including layers offloaded through accelerate's hooks. Timings live in
bench/, never here."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

from core import analyze
from core.analysis.result import AnalysisResult, results_equal


def results_close(a, b, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """Like results_equal, but floats and float arrays within tolerance (placement changes the rounding)."""
    import dataclasses

    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        return type(a) is type(b) and all(
            results_close(getattr(a, f.name), getattr(b, f.name), rtol, atol)
            for f in dataclasses.fields(a)
            if f.name not in IGNORE
        )
    if isinstance(a, np.ndarray) and a.dtype.kind == "f":
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rtol, abs=atol, nan_ok=True)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(results_close(a[k], b[k], rtol, atol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(results_close(x, y, rtol, atol) for x, y in zip(a, b))
    return results_equal(a, b, ignore=IGNORE)


TEXT = "The cat sat on the mat. The dog sat on the log, and the bird flew over the house."
IGNORE = ("cache_hit", "timings", "duration_s", "created_at", "last_layer_max_abs_diff")


def _capture(loaded, text=TEXT):
    from core.model.capture import capture
    from core.run.settings import AnalysisSettings

    return capture(loaded, text, AnalysisSettings())


# ----------------------------------------------------------------------------------------------------------------
# sdpa for the passes that need no attention weights


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_bert", "tiny_llama"])
def test_gradient_pass_sdpa_equals_eager(name, request, monkeypatch):
    import torch

    import core.infra.devices as devices
    from core.infra.devices import fast_attention
    from core.steps.attribution import gradient_x_input, integrated_gradients

    loaded = request.getfixturevalue(name)
    cap = _capture(loaded)
    pos = cap.input_ids.shape[1] - 1 if loaded.family == "causal_lm" else 2
    pred = int(torch.argmax(cap.logits[pos]))
    with fast_attention(loaded.model) as impl:
        assert impl == "sdpa"  # the fast path is really taken for these architectures
    assert loaded.model.config._attn_implementation == "eager"  # and undone

    with loaded.lock:
        fast = gradient_x_input(loaded, cap.input_ids, cap.attention_mask, pos, pred, heads=True)
        ig_fast = integrated_gradients(loaded, cap.input_ids, cap.attention_mask, pos, pred, steps=4)
        monkeypatch.setattr(devices, "FAST_ATTENTION", False)
        with fast_attention(loaded.model) as impl:
            assert impl == "eager"
        plain = gradient_x_input(loaded, cap.input_ids, cap.attention_mask, pos, pred, heads=True)
        ig_plain = integrated_gradients(loaded, cap.input_ids, cap.attention_mask, pos, pred, steps=4)
    assert loaded.model.config._attn_implementation == "eager"
    np.testing.assert_allclose(fast[0], plain[0], rtol=1e-4, atol=1e-6)  # gradient × input
    np.testing.assert_allclose(fast[1], plain[1], rtol=1e-4, atol=1e-6)  # head scores
    assert fast[2] == pytest.approx(plain[2], abs=1e-5)  # f(x)
    np.testing.assert_allclose(ig_fast[0], ig_plain[0], rtol=1e-4, atol=1e-6)
    assert ig_fast[1:] == pytest.approx(ig_plain[1:], abs=1e-5)


def test_generation_sdpa_equals_eager(tiny_llama, monkeypatch):
    import core.infra.devices as devices
    from core.steps.predictions import GenerationSettings, generate

    gen = GenerationSettings(max_new_tokens=8, use_chat_template=False)
    fast = generate(tiny_llama, "The cat sat on", gen)
    assert tiny_llama.model.config._attn_implementation == "eager"
    monkeypatch.setattr(devices, "FAST_ATTENTION", False)
    plain = generate(tiny_llama, "The cat sat on", gen)
    assert fast.token_ids == plain.token_ids and len(plain.token_ids) > 0


def test_capture_still_returns_attention_weights_after_a_gradient_pass(tiny_gpt2):
    r = analyze(tiny_gpt2, TEXT)  # gradients on: the sdpa switch happened in between
    again = _capture(tiny_gpt2)
    np.testing.assert_allclose(again.attentions, r.attentions, atol=1e-6)
    np.testing.assert_allclose(r.attentions.sum(-1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# The logit lens


def _plain_lens_grid(loaded, hidden, c0, c1):
    """Reference: decode every layer at every column of the window, top-1 of softmax."""
    import torch

    from core.steps.logit_lens import lens_decoder

    decode, _ = lens_decoder(loaded)
    with torch.inference_mode():
        z = decode(torch.from_numpy(np.ascontiguousarray(hidden[:, c0:c1]))).float()
        p, i = torch.softmax(z, -1).max(-1)
    return i.numpy(), p.double().numpy(), z


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_bert", "tiny_llama"])
@pytest.mark.parametrize("window", [None, 3])
def test_lens_from_model_logits_equals_plain_decoding(name, window, request):
    from core.steps.logit_lens import compute_logit_lens, grid_window

    loaded = request.getfixturevalue(name)
    cap = _capture(loaded)
    T = cap.hidden_states.shape[1]
    pos = T - 2
    fast = compute_logit_lens(loaded, cap.hidden_states, pos, 5, final_logits=cap.logits, grid_max_positions=window)
    plain = compute_logit_lens(
        loaded, cap.hidden_states, pos, 5, final_logits=None, grid_max_positions=window, chunk_floats=1
    )  # every layer decoded, in many small chunks
    c0, c1 = grid_window(T, pos, window)
    ids, probs, z = _plain_lens_grid(loaded, cap.hidden_states, c0, c1)
    np.testing.assert_array_equal(fast.grid_ids[:, c0:c1], ids)
    np.testing.assert_allclose(fast.grid_probs[:, c0:c1], probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(plain.grid_ids[:, c0:c1], ids)
    np.testing.assert_allclose(plain.grid_probs[:, c0:c1], probs, rtol=1e-5, atol=1e-7)
    # the read-out at `position` is decoded in both: identical
    np.testing.assert_array_equal(fast.top_ids, plain.top_ids)
    np.testing.assert_allclose(fast.top_probs, plain.top_probs, rtol=1e-6)
    np.testing.assert_allclose(fast.entropy, plain.entropy, rtol=1e-6)
    np.testing.assert_allclose(fast.final_prob, plain.final_prob, rtol=1e-6)
    # the exactness check is made at `position`, and the model's own logits agree with decoding layer L
    np.testing.assert_allclose(z[-1, pos - c0].numpy(), cap.logits[pos].numpy(), atol=1e-4)
    assert fast.last_layer_max_abs_diff <= 1e-4


def test_lens_grid_budget_for_the_gpt2_small_shape(monkeypatch):
    """The default window on a CPU for GPT-2 small (124 M parameters, 13 × 768 × 50257 per column)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import core.steps.logit_lens as LL

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config())
    loaded = SimpleNamespace(model=model, device="cpu")
    assert LL.grid_max_positions(loaded, 13, 128, 768) == LL.GRID_MIN_COLUMNS == 4
    assert LL.grid_max_positions(loaded, 13, 512, 768) == 6  # 5 % of 124 M × 512 multiply-adds
    assert LL.grid_max_positions(loaded, 13, 4, 768) is None  # the min. columns cover short texts whole
    assert LL.grid_max_positions(SimpleNamespace(model=model, device="cuda:0"), 13, 512, 768) is None
    monkeypatch.setattr(LL, "GRID_SHARE_CPU", None)
    assert LL.grid_max_positions(loaded, 13, 512, 768) is None


def test_exactness_tolerance_is_max_abs_logit():
    import torch

    from core.steps.logit_lens import exactness_tolerance

    z = torch.tensor([[3.0, -250.0], [7.0, 2.0]])
    assert exactness_tolerance("float32", z) == pytest.approx(1e-4 * 250.0)
    assert exactness_tolerance("bfloat16", z * 0.001) == pytest.approx(3e-2)  # max(1, ·)


# ----------------------------------------------------------------------------------------------------------------
# Capture and attention analysis without full-size temporaries


def test_float32_fill_equals_plain_stack():
    import torch

    from core.model.capture import stack_float32

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        ts = [torch.rand(1, 3, 5, 5).to(dtype) for _ in range(4)]
        ref = torch.stack([t[0] for t in ts]).float().numpy()
        got = stack_float32(list(ts))
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, ref)
    ts = [torch.rand(1, 2, 2) for _ in range(3)]
    stack_float32(ts)
    assert ts == [None, None, None]  # each model-dtype tensor is let go once copied


def test_row_entropy_per_layer_equals_whole_array_formula():
    from core.steps.attention import head_features, row_entropy

    rng = np.random.default_rng(0)
    a = rng.random((3, 4, 9, 9)).astype(np.float32)
    a[..., ::3] = 0.0
    a /= a.sum(-1, keepdims=True)
    safe = np.where(a > 0, a, np.float32(1.0))
    ref = 0.0 - np.einsum("...ij,...ij->...i", a, np.log(safe)).astype(np.float64)
    np.testing.assert_array_equal(row_entropy(a), ref)
    special = np.zeros(9, bool)
    special[[0, 5]] = True
    feats, names, _ = head_features(a, special, causal=None)
    rows = np.arange(1, 9)
    ref_special = a[:, :, rows][..., special].sum(-1, dtype=np.float64).mean(-1)  # the plain expression
    np.testing.assert_array_equal(feats[:, names.index("special_tokens")], ref_special.reshape(-1))


def _batched_metrics(hidden, keep=None):
    """The plain reference: every layer converted at once, one batched eigendecomposition."""
    from core.steps import metrics as M

    H = np.asarray(hidden, dtype=np.float64)
    if keep is not None:
        H = H[:, keep]
    s2 = M.squared_singular_values(H)
    return {
        "effective_rank": M._effective_rank_from_s2(s2),
        "participation_ratio": M._participation_ratio_from_s2(s2),
        "intrinsic_dim_95": M._intrinsic_dim_from_s2(s2),
        "activation_entropy": M.activation_entropy(H),
        "cosine_to_input": M.cosine_to_input(H, H[0]),
    }


@pytest.mark.parametrize("shape", [(13, 40, 96), (4, 30, 16), (3, 1, 8)])
def test_layer_metrics_layer_by_layer_equal_the_batched_reference(shape):
    from core.steps.metrics import layer_metrics

    rng = np.random.default_rng(1)
    h = rng.standard_normal(shape).astype(np.float32)
    got, ref = layer_metrics(h), _batched_metrics(h)
    assert all(np.array_equal(got[k], ref[k], equal_nan=True) for k in ref)
    keep = np.arange(shape[1]) % 3 != 0
    if keep.any():
        got, ref = layer_metrics(h, keep), _batched_metrics(h, keep)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------------------------------------------
# Zero-copy deserialisation (cache hits)


def test_result_arrays_are_views_on_the_serialised_bytes(tiny_gpt2):
    from core.infra import serialize

    r = analyze(tiny_gpt2, TEXT, compute_gradients=False)
    data = r.to_bytes()
    back = AnalysisResult.from_bytes(data)
    assert results_equal(r, back, ignore=())
    assert not back.attentions.flags.owndata and not back.attentions.flags.writeable  # a view on `data`
    start = np.frombuffer(data, np.uint8).ctypes.data
    assert start <= back.attentions.ctypes.data < start + len(data)  # inside `data`: no copy was made
    assert (back.attentions.ctypes.data - start) % 64 == 0  # aligned within the buffer
    writable = serialize.loads(bytearray(data))
    assert writable.attentions.flags.writeable and results_equal(writable, r, ignore=())


def test_the_earlier_zip_format_is_still_read(tiny_gpt2):
    from core.infra import serialize

    r = analyze(tiny_gpt2, TEXT, compute_gradients=False)
    arrays: dict[str, np.ndarray] = {}
    doc = serialize._encode(r, arrays)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("object.json", json.dumps(doc))
        npz = io.BytesIO()
        np.savez(npz, **arrays)
        zf.writestr("arrays.npz", npz.getvalue())
    assert results_equal(serialize.loads(buf.getvalue()), r, ignore=())


def _blob(header: dict, payload: bytes = b"") -> bytes:
    from core.infra import serialize

    h = json.dumps(header).encode()
    head = serialize.MAGIC + struct.pack("<Q", len(h)) + h
    return head + bytes(-len(head) % 64) + payload


def test_deserialisation_refuses_object_arrays_and_truncated_data():
    from core.infra import serialize

    ok = _blob(
        {"object": {"__ndarray__": "a0"}, "arrays": {"a0": {"dtype": "<f8", "shape": [2], "offset": 0}}},
        np.array([1.0, 2.0]).tobytes(),
    )
    assert serialize.loads(ok).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="refusing"):
        serialize.loads(
            _blob(
                {"object": {"__ndarray__": "a0"}, "arrays": {"a0": {"dtype": "|O", "shape": [1], "offset": 0}}},
                bytes(8),
            )
        )
    with pytest.raises(ValueError, match="truncated"):
        serialize.loads(ok[:-8])
    with pytest.raises(ValueError, match="truncated"):
        serialize.loads(ok[: len(serialize.MAGIC) + 12])


# ----------------------------------------------------------------------------------------------------------------
# Devices


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    import torch

    import core.model.loading as M
    from core.infra.errors import ModelUnavailableError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(M, "_mps_available", lambda: True)
    assert M.resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert M.resolve_device("auto") == "mps"
    monkeypatch.setattr(M, "_mps_available", lambda: False)
    assert M.resolve_device("auto") == "cpu"
    with pytest.raises(ModelUnavailableError, match="MPS"):
        M.resolve_device("mps")
    assert [M.resolve_dtype("auto", d) for d in ("cuda", "cuda:1", "mps", "cpu")] == [
        "bfloat16",
        "bfloat16",
        "bfloat16",
        "float32",
    ]
    assert M.resolve_dtype("float32", "cuda") == "float32"
    assert M.resolve_device_map("none") is None and M.resolve_device_map("auto") == "auto"
    with pytest.raises(ModelUnavailableError, match="device map"):
        M.resolve_device_map("balanced")


def test_device_map_auto_loads_and_analyses_like_a_plain_load(tiny_dirs, tiny_gpt2):
    from core.model.loading import load_model

    mapped = load_model(str(tiny_dirs["gpt2"]), dtype="float32", device="cpu", device_map="auto")
    assert mapped.device == "cpu"
    a = analyze(tiny_gpt2, TEXT, integrated_gradients=True, ig_steps=4)
    b = analyze(mapped, TEXT, integrated_gradients=True, ig_steps=4)
    assert results_close(a, b)


def _dispatch_offloaded(loaded, tmp_path, offload: list[str]):
    """Dispatch `loaded.model` through accelerate with the named top-level modules offloaded to disk: their
    weights sit on the meta device and accelerate's hooks bring them to the execution device per call (the same
    hooks that move activations between GPUs under device_map="auto")."""
    from accelerate import dispatch_model

    base = loaded.model.base_model_prefix
    dm = {f"{base}.{n}": "cpu" for n, _ in getattr(loaded.model, base).named_children()}
    dm.update({n: "cpu" for n, _ in loaded.model.named_children() if n != base})
    for name in offload:
        dm[name] = "disk"
    dispatch_model(loaded.model, device_map=dm, offload_dir=str(tmp_path))
    return loaded


def _steps(loaded) -> dict[str, np.ndarray]:
    """The steps this issue routes across devices, run one by one: capture, layer metrics, logit lens, attention
    analysis, rollout, gradient × input with head scores, integrated gradients (and greedy generation)."""
    import torch

    from core.steps.attention import analyse_attention
    from core.steps.attribution import attention_rollout, gradient_x_input, integrated_gradients
    from core.steps.logit_lens import compute_logit_lens
    from core.steps.metrics import layer_metrics

    cap = _capture(loaded)
    T = cap.input_ids.shape[1]
    pos = T - 1 if loaded.family == "causal_lm" else 2
    out = {"hidden": cap.hidden_states, "attentions": cap.attentions, "logits": cap.logits.numpy()}
    out.update({f"metric {k}": v for k, v in layer_metrics(cap.hidden_states).items()})
    lens = compute_logit_lens(loaded, cap.hidden_states, pos, 5, final_logits=cap.logits, grid_max_positions=4)
    out.update({"lens probs": lens.grid_probs, "lens ids": lens.grid_ids.astype(float), "lens final": lens.final_prob})
    out["head features"] = analyse_attention(cap.attentions, cap.special_mask).features
    out["rollout"] = attention_rollout(cap.attentions)
    pred = int(torch.argmax(cap.logits[pos]))
    with loaded.lock:
        gxi, heads, fx = gradient_x_input(loaded, cap.input_ids, cap.attention_mask, pos, pred, heads=True)
        ig, fx_ig, f0 = integrated_gradients(loaded, cap.input_ids, cap.attention_mask, pos, pred, steps=4)
    out.update({"gxi": gxi, "head scores": heads, "f": np.array([fx, fx_ig, f0]), "ig": ig})
    if loaded.family == "causal_lm":
        from core.steps.predictions import GenerationSettings, generate

        gen = GenerationSettings(max_new_tokens=5, use_chat_template=False)
        out["generated"] = np.array(generate(loaded, "The cat", gen).token_ids, dtype=float)
    return out


def _assert_steps_close(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], rtol: float = 1e-5, atol: float = 1e-6
) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=atol, equal_nan=True, err_msg=k)


@pytest.mark.parametrize(
    "kind,offload",
    [
        ("gpt2", ["transformer.h"]),
        ("llama", ["model.layers", "model.norm", "lm_head"]),
        ("bert", ["bert.encoder", "cls"]),
    ],
)
def test_every_step_runs_with_layers_placed_by_accelerate(kind, offload, tiny_dirs, tmp_path):
    import torch

    from core.infra.devices import output_device
    from core.model.loading import load_model

    plain = load_model(str(tiny_dirs[kind]), dtype="float32", device="cpu")
    placed = _dispatch_offloaded(load_model(str(tiny_dirs[kind]), dtype="float32", device="cpu"), tmp_path, offload)
    assert any(p.device.type == "meta" for p in placed.model.parameters())  # weights really left the CPU
    assert output_device(placed.model) == torch.device("cpu")  # the execution device, not "meta"
    ref = _steps(plain)
    _assert_steps_close(ref, _steps(placed))
    with pytest.raises(AssertionError):  # the comparison can fail
        _assert_steps_close(ref, {**ref, "attentions": ref["attentions"] * 1.01})


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_half_of_the_blocks_placed_elsewhere(kind, tiny_dirs, tmp_path):
    """The split map of tests/test_gpu.py (embeddings + first half of the blocks | the rest + head) with the second
    part offloaded to disk instead of a second device: the map covers every weight, and the steps are unchanged."""
    from accelerate import dispatch_model
    from test_gpu import split_map

    from core.model.loading import load_model

    plain = load_model(str(tiny_dirs[kind]), dtype="float32", device="cpu")
    placed = load_model(str(tiny_dirs[kind]), dtype="float32", device="cpu")
    dm = split_map(placed.model, kind, "cpu", "disk")
    assert "cpu" in dm.values() and "disk" in dm.values()
    dispatch_model(placed.model, device_map=dm, offload_dir=str(tmp_path))
    _assert_steps_close(_steps(plain), _steps(placed))


def test_input_and_output_devices_follow_the_weights(tiny_llama):
    import copy

    import torch

    from core.infra.devices import input_device, output_device

    model = copy.deepcopy(tiny_llama.model)
    assert input_device(model) == output_device(model) == torch.device("cpu")
    model.lm_head.to("meta")  # a head on another device than the embeddings
    assert input_device(model) == torch.device("cpu") and output_device(model) == torch.device("meta")


def test_a_cache_hit_maps_the_stored_file(tiny_gpt2, tmp_path):
    """Large entries live in files: the hit's arrays are views on a read-only memory map of the file."""
    import mmap

    from core.run.cache import ResultCache

    cache = ResultCache(tmp_path / "c")
    r = analyze(tiny_gpt2, TEXT * 3, compute_gradients=False, cache=cache)
    hit = analyze(tiny_gpt2, TEXT * 3, compute_gradients=False, cache=cache)
    assert hit.cache_hit and results_equal(hit, r)
    assert isinstance(cache._read(r.cache_key), mmap.mmap)  # the entry is a file (> diskcache's 32 KiB)
    assert not hit.attentions.flags.writeable and not hit.attentions.flags.owndata
    small = ResultCache(tmp_path / "small")
    small._cache.set("k", b"tiny value")  # kept in the database: plain bytes
    assert small._read("k") == b"tiny value" and small._read("missing") is None
    cache.close()
    small.close()


# ----------------------------------------------------------------------------------------------------------------
# The LM head only at the positions the steps read


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("tiny_gpt2", {}),
        ("tiny_gpt2", {"lens_position": 3, "target_position": 5, "compute_gradients": True}),
        ("tiny_gpt2", {"lens_full_grid": True}),
        ("tiny_bert", {"mask_word": "dog"}),
        ("tiny_bert", {}),
        ("tiny_llama", {"lens_position": 999}),
    ],
)
def test_analysis_with_logits_at_read_positions_equals_full_logits(name, overrides, request, monkeypatch):
    """analyze() with the head run at the read positions only gives the result of the full [T, V] logits."""
    import core.analysis.pipeline as analysis
    import core.steps.logit_lens as lens_mod
    from core.model.capture import PositionLogits

    loaded = request.getfixturevalue(name)
    monkeypatch.setattr(lens_mod, "GRID_MAX_MACS_CPU", 1.0)  # a 2-column grid window, as a long text gets
    monkeypatch.setattr(lens_mod, "GRID_SMALL_MACS", 0.0)
    monkeypatch.setattr(lens_mod, "GRID_MIN_COLUMNS", 2)
    seen = []
    real_capture = analysis.capture

    def spy(*args, **kwargs):
        cap = real_capture(*args, **kwargs)
        seen.append(cap.logits)
        return cap

    monkeypatch.setattr(analysis, "capture", spy)
    fast = analyze(loaded, TEXT, **overrides)
    monkeypatch.setattr(analysis, "logit_positions", lambda loaded, st: None)
    full = analyze(loaded, TEXT, **overrides)
    assert not isinstance(seen[1], PositionLogits)
    if overrides.get("lens_full_grid"):  # the grid reads every position: the head runs on all of them
        assert not isinstance(seen[0], PositionLogits)
    else:
        assert isinstance(seen[0], PositionLogits) and seen[0].rows.shape[0] < seen[1].shape[0]
    for p in getattr(seen[0], "positions", range(seen[1].shape[0])):
        np.testing.assert_allclose(seen[0][p].numpy(), seen[1][p].numpy(), rtol=1e-5, atol=1e-5)
    assert results_close(fast, full), name


def test_position_logits_index_like_the_full_tensor():
    import torch

    from core.model.capture import PositionLogits

    full = torch.arange(40, dtype=torch.float32).reshape(8, 5)
    pl = PositionLogits(full[[1, 2, 3, 6]], [1, 2, 3, 6])
    assert torch.equal(pl[6], full[6]) and torch.equal(pl[1:4], full[1:4])
    assert pl.shape == (4, 5)
    lo, hi = pl.aminmax()
    assert float(lo) == 5.0 and float(hi) == 34.0
    with pytest.raises(KeyError, match="not at 4"):
        pl[4]
    with pytest.raises(KeyError, match="not at 4"):
        pl[3:5]


# ----------------------------------------------------------------------------------------------------------------
# Attention maps of a 16-bit model kept in float16


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_half_precision_maps_equal_the_models_and_give_the_float32_sections(tiny_dirs, family):
    import torch

    from core.export.bundle import bundle_files
    from core.model.loading import load_model
    from core.steps.attention import analyse_attention
    from core.steps.attribution import attention_rollout

    loaded = load_model(str(tiny_dirs[family]), dtype="bfloat16", device="cpu")
    r = analyze(loaded, TEXT, compute_gradients=False)
    assert r.attentions.dtype == np.float16 and r.hidden_states.dtype == np.float32
    # the model's own bfloat16 maps, widened to float32: float16 holds them to within 6e-8 (exactly from 2^-14 up)
    enc = loaded.tokenizer(TEXT, return_tensors="pt")
    with torch.inference_mode():
        out = loaded.model(**enc, output_attentions=True)
    ref = torch.stack([a[0].float() for a in out.attentions]).numpy()
    np.testing.assert_allclose(r.attentions.astype(np.float32), ref, rtol=0, atol=6e-8)
    big = ref >= 2**-14
    assert np.array_equal(r.attentions.astype(np.float32)[big], ref[big])
    # the per-layer widening inside the steps equals running them on a float32 copy of the maps
    wide = r.attentions.astype(np.float32)
    sec = analyse_attention(wide, r.special_mask, True, r.settings.n_clusters)
    np.testing.assert_array_equal(sec.features, r.attention.features)
    np.testing.assert_allclose(attention_rollout(wide), r.attribution.rollout_matrix, rtol=1e-12, atol=1e-15)
    from core.infra.formats import member_bytes

    files = bundle_files(r)
    arr = np.load(io.BytesIO(member_bytes(files["attentions.npy"])))
    assert arr.dtype == np.float32 and np.array_equal(arr, wide)  # the bundle stays float32
    back = AnalysisResult.from_bytes(r.to_bytes())  # and the cache keeps float16
    assert back.attentions.dtype == np.float16 and np.array_equal(back.attentions, r.attentions)


# ----------------------------------------------------------------------------------------------------------------
# Activation checkpointing of the gradient pass


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_bert", "tiny_llama"])
def test_checkpointed_gradient_pass_equals_the_plain_one(name, request):
    import torch

    from core.steps.attribution import _block_list, gradient_x_input

    loaded = request.getfixturevalue(name)
    cap = _capture(loaded)
    pos = cap.input_ids.shape[1] - 1 if loaded.family == "causal_lm" else 2
    pred = int(torch.argmax(cap.logits[pos]))
    blocks = _block_list(loaded.model, loaded.n_layers)
    assert len(blocks) == loaded.n_layers
    calls = []
    handles = [b.register_forward_pre_hook(lambda m, a: calls.append(m)) for b in blocks]
    try:
        plain = gradient_x_input(loaded, cap.input_ids, cap.attention_mask, pos, pred, heads=True, checkpoint=False)
        n_plain = len(calls)
        ck = gradient_x_input(loaded, cap.input_ids, cap.attention_mask, pos, pred, heads=True, checkpoint=True)
    finally:
        for h in handles:
            h.remove()
    assert n_plain == loaded.n_layers and len(calls) == 2 * loaded.n_layers  # recomputed in the backward pass
    assert all("forward" not in b.__dict__ for b in blocks)  # the blocks' own forward is back
    np.testing.assert_allclose(ck[0], plain[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ck[1], plain[1], rtol=1e-5, atol=1e-7)
    assert ck[2] == pytest.approx(plain[2], abs=1e-6)


def test_checkpointing_is_chosen_by_the_activation_estimate(tiny_gpt2, monkeypatch):
    import core.steps.attribution as attribution

    seen = []
    real = attribution.checkpointed_blocks

    def spy(model, n_layers, enabled=True):
        seen.append(enabled)
        return real(model, n_layers, enabled)

    monkeypatch.setattr(attribution, "checkpointed_blocks", spy)
    limit = attribution.CHECKPOINT_MIN_BYTES
    r = analyze(tiny_gpt2, TEXT)
    monkeypatch.setattr(attribution, "CHECKPOINT_MIN_BYTES", 0)
    r2 = analyze(tiny_gpt2, TEXT)
    assert seen == [False, True]
    np.testing.assert_allclose(r2.attribution.grad_x_input, r.attribution.grad_x_input, rtol=1e-5, atol=1e-7)
    big = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(intermediate_size=5632)))
    big.hidden_size, big.n_layers, big.dtype = 2048, 22, "bfloat16"
    assert attribution.saved_activation_bytes(big, 512) > limit  # TinyLlama at 512 tokens: recomputed
    assert attribution.saved_activation_bytes(big, 128) < limit


def _held_head_outputs_reference(loaded, ids, mask, pos, pred):
    """The gradient pass as it was before the head scores were reduced in the backward pass: every layer's head
    output z_l held from the forward pass and ∂f/∂z_l taken with respect to all of them at once (plain autograd,
    no checkpointing, sdpa as the step uses)."""
    import torch

    from core.infra.devices import fast_attention
    from core.model.hooks import hooked
    from core.steps.attribution import head_projection_modules, target_logprob_fn, token_embeddings

    mods = head_projection_modules(loaded.model, loaded.n_layers)
    held = []
    x = token_embeddings(loaded, ids)
    f = target_logprob_fn(loaded, mask, pos, pred)
    with fast_attention(loaded.model), torch.inference_mode(False), torch.enable_grad():
        emb = x.clone().requires_grad_(True)
        with hooked((m, "pre", lambda _m, args: held.append(args[0])) for m in mods):
            val = f(emb)
        grads = torch.autograd.grad(val.sum(), [emb, *held])
    gxi = (grads[0] * emb.detach())[0].sum(-1).double().numpy()
    rows = []
    for z, g in zip(held, grads[1:]):
        zz = (z.detach() * g)[0]
        rows.append(zz.reshape(zz.shape[0], loaded.n_heads, -1).sum((0, 2)).double().numpy())
    return gxi, np.stack(rows), float(val.detach()[0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_head_scores_reduced_in_the_backward_pass_equal_the_held_outputs(tiny_dirs, dtype):
    """Each layer's head scores are reduced as its ∂f/∂z arrives (a tap whose saved z a checkpointed block
    recomputes) instead of holding all L head outputs and their L gradients: the same numbers as the held path,
    bit for bit, with and without checkpointing; the tap is applied again when a checkpointed block recomputes."""
    import torch

    import core.steps.attribution as A
    from core.model.loading import load_model

    loaded = load_model(str(tiny_dirs["llama"]), dtype=dtype, device="cpu")
    cap = _capture(loaded)
    pos = cap.input_ids.shape[1] - 1
    pred = int(torch.argmax(cap.logits[pos]))
    ref = _held_head_outputs_reference(loaded, cap.input_ids, cap.attention_mask, pos, pred)
    tap = A._head_tap()
    real_apply = tap.apply
    applied = []
    try:
        tap.apply = lambda z, sink: applied.append(1) or real_apply(z, sink)
        for checkpoint in (False, True):
            applied.clear()
            gxi, heads, fx = A.gradient_x_input(
                loaded, cap.input_ids, cap.attention_mask, pos, pred, heads=True, checkpoint=checkpoint
            )
            assert len(applied) == loaded.n_layers * (2 if checkpoint else 1)
            assert np.array_equal(gxi, ref[0]) and np.array_equal(heads, ref[1]) and fx == ref[2]
    finally:
        del tap.apply
    assert np.abs(ref[1]).max() > 0
