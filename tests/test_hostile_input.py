"""Hostile input, as a stranger on a public server would type it: every foreseeable bad input ends with exit 1 or 2
and one short line (exit 3 is for bugs), nothing already there is lost, and user text is never interpreted
(Markdown in the app, bidi/control characters in HTML and the PDF, special tokens typed in the text, remote code in
a model folder)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from core.analysis.pipeline import analyze
from core.cli import main as cli
from core.infra.errors import InputError, ModelUnavailableError

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--no-animations", "--no-gradients", "--no-cache"]


def run(argv, capsys) -> tuple[int, str, str]:
    """core.cli.main.main in this process (argparse errors exit through SystemExit)."""
    try:
        rc = cli.main(argv)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def one_short_line(err: str, limit: int = 300) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert len(lines[0]) <= limit, f"{len(lines[0])} characters: {lines[0][:120]}…"
    assert lines[0].startswith("error: ") and "unexpected" not in lines[0]
    return lines[0]


@pytest.fixture
def no_analysis(monkeypatch):
    """Any analysis fails the test: the input must be refused before it."""

    def forbidden(*_a, **_k):
        raise AssertionError("the analysis ran although the input was refused")

    monkeypatch.setattr("core.analysis.pipeline.analyze", forbidden)


@pytest.fixture
def no_load(monkeypatch):
    """Nothing may be fetched or loaded: the model id or the guards must stop the run first."""
    from core.model import loading as models

    def forbidden(*_a, **_k):
        raise AssertionError("a model was fetched or loaded although the input was refused")

    monkeypatch.setattr(models, "hub_reachable", forbidden)
    monkeypatch.setattr("transformers.AutoConfig.from_pretrained", forbidden)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", forbidden)
    monkeypatch.setattr("safetensors.safe_open", forbidden)


# ----------------------------------------------------------------------------------------------------------------
# Model ids


@pytest.mark.parametrize(
    "model_id,code",
    [
        ("x" * 5000, 2),
        ("org/" + "y" * 300, 2),
        ("http://evil.example/model", 2),
        ("https://huggingface.co/gpt2", 2),
        ("gpt2\u202e", 2),
        ("bad id!", 2),
        ("[Click to fix](http://evil.example)", 1),  # path-like (it has slashes): 'the model folder … does not exist'
    ],
)
def test_cli_model_ids(model_id, code, tmp_path, capsys, no_load):
    rc, out, err = run(
        ["analyze", "--model", model_id, "--text", "hi", "--out", str(tmp_path / "b.zip"), *FAST], capsys
    )
    line = one_short_line(err)
    assert rc == code, line
    assert "\u202e" not in line and not out
    assert not (tmp_path / "b.zip").exists()


def test_cli_model_id_in_a_subprocess_exits_2(tmp_path):
    """The real entry point, for the exit code the shell sees."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "analyze",
            "--model",
            "x" * 5000,
            "--text",
            "hi",
            "--out",
            str(tmp_path / "b.zip"),
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    one_short_line(proc.stderr)


# ----------------------------------------------------------------------------------------------------------------
# --out and --text-file


