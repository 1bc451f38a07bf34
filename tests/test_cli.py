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


def _subcommands():
    """{name: parser} of every subcommand of `python -m core`."""
    import argparse

    from core.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


NEGATIONS = ("do not ", "don't ", "skip ", "no ")


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_boolean_flag_says_what_the_flag_does(name):
    """A switch that turns something off (--no-…, or one that stores False) says so in its help; a switch that
    turns something on does not start with a negation. `analyze --no-gradients` once said "run gradient × input"."""
    import argparse

    switches = [
        a
        for a in _subcommands()[name]._actions
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction))
    ]
    assert switches, name
    for a in switches:
        flag, text = a.option_strings[-1], (a.help or "").lower()
        turns_off = flag.startswith("--no-") or isinstance(a, argparse._StoreFalseAction)
        assert text, f"{name} {flag} has no help"
        assert text.startswith(NEGATIONS) == turns_off, f"{name} {flag}: help {a.help!r}"


def test_settings_switches_negate_their_field_help():
    """The switches made from settings fields: an on-by-default field's --no- flag says "do not <help>", an
    off-by-default field's flag says the help itself; each sets its field (checked through from_cli)."""
    import argparse

    from core.run.settings import AnalysisSettings
    from core.studies.corpus import CorpusSettings
    from core.studies.patching import PatchingSettings

    for cls in (AnalysisSettings, CorpusSettings, PatchingSettings):
        for f in cls.setting_fields():
            if f.type != "bool":
                continue
            p = argparse.ArgumentParser()
            cls.add_cli_arguments(p)
            (a,) = [a for a in p._actions if a.dest == f.name]
            expected = ("do not " if f.default else "") + f.metadata["help"]
            assert a.help.replace("%%", "%") == expected, (cls.__name__, f.name)
            flipped = cls.from_cli(p.parse_args([a.option_strings[0]]))
            assert getattr(flipped, f.name) is (not f.default)
            assert flipped == cls(**{f.name: not f.default})


@pytest.mark.parametrize(
    "name, flags",
    [
        ("analyze", ["--max-tokens", "--no-gradients", "--top-k", "--mask-word", "--head-ablation", "--ig-steps"]),
        (
            "corpus",
            ["--max-tokens", "--batch-size", "--bootstrap", "--max-points", "--seed", "--bootstrap-rank"]
            + ["--include-special-tokens"],
        ),
        ("patch", ["--answer", "--wrong-answer", "--max-tokens", "--no-per-position-components"]),
        ("compare", ["--max-tokens", "--no-gradients", "--top-k"]),
    ],
)
def test_settings_options_of_every_run_come_from_its_settings_class(name, flags):
    """analyze/compare (AnalysisSettings), corpus (CorpusSettings) and patch (PatchingSettings) build their
    settings options from the class's fields: every field is an option with the field's default, and the flags
    the subcommands had before the one settings base are all still there."""
    from core.run.settings import AnalysisSettings, cli_flag, field_kind
    from core.studies.corpus import CorpusSettings
    from core.studies.patching import PatchingSettings

    cls = {"analyze": AnalysisSettings, "compare": AnalysisSettings, "corpus": CorpusSettings}.get(
        name, PatchingSettings
    )
    parser = _subcommands()[name]
    by_flag = {s: a for a in parser._actions for s in a.option_strings}
    for flag in flags:
        assert flag in by_flag, f"{name} lost {flag}"
    for f in cls.setting_fields():
        a = by_flag[cli_flag(f)]
        default = None if field_kind(f) is tuple else f.default  # a repeatable option starts empty (None)
        assert a.dest == f.name and a.default == default, (name, f.name)
