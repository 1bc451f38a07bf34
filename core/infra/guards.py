"""Guards for public deployments: what a visitor may load and how much it may ask for.

Every guard reads the environment at call time (Streamlit exposes the app's secrets as environment variables), so
an operator configures a public instance without code:

- `TMA_ALLOWED_MODELS`: comma-separated model ids. When set, any other id and every local folder is refused before
  anything is downloaded or loaded. The bundled model is always allowed.
- `TMA_MAX_PARAMETERS` (e.g. `2e9`): models whose parameter count, estimated from the config alone (no weights are
  read or fetched), exceeds this are refused.
- `TMA_MAX_TEXT_CHARS` (default 20 000): the longest text analysed.
- `TMA_MAX_CORPUS_TEXTS` (default 200): the most texts one corpus run analyses.
- `TMA_ALLOW_LOCAL_MODELS` (default 1): `0` switches local model folders off. No message then says whether a path
  exists on the server, and no manifest records a server path. Sparse-autoencoder folders are local folders too:
  `0` switches them off as well.
- `TMA_MAX_SAE_MB` (default 4096): the largest SAE weights file read (`check_sae_folder`); `TMA_MAX_SAES`
  (default 8): the most SAEs one analysis opens.

`check_model_id(model_id)` validates the shape of an id (length, characters, hub rules) before any file-system or
network call; `estimate_parameters(config)` counts parameters from a config dict (GPT-2, BERT and Llama-style
layouts exactly, other layouts approximately). Refusals raise `RefusedError`, an `InputError`: exit 2 in the CLI,
a banner in the app.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from core.infra.errors import InputError, ModelUnavailableError
from core.infra.presets import BUNDLED_ID

log = logging.getLogger(__name__)

#: The model shipped with the package (core.infra.presets.BUNDLED_ID) is always allowed, whatever TMA_ALLOWED_MODELS
# says.
BUNDLED_ALIASES = (BUNDLED_ID, "bundled", "all-MiniLM-L6-v2")

DEFAULT_MAX_TEXT_CHARS = 20_000
DEFAULT_MAX_CORPUS_TEXTS = 200

#: Longest model id accepted at all (a local path included); hub ids are bounded tighter by HUB_NAME_MAX.
MAX_MODEL_ID_CHARS = 512
#: huggingface_hub's validate_repo_id: namespace and name each 1–96 characters of [A-Za-z0-9_.-].
HUB_NAME_MAX = 96
_HUB_PART = re.compile(rf"[A-Za-z0-9_.-]{{1,{HUB_NAME_MAX}}}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


class RefusedError(InputError):
    """This server's configuration refuses the request (allow-list, size limit, local folders off)."""


class BadModelIdError(InputError, ModelUnavailableError):
    """The model id is malformed (too long, a URL, not a hub id): bad input (CLI exit 2) that also means the model
    is not available (the app's banner offers the bundled model)."""


