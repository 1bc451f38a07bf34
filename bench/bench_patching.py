"""Benchmark of activation patching and head ablation: GPT-2-small shape (random weights, GPT2Config() defaults:
12 layers × 12 heads, 768 wide, 50257 vocabulary), 32 tokens, this machine.

    python bench/bench_patching.py [--tokens 32] [--repeat 3] [--threads 1]

The issue's bound: the residual grid for all layers (every position of every block, plus the all-positions row)
costs ≤ 2 × L × (one forward pass of batch T). Times are medians of process CPU time with --threads 1 (robust when
other jobs share the machine: CPU time then equals the work done), or of wall time with --wall.
"""

from __future__ import annotations

import argparse

from common import load_gpt2_small, set_clock, text_of_tokens, timeit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--full", action="store_true", help="also time a whole run_patching (3 components)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wall", action="store_true", help="wall time instead of process CPU time")
    args = ap.parse_args()
    set_clock(cpu=not args.wall)

    import torch

    from core.steps.ablation import head_ablation
    from core.studies.patching import (
        PatchingSettings,
        capture_sites,
        patch_sites,
        patched_metrics,
        run_patching,
        target_logits,
    )

    torch.set_num_threads(args.threads)
    loaded = load_gpt2_small()
    tok = loaded.tokenizer
    ids = tok(text_of_tokens(loaded, args.tokens), return_tensors="pt")["input_ids"][:, : args.tokens]
    clean_text = tok.decode(ids[0])
    corrupt_ids = ids.clone()
    corrupt_ids[0, args.tokens // 2] = (int(ids[0, args.tokens // 2]) + 1) % len(tok)
    corrupt_text = tok.decode(corrupt_ids[0])
    T, L, H = args.tokens, loaded.n_layers, loaded.n_heads
    enc_c, enc_k = tok(clean_text, return_tensors="pt"), tok(corrupt_text, return_tensors="pt")
    assert enc_c["input_ids"].shape[1] == enc_k["input_ids"].shape[1] == T, "texts must re-tokenise to T tokens"
    answer, wrong = tok.convert_ids_to_tokens([10, 11])
    settings = PatchingSettings(answer=answer, wrong_answer=wrong)
    mask = enc_c["attention_mask"]
    pos = T - 1

    one = timeit(lambda: target_logits(loaded, enc_c["input_ids"], mask, pos), args.repeat)
    batch_t = timeit(lambda: target_logits(loaded, enc_k["input_ids"].expand(T, -1), mask, pos), args.repeat)

    sites = patch_sites(loaded.model, L)
    acts, _ = capture_sites(loaded, sites, enc_c["input_ids"], mask, pos)
    rows = torch.cat([torch.eye(T, dtype=torch.bool), torch.ones(1, T, dtype=torch.bool)])
    a_id, b_id = tok.convert_tokens_to_ids([answer, wrong])

    def residual_grid() -> None:
        for layer in range(L):
            patched_metrics(
                loaded,
                sites,
                "residual",
                layer,
                acts["residual"][layer],
                enc_k["input_ids"],
                mask,
                pos,
                rows,
                a_id,
                b_id,
            )

    grid = timeit(residual_grid, args.repeat, 0)
    full = timeit(lambda: run_patching(loaded, clean_text, corrupt_text, settings), 1, 0) if args.full else None
    y = int(target_logits(loaded, enc_c["input_ids"], mask, pos)[0].argmax())
    abl = timeit(lambda: head_ablation(loaded, enc_c["input_ids"], mask, pos, y), args.repeat, 0)
    batch_2h = timeit(lambda: target_logits(loaded, enc_c["input_ids"].expand(2 * H, -1), mask, pos), args.repeat)

    unit = "wall s" if args.wall else "CPU s"
    print(
        f"GPT-2-small shape (random weights), {T} tokens, {L} layers × {H} heads, torch threads {args.threads}, "
        f"median {unit}"
    )
    print(f"  one forward, batch 1                        {one:8.3f}")
    print(f"  one forward, batch T = {T:<3}                  {batch_t:8.3f}")
    print(
        f"  residual grid, all layers ({L} × batch {T + 1})   {grid:8.3f}   = {grid / (L * batch_t):.2f} × L × "
        f"forward(batch T)   (bound: ≤ 2)"
    )
    if full is not None:
        print(f"  full patching run (3 components + 2 runs)   {full:8.3f}   = {full / one:.0f} × forward(batch 1)")
    print(
        f"  head ablation, all heads ({L} × batch {2 * H})    {abl:8.3f}   = {abl / one:.0f} × forward(batch 1), "
        f"{abl / (L * batch_2h):.2f} × L × forward(batch 2H)"
    )
    print(f"    (one forward of batch 2H = {batch_2h:.3f})")


if __name__ == "__main__":
    main()
