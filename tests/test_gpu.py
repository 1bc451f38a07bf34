"""The analysis on a CUDA GPU against the same analysis on the CPU (marker `gpu`; skipped without CUDA).

Run by `bash bench/gpu_check.sh` on a GPU machine. Tiny random GPT-2, BERT and Llama models (no download), in
float32 and bfloat16, on one GPU and through accelerate's device map. Tolerances: float32 on a GPU differs from
the CPU by kernel order only (TF32 matmuls are switched off for the comparison); bfloat16 keeps 8 bits of mantissa,
so its comparison is against the CPU run in bfloat16 with a tolerance of that order.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bash bench/gpu_check.sh)"),
]

TEXT = "The cat sat on the mat. The dog sat on the log, and the bird flew over the house."
KINDS = ("gpt2", "bert", "llama")
#: (rtol, atol) per dtype for attentions, hidden states, metrics and attributions.
TOL = {"float32": (2e-3, 2e-4), "bfloat16": (5e-2, 3e-2)}


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _load(path, dtype, device, device_map=None):
    from core.model.loading import load_model

    return load_model(str(path), dtype=dtype, device=device, device_map=device_map)


def _close(a, b, dtype: str, what: str) -> None:
    rtol, atol = TOL[dtype]
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, what
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=what)


def _compare(cpu, gpu, dtype: str) -> None:
    _close(cpu.attentions, gpu.attentions, dtype, "attentions")
    _close(cpu.hidden_states, gpu.hidden_states, dtype, "hidden states")
    for m in cpu.layer_metrics:
        # intrinsic dimension is an integer count: allow one step where the 95 % threshold sits between two
        if m == "intrinsic_dim_95":
            assert np.max(np.abs(cpu.layer_metrics[m] - gpu.layer_metrics[m])) <= 1
            continue
        _close(cpu.layer_metrics[m], gpu.layer_metrics[m], dtype, m)
    _close(cpu.attention.entropy, gpu.attention.entropy, dtype, "attention entropy")
    _close(cpu.attribution.rollout, gpu.attribution.rollout, dtype, "rollout")
    if cpu.attribution.grad_x_input is not None:
        scale = max(1.0, float(np.abs(cpu.attribution.grad_x_input).max()))
        _close(cpu.attribution.grad_x_input / scale, gpu.attribution.grad_x_input / scale, dtype, "grad x input")
    if cpu.logit_lens is not None:
        _close(cpu.logit_lens.final_prob, gpu.logit_lens.final_prob, dtype, "lens P(final)")
        assert gpu.logit_lens.grid_positions == list(range(gpu.n_tokens))  # complete grid on a GPU
    if cpu.predictions is not None and cpu.predictions.candidates:
        p_cpu = cpu.predictions.candidates[0][0]["probability"]
        p_gpu = {c["token_id"]: c["probability"] for c in gpu.predictions.candidates[0]}
        top = cpu.predictions.candidates[0][0]["token_id"]
        if top in p_gpu:
            assert abs(p_gpu[top] - p_cpu) <= TOL[dtype][1] + TOL[dtype][0] * p_cpu


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_analysis_matches_cpu(kind, dtype, tiny_dirs):
    from core import analyze

    cpu = analyze(_load(tiny_dirs[kind], dtype, "cpu"), TEXT, integrated_gradients=True, ig_steps=8)
    loaded = _load(tiny_dirs[kind], dtype, "cuda")
    assert loaded.device.startswith("cuda") and next(loaded.model.parameters()).is_cuda
    gpu = analyze(loaded, TEXT, integrated_gradients=True, ig_steps=8)
    assert gpu.model.device.startswith("cuda") and gpu.model.dtype == dtype
    _compare(cpu, gpu, dtype)


def test_auto_device_and_dtype_pick_the_gpu(tiny_dirs):
    loaded = _load(tiny_dirs["gpt2"], "auto", "auto")
    assert loaded.device == "cuda" and loaded.dtype == "bfloat16"


@pytest.mark.parametrize("kind", KINDS)
def test_device_map_auto_on_the_gpu(kind, tiny_dirs):
    from core import analyze
    from core.model.loading import placement

    cpu = analyze(_load(tiny_dirs[kind], "float32", "cpu"), TEXT)
    mapped = _load(tiny_dirs[kind], "float32", "cuda", device_map="auto")
    assert mapped.device.startswith("cuda")
    devices = set((placement(mapped.model) or {"": str(next(mapped.model.parameters()).device)}).values())
    assert all(str(d).startswith(("cuda", "0", "1", "2", "3")) or d == 0 for d in devices), devices
    _compare(cpu, analyze(mapped, TEXT), "float32")


def split_map(model, kind: str, first: object, second: object) -> dict[str, object]:
    """A device map with the embeddings and the first half of the blocks on `first`, the other blocks, the final
    norm and the head on `second` (tests/test_perf_paths.py runs it on the CPU with `second` = "disk")."""
    prefix = model.base_model_prefix
    base = getattr(model, prefix)
    dm: dict[str, object] = {}
    for name, child in base.named_children():
        full = f"{prefix}.{name}"
        if kind == "bert" and name == "encoder":
            blocks, at = child.layer, f"{full}.layer"
        elif name in ("h", "layers"):
            blocks, at = child, full
        else:
            blocks, at = None, full
        if blocks is None:
            dm[full] = first if name in ("wte", "wpe", "embed_tokens", "embeddings", "rotary_emb", "drop") else second
            continue
        for i in range(len(blocks)):
            dm[f"{at}.{i}"] = first if i < len(blocks) // 2 else second
    for name, _ in model.named_children():
        if name != prefix:
            dm[name] = second
    return dm


@pytest.mark.parametrize("kind", KINDS)
def test_layers_split_between_gpu_and_cpu(kind, tiny_dirs):
    """Half of the blocks on the GPU, the rest and the head kept on the CPU (accelerate streams their weights to the
    GPU): capture, metrics, lens, attention analysis, attribution and generation through accelerate's hooks. The
    steps that read weights directly (direct logit attribution, flow, neuron factors, query-key) need the weights
    materialised and are not part of this comparison."""
    from accelerate import dispatch_model
    from test_perf_paths import _assert_steps_close, _steps

    from core.infra.devices import input_device, output_device

    cpu_model = _load(tiny_dirs[kind], "float32", "cpu")
    split = _load(tiny_dirs[kind], "float32", "cpu")
    # with a GPU main device, accelerate keeps the "cpu" part's weights on the CPU and streams them to the GPU
    dispatch_model(split.model, device_map=split_map(split.model, kind, 0, "cpu"), main_device=0)
    split.device = str(input_device(split.model))
    assert split.device.startswith("cuda") and output_device(split.model).type == "cuda"
    _assert_steps_close(_steps(cpu_model), _steps(split), *TOL["float32"])


@pytest.mark.parametrize("kind", KINDS)
def test_cuda_views_and_checkpointed_gradients_match_cpu(kind, tiny_dirs, monkeypatch):
    """The deeper views on the GPU (added later with add_views) and the gradient pass with activation
    checkpointing (forced on) against the CPU."""
    import core.steps.attribution as attribution
    from core import analyze
    from core.analysis.pipeline import add_views

    monkeypatch.setattr(attribution, "CHECKPOINT_MIN_BYTES", 0)
    cpu = analyze(_load(tiny_dirs[kind], "float32", "cpu"), TEXT, views="all")
    loaded = _load(tiny_dirs[kind], "float32", "cuda")
    gpu = add_views(loaded, analyze(loaded, TEXT), "all")
    _compare(cpu, gpu, "float32")
    assert gpu.views == cpu.views
    if cpu.dla is not None:
        _close(cpu.dla.values, gpu.dla.values, "float32", "direct logit attribution")
    if cpu.neuron_factors is not None:
        assert (
            gpu.neuron_factors is not None
            and gpu.neuron_factors.token_factors.shape == cpu.neuron_factors.token_factors.shape
        )
