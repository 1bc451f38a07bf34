"""Shared fixtures: tiny random models (session scope, built in well under a second each), the bundled MiniLM,
and an isolated result cache. Tests never download: HF_HUB_OFFLINE is set before anything imports the hub."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402

# scripts/test.sh runs pytest-xdist with `--dist loadfile`: a test module's tests run in order on one worker, so
# module fixtures (a browser, the tiny LM folder) are built once, and each worker has its own session fixtures (the
# browser modules' app server and its loaded-model registry, the Ray cluster). `--dist loadgroup` did not group
# here (pytest 9.2 with xdist 3.8: marked tests landed on both workers).
if os.environ.get("PYTEST_XDIST_WORKER"):  # two test processes on two cores: one torch thread each
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test():
    """The app's background jobs (the views an analysis starts as it ends, app.loading.background_views) finish
    within the test that started them: a model run leaking into the next test would reach its ForwardCounter or
    its model-lock checks. A guard against hanging: after 120 s the next test starts anyway."""
    yield
    jobs = sys.modules.get("app.jobs")
    if jobs is None:
        return
    import threading

    pause = threading.Event()
    for _ in range(12000):
        if jobs.active_count() == 0:
            return
        pause.wait(0.01)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache_dir(tmp_path_factory):
    """The result cache and the run folders of every test live under pytest's temporary folder: a test run leaves
    nothing in the checkout (the in-process CLI and the app's exports save runs to $TMA_RUNS_DIR)."""
    os.environ["TMA_CACHE_DIR"] = str(tmp_path_factory.mktemp("tma-cache"))
    os.environ["TMA_RUNS_DIR"] = str(tmp_path_factory.mktemp("tma-runs"))
    yield


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Folders of tiny random models: gpt2, bert (masked LM), bert-encoder (no head), llama (GQA, chat template),
    llama-nochat (no chat template)."""
    from tiny_models import build_tiny

    base = tmp_path_factory.mktemp("tiny")
    out = {k: build_tiny(k, base / k) for k in ("gpt2", "bert", "bert-encoder", "llama")}
    out["llama-nochat"] = build_tiny("llama", base / "llama-nochat", chat_template=False)
    return out


def _load(path):
    from core.model.loading import load_model

    return load_model(str(path), dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_dirs):
    return _load(tiny_dirs["gpt2"])


@pytest.fixture(scope="session")
def tiny_bert(tiny_dirs):
    return _load(tiny_dirs["bert"])


@pytest.fixture(scope="session")
def tiny_encoder(tiny_dirs):
    return _load(tiny_dirs["bert-encoder"])


@pytest.fixture(scope="session")
def tiny_llama(tiny_dirs):
    return _load(tiny_dirs["llama"])


@pytest.fixture(scope="session")
def tiny_llama_nochat(tiny_dirs):
    return _load(tiny_dirs["llama-nochat"])


@pytest.fixture(scope="session")
def minilm():
    from core.model.loading import BUNDLED_ID

    return _load(BUNDLED_ID)


@pytest.fixture(params=["gpt2", "bert", "llama"])
def tiny_any(request, tiny_gpt2, tiny_bert, tiny_llama):
    return {"gpt2": tiny_gpt2, "bert": tiny_bert, "llama": tiny_llama}[request.param]


@pytest.fixture
def result_cache(tmp_path):
    from core.run.cache import ResultCache

    c = ResultCache(tmp_path / "cache", size_limit_mb=64)
    yield c
    c.close()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster of 2 CPUs for the whole test session (starting one takes ~8 s); the engines join it
    instead of starting their own. Skips when Ray is not installed."""
    ray = pytest.importorskip("ray")
    from core.studies.pairs_ray import _connect

    _connect(None, 2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """One `streamlit run` server (url, log path) for the browser test modules test_browser and test_browser_layout:
    each server costs a start, the first script's imports and the bundled model's load. $TMA_BROWSER_PORT picks
    its port. (test_browser_sessions keeps a server of its own: it reads its server log.)"""
    from browser_support import need_browser, streamlit_server

    need_browser()
    port = int(os.environ.get("TMA_BROWSER_PORT") or 0) or None
    with streamlit_server(tmp_path_factory, "app", port, ("--server.fileWatcherType", "none")) as served:
        yield served