def test_cli_empty_out_is_refused_and_writes_nothing(tmp_path, capsys, monkeypatch, tiny_dirs, no_analysis):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(["analyze", "--model", str(tiny_dirs["gpt2"]), "--text", "hi", "--out", "", *FAST], capsys)
    assert rc == 2 and "--out" in one_short_line(err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_cli_unwritable_out_is_refused_before_the_analysis(where, tmp_path, capsys, tiny_dirs, no_analysis):
    if where == "under-a-file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "sub" / "b.zip"
    else:  # /proc refuses new files even to root, like a read-only mount
        out = Path("/proc/tma-bundle")
        if not Path("/proc").is_dir():
            pytest.skip("no /proc")
    rc, _, err = run(["analyze", "--model", str(tiny_dirs["gpt2"]), "--text", "hi", "--out", str(out), *FAST], capsys)
    line = one_short_line(err)
    assert rc == 2 and "--out" in line


def test_cli_out_existing_file(tmp_path, capsys, tiny_dirs, no_analysis):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    rc, _, err = run(
        ["analyze", "--model", str(tiny_dirs["gpt2"]), "--text", "hi", "--out", str(target), *FAST], capsys
    )
    assert rc == 2 and "existing file" in one_short_line(err)
    assert target.read_text() == "keep me"  # nothing lost


@pytest.mark.parametrize("kind", ["folder", "binary", "long-name", "missing"])
def test_cli_text_file_problems(kind, tmp_path, capsys, tiny_dirs, no_analysis):
    expected = {
        "folder": "is a folder",
        "binary": "not UTF-8",
        "long-name": "cannot be read",
        "missing": "does not exist",
    }[kind]
    path = {
        "folder": tmp_path,
        "binary": tmp_path / "b.bin",
        "long-name": tmp_path / ("n" * 300),
        "missing": tmp_path / "nope.txt",
    }[kind]
    if kind == "binary":
        path.write_bytes(b"\xff\xfe\x00\x81 not utf-8 \xc3\x28")
    rc, _, err = run(
        [
            "analyze",
            "--model",
            str(tiny_dirs["gpt2"]),
            "--text-file",
            str(path),
            "--out",
            str(tmp_path / "o.zip"),
            *FAST,
        ],
        capsys,
    )
    assert rc == 2 and expected in one_short_line(err)


def test_cli_text_over_the_bound(tmp_path, capsys, tiny_dirs, monkeypatch, no_analysis):
    monkeypatch.setenv("TMA_MAX_TEXT_CHARS", "100")
    rc, _, err = run(
        ["analyze", "--model", str(tiny_dirs["gpt2"]), "--text", "word " * 30, "--out", str(tmp_path / "o.zip"), *FAST],
        capsys,
    )
    line = one_short_line(err)
    assert rc == 2 and "150 characters" in line and "100" in line
    assert not (tmp_path / "o.zip").exists()


def _subcommand(name: str, model: str, tmp_path: Path, out: Path | None) -> list[str]:
    """A valid command line of subcommand `name` (its inputs written under tmp_path), with --out `out`."""
    lines = tmp_path / "lines.txt"
    lines.write_text("The cat sat on the mat.\nThe dog sat on the log.\n")
    argv = {
        "analyze": ["analyze", "--model", model, "--text", "hi", *FAST],
        "generate": ["generate", "--model", model, "--text", "hi"],
        "patch": ["patch", "--model", model, "--clean", "The cat sat", "--corrupt", "The dog sat", "--no-cache"],
        "corpus": ["corpus", "--model", model, "--text-file", str(lines), "--no-cache", "--no-progress"],
        "compare": ["compare", "--model", model, "--text", "hi", "--text-b", "ho", "--no-animations", "--no-cache"],
    }[name]
    return argv + (["--out", str(out)] if out is not None else [])


@pytest.mark.parametrize("name", ["analyze", "patch", "corpus", "compare"])
@pytest.mark.parametrize(
    "problem", ["read-only", "parent-is-a-file", "existing-file", "zip-is-a-folder", "folder-of-other-files"]
)
def test_every_subcommand_checks_out_before_loading_a_model(name, problem, tmp_path, capsys, tiny_dirs, no_load):
    """One shared check (core.cli.common.check_paths): exit 2 and one line naming --out, before any model loads."""
    if problem == "read-only":  # /proc refuses new files even to root, like a read-only mount
        if not Path("/proc").is_dir():
            pytest.skip("no /proc")
        out, expect = Path("/proc/tma-bundle.zip"), "not writable"
    elif problem == "parent-is-a-file":
        (tmp_path / "f").write_text("x")
        out, expect = tmp_path / "f" / "sub" / "b.zip", "is a file, not a folder"
    elif problem == "existing-file":
        out, expect = tmp_path / "notes.txt", "existing file"
        out.write_text("keep me")
    elif problem == "zip-is-a-folder":
        out, expect = tmp_path / "old.zip", "existing folder"
        out.mkdir()
    else:  # a bundle folder is replaced whole (core.infra.formats.write_files): never a folder of other files
        out, expect = tmp_path / "mine", "holds other files"
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    rc, _, err = run(_subcommand(name, str(tiny_dirs["gpt2"]), tmp_path, out), capsys)
    line = one_short_line(err)
    assert rc == 2 and "--out" in line and expect in line, line
    if problem in ("existing-file", "folder-of-other-files"):
        assert (out if out.is_file() else out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "name, option",
    [
        ("analyze", "--text-file"),
        ("generate", "--text-file"),
        ("patch", "--clean-file"),
        ("patch", "--corrupt-file"),
        ("corpus", "--text-file"),
        ("corpus", "--csv"),
        ("compare", "--text-file"),
        ("compare", "--text-b-file"),
    ],
)
def test_every_input_file_given_as_a_folder_says_so(name, option, tmp_path, capsys, tiny_dirs, no_load):
    argv = _subcommand(name, str(tiny_dirs["gpt2"]), tmp_path, tmp_path / "o.zip" if name != "generate" else None)
    # the option replaces its text twin (--clean → --clean-file …), or --text-file of corpus (→ --csv)
    twin = {"--text-b-file": "--text-b", "--csv": "--text-file"}.get(option, option.removesuffix("-file"))
    twin = option if twin not in argv else twin  # corpus --text-file: its own value is replaced
    i = argv.index(twin)
    argv[i : i + 2] = [option, str(tmp_path)] + (["--column", "text"] if option == "--csv" else [])
    rc, _, err = run(argv, capsys)
    line = one_short_line(err)
    assert rc == 2 and "is a folder" in line and "does not exist" not in line, line
    assert not (tmp_path / "o.zip").exists()


def test_patch_refuses_identical_texts_and_an_empty_answer_in_words(tmp_path, capsys, tiny_dirs, no_load):
    base = ["patch", "--model", str(tiny_dirs["gpt2"]), "--out", str(tmp_path / "p.zip"), "--no-cache"]
    rc, _, err = run([*base, "--clean", "The cat sat", "--corrupt", "The cat sat"], capsys)
    assert rc == 2 and "identical" in one_short_line(err)
    for option, which in (("--answer", "answer"), ("--wrong-answer", "wrong answer")):
        rc, _, err = run([*base, "--clean", "The cat sat", "--corrupt", "The dog sat", option, ""], capsys)
        line = one_short_line(err)
        assert rc == 2 and f"the {which} is empty" in line and "leave it out" in line, line
    assert not (tmp_path / "p.zip").exists()


# ----------------------------------------------------------------------------------------------------------------
# Guards through the CLI


def test_cli_allow_list_and_parameter_limit(tmp_path, capsys, tiny_dirs, monkeypatch, no_load):
    argv = ["analyze", "--model", str(tiny_dirs["gpt2"]), "--text", "hi", "--out", str(tmp_path / "o.zip"), *FAST]
    monkeypatch.setenv("TMA_ALLOWED_MODELS", "gpt2")
    rc, _, err = run(argv, capsys)
    assert rc == 2 and "gpt2" in one_short_line(err) and "TMA_ALLOWED_MODELS" in err
    monkeypatch.delenv("TMA_ALLOWED_MODELS")
    monkeypatch.setenv("TMA_MAX_PARAMETERS", "1000")
    rc, _, err = run(argv, capsys)
    assert rc == 2 and "TMA_MAX_PARAMETERS" in one_short_line(err)
    monkeypatch.setenv("TMA_ALLOW_LOCAL_MODELS", "0")
    monkeypatch.delenv("TMA_MAX_PARAMETERS")
    rc, _, err = run(argv, capsys)
    line = one_short_line(err)
    assert rc == 2 and "TMA_ALLOW_LOCAL_MODELS" in line and str(tiny_dirs["gpt2"]) not in line


# ----------------------------------------------------------------------------------------------------------------
# Warnings the CLI used to keep in manifest.json only


def test_cli_prints_truncation_and_ignored_options_as_warnings(tmp_path, capsys, tiny_dirs):
    text = " ".join(["The cat sat on the mat."] * 40)
    rc, out, err = run(
        [
            "analyze",
            "--model",
            str(tiny_dirs["gpt2"]),
            "--text",
            text,
            "--max-tokens",
            "16",
            "--lens-position",
            "9999",
            "--out",
            str(tmp_path / "o.zip"),
            *FAST,
        ],
        capsys,
    )
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert any("truncated to 16 tokens" in w for w in warnings), err
    assert any("lens_position 9999" in w for w in warnings), err
    assert out.startswith("wrote ")
    with zipfile.ZipFile(tmp_path / "o.zip") as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert len(manifest["warnings"]) == len(warnings)  # the same warnings, no more, no fewer


def test_cli_corrupt_cache_is_a_warning_not_a_failure(tmp_path, capsys, tiny_dirs):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "cache.db").write_bytes(b"not a database" * 64)
    rc, _, err = run(
        [
            "analyze",
            "--model",
            str(tiny_dirs["gpt2"]),
            "--text",
            "The cat sat.",
            "--cache-dir",
            str(cache),
            "--out",
            str(tmp_path / "o.zip"),
            "--no-animations",
            "--no-gradients",
        ],
        capsys,
    )
    assert rc == 0, err
    assert any(line.startswith("warning: the result cache was corrupt") for line in err.splitlines()), err
    assert (tmp_path / "cache.corrupt" / "cache.db").exists()


