"""SAE features over a corpus on the Ray engine (core/studies/sae_corpus_ray.py). The workers' per-batch top-n lists,
merged on the driver in any order, give the local engine's examples and statistics (core/studies/sae_corpus.py) —
checked without Ray on the worker class itself, then end to end on the session's Ray cluster (2 workers, several
parts each). A refused SAE is one line (data, not an actor that Ray would restart forever)."""

from __future__ import annotations

import numpy as np
import pytest
from test_sae_app import _sae

from core.studies.sae_corpus import SAECorpusScan, sae_corpus

TEXTS = [
    "The cat sat on the mat.",
    "   ",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Language models predict the next token.",
    "The dog sat on the log.",
    "",
    "Attention heads look at previous tokens.",
    "Short.",
    "Ray streams texts to workers that load the model once.",
    "The cat sat on the mat.",  # a repeat: equal activations in two texts, ordered by text index
]
CLEAN = [t.strip() for t in TEXTS if t.strip()]


@pytest.fixture(scope="module")
def sae_folder(tmp_path_factory):
    return _sae(tmp_path_factory.mktemp("sae") / "s", hook="blocks.1.hook_mlp_out", d_sae=16, seed=3)


def _same(got, want) -> None:
    assert got.n_texts == want.n_texts and got.n_tokens == want.n_tokens
    np.testing.assert_array_equal(got.fire_count, want.fire_count)
    np.testing.assert_allclose(got.act_sum, want.act_sum, rtol=1e-6)
    np.testing.assert_allclose(got.act_max, want.act_max, rtol=1e-6)
    for name in ("ex_feature", "ex_rank", "ex_text", "ex_position", "ex_marks"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    np.testing.assert_allclose(got.ex_activation, want.ex_activation, rtol=1e-6)
    assert got.ex_token == want.ex_token and got.ex_context == want.ex_context


def test_worker_parts_merged_in_any_order_equal_local(tiny_dirs, tiny_gpt2, sae_folder):
    from core.model.sae import load_sae
    from core.studies.sae_corpus_ray import PartMerger, SAEScanWorker

    worker = SAEScanWorker(str(tiny_dirs["gpt2"]), "float32", "cpu", [sae_folder], 3, 64, False)
    batches = [list(range(i, min(i + 3, len(CLEAN)))) for i in range(0, len(CLEAN), 3)]
    parts = []
    for ids in batches:
        out = worker({"text": np.array([CLEAN[i] for i in ids], dtype=object), "id": np.array(ids)})
        assert out["error"][0] == "" and out["n"][0] == len(ids)
        parts.append(out["part"][0])
    want = sae_corpus(tiny_gpt2, CLEAN, [sae_folder], max_tokens=64, top_n=3)[0]
    assert len(want.ex_feature) > 16  # several examples per feature: the order inside a list matters
    for order in (range(len(parts)), reversed(range(len(parts))), [1, 2, 0]):
        merged = PartMerger(SAECorpusScan([load_sae(sae_folder)], 3, 64, False))
        for j in order:
            merged.add(parts[j])
        assert set(merged.token_ids) == merged.scan.texts_needed()  # only the texts that hold an example are kept
        _same(merged.results(len(CLEAN), tiny_gpt2.tokenizer)[0], want)


def test_a_refused_sae_is_data_not_a_dead_actor(tiny_dirs, tmp_path):
    from core.studies.sae_corpus_ray import SAEScanWorker

    deep = _sae(tmp_path / "deep", hook="blocks.7.hook_resid_pre")  # the tiny GPT-2 has 2 blocks
    worker = SAEScanWorker(str(tiny_dirs["gpt2"]), "float32", "cpu", [deep], 3, 64, False)
    out = worker({"text": np.array(["a b"], dtype=object), "id": np.array([0])})
    assert out["error"][0] and "\n" not in out["error"][0] and "block" in out["error"][0]


def test_ray_engine_equals_local(ray_cluster, tiny_dirs, tiny_gpt2, sae_folder, tmp_path, monkeypatch):
    from core.studies import sae_corpus_ray
    from core.studies.corpus import CorpusSettings
    from core.studies.corpus_ray import CorpusSource

    monkeypatch.setattr(sae_corpus_ray, "SAE_BATCH", 3)  # several parts per worker: the driver merges them
    path = tmp_path / "c.txt"
    path.write_text("\n".join(TEXTS), encoding="utf-8")
    seen: list[tuple[str, float]] = []
    got = sae_corpus_ray.run_sae_corpus_ray(
        str(tiny_dirs["gpt2"]), CorpusSource("lines", str(path)), [sae_folder], CorpusSettings(max_tokens=64),
        lambda label, f: seen.append((label, f)), top_n=2, dtype="float32", device="cpu", workers=2,
    )  # fmt: skip
    want = sae_corpus(tiny_gpt2, CLEAN, [sae_folder], max_tokens=64, top_n=2)
    _same(got[0], want[0])
    fracs = [f for _, f in seen]
    assert fracs == sorted(fracs) and fracs[-1] == pytest.approx(1.0)
    assert any(f"SAE features: {len(CLEAN)} of {len(CLEAN)} texts" in label for label, _ in seen)
