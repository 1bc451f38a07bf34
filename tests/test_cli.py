"""The headless CLI end to end (subprocess, offline) and its one-line failures."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, tmp_path, stdin=None):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TMA_CACHE_DIR": str(tmp_path / "cache"),
        "TMA_RUNS_DIR": str(tmp_path / "runs"),
    }
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
    )


@pytest.fixture(scope="module")
def minilm_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    out = tmp / "b.zip"
    proc = run_cli(
        "analyze",
        "--model",
        "sentence-transformers/all-MiniLM-L6-v2",
        "--text",
        "The cat sat on the mat.",
        "--out",
        str(out),
        "--no-animations",
        tmp_path=tmp,
    )
    return proc, out


@pytest.mark.slow
def test_cli_writes_a_valid_bundle(minilm_bundle):
    proc, out = minilm_bundle
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        assert {"manifest.json", "layer_metrics.csv", "attentions.npy", "tokens.json"} <= names
        manifest = json.loads(zf.read("manifest.json"))
        tokens = json.loads(zf.read("tokens.json"))
        header = zf.read("layer_metrics.csv").decode().splitlines()[0]
        import io

        att = np.load(io.BytesIO(zf.read("attentions.npy")), allow_pickle=False)
    assert header.startswith(
        "layer,effective_rank,participation_ratio,intrinsic_dim_95,activation_entropy,cosine_to_input"
    )
    assert att.dtype == np.float32 and att.shape == (6, 12, len(tokens), len(tokens))
    for key in (
        "model_id",
        "family",
        "revision",
        "dtype",
        "device",
        "attn_implementation",
        "text",
        "token_count",
        "layers",
        "heads",
        "settings",
        "core_version",
        "package_versions",
        "created_at",
    ):
        assert key in manifest, key
    assert manifest["family"] == "encoder" and manifest["token_count"] == len(tokens)
    assert manifest["attn_implementation"] == "eager"


@pytest.mark.slow
def test_cli_folder_output_and_text_file(tmp_path, tiny_dirs):
    f = tmp_path / "t.txt"
    f.write_text("The dog sat on the log.", encoding="utf-8")

    def analyse_to(out, *extra):
        common = ["--model", str(tiny_dirs["gpt2"]), "--text-file", str(f), "--no-animations", "--no-gradients"]
        proc = run_cli("analyze", *common, "--out", str(out), *extra, tmp_path=tmp_path)
        assert proc.returncode == 0, proc.stderr

    out = tmp_path / "bundle"
    analyse_to(out)
    assert (out / "manifest.json").is_file() and (out / "layer_metrics.csv").is_file()
    assert json.loads((out / "manifest.json").read_text())["text"] == "The dog sat on the log."
    # the bundle holds every deeper view by default, as the app's export does; --views none leaves them out
    assert (out / "flow_edges.csv").is_file() and (out / "direct_logit_attribution.csv").is_file()
    assert (out / "neuron_factors.csv").is_file() and (out / "query_key.csv").is_file()
    out2 = tmp_path / "bundle2"
    analyse_to(out2, "--views", "none", "--no-cache")  # without --no-cache the first run's fuller result answers
    assert not (out2 / "flow_edges.csv").exists() and not (out2 / "neuron_factors.csv").exists()


@pytest.mark.parametrize(
    "args, code",
    [
        (["analyze", "--model", "gpt2", "--text", "hi", "--out", "x.zip"], 1),
        (["analyze", "--model", "/no/such/folder", "--text", "hi", "--out", "x.zip"], 1),
        (["analyze", "--model", "sentence-transformers/all-MiniLM-L6-v2", "--text", "   ", "--out", "x.zip"], 2),
        (["analyze", "--model", "m", "--text-file", "/no/such/file.txt", "--out", "x.zip"], 2),
        (["analyze", "--model", "m", "--text", "hi", "--out", "x.zip", "--max-tokens", "0"], 2),
        (["analyze", "--model", "m"], 2),
        (["analyze", "--model", "m", "--text", "hi", "--out", "x.zip", "--views", "dla,attention"], 2),
        (["frobnicate"], 2),
    ],
)
def test_cli_bad_input_exits_nonzero_with_one_line(tmp_path, args, code):
    args = [a if a != "x.zip" else str(tmp_path / "x.zip") for a in args]
    proc = run_cli(*args, tmp_path=tmp_path)
    assert proc.returncode == code, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.zip").exists()


def test_cli_help_documents_every_option(tmp_path):
    proc = run_cli("analyze", "--help", tmp_path=tmp_path)
    assert proc.returncode == 0
    for opt in (
        "--model",
        "--text",
        "--text-file",
        "--out",
        "--dtype",
        "--device",
        "--max-tokens",
        "--exclude-special-tokens",
        "--mask-word",
        "--no-cache",
    ):
        assert opt in proc.stdout
