"""Guards for public deployments (core/infra/guards.py): allow-list, parameter limit from the config alone, local
folders off, hub-id shape rules — each refusal happens before anything is downloaded or loaded."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from core.infra import guards
from core.infra.errors import InputError, ModelUnavailableError
from core.infra.guards import BadModelIdError, RefusedError, estimate_parameters
from core.model import loading as models


@pytest.fixture
def no_network_no_load(monkeypatch):
    """Any hub probe, hub download or transformers load fails the test."""

    def forbidden(*_a, **_k):
        raise AssertionError("nothing may be fetched or loaded before the guard refuses")

    monkeypatch.setattr(models, "hub_reachable", forbidden)
    monkeypatch.setattr(models, "_cached_on_disk", forbidden)
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", forbidden)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", forbidden)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", forbidden)
    return forbidden


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# The parameter estimator


@pytest.mark.parametrize("kind", ["gpt2", "bert", "bert-encoder", "llama"])
def test_estimate_equals_the_real_count_of_tiny_models(kind, tiny_dirs, request):
    fixture = {"gpt2": "tiny_gpt2", "bert": "tiny_bert", "bert-encoder": "tiny_encoder", "llama": "tiny_llama"}[kind]
    loaded = request.getfixturevalue(fixture)
    config = json.loads((tiny_dirs[kind] / "config.json").read_text())
    assert estimate_parameters(config) == _n_params(loaded.model)


def test_estimate_equals_the_real_count_of_the_bundled_model(minilm):
    config = json.loads((models.bundled_model_path() / "config.json").read_text())
    assert estimate_parameters(config) == _n_params(minilm.model) == 22_713_216


def _meta_count(config, auto) -> int:
    import torch

    with torch.device("meta"):  # shapes only: no memory for the weights
        return _n_params(auto.from_config(config))


def test_estimate_at_full_size():
    """GPT-2 small, BERT base (masked LM), TinyLlama 1.1B (GQA, untied head), Qwen2 (attention bias, tied)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        BertConfig,
        GPT2Config,
        LlamaConfig,
        Qwen2Config,
    )

    cases = [
        (GPT2Config(architectures=["GPT2LMHeadModel"]), AutoModelForCausalLM, 124_439_808),
        (BertConfig(architectures=["BertForMaskedLM"]), AutoModelForMaskedLM, 109_514_298),
        (
            LlamaConfig(
                hidden_size=2048,
                intermediate_size=5632,
                num_hidden_layers=22,
                num_attention_heads=32,
                num_key_value_heads=4,
                vocab_size=32000,
                tie_word_embeddings=False,
                architectures=["LlamaForCausalLM"],
            ),
            AutoModelForCausalLM,
            1_100_048_384,
        ),
        (
            Qwen2Config(
                num_hidden_layers=2,
                hidden_size=896,
                intermediate_size=4864,
                num_attention_heads=14,
                num_key_value_heads=2,
                vocab_size=151936,
                tie_word_embeddings=True,
                architectures=["Qwen2ForCausalLM"],
            ),
            AutoModelForCausalLM,
            None,
        ),
    ]
    for cfg, auto, known in cases:
        real = _meta_count(cfg, auto)
        if known is not None:
            assert real == known
        assert estimate_parameters(json.loads(cfg.to_json_string())) == real, type(cfg).__name__


def test_estimate_needs_the_sizes():
    with pytest.raises(InputError, match="hidden size"):
        estimate_parameters({"model_type": "gpt2"})


# ----------------------------------------------------------------------------------------------------------------
# TMA_MAX_PARAMETERS: refused from the config, before any weight (or tokenizer) is opened


class _OpenRecorder:
    def __init__(self):
        self.paths: list[str] = []

    def __call__(self, event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes)):
            self.paths.append(args[0] if isinstance(args[0], str) else args[0].decode(errors="replace"))


_RECORDER = _OpenRecorder()
sys.addaudithook(_RECORDER)  # audit hooks cannot be removed; it only records while a test reads it


