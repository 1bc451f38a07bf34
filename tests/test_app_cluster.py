"""The operator's `TMA_RAY_ADDRESS` (app/cluster.py): with it, the Corpus page's runs and the Causal page's pair data
sets run on that Ray cluster through the CLI's Ray engines and give the local numbers, and the page says which
engine ran; without it, nothing in the app imports Ray. AppTest against the test session's local cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app import cluster
from core.infra.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_without_the_setting_the_app_runs_here_and_never_imports_ray():
    code = (
        "import sys, app.cluster, app.corpus_widgets, app.pairs_widgets\n"
        "e = app.cluster.current()\n"
        "assert not e.is_ray and e.label == app.cluster.LOCAL_LABEL, e\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != cluster.ENV_ADDRESS}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_setting_is_read_and_checked(monkeypatch):
    monkeypatch.setenv(cluster.ENV_ADDRESS, "ray://head:10001")
    monkeypatch.setenv(cluster.ENV_WORKERS, "4")
    monkeypatch.setenv(cluster.ENV_GPUS, "1")
    e = cluster.current()
    assert e == cluster.Engine("ray://head:10001", 4, 1.0)
    assert e.label == "the Ray cluster at ray://head:10001 (4 workers, 1 GPU each)"
    monkeypatch.setenv(cluster.ENV_WORKERS, "0")
    with pytest.raises(InputError, match="TMA_RAY_WORKERS must be at least 1"):
        cluster.current()
    monkeypatch.setenv(cluster.ENV_WORKERS, "two")
    with pytest.raises(InputError, match="TMA_RAY_WORKERS must be a whole number"):
        cluster.current()


@pytest.fixture
def on_cluster(ray_cluster, monkeypatch):
    """$TMA_RAY_ADDRESS = the session's local cluster, one worker (2 workers = local is tested by test_*_ray.py)."""
    import ray

    address = ray.get_runtime_context().gcs_address
    monkeypatch.setenv(cluster.ENV_ADDRESS, address)
    monkeypatch.setenv(cluster.ENV_WORKERS, "1")  # one replica per stage: the routing is under test
    return address


def test_corpus_page_runs_on_the_operators_cluster_with_the_local_numbers(
    on_cluster, tiny_dirs, tiny_gpt2, tmp_path, monkeypatch, request
):
    from streamlit.testing.v1 import AppTest
    from test_corpus import PAGE, TEXTS

    from app.loading import get_result_cache
    from core.studies import corpus as cp

    # a cache of its own: the worker's shared one may already hold this corpus from test_corpus's page tests (the
    # same texts and settings), and then the cluster rightly answers from it (a full run failed so when they shared
    # a worker); the app keeps one cache per process (st.cache_resource): dropped before and after
    monkeypatch.setenv("TMA_CACHE_DIR", str(tmp_path / "cache"))
    get_result_cache.clear()
    request.addfinalizer(get_result_cache.clear)

    at = AppTest.from_file(PAGE, default_timeout=300)
    for k, v in {
        "model_choice": "Other: a Hugging Face id or a local folder",
        "model_custom": str(tiny_dirs["gpt2"]),
        "corpus_source": "Paste lines",
        "corpus_paste": "\n".join(TEXTS) + "\n\n",
        "corpus_bootstrap": 20,
    }.items():
        at.session_state[k] = v
    at.run()
    at.button(key="corpus_run").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.session_state["corpus_error"]
    remote = at.session_state["corpus_result"]
    local = cp.analyze_corpus(
        tiny_gpt2, cp.texts_from_lines("\n".join(TEXTS) + "\n\n"), cp.CorpusSettings(bootstrap=20)
    )
    assert remote.n_texts == local.n_texts and remote.n_blank_skipped == local.n_blank_skipped == 1
    assert remote.corpus_sha256 == local.corpus_sha256
    for m in local.estimate:
        np.testing.assert_allclose(remote.estimate[m], local.estimate[m], atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(remote.ci_low[m], local.ci_low[m], atol=1e-6, equal_nan=True)
    for m in local.per_text:
        np.testing.assert_allclose(remote.per_text[m], local.per_text[m], atol=1e-6, equal_nan=True)
    assert f"Ran on the Ray cluster at {on_cluster} (1 worker)." in [c.value for c in at.caption]
    # stored in the app's result cache under the local engine's key: the local engine (or a rerun) finds it
    assert remote.cache_key and remote.cache_key == local.cache_key and not remote.cache_hit
    cache = get_result_cache()
    try:
        stored = cache.get(remote.cache_key, cp.CorpusResult)
    finally:
        cache.close()
    assert stored is not None and stored.corpus_sha256 == local.corpus_sha256


def test_pair_data_set_runs_on_the_operators_cluster_with_the_local_numbers(on_cluster, tiny_dirs, tiny_gpt2):
    from test_causal_page import causal_page
    from test_pairs import hidden_pairs

    from app.pairs_widgets import PairKeys
    from core.studies.pairs import PairsSettings, run_pairs

    pairs = hidden_pairs(tiny_gpt2.tokenizer, 3, seed=99)
    at = causal_page(tiny_dirs["gpt2"])
    at.default_timeout = 300
    at.radio(key=PairKeys.MODE).set_value("atp")
    at.text_area(key=PairKeys.PASTE).input("clean,corrupt\n" + "".join(f"{p.clean},{p.corrupt}\n" for p in pairs))
    at.run()
    at.button(key=PairKeys.RUN).click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.session_state[PairKeys.ERROR]
    remote = at.session_state[PairKeys.RESULT]
    local = run_pairs(tiny_gpt2, pairs, PairsSettings(atp_only=True))
    for c in local.delta:
        np.testing.assert_allclose(remote.delta[c], local.delta[c], atol=1e-6)
    assert [r.m_clean for r in remote.pairs] == pytest.approx([r.m_clean for r in local.pairs], abs=1e-6)
    assert f"Ran on the Ray cluster at {on_cluster} (1 worker)." in [c.value for c in at.caption]