# ----------------------------------------------------------------------------------------------------------------
# Special tokens typed in the text


def test_typed_special_tokens_are_marked_special(tiny_bert):
    r = analyze(tiny_bert, "the cat [SEP] sat [PAD] on [CLS] the mat", compute_gradients=False)
    typed = {t for t, s in zip(r.tokens[1:-1], r.special_mask[1:-1]) if s}
    assert typed == {"[SEP]", "[PAD]", "[CLS]"}, list(zip(r.tokens, r.special_mask))
    assert all(s == (t in ("[CLS]", "[SEP]", "[PAD]")) for t, s in zip(r.tokens, r.special_mask))
    excl = analyze(
        tiny_bert, "the cat [SEP] sat [PAD] on [CLS] the mat", compute_gradients=False, exclude_special_tokens=True
    )
    assert excl.metric_tokens == "special tokens excluded"


def test_unknown_words_are_not_special(tiny_bert):
    r = analyze(tiny_bert, "the cat sat on the ☃ mat", compute_gradients=False)
    unk = [s for t, s in zip(r.tokens, r.special_mask) if t == "[UNK]"]
    assert unk and not any(unk)  # [UNK] stands for real text


def test_typed_end_of_text_is_special_for_gpt2(tiny_gpt2):
    r = analyze(tiny_gpt2, "The cat<|endoftext|>The dog", compute_gradients=False)
    marked = [t for t, s in zip(r.tokens, r.special_mask) if s]
    assert marked == ["<|endoftext|>"]


