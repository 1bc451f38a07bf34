"""The Ray engine of patching over pairs (core/studies/pairs_ray.py) gives the local engine's numbers: a local
Ray cluster of 2 CPU workers, each loading the tiny GPT-2 once, for the exact grid and for the top-K stage.
Skipped when Ray is not installed (requirements-ray.txt, included by requirements-dev.txt)."""

from __future__ import annotations

import numpy as np
import pytest
from test_pairs import hidden_pairs

from core.infra.errors import InputError
from core.studies.pairs import Pair, PairsSettings, run_pairs
from core.studies.patching import COMPONENTS

ray = pytest.importorskip("ray")


@pytest.fixture
def cluster(ray_cluster):
    """The session's local cluster of 2 CPUs (tests/conftest.py)."""


def _same(local, remote):
    assert [(r.answer_id, r.wrong_id, r.near_tie) for r in local.pairs] == [
        (r.answer_id, r.wrong_id, r.near_tie) for r in remote.pairs
    ]
    np.testing.assert_allclose([r.m_clean for r in remote.pairs], [r.m_clean for r in local.pairs], atol=1e-6)
    for c in COMPONENTS:
        np.testing.assert_allclose(remote.metric[c], local.metric[c], atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(remote.metric_all[c], local.metric_all[c], atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(remote.delta[c], local.delta[c], atol=1e-6)
    a, b = np.array([r[3:] for r in local.rows()]), np.array([r[3:] for r in remote.rows()])
    np.testing.assert_allclose(b, a, atol=1e-6, equal_nan=True)
    assert local.tokens == remote.tokens and local.top_sites == remote.top_sites


@pytest.mark.parametrize("settings", [PairsSettings(), PairsSettings(top_k=3)], ids=["grid", "top3"])
def test_ray_engine_with_two_workers_equals_local(cluster, tiny_dirs, tiny_gpt2, settings):
    from core.studies.pairs_ray import run_pairs_ray

    pairs = hidden_pairs(tiny_gpt2.tokenizer, 5, seed=1234)
    local = run_pairs(tiny_gpt2, pairs, settings)
    remote = run_pairs_ray(str(tiny_dirs["gpt2"]), pairs, settings, dtype="float32", device="cpu", workers=2)
    _same(local, remote)
    assert np.isfinite(remote.metric["residual"]).any()


def test_ray_engine_reports_bad_pairs_like_local(cluster, tiny_dirs, tiny_gpt2):
    from core.studies.pairs_ray import run_pairs_ray

    pairs = hidden_pairs(tiny_gpt2.tokenizer, 2, seed=1234)
    with pytest.raises(InputError, match="pair 3: the texts have different token lengths"):
        run_pairs_ray(
            str(tiny_dirs["gpt2"]),
            [*pairs, Pair("The dog sat on the log", "The dog sat")],
            PairsSettings(atp_only=True),
            dtype="float32",
            device="cpu",
            workers=2,
        )


@pytest.fixture(scope="module")
def grid(tiny_gpt2):
    """4 hidden pairs and their local exact grid (the undisturbed run)."""
    pairs = hidden_pairs(tiny_gpt2.tokenizer, 4, seed=4321)
    return pairs, run_pairs(tiny_gpt2, pairs, PairsSettings())


def test_a_worker_killed_mid_batch_is_retried_to_the_same_result(cluster, tiny_dirs, grid, tmp_path, monkeypatch):
    from core.studies.pairs_ray import ENV_FAULT, run_pairs_ray

    pairs, local = grid
    marker = tmp_path / "killed"
    monkeypatch.setenv(ENV_FAULT, str(marker))
    remote = run_pairs_ray(str(tiny_dirs["gpt2"]), pairs, PairsSettings(), dtype="float32", device="cpu", workers=2)
    assert marker.exists()  # a worker did die, after its first pair, before returning its batch
    _same(local, remote)


def test_an_interrupted_ray_run_resumes_from_the_finished_pairs(
    cluster, tiny_dirs, grid, tmp_path, capsys, monkeypatch
):
    """Through the CLI: interrupted after 2 of 4 pairs (--out absent), `--resume` sends the other 2 to the workers
    and gives the undisturbed numbers; the tqdm bar shows pairs done / total with the rate."""
    import csv

    from core.cli.main import main
    from core.run.checkpoint import ENV_INTERRUPT, work_path

    pairs, local = grid
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(f'{{"clean": "{p.clean}", "corrupt": "{p.corrupt}"}}\n' for p in pairs), encoding="utf-8")
    out = tmp_path / "out"
    argv = ["patch", "--model", str(tiny_dirs["gpt2"]), "--pairs", str(data), "--engine", "ray", "--workers", "1",
            "--dtype", "float32", "--device", "cpu", "--out", str(out)]  # fmt: skip
    monkeypatch.setenv(ENV_INTERRUPT, "2")
    assert main(argv) == 130
    units = sorted(p.stem for p in (work_path(out) / "units").glob("pair-*.tma"))
    assert not out.exists() and len(units) == 2
    capsys.readouterr()
    monkeypatch.delenv(ENV_INTERRUPT)
    assert main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "2 finished pairs" in err and "Pair 3 of 4 (" in err and "pairs/s)" in err  # tqdm: done / total, rate
    assert "Pair 2 of 4" not in err  # the finished pairs were not sent again
    rows = list(csv.DictReader((out / "patching.csv").read_text(encoding="utf-8").splitlines()))
    want = local.rows()
    assert len(rows) == len(want)
    for got, ref in zip(rows, want, strict=True):
        assert (int(got["layer"]), int(got["position"]), got["component"]) == ref[:3]
        for key, v in (("restored", ref[3]), ("atp", ref[7])):
            assert float(got[key] or "nan") == pytest.approx(v, abs=1e-6, nan_ok=True)
    assert not work_path(out).exists()


def _write(pairs, tmp_path, kind):
    """The pairs as a file with non-default column names, the first pair's answers given, the others empty."""
    import csv
    import json

    rows = [{"id": i, "a": p.clean, "b": p.corrupt, "ans": "", "bad": ""} for i, p in enumerate(pairs)]
    if kind == "csv":
        path = tmp_path / "pairs.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        path = tmp_path / "pairs.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# JSONL through the AtP stage here; CSV through both stages (top 2) in the resume test below, whose resumed run must
# equal the local engine (one Ray test for both saves ~30 s of CI)
STREAMED = [("jsonl", PairsSettings(atp_only=True))]


@pytest.mark.parametrize(("kind", "settings"), STREAMED, ids=["jsonl-atp"])
def test_a_pairs_file_streams_through_ray_data_readers_to_the_local_numbers(cluster, tiny_dirs, tiny_gpt2, tmp_path,
                                                                            kind, settings):  # fmt: skip
    from core.studies.pairs import parse_pairs
    from core.studies.pairs_ray import PairSource, run_pairs_ray

    path = _write(hidden_pairs(tiny_gpt2.tokenizer, 4, seed=77), tmp_path, kind)
    cols = {"clean_column": "a", "corrupt_column": "b", "answer_column": "ans"}
    local = run_pairs(tiny_gpt2, parse_pairs(path.read_bytes(), path.name, **cols), settings)
    source = PairSource(str(path), **cols)
    remote = run_pairs_ray(str(tiny_dirs["gpt2"]), source, settings, dtype="float32", device="cpu", workers=2)
    _same(local, remote)
    assert [(r.clean_text, r.corrupted_text) for r in remote.pairs] == [
        (r.clean_text, r.corrupted_text) for r in local.pairs
    ]


def test_a_bad_pairs_file_is_one_line_like_local(cluster, tiny_dirs, tiny_gpt2, tmp_path):
    from core.studies.pairs_ray import PairSource, run_pairs_ray

    path = _write(hidden_pairs(tiny_gpt2.tokenizer, 2, seed=77), tmp_path, "jsonl")
    run = lambda src: run_pairs_ray(str(tiny_dirs["gpt2"]), src, PairsSettings(atp_only=True), device="cpu")  # noqa: E731
    with pytest.raises(InputError, match=r"has no column 'clean' \(columns: id, a, b, ans, bad\); name it with"):
        run(PairSource(str(path)))
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"id": 9, "a": "   ", "b": "The dog", "ans": "", "bad": ""}\n')
    with pytest.raises(InputError, match=r"pair 3: the clean text \('a'\) is empty or not text"):
        run(PairSource(str(path), "a", "b"))


