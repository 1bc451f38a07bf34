"""Neuron factors: non-negative matrix factorisation of the MLP neuron activations over the tokens (Ecco's view).

What "the neuron activations" are, for every architecture: the input of the MLP's output projection, i.e. the
vector the last linear map of the MLP reads. That is act(W_in x) for GPT-2 (gelu_new), BERT/MiniLM (gelu) and
OPT, and act(gate(x)) * up(x) for the gated MLPs of Llama, Mistral, Qwen2, Gemma (SwiGLU / GeGLU). One forward
pre-hook on that projection captures it, whatever the activation function is.

The factorisation (as Ecco's `NMF` class does it, rewritten here):
    A[t, (l, n)] = max(a_l[t, n], 0)          tokens × (layers in the range · neurons per layer)
    A ≈ W H,   W ≥ 0 [T, k] (how strongly each token expresses factor f),   H ≥ 0 [k, N] (the neurons of f)
solved by scikit-learn's NMF algorithm (coordinate descent, Frobenius loss, NNDSVDa initialisation seeded by `seed`,
tolerance 1e-3, at most 30 iterations; its initialisation and Cython coordinate updates, with each sweep's two
products in torch: `factorize`). Ecco uses init='random', max_iter=500; NNDSVDa starts close to the optimum:
after 30 iterations the error is within 0.1 % of the fully converged one (tol 1e-4, 200–230 iterations) both on
the trained MiniLM and on a random-weight GPT-2 at 128 tokens, at an eighth of the cost (each iteration is two
T × N × k products). The error reached and the iteration count are stored with the factors.
Negative activations are clipped at 0, as Ecco does (NMF needs A ≥ 0). For GELU each negative value is small
(≥ −0.17) and reads as "not firing", but most neurons sit slightly below zero at most tokens, so the clipped share
of the total mass is large even so (about half on MiniLM); for a gated MLP act(gate)·up is signed and a clipped
value can be as large as a kept one. The clipped share Σ|min(a, 0)| / Σ|a| is recorded in the section so that the
page and the PDF can say how much was discarded.

The activations are recorded by the deeper views' one forward pass (core.steps.dla.decomposition_pass, with
`mlp_layers`) when DLA or flow runs too, as the pipeline arranges; on their own, by one hooked forward pass inside
the analysis step that stops right after the last layer of the range (no final norm, no unembedding). Both record
the same values (`mlp_input_rows`). Widget changes only re-read the stored factors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.infra import serialize
from core.infra.threads import single_threaded
from core.model.hooks import hooked

if TYPE_CHECKING:
    import torch

    from core.steps.context import StepContext

log = logging.getLogger(__name__)

DEFAULT_FACTORS = 6
DEFAULT_SEED = 0
TOP_NEURONS = 20  # neurons kept per factor (the page shows the first ten)
MAX_ITER = 30  # coordinate-descent sweeps: within 0.1 % of the converged error (MiniLM, random GPT-2, 128 tokens)
TOL = 1e-3  # stopping tolerance: 2–4× fewer iterations than 1e-4 for a relative error within 0.1 % of it


def mlp_output_projections(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The MLP output projection of every block, in layer order, from core/model/arch.py's map (`Block.mlp_out`):
    GPT-2 `mlp.c_proj`, Llama/Mistral/Qwen2/Gemma-2/Phi-3 `mlp.down_proj`, BERT/MiniLM/RoBERTa `output.dense`,
    GPT-NeoX `mlp.dense_4h_to_h`, OPT `fc2`, DistilBERT `ffn.lin2`.

    Raises ValueError("neuron factors are not available for <architecture> …") for an architecture the map does not
    know (the step turns it into a visible warning).
    """
    from core.model.arch import try_model_parts

    parts, why = try_model_parts(model, "neuron factors", "are")
    if parts is None:
        raise ValueError(why)
    return [block.mlp_out for block in parts.blocks]


def mlp_input_rows(x: torch.Tensor, T: int) -> np.ndarray:
    """float32 numpy [T, d_ff]: batch row 0 of an MLP output projection's input x ([1, T, d_ff]; OPT flattens it
    to [T, d_ff]), as every capture of the neuron activations records it."""
    return x.reshape(-1, T, x.shape[-1])[0].detach().float().cpu().numpy()


class _Stop(Exception):
    """Raised by the last hook: the layers after the range (and the unembedding) are not needed."""