# ----------------------------------------------------------------------------------------------------------------
# trust_remote_code never


EVIL = """
import os, pathlib
pathlib.Path(os.environ["TMA_EVIL_MARKER"]).write_text("imported")
from transformers import PretrainedConfig
class EvilConfig(PretrainedConfig):
    model_type = "evil"
"""


def _plant(folder: Path, marker: Path, model_type: str | None) -> None:
    for name in ("configuration_evil.py", "modeling_evil.py", "tokenization_evil.py"):
        (folder / name).write_text(EVIL)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {
        "AutoConfig": "configuration_evil.EvilConfig",
        "AutoModel": "modeling_evil.EvilModel",
        "AutoModelForCausalLM": "modeling_evil.EvilModel",
    }
    if model_type is not None:
        cfg["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(cfg))
    tok_cfg = folder / "tokenizer_config.json"
    tcfg = json.loads(tok_cfg.read_text())
    tcfg["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    tok_cfg.write_text(json.dumps(tcfg))


@pytest.mark.parametrize("model_type", ["evil", None])
def test_remote_code_in_a_model_folder_is_never_imported(model_type, tiny_dirs, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dirs["gpt2"], folder)
    marker = tmp_path / "IMPORTED"
    monkeypatch.setenv("TMA_EVIL_MARKER", str(marker))
    _plant(folder, marker, model_type)
    from core.model import loading as models

    if model_type == "evil":  # only the remote code knows this type: refused, not imported
        with pytest.raises(ModelUnavailableError, match="never runs") as err:
            models.load_model(str(folder), dtype="float32", device="cpu")
        assert "\n" not in str(err.value) and "trust_remote_code=True" not in str(err.value)
    else:  # a native type with an auto_map: loaded with the native class
        loaded = models.load_model(str(folder), dtype="float32", device="cpu")
        assert type(loaded.model).__module__.startswith("transformers.models.gpt2")
    assert not marker.exists()
    assert not [m for m in sys.modules if "evil" in m]


# ----------------------------------------------------------------------------------------------------------------
# Text shown safely: HTML, PDF, Markdown


HOSTILE = "Hi \u202eevil\u202c <script>alert(1)</script> [Click](http://evil.example) **b** :red[x] \x07 end"


def test_session_log_and_token_html_escape_controls_and_markup():
    from core.export.session_log import _e
    from core.present.tables import shaded_tokens_html

    for html_out in (_e(HOSTILE), shaded_tokens_html(HOSTILE.split(" "), [1.0] * len(HOSTILE.split(" ")))):
        assert "<script>" not in html_out and "\u202e" not in html_out and "\x07" not in html_out
        assert "⟨U+202E⟩" in html_out and "&lt;script&gt;" in html_out


def test_pdf_boxes_control_and_bidi_characters():
    from core.export.pdf import PLACEHOLDER, safe_text

    out = safe_text(HOSTILE)
    assert "\u202e" not in out and "\x07" not in out and "\u202c" not in out
    assert out.count(PLACEHOLDER) == 3 and "evil" in out and "end" in out  # boxed, not dropped


def test_pdf_of_a_hostile_text(tiny_gpt2):
    from pypdf import PdfReader

    from core.export.bundle import bundle_files
    from core.infra.options import ExportOptions

    r = analyze(tiny_gpt2, HOSTILE, compute_gradients=False)
    files = bundle_files(r, ExportOptions(animations=False))
    text = "".join(page.extract_text() or "" for page in PdfReader(io.BytesIO(files["report.pdf"])).pages)
    assert "\u202e" not in text and "\x07" not in text
    assert "<script>" not in files["session_log.html"].decode()


@pytest.mark.parametrize(
    "hostile",
    [
        "[Click to fix](http://evil.example)",
        "**bold** _it_ `code`",
        ":red[red] :material/home:",
        "<b>x</b> &amp;",
        "# heading",
        "- item",
        "a\u202eb",
        "$x^2$",
        "![img](http://evil.example/x.png)",
        "www.evil.example",
        "mail me: a@evil.example",
        "`code` and ``more`` http://x.example/`y`",
    ],
)
def test_md_escape_leaves_no_markdown(hostile):
    from app.markdown import md_escape

    out = md_escape(hostile)
    unescaped = re.sub(r"\\.|(`+).*?\1", "", out)  # drop escaped characters and code spans: the rest must be inert
    assert not re.search(r"[\[\]()*_`<>#:$!&]|www\.|https?:|\S@\S", unescaped), out
    assert "\u202e" not in out


def test_error_banner_and_caption_escape_user_text():
    """The error banner and the result header pass user text through md_escape (no live link in the banner)."""
    import inspect

    from app import sidebar, widgets

    banner = inspect.getsource(sidebar.draw_error_banner)
    assert 'md_escape(err["message"])' in banner and "err['message']" not in banner
    header = inspect.getsource(widgets.result_header)
    assert "md_escape(shorten(result.analysed_text))" in header and "md_escape(m.model_id)" in header


def test_app_banner_for_a_markdown_model_id(tmp_path):
    """AppTest: the banner's Markdown source holds the id escaped, the text field keeps its text."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.query_params["model"] = "[Click to fix](http://evil.example)"
    at.run()
    at.session_state["text"] = "My own text."
    at.button(key="analyze").click().run()
    assert at.error, "a banner is shown"
    body = at.error[0].value
    assert "[Click to fix](http" not in body and "\\[Click to fix\\]" in body
    assert at.session_state["text"] == "My own text."


def test_app_over_long_text_is_kept_and_reported(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("TMA_MAX_TEXT_CHARS", "50")
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.run()
    long_text = "A sentence that is clearly longer than fifty characters in all."
    at.session_state["text"] = long_text
    at.run()
    assert any("at most 50 are analysed" in w.value for w in at.sidebar.warning)
    at.button(key="analyze").click().run()
    assert at.session_state["text"] == long_text  # nothing dropped
    assert at.session_state["result"] is None
    assert at.error and f"{len(long_text)} characters" in at.error[0].value


@pytest.mark.parametrize("text", ["\u200b\u200c\u200d", "\ufeff \u200b\n\u2060", "\u202e\u200f"])
def test_a_text_of_invisible_characters_is_refused_in_words(text, tiny_bert, capsys, tmp_path, no_load):
    with pytest.raises(InputError, match="no visible characters"):
        analyze(tiny_bert, text, compute_gradients=False)
    rc, _, err = run(["analyze", "--model", "m", "--text", text, "--out", str(tmp_path / "o.zip"), *FAST], capsys)
    assert rc == 2 and "no visible characters" in one_short_line(err)


def test_typed_special_tokens_get_a_note_and_only_special_tokens_are_refused(tiny_bert, tiny_gpt2):
    with pytest.raises(InputError, match=r"only special tokens \('\[CLS\]', '\[SEP\]' typed as text\)"):
        analyze(tiny_bert, "[CLS] [SEP]", compute_gradients=False)
    r = analyze(tiny_bert, "the cat [SEP] sat", compute_gradients=False)
    notes = [w for w in r.warnings if "typed as text" in w]
    assert len(notes) == 1 and "'[SEP]'" in notes[0] and "'[CLS]'" not in notes[0]  # the added [CLS] is not typed
    g = analyze(tiny_gpt2, "The cat<|endoftext|>The dog", compute_gradients=False)
    assert any("'<|endoftext|>' typed as text" in w for w in g.warnings)
    plain = analyze(tiny_bert, "the cat sat on the [MASK].", compute_gradients=False)  # how a masked LM is asked
    assert not [w for w in plain.warnings if "typed as text" in w]
