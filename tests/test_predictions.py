"""Predictions (mask fill, next token, unavailable) and the generation API, on tiny random models (offline)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from core.analysis.pipeline import analyze
from core.analysis.result import AnalysisResult, results_equal
from core.infra.errors import InputError
from core.steps.predictions import (
    UNAVAILABLE_MESSAGE,
    GenerationSettings,
    PredictionSection,
    generate,
    generate_stream,
    prompt_ids,
)

FAST = {"compute_gradients": False}


def run(loaded, text, **kw):
    return analyze(loaded, text, **FAST, **kw)


def independent_probs(loaded, token_ids, position) -> np.ndarray:
    """softmax of the model's logits at `position`, from a separate plain forward pass, in float64."""
    with torch.inference_mode():
        z = loaded.model(input_ids=torch.tensor([token_ids])).logits[0, position].double().numpy()
    z = z - z.max()
    return np.exp(z) / np.exp(z).sum()


def check_candidates(cands, probs: np.ndarray, k: int) -> None:
    ps = [c["probability"] for c in cands]
    assert len(cands) == k
    assert all(0.0 <= p <= 1.0 for p in ps)
    assert ps == sorted(ps, reverse=True)
    # each candidate's probability is the independent softmax at its id, and together they are the top-k
    np.testing.assert_allclose(ps, probs[[c["token_id"] for c in cands]], atol=1e-6)
    np.testing.assert_allclose(ps, np.sort(probs)[::-1][:k], atol=1e-6)
    assert len({c["token_id"] for c in cands}) == k
    assert all(isinstance(c["token"], str) and isinstance(c["token_id"], int) for c in cands)


# ---------------------------------------------------------------------------------------------------------------
# Predictions from the captured logits


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama"])
def test_next_token_is_topk_of_softmax(name, request):
    loaded = request.getfixturevalue(name)
    r = run(loaded, "The cat sat on the", top_k=7)
    p = r.predictions
    assert isinstance(p, PredictionSection) and p.kind == "next_token" and p.message == ""
    assert p.positions == [r.n_tokens - 1] and p.top_k == 7
    check_candidates(p.candidates[0], independent_probs(loaded, r.token_ids, r.n_tokens - 1), 7)


def test_mask_fill_every_mask(tiny_bert):
    tok = tiny_bert.tokenizer
    r = run(tiny_bert, f"The cat {tok.mask_token} on the {tok.mask_token}.", top_k=5)
    p = r.predictions
    expected = [i for i, t in enumerate(r.token_ids) if t == tok.mask_token_id]
    assert len(expected) == 2 and p.kind == "mask_fill" and p.positions == expected
    assert len(p.candidates) == 2
    for pos, cands in zip(p.positions, p.candidates):
        check_candidates(cands, independent_probs(tiny_bert, r.token_ids, pos), 5)


def test_mask_word_setting_masks_with_the_tokenizers_own_token(tiny_bert):
    r = run(tiny_bert, "The dog sat on the log.", mask_word="sat")
    tok = tiny_bert.tokenizer
    assert tok.mask_token in r.analysed_text and r.text == "The dog sat on the log."
    assert r.predictions.positions == [r.token_ids.index(tok.mask_token_id)]
    assert len(r.predictions.candidates[0]) == r.settings.top_k


def test_masked_lm_without_mask_is_a_calm_message(tiny_bert):
    r = run(tiny_bert, "The dog sat on the log.")
    p = r.predictions
    assert p.kind == "mask_fill" and p.positions == [] and p.candidates == []
    assert "--mask-word" in p.message and tiny_bert.tokenizer.mask_token in p.message
    assert not any("mask" in w.lower() for w in r.warnings)


@pytest.mark.parametrize("name", ["minilm", "tiny_encoder"])
def test_encoder_without_head_is_unavailable_and_rest_works(name, request):
    loaded = request.getfixturevalue(name)
    r = run(loaded, "Paris is the capital of France.")
    p = r.predictions
    assert p.kind == "unavailable" and p.positions == [] and p.candidates == []
    assert p.message == UNAVAILABLE_MESSAGE
    assert p.message.startswith(
        "Predictions are not available for this model: it is an encoder without a language-model head"
    )
    assert r.logit_lens is None
    assert not any("predict" in w.lower() or "lens" in w.lower() for w in r.warnings)
    assert r.hidden_states.shape[0] == r.n_layers + 1 and all(np.isfinite(v).all() for v in r.layer_metrics.values())


def test_predictions_survive_round_trip(tiny_bert, tiny_gpt2, minilm):
    for loaded, text in [(tiny_bert, "The cat [MASK] on the mat."), (tiny_gpt2, "Hello world"), (minilm, "Hello")]:
        r = run(loaded, text)
        back = AnalysisResult.from_bytes(r.to_bytes())
        assert isinstance(back.predictions, PredictionSection)
        assert results_equal(r.predictions, back.predictions)


