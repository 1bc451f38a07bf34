"""Cost of the peer views (issue 16): the decomposition pass, direct logit attribution with the promoted /
suppressed tables, and the information-flow routes, against the forward pass of the capture. GPT-2-small shape
(random weights, 12 layers × 12 heads, 768 wide, 50 257 vocabulary), 128 tokens, this machine.

    python bench/bench_peers.py [--tokens 128] [--repeat 3] [--cpu] [--threads N]

Times are medians of wall time, or with --cpu of process CPU time (more robust when other jobs share the machine;
use it with --threads 1). Ratios are to the capture's forward pass (hidden states and attentions returned).
"""

from __future__ import annotations

import argparse

from common import add_clock_args, load_gpt2_small, text_of_tokens, timeit, use_clock_args


def measure(loaded=None, tokens: int = 128, repeat: int = 3) -> list[tuple[str, float]]:
    from core.model.capture import capture
    from core.run.settings import AnalysisSettings
    from core.steps.dla import compute_dla, decomposition_pass
    from core.steps.flow import compute_flow

    loaded = loaded or load_gpt2_small()
    text = text_of_tokens(loaded, tokens)
    settings = AnalysisSettings(max_tokens=tokens)
    cap = capture(loaded, text, settings)
    T = cap.input_ids.shape[1]
    y = int(cap.logits[T - 1].argmax())
    rows = [
        ("capture forward pass (hidden states + attentions)", timeit(lambda: capture(loaded, text, settings), repeat))
    ]
    rows.append(
        (
            "decomposition pass (hooked forward)",
            timeit(lambda: decomposition_pass(loaded, cap.input_ids, cap.attention_mask), repeat),
        )
    )
    dec = decomposition_pass(loaded, cap.input_ids, cap.attention_mask)
    rows.append(
        ("DLA + promoted/suppressed tables", timeit(lambda: compute_dla(dec, T - 1, y, loaded.tokenizer), repeat))
    )
    rows.append(
        ("flow contributions (all layers, all tokens)", timeit(lambda: compute_flow(dec, cap.tokens, T - 1), repeat))
    )
    flow = compute_flow(dec, cap.tokens, T - 1)
    rows.append(
        (
            "flow pruning for one token (threshold 0.04; a widget change)",
            timeit(lambda: flow.routes(T - 1, 0.04), repeat),
        )
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    add_clock_args(ap)
    args = ap.parse_args()
    use_clock_args(args)

    rows = measure(tokens=args.tokens, repeat=args.repeat)
    base = rows[0][1]
    print(f"{'step':62s} {'seconds':>8s} {'× forward':>10s}")
    for name, s in rows:
        print(f"{name:62s} {s:8.3f} {s / base:10.2f}")


if __name__ == "__main__":
    main()
