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
