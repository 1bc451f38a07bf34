"""Model registry, family detection, and fast clear failures."""

import pytest

from core.infra.errors import ModelUnavailableError
from core.model import loading as models


def test_families_come_from_config(tiny_gpt2, tiny_bert, tiny_encoder, tiny_llama, minilm):
    assert tiny_gpt2.family == "causal_lm"
    assert tiny_llama.family == "causal_lm"
    assert tiny_bert.family == "masked_lm"
    assert tiny_encoder.family == "encoder"
    assert minilm.family == "encoder"


def test_family_is_not_read_from_the_name():
    from transformers import BertConfig, GPT2Config

    cfg = GPT2Config()
    cfg.architectures = ["GPT2LMHeadModel"]
    assert models.detect_family(cfg) == "causal_lm"
    bert = BertConfig()
    bert.architectures = ["BertForMaskedLM"]
    assert models.detect_family(bert) == "masked_lm"
    bert.architectures = ["BertModel"]
    assert models.detect_family(bert) == "encoder"
    gpt_no_arch = GPT2Config()
    gpt_no_arch.architectures = None
    assert models.detect_family(gpt_no_arch) == "causal_lm"


def test_loaded_model_is_eager_eval_and_frozen(tiny_llama):
    m = tiny_llama.model
    assert m.config._attn_implementation == "eager"
    assert not m.training
    assert not any(p.requires_grad for p in m.parameters())
    assert tiny_llama.n_heads == 4 and tiny_llama.n_layers == 2
    assert tiny_llama.revision.startswith("sha256:")


def test_presets_include_the_bundled_model():
    from core.infra.presets import PRESET_IDS, preset

    assert models.BUNDLED_ID in PRESET_IDS and preset(models.BUNDLED_ID).offline
    for name in ("gpt2", "bert-base-uncased", "TinyLlama/TinyLlama-1.1B-Chat-v1.0"):
        assert name in PRESET_IDS and not preset(name).offline
    assert (models.bundled_model_path() / "model.safetensors").is_file()


def test_unknown_hub_id_offline_fails_fast_with_the_way_out(monkeypatch):
    """Offline, an uncached hub id fails before any network attempt (no probe, no transformers retries)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("the hub must not be contacted when HF_HUB_OFFLINE is set")

    monkeypatch.setattr(models, "hub_reachable", no_network)
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", no_network)
    with pytest.raises(ModelUnavailableError) as err:
        models.load_model("gpt2")
    assert models.BUNDLED_ID in str(err.value) and "local" in str(err.value)


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelUnavailableError, match="cannot be reached"):
        models.resolve_source("some-org/some-model")


def test_hub_probe_reports_an_unresolvable_host(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://no-such-host.invalid")
    assert models.hub_reachable(timeout=1.0) is False


@pytest.mark.parametrize("bad", ["", "../nowhere/x y", "not a valid id!", "/no/such/folder"])
def test_bad_ids_are_clear_errors(bad):
    with pytest.raises(ModelUnavailableError):
        models.resolve_source(bad)


def test_folder_without_config_and_without_safetensors(tmp_path, tiny_dirs):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="config.json"):
        models.load_model(str(tmp_path / "empty"))
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_dirs["gpt2"], pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelUnavailableError, match="safetensors"):
        models.load_model(str(pickled))


def test_folder_fingerprint_changes_with_content(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    a = models.folder_fingerprint(tmp_path)
    (tmp_path / "config.json").write_text('{"x": 1}')
    assert models.folder_fingerprint(tmp_path) != a


def test_bad_dtype_and_device():
    with pytest.raises(ModelUnavailableError):
        models.resolve_dtype("float8", "cpu")
    with pytest.raises(ModelUnavailableError):
        models.resolve_device("tpu")
    assert models.resolve_dtype("auto", "cpu") == "float32"


def test_bfloat16_loading(tiny_dirs):
    from core import analyze

    lm = models.load_model(str(tiny_dirs["gpt2"]), dtype="bfloat16", device="cpu")
    assert lm.dtype == "bfloat16"
    assert str(next(lm.model.parameters()).dtype) == "torch.bfloat16"
    r = analyze(lm, "The cat sat.")
    assert r.attentions.dtype.name == "float16"  # the maps at half precision (core.model.capture.attention_dtype)
    assert r.hidden_states.dtype.name == "float32"
    assert r.model.dtype == "bfloat16"