def capture_mlp_activations(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, layers: Sequence[int]
) -> np.ndarray:
    """One forward pass that records the input of each chosen layer's MLP output projection.

    input_ids, attention_mask: [1, T]. Returns float32 [len(layers), T, d_ff] (batch row 0), in `layers` order.
    The pass stops after the last chosen layer.
    """
    import torch

    projections = mlp_output_projections(model)
    wanted = sorted({int(layer) for layer in layers})
    if not wanted or wanted[0] < 0 or wanted[-1] >= len(projections):
        raise ValueError(f"layers {list(layers)} are outside 0…{len(projections) - 1}")
    last = wanted[-1]
    T = int(input_ids.shape[1])
    got: dict[int, np.ndarray] = {}

    def make_hook(layer: int) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            got[layer] = mlp_input_rows(args[0], T)
            if layer == last:
                raise _Stop

        return hook

    with hooked((projections[layer], "pre", make_hook(layer)) for layer in wanted), torch.inference_mode():
        try:
            model(input_ids=input_ids, attention_mask=attention_mask)
        except _Stop:
            pass
    missing = [layer for layer in wanted if layer not in got]
    if missing:
        raise RuntimeError(f"the MLP output projection of layer(s) {missing} was never called")
    return np.stack([got[int(layer)] for layer in layers]).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Factorization:
    """NMF of one non-negative matrix A [T, N] ≈ W [T, k] @ H [k, N]; `error` = ‖A − WH‖_F as the solver reports
    it (reconstruction_err_), `norm` = ‖A‖_F."""

    W: np.ndarray
    H: np.ndarray
    error: float
    norm: float
    n_iter: int


def _frobenius(X: Any) -> float:
    """‖X‖_F of a float32 matrix [T, N]: each row's norm in float32 (torch's vectorised sum of N squares), the rows
    combined in float64. Within 1e-7 of the float64 sum of all squares (2e-8 on 512 × 36 864), and 30× faster than
    converting the matrix to float64 (47 → 1.5 ms on a 2-core Xeon)."""
    import torch

    return float(torch.linalg.vector_norm(torch.linalg.vector_norm(X, dim=1).double()))


def factorize(A: np.ndarray, k: int, seed: int = DEFAULT_SEED, max_iter: int = MAX_ITER) -> Factorization:
    """NMF of a non-negative A [T, N] with min(k, T, N) factors: scikit-learn's coordinate-descent solver (its
    NNDSVDa initialisation seeded by `seed`, its Cython coordinate updates, its stopping rule) with the two
    products of each sweep, A Hᵀ and Aᵀ W, computed by torch instead of numpy.

    The same algorithm as `sklearn.decomposition.NMF(init="nndsvda", solver="cd", tol=TOL, max_iter=max_iter)`,
    equal to it up to float32 rounding (tested against its float64 run). The products stream A (75 MB for GPT-2 at
    512 tokens) 60 times and were 60 % of the solver's time single-threaded in numpy; torch runs them on its own
    threads, already warm after the forward pass (A of 512 × 36 864: 1.24 s → 0.55 s on a 2-core Xeon).
    `error` and `norm` are Frobenius norms taken row by row in float32 and over the rows in float64 (`_frobenius`:
    within 1e-7 of a float64 sum; torch's float32 norm of all 19 M squares at once was off by 5e-4). An all-zero A
    gives zero factors (the solver cannot start from it)."""
    import torch
    from sklearn.decomposition._cdnmf_fast import _update_cdnmf_fast
    from sklearn.decomposition._nmf import _initialize_nmf

    A = np.ascontiguousarray(A, dtype=np.float32)
    if not A.flags.writeable:  # torch.from_numpy wants a writable array (a memory-mapped or frozen one is copied)
        A = A.copy()
    if A.ndim != 2 or (A < 0).any():
        raise ValueError("factorize needs a non-negative 2-D matrix")
    T, N = A.shape
    k = max(1, min(int(k), T, N))
    X = torch.from_numpy(A)
    norm = _frobenius(X)
    if norm == 0.0:
        return Factorization(np.zeros((T, k), np.float32), np.zeros((k, N), np.float32), 0.0, 0.0, 0)
    # the initialisation's small products in one BLAS thread (right after a torch pass two OpenBLAS threads only
    # contend with torch's spinning ones); everything after it is torch or scikit-learn's Cython kernel
    with single_threaded():
        W0, H0 = _initialize_nmf(A, k, init="nndsvda", random_state=seed)
    W = np.ascontiguousarray(W0, dtype=np.float32)
    Ht = np.ascontiguousarray(H0.T, dtype=np.float32)
    Wt, Htt = torch.from_numpy(W), torch.from_numpy(Ht)  # views: the kernel updates them in place
    order = np.arange(k, dtype=np.intp)
    first = 0.0
    n_iter = 0
    with torch.no_grad():
        for n_iter in range(1, max_iter + 1):  # sklearn.decomposition._nmf._fit_coordinate_descent, no penalties
            violation = _update_cdnmf_fast(W, (Htt.T @ Htt).numpy(), (X @ Htt).numpy(), order)
            violation += _update_cdnmf_fast(Ht, (Wt.T @ Wt).numpy(), (Wt.T @ X).T.contiguous().numpy(), order)
            if n_iter == 1:
                first = violation
            if first == 0 or violation / first <= TOL:
                break
        error = _frobenius(torch.addmm(X, Wt, Htt.T, alpha=-1))
    return Factorization(W, np.ascontiguousarray(Ht.T), error, norm, n_iter)


