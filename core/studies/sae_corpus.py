"""SAE features over a corpus: for every feature, its top-activating tokens with their contexts (the examples
Neuronpedia shows), its firing rate and its mean activation.

`sae_corpus(loaded, texts, sae_dirs)` runs one forward pass per text with the SAEs' sites recorded (core.model.sites,
hooks through core.model.hooks.hooked), encodes each site's activations with its SAE (core.model.sae) and keeps,
per feature, the `top_n` largest activations over the whole corpus (a running top-n merged text by text, so memory
is d_sae × top_n whatever the corpus size), the number of tokens where it fires and the sum of its activations.
Special tokens (BOS, [CLS] …) are left out unless `include_special` (SAEs are usually trained without BOS, whose
activations are atypical). Examples are ordered by activation, ties by text then position.

    firing rate = #{tokens with f > 0} / #tokens        mean activation = Σ f / #tokens
    mean when active = Σ f / #{tokens with f > 0}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.infra.errors import InputError
from core.infra.serialize import serializable
from core.model.arch import model_parts, try_model_parts
from core.model.hooks import hooked
from core.model.sae import SAE, load_sae
from core.model.sites import recorders
from core.model.tokens import tokenize

if TYPE_CHECKING:
    import torch

    from core.model.loading import LoadedModel

EXAMPLES_HEADER = ["hook", "feature", "rank", "text_index", "position", "token", "activation", "context"]
STATS_HEADER = ["hook", "feature", "firing_rate", "mean_activation", "mean_when_active", "max_activation"]
#: Tokens of context on each side of an example.
CONTEXT_TOKENS = 8


@serializable
@dataclass(frozen=True)
class SAEFeatureExamples:
    """One SAE over a corpus. d_sae features; N examples.

    fire_count int64 [d_sae], act_sum float64 [d_sae], act_max float32 [d_sae] over n_tokens tokens;
    examples (ex_*, [N]): feature, rank (1 = strongest), text index, position, token, activation, context
    (the example token in ⟦ ⟧ with CONTEXT_TOKENS tokens either side).
    """

    name: str
    hook_name: str
    d_sae: int
    n_texts: int
    n_tokens: int
    fire_count: np.ndarray
    act_sum: np.ndarray
    act_max: np.ndarray
    ex_feature: np.ndarray
    ex_rank: np.ndarray
    ex_text: np.ndarray
    ex_position: np.ndarray
    ex_activation: np.ndarray
    ex_token: list[str]
    ex_context: list[str]

    def example_rows(self) -> list[list[object]]:
        """sae_feature_examples.csv rows (EXAMPLES_HEADER)."""
        return [
            [self.hook_name, int(f), int(r), int(t), int(p), tok, float(a), ctx]
            for f, r, t, p, a, tok, ctx in zip(
                self.ex_feature,
                self.ex_rank,
                self.ex_text,
                self.ex_position,
                self.ex_activation,
                self.ex_token,
                self.ex_context,
            )
        ]

    def stats_rows(self) -> list[list[object]]:
        """sae_feature_stats.csv rows (STATS_HEADER) of every feature that fired at least once."""
        n = max(self.n_tokens, 1)
        rows: list[list[object]] = []
        for f in np.flatnonzero(self.fire_count > 0):
            c = int(self.fire_count[f])
            s = float(self.act_sum[f])
            rows.append([self.hook_name, int(f), c / n, s / n, s / c, float(self.act_max[f])])
        return rows

    @property
    def n_dead(self) -> int:
        return int((self.fire_count == 0).sum())


class _TopN:
    """Running top-n (activation, text, position) per feature: values [n, d_sae], -inf where empty."""

    def __init__(self, n: int, d_sae: int) -> None:
        self.n = n
        self.val = np.full((n, d_sae), -np.inf, dtype=np.float64)
        self.text = np.full((n, d_sae), -1, dtype=np.int64)
        self.pos = np.full((n, d_sae), -1, dtype=np.int64)

    def add(self, f: np.ndarray, text_index: int) -> None:
        """Merge the activations f [T, d_sae] of one text (non-firing entries never enter)."""
        T = f.shape[0]
        k = min(self.n, T)
        # the k largest per feature in this text (stable: ties by position)
        idx = np.argsort(-f, axis=0, kind="stable")[:k]
        v = np.take_along_axis(f, idx, axis=0).astype(np.float64)
        v[v <= 0] = -np.inf
        val = np.concatenate([self.val, v])
        text = np.concatenate([self.text, np.full_like(idx, text_index, dtype=np.int64)])
        pos = np.concatenate([self.pos, idx.astype(np.int64)])
        # order by value desc, then text asc, then position asc (earlier entries already come first on ties)
        order = np.argsort(-val, axis=0, kind="stable")[: self.n]
        self.val = np.take_along_axis(val, order, axis=0)
        self.text = np.take_along_axis(text, order, axis=0)
        self.pos = np.take_along_axis(pos, order, axis=0)


def _context(tokenizer: Any, ids: list[int], p: int, width: int = CONTEXT_TOKENS) -> str:
    a, b = max(0, p - width), min(len(ids), p + width + 1)
    return tokenizer.decode(ids[a:p]) + "⟦" + tokenizer.decode([ids[p]]) + "⟧" + tokenizer.decode(ids[p + 1 : b])


def sae_corpus(
    loaded: LoadedModel,
    texts: Sequence[str],
    sae_dirs: Sequence[str],
    *,
    max_tokens: int = 128,
    top_n: int = 10,
    include_special: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[SAEFeatureExamples]:
    """Top examples, firing rates and mean activations of every feature of each SAE over `texts` (see the module
    docstring). One-line InputError for an SAE that cannot be used with the model."""
    import torch

    if not 1 <= top_n <= 100:
        raise InputError(f"the number of examples per feature must be between 1 and 100, got {top_n}")
    parts, why = try_model_parts(loaded.model, "SAE features", "are")
    if parts is None:
        raise InputError(str(why))
    saes: list[SAE] = [load_sae(d) for d in sae_dirs]
    if len({s.hook_name for s in saes}) != len(saes):
        raise InputError("two SAEs read the same hook: one SAE per hook")
    for s in saes:
        s.check_model(parts, loaded.model_id)
    tops = [_TopN(top_n, s.d_sae) for s in saes]
    fire = [np.zeros(s.d_sae, dtype=np.int64) for s in saes]
    total = [np.zeros(s.d_sae, dtype=np.float64) for s in saes]
    peak = [np.zeros(s.d_sae, dtype=np.float32) for s in saes]
    token_ids: list[list[int]] = []
    n_tokens = 0
    with loaded.lock:
        for i, text in enumerate(texts):
            enc = tokenize(loaded, text, max_tokens)
            ids, special = enc.ids, enc.special
            keep = np.array([include_special or not s for s in special])
            store: dict[str, torch.Tensor] = {}
            regs = recorders(model_parts(loaded.model), [s.hook_name for s in saes], store)
            with torch.inference_mode(), hooked(regs):
                loaded.model(
                    input_ids=enc.input_ids.to(loaded.device),
                    attention_mask=enc.attention_mask.to(loaded.device),
                )
            for j, s in enumerate(saes):
                with torch.inference_mode():
                    f = s.encode(store[s.hook_name]).numpy()
                f[~keep] = 0.0
                fire[j] += (f > 0).sum(0)
                total[j] += f.sum(0, dtype=np.float64)
                np.maximum(peak[j], f.max(0), out=peak[j])
                tops[j].add(f, i)
            n_tokens += int(keep.sum())
            token_ids.append(ids)
            if progress is not None:
                progress(i + 1, len(texts))
    out = []
    for j, s in enumerate(saes):
        top = tops[j]
        r, feat = np.nonzero(np.isfinite(top.val))
        order = np.lexsort((r, feat))
        r, feat = r[order], feat[order]
        tx, ps = top.text[r, feat], top.pos[r, feat]
        out.append(
            SAEFeatureExamples(
                name=s.name,
                hook_name=s.hook_name,
                d_sae=s.d_sae,
                n_texts=len(texts),
                n_tokens=n_tokens,
                fire_count=fire[j],
                act_sum=total[j],
                act_max=peak[j],
                ex_feature=feat.astype(np.int32),
                ex_rank=(r + 1).astype(np.int32),
                ex_text=tx.astype(np.int32),
                ex_position=ps.astype(np.int32),
                ex_activation=top.val[r, feat].astype(np.float32),
                ex_token=[loaded.tokenizer.convert_ids_to_tokens(token_ids[t][p]) for t, p in zip(tx, ps)],
                ex_context=[_context(loaded.tokenizer, token_ids[t], int(p)) for t, p in zip(tx, ps)],
            )
        )
    return out


def sae_corpus_files(results: list[SAEFeatureExamples]) -> dict[str, bytes]:
    """sae_feature_examples.csv and sae_feature_stats.csv for the corpus bundle."""
    from core.infra.formats import csv_bytes

    ex: list[list[object]] = []
    st: list[list[object]] = []
    for r in results:
        ex += r.example_rows()
        st += r.stats_rows()
    return {
        "sae_feature_examples.csv": csv_bytes(EXAMPLES_HEADER, ex),
        "sae_feature_stats.csv": csv_bytes(STATS_HEADER, st),
    }
