"""The Ray engine of corpus mode (core/studies/corpus_ray.py) gives the local engine's numbers: the texts streamed
from a file through Ray Data readers, 2 CPU workers each loading the tiny GPT-2 once, the same seeded sample; and a
worker that dies mid-batch is retried to the same result. Skipped when Ray is not installed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.infra.errors import InputError
from core.steps import metrics
from core.studies import corpus as cp
from core.studies.geometry import POOLED_METRICS

pytest.importorskip("ray")

TEXTS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Language models predict the next token.",
    "   ",
    "Layers transform representations step by step, one block after another.",
    "Attention heads look at previous tokens.",
    "The dog sat on the log.",
    "Transformers process tokens in layers.",
    "Short.",
    "Ray streams texts to workers that load the model once.",
] * 3
SETTINGS = cp.CorpusSettings(bootstrap=30, max_points=70, batch_size=3, seed=7)


def _same(local: cp.CorpusResult, remote: cp.CorpusResult) -> None:
    assert remote.n_texts == local.n_texts and remote.n_blank_skipped == local.n_blank_skipped
    assert remote.corpus_sha256 == local.corpus_sha256 and remote.text_sha256 == local.text_sha256
    np.testing.assert_array_equal(remote.text_tokens, local.text_tokens)
    np.testing.assert_array_equal(remote.metric_tokens, local.metric_tokens)
    np.testing.assert_array_equal(remote.n_points, local.n_points)
    for m in POOLED_METRICS:
        for part in ("estimate", "ci_low", "ci_high"):
            np.testing.assert_allclose(getattr(remote, part)[m], getattr(local, part)[m], atol=1e-6, equal_nan=True)
    for m in metrics.METRIC_NAMES:
        np.testing.assert_allclose(remote.per_text[m], local.per_text[m], atol=1e-6, equal_nan=True)
    assert remote.warnings == local.warnings
    assert remote.cache_key == local.cache_key


@pytest.fixture(scope="module")
def local_result(tiny_gpt2):
    return cp.analyze_corpus(tiny_gpt2, TEXTS, SETTINGS)


@pytest.mark.parametrize("kind", ["lines", "csv", "jsonl"])
def test_ray_engine_with_two_workers_equals_local(ray_cluster, tiny_dirs, local_result, tmp_path, kind):
    from core.studies.corpus_ray import CorpusSource, run_corpus_ray

    if kind == "lines":
        path = tmp_path / "c.txt"
        path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    elif kind == "csv":
        path = tmp_path / "c.csv"
        path.write_text("id,body\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(TEXTS)), encoding="utf-8")
    else:
        path = tmp_path / "c.jsonl"
        path.write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS), encoding="utf-8")
    source = CorpusSource(kind, str(path), None if kind == "lines" else "body")
    seen: list[tuple[str, float]] = []
    remote = run_corpus_ray(
        str(tiny_dirs["gpt2"]),
        source,
        SETTINGS,
        lambda label, frac: seen.append((label, frac)),
        dtype="float32",
        device="cpu",
        workers=2,
    )
    _same(local_result, remote)
    assert remote.n_blank_skipped == 3 and np.isfinite(remote.estimate["effective_rank"]).all()
    fracs = [f for _, f in seen]
    assert fracs == sorted(fracs) and fracs[-1] == pytest.approx(1.0)
    assert any(f"Forward passes: {len(TEXTS) - 3} of {len(TEXTS) - 3} texts (" in label for label, _ in seen)


def test_a_worker_killed_mid_batch_is_retried_to_the_same_result(
    ray_cluster, tiny_dirs, local_result, tmp_path, monkeypatch
):
    from core.studies.corpus_ray import ENV_FAULT, CorpusSource, run_corpus_ray

    path = tmp_path / "c.txt"
    path.write_text("\n".join(TEXTS), encoding="utf-8")
    marker = tmp_path / "killed"
    monkeypatch.setenv(ENV_FAULT, str(marker))
    remote = run_corpus_ray(
        str(tiny_dirs["gpt2"]), CorpusSource("lines", str(path)), SETTINGS, dtype="float32", device="cpu", workers=2
    )
    assert marker.exists()  # a forward worker did die, after its forward pass, before returning its batch
    _same(local_result, remote)


def test_missing_column_and_limit_are_one_line_errors(ray_cluster, tiny_dirs, tmp_path):
    from core.studies.corpus_ray import CorpusSource, run_corpus_ray

    path = tmp_path / "c.csv"
    path.write_text("a,b\nx,y\n", encoding="utf-8")
    with pytest.raises(InputError, match="has no column 'text'; its columns are: a, b"):
        run_corpus_ray(str(tiny_dirs["gpt2"]), CorpusSource("csv", str(path), "text"), SETTINGS, device="cpu")
    lines = tmp_path / "c.txt"
    lines.write_text("\n".join(TEXTS), encoding="utf-8")
    with pytest.raises(InputError, match="more than 5 texts"):
        run_corpus_ray(str(tiny_dirs["gpt2"]), CorpusSource("lines", str(lines)), SETTINGS, device="cpu", limit=5)


def test_ray_and_local_runs_share_the_result_cache(ray_cluster, tiny_dirs, tiny_gpt2, tmp_path, monkeypatch):
    """A Ray run stores its result under the local engine's key (known once stage 1 has hashed the texts), so the
    local engine then hits it, and a repeated Ray run loads it without a forward stage. One worker."""
    from core.run.cache import ResultCache
    from core.studies import corpus_ray
    from core.studies.corpus_ray import CorpusSource, run_corpus_ray

    path = tmp_path / "c.txt"
    path.write_text("\n".join(TEXTS), encoding="utf-8")
    cache = ResultCache(tmp_path / "cache")
    run = lambda: run_corpus_ray(  # noqa: E731
        str(tiny_dirs["gpt2"]), CorpusSource("lines", str(path)), SETTINGS, dtype="float32", device="cpu",
        workers=1, cache=cache,
    )  # fmt: skip
    try:
        first = run()
        assert not first.cache_hit
        local = cp.analyze_corpus(tiny_gpt2, TEXTS, SETTINGS, cache=cache)
        assert local.cache_hit and local.cache_key == first.cache_key
        _same(local, first)

        def no_forward(*args, **kwargs):
            raise AssertionError("the forward stage ran although the result was in the cache")

        monkeypatch.setattr(corpus_ray, "_forward", no_forward)
        again = run()
        assert again.cache_hit and again.n_texts == first.n_texts
        for m in POOLED_METRICS:
            np.testing.assert_array_equal(again.estimate[m], first.estimate[m])
    finally:
        cache.close()


def test_cli_engine_ray_writes_the_local_bundle_numbers(ray_cluster, tiny_dirs, local_result, tmp_path, capsys):
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.cli.main import main

    # a Parquet file (the one input the engine test above does not read), the texts in a column that is not first
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "body": TEXTS}), path)
    out = tmp_path / "out"
    s = SETTINGS
    argv = ["corpus", "--model", str(tiny_dirs["gpt2"]), "--parquet", str(path), "--column", "body", "--out", str(out),
            "--engine", "ray", "--workers", "2", "--dtype", "float32", "--device", "cpu",
            "--bootstrap", str(s.bootstrap), "--max-points", str(s.max_points), "--batch-size", str(s.batch_size),
            "--seed", str(s.seed)]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "texts/s" in err  # the tqdm bar on stderr shows texts done / total with the rate
    rows = list(csv.reader((out / "corpus_metrics.csv").read_text(encoding="utf-8").splitlines()))
    want = local_result.metric_rows()
    assert len(rows) == len(want) + 1
    for got, ref in zip(rows[1:], want, strict=True):
        assert got[1] == ref[1] and float(got[2]) == pytest.approx(ref[2], abs=1e-6)


def test_an_interrupted_run_resumes_from_the_finished_batches(
    ray_cluster, tiny_dirs, local_result, tmp_path, monkeypatch
):
    """Interrupted after 2 of 9 batches (as a Ctrl-C on the driver), the run resumes in the same cluster (the
    interrupted pipeline's actors are gone) and sends only the 7 other batches: the local numbers again. One
    worker (two are tested above; on a resume only the batches sent differ)."""
    from core.run.checkpoint import ENV_INTERRUPT, WorkFolder, fingerprint
    from core.studies.corpus_ray import CorpusSource, run_corpus_ray

    path = tmp_path / "c.txt"
    path.write_text("\n".join(TEXTS), encoding="utf-8")
    fp = fingerprint("corpus", "tiny", "float32", "cpu", SETTINGS.to_dict(), sha256="x")
    run = lambda work, progress=None: run_corpus_ray(  # noqa: E731
        str(tiny_dirs["gpt2"]), CorpusSource("lines", str(path)), SETTINGS, progress, dtype="float32",
        device="cpu", workers=1, work=work,
    )  # fmt: skip
    monkeypatch.setenv(ENV_INTERRUPT, "2")
    with pytest.raises(KeyboardInterrupt):
        run(WorkFolder.open(tmp_path / "w", fp, resume=False))
    monkeypatch.delenv(ENV_INTERRUPT)
    work = WorkFolder.open(tmp_path / "w", fp, resume=True)
    assert work.resumed == 2
    seen: list[str] = []
    _same(local_result, run(work, lambda label, frac: seen.append(label)))
    assert seen[0] == "Forward passes: 6 of 27 texts"  # 2 batches of 3 read back, not run again
