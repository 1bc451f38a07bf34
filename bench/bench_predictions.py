"""Cost of the predictions and logit-lens steps next to the forward pass: GPT-2-small shape, 128 tokens.

    python bench/bench_predictions.py [--tokens 128] [--repeat 3]

The logit lens decodes every layer at every position: (L+1)·T rows through the unembedding (768 × 50257), i.e. (L+1)
times the work of the model's own LM head. The table shows the complete grid, the grid as the analysis step computes
it on a CPU (a window of positions, see core.steps.logit_lens.grid_max_positions), and the read-out at the decoded
position alone (top-k, final-prediction probability and entropy), to separate the heatmap grid from the per-layer
read-out.
Numbers go into the issue notes, never into tests.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import load_gpt2_small, text_of_tokens, timeit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from core.figures.predictions import logit_lens_heatmap_png, logit_lens_layers_png
    from core.model.capture import capture
    from core.run.settings import AnalysisSettings
    from core.steps.logit_lens import compute_logit_lens, grid_max_positions
    from core.steps.predictions import compute_predictions

    loaded = load_gpt2_small()
    text = text_of_tokens(loaded, args.tokens)
    st = AnalysisSettings(max_tokens=args.tokens, compute_gradients=False)
    ids = loaded.tokenizer(text, return_tensors="pt", truncation=True, max_length=args.tokens)["input_ids"]

    def bare():
        with torch.inference_mode():
            loaded.model(input_ids=ids)

    cap = capture(loaded, text, st)
    T = cap.input_ids.shape[1]
    pos = T - 1
    window = grid_max_positions(loaded, cap.hidden_states.shape[0], T, cap.hidden_states.shape[2])
    fns = {
        "bare forward pass (eager, no outputs)": bare,
        "capturing forward pass (hidden states, attentions)": lambda: capture(loaded, text, st),
        "predictions step (top-k from captured logits)": lambda: compute_predictions(
            loaded, cap.input_ids[0].tolist(), cap.logits, 10
        ),
        "logit lens, full grid (L+1)xT + read-out": lambda: compute_logit_lens(
            loaded, cap.hidden_states, pos, 10, final_logits=cap.logits
        ),
        f"logit lens as the analysis step (CPU budget: {window} columns)": lambda: compute_logit_lens(
            loaded, cap.hidden_states, pos, 10, final_logits=cap.logits, grid_max_positions=window
        ),
        "logit lens, decoded position only (L+1 rows)": lambda: compute_logit_lens(
            loaded, cap.hidden_states[:, pos : pos + 1], 0, 10, final_logits=cap.logits[pos : pos + 1]
        ),
    }
    # interleaved repeats, so that a busy machine slows every row alike
    samples: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(args.repeat):
        for name, fn in fns.items():
            c0 = time.process_time()
            samples[name].append(timeit(fn, repeat=1, warmup=0))
            cpu[name].append(time.process_time() - c0)
    rows = [(name, statistics.median(v)) for name, v in samples.items()]
    cpu_rows = {name: statistics.median(v) for name, v in cpu.items()}
    lens = compute_logit_lens(loaded, cap.hidden_states, pos, 10, final_logits=cap.logits)
    rows.append(
        (
            "heatmap PNG (rendered outside analyze)",
            timeit(lambda: logit_lens_heatmap_png(lens, cap.display_tokens), repeat=args.repeat),
        )
    )
    rows.append(("per-layer curves PNG", timeit(lambda: logit_lens_layers_png(lens), repeat=args.repeat)))

    base = rows[0][1]
    cap_t = rows[1][1]
    cap_cpu = cpu_rows[rows[1][0]]
    print(
        f"GPT-2-small shape (random weights), {T} tokens, {torch.get_num_threads()} threads; "
        f"last-layer |lens - logits| = {lens.last_layer_max_abs_diff:.2g}"
    )
    print(f"{'':55s} {'wall':>9s}     {'÷ bare':>6s}   {'÷ capture':>9s}   {'CPU s ÷ capture CPU s':>21s}")
    for name, v in rows:
        c = cpu_rows.get(name)
        extra = f"{c / cap_cpu:10.2f}" if c is not None else ""
        print(f"{name:55s} {v * 1000:9.1f} ms  {v / base:6.2f}×  {v / cap_t:8.2f}×   {extra}")


if __name__ == "__main__":
    main()
