"""Cost of the neuron factors and the query–key view: GPT-2-small shape (random weights, GPT2Config() defaults:
12 layers × 12 heads, 768 wide, 3072 neurons per MLP), 128 tokens, this machine.

    python bench/bench_neurons.py [--tokens 128] [--repeat 3] [--threads 1] [--cpu]

Ratios are to the bare forward pass (input ids in, logits out). Rows:
- the hooked pass that captures the MLP activations of all 12 layers (it stops before the final norm and the
  unembedding), the NMF (k = 6 over 128 × 36 864), and the two steps as analyze() runs them;
- the query–key vectors of all layers recomputed from the captured block inputs (no forward pass), one view;
- the figures (factor shading, top neurons, one query–key view).
Random weights are the worst case for the NMF (no structure: it runs more iterations than on a trained model);
the last rows time the NMF on the bundled MiniLM's real activations for comparison.

Measured 2026-11-27 (2 shared cores, load average 15–18, --threads 1 --cpu, median of 5): bare forward 500 ms;
hooked pass 312 ms (0.62×); NMF 374 ms (0.75×, 30 iterations); neuron-factor step 685 ms (1.37×); query–key
vectors 71 ms (0.14×, 9.0 MiB stored); one query–key view < 0.1 ms; figures: factor shading 576 ms, top neurons
327 ms, query–key view 260 ms (bundle / PDF only; the page shades tokens as HTML). MiniLM: NMF 82 ms = 1.8× its
46 ms forward.
"""

from __future__ import annotations

import argparse
import math

from common import add_clock_args, forward_rows, load_gpt2_small, text_of_tokens, timeit, use_clock_args


def measure(loaded=None, tokens: int = 128, repeat: int = 3) -> list[tuple[str, float]]:
    import torch

    from core.figures import plotting
    from core.figures.neurons import factor_figure, top_neuron_figure
    from core.figures.qk import qk_figure
    from core.infra.errors import ModelUnavailableError
    from core.model.capture import capture
    from core.model.loading import BUNDLED_ID, load_model
    from core.run.settings import AnalysisSettings
    from core.steps.neurons import capture_mlp_activations, neuron_factors
    from core.steps.qk import compute_qk, qk_view

    loaded = loaded or load_gpt2_small()
    text = text_of_tokens(loaded, tokens)
    st = AnalysisSettings(max_tokens=tokens)
    cap = capture(loaded, text, st)
    ids, mask = cap.input_ids, cap.attention_mask
    L = loaded.n_layers

    rows = forward_rows(loaded, text, st, ids, repeat)
    layers = list(range(L))
    t_cap = timeit(lambda: capture_mlp_activations(loaded.model, ids, mask, layers), repeat=repeat)
    acts = capture_mlp_activations(loaded.model, ids, mask, layers)
    t_nmf = timeit(lambda: neuron_factors(acts, layers), repeat=repeat)
    sec, _fac = neuron_factors(acts, layers)
    rows += [
        (f"neuron activations: hooked pass, layers 0–{L - 1} ({acts.shape[1]} × {L * acts.shape[2]})", t_cap),
        (f"NMF k=6 ({sec.n_iter} iterations, relative error {sec.relative_error:.3f})", t_nmf),
        ("neuron factors, total (step)", t_cap + t_nmf),
    ]
    t_qk = timeit(lambda: compute_qk(loaded.model, cap.hidden_states), repeat=repeat)
    _q, _k, qs = compute_qk(loaded.model, cap.hidden_states)
    t_view = timeit(lambda: qk_view(qs, L - 1, 0, ids.shape[1] - 1), repeat=repeat)
    mb = (qs.queries.nbytes + qs.keys.nbytes) / 2**20
    rows += [
        (f"query–key vectors, all layers, from hidden states ({mb:.1f} MiB stored)", t_qk),
        ("  one query–key view from the stored arrays (a widget change)", t_view),
    ]
    toks = cap.display_tokens
    figs = [
        ("factor shading (6 factors)", lambda: plotting.png(factor_figure(sec, toks))),
        ("top neurons", lambda: plotting.png(top_neuron_figure(sec))),
        ("query–key view", lambda: plotting.png(qk_figure(qk_view(qs, L - 1, 0, len(toks) - 1), toks))),
    ]
    for name, fn in figs:
        rows.append((f"  figure: {name}", timeit(fn, repeat=1)))
    try:
        mini = load_model(BUNDLED_ID, dtype="float32", device="cpu")
        mcap = capture(mini, text, st)
        macts = capture_mlp_activations(mini.model, mcap.input_ids, mcap.attention_mask, range(mini.n_layers))
        msec, _ = neuron_factors(macts, list(range(mini.n_layers)))
        t_m = timeit(lambda: neuron_factors(macts, list(range(mini.n_layers))), repeat=repeat)

        def mini_fwd():
            with torch.inference_mode():
                mini.model(input_ids=mcap.input_ids)

        t_mf = timeit(mini_fwd, repeat=repeat)
        rows += [
            (f"MiniLM (real weights): bare forward ({mcap.input_ids.shape[1]} tokens)", float("nan")),
            (
                (
                    f"  forward {t_mf * 1000:.0f} ms; NMF {t_m * 1000:.0f} ms over {macts.shape[1]} × "
                    f"{macts.shape[0] * macts.shape[2]} ({msec.n_iter} iterations, relative error "
                    f"{msec.relative_error:.3f}) = {t_m / t_mf:.2f}× its forward"
                ),
                float("nan"),
            ),
        ]
    except (ImportError, OSError, ModelUnavailableError) as exc:  # the bundled model is optional here
        rows.append((f"(MiniLM comparison skipped: {exc})", float("nan")))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    add_clock_args(ap)
    args = ap.parse_args()
    use_clock_args(args)
    import torch

    rows = measure(tokens=args.tokens, repeat=args.repeat)
    bare = rows[0][1]
    clock = "process CPU time" if args.cpu else "wall time"
    print(f"GPT-2-small shape (random weights), {args.tokens} tokens, {torch.get_num_threads()} threads, {clock}")
    for name, v in rows:
        if math.isnan(v):
            print(name)
            continue
        print(f"{name:72s} {v * 1000:9.1f} ms  {v / bare:7.2f}× fwd")


if __name__ == "__main__":
    main()