def test_an_interrupted_streamed_top_k_run_resumes_to_the_local_numbers(
    cluster, tiny_dirs, tiny_gpt2, tmp_path, monkeypatch
):
    """A CSV PairSource run with --top 2 (both stages), interrupted inside the top-K stage (the 3 pairs' cells and
    the first pair's values kept), resumes: the file streams again, the workers skip what the work folder holds (no
    pair's cells are computed again), and the result equals the local engine's."""
    from core.run.checkpoint import ENV_INTERRUPT, WorkFolder, fingerprint
    from core.studies.pairs import pair_name, parse_pairs, top_name
    from core.studies.pairs_ray import PairSource, run_pairs_ray

    path = _write(hidden_pairs(tiny_gpt2.tokenizer, 3, seed=78), tmp_path, "csv")
    cols = {"clean_column": "a", "corrupt_column": "b"}
    settings = PairsSettings(top_k=2)
    local = run_pairs(tiny_gpt2, parse_pairs(path.read_bytes(), path.name, **cols), settings)
    fp = fingerprint("patching_pairs", "tiny", "float32", "cpu", settings.to_dict(), sha256="x")

    def run(work, progress=None):
        return run_pairs_ray(str(tiny_dirs["gpt2"]), PairSource(str(path), **cols), settings, dtype="float32",
                             device="cpu", workers=1, progress=progress, work=work)  # fmt: skip

    monkeypatch.setenv(ENV_INTERRUPT, "4")
    with pytest.raises(KeyboardInterrupt):
        run(WorkFolder.open(tmp_path / "w", fp, resume=False))
    monkeypatch.delenv(ENV_INTERRUPT)
    work = WorkFolder.open(tmp_path / "w", fp, resume=True)
    assert work.resumed == 4 and all(work.has(pair_name(i)) for i in range(3))
    assert work.has(top_name(0)) and not work.has(top_name(1))
    seen: list[str] = []
    remote = run(work, lambda label, f: seen.append(label))
    assert not [s for s in seen if s.startswith("Pair ")]  # every pair's cells came from the work folder
    _same(local, remote)
    assert [(r.clean_text, r.corrupted_text) for r in remote.pairs] == [
        (r.clean_text, r.corrupted_text) for r in local.pairs
    ]
    assert all(work.has(top_name(i)) for i in range(3))


