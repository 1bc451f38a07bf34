"""End-to-end benchmark: GPT-2-small shape at 128 tokens on this machine.

    python bench/bench.py            # prints a table of median times

Reports the bare forward pass, the capturing forward pass, every analysis step (from result.timings), the full
analysis with and without gradients, and the bundle (ZIP) time. Numbers go into the issue notes, never into tests.
"""

from __future__ import annotations

import argparse
import time

from common import load_gpt2_small, text_of_tokens, timeit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import torch

    from core import analyze
    from core.bundle import bundle_files, zip_bytes

    torch.set_num_threads(max(1, torch.get_num_threads()))
    loaded = load_gpt2_small()
    text = text_of_tokens(loaded, args.tokens)
    ids = loaded.tokenizer(text, return_tensors="pt", truncation=True, max_length=args.tokens)["input_ids"]

    def bare():
        with torch.inference_mode():
            loaded.model(input_ids=ids)

    t_bare = timeit(bare, repeat=args.repeat)
    rows = [("bare forward pass (eager, no outputs)", t_bare)]

    res_fast = None

    def fast():
        nonlocal res_fast
        res_fast = analyze(loaded, text, max_tokens=args.tokens, compute_gradients=False)

    t_fast = timeit(fast, repeat=args.repeat)
    for k, v in res_fast.timings.items():
        rows.append((f"  step: {k}", v))
    rows.append(("analyze(), no gradients", t_fast))

    res_full = None

    def full():
        nonlocal res_full
        res_full = analyze(loaded, text, max_tokens=args.tokens)

    t_full = timeit(full, repeat=max(1, args.repeat - 1))
    for k, v in res_full.timings.items():
        rows.append((f"  step (with gradients): {k}", v))
    rows.append(("analyze(), with gradients", t_full))

    t = time.perf_counter()
    files = bundle_files(res_full, options={})
    data = zip_bytes(files)
    t_bundle = time.perf_counter() - t
    rows.append((f"bundle ({len(files)} files, {len(data) / 1e6:.1f} MB zip)", t_bundle))

    print(f"GPT-2-small shape, {res_full.n_tokens} tokens, {torch.get_num_threads()} threads")
    for name, v in rows:
        ratio = f"{v / t_bare:6.2f}× fwd" if not name.startswith("bundle") else ""
        print(f"{name:55s} {v * 1000:9.1f} ms  {ratio}")


if __name__ == "__main__":
    main()
