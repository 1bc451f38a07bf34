"""Sparse autoencoders in SAELens's on-disk format: reading a folder, checking it against a model, encoding.

A folder holds `cfg.json` (d_in, d_sae, architecture, hook_name, apply_b_dec_to_input, normalize_activations, the
model name either at the top level or under `metadata`, `k` for TopK) and `sae_weights.safetensors` (W_enc [d_in,
d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], plus `threshold` [d_sae] for JumpReLU). Only safetensors
is read, never a pickle. The encoders, with x the site's activation [.., d_in]:

    x' = norm_in(x) − b_dec · [apply_b_dec_to_input]        pre = x' W_enc + b_enc
    standard:  f = ReLU(pre)
    jumprelu:  f = ReLU(pre) · [pre > threshold]
    topk:      f = ReLU(pre) on the k largest entries of pre, 0 elsewhere
    x̂ = norm_out(f W_dec + b_dec)

norm_in / norm_out follow `normalize_activations` as SAELens applies it at inference: "none" and
"expected_average_only_in" (its scaling factor is folded into the weights when SAELens saves) are the identity;
"constant_norm_rescale" scales x to norm √d_in (x̂ is scaled back); "layer_norm" centres x and divides by its
(unbiased) standard deviation + 1e-5 (x̂ gets the mean and standard deviation back).

Refusals are one-line InputErrors: a folder that is not an SAE, an unknown architecture or normalisation, weights
whose shapes disagree with cfg.json, a hook the model does not have, a width that differs from the site's. A model
name in the metadata that differs from the loaded model's is a warning (fine-tunes share SAEs). Public instances:
`core.infra.guards.check_sae_folder` (TMA_ALLOW_LOCAL_MODELS, TMA_MAX_SAE_MB) runs before anything is read.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.infra import guards
from core.infra.errors import InputError
from core.model.sites import parse

if TYPE_CHECKING:
    import torch

    from core.model.arch import ModelParts

ARCHITECTURES = ("standard", "jumprelu", "topk")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
#: cfg.json larger than this is not an SAE config.
MAX_CFG_BYTES = 1_000_000
LN_EPS = 1e-5


@dataclass(frozen=True, eq=False)
class SAE:
    """One loaded sparse autoencoder: its config and float32 CPU weights (see the module docstring)."""

    folder: str
    name: str  # the folder's last component, for tables and plots
    hook_name: str
    architecture: str
    d_in: int
    d_sae: int
    apply_b_dec_to_input: bool
    normalize_activations: str
    k: int | None
    model_name: str | None
    fingerprint: str  # sha256 of cfg.json + the weights file
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor | None

    # -- the encoder and decoder ------------------------------------------------------------------------------------
    def norm_in(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
        """x after the run-time normalisation, and what norm_out needs to undo it."""
        if self.normalize_activations == "constant_norm_rescale":
            s = (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            return x * s, (s,)
        if self.normalize_activations == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            xc = x - mu
            std = xc.std(dim=-1, keepdim=True)
            return xc / (std + LN_EPS), (mu, std)
        return x, ()

    def norm_out(self, y: torch.Tensor, state: tuple[Any, ...]) -> torch.Tensor:
        if self.normalize_activations == "constant_norm_rescale":
            return y / state[0]
        if self.normalize_activations == "layer_norm":
            return y * state[1] + state[0]
        return y

    def pre_activation(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
        """(x' W_enc + b_enc, the normalisation state) for x [.., d_in] (float32)."""
        xn, state = self.norm_in(x.float())
        if self.apply_b_dec_to_input:
            xn = xn - self.b_dec
        return xn @ self.W_enc + self.b_enc, state

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Feature activations from pre-activations [.., d_sae]."""
        import torch

        f = torch.relu(pre)
        if self.architecture == "jumprelu":
            assert self.threshold is not None
            return f * (pre > self.threshold)
        if self.architecture == "topk":
            assert self.k is not None
            top = pre.topk(min(self.k, self.d_sae), dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        return f

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [.., d_sae] of site activations x [.., d_in]."""
        return self.activate(self.pre_activation(x)[0])

    def encode_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature activations [.., d_sae], reconstruction x̂ [.., d_in])."""
        pre, state = self.pre_activation(x)
        f = self.activate(pre)
        return f, self.norm_out(f @ self.W_dec + self.b_dec, state)

    def check_model(self, parts: ModelParts, model_id: str) -> list[str]:
        """Refuse (InputError, one line) an SAE whose hook this model lacks or whose width differs from the site's;
        return the warnings (a different model name in the metadata)."""
        from core.model.sites import site

        s = site(parts, self.hook_name)
        if s.width != self.d_in:
            raise InputError(
                f"SAE '{self.name}' reads {self.d_in}-wide activations at {self.hook_name}, but this model's "
                f"{s.hook} is {s.width} wide: it was trained on another model"
            )
        warnings = []
        if self.model_name and not _same_model(self.model_name, model_id):
            warnings.append(
                f"SAE '{self.name}' was trained on '{self.model_name}', the loaded model is '{model_id}' "
                "(fine-tunes share SAEs; check the reconstruction error before reading its features)"
            )
        return warnings


def _same_model(trained_on: str, model_id: str) -> bool:
    """Loose match: 'gpt2-small' and 'gpt2', 'meta-llama/Llama-3.1-8B' and 'Llama-3.1-8B' count as the same."""

    def norm(s: str) -> str:
        s = s.strip().rstrip("/").split("/")[-1].lower()
        return s[: -len("-small")] if s.endswith("-small") else s

    return norm(trained_on) == norm(model_id)


# ----------------------------------------------------------------------------------------------------------------
# Reading a folder


def _int(cfg: dict[str, Any], name: str, folder: str) -> int:
    v = cfg.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise InputError(f"SAE folder '{folder}': cfg.json has no positive integer {name!r}")
    return v


def _read_cfg(path: Path, shown: str) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_CFG_BYTES:
            raise InputError(f"SAE folder '{shown}': cfg.json is larger than {MAX_CFG_BYTES:,} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"'{shown}' is not an SAE folder: it has no cfg.json") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"SAE folder '{shown}': cfg.json cannot be read ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise InputError(f"SAE folder '{shown}': cfg.json is not a JSON object")
    return data


def _model_name(cfg: dict[str, Any]) -> str | None:
    meta = cfg.get("metadata")
    for source in (meta if isinstance(meta, dict) else {}, cfg):
        v = source.get("model_name")
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def _cfg_value(cfg: dict[str, Any], name: str) -> Any:
    """A field at the top level of cfg.json, else under `metadata` (SAELens 6 moved hook_name there)."""
    if name in cfg:
        return cfg[name]
    meta = cfg.get("metadata")
    return meta.get(name) if isinstance(meta, dict) else None


def _file_sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


_CACHE: OrderedDict[tuple[str, int, int, int], SAE] = OrderedDict()
_CACHE_LOCK = threading.Lock()
#: Loaded SAEs kept in memory (keyed on the folder and its files' sizes and modification times).
CACHE_SIZE = 4


def _stat_key(folder: Path) -> tuple[str, int, int, int]:
    w = (folder / WEIGHTS_NAME).stat()
    c = (folder / CFG_NAME).stat()
    return (str(folder.resolve()), w.st_size, w.st_mtime_ns, c.st_mtime_ns)


def load_sae(folder: str | Path) -> SAE:
    """Read an SAELens folder (cfg.json + sae_weights.safetensors) after the public-instance guards; float32 CPU
    weights. The last CACHE_SIZE folders stay loaded (a changed file is read again)."""
    shown_name = guards.check_sae_folder(str(folder))  # TMA_ALLOW_LOCAL_MODELS, TMA_MAX_SAE_MB, the folder exists
    path = Path(folder).expanduser()
    try:
        key = _stat_key(path)
    except OSError:
        key = None
    if key is not None:
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                _CACHE.move_to_end(key)
                return hit
    sae = _read(path, shown_name)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = sae
            while len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
    return sae


def _read(path: Path, shown: str) -> SAE:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg = _read_cfg(path / CFG_NAME, shown)
    weights_path = path / WEIGHTS_NAME
    if not weights_path.is_file():
        raise InputError(f"SAE folder '{shown}' has no {WEIGHTS_NAME} (only safetensors weights are read)")
    arch = str(cfg.get("architecture") or "standard").lower()
    if arch not in ARCHITECTURES:
        raise InputError(
            f"SAE folder '{shown}': architecture '{arch[:40]}' is not supported (known: {', '.join(ARCHITECTURES)})"
        )
    d_in, d_sae = _int(cfg, "d_in", shown), _int(cfg, "d_sae", shown)
    hook = _cfg_value(cfg, "hook_name")
    if not isinstance(hook, str):
        raise InputError(f"SAE folder '{shown}': cfg.json has no hook_name")
    parse(hook)  # unknown hook names are refused here, before the weights are read
    if _cfg_value(cfg, "hook_head_index") is not None:
        raise InputError(f"SAE folder '{shown}': per-head SAEs (hook_head_index) are not supported")
    norm = str(cfg.get("normalize_activations") or "none")
    if norm not in NORMALIZATIONS:
        raise InputError(
            f"SAE folder '{shown}': normalize_activations '{norm[:40]}' is not supported "
            f"(known: {', '.join(NORMALIZATIONS)})"
        )
    k = None
    if arch == "topk":
        kw = cfg.get("activation_fn_kwargs")
        raw = cfg.get("k", kw.get("k") if isinstance(kw, dict) else None)
        if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
            raise InputError(f"SAE folder '{shown}': a TopK SAE needs a positive integer k in cfg.json")
        k = raw
    try:
        w = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"SAE folder '{shown}': {WEIGHTS_NAME} cannot be read ({type(exc).__name__})") from None
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if arch == "jumprelu":
        want["threshold"] = (d_sae,)
    for name, shape in want.items():
        t = w.get(name)
        if t is None:
            raise InputError(f"SAE folder '{shown}': {WEIGHTS_NAME} has no tensor {name!r}")
        if tuple(t.shape) != shape:
            raise InputError(
                f"SAE folder '{shown}': {name} has shape {tuple(t.shape)}, cfg.json implies {shape} "
                f"(d_in={d_in}, d_sae={d_sae})"
            )
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise InputError(f"SAE folder '{shown}': {name} holds non-finite or non-float values")
    f32 = {n: w[n].float().contiguous() for n in want}
    return SAE(
        folder=str(path),
        name=path.resolve().name or "sae",
        hook_name=hook,
        architecture=arch,
        d_in=d_in,
        d_sae=d_sae,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize_activations=norm,
        k=k,
        model_name=_model_name(cfg),
        fingerprint=_file_sha256([path / CFG_NAME, weights_path]),
        W_enc=f32["W_enc"],
        b_enc=f32["b_enc"],
        W_dec=f32["W_dec"],
        b_dec=f32["b_dec"],
        threshold=f32.get("threshold"),
    )


def fingerprints(folders: tuple[str, ...] | list[str]) -> list[str]:
    """The sha256 fingerprints of the SAE folders (read through `load_sae`, so each is hashed once per change)."""
    return [load_sae(f).fingerprint for f in folders]


def save_sae(
    folder: str | Path,
    *,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    hook_name: str,
    architecture: str = "standard",
    threshold: torch.Tensor | None = None,
    k: int | None = None,
    apply_b_dec_to_input: bool = False,
    normalize_activations: str = "none",
    model_name: str | None = None,
) -> Path:
    """Write an SAE folder in SAELens's format (cfg.json + sae_weights.safetensors): for tests, and for a user who
    made an SAE elsewhere and wants to open it here."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = int(W_enc.shape[0]), int(W_enc.shape[1])
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec_to_input,
        "normalize_activations": normalize_activations,
        "hook_name": hook_name,
        "metadata": {"model_name": model_name, "hook_name": hook_name},
    }
    if model_name is not None:
        cfg["model_name"] = model_name
    if k is not None:
        cfg["k"] = int(k)
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if threshold is not None:
        tensors["threshold"] = threshold
    save_file({n: t.detach().float().cpu().clone().contiguous() for n, t in tensors.items()}, str(out / WEIGHTS_NAME))
    (out / CFG_NAME).write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return out
