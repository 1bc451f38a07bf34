"""Cost of the promoted / suppressed token tables of direct logit attribution and of the neuron factors (issue 24)
against a plain `torch.matmul` of the same shapes, GPT-2-small shape (random weights), this machine.

    python bench/bench_views.py [--tokens 512] [--repeat 3] [--threads 1] [--cpu]

Rows:
- DLA tables before (tests/dla_reference.py: one [2L, D] × W_Uᵀ product and top-k per window position, one more for
  the target's heads) and after (core.steps.dla.promoted_tables: every row in one product per 64 MiB of logits);
  "matmul" = torch.matmul of the same rows by W_Uᵀ (no top-k); "carry" = the frozen-norm walk of the window's
  positions both share; "compute_dla" = the whole DLA step after the decomposition pass.
- Neuron factors: the hooked pass (a forward pass that stops after the last layer), the NMF (scikit-learn,
  coordinate descent) and "matmul" = the NMF's own products done by torch.matmul: 2 per iteration, [T, N] × [N, k]
  and [k, T] × [T, N] (N = L · d_ff), n_iter iterations (the NNDSVDa start not counted).
"fraction" = matmul / measured.

    python bench/bench_views.py --views [--shapes gpt2 bert] [--tokens 512] --threads 1 --cpu

prints, per shape of `python -m bench` (bench/run.py), the process CPU time of the bare forward pass (the floor)
and of `add_views(result, "all")` with each view's share (CPU time between add_views's progress reports), and
the first-visit wait it implies after a 5 s pause: max(0, views − 5 s) with the views running on an idle core.
"""

from __future__ import annotations

import argparse
import time

from common import add_clock_args, load_gpt2_small, text_of_tokens, timeit, use_clock_args


def measure(loaded, tokens: int, repeat: int) -> list[tuple[str, float, float]]:
    import numpy as np
    import torch
    from dla_reference import promoted_tables_reference

    from core.model.capture import capture
    from core.run.settings import AnalysisSettings
    from core.steps import dla
    from core.steps.neurons import capture_mlp_activations, neuron_factors

    text = text_of_tokens(loaded, tokens)
    cap = capture(loaded, text, AnalysisSettings(max_tokens=tokens, compute_gradients=False))
    T = cap.input_ids.shape[1]
    dec = dla.decomposition_pass(loaded, cap.input_ids, cap.attention_mask)
    P = dec.parts
    L = P.n_layers
    pos = T - 1
    y = int(dec.logits[pos].argmax())
    W_U, _ = dla._unembed_weight(P)
    positions = dla.promote_window(T, pos, L, W_U.shape[1], W_U.shape[0])
    c = dla.carry(dec, pos)
    rows = torch.cat(
        [
            *[dla.block_update_rows(c if t == pos else dla.carry(dec, t), L).reshape(2 * L, -1) for t in positions],
            torch.stack([c.vectors[i] for i, comp in enumerate(c.components) if comp == "attention"]),
        ]
    )

    def carry_all() -> None:
        for t in positions:
            dla.block_update_rows(dla.carry(dec, t), L)

    def mm() -> None:
        with torch.inference_mode():
            torch.matmul(rows, W_U.t())

    out = [
        ("DLA carry (window positions)", timeit(carry_all, repeat), float("nan")),
        ("DLA tables before", timeit(lambda: promoted_tables_reference(dec, pos, dla.PROMOTE_K), repeat), 0.0),
        ("DLA tables after (incl. carry)", timeit(lambda: dla.compute_dla(dec, pos, y, loaded.tokenizer), repeat), 0.0),
        ("DLA matmul (same rows × W_Uᵀ)", timeit(mm, repeat), float("nan")),
    ]
    peak = out[3][1]
    out[1] = (out[1][0], out[1][1], peak / out[1][1])
    out[2] = (out[2][0], out[2][1], peak / out[2][1])

    layers = list(range(L))
    acts = capture_mlp_activations(loaded.model, cap.input_ids, cap.attention_mask, layers)
    t_pass = timeit(lambda: capture_mlp_activations(loaded.model, cap.input_ids, cap.attention_mask, layers), repeat)
    t_nmf = timeit(lambda: neuron_factors(acts, layers), repeat)
    _, fac = neuron_factors(acts, layers)
    A = torch.from_numpy(np.maximum(acts, 0).transpose(1, 0, 2).reshape(T, -1).copy())
    W = torch.from_numpy(fac.W)
    Hm = torch.from_numpy(fac.H)

    def nmf_mm() -> None:
        with torch.inference_mode():
            for _ in range(fac.n_iter):
                torch.matmul(A, Hm.t())
                torch.matmul(W.t(), A)

    t_nmm = timeit(nmf_mm, repeat)
    out += [
        ("neurons: hooked pass", t_pass, float("nan")),
        (f"neurons: NMF ({fac.n_iter} iterations, {T} × {A.shape[1]}, k {W.shape[1]})", t_nmf, t_nmm / t_nmf),
        ("neurons: matmul (the NMF's products)", t_nmm, float("nan")),
    ]
    return out


def views_cpu(shape: str, tokens: int, repeat: int) -> None:
    """Process CPU time of the floor and of every view (see the module docstring), printed as one row."""
    import torch

    from bench.run import PAUSE_S, SHAPES, _load, _settings
    from bench.run import text_of_tokens as text_for
    from core.analysis.pipeline import VIEWS, add_views, analyze

    lm = _load(shape, SHAPES[shape][1], "cpu")
    text = text_for(lm.tokenizer, tokens)
    res = analyze(lm, text, settings=_settings(max_tokens=tokens, compute_gradients=False, animations=False))
    enc = lm.tokenizer(text, return_tensors="pt", truncation=True, max_length=tokens)

    def floor() -> None:
        with torch.inference_mode():
            lm.model(**enc, output_attentions=True, output_hidden_states=True)

    floor_s = timeit(floor, repeat)
    labels = {label: name for name, (label, _) in VIEWS.items()} | {"Forward pass for the deeper views": "pass"}
    marks: list[tuple[str, float]] = []

    def progress(label: str, _fraction: float) -> None:
        marks.append((labels.get(label, label), time.process_time()))

    t0 = time.process_time()
    add_views(lm, res, "all", progress=progress)
    total = time.process_time() - t0
    shares = {}
    for (name, t), (_, t_next) in zip(marks, marks[1:]):
        shares[name] = shares.get(name, 0.0) + t_next - t
    shown = ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f} %)" for k, v in shares.items() if v > 0.005)
    wait = max(0.0, total - PAUSE_S)
    print(
        f"{shape} @ {res.n_tokens}: floor {floor_s:.2f} s; views {total:.2f} s = {total / floor_s:.1f}× floor; "
        f"first visit after {PAUSE_S:g} s: {wait:.2f} s = {wait / floor_s:.2f}× floor; {shown}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--views", action="store_true", help="the views' CPU time and shares per shape of python -m bench")
    ap.add_argument("--shapes", nargs="+", default=["gpt2", "bert"], help="with --views: shapes of bench/run.py")
    add_clock_args(ap)
    args = ap.parse_args()
    use_clock_args(args)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {'CPU' if args.cpu else 'wall'} time")
    if args.views:
        for shape in args.shapes:
            views_cpu(shape, args.tokens, args.repeat)
        return
    print(f"{'what':58s} {'s':>8s} {'fraction':>9s}", flush=True)
    for name, s, frac in measure(load_gpt2_small(), args.tokens, args.repeat):
        print(f"{name:58s} {s:8.3f} {'' if frac != frac else f'{frac:9.0%}'}", flush=True)


if __name__ == "__main__":
    main()
