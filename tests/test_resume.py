"""Interrupted runs (core/run/checkpoint.py) and the atomic bundle (core.infra.formats.write_files): a corpus run
and a pair data set interrupted after k finished units ($TMA_INTERRUPT_AFTER, as a Ctrl-C there) leave --out
absent, and `--resume` gives exactly the files of an uninterrupted run; a resume with other inputs is refused with
one line; a bundle interrupted while it is written leaves --out absent or as it was."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from test_pairs import hidden_pairs

from core.cli.main import main
from core.infra.errors import InputError
from core.infra.formats import csv_bytes, write_files
from core.model.info import ModelInfo
from core.run.checkpoint import ENV_INTERRUPT, WorkFolder, fingerprint, work_path
from core.studies.corpus import CorpusSettings, analyze_corpus
from core.studies.pairs import Pair, PairsSettings, run_pairs
from core.studies.patching import COMPONENTS

TEXTS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Language models predict the next token.",
    "Layers transform representations step by step.",
    "Attention heads look at previous tokens.",
    "The dog sat on the log.",
    "Short.",
] * 2
SETTINGS = CorpusSettings(batch_size=3, bootstrap=10, max_points=60, seed=5)
CORPUS_OPTIONS = ["--batch-size", "3", "--bootstrap", "10", "--max-points", "60", "--seed", "5"]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def _units(out: Path) -> list[str]:
    return sorted(p.stem for p in (work_path(out) / "units").glob("*.tma") if p.stem != "model")


def _pairs_file(tmp_path: Path, pairs: list[Pair]) -> Path:
    data = tmp_path / "pairs.csv"
    with data.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["clean", "corrupt"])
        w.writerows([p.clean, p.corrupt] for p in pairs)
    return data


def test_an_interrupted_corpus_run_resumes_to_the_uninterrupted_files(
    tmp_path, tiny_dirs, tiny_gpt2, capsys, monkeypatch
):
    from core.export.corpus_bundle import METRICS_HEADER, PER_TEXT_HEADER

    ref = analyze_corpus(tiny_gpt2, TEXTS, SETTINGS)  # the uninterrupted run (the CLI loads the same float32 model)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["corpus", "--model", str(tiny_dirs["gpt2"]), "--text-file", str(texts), "--no-cache", "--out", str(out)]
    monkeypatch.setenv(ENV_INTERRUPT, "2")
    rc, err = _run([*argv, *CORPUS_OPTIONS], capsys)
    assert rc == 130 and "interrupted" in err
    assert not out.exists() and _units(out) == ["batch-0000000", "batch-0000001"]  # 2 of 5 batches kept
    monkeypatch.delenv(ENV_INTERRUPT)
    rc, err = _run([*argv, *CORPUS_OPTIONS, "--resume"], capsys)
    assert rc == 0 and "resuming from" in err and "2 finished batches of texts" in err
    assert (out / "corpus_metrics.csv").read_bytes() == csv_bytes(METRICS_HEADER, ref.metric_rows())
    assert (out / "per_text_metrics.csv").read_bytes() == csv_bytes(PER_TEXT_HEADER, ref.per_text_rows())
    assert not work_path(out).exists()  # removed once the bundle is in place


def test_a_resume_with_other_inputs_is_refused_in_one_line(tmp_path, tiny_dirs, capsys, monkeypatch):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "out.zip"
    base = ["corpus", "--model", str(tiny_dirs["gpt2"]), "--text-file", str(texts), "--no-cache", "--out", str(out)]
    monkeypatch.setenv(ENV_INTERRUPT, "1")
    assert _run([*base, *CORPUS_OPTIONS], capsys)[0] == 130
    other_seed = [*CORPUS_OPTIONS[:-1], "6"]
    rc, err = _run([*base, *other_seed, "--resume"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "the setting(s) seed differ" in err and "--resume" in err
    texts.write_text("\n".join(TEXTS[:5]) + "\n", encoding="utf-8")
    rc, err = _run([*base, *CORPUS_OPTIONS, "--resume"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "the input differ" in err
    assert not out.exists() and _units(out) == ["batch-0000000"]  # a refusal keeps the finished work
    monkeypatch.setenv(ENV_INTERRUPT, "1")
    rc, err = _run([*base, *other_seed], capsys)  # without --resume: starts over (says so), keeps the new batch
    assert rc == 130 and "starting over" in err and _units(out) == ["batch-0000000"]
    assert '"seed": 6' in (work_path(out) / "run.json").read_text()


def test_an_interrupted_pair_data_set_resumes_to_the_uninterrupted_files(
    tmp_path, tiny_dirs, tiny_gpt2, capsys, monkeypatch
):
    from core.cli.patch import pairs_cells_csv, pairs_csv

    pairs = hidden_pairs(tiny_gpt2.tokenizer, 3, seed=99)
    ref = run_pairs(tiny_gpt2, pairs)
    out = tmp_path / "out"
    argv = ["patch", "--model", str(tiny_dirs["gpt2"]), "--pairs", str(_pairs_file(tmp_path, pairs)), "--no-cache"]
    argv += ["--out", str(out)]
    monkeypatch.setenv(ENV_INTERRUPT, "1")
    assert _run(argv, capsys)[0] == 130
    assert not out.exists() and _units(out) == ["pair-0000000"]
    monkeypatch.delenv(ENV_INTERRUPT)
    rc, err = _run([*argv, "--resume"], capsys)
    assert rc == 0 and "1 finished pair kept" in err and "Pair 3 of 3 (" in err and "pairs/s)" in err  # the tqdm bar
    assert (out / "patching.csv").read_bytes() == pairs_csv(ref)
    assert (out / "patching_pairs.csv").read_bytes() == pairs_cells_csv(ref)


def test_top_k_pairs_resume_inside_the_exact_stage(tmp_path, tiny_gpt2, monkeypatch):
    pairs = hidden_pairs(tiny_gpt2.tokenizer, 3, seed=7)
    settings = PairsSettings(top_k=3)
    ref = run_pairs(tiny_gpt2, pairs, settings)
    fp = fingerprint("patching_pairs", "tiny", "float32", "cpu", settings.to_dict(), pairs_sha256="x")
    monkeypatch.setenv(ENV_INTERRUPT, "4")  # the 3 pairs' cells, then the first pair's top-3 values
    with pytest.raises(KeyboardInterrupt):
        run_pairs(tiny_gpt2, pairs, settings, work=WorkFolder.open(tmp_path / "w", fp, resume=False))
    monkeypatch.delenv(ENV_INTERRUPT)
    work = WorkFolder.open(tmp_path / "w", fp, resume=True)
    assert work.resumed == 4 and work.has("top-0000000") and not work.has("top-0000001")
    seen: list[str] = []
    got = run_pairs(tiny_gpt2, pairs, settings, lambda label, f: seen.append(label), work=work)
    assert not any(label.startswith("Pair ") for label in seen)  # no pair was run again
    assert got.top_sites == ref.top_sites
    for c in COMPONENTS:
        np.testing.assert_array_equal(got.metric[c], ref.metric[c])
        np.testing.assert_array_equal(got.metric_all[c], ref.metric_all[c])
        np.testing.assert_array_equal(got.delta[c], ref.delta[c])


def test_a_work_folder_refuses_units_of_another_model(tmp_path):
    def info(revision: str) -> ModelInfo:
        return ModelInfo("m", "causal_lm", "local", revision, None, "float32", "cpu", "eager", "GPT2", 2, 2, 8)

    fp = fingerprint("corpus", "m", "auto", "auto", {"seed": 1}, sha256="x")
    work = WorkFolder.open(tmp_path / "w", fp, resume=True)
    work.check_model(info("sha256:aaa"))
    work.save("batch-0000000", {"ids": [0]})
    again = WorkFolder.open(tmp_path / "w", fp, resume=True)
    assert again.resumed == 1 and again.has("batch-0000000")
    again.check_model(info("sha256:aaa"))
    with pytest.raises(InputError, match=r"another model \(revision sha256:aaa → sha256:bbb\)"):
        again.check_model(info("sha256:bbb"))


class _Interrupted(dict):
    """Bundle members whose iteration stops (as a Ctrl-C) after `after` files were handed out."""

    def __init__(self, files: dict[str, bytes], after: int) -> None:
        super().__init__(files)
        self.after = after

    def items(self):  # type: ignore[override]
        for i, kv in enumerate(super().items()):
            if i == self.after:
                raise KeyboardInterrupt
            yield kv


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_an_interrupted_bundle_leaves_out_absent_or_as_it_was(tmp_path, kind):
    import zipfile

    out = tmp_path / ("b.zip" if kind == "zip" else "b")
    new = {"manifest.json": b"{}", "plots/a.png": b"png", "report.pdf": b"pdf"}
    with pytest.raises(KeyboardInterrupt):
        write_files(_Interrupted(new, 2), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # absent, and no temporary file left beside it
    write_files({"manifest.json": b"old", "stale.csv": b"x"}, out)

    def read() -> dict[str, bytes]:
        if kind == "zip":
            with zipfile.ZipFile(out) as zf:
                return {n: zf.read(n) for n in zf.namelist()}
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    old = read()
    with pytest.raises(KeyboardInterrupt):
        write_files(_Interrupted(new, 2), out)
    assert read() == old and [p.name for p in tmp_path.iterdir()] == [out.name]  # the earlier bundle, untouched
    write_files(new, out)
    assert read() == new  # replaced whole: the earlier bundle's stale.csv is gone


def test_a_folder_of_other_files_is_never_replaced(tmp_path):
    """(The CLI refuses it before any run: tests/test_hostile_input.py, folder-of-other-files.)"""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an earlier bundle"):
        write_files({"manifest.json": b"{}"}, mine)
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and [p.name for p in mine.iterdir()] == ["notes.txt"]
