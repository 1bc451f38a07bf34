"""Activation patching (core/studies/patching.py) against hand-written hooks on tiny GPT-2, BERT and Llama (GQA)
models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.infra.errors import InputError
from core.model import forward
from core.run.cache import ResultCache
from core.studies import patching
from core.studies.patching import (
    PatchingResult,
    PatchingSettings,
    patch,
    run_patching,
)

CAUSAL = ("The dog sat on the log", "The log sat on the dog")
MASKED = ("The dog sat on the [MASK].", "A bird flew over the [MASK].")
BERT_ANSWERS = PatchingSettings(answer="test", wrong_answer="##ran")


def _texts(kind):
    return MASKED if kind == "bert" else CAUSAL


def _settings(kind):
    return BERT_ANSWERS if kind == "bert" else PatchingSettings()


@pytest.fixture(scope="module")
def sharp_bert(tiny_dirs):
    """The tiny BERT with every matrix ×8: at initialisation scale (std 0.02) its masked prediction barely depends
    on the text (|m_clean − m_corrupted| ~ 1e-3), too little signal to compare patched cells."""
    from core.model.loading import load_model

    loaded = load_model(str(tiny_dirs["bert"]), dtype="float32", device="cpu")
    with torch.no_grad():
        for p in loaded.model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return loaded


@pytest.fixture(scope="module")
def runs(tiny_gpt2, sharp_bert, tiny_llama):
    models = {"gpt2": tiny_gpt2, "bert": sharp_bert, "llama": tiny_llama}
    return {k: (m, run_patching(m, *_texts(k), _settings(k))) for k, m in models.items()}


def _modules(kind, model, layer):
    """Hand-written module paths, independent of patch_sites: (block, attention output module, MLP output module)."""
    if kind == "gpt2":
        b = model.transformer.h[layer]
        return b, b.attn, b.mlp  # GPT2Attention returns (output, weights); the MLP its output
    if kind == "llama":
        b = model.model.layers[layer]
        return b, b.self_attn, b.mlp
    b = model.bert.encoder.layer[layer]
    return b, b.attention.output.dense, b.output.dense


def _hand_metric(loaded, kind, component, layer, position, res: PatchingResult):
    """m of the corrupted run with one activation replaced by the clean run's, with hooks written here."""
    model, tok = loaded.model, loaded.tokenizer
    clean = tok(res.clean_text, return_tensors="pt")
    corrupt = tok(res.corrupted_text, return_tensors="pt")
    block, attn, mlp = _modules(kind, model, layer)
    stored = {}

    def first(o):
        return o[0] if isinstance(o, tuple) else o

    if component == "residual":
        with torch.no_grad():
            hs = model(**clean, output_hidden_states=True).hidden_states[layer]

        def hook(_m, args, kwargs):
            h = (args[0] if args else kwargs["hidden_states"]).clone()
            h[:, position] = hs[:, position]
            return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

        handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    else:
        mod = attn if component == "attention" else mlp

        def grab(_m, _a, out):
            stored["x"] = first(out).clone()

        g = mod.register_forward_hook(grab)
        try:
            with torch.no_grad():
                model(**clean)
        finally:
            g.remove()

        def hook(_m, _a, out):
            h = first(out).clone()
            h[:, position] = stored["x"][:, position]
            return (h, *out[1:]) if isinstance(out, tuple) else h

        handle = mod.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(**corrupt).logits[0, res.target_position]
    finally:
        handle.remove()
    return float(logits[res.answer_id] - logits[res.wrong_id])


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
@pytest.mark.parametrize("component", ["residual", "attention", "mlp"])
def test_one_cell_matches_a_hand_written_hook(runs, kind, component):
    loaded, res = runs[kind]
    layer, position = 1, 2
    want = _hand_metric(loaded, kind, component, layer, position, res)
    assert res.metric[component][layer, position] == pytest.approx(want, abs=1e-4)
    # and the cell is not trivially the corrupted value everywhere (the test could not fail otherwise)
    assert np.ptp(res.metric[component][:, : res.n_tokens]) > 1e-4


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_unpatched_metrics_match_plain_forward_passes(runs, kind):
    loaded, res = runs[kind]
    tok, model = loaded.tokenizer, loaded.model
    with torch.no_grad():
        lc = model(**tok(res.clean_text, return_tensors="pt")).logits[0, res.target_position]
        lk = model(**tok(res.corrupted_text, return_tensors="pt")).logits[0, res.target_position]
    assert res.m_clean == pytest.approx(float(lc[res.answer_id] - lc[res.wrong_id]), abs=1e-4)
    assert res.m_corrupted == pytest.approx(float(lk[res.answer_id] - lk[res.wrong_id]), abs=1e-4)
    if kind != "bert":  # default answers: the two runs' top-1 predictions
        assert res.answer_id == int(lc.argmax()) and res.wrong_id == int(lk.argmax())


