"""Benchmark of the attention analyses and attribution: GPT-2-small shape (random weights, GPT2Config()
defaults: 12 layers × 12 heads, 768 wide), 128 tokens, this machine.

    python bench/bench_attention.py [--tokens 128] [--repeat 3] [--ig-steps 32]

`measure()` returns (name, seconds) rows. Times are medians of wall time,
or with --cpu of process CPU time (more robust when other jobs share the machine; use it with --threads 1, where
CPU time equals the work done); ratios are to the bare forward pass (input ids in, logits out, no attentions or
hidden states returned).
"""

from __future__ import annotations

import argparse

from common import add_clock_args, forward_rows, load_gpt2_small, text_of_tokens, timeit, use_clock_args


def measure(loaded=None, tokens: int = 128, repeat: int = 3, ig_steps: int = 32) -> list[tuple[str, float]]:

    from core import analyze
    from core.figures.animations import attention_layers_gif, token_trajectories_gif
    from core.figures.attention import (
        entropy_heatmap,
        head_clusters_plot,
        mean_attention_heatmap,
        single_head_plot,
        token_attribution_plot,
    )
    from core.model.capture import capture
    from core.steps.attention import analyse_attention
    from core.steps.attribution import attention_rollout, gradient_x_input, integrated_gradients

    loaded = loaded or load_gpt2_small()
    text = text_of_tokens(loaded, tokens)
    res = analyze(loaded, text, max_tokens=tokens, ig_steps=4)  # the figures need the sections; IG is timed below
    cap = capture(loaded, text, res.settings)
    ids, mask = cap.input_ids, cap.attention_mask
    pos = res.target_position
    pred = int(cap.logits[pos].argmax())
    att, special = res.attentions, res.special_mask

    rows = forward_rows(loaded, text, res.settings, ids, repeat)
    t_att = timeit(lambda: analyse_attention(att, special, True, None), repeat=repeat)
    t_roll = timeit(lambda: attention_rollout(att), repeat=repeat)
    rows += [
        ("  entropy + features + clustering (k by silhouette) + PCA", t_att),
        ("  attention rollout", t_roll),
        ("non-gradient attention analyses, total", t_att + t_roll),
    ]
    with loaded.lock:
        t_gxi = timeit(lambda: gradient_x_input(loaded, ids, mask, pos, pred, heads=False), repeat=repeat)
        t_gxh = timeit(lambda: gradient_x_input(loaded, ids, mask, pos, pred, heads=True), repeat=repeat)
        t_ig = timeit(
            lambda: integrated_gradients(loaded, ids, mask, pos, pred, steps=ig_steps),
            repeat=max(1, repeat - 2),
            warmup=0,
        )
    rows += [
        ("gradient × input (1 forward + 1 backward)", t_gxi),
        ("gradient × input + head attribution (same pass)", t_gxh),
        ("  head attribution, extra cost", max(t_gxh - t_gxi, 0.0)),
        (f"integrated gradients ({ig_steps} steps)", t_ig),
    ]
    figs = [
        ("entropy heatmap", lambda: entropy_heatmap(res)),
        ("head-cluster scatter", lambda: head_clusters_plot(res)),
        ("token attribution shading", lambda: token_attribution_plot(res)),
        ("mean attention heatmap (last layer)", lambda: mean_attention_heatmap(res)),
        ("single-head view", lambda: single_head_plot(res, 5, 1)),
        ("attention layers GIF (12 frames)", lambda: attention_layers_gif(res)),
        ("token trajectories GIF (13 frames)", lambda: token_trajectories_gif(res)),
    ]
    total = 0.0
    for name, fn in figs:
        t = timeit(fn, repeat=1)
        total += t
        rows.append((f"  figure: {name}", t))
    rows.append(("figures + GIFs, total", total))
    rows.append(
        (
            "(in analyze) step timings: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in res.timings.items()),
            float("nan"),
        )
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ig-steps", type=int, default=32)
    add_clock_args(ap)
    args = ap.parse_args()
    use_clock_args(args)
    import torch

    rows = measure(tokens=args.tokens, repeat=args.repeat, ig_steps=args.ig_steps)
    bare = rows[0][1]
    clock = "process CPU time" if args.cpu else "wall time"
    print(f"GPT-2-small shape (random weights), {args.tokens} tokens, {torch.get_num_threads()} threads, {clock}")
    for name, v in rows:
        if v != v:  # NaN: a text row
            print(name)
            continue
        print(f"{name:60s} {v * 1000:9.1f} ms  {v / bare:7.2f}× fwd")


if __name__ == "__main__":
    main()