def test_file_columns_are_read_on_the_cluster_without_a_cancelled_dataset_read(cluster, tmp_path, monkeypatch):
    """The column check reads the header on a worker (file_columns), never through `Dataset.columns()`/`schema()`:
    those run a one-row read and force-cancel its task as it finishes, a race that aborted Ray 2.60's driver (the
    pytest worker) in CI. CSV headers with a quoted line break, JSON lines' keys (pandas, as Ray's reader), Parquet;
    a parse error is one line."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data

    from core.studies.corpus_ray import CorpusSource
    from core.studies.pairs_ray import PairSource, file_columns

    def refuse(*_a, **_k):
        raise AssertionError("Dataset.columns()/schema() was called")

    monkeypatch.setattr(ray.data.Dataset, "columns", refuse)
    monkeypatch.setattr(ray.data.Dataset, "schema", refuse)
    csv = tmp_path / "p.csv"
    csv.write_text('"first\ncol",b\n"x\ny",z\n', encoding="utf-8")
    assert file_columns(str(csv), "csv", newlines_in_values=True) == ["first\ncol", "b"]
    gz = tmp_path / "p.csv.gz"
    gz.write_bytes(gzip.compress(b"x,y\n1,2\n"))
    assert file_columns(str(gz), "csv") == ["x", "y"]  # compression from the extension, as Ray Data's reader
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"a": "x", "b": "y"}\n{"a": "x", "c": "z"}\n', encoding="utf-8")
    assert file_columns(str(jl), "jsonl") == ["a", "b", "c"]
    assert file_columns(jl.as_uri(), "jsonl") == ["a", "b", "c"]  # a URI (s3://… on a cluster) through pyarrow.fs
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"text": ["a"], "n": [1]}), tmp_path / "pq" / "part-0.parquet")
    assert file_columns(str(tmp_path / "pq"), "parquet") == ["text", "n"]  # a folder: its first file
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1\n', encoding="utf-8")
    with pytest.raises(ValueError) as err:
        file_columns(str(bad), "jsonl")
    assert "\n" not in str(err.value) and str(err.value)
    with pytest.raises(InputError, match=r"pairs file 'p.jsonl' has no column 'clean' \(columns: a, b, c\)"):
        PairSource(str(jl)).dataset()
    with pytest.raises(InputError, match=r"pairs file 'bad.jsonl' cannot be read: "):
        PairSource(str(bad), "a", "b").dataset()
    with pytest.raises(InputError, match="has no column 'text'; its columns are: a, b, c"):
        CorpusSource("jsonl", str(jl), "text").dataset()