@serialize.serializable
@dataclass(frozen=True)
class NeuronFactorSection:
    """Neuron factors of one analysis.

    Shapes: T = tokens, k = factors, n = TOP_NEURONS (or fewer when the range has fewer neurons).
    layers: the model's layer indices (0-based, contiguous) whose MLP neurons entered the factorisation. Everything
        a reader sees numbers them as blocks 1…L (index + 1), as the rest of the app: `blocks`, `neuron_name`,
        neuron_factor_neurons.csv (top_rows), the figures, the PDF and the page. The stored arrays keep the indices,
        so results stored by older versions read back unchanged.
    d_ff: neurons per layer (the width of the MLP output projection's input).
    token_factors: float32 [T, k], W of the NMF: factor f's strength at each token (the token shading).
    top_layer, top_neuron: int32 [k, n], the neurons with the largest weight in H[f], largest first (top_layer holds
        layer indices as `layers` does; neurons are numbered from 0 within their block).
    top_weight: float32 [k, n], those weights.
    error: ‖A − WH‖_F (scikit-learn's reconstruction_err_); relative_error: error / ‖A‖_F.
    clipped_fraction: Σ|min(a, 0)| / Σ|a| over the range, the share of activation mass removed by the clipping.
    """

    layers: tuple[int, ...]
    d_ff: int
    n_factors: int
    seed: int
    token_factors: np.ndarray
    top_layer: np.ndarray
    top_neuron: np.ndarray
    top_weight: np.ndarray
    error: float
    relative_error: float
    clipped_fraction: float
    n_iter: int

    def factor_rows(self, tokens: Sequence[str]) -> list[list[object]]:
        """Rows of neuron_factors.csv: factor, position, token, activation (W[position, factor])."""
        T, k = self.token_factors.shape
        return [[f, t, tokens[t], float(self.token_factors[t, f])] for f in range(k) for t in range(T)]

    @property
    def blocks(self) -> tuple[int, int]:
        """The first and last block of the range, numbered 1…L."""
        return self.layers[0] + 1, self.layers[-1] + 1

    def neuron_name(self, factor: int, rank: int) -> str:
        """ "L<block 1…L>·N<neuron>" of the factor's rank-th heaviest neuron."""
        return f"L{int(self.top_layer[factor, rank]) + 1}·N{int(self.top_neuron[factor, rank])}"

    def top_rows(self) -> list[list[object]]:
        """Rows of neuron_factor_neurons.csv: factor, rank, layer (block 1…L), neuron, weight (H[factor, neuron])."""
        k, n = self.top_layer.shape
        return [
            [f, r, int(self.top_layer[f, r]) + 1, int(self.top_neuron[f, r]), float(self.top_weight[f, r])]
            for f in range(k)
            for r in range(n)
        ]


