"""Activation patching over a data set of prompt pairs, and attribution patching (AtP) of every site.

Researchers conclude from many templated pairs (the indirect-object task: hundreds), not from one. For P pairs of
one shared token length this module runs, per pair, the one-pair machinery of core/studies/patching.py (the same
target, answers and metric m = logit(answer) − logit(wrong answer)) and reports for every site (component c,
block l, position p; p = −1 = every position at once):

* ``restored``: the mean over pairs of each pair's restored fraction (m_patched − m_corrupted) / (m_clean −
  m_corrupted), with a Student-t interval over pairs (core.studies.intervals.mean_interval);
* ``atp``: attribution patching (Nanda 2023; Kramár et al. 2024), the first-order estimate of the same fraction,
  (a_clean − a_corrupted) · ∂m/∂a at the corrupted run, over (m_clean − m_corrupted), averaged over pairs. The
  gradient comes from ONE corrupted forward + backward per pair (plus one clean forward for a_clean): every site's
  activation gets a zero tensor added in a forward hook (core.model.hooks.hooked) and autograd differentiates m with
  respect to those zeros, which is ∂m/∂a; no backward hooks. The "all positions" row is the sum over positions.

Pairs whose |m_clean − m_corrupted| < TINY_DIFFERENCE (near ties: the fraction divides by almost nothing) are
counted, listed and left out of the means when there are two pairs or more; a single pair is kept as the one-pair
run keeps it (with its warning). `atp_only` skips the exact grid (a screen for large data sets); `top_k` patches
exactly only the K sites of largest |mean atp|. Pure computation: no Streamlit. `parse_pairs` reads a CSV/JSONL
data set from bytes; `run_pairs` / `patch_pairs` (behind the cache) run it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.infra.errors import InputError
from core.infra.serialize import Stored, serializable
from core.infra.version import CORE_VERSION
from core.model.forward import target_logits
from core.model.hooks import first_input, hooked, main_output, replace_output, with_first_input
from core.model.info import ModelInfo
from core.run.cache import ResultCache, run_key
from core.run.checkpoint import WorkFolder
from core.run.progress import ProgressFn
from core.studies.intervals import mean_interval
from core.studies.patching import (
    COMPONENTS,
    TINY_DIFFERENCE,
    Answers,
    PatchingSettings,
    PatchSites,
    capture_sites,
    encode_texts,
    patch_sites,
    patched_metrics,
    pick_answers,
    run_patching,
)

if TYPE_CHECKING:
    import torch

    from core.model.loading import LoadedModel

#: Pairs read from one data set at most (each costs about 3·L batched forward passes for the exact grid).
MAX_PAIRS = 100_000
PAIR_FORMATS = (".csv", ".jsonl")


@dataclass(frozen=True)
class Pair:
    """One prompt pair of a data set: answer / wrong = None take the clean / corrupted run's top-1 prediction."""

    clean: str
    corrupt: str
    answer: str | None = None
    wrong: str | None = None


# ----------------------------------------------------------------------------------------------------------------
# Reading a data set


