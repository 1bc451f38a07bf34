"""Issue 24: the promoted / suppressed token tables of direct logit attribution as one batched product
(core.steps.dla.promoted_tables) equal the per-position products of before (tests/dla_reference.py) on every tiny
family, with the rows in one product or split over several (TABLE_FLOATS), and with a window of several
positions."""

from __future__ import annotations

import numpy as np
import pytest
from dla_reference import promoted_tables_reference

from core.steps import dla
from tests.tiny_models import FAMILIES, tiny_family_loaded

TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module", params=("gpt2", "bert", "llama", *FAMILIES))
def dec_of(request):
    loaded = tiny_family_loaded(request.param)
    enc = loaded.tokenizer(TEXT, return_tensors="pt")
    return loaded, dla.decomposition_pass(loaded, enc["input_ids"], enc["attention_mask"])


def _same(sec: dla.DLASection, ref: dict[str, np.ndarray]) -> None:
    assert sec.promote_positions == ref["promote_positions"].tolist()
    for name, want in ref.items():
        got = np.asarray(getattr(sec, name))
        assert got.shape == want.shape, name
        if name.endswith("_ids"):
            assert (got == want).all(), name
        elif name.endswith("_logits"):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("table_floats", [dla.TABLE_FLOATS, 1])  # 1: one row per product
def test_batched_tables_equal_the_per_position_products(dec_of, table_floats, monkeypatch):
    loaded, dec = dec_of
    monkeypatch.setattr(dla, "TABLE_FLOATS", table_floats)
    monkeypatch.setattr(dla, "PROMOTE_MAX_MACS_CPU", None)  # every position: the window's rows are batched too
    T = dec.embed.shape[0]
    pos = T - 2
    sec = dla.compute_dla(dec, pos, int(dec.logits[pos].argmax()), loaded.tokenizer, k=4)
    assert len(sec.promote_positions) == T > 1
    _same(sec, promoted_tables_reference(dec, pos, 4))