def test_analyze_never_generates(tiny_gpt2, tiny_llama, monkeypatch):
    import core.steps.predictions as P

    def boom(*a, **k):
        raise AssertionError("generation ran inside analyze()")

    monkeypatch.setattr(P, "_generate", boom)
    for loaded in (tiny_gpt2, tiny_llama):
        monkeypatch.setattr(loaded.model, "generate", boom)
        r = run(loaded, "The cat sat on the")
        assert r.predictions.kind == "next_token"


# ---------------------------------------------------------------------------------------------------------------
# Generation


def test_generation_settings_validate():
    assert GenerationSettings().greedy
    for bad in [
        dict(max_new_tokens=0),
        dict(max_new_tokens=1.5),
        dict(temperature=0),
        dict(temperature=-1.0),
        dict(top_p=0),
        dict(top_p=1.5),
        dict(seed=-1),
        dict(do_sample="yes"),
        dict(use_chat_template=1),
        dict(system_prompt=3),
    ]:
        with pytest.raises(InputError):
            GenerationSettings(**bad)


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_llama_nochat", "tiny_llama"])
def test_greedy_equals_transformers_generate(name, request):
    loaded = request.getfixturevalue(name)
    gen = GenerationSettings(max_new_tokens=12)
    ours = generate(loaded, "The cat sat on the", gen)
    ids = torch.tensor([ours.prompt_ids])
    with torch.inference_mode():
        hf = loaded.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=12,
            pad_token_id=loaded.tokenizer.pad_token_id,
        )
    new = hf[0, ids.shape[1] :].tolist()
    eos = loaded.tokenizer.eos_token_id
    if eos in new:
        new = new[: new.index(eos)]
    assert ours.token_ids == new
    assert ours.stopped_reason in ("max_new_tokens", "eos")


def test_seeded_sampling_repeats_and_leaves_global_rng_alone(tiny_llama):
    gen = GenerationSettings(max_new_tokens=16, do_sample=True, temperature=1.5, top_p=0.95, seed=123)
    state = torch.random.get_rng_state()
    a = generate(tiny_llama, "Hello world", gen)
    b = generate(tiny_llama, "Hello world", gen)
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.token_ids == b.token_ids and a.text == b.text and len(a.token_ids) > 0
    others = [
        generate(
            tiny_llama,
            "Hello world",
            GenerationSettings(max_new_tokens=16, do_sample=True, temperature=1.5, top_p=0.95, seed=s),
        ).token_ids
        for s in (1, 2, 3)
    ]
    assert any(o != a.token_ids for o in others)


def test_stream_pieces_join_to_the_text(tiny_gpt2):
    gen = GenerationSettings(max_new_tokens=10, do_sample=True, seed=5)
    pieces = list(generate_stream(tiny_gpt2, "The cat", gen))
    res = generate(tiny_gpt2, "The cat", gen)
    assert "".join(pieces) == res.text == tiny_gpt2.tokenizer.decode(res.token_ids, skip_special_tokens=True)
    assert len(res.token_ids) <= 10 and res.tokens == tiny_gpt2.tokenizer.convert_ids_to_tokens(res.token_ids)


def test_stop_event_stops_generation(tiny_gpt2):
    ev = threading.Event()
    pieces = []
    for piece in generate_stream(tiny_gpt2, "The cat", GenerationSettings(max_new_tokens=50), stop_event=ev):
        pieces.append(piece)
        ev.set()
    assert len(pieces) == 1
    pre_set = threading.Event()
    pre_set.set()
    res = generate(tiny_gpt2, "The cat", GenerationSettings(max_new_tokens=50), stop_event=pre_set)
    assert res.stopped_reason == "stopped" and res.token_ids == []
    # the lock was released: another thread can take it at once
    got = []

    def take():
        ok = tiny_gpt2.lock.acquire(timeout=2)
        got.append(ok)
        if ok:
            tiny_gpt2.lock.release()

    t = threading.Thread(target=take)
    t.start()
    t.join()
    assert got == [True]


def test_stop_event_from_another_thread(tiny_gpt2):
    ev = threading.Event()
    seen = []

    def consume():
        for piece in generate_stream(tiny_gpt2, "The cat", GenerationSettings(max_new_tokens=100), ev):
            seen.append(piece)
            if len(seen) == 3:
                ev.set()

    t = threading.Thread(target=consume)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive() and len(seen) == 3


