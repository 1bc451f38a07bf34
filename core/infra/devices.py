"""Where tensors live and which attention kernel a pass uses: helpers shared by the capture, the logit lens,
attribution and generation.

* `input_device(model)` / `output_device(model)`: the device of the input embeddings (where token ids and
  `inputs_embeds` must go) and of the output embeddings (where hidden states are decoded). Without a device map
  both are the model's one device; with `device_map="auto"` (accelerate) the first and last layers may sit on
  different devices, and accelerate's hooks move activations between the layers in between.
* `fast_attention(model)`: a context manager that runs a pass with PyTorch's fused attention (sdpa) instead of
  the eager implementation. Only the capture pass needs eager attention (it returns the attention weights); the
  gradient pass and generation do not, and sdpa there saves the T×T attention maps that eager attention keeps for
  the backward pass. The previous implementation is restored on exit. Call it under the model's lock: the switch is
  a property of the shared model object.
* `cpu_dtype_warning(dtype, device)`: one line when a 16-bit dtype runs on a CPU without native support for it
  (torch's capability queries), with the slowdown against float32 measured once per process.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

#: Use sdpa for the passes that need no attention weights (gradients, generation). Tests compare both.
FAST_ATTENTION = True


def _param_device(module: Any) -> Any | None:
    """Where `module` computes: accelerate's execution device when it dispatched the module (its weights may be
    offloaded to the CPU or disk, showing the meta device), else the device of its weights."""
    hook = getattr(module, "_hf_hook", None)
    exec_dev = getattr(hook, "execution_device", None)
    if exec_dev is not None:
        import torch

        return torch.device(exec_dev if not isinstance(exec_dev, int) else f"cuda:{exec_dev}")
    weight = getattr(module, "weight", None)
    if weight is not None:
        return weight.device
    for p in module.parameters():
        return p.device
    return None


def input_device(model: Any) -> Any:
    """Device of the input embedding weights (torch.device)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    dev = _param_device(emb) if emb is not None else None
    if dev is None:
        dev = next(model.parameters()).device
    return dev


def output_device(model: Any) -> Any:
    """Device of the output embedding (language-model head) weights; the input device when there is no head."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    dev = _param_device(emb) if emb is not None else None
    return dev if dev is not None else input_device(model)


def module_device(module: Any, default: Any) -> Any:
    """Device of a module's parameters (e.g. a final norm), or `default` when it has none."""
    dev = _param_device(module) if module is not None else None
    return dev if dev is not None else default


def _implementation(model: Any) -> str:
    return str(getattr(model.config, "_attn_implementation", "eager") or "eager")


@contextlib.contextmanager
def fast_attention(model: Any, enabled: bool = True) -> Iterator[str]:
    """Run the enclosed passes with sdpa attention when the model supports switching; yields the implementation in
    use ("sdpa", or the model's own when switching is off, unsupported or fails)."""
    before = _implementation(model)
    switched = False
    if enabled and FAST_ATTENTION and before == "eager" and hasattr(model, "set_attn_implementation"):
        can = getattr(model, "_can_set_attn_implementation", None)
        if can is None or can():
            try:
                model.set_attn_implementation("sdpa")
                switched = _implementation(model) == "sdpa"
            except (ValueError, ImportError, NotImplementedError) as exc:  # no sdpa for this architecture
                log.info("sdpa not available for %s: %s", type(model).__name__, exc)
            if not switched and _implementation(model) != before:
                model.set_attn_implementation(before)
    try:
        yield _implementation(model)
    finally:
        if switched:
            model.set_attn_implementation(before)


# ----------------------------------------------------------------------------------------------------------------
# 16-bit dtypes on a CPU. Without native support (AVX-512 BF16 / AMX for bfloat16, AMX-FP16 for float16) torch
# emulates them and a matmul runs many times slower than in float32 (issue 24: > 100× on an AVX2 EPYC), so an
# explicit 16-bit dtype on such a CPU gets a warning with the slowdown measured here once per process.

#: Side of the square matmul that measures the slowdown (256³ multiply-adds: about a millisecond in float32).
SLOWDOWN_SIZE = 256
_slowdown: dict[str, float] = {}


def cpu_computes_natively(dtype: str) -> bool:
    """Whether this CPU computes `dtype` natively, by torch's own capability queries (float32 always)."""
    import torch

    if dtype == "bfloat16":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if dtype == "float16":
        return bool(torch.cpu._is_amx_fp16_supported())
    return True


def cpu_slowdown(dtype: str) -> float:
    """Time of a SLOWDOWN_SIZE² matmul in `dtype` over the same in float32 on this CPU (best of 3 after a warm-up;
    measured once per process and dtype)."""
    if dtype not in _slowdown:
        import time

        import torch

        def best(dt: Any) -> float:
            a = torch.randn(SLOWDOWN_SIZE, SLOWDOWN_SIZE, generator=torch.Generator().manual_seed(0)).to(dt)
            times = []
            for _ in range(4):
                t = time.perf_counter()
                torch.matmul(a, a)
                times.append(time.perf_counter() - t)
            return min(times[1:])

        _slowdown[dtype] = best(getattr(torch, dtype)) / max(best(torch.float32), 1e-9)
    return _slowdown[dtype]


def cpu_dtype_warning(dtype: str, device: str) -> str | None:
    """One line when a 16-bit `dtype` runs on a CPU that does not compute it natively, else None."""
    if device.split(":")[0] != "cpu" or dtype not in ("bfloat16", "float16") or cpu_computes_natively(dtype):
        return None
    import torch

    f = cpu_slowdown(dtype)
    advice = "; load the model in float32 for speed" if f > 1.5 else ""
    return (
        f"{dtype} on this CPU ({torch.backends.cpu.get_cpu_capability()}, no native {dtype}) takes "
        f"{f:.1f}× the time of float32 (a {SLOWDOWN_SIZE}² matmul measured here){advice}"
    )