def test_parameter_limit_refuses_before_any_weight_is_read(tiny_dirs, tiny_gpt2, tmp_path, monkeypatch):
    folder = tmp_path / "gpt2"
    shutil.copytree(tiny_dirs["gpt2"], folder)
    real = _n_params(tiny_gpt2.model)

    def no_weights(*_a, **_k):
        raise AssertionError("a weight file was opened before the refusal")

    monkeypatch.setattr("safetensors.safe_open", no_weights)
    monkeypatch.setattr("safetensors.torch.load_file", no_weights)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", no_weights)
    monkeypatch.setenv("TMA_MAX_PARAMETERS", str(real - 1))
    start = len(_RECORDER.paths)
    with pytest.raises(RefusedError) as err:
        models.load_model(str(folder), dtype="float32", device="cpu")
    opened = _RECORDER.paths[start:]
    assert not [p for p in opened if p.endswith(".safetensors")], opened
    assert any(p.endswith("config.json") for p in opened)  # the estimate came from the config
    msg = str(err.value)
    assert "\n" not in msg and "TMA_MAX_PARAMETERS" in msg
    assert guards.human_count(real) in msg and guards.human_count(real - 1) in msg  # the estimate and the limit
    monkeypatch.undo()
    monkeypatch.setenv("TMA_MAX_PARAMETERS", str(real))  # exactly at the limit: loads
    assert models.load_model(str(folder), dtype="float32", device="cpu").n_layers == tiny_gpt2.n_layers