@pytest.mark.parametrize("kind", ["gpt2", "bert", "llama"])
def test_sanity_block0_restores_one_and_identity_zero(runs, kind):
    _, res = runs[kind]
    # restored = (m - m_corrupted) / (m_clean - m_corrupted): a float32 rounding of ~2e-5 in a logit difference
    # (batched rows, one or two torch threads) is divided by the margin, so the tolerance scales with 1 / margin
    # (the tiny random BERT's margin is small: 1.00011 was seen with one torch thread)
    tol = max(1e-4, 2e-5 / abs(res.m_clean - res.m_corrupted))
    assert tol < 1e-2  # the margin is wide enough for the check to mean something
    assert res.sanity_block0 == pytest.approx(1.0, abs=tol)
    assert res.sanity_identity == pytest.approx(0.0, abs=tol)
    # every block's full residual is the clean stream from there on: restores 1 at every layer
    np.testing.assert_allclose(res.restored_all("residual"), 1.0, atol=tol)
    assert not any("sanity" in w for w in res.warnings)


def test_batched_grid_equals_one_at_a_time(tiny_llama, monkeypatch):
    batched = run_patching(tiny_llama, *CAUSAL)
    monkeypatch.setattr(forward, "PATCH_MEMORY_BUDGET", 1)  # chunk of one row: one forward pass per cell
    single = run_patching(tiny_llama, *CAUSAL)
    for c in patching.COMPONENTS:
        np.testing.assert_allclose(batched.metric[c], single.metric[c], atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(batched.metric_all[c], single.metric_all[c], atol=1e-5, rtol=1e-5)


def test_unequal_lengths_name_both_lengths_and_tokens(tiny_gpt2):
    with pytest.raises(InputError) as e:
        run_patching(tiny_gpt2, "The cat sat on the mat", "The dog sat on the log")
    msg = str(e.value)
    assert "clean 9 tokens" in msg and "corrupted 7 tokens" in msg
    assert "'Ġdog'" in msg and "'Ġc'" in msg


def test_same_answers_ask_for_another_pair(tiny_gpt2):
    with pytest.raises(InputError, match="another pair"):
        run_patching(tiny_gpt2, *CAUSAL, PatchingSettings(answer="Ġdog", wrong_answer="Ġdog"))


def test_identical_texts_and_an_unchanged_margin_are_refused(tiny_gpt2, monkeypatch):
    """A run that cannot mean anything is refused with one line, not a table of NaN with a warning about the dtype."""
    with pytest.raises(InputError, match="identical"):
        patching.patch(tiny_gpt2, CAUSAL[0], CAUSAL[0], PatchingSettings(answer=" dog", wrong_answer="og"))
    # different texts whose margins come out equal: the corrupted run answers with the clean run's logits
    calls: list[torch.Tensor] = []
    real = patching.target_logits

    def first_run_twice(*args, **kwargs):  # call 1: the clean run (capture_sites), call 2: the corrupted one
        calls.append(real(*args, **kwargs) if not calls else calls[0])
        return calls[-1]

    monkeypatch.setattr(patching, "target_logits", first_run_twice)
    with pytest.raises(InputError, match="divide by zero") as e:
        patching.patch(tiny_gpt2, *CAUSAL, PatchingSettings(answer=" dog", wrong_answer="og"))
    assert "'Ġdog'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["answer", "wrong_answer"])
def test_an_empty_answer_is_refused_in_words(name):
    with pytest.raises(InputError, match=f"the {name.replace('_', ' ')} is empty: name one token"):
        PatchingSettings(**{name: ""})


def test_masked_lm_needs_the_mask_at_the_same_position(tiny_bert, tiny_encoder):
    with pytest.raises(InputError, match="another pair"):  # the unscaled tiny BERT predicts the same token twice
        run_patching(tiny_bert, *MASKED)
    with pytest.raises(InputError, match="same position"):
        run_patching(tiny_bert, "The [MASK] sat on the mat.", "The dog sat on [MASK] mat.", BERT_ANSWERS)
    with pytest.raises(InputError, match=r"no \[MASK\]"):
        run_patching(tiny_bert, "The dog sat on the mat.", "The cat sat on the mat.", BERT_ANSWERS)
    with pytest.raises(InputError, match="language-model head"):
        run_patching(tiny_encoder, "The dog sat.", "The cat sat.")


def test_answers_must_be_single_tokens(tiny_gpt2):
    with pytest.raises(InputError, match="not one token"):
        run_patching(tiny_gpt2, *CAUSAL, PatchingSettings(answer="hippopotamus"))
    r = run_patching(tiny_gpt2, *CAUSAL, PatchingSettings(answer=" dog", wrong_answer="og"))
    assert (r.answer_token, r.wrong_token, r.answers_from) == ("Ġdog", "og", "given")


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_gone_afterwards(tiny_llama):
    from core.analysis.pipeline import analyze
    from core.analysis.result import results_equal

    before = analyze(tiny_llama, "The dog sat on the log.")
    n = _hook_count(tiny_llama.model)
    run_patching(tiny_llama, *CAUSAL)
    with pytest.raises(InputError):
        run_patching(tiny_llama, *CAUSAL, PatchingSettings(answer="Ġdog", wrong_answer="Ġdog"))
    assert _hook_count(tiny_llama.model) == n
    after = analyze(tiny_llama, "The dog sat on the log.")
    assert results_equal(before, after, ignore=("cache_hit", "timings", "duration_s", "created_at"))


def test_result_round_trips_and_is_cached(tiny_gpt2, tmp_path, monkeypatch):
    cache = ResultCache(tmp_path / "p")
    try:
        first = patch(tiny_gpt2, *CAUSAL, cache=cache)
        assert not first.cache_hit and first.cache_key
        calls = []
        monkeypatch.setattr(patching, "run_patching", lambda *a, **k: calls.append(1))
        again = patch(tiny_gpt2, *CAUSAL, cache=cache)
        assert again.cache_hit and not calls
        for c in patching.COMPONENTS:
            np.testing.assert_array_equal(again.metric[c], first.metric[c])
        assert again.clean_tokens == first.clean_tokens and isinstance(again.clean_tokens, tuple)
        other = patching.patching_cache_key(tiny_gpt2.info(), *CAUSAL, PatchingSettings(answer="Ġdog"))
        assert other != first.cache_key
    finally:
        cache.close()


def test_rows_have_the_csv_layout(runs):
    _, res = runs["gpt2"]
    rows = res.rows()
    L, T = res.n_layers, res.n_tokens
    assert len(rows) == 3 * L * (T + 1)
    assert {r[2] for r in rows} == {"residual", "attention", "mlp"}
    assert sum(1 for r in rows if r[1] == -1) == 3 * L
    assert sorted({r[0] for r in rows}) == list(range(1, L + 1))  # blocks 1…L, as every other file
    res_row = next(r for r in rows if r[:3] == (2, 2, "residual"))  # block 2 = array row 1
    assert res_row[3] == pytest.approx(float(res.restored("residual")[1, 2]))


def test_tiny_difference_is_flagged():
    r = patching.restored_score(np.array([1.0, 2.0]), 1.0, 1.0)
    assert np.isnan(r).all()


# ----------------------------------------------------------------------------------------------------------------
# CLI: python -m core patch, analyze --head-ablation


def test_cli_patch_writes_the_bundle(tiny_dirs, tmp_path, capsys):
    import csv
    import io
    import json
    import zipfile

    from core.cli.main import main

    out = tmp_path / "p.zip"
    rc = main(
        [
            "patch",
            "--model",
            str(tiny_dirs["gpt2"]),
            "--clean",
            CAUSAL[0],
            "--corrupt",
            CAUSAL[1],
            "--out",
            str(out),
            "--no-cache",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        rows = list(csv.reader(io.StringIO(zf.read("patching.csv").decode())))
        summary = json.loads(zf.read("patching.json"))
        manifest = json.loads(zf.read("manifest.json"))
    assert {
        "patching.csv",
        "patching.json",
        "manifest.json",
        "report.pdf",
        "plots/patching_residual.png",
        "plots/patching_components.png",
    } <= names
    assert rows[0][:4] == ["layer", "position", "component", "restored"]
    assert {r[2] for r in rows[1:]} == {"residual", "attention", "mlp"}
    assert any(r[1] == "-1" for r in rows[1:])
    assert summary["clean_tokens"] == ["The", "Ġdog", "Ġsat", "Ġon", "Ġthe", "Ġl", "og"]
    assert summary["corrupted_tokens"][1:3] == ["Ġl", "og"]
    assert {"answer", "wrong_answer", "m_clean", "m_corrupted", "target_position"} <= set(summary)
    assert manifest["kind"] == "activation_patching" and manifest["token_count"] == 7
    from core.model.info import ModelInfo
    from core.model.provenance import provenance
    from tests.manifests import assert_names_every_package

    assert_names_every_package(manifest["package_versions"])  # recorded when the run was computed
    keys = ("model_id", "family", "source", "revision", "architecture", "attn_implementation", "core_version")
    record = provenance(ModelInfo(**{k: v for k, v in summary["model"].items()})).to_dict()
    assert {k: manifest[k] for k in keys} == {k: record[k] for k in keys}


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["--clean", "The cat sat on the mat", "--corrupt", "The dog sat on the log"], "different token lengths"),
        (["--clean", CAUSAL[0], "--corrupt", CAUSAL[1], "--answer", " dog", "--wrong-answer", " dog"], "another pair"),
        (["--clean", CAUSAL[0]], "--corrupt"),
    ],
)
def test_cli_patch_bad_input_is_one_line_and_exit_2(tiny_dirs, tmp_path, capsys, argv, expect):
    from core.cli.main import main

    try:
        rc = main(["patch", "--model", str(tiny_dirs["gpt2"]), *argv, "--out", str(tmp_path / "o"), "--no-cache"])
    except SystemExit as exc:  # argparse errors exit from the parser
        rc = exc.code
    err = capsys.readouterr().err
    last = [line for line in err.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert rc == 2 and last.startswith("error:") and expect in last, err


def test_cli_patch_bad_input_as_a_process(tiny_dirs, tmp_path):
    """The real command: exactly one line on stderr, exit 2."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMA_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "patch",
            "--model",
            str(tiny_dirs["gpt2"]),
            "--clean",
            "The cat sat on the mat",
            "--corrupt",
            "The dog sat on the log",
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "clean 9 tokens" in lines[0] and "corrupted 7 tokens" in lines[0] and "Traceback" not in proc.stderr


def test_cli_analyze_head_ablation_adds_the_csv(tiny_dirs, tmp_path, capsys):
    import csv

    from core.cli.main import main

    out = tmp_path / "a"
    rc = main(
        [
            "analyze",
            "--model",
            str(tiny_dirs["gpt2"]),
            "--text",
            CAUSAL[0],
            "--head-ablation",
            "--no-animations",
            "--no-cache",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    rows = list(csv.reader((out / "head_ablation.csv").open()))
    assert rows[0] == ["layer", "head", "mean_ablation", "zero_ablation"] and len(rows) == 1 + 2 * 4
    assert (out / "plots" / "head_ablation.png").is_file()
    plain = tmp_path / "b"
    assert (
        main(
            [
                "analyze",
                "--model",
                str(tiny_dirs["gpt2"]),
                "--text",
                CAUSAL[0],
                "--no-animations",
                "--no-cache",
                "--out",
                str(plain),
            ]
        )
        == 0
    )
    assert not (plain / "head_ablation.csv").exists()
