"""report.pdf of an analysis, laid out with core.export.pdf: title page, layer-metric table, every plots/*.png of
the bundle with its caption, the predictions, top heads by entropy and by attribution, and each metric's formula
and interpretation from core.present.docs (pages laid out once per process and joined on).

The patching run's report.pdf (`patching_report`) is written here too.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

import numpy as np

from core.analysis.result import AnalysisResult
from core.export.pdf import PAGE_W, Document, fmt, join
from core.figures import neurons, qk
from core.figures import sae as sae_figures
from core.infra.formats import Member
from core.infra.options import ExportOptions
from core.present import chart_spec, docs
from core.present.tables import predicted_token_label, readable_token
from core.steps.metrics import METRIC_NAMES
from core.studies.patching import COMPONENTS, PatchingResult

log = logging.getLogger(__name__)

#: The PDF prints at most this many characters of the text (the whole text is in manifest.json).
PDF_TEXT_CHARS = 4000
TOP_TOKENS = 20


def _document(result: AnalysisResult | PatchingResult | None, footer: str = "Page") -> Document:
    name = result.model.model_id if result is not None else "formulas and interpretation"
    return Document(f"Transformer Model Analysis - {name}", footer=footer)


# --------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------
def _title_page(w: Document, result: AnalysisResult) -> None:
    m = result.model
    w.page()
    w.h1("Transformer Model Analysis - report")
    text = result.text if len(result.text) <= PDF_TEXT_CHARS else result.text[:PDF_TEXT_CHARS] + " … (truncated)"
    versions = ", ".join(f"{k} {v}" for k, v in sorted(result.versions.items()))
    w.kv(
        [
            ("Model", m.model_id),
            ("Family", chart_spec.family_words(m.family)),
            ("Architecture", m.architecture),
            ("Revision", m.revision),
            ("Dtype / device", f"{m.dtype} / {m.device}"),
            ("Shape", f"{result.n_layers} layers, {result.n_heads} heads, hidden {m.hidden_size}"),
            ("Token count", f"{result.n_tokens}; {_tokens_phrase(result)}"),
            ("Target", chart_spec.target_phrase(result.target_position, result.target_reason)),
            ("Date", result.created_at),
            ("Duration", chart_spec.timing_phrase(result.duration_s, result.cache_hit)),
            ("Core version", result.core_version),
            ("Versions", versions),
        ]
    )
    w.h2("Text")
    w.para(text)
    if result.warnings:
        w.h2("Warnings")
        for msg in result.warnings:
            w.para(f"• {msg}")


def _tokens_phrase(result: AnalysisResult) -> str:
    from core.figures.metrics import metric_token_count

    return chart_spec.metric_tokens_phrase(
        result.n_tokens, metric_token_count(result), bool(result.settings.exclude_special_tokens)
    )


def _metric_table(w: Document, result: AnalysisResult) -> None:
    w.page()
    w.h1("Layer metrics")
    w.para(
        f"Layer 0 is the embedding output, layer l the output of block l; the last layer is the residual stream "
        f"before the final norm. {_tokens_phrase(result)[:1].upper()}{_tokens_phrase(result)[1:]}.",
        size=8,
    )
    header = ["layer", *(docs.metric_label(n) for n in METRIC_NAMES)]
    rows = [[r["layer"], *(r[n] for n in METRIC_NAMES)] for r in result.metrics_table()]
    layer_w = 14.0
    w.table(header, rows, widths=(layer_w, *[(PAGE_W - layer_w) / len(METRIC_NAMES)] * len(METRIC_NAMES)))


def _figures(w: Document, files: dict[str, bytes], outline: bool = False) -> None:
    """A "Figures" part: every plots/*.png of `files` in writer order with its caption from the registry (and an
    outline entry when `outline`)."""
    names = [n for n in files if n.startswith("plots/") and n.lower().endswith(".png")]  # in writer order
    if not names:
        return
    w.page()
    if outline:
        w.outline("Figures")
    w.h1("Figures")
    for name in names:
        entry = docs.figure_doc(name)
        cap = f"{name}: {entry.short}" if entry else name
        try:
            w.figure(files[name], cap)
        except Exception as exc:  # a broken PNG is reported in the PDF, not fatal
            log.warning("could not embed %s: %s", name, exc)
            w.para(f"{name}: could not be embedded ({exc})", size=8)
    gifs = sorted(n for n in files if n.startswith("animations/"))
    if gifs:
        w.h2("Animations (in the bundle, not embedded)")
        w.para(", ".join(gifs) + ". " + docs.caption("anim_layer_transitions"), size=8)


def _predictions(w: Document, result: AnalysisResult) -> None:
    p = result.predictions
    if p is None:
        return
    w.h2("Predictions")
    kind = p.kind
    if kind == "unavailable" or not p.candidates:
        w.para(p.message or "No predictions for this model.")
        return
    w.para(docs.caption("mask_fill" if kind == "mask_fill" else "next_token"), size=8)
    for pos, cands in zip(p.positions, p.candidates):
        tok = result.display_tokens[pos] if 0 <= pos < len(result.display_tokens) else "?"
        w.para(f"Position {pos} ({tok}):", size=9, bold=True)
        w.table(
            ["rank", "token", "id", "probability"],
            [[i + 1, repr(c["token"]), c["token_id"], c["probability"]] for i, c in enumerate(cands)],
            widths=(15, 80, 25, 40),
        )


def _logit_lens(w: Document, result: AnalysisResult) -> None:
    lens = result.logit_lens
    if lens is None:
        return
    w.h2("Logit lens")
    w.para(f"{docs.caption('logit_lens')} Position {lens.position}; final prediction {lens.final_token!r}.", size=8)
    rows = []
    for i, layer in enumerate(np.asarray(lens.layers).tolist()):
        top = lens.top_tokens[i][0] if lens.top_tokens[i] else ""
        rows.append(
            [
                layer,
                repr(top),
                float(np.asarray(lens.top_probs)[i, 0]),
                float(np.asarray(lens.final_prob)[i]),
                float(np.asarray(lens.entropy)[i]),
            ]
        )
    w.table(["layer", "top token", "p(top)", "p(final token)", "entropy (nats)"], rows, widths=(15, 70, 30, 35, 40))


def _heads(w: Document, result: AnalysisResult, k: int = 10) -> None:
    att, attr = result.attention, result.attribution
    H = result.n_heads
    if att is not None:
        w.h2(f"Top {k} heads by attention entropy (most focused first)")
        w.para(docs.caption("normalized_attention_entropy"), size=8)
        ne = np.asarray(att.normalized_entropy, dtype=np.float64)
        ent = np.asarray(att.entropy, dtype=np.float64)
        dist = np.asarray(att.mean_distance, dtype=np.float64)
        order = np.argsort(np.where(np.isnan(ne), np.inf, ne), axis=None)[:k]
        roles = list(att.roles)
        rows = []
        for idx in order:
            l, h = divmod(int(idx), H)
            rows.append(
                [chart_spec.block_number(l), h, ent[l, h], ne[l, h], dist[l, h], roles[idx] if idx < len(roles) else ""]
            )
        w.table(
            ["layer", "head", "entropy (nats)", "normalised", "mean distance", "role"],
            rows,
            widths=(18, 18, 35, 35, 35, 49),
        )
    if attr is not None and attr.head_scores is not None:
        w.h2(f"Top {k} heads by attribution")
        w.para(f"{docs.caption('head_attribution')} Method: {attr.head_method}.", size=8)
        sc = np.asarray(attr.head_scores, dtype=np.float64)
        order = np.argsort(np.where(np.isnan(sc), -np.inf, -np.abs(sc)), axis=None)[:k]
        rows = [[chart_spec.block_number(int(i) // H), int(i) % H, sc.flat[int(i)]] for i in order]
        w.table(["layer", "head", "score"], rows, widths=(30, 30, 50))


def _peer_views(w: Document, result: AnalysisResult, k: int = 10) -> None:
    """Direct logit attribution (top parts), promoted / suppressed tokens per block at the target position and the
    strongest information-flow edges; each missing section gets its one "not available" line."""
    from core.figures.routes import unavailable_line

    w.h2("Direct logit attribution")
    dla = result.dla
    if dla is None:
        w.para(unavailable_line(result, "dla") or "", size=8)
    else:
        w.para(
            f"{docs.caption('direct_logit_attribution')} Token {dla.token!r} at position {dla.position}: logit "
            f"{dla.logit:.4g}, sum of the parts {float(np.sum(dla.values)):.4g}. " + " ".join(dla.notes),
            size=8,
        )
        order = np.argsort(-np.abs(np.asarray(dla.values)))[:k]
        rows = [[int(dla.layers[i]), dla.components[i], int(dla.heads[i]), float(dla.values[i])] for i in order]
        w.table(["layer", "component", "head", "logit"], rows, widths=(25, 40, 25, 40))
        w.h2("Promoted and suppressed tokens (target position)")
        w.para(docs.caption("promoted_tokens"), size=8)
        pi = dla.promote_positions.index(dla.position)
        rows = []
        for l in range(dla.n_layers):
            for kind_i, kind in enumerate(("attention", "MLP")):
                up = ", ".join(repr(dla.text_of(i)) for i in dla.promote_block_ids[pi, l, kind_i][:5])
                down = ", ".join(repr(dla.text_of(i)) for i in dla.demote_block_ids[pi, l, kind_i][:5])
                rows.append([l + 1, kind, up, down])
        w.table(["block", "update", "promoted", "suppressed"], rows, widths=(15, 20, 77, 78), size=7)
    w.h2("Information-flow routes")
    flow = result.flow
    if flow is None:
        w.para(unavailable_line(result, "flow") or "", size=8)
        return
    edges = flow.routes()
    w.para(
        f"{docs.caption('flow_routes')} Token {flow.tokens[flow.position]!r} (position {flow.position}), "
        f"threshold {flow.threshold:g}: {len(edges)} edges. " + " ".join(flow.notes),
        size=8,
    )
    top = sorted(edges, key=lambda e: -e.weight)[:k]
    w.table(
        ["block", "source", "target", "kind", "weight"],
        [[e.layer, e.source, e.target, e.kind, e.weight] for e in top],
        widths=(20, 35, 35, 35, 30),
    )


def _attribution_tokens(w: Document, result: AnalysisResult) -> None:
    a = result.attribution
    if a is None:
        return
    w.h2("Token attribution")
    label = predicted_token_label(result)
    predicted = f"; predicted “{label}”" if label else ""
    w.para(
        f"Target: {chart_spec.target_phrase(a.target_position, result.target_reason, a.target_token)}"
        f"{predicted}. {docs.caption('attention_rollout')}",
        size=8,
    )
    named = [("rollout", a.rollout), ("grad × input", a.grad_x_input), ("integrated gradients", a.integrated_gradients)]
    cols = [(n, np.asarray(v, dtype=np.float64)) for n, v in named if v is not None]
    key_name, key = cols[-1]  # the most faithful method present: IG, else gradient × input, else rollout
    order = np.argsort(-np.abs(np.nan_to_num(key)), kind="stable")[:TOP_TOKENS]
    rows = [[int(t), repr(result.display_tokens[t]), *(v[t] for _, v in cols)] for t in order]
    w.para(
        f"Top {len(order)} of {result.n_tokens} tokens by |{key_name}| (all tokens are in the bundle's CSV).", size=8
    )
    w.table(["pos", "token", *(n for n, _ in cols)], rows, widths=(15, 55, *([120 / max(len(cols), 1)] * len(cols))))
    if a.ig_completeness_gap is not None:
        rel = a.ig_completeness_gap_relative
        w.para(
            f"Integrated-gradients completeness gap: {fmt(a.ig_completeness_gap)} nats"
            + (f" ({100 * rel:.2f} % of f(x) − f(x′))" if rel is not None else "")
            + f" with {a.ig_steps} Gauss–Legendre steps"
            + (
                ""
                if a.ig_converged is None
                else " (converged to ≤ 1 %)"
                if a.ig_converged
                else " (the 512-step cap was reached before 1 %)"
            )
            + ".",
            size=8,
        )


def _causal(w: Document, result: AnalysisResult, k: int = 10) -> None:
    """Exact head ablation (when the analysis ran it): the top heads by mean-ablation drop, beside the gradient
    head score, with their Spearman correlation."""
    sec = result.head_ablation
    if sec is None:
        return
    w.h2(f"Top {k} heads by exact ablation")
    scores = result.attribution.head_scores if result.attribution is not None else None
    rho = sec.agreement(scores)
    w.para(
        f"{docs.caption('head_ablation')} Prediction {sec.token!r} at position {sec.target_position}, "
        f"log p = {fmt(sec.logprob)}."
        + (
            f" Spearman ρ of the gradient head score with the drop: zero ablation {fmt(rho['zero_ablation'])}, "
            f"mean ablation {fmt(rho['mean_ablation'])}."
            if rho
            else ""
        ),
        size=8,
    )
    mean = np.asarray(sec.mean_ablation, dtype=np.float64)
    H = mean.shape[1]
    order = np.argsort(mean, axis=None, kind="stable")[:k]  # most negative Δ = largest drop first
    rows = [
        [
            chart_spec.block_number(int(i) // H),
            int(i) % H,
            mean.flat[int(i)],
            float(np.asarray(sec.zero_ablation).flat[int(i)]),
            (float(np.asarray(scores).flat[int(i)]) if scores is not None else None),
        ]
        for i in order
    ]
    w.table(
        ["layer", "head", "Δ log p (mean abl.)", "Δ log p (zero abl.)", "gradient score"],
        rows,
        widths=(20, 20, 50, 50, 50),
    )


def _neurons_and_query_key(w: Document, result: AnalysisResult) -> None:
    """Neuron factors and the query–key view: summary tables (the figures are among the plots), or the line that
    says why a view is missing."""
    blocks = [
        ("Neuron factors", "neuron_factors", neurons.report_section(result), (16, 104, 70), "neuron factors"),
        ("Query–key view", "query_key", qk.report_section(result), (16, 64, 36, 36, 38), "query–key view"),
    ]
    if result.sae is not None:  # only when the run had SAE folders
        sae_parts = sae_figures.report_section(result)
        blocks.append(("Sparse-autoencoder features", "sae_features", sae_parts, (18, 18, 50, 104), "SAE"))
    w.page()
    w.h1("Neurons and queries")
    for title, key, parts, widths, what in blocks:
        w.h2(title)
        w.para(docs.caption(key), size=8)
        if not parts:
            why = [m for m in result.warnings if what in m]
            w.para(why[0] if why else f"No {what} in this result (switched off in the settings).", size=8)
        for intro, header, rows in parts:
            w.para(intro, size=8)
            w.table(header, rows, widths=widths)


_DOC_KINDS = ("layer_metric", "attention", "attribution", "prediction", "logit_lens", "causal", "neurons")


def _DOC_KEYS() -> list[str]:
    return [e.key for kind in _DOC_KINDS for e in docs.entries(kind)]


def _documentation(w: Document) -> None:
    w.page()
    w.h1("Formulas and interpretation")
    w.para("From the same registry as the Details page of the dashboard.", size=8)
    for kind in _DOC_KINDS:
        for e in docs.entries(kind):
            w.definition(e.title, docs.formula_text(e.key), docs.interpretation(e.key), e.pitfalls[:1])


def build_report(result: AnalysisResult, files: dict[str, bytes] | None = None) -> bytes:
    """The PDF report as bytes. `files` are the bundle files written so far (their plots/*.png are embedded)."""
    w = _document(result)
    _title_page(w, result)
    _metric_table(w, result)
    _figures(w, files or {})
    sections = (result.predictions, result.logit_lens, result.attention, result.attribution)
    if any(s is not None for s in sections):
        w.page()
        w.h1("Predictions, heads and attribution")
        _predictions(w, result)
        _logit_lens(w, result)
        _heads(w, result)
        _attribution_tokens(w, result)
        _peer_views(w, result)
        _causal(w, result)
    _neurons_and_query_key(w, result)
    return _with_documentation(w.output())


@functools.lru_cache(maxsize=1)
def _documentation_pdf(fingerprint: tuple[str, ...]) -> bytes:
    """The "Formulas and interpretation" pages: the same for every report, laid out once per process (the text
    layout of these pages was about 1 s of every bundle). `fingerprint` ties the cache to the registry's text."""
    w = _document(None, footer="Formulas and interpretation, page")
    _documentation(w)
    return w.output()


def _with_documentation(report: bytes) -> bytes:
    """`report` followed by the documentation pages, with an outline entry for each part."""
    fingerprint = tuple(docs.formula_text(k) + docs.interpretation(k) for k in _DOC_KEYS())
    return join([(report, [("Report", 0)]), (_documentation_pdf(fingerprint), [("Formulas and interpretation", 0)])])


def report_files(result: AnalysisResult, files: Mapping[str, Member], options: ExportOptions) -> dict[str, bytes]:
    """report.pdf, embedding the plots the bundle's writers made (core.export.bundle calls it after them)."""
    return {"report.pdf": build_report(result, {k: v for k, v in files.items() if isinstance(v, bytes)})}


def patching_report(result: PatchingResult, files: dict[str, bytes] | None = None) -> bytes:
    """report.pdf of a patch bundle: the two texts, answers and m values, the sanity rows, the strongest cells per
    component, the plots/*.png of `files`, and the formulas of the causal entries."""
    w = _document(result)
    w.page()
    w.outline("Report")
    w.h1("Activation patching - report")
    m = result.model
    w.kv(
        [
            ("Model", m.model_id),
            ("Revision", m.revision),
            ("Dtype / device", f"{m.dtype} / {m.device}"),
            ("Target", chart_spec.target_phrase(result.target_position, result.target_reason)),
            ("Answers", f"A = {result.answer_token!r}, B = {result.wrong_token!r} ({result.answers_from})"),
            ("m clean / corrupted", f"{fmt(result.m_clean)} / {fmt(result.m_corrupted)}"),
            (
                "Sanity",
                f"block 1 at every position restores {fmt(result.sanity_block0)} (1); no patch "
                f"{fmt(result.sanity_identity)} (0)",
            ),
            ("Core version", result.core_version),
        ]
    )
    w.h2("Texts")
    w.para(f"Clean: {result.clean_text}")
    w.para(f"Corrupted: {result.corrupted_text}")
    for msg in result.warnings:
        w.para(f"• {msg}")
    w.h2("Strongest cells")
    rows = []
    for c in COMPONENTS:
        r = result.restored(c)
        if not np.isfinite(r).any():
            continue
        order = np.argsort(-np.abs(np.nan_to_num(r)), axis=None, kind="stable")[:5]
        for i in order:
            l, p = divmod(int(i), result.n_tokens)
            rows.append([c, chart_spec.block_number(l), p, readable_token(result.clean_tokens[p]), float(r[l, p])])
    w.table(["component", "block", "position", "clean token", "restored"], rows, widths=(35, 20, 25, 60, 50))
    _figures(w, files or {}, outline=True)
    w.page()
    w.outline("Formulas and interpretation")
    w.h1("Formulas and interpretation")
    for e in docs.entries("causal"):
        w.definition(e.title, docs.formula_text(e.key), docs.interpretation(e.key), e.pitfalls)
    return w.output()