def test_eos_ends_generation(tiny_gpt2, monkeypatch):
    first = generate(tiny_gpt2, "The cat", GenerationSettings(max_new_tokens=3)).token_ids[0]
    monkeypatch.setattr(tiny_gpt2.model.generation_config, "eos_token_id", first)
    res = generate(tiny_gpt2, "The cat", GenerationSettings(max_new_tokens=3))
    assert res.stopped_reason == "eos" and res.token_ids == []


def test_max_new_tokens_and_context_limit(tiny_gpt2):
    res = generate(tiny_gpt2, "The cat", GenerationSettings(max_new_tokens=4))
    assert len(res.token_ids) == 4 and res.stopped_reason == "max_new_tokens"
    n_ctx = tiny_gpt2.model.config.n_positions
    long = generate(tiny_gpt2, "The cat", GenerationSettings(max_new_tokens=2 * n_ctx))
    assert long.stopped_reason == "context" and len(long.prompt_ids) + len(long.token_ids) == n_ctx


def test_chat_template_applied_when_present(tiny_llama):
    tok = tiny_llama.tokenizer
    text = "Hello world"
    gen = GenerationSettings(max_new_tokens=3)
    expected = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)[
        "input_ids"
    ]
    assert prompt_ids(tiny_llama, text, gen) == list(expected)
    res = generate(tiny_llama, text, gen)
    assert res.chat_template_used and res.prompt_ids == list(expected)
    assert "<|user|>" in res.prompt and res.prompt.rstrip().endswith("<|assistant|>")
    plain = tok(text)["input_ids"]
    assert res.prompt_ids != plain
    off = GenerationSettings(max_new_tokens=3, use_chat_template=False)
    assert prompt_ids(tiny_llama, text, off) == plain
    assert not generate(tiny_llama, text, off).chat_template_used
    sys_ids = prompt_ids(tiny_llama, text, GenerationSettings(system_prompt="Be brief."))
    assert "<|system|>" in tok.decode(sys_ids) and "Be brief." in tok.decode(sys_ids)


def test_chat_template_skipped_when_absent(tiny_llama_nochat):
    tok = tiny_llama_nochat.tokenizer
    assert not tiny_llama_nochat.has_chat_template
    res = generate(tiny_llama_nochat, "Hello world", GenerationSettings(max_new_tokens=3, use_chat_template=True))
    assert not res.chat_template_used
    assert res.prompt_ids == tok("Hello world")["input_ids"] and res.prompt_ids[0] == tok.bos_token_id


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_encoder", "minilm"])
def test_generation_needs_a_causal_lm(name, request):
    loaded = request.getfixturevalue(name)
    with pytest.raises(InputError, match="causal language model"):
        generate(loaded, "Hello", GenerationSettings())
    with pytest.raises(InputError):
        generate_stream(loaded, "Hello", GenerationSettings())


def test_generation_rejects_empty_text(tiny_gpt2):
    with pytest.raises(InputError):
        generate(tiny_gpt2, "   ", GenerationSettings())


# ---------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_generate_streams_the_continuation(tiny_dirs, tiny_gpt2, capsys):
    from core.cli.main import main

    rc = main(
        [
            "generate",
            "--model",
            str(tiny_dirs["gpt2"]),
            "--text",
            "The cat",
            "--max-new-tokens",
            "5",
            "--sample",
            "--seed",
            "3",
        ]
    )
    out = capsys.readouterr().out
    expected = generate(tiny_gpt2, "The cat", GenerationSettings(max_new_tokens=5, do_sample=True, seed=3)).text
    assert rc == 0 and out == expected + "\n"


def test_cli_generate_refuses_a_masked_lm(tiny_dirs, capsys):
    from core.cli.main import EXIT_INPUT, main

    rc = main(["generate", "--model", str(tiny_dirs["bert"]), "--text", "The cat"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (in-process: progress bars too)
    assert rc == EXIT_INPUT and len(errors) == 1 and "causal language model" in errors[0]


def test_cli_analyze_explains_how_to_mask(tiny_dirs, tmp_path, monkeypatch, capsys):
    from core.cli.main import main

    monkeypatch.setenv("TMA_RUNS_DIR", str(tmp_path / "runs"))
    rc = main(
        [
            "analyze",
            "--model",
            str(tiny_dirs["bert"]),
            "--text",
            "The dog sat on the log.",
            "--out",
            str(tmp_path / "b.zip"),
            "--no-cache",
            "--no-gradients",
            "--no-animations",
        ]
    )
    assert rc == 0 and "--mask-word" in capsys.readouterr().out
    rc = main(
        [
            "analyze",
            "--model",
            str(tiny_dirs["bert"]),
            "--text",
            "The dog sat on the log.",
            "--mask-word",
            "sat",
            "--out",
            str(tmp_path / "c.zip"),
            "--no-cache",
            "--no-gradients",
            "--no-animations",
        ]
    )
    assert rc == 0 and "--mask-word" not in capsys.readouterr().out
