"""User-facing words: the Details page, the documentation registry, the page headers and captions, and the PDF
report contain no internal keys (registry keys, setting and session-state names, result field names) and no
duplicated phrase in front of a parenthesis ("position 0 (position 0 (…))").

Internal keys are collected from the code, not listed by hand: every documentation key, every name a registry entry
says it documents, every AnalysisSettings field and every session-state key that has an underscore (plain words
such as "layer" or "text" are also English). Bundle file names (layer_metrics.csv, plots/…png) are names a user
sees in the ZIP, so they are allowed.
"""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import pytest

from app.state import Keys
from core.present import chart_spec, docs
from core.run.settings import AnalysisSettings

ROOT = Path(__file__).resolve().parents[1]
MAIN = str(ROOT / "app" / "main.py")
FILE_NAME = re.compile(r"[\w./*-]+\.(?:csv|png|gif|json|npy|npz|pdf|html|zip)\b")
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DUPLICATED = re.compile(r"\b(\w[\w ]*?\w|\w)\s*\(\s*\1\b", re.IGNORECASE)


def internal_keys() -> set[str]:
    keys = set(docs.DOCS)
    for e in docs.DOCS.values():
        keys |= {re.split(r"[.:]", s)[-1] for s in e.sources}
    keys |= {f.name for f in dataclasses.fields(AnalysisSettings)}
    keys |= {v for k, v in vars(Keys).items() if k.isupper() and isinstance(v, str)}
    return {k for k in keys if "_" in k}


INTERNAL = internal_keys()


def problems(text: str) -> list[str]:
    """The internal keys and duplicated phrases in `text` (file names removed first)."""
    plain = FILE_NAME.sub(" ", text)
    out = [f"internal key {w!r}" for w in WORD.findall(plain) if w in INTERNAL]
    out += [f"duplicated {m.group(0)!r}" for m in DUPLICATED.finditer(plain)]
    return out


def test_the_checker_catches_what_the_issue_reported():
    assert problems("position 0 (position 0 (encoder without a language-model head))")
    assert problems("Key `effective_rank` · used for chart captions")
    assert problems("turn on the integrated_gradients setting")
    assert not problems("position 0 (“[CLS]”): encoder without a language-model head")
    assert not problems("In the export: attention_entropy.csv and plots/layer_metrics.png")
    assert "effective_rank" in INTERNAL and "lens_full_grid" in INTERNAL and "metric_zoom" in INTERNAL


def registry_texts():
    for e in docs.DOCS.values():
        for name in ("title", "definition", "short", "high", "low", "encoder_vs_decoder", "how_to_read"):
            yield f"{e.key}.{name}", getattr(e, name)
        for i, p in enumerate(e.pitfalls):
            yield f"{e.key}.pitfalls[{i}]", p
    for title, paragraph in docs.METHODOLOGY:
        yield f"methodology {title!r}", f"{title}. {paragraph}"


@pytest.mark.parametrize("where,text", list(registry_texts()), ids=lambda v: v if len(v) < 50 else "")
def test_registry_text_is_for_people(where, text):
    assert not problems(text), where


def page_texts(at) -> list[str]:
    """Every piece of text an AppTest run shows in the main area and the sidebar."""
    out: list[str] = []
    for kind in ("markdown", "caption", "text", "info", "warning", "error", "subheader", "title", "header"):
        out += [str(e.value) for e in getattr(at, kind)]
    out += [m.label for m in at.metric]
    out += [str(m.value) for m in at.metric]
    out += [t.label for t in at.tabs]
    out += [e.label for e in at.expander]
    return out


@pytest.fixture(scope="module")
def results(tiny_gpt2, tiny_encoder):
    from core import analyze

    return {
        "gpt2": analyze(tiny_gpt2, "The cat sat on the mat.", ig_steps=4),
        "encoder": analyze(tiny_encoder, "The dog sat on the log.", exclude_special_tokens=True, ig_steps=4),
    }


@pytest.mark.parametrize("page", [None, "../pages/layer_analysis.py", "../pages/details.py"])
@pytest.mark.parametrize("family", ["gpt2", "encoder"])
def test_page_text_is_for_people(results, family, page):
    from streamlit.testing.v1 import AppTest

    r = results[family]
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state["result"] = r
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception
    texts = page_texts(at)
    assert texts
    bad = {t[:80]: problems(t) for t in texts if problems(t)}
    assert not bad
    joined = "\n".join(texts)
    assert "metrics over special tokens excluded" not in joined and "metrics over all tokens" not in joined
    if page is None:
        n_used = sum(not s for s in r.special_mask) if r.settings.exclude_special_tokens else r.n_tokens
        expected = chart_spec.metric_tokens_phrase(r.n_tokens, n_used, r.settings.exclude_special_tokens)
        assert expected in joined
    if page == "../pages/details.py":
        assert "used for chart captions" not in joined and "Key `" not in joined


def pdf_text(result) -> str:
    from pypdf import PdfReader

    from core.export.report import build_report

    reader = PdfReader(io.BytesIO(build_report(result)))
    return "\n".join(p.extract_text() or "" for p in reader.pages)


@pytest.mark.parametrize("family", ["gpt2", "encoder"])
def test_pdf_text_is_for_people(results, family):
    text = pdf_text(results[family])
    # the PDF text layer breaks lines inside sentences; join them before looking for phrases
    flat = re.sub(r"\s+", " ", text)
    assert not problems(flat), problems(flat)[:5]
    r = results[family]
    assert "position 0 (position 0" not in flat
    assert chart_spec.target_phrase(r.target_position, r.target_reason) in flat


def test_target_phrase_says_the_reason_once():
    assert (
        chart_spec.target_phrase(0, "position 0 (encoder without a language-model head)")
        == "position 0: encoder without a language-model head"
    )
    assert chart_spec.target_phrase(5, "first mask token", "[MASK]") == "position 5 (“[MASK]”): first mask token"
    assert chart_spec.target_phrase(3, "") == "position 3"


def test_one_timing_per_analysis():
    assert chart_spec.timing_phrase(1.84, False) == "computed in 1.8 s"
    assert chart_spec.timing_phrase(0.01, True) == "from cache"
    assert chart_spec.timing_phrase(0.0412, False) == "computed in 41 ms"  # not "0.0 s", which reads as nothing done
    fast = chart_spec.timing_phrase(0.0412, False, 0.02)
    assert fast == "model loaded in 20 ms (first time only) · computed in 41 ms"
    assert chart_spec.timing_phrase(1.84, False, 8.21) == "model loaded in 8.2 s (first time only) · computed in 1.8 s"