def parse_pairs(
    data: bytes,
    name: str,
    *,
    clean_column: str = "clean",
    corrupt_column: str = "corrupt",
    answer_column: str | None = None,
    wrong_column: str | None = None,
) -> list[Pair]:
    """The pairs of a .csv (header row) or .jsonl (one JSON object a line) file given as bytes. Empty answer cells
    fall back to the top-1 prediction. Raises InputError (one line, naming the row) for anything else."""
    suffix = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix not in PAIR_FORMATS:
        raise InputError(f"pairs file '{name}' must end in .csv or .jsonl")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"pairs file '{name}' is not UTF-8 text") from None
    records: list[tuple[int, dict[str, Any]]] = []
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        columns = list(reader.fieldnames or [])
        for row in reader:
            records.append((reader.line_num, dict(row)))
    else:
        columns = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"pairs file '{name}' line {i} is not JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise InputError(f"pairs file '{name}' line {i} is not a JSON object")
            records.append((i, obj))
            columns += [k for k in obj if k not in columns]
    if not records:
        raise InputError(f"pairs file '{name}' holds no pairs")
    if len(records) > MAX_PAIRS:
        raise InputError(f"pairs file '{name}' holds {len(records):,} pairs; at most {MAX_PAIRS:,} are accepted")
    wanted = [("--clean-column", clean_column), ("--corrupt-column", corrupt_column)]
    wanted += [(f, c) for f, c in (("--answer-column", answer_column), ("--wrong-column", wrong_column)) if c]
    for flag, col in wanted:
        if col not in columns:
            shown = ", ".join(columns[:12]) or "none"
            raise InputError(f"pairs file '{name}' has no column '{col}' (columns: {shown}); name it with {flag}")
    pairs = []
    for lineno, rec in records:
        cells = {}
        for key, col in (("clean", clean_column), ("corrupt", corrupt_column)):
            v = rec.get(col)
            if not isinstance(v, str) or not v.strip():
                raise InputError(f"pairs file '{name}' line {lineno}: the {key} text ('{col}') is empty or not text")
            cells[key] = v
        opt: dict[str, str | None] = {}
        for key, optional_col in (("answer", answer_column), ("wrong", wrong_column)):
            v = rec.get(optional_col) if optional_col else None
            if v is not None and not isinstance(v, str):
                raise InputError(f"pairs file '{name}' line {lineno}: the {key} ('{optional_col}') is not text")
            opt[key] = v if v else None
        pairs.append(Pair(cells["clean"], cells["corrupt"], opt["answer"], opt["wrong"]))
    return pairs


# ----------------------------------------------------------------------------------------------------------------
# Settings and result