# ----------------------------------------------------------------------------------------------------------------
# Reading the environment


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _positive_int(name: str, default: int | None) -> int | None:
    raw = _env(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not a number", name, raw)
        return default
    if not math.isfinite(value) or value < 1:
        log.warning("ignoring %s=%r: not a positive number", name, raw)
        return default
    return int(value)


def allowed_models() -> tuple[str, ...] | None:
    """The ids of TMA_ALLOWED_MODELS (the bundled model added), or None when every model is allowed."""
    raw = _env("TMA_ALLOWED_MODELS")
    if not raw:
        return None
    ids = [s.strip() for s in raw.split(",") if s.strip()]
    return tuple(dict.fromkeys([BUNDLED_ID, *ids]))


def max_parameters() -> int | None:
    """TMA_MAX_PARAMETERS (accepts `2e9`), or None for no limit."""
    return _positive_int("TMA_MAX_PARAMETERS", None)


def max_text_chars() -> int:
    """TMA_MAX_TEXT_CHARS, default 20 000."""
    return _positive_int("TMA_MAX_TEXT_CHARS", DEFAULT_MAX_TEXT_CHARS) or DEFAULT_MAX_TEXT_CHARS


def max_corpus_texts() -> int:
    """TMA_MAX_CORPUS_TEXTS, default 200."""
    return _positive_int("TMA_MAX_CORPUS_TEXTS", DEFAULT_MAX_CORPUS_TEXTS) or DEFAULT_MAX_CORPUS_TEXTS


def local_models_allowed() -> bool:
    """False when TMA_ALLOW_LOCAL_MODELS is 0/false/no/off."""
    return _env("TMA_ALLOW_LOCAL_MODELS").lower() not in ("0", "false", "no", "off")


# ----------------------------------------------------------------------------------------------------------------
# Showing user input safely in one-line messages


def shown(value: str, limit: int = 80) -> str:
    """`value` quoted for a one-line message: control and bidi characters escaped, long values shortened."""
    s = _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", str(value))
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return f"'{s}'"


#: Bidirectional controls (embeddings, overrides, isolates, marks): they reorder the text shown after them.
BIDI_CONTROLS = frozenset("\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def is_unsafe_char(ch: str) -> bool:
    """Control characters (but newline and tab) and bidirectional controls: never shown raw."""
    if ch in "\n\t":
        return False
    o = ord(ch)
    return o < 0x20 or 0x7F <= o <= 0x9F or ch in BIDI_CONTROLS


def visible_controls(text: str, box: str | None = None) -> str:
    """`text` with control and bidi characters made visible: `⟨U+202E⟩` (or `box` when given, e.g. '□' for PDFs
    whose fonts lack the brackets). Newlines and tabs are kept."""
    if not any(is_unsafe_char(ch) for ch in text):
        return text
    return "".join((box if box is not None else f"⟨U+{ord(ch):04X}⟩") if is_unsafe_char(ch) else ch for ch in text)


def scrub_paths(message: str) -> str:
    """`message` with absolute file-system paths replaced by '…' (for public servers: no server paths shown)."""
    return re.sub(r"(?<![\w])(?:/|~/|[A-Za-z]:\\)[^\s'\"]*", "…", message)


# ----------------------------------------------------------------------------------------------------------------
# Model ids


def is_bundled(model_id: str) -> bool:
    return model_id.strip() in BUNDLED_ALIASES


def looks_like_path(model_id: str) -> bool:
    """True for ids that can only mean a file-system path (absolute, relative, home, Windows-style)."""
    s = model_id.strip()
    return s.startswith((".", "/", "~", "\\")) or "\\" in s or s.count("/") > 1 or bool(re.match(r"^[A-Za-z]:[\\/]", s))


def hub_id_problem(model_id: str) -> str | None:
    """Why `model_id` is not a valid Hugging Face repo id (huggingface_hub's validate_repo_id rules), or None."""
    parts = model_id.split("/")
    if len(parts) > 2:
        return "a Hugging Face id is 'name' or 'owner/name'"
    for part in parts:
        if not part:
            return "a Hugging Face id is 'name' or 'owner/name', neither part empty"
        if len(part) > HUB_NAME_MAX:
            return f"each part of a Hugging Face id has at most {HUB_NAME_MAX} characters"
        if not _HUB_PART.fullmatch(part):
            return "a Hugging Face id uses only letters, digits, '-', '_' and '.'"
        if part[0] in "-." or part[-1] in "-.":
            return "a Hugging Face id part cannot start or end with '-' or '.'"
    if "--" in model_id or ".." in model_id:
        return "a Hugging Face id cannot contain '--' or '..'"
    if model_id.endswith(".git"):
        return "a Hugging Face id cannot end with '.git'"
    return None


def check_model_id(model_id: str) -> str:
    """The stripped id, or RefusedError/InputError when its shape alone rules it out.

    Runs before any file-system or network call: length, control characters, URLs, the allow-list, local folders
    switched off. What is left is either a hub id of valid shape or (local folders allowed) a path to check.
    """
    if not isinstance(model_id, str):
        raise BadModelIdError("the model id must be text")
    s = model_id.strip()
    if not s:
        raise BadModelIdError("no model given: type a Hugging Face id (owner/name) or pick a preset")
    if len(s) > MAX_MODEL_ID_CHARS:
        raise BadModelIdError(f"the model id is {len(s)} characters long; at most {MAX_MODEL_ID_CHARS} are accepted")
    if _CONTROL.search(s):
        raise BadModelIdError(f"the model id {shown(s)} contains control or invisible characters")
    if is_bundled(s):
        return s
    allowed = allowed_models()
    if allowed is not None and s not in allowed:
        raise RefusedError(f"this server only loads these models: {', '.join(allowed)} (TMA_ALLOWED_MODELS)")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", s) or s.lower().startswith(("www.", "huggingface.co/", "hf.co/")):
        raise BadModelIdError(f"{shown(s)} is a URL; give the model's Hugging Face id (owner/name), e.g. 'gpt2'")
    if not local_models_allowed():
        if looks_like_path(s):
            raise RefusedError(
                "local model folders are switched off on this server (TMA_ALLOW_LOCAL_MODELS=0); "
                "give a Hugging Face id (owner/name)"
            )
        problem = hub_id_problem(s)
        if problem:
            raise BadModelIdError(f"{shown(s)} is not a Hugging Face model id: {problem}")
    return s


def check_hub_id(model_id: str) -> None:
    """BadModelIdError unless `model_id` is a valid hub id (called when it is not an existing local folder);
    ModelUnavailableError for a path that does not exist (local folders allowed)."""
    problem = hub_id_problem(model_id)
    if problem and local_models_allowed() and looks_like_path(model_id):  # a well-formed path that is not there
        raise ModelUnavailableError(f"the model folder {shown(model_id)} does not exist")
    if problem:
        how = (
            "neither an existing folder nor a Hugging Face model id"
            if local_models_allowed()
            else "not a Hugging Face model id"
        )
        raise BadModelIdError(f"{shown(model_id)} is {how}: {problem}")


# ----------------------------------------------------------------------------------------------------------------
# Parameter count from a config


#: Model types whose MLP is gated (gate, up, down projections: 3 · hidden · intermediate).
GATED_MLP_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi3",
        "olmo",
        "olmo2",
        "granite",
        "cohere",
        "stablelm",
        "internlm2",
        "deepseek_v2",
        "smollm3",
        "exaone",
    }
)
#: Model types with learned absolute positions, LayerNorm with biases and biased linear layers (GPT-2 layout).
GPT2_TYPES = frozenset({"gpt2", "gpt_neo", "gptj", "gpt_bigcode", "opt", "codegen", "biogpt"})
#: BERT-like encoders: learned positions + token types, post-LN, biased linear layers.
BERT_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "electra",
        "camembert",
        "distilbert",
        "mpnet",
        "ernie",
        "deberta",
        "deberta-v2",
        "albert",
        "xlm",
        "megatron-bert",
        "nomic_bert",
    }
)