def test_parameter_limit_on_a_large_config_with_tiny_weights(tiny_dirs, tmp_path, monkeypatch):
    """A config that claims 7 B parameters is refused at 2e9 whatever its weight files hold."""
    folder = tmp_path / "big"
    shutil.copytree(tiny_dirs["llama"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        head_dim=128,
        vocab_size=32000,
    )
    (folder / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("TMA_MAX_PARAMETERS", "2e9")
    with pytest.raises(RefusedError, match=r"about 6\.\d+ B parameters.*up to 2 B"):
        models.load_model(str(folder))


def test_parameter_limit_does_not_touch_the_bundled_model(monkeypatch):
    monkeypatch.setenv("TMA_MAX_PARAMETERS", "1000")
    src = models.resolve_source(models.BUNDLED_ID)
    models.check_size_guard(src)  # bundled: always allowed


def test_env_values():
    import os

    env = dict(os.environ)
    try:
        os.environ["TMA_MAX_PARAMETERS"] = "2e9"
        assert guards.max_parameters() == 2_000_000_000
        os.environ["TMA_MAX_PARAMETERS"] = "lots"
        assert guards.max_parameters() is None  # ignored with a log line, not a crash
        os.environ.pop("TMA_MAX_TEXT_CHARS", None)
        os.environ.pop("TMA_MAX_CORPUS_TEXTS", None)
        assert guards.max_text_chars() == 20_000 and guards.max_corpus_texts() == guards.DEFAULT_MAX_CORPUS_TEXTS
        os.environ["TMA_MAX_TEXT_CHARS"] = "500"
        os.environ["TMA_MAX_CORPUS_TEXTS"] = "3"
        assert guards.max_text_chars() == 500 and guards.max_corpus_texts() == 3
        with pytest.raises(InputError, match="600 characters; at most 500"):
            guards.check_text_length("x" * 600)
        with pytest.raises(InputError, match="4 texts; at most 3"):
            guards.check_corpus_size(["a"] * 4)
        guards.check_corpus_size(["a"] * 3)
    finally:
        os.environ.clear()
        os.environ.update(env)


# ----------------------------------------------------------------------------------------------------------------
# TMA_ALLOWED_MODELS


def test_allow_list_refuses_other_ids_and_folders_before_anything(monkeypatch, tiny_dirs, no_network_no_load):
    monkeypatch.setenv("TMA_ALLOWED_MODELS", "gpt2, bert-base-uncased")
    for other in ("distilgpt2", "meta-llama/Llama-2-7b-hf", str(tiny_dirs["gpt2"])):
        with pytest.raises(RefusedError) as err:
            models.load_model(other)
        msg = str(err.value)
        assert "\n" not in msg and f"{models.BUNDLED_ID}, gpt2, bert-base-uncased" in msg
    assert models.resolve_source(models.BUNDLED_ID).kind == "bundled"  # always allowed
    assert models.resolve_source("bundled").kind == "bundled"


def test_allow_list_lets_a_listed_id_through(monkeypatch):
    monkeypatch.setenv("TMA_ALLOWED_MODELS", "gpt2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_cached_on_disk", lambda _id: False)
    with pytest.raises(ModelUnavailableError) as err:  # past the guard, stopped by the offline hub
        models.resolve_source("gpt2")
    assert not isinstance(err.value, RefusedError) and "HF_HUB_OFFLINE" in str(err.value)


# ----------------------------------------------------------------------------------------------------------------
# TMA_ALLOW_LOCAL_MODELS=0


def test_local_folders_off_reveal_nothing(monkeypatch, tiny_dirs, no_network_no_load):
    monkeypatch.setenv("TMA_ALLOW_LOCAL_MODELS", "0")
    messages = set()
    for path in (
        "/etc/passwd",
        "/etc",
        "/no/such/folder",
        str(tiny_dirs["gpt2"]),
        "~/models/x",
        "./x",
        "../x",
        "C:\\models\\x",
        "a/b/c",
    ):
        with pytest.raises(RefusedError) as err:
            models.resolve_source(path)
        messages.add(str(err.value))
    assert len(messages) == 1  # an existing file, folder or model folder answers exactly as a missing one
    (msg,) = messages
    assert "TMA_ALLOW_LOCAL_MODELS" in msg and "/" not in msg.replace("owner/name", "")


def test_local_folders_off_never_loads_a_folder_named_like_a_hub_id(monkeypatch, tiny_dirs, tmp_path):
    shutil.copytree(tiny_dirs["gpt2"], tmp_path / "gpt2")
    monkeypatch.chdir(tmp_path)
    assert models.resolve_source("gpt2").kind == "local"  # allowed: the folder in the working directory
    monkeypatch.setenv("TMA_ALLOW_LOCAL_MODELS", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_cached_on_disk", lambda _id: False)
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE"):  # treated as a hub id only
        models.resolve_source("gpt2")


def test_local_folders_off_no_server_path_in_the_manifest(monkeypatch, minilm):
    from core.analysis.pipeline import analyze

    monkeypatch.setenv("TMA_ALLOW_LOCAL_MODELS", "0")
    loaded = models.load_model(models.BUNDLED_ID, dtype="float32", device="cpu")
    assert loaded.local_path is None
    result = analyze(loaded, "The cat sat on the mat.", compute_gradients=False)
    manifest = json.dumps(result.model if isinstance(result.model, dict) else result.model.to_dict())
    assert str(models.bundled_model_path()) not in manifest and "site-packages" not in manifest


# ----------------------------------------------------------------------------------------------------------------
# Hub-id shape (huggingface_hub's validate_repo_id rules), before any network call


@pytest.mark.parametrize(
    "good",
    [
        "gpt2",
        "openai-community/gpt2",
        "a" * 96,
        "o" * 96 + "/" + "n" * 96,
        "Foo-BAR_foo.bar123",
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    ],
)
def test_valid_hub_ids(good):
    assert guards.hub_id_problem(good) is None


@pytest.mark.parametrize(
    "bad",
    [
        "a" * 97,
        "org/" + "x" * 300,
        "x" * 5000,
        "a/b/c",
        "foo--bar",
        "foo..bar",
        "foo.git",
        "-foo",
        "foo.",
        "[Click to fix](http://evil.example)",
        "http://evil.example/model",
        "https://huggingface.co/gpt2",
        "hf.co/gpt2",
        "gpt\n2",
        "gp\u202et2",
        "gpt2\x00",
        "bad id!",
        "org/",
    ],
)
def test_malformed_ids_fail_in_one_short_line_without_network(bad, no_network_no_load, monkeypatch):
    for local in ("1", "0"):
        monkeypatch.setenv("TMA_ALLOW_LOCAL_MODELS", local)
        with pytest.raises(ModelUnavailableError if local == "1" else InputError) as err:
            models.resolve_source(bad)
        msg = str(err.value)
        if local == "0" or not guards.looks_like_path(bad):
            assert isinstance(err.value, InputError)  # exit 2 in the CLI; a missing relative path is exit 1
        assert "\n" not in msg and len(msg) < 240, msg
        assert "\u202e" not in msg and "\x00" not in msg
        assert "](" not in msg or "'" in msg  # echoed only inside quotes (the app escapes it too)


def test_missing_folder_is_unavailable_not_malformed(tmp_path):
    with pytest.raises(ModelUnavailableError, match="does not exist") as err:
        models.resolve_source(str(tmp_path / "no" / "such"))
    assert not isinstance(err.value, InputError)  # exit 1: a well-formed path, the model is just not there


def test_bad_model_id_is_both_input_and_unavailable():
    with pytest.raises(BadModelIdError) as err:
        models.resolve_source("x" * 5000)
    assert isinstance(err.value, InputError) and isinstance(err.value, ModelUnavailableError)
    assert "5000 characters" in str(err.value)