def neuron_factors(
    acts: np.ndarray,
    layers: Sequence[int],
    k: int = DEFAULT_FACTORS,
    seed: int = DEFAULT_SEED,
    top_n: int = TOP_NEURONS,
) -> tuple[NeuronFactorSection, Factorization]:
    """Factorise activations acts [len(layers), T, d_ff] (as captured) into a section (and the raw factorisation).

    The matrix is A = max(acts, 0) laid out as [T, len(layers)·d_ff], column (i, n) = layer layers[i], neuron n.
    """
    if acts.ndim != 3 or acts.shape[0] != len(layers):
        raise ValueError(f"expected activations [{len(layers)}, T, d_ff], got {acts.shape}")
    d_ff = acts.shape[2]
    A, total, clipped = _clipped_matrix(acts)
    fac = factorize(A, k, seed)
    n = min(top_n, A.shape[1])
    order = _top_columns(fac.H, n)
    section = NeuronFactorSection(
        layers=tuple(int(x) for x in layers),
        d_ff=int(d_ff),
        n_factors=int(fac.W.shape[1]),
        seed=int(seed),
        token_factors=fac.W,
        top_layer=np.asarray(layers, dtype=np.int32)[order // d_ff],
        top_neuron=(order % d_ff).astype(np.int32),
        top_weight=np.take_along_axis(fac.H, order, axis=1).astype(np.float32),
        error=fac.error,
        relative_error=fac.error / fac.norm if fac.norm > 0 else 0.0,
        clipped_fraction=clipped / total if total > 0 else 0.0,
        n_iter=fac.n_iter,
    )
    return section, fac


def _clipped_matrix(acts: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(A, Σ|a|, Σ max(−a, 0)) of activations [L, T, d_ff]: A = max(acts, 0) laid out as [T, L·d_ff], written one
    layer at a time straight into its columns (one pass; max + transpose + reshape made two 75 MB copies for GPT-2
    at 512 tokens), the two sums per token row in float32 and over the rows in float64 (within 1e-7 of float64
    sums of every entry). 32 + 24 + 25 → 40 ms for GPT-2's 12 MLPs at 512 tokens on a 2-core Xeon."""
    import torch

    n_layers, T, d_ff = acts.shape
    src = torch.from_numpy(np.ascontiguousarray(acts, dtype=np.float32))
    A = torch.empty(T, n_layers * d_ff)
    total = torch.empty(n_layers, T, dtype=torch.float64)
    negative = torch.empty(n_layers, T, dtype=torch.float64)
    with torch.no_grad():
        for i in range(n_layers):
            a = src[i]
            torch.clamp(a, min=0, out=A[:, i * d_ff : (i + 1) * d_ff])
            total[i] = torch.linalg.vector_norm(a, 1, dim=1)
            negative[i] = torch.clamp(a, max=0).sum(1)
    return A.numpy(), float(total.sum()), -float(negative.sum())


def _top_columns(H: np.ndarray, n: int) -> np.ndarray:
    """int [k, n]: per row of H the columns of its n largest entries, largest first, ties by column: the first n
    of the stable argsort of −H (the same indices), from the entries at least the n-th largest (np.partition)
    instead of sorting all N columns (15 → 1 ms for 6 × 36 864)."""
    k, N = H.shape
    if n >= N:
        return np.argsort(-H, axis=1, kind="stable")[:, :n]
    out = np.empty((k, n), dtype=np.intp)
    for f in range(k):
        row = H[f]
        nth = np.partition(row, N - n)[N - n]  # the n-th largest value
        cand = np.flatnonzero(row >= nth)  # ascending columns: every tie of the n-th largest is in
        out[f] = cand[np.argsort(-row[cand], kind="stable")[:n]]
    return out


def layer_range(n_layers: int, first: int | None, last: int | None) -> list[int]:
    """The model's layer indices (0-based, what the hooks take) of blocks first … last, inclusive, numbered 1…L as
    the settings are; None means the first / last block, a last beyond L means L."""
    lo = 1 if first is None else int(first)
    hi = n_layers if last is None else min(int(last), n_layers)
    if lo < 1 or lo > hi:
        raise ValueError(
            f"the neuron layer range {first}…{last} is empty for a model with {n_layers} blocks (numbered 1…{n_layers})"
        )
    return list(range(lo - 1, hi))


# ----------------------------------------------------------------------------------------------------------------
# Figures (core.figures.plotting: object-oriented matplotlib, no pyplot)


# ----------------------------------------------------------------------------------------------------------------
# Analysis step, bundle writer, PDF section


def run_neuron_factors(ctx: StepContext) -> NeuronFactorSection | None:
    """Analysis step: one hooked pass over the chosen layers' MLPs (none when the views' one pass recorded them:
    `ctx.mlp_activations`), then the NMF (settings neuron_factors: k, 0 = off; neuron_first_layer /
    neuron_last_layer: the range of blocks 1…L, empty = all blocks)."""
    st = ctx.settings
    if st.neuron_factors == 0:
        return None
    model = ctx.loaded.model
    try:
        layers = layer_range(ctx.loaded.n_layers, st.neuron_first_layer, st.neuron_last_layer)
        held = ctx.mlp_activations
        if held is not None and held[0] == tuple(layers):  # recorded by the views' one pass (the pipeline)
            mlp_output_projections(model)  # the same refusal as the step's own pass for a model the map lacks
            acts = held[1]
        else:
            acts = capture_mlp_activations(model, ctx.capture.input_ids, ctx.capture.attention_mask, layers)
    except ValueError as exc:
        ctx.warn(str(exc))
        return None
    section, _fac = neuron_factors(acts, layers, k=st.neuron_factors, seed=DEFAULT_SEED)
    return section