def _get(cfg: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        v = cfg.get(n)
        if v is not None:
            return v
    return default


def _text_config(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language part of a composite config (e.g. a vision-language model's text_config)."""
    inner = cfg.get("text_config")
    if isinstance(inner, Mapping) and _get(inner, "hidden_size", "n_embd", "d_model") is not None:
        return {
            **inner,
            "architectures": cfg.get("architectures"),
            "model_type": inner.get("model_type") or cfg.get("model_type"),
        }
    return cfg


def estimate_parameters(config: Mapping[str, Any]) -> int:
    """Parameter count of the model a config.json describes, without building it.

    Exact for GPT-2 (LM head tied), BERT (encoder with pooler, or masked LM head) and Llama-style decoders (grouped
    KV heads, gated MLP, RMSNorm, tied or separate LM head); a close estimate for other layouts. Raises InputError
    when the config lacks the sizes.
    """
    cfg = _text_config(config)
    mt = str(cfg.get("model_type") or "").lower()
    archs = [str(a) for a in (cfg.get("architectures") or [])]
    d = _get(cfg, "hidden_size", "n_embd", "d_model", "dim")
    n_layers = _get(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    vocab = _get(cfg, "vocab_size")
    if not all(isinstance(x, int) and x > 0 for x in (d, n_layers, vocab)):
        raise InputError("the model's config does not state its hidden size, layer count and vocabulary size")
    n_heads = int(_get(cfg, "num_attention_heads", "n_head", "num_heads", "n_heads", default=1))
    n_kv = int(_get(cfg, "num_key_value_heads", "num_kv_heads", "n_kv_heads", default=n_heads) or n_heads)
    head_dim = int(_get(cfg, "head_dim", default=0) or (d // max(n_heads, 1)))
    inter = int(_get(cfg, "intermediate_size", "n_inner", "ffn_dim", "hidden_dim", default=0) or 4 * d)
    positions = int(_get(cfg, "max_position_embeddings", "n_positions", "n_ctx", default=0) or 0)
    tied = bool(cfg.get("tie_word_embeddings", True))

    if mt in GPT2_TYPES:
        per_layer = (
            2 * d  # ln_1
            + d * 3 * d
            + 3 * d  # c_attn (q, k, v)
            + d * d
            + d  # c_proj
            + 2 * d  # ln_2
            + d * inter
            + inter
            + inter * d
            + d
        )  # mlp c_fc, c_proj
        total = vocab * d + positions * d + n_layers * per_layer + 2 * d
        if not tied and any(a.endswith(("LMHeadModel", "ForCausalLM")) for a in archs):
            total += vocab * d
        return int(total)

    if mt in BERT_TYPES:
        type_vocab = int(cfg.get("type_vocab_size", 2) or 0)
        emb = vocab * d + positions * d + type_vocab * d + 2 * d
        per_layer = 4 * (d * d + d) + 2 * d + d * inter + inter + inter * d + d + 2 * d
        total = emb + n_layers * per_layer
        if any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in archs):
            total += d * d + d + 2 * d + vocab  # transform dense + LayerNorm + decoder bias (weight tied)
            if not tied:
                total += vocab * d
            if any(a.endswith("ForPreTraining") for a in archs):
                total += d * d + d + 2 * d + 2  # pooler + next-sentence head
        elif not archs or any(a.endswith("Model") for a in archs):
            total += d * d + d  # pooler of the bare encoder
        return int(total)

    # Llama-style decoders (and the fallback for other layouts).
    q_out, kv_out = n_heads * head_dim, n_kv * head_dim
    attn_bias = bool(cfg.get("attention_bias", mt in ("qwen2",)))
    attn = d * q_out + 2 * d * kv_out + q_out * d
    if attn_bias:
        attn += q_out + 2 * kv_out
    act = str(_get(cfg, "hidden_act", "activation_function", default=""))
    gated = mt in GATED_MLP_TYPES or act in ("silu", "swiglu")
    mlp = (3 if gated else 2) * d * inter
    if bool(cfg.get("mlp_bias", False)):
        mlp += (2 if gated else 1) * inter + d
    norms = 2 * d
    total = vocab * d + n_layers * (attn + mlp + norms) + d
    if positions and str(cfg.get("position_embedding_type", "rope")) == "absolute":
        total += positions * d
    if not tied:
        total += vocab * d
    n_experts = int(_get(cfg, "num_local_experts", "num_experts", default=0) or 0)
    if n_experts > 1:  # mixture of experts: every expert's MLP plus the router
        total += n_layers * ((n_experts - 1) * mlp + d * n_experts)
    return int(total)


def read_config(folder: str | Path) -> dict[str, Any]:
    """config.json of a model folder as a dict (InputError when it is not readable JSON)."""
    try:
        with open(Path(folder) / "config.json", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InputError(f"the model's config.json cannot be read ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise InputError("the model's config.json is not a JSON object")
    return data


def human_count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return str(int(n))


def check_parameters(model_id: str, config: Mapping[str, Any]) -> int | None:
    """RefusedError when TMA_MAX_PARAMETERS is set and the config's estimated count exceeds it; the estimate."""
    limit = max_parameters()
    if limit is None:
        return None
    estimate = estimate_parameters(config)
    if estimate > limit:
        raise RefusedError(
            f"{shown(model_id)} has about {human_count(estimate)} parameters; this server loads models "
            f"up to {human_count(limit)} (TMA_MAX_PARAMETERS)"
        )
    return estimate


# ----------------------------------------------------------------------------------------------------------------
# Texts


def _thousands(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def check_text_length(text: str, what: str = "the text") -> None:
    """InputError (visible, nothing dropped) when `text` is longer than TMA_MAX_TEXT_CHARS."""
    limit = max_text_chars()
    if len(text) > limit:
        raise InputError(
            f"{what} has {_thousands(len(text))} characters; at most {_thousands(limit)} are analysed "
            "(TMA_MAX_TEXT_CHARS): shorten it"
        )


def check_visible(text: str, what: str = "the text") -> None:
    """Refuse a text with nothing to see: only whitespace, control and format characters (zero-width spaces and
    joiners, direction marks, a byte-order mark). A tokenizer drops them or maps them to nothing, and the model
    would analyse its own special tokens ([CLS] [SEP]) alone."""
    import unicodedata

    if not any(not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf") for ch in text):
        raise InputError(
            f"{what} has no visible characters (only spaces, zero-width or control characters): type a sentence "
            "to analyse"
        )


def check_corpus_size(texts: Iterable[str]) -> None:
    """InputError when a corpus holds more texts than TMA_MAX_CORPUS_TEXTS or one text is too long."""
    items = list(texts)
    limit = max_corpus_texts()
    if len(items) > limit:
        raise InputError(f"the corpus has {len(items)} texts; at most {limit} are analysed (TMA_MAX_CORPUS_TEXTS)")
    for i, t in enumerate(items):
        check_text_length(t, what=f"text {i + 1} of the corpus")


# ----------------------------------------------------------------------------------------------------------------
# Sparse-autoencoder folders

DEFAULT_MAX_SAE_MB = 4096
DEFAULT_MAX_SAES = 8


def max_sae_mb() -> int:
    """TMA_MAX_SAE_MB, default 4096."""
    return _positive_int("TMA_MAX_SAE_MB", DEFAULT_MAX_SAE_MB) or DEFAULT_MAX_SAE_MB


def max_saes() -> int:
    """TMA_MAX_SAES, default 8."""
    return _positive_int("TMA_MAX_SAES", DEFAULT_MAX_SAES) or DEFAULT_MAX_SAES


def check_sae_folder(folder: str) -> str:
    """The folder's name as messages show it, or RefusedError / InputError (one line) before any file is read:
    local folders switched off (TMA_ALLOW_LOCAL_MODELS=0; then no message says whether the path exists), a
    malformed path, a missing folder, a weights file over TMA_MAX_SAE_MB."""
    if not isinstance(folder, str) or not folder.strip():
        raise InputError("an SAE folder path is empty")
    s = folder.strip()
    if not local_models_allowed():
        raise RefusedError("SAE folders are local files, switched off on this server (TMA_ALLOW_LOCAL_MODELS=0)")
    if len(s) > MAX_MODEL_ID_CHARS or _CONTROL.search(s):
        raise InputError(f"the SAE folder {shown(s)} is not a usable path")
    p = Path(s).expanduser()
    name = shown(p.name or s)[1:-1]
    if not p.is_dir():
        raise InputError(f"the SAE folder {shown(s)} does not exist or is not a folder")
    weights = p / "sae_weights.safetensors"
    if weights.is_file():
        size_mb = weights.stat().st_size / 2**20
        if size_mb > max_sae_mb():
            raise RefusedError(
                f"SAE '{name}' has {size_mb:,.0f} MB of weights; this server reads SAEs up to {max_sae_mb():,} MB "
                "(TMA_MAX_SAE_MB)"
            )
    return name