@serializable
@dataclass(frozen=True)
class PairsSettings:
    """What decides the numbers of a pair data set's run besides the model and the pairs.

    answer / wrong_answer: answers for pairs whose data set gives none (None: top-1). atp_only: attribution patching
    alone, no exact grid. top_k: patch exactly only the K sites of largest |mean atp| (None: the whole grid).
    level: the confidence level of the intervals over pairs."""

    answer: str | None = None
    wrong_answer: str | None = None
    max_tokens: int = 128
    per_position_components: bool = True
    atp_only: bool = False
    top_k: int | None = None
    level: float = 0.95

    def __post_init__(self) -> None:
        PatchingSettings(answer=self.answer, wrong_answer=self.wrong_answer, max_tokens=self.max_tokens)  # checks
        if self.top_k is not None and not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise InputError(f"top K must be a positive integer, got {self.top_k!r}")
        if self.atp_only and self.top_k is not None:
            raise InputError("--atp-only runs no exact patching; --top K patches the top K exactly: give one of them")
        if not 0.5 <= float(self.level) < 1.0:
            raise InputError(f"the interval level must be between 0.5 and 1, got {self.level!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_pair(self, pair: Pair) -> PatchingSettings:
        """The one-pair settings of `pair` (its own answers first, then these)."""
        return PatchingSettings(
            answer=pair.answer or self.answer,
            wrong_answer=pair.wrong or self.wrong_answer,
            max_tokens=self.max_tokens,
            per_position_components=self.per_position_components,
        )


@serializable
@dataclass(frozen=True)
class PairRecord:
    """One pair's texts, answers and unpatched margins; near_tie: |m_clean − m_corrupted| < TINY_DIFFERENCE."""

    index: int
    clean_text: str
    corrupted_text: str
    answer_id: int
    answer_token: str
    wrong_id: int
    wrong_token: str
    answers_from: str
    m_clean: float
    m_corrupted: float
    near_tie: bool


@serializable
@dataclass(frozen=True)
class PairsResult(Stored):
    """A pair data set's run. P = pairs, L = blocks, T = the shared token length.

    metric[c]: float64 [P, L, T] — m after patching component c of block l at position p (NaN where not patched:
    atp_only, outside top K, per-position components off); metric_all[c]: [P, L] — every position at once.
    delta[c]: float64 [P, L, T] — (a_clean − a_corrupted) · ∂m/∂a at the corrupted run, in logits;
    delta_all[c]: [P, L] — its sum over positions. tokens: the first pair's clean tokens (position labels)."""

    model: ModelInfo
    settings: PairsSettings
    pairs: tuple[PairRecord, ...]
    tokens: tuple[str, ...]
    target_position: int
    target_reason: str
    metric: dict[str, np.ndarray]
    metric_all: dict[str, np.ndarray]
    delta: dict[str, np.ndarray]
    delta_all: dict[str, np.ndarray]
    top_sites: tuple[tuple[str, int, int], ...] = ()
    warnings: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    core_version: str = CORE_VERSION
    cache_key: str = ""
    cache_hit: bool = False

    def __post_init__(self) -> None:  # a stored result gives its sites back as lists
        object.__setattr__(self, "top_sites", tuple((str(c), int(l), int(p)) for c, l, p in self.top_sites))

    @property
    def n_layers(self) -> int:
        return int(self.metric["residual"].shape[1])

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def used(self) -> np.ndarray:
        """bool [P]: the pairs in the means (all but near ties; a single pair always)."""
        ties = np.array([p.near_tie for p in self.pairs], dtype=bool)
        return np.ones_like(ties) if len(self.pairs) == 1 else ~ties

    @property
    def near_ties(self) -> list[PairRecord]:
        return [p for p in self.pairs if p.near_tie]

    def _den(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        mc = np.array([p.m_clean for p in self.pairs], dtype=np.float64)
        mk = np.array([p.m_corrupted for p in self.pairs], dtype=np.float64)
        den = mc - mk
        shape = (-1,) + (1,) * (ndim - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            den = np.where(den == 0, np.nan, den)
        return mk.reshape(shape), den.reshape(shape)

    def restored_pairs(self, component: str, *, every: bool = False) -> np.ndarray:
        """Each pair's restored fraction, [P, L, T] (or [P, L] for every position at once)."""
        m = self.metric_all[component] if every else self.metric[component]
        mk, den = self._den(m.ndim)
        return np.asarray((m - mk) / den)

    def atp_pairs(self, component: str, *, every: bool = False) -> np.ndarray:
        """Each pair's attribution-patching estimate of the restored fraction, [P, L, T] (or [P, L])."""
        d = self.delta_all[component] if every else self.delta[component]
        return np.asarray(d / self._den(d.ndim)[1])

    def rows(self) -> list[tuple[int, int, str, float, int, float, float, float]]:
        """Rows of patching.csv: (layer, position, component, restored, n_pairs, ci_low, ci_high, atp); layer = block
        1…L (array row layer − 1); restored and its interval are the mean over the used pairs (NaN where not patched
        exactly); position −1 = all."""
        used = self.used
        out = []
        for c in COMPONENTS:
            for every in (True, False):
                r = self.restored_pairs(c, every=every)[used]
                a = self.atp_pairs(c, every=every)[used]
                mean, low, high = (np.asarray(x) for x in mean_interval(r, level=self.settings.level, axis=0))
                n = np.isfinite(r).sum(axis=0)
                atp = a.mean(axis=0)
                if every:
                    mean, low, high, n, atp = (x[:, None] for x in (mean, low, high, n, atp))
                for l in range(self.n_layers):
                    for p in [-1] if every else range(self.n_tokens):
                        j = 0 if every else p
                        cell = (float(mean[l, j]), int(n[l, j]), float(low[l, j]), float(high[l, j]))
                        out.append((l + 1, p, c, *cell, float(atp[l, j])))  # blocks 1…L
        out.sort(key=lambda row: (COMPONENTS.index(row[2]), row[0], row[1]))
        return out

    def pair_rows(self) -> list[tuple[int, int, int, str, float, float, float, float, bool]]:
        """Rows of patching_pairs.csv: (pair, layer, position, component, restored, atp, m_patched, delta, near_tie)
        for every pair (near ties included) and every cell; layer = block 1…L."""
        out = []
        for i, rec in enumerate(self.pairs):
            for c in COMPONENTS:
                r_all, a_all = self.restored_pairs(c, every=True)[i], self.atp_pairs(c, every=True)[i]
                r, a = self.restored_pairs(c)[i], self.atp_pairs(c)[i]
                m_all, m, d_all, d = self.metric_all[c][i], self.metric[c][i], self.delta_all[c][i], self.delta[c][i]
                for l in range(self.n_layers):
                    cells = [(-1, r_all[l], a_all[l], m_all[l], d_all[l])]
                    cells += [(p, r[l, p], a[l, p], m[l, p], d[l, p]) for p in range(self.n_tokens)]
                    out += [
                        (rec.index, l + 1, p, c, float(x), float(y), float(z), float(w), rec.near_tie)
                        for p, x, y, z, w in cells
                    ]
        return out

    def correlation(self) -> float:
        """Pearson correlation of exact and AtP mean restored over the per-position cells both have, positions
        up to the target only (later cells of a causal LM are 0 in both by construction). NaN with < 3 cells."""
        xs, ys = [], []
        Tp = self.target_position + 1 if self.model.family == "causal_lm" else self.n_tokens
        used = self.used
        for c in COMPONENTS:
            r = self.restored_pairs(c)[used][:, :, :Tp].mean(axis=0).ravel()
            a = self.atp_pairs(c)[used][:, :, :Tp].mean(axis=0).ravel()
            keep = np.isfinite(r) & np.isfinite(a)
            xs.append(r[keep])
            ys.append(a[keep])
        x, y = np.concatenate(xs), np.concatenate(ys)
        if x.size < 3 or np.std(x) == 0 or np.std(y) == 0:
            return float("nan")
        return float(np.corrcoef(x, y)[0, 1])

    def summary(self) -> dict[str, Any]:
        """What patching.json holds for a pair data set."""
        return {
            "model": self.model.to_dict(),
            "settings": self.settings.to_dict(),
            "n_pairs": len(self.pairs),
            "n_pairs_used": int(self.used.sum()),
            "near_ties": {
                "threshold": TINY_DIFFERENCE,
                "count": len(self.near_ties),
                "pairs": [dataclasses.asdict(p) for p in self.near_ties],
            },
            "tokens": list(self.tokens),
            "target_position": self.target_position,
            "target_reason": self.target_reason,
            "metric": "logit(answer) - logit(wrong_answer) at the target",
            "restored": "mean over pairs of (m_patched - m_corrupted) / (m_clean - m_corrupted)",
            "atp": "mean over pairs of (a_clean - a_corrupted) . dm/da at the corrupted run / (m_clean - m_corrupted)",
            "interval": f"Student-t {self.settings.level:.0%} interval of the mean over pairs",
            "exact_vs_atp_correlation": self.correlation(),
            "top_sites": [list(s) for s in self.top_sites],
            "pairs": [dataclasses.asdict(p) for p in self.pairs],
            "warnings": list(self.warnings),
            "timings": self.timings,
            "core_version": self.core_version,
        }


# ----------------------------------------------------------------------------------------------------------------
# Attribution patching: one clean forward, one corrupted forward + backward


def atp_pass(
    loaded: LoadedModel,
    sites: PatchSites,
    clean_acts: dict[str, list[torch.Tensor]],
    corrupt_ids: torch.Tensor,
    corrupt_mask: torch.Tensor,
    position: int,
    pick_answers: Any,
) -> tuple[torch.Tensor, int, int, dict[str, np.ndarray]]:
    """The corrupted forward + backward of attribution patching.

    clean_acts: {component: L tensors [T', D]} from `capture_sites` on the clean text. pick_answers(corrupt_logits
    [V]) → (A, B) chooses the answers once the corrupted logits are known. Returns (corrupt logits [V], A, B,
    {component: float64 [L, T'] of (a_clean − a_corrupted) · ∂m/∂a}), m = logit_A − logit_B at the corrupted run."""
    import torch

    zeros: dict[str, list[torch.Tensor]] = {c: [] for c in COMPONENTS}
    acts: dict[str, list[torch.Tensor]] = {c: [] for c in COMPONENTS}

    def probe(kind: str, h: torch.Tensor) -> torch.Tensor:
        z = torch.zeros_like(h, requires_grad=True)  # ∂m/∂z = ∂m/∂h: the gradient at this site
        zeros[kind].append(z)
        acts[kind].append(h.detach()[0])
        return h + z

    def pre(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return with_first_input(args, kwargs, probe("residual", first_input(args, kwargs)))

    def post(kind: str) -> Any:
        def hook(_m: Any, _args: Any, out: Any) -> Any:
            return replace_output(out, probe(kind, main_output(out)))

        return hook

    with hooked(sites.registrations(pre, post)):
        logits = target_logits(loaded, corrupt_ids, corrupt_mask, position, grad=True)[0]
    a, b = pick_answers(logits.detach())
    m = logits[a] - logits[b]
    flat = [z for c in COMPONENTS for z in zeros[c]]
    grads = torch.autograd.grad(m, flat, allow_unused=True)
    delta: dict[str, np.ndarray] = {}
    k = 0
    for c in COMPONENTS:
        rows = []
        for l, z in enumerate(zeros[c]):
            g = grads[k] if grads[k] is not None else torch.zeros_like(z)
            k += 1
            diff = clean_acts[c][l].to(g.dtype) - acts[c][l]
            rows.append((diff * g[0]).sum(-1).double().cpu().numpy())
        delta[c] = np.stack(rows)
    return logits.detach(), a, b, delta


def pick_answers_for(
    loaded: LoadedModel, clean_logits: torch.Tensor, settings: PatchingSettings, *, allow_same: bool = False
) -> Any:
    """The one-pair rule of answers (core.studies.patching.pick_answers, run_patching's): A = given or the clean
    top-1, B = given or the corrupted top-1, A ≠ B (unless allow_same: in a data set such a pair is a near tie,
    m ≡ 0). Returns pick(corrupt_logits) → (A, B) for `atp_pass`."""

    def pick(corrupt_logits: torch.Tensor) -> tuple[int, int]:
        return pick_answers(loaded, settings, clean_logits, corrupt_logits, allow_same=allow_same)

    return pick


# ----------------------------------------------------------------------------------------------------------------
# The run: per-pair cells (the local loop and the Ray workers call the same function) and one merge


def _length_message(lengths: list[int]) -> str:
    counts: dict[int, int] = {}
    for n in lengths:
        counts[n] = counts.get(n, 0) + 1
    found = ", ".join(f"{n} tokens ({k} pair{'s' if k != 1 else ''})" for n, k in sorted(counts.items()))
    return (
        f"the pairs have different token lengths: {found}; all pairs of one run need one length "
        "(a templated data set), so split the file by length"
    )


@serializable
@dataclass(frozen=True)
class PairCells:
    """What one pair contributes: its token length, target, answers, margins and cells (L = blocks, T = tokens).

    metric / metric_all: m after patching ([L, T] / [L]; NaN where not patched); delta / delta_all: AtP's
    (a_clean − a_corrupted) · ∂m/∂a ([L, T] / [L])."""

    n_tokens: int
    target: int
    target_reason: str
    tokens: list[str]
    answer_id: int
    answer_token: str
    wrong_id: int
    wrong_token: str
    answers_from: str
    m_clean: float
    m_corrupted: float
    metric: dict[str, np.ndarray]
    metric_all: dict[str, np.ndarray]
    delta: dict[str, np.ndarray]
    delta_all: dict[str, np.ndarray]


def encode_pair(loaded: LoadedModel, pair: Pair, max_tokens: int) -> tuple[Any, Any, int, str]:
    """core.studies.patching.encode_texts of one pair: (clean encoding, corrupted encoding, target position, its
    reason); InputError for texts of different token lengths or a target that differs between them."""
    return encode_texts(loaded, pair.clean, pair.corrupt, max_tokens)


def pair_cells(loaded: LoadedModel, pair: Pair, settings: PairsSettings, *, in_data_set: bool = True) -> PairCells:
    """One pair: attribution patching always, the exact grid unless atp_only / top_k (those cells stay NaN).

    in_data_set: a pair whose answer and wrong answer are the same token (both runs predict it) is then a near
    tie (m ≡ 0: no exact cells, AtP 0) to be counted and listed; alone (one pair) it is the one-pair error.
    Raises InputError (without the pair's number: the caller adds it). Call with the model's lock held."""
    enc_c, enc_k, pos, reason = encode_pair(loaded, pair, settings.max_tokens)
    (c_ids, c_mask, c_toks), (k_ids, k_mask, _) = enc_c, enc_k
    T, L = len(c_toks), loaded.n_layers
    Tp = pos + 1 if loaded.family == "causal_lm" else T
    sites = patch_sites(loaded.model, L)
    one = settings.for_pair(pair)
    clean_acts, clean_logits = capture_sites(loaded, sites, c_ids, c_mask, pos)
    k_logits, a, b, d = atp_pass(
        loaded,
        sites,
        clean_acts,
        k_ids,
        k_mask,
        pos,
        pick_answers_for(loaded, clean_logits, one, allow_same=in_data_set),
    )
    delta = {c: np.zeros((L, T)) for c in COMPONENTS}
    delta_all = {c: np.zeros(L) for c in COMPONENTS}
    for c in COMPONENTS:
        delta[c][:, :Tp] = d[c][:, :Tp]
        delta_all[c] = d[c][:, :Tp].sum(axis=1)
    answers = Answers.of(loaded, one, (a, b), clean_logits, k_logits)
    metric = {c: np.full((L, T), np.nan) for c in COMPONENTS}
    metric_all = {c: np.full(L, np.nan) for c in COMPONENTS}
    if not settings.atp_only and settings.top_k is None and a != b:
        one_run = run_patching(loaded, pair.clean, pair.corrupt, one)
        if (one_run.answer_id, one_run.wrong_id) != (a, b):
            raise RuntimeError("the exact and the attribution passes chose different answers")
        metric = {c: np.array(one_run.metric[c]) for c in COMPONENTS}
        metric_all = {c: np.array(one_run.metric_all[c]) for c in COMPONENTS}
        # the margins exactly the one-pair run's
        answers = dataclasses.replace(answers, m_clean=one_run.m_clean, m_corrupted=one_run.m_corrupted)
    return PairCells(
        n_tokens=T,
        target=pos,
        target_reason=reason,
        tokens=list(c_toks),
        **dataclasses.asdict(answers),
        metric=metric,
        metric_all=metric_all,
        delta=delta,
        delta_all=delta_all,
    )


def exact_sites(
    loaded: LoadedModel, pair: Pair, max_tokens: int, answer: int, wrong: int, top: tuple[tuple[str, int, int], ...]
) -> list[float]:
    """m of the corrupted run with each chosen site (component, layer, position; −1 = all) patched from the clean
    run: one batched pass per (component, layer). Returns one value per site, in `top`'s order."""
    import torch

    (c_ids, c_mask, _), (k_ids, k_mask, _), pos, _ = encode_pair(loaded, pair, max_tokens)
    Tp = pos + 1 if loaded.family == "causal_lm" else c_ids.shape[1]
    sites = patch_sites(loaded.model, loaded.n_layers)
    clean_acts, _ = capture_sites(loaded, sites, c_ids, c_mask, pos)
    k_logits = target_logits(loaded, k_ids, k_mask, pos)[0]
    m_corrupt = float(k_logits[answer] - k_logits[wrong])
    out = [m_corrupt] * len(top)
    groups: dict[tuple[str, int], list[int]] = {}
    for j, (c, l, _p) in enumerate(top):
        groups.setdefault((c, l), []).append(j)
    for (c, l), idx in groups.items():
        masks = torch.zeros(len(idx), Tp, dtype=torch.bool, device=c_ids.device)
        for r, j in enumerate(idx):
            p = top[j][2]
            if p < 0:
                masks[r] = True
            elif p < Tp:
                masks[r, p] = True
        vals = patched_metrics(loaded, sites, c, l, clean_acts[c][l][:Tp], k_ids, k_mask, pos, masks, answer, wrong)
        for r, j in enumerate(idx):
            if top[j][2] < Tp:  # a position after a causal target cannot change the prediction: m_corrupted
                out[j] = float(vals[r])
    return out


def check_shapes(lengths: list[int], target_positions: list[int]) -> None:
    """The data set's rules over pairs: one token length (the one-line count message) and one target position."""
    if len(set(lengths)) > 1:
        raise InputError(_length_message(lengths))
    targets = sorted(set(target_positions))
    if len(targets) > 1:
        raise InputError(
            f"the pairs put the target at different positions ({targets}); all pairs of one run need it at the "
            "same position"
        )


def top_sites(cells: list[PairCells], k: int) -> tuple[tuple[str, int, int], ...]:
    """The K sites (component, layer, position; −1 = all positions) of largest |mean atp| over the pairs that are
    not near ties (all pairs when there is one)."""
    den = np.array([c.m_clean - c.m_corrupted for c in cells])
    used = np.ones(len(cells), bool) if len(cells) == 1 else np.abs(den) >= TINY_DIFFERENCE
    den = np.where(den == 0, np.nan, den)
    scored: list[tuple[float, str, int, int]] = []
    for comp in COMPONENTS:
        per = np.nanmean(np.stack([c.delta[comp] for c in cells])[used] / den[used, None, None], axis=0)
        every = np.nanmean(np.stack([c.delta_all[comp] for c in cells])[used] / den[used, None], axis=0)
        for l in range(per.shape[0]):
            scored.append((abs(float(every[l])), comp, l, -1))
            scored += [(abs(float(per[l, p])), comp, l, p) for p in range(per.shape[1])]
    scored.sort(key=lambda s: (-np.nan_to_num(s[0], nan=-1.0), COMPONENTS.index(s[1]), s[2], s[3]))
    return tuple((c, l, p) for _, c, l, p in scored[:k])


def merge_cells(
    model: ModelInfo,
    settings: PairsSettings,
    pairs: list[Pair],
    cells: list[PairCells],
    top: tuple[tuple[str, int, int], ...] = (),
    top_values: list[list[float]] | None = None,
    timings: dict[str, float] | None = None,
) -> PairsResult:
    """The one merge of per-pair cells into a PairsResult (local and Ray engines alike): near ties counted and
    listed (an error when every one of several pairs is one), the top-K exact values put in their cells."""
    P = len(cells)
    records = [
        PairRecord(
            index=i + 1,
            clean_text=pair.clean,
            corrupted_text=pair.corrupt,
            answer_id=c.answer_id,
            answer_token=c.answer_token,
            wrong_id=c.wrong_id,
            wrong_token=c.wrong_token,
            answers_from=c.answers_from,
            m_clean=c.m_clean,
            m_corrupted=c.m_corrupted,
            near_tie=abs(c.m_clean - c.m_corrupted) < TINY_DIFFERENCE,
        )
        for i, (pair, c) in enumerate(zip(pairs, cells, strict=True))
    ]
    ties = [r for r in records if r.near_tie]
    if P > 1 and len(ties) == P:
        raise InputError(
            f"every one of the {P} pairs is a near tie (|m_clean − m_corrupted| < {TINY_DIFFERENCE}): "
            "'restored' would divide by almost nothing; choose pairs whose answers differ more"
        )
    metric = {c: np.stack([x.metric[c] for x in cells]) for c in COMPONENTS}
    metric_all = {c: np.stack([x.metric_all[c] for x in cells]) for c in COMPONENTS}
    for i, values in enumerate(top_values or []):
        for (c, l, p), v in zip(top, values, strict=True):
            if p < 0:
                metric_all[c][i, l] = v
            else:
                metric[c][i, l, p] = v
    warnings = []
    if ties:
        listed = ", ".join(str(r.index) for r in ties[:20]) + (" …" if len(ties) > 20 else "")
        what = "kept (the only pair)" if P == 1 else "left out of the means"
        warnings.append(
            f"{len(ties)} of {P} pair(s) are near ties (|m_clean − m_corrupted| < {TINY_DIFFERENCE}), {what}: "
            f"pair {listed}"
        )
    return PairsResult(
        model=model,
        settings=settings,
        pairs=tuple(records),
        tokens=tuple(cells[0].tokens),
        target_position=cells[0].target,
        target_reason=cells[0].target_reason,
        metric=metric,
        metric_all=metric_all,
        delta={c: np.stack([x.delta[c] for x in cells]) for c in COMPONENTS},
        delta_all={c: np.stack([x.delta_all[c] for x in cells]) for c in COMPONENTS},
        top_sites=top,
        warnings=tuple(warnings),
        timings=timings or {},
    )


def pair_name(i: int) -> str:
    """The work-folder unit (core.run.checkpoint) of pair i's PairCells (0-based); `top_name`: of its top-K values."""
    return f"pair-{i:07d}"


def top_name(i: int) -> str:
    return f"top-{i:07d}"


def run_pairs(
    loaded: LoadedModel,
    pairs: list[Pair],
    settings: PairsSettings | None = None,
    progress: ProgressFn | None = None,
    work: WorkFolder | None = None,
) -> PairsResult:
    """Exact patching (unless atp_only / top_k) and attribution patching of every pair; see the module docstring.

    Raises InputError for an empty data set, a pair whose texts differ in token length (naming the pair), pairs
    of different lengths (naming the lengths found and how many pairs have each), targets at different positions,
    a pair with equal answers, or every pair of several being a near tie. Every pair is tokenised and checked
    before the model runs. work: a work folder (core.run.checkpoint) that keeps each pair's cells (and top-K
    values) as they finish; pairs already in it are read back instead of run again."""
    settings = settings or PairsSettings()
    report = progress or (lambda label, frac: None)
    if not pairs:
        raise InputError("the pair data set is empty")
    t0 = time.perf_counter()
    P = len(pairs)
    with loaded.lock:
        shapes = []
        for i, pair in enumerate(pairs):
            try:
                enc_c, _, pos, reason = encode_pair(loaded, pair, settings.max_tokens)
            except InputError as exc:
                raise InputError(f"pair {i + 1}: {exc}") from None
            shapes.append((len(enc_c[2]), pos))
        check_shapes([n for n, _ in shapes], [p for _, p in shapes])
        if work is not None:
            work.check_model(loaded.info())
        cells: list[PairCells] = []
        resumed = 0
        for i, pair in enumerate(pairs):
            if work is not None and work.has(pair_name(i)):
                cells.append(work.load(pair_name(i)))
                resumed += 1
                continue
            try:
                cells.append(pair_cells(loaded, pair, settings, in_data_set=P > 1))
            except InputError as exc:
                raise InputError(f"pair {i + 1}: {exc}") from None
            if work is not None:
                work.save(pair_name(i), cells[-1])
            rate = (i + 1 - resumed) / max(time.perf_counter() - t0, 1e-9)
            report(f"Pair {i + 1} of {P} ({rate:.2f} pairs/s)", (i + 1) / P * (0.98 if settings.top_k else 1.0))
        timings = {"pairs": time.perf_counter() - t0}
        top: tuple[tuple[str, int, int], ...] = ()
        values = None
        if settings.top_k is not None:
            t = time.perf_counter()
            top = top_sites(cells, settings.top_k)
            report(f"Exact patching of the top {len(top)} sites", 0.99)
            values = []
            for i, (pair, c) in enumerate(zip(pairs, cells, strict=True)):
                if work is not None and work.has(top_name(i)):
                    values.append([float(v) for v in work.load(top_name(i))["values"]])
                    continue
                values.append(exact_sites(loaded, pair, settings.max_tokens, c.answer_id, c.wrong_id, top))
                if work is not None:
                    work.save(top_name(i), {"values": np.array(values[-1], dtype=np.float64)})
            timings["exact_top"] = time.perf_counter() - t
        report("Done", 1.0)
        timings["total"] = time.perf_counter() - t0
        return merge_cells(loaded.info(), settings, pairs, cells, top, values, timings)


# ----------------------------------------------------------------------------------------------------------------
# Cache


def pairs_cache_key(model_info: ModelInfo, pairs: list[Pair], settings: PairsSettings) -> str:
    """core.run.cache.run_key over the model, every pair (texts and answers) and the settings."""
    return run_key(
        model_info.key_fields(), settings, kind="patching_pairs", pairs=[dataclasses.astuple(p) for p in pairs]
    )


def patch_pairs(
    loaded: LoadedModel,
    pairs: list[Pair],
    settings: PairsSettings | None = None,
    *,
    cache: ResultCache | None = None,
    progress: ProgressFn | None = None,
    work: WorkFolder | None = None,
) -> PairsResult:
    """`run_pairs` behind the cache (same model revision, pairs, settings and core version: no model run); `work`:
    see run_pairs."""
    settings = settings or PairsSettings()
    key = pairs_cache_key(loaded.info(), pairs, settings)
    if cache is not None:
        hit = cache.get(key, PairsResult)
        if hit is not None:
            if progress:
                progress("Loaded from cache", 1.0)
            return dataclasses.replace(hit, cache_hit=True)
    result = dataclasses.replace(run_pairs(loaded, pairs, settings, progress, work), cache_key=key)
    if cache is not None:
        cache.set(key, result)
    return result
