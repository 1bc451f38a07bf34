"""Corpus mode cost: the batched forward passes alone vs the whole corpus analysis (200 bootstrap resamples).

    python bench/bench_corpus.py [--texts 200] [--tokens 64] [--bootstrap 200] [--batch-size 8]

GPT-2-small shape (random weights from GPT2Config(), no download), texts of exactly --tokens tokens. The goal of
issue 11: the whole analysis ≤ 2× the forward passes. Prints one JSON line with the timings and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from common import load_gpt2_small

from tiny_models import CORPUS


def make_texts(loaded, n: int, tokens: int, seed: int = 0) -> list[str]:
    """n different texts of random words from the tiny corpus, each at least `tokens` tokens long."""
    words = sorted({w for line in CORPUS for w in line.split()})
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        text = ""
        while len(loaded.tokenizer(text)["input_ids"]) < tokens:
            text += " ".join(rng.choice(words, size=16)) + " "
        out.append(text.strip())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    import torch

    from core.corpus import CorpusSettings, analyze_corpus, encode_texts, fast_attention, forward_batches

    loaded = load_gpt2_small()
    texts = make_texts(loaded, args.texts, args.tokens)
    st = CorpusSettings(max_tokens=args.tokens, batch_size=args.batch_size, bootstrap=args.bootstrap)
    enc = encode_texts(loaded, texts, args.tokens)

    def forward_only() -> float:
        t = time.perf_counter()
        with loaded.lock, fast_attention(loaded):
            for _ in forward_batches(loaded, enc, args.batch_size):
                pass
        return time.perf_counter() - t

    fwd = min(forward_only() for _ in range(args.repeat))
    print(f"forward passes alone: {fwd:.1f} s", file=sys.stderr, flush=True)
    wholes, results = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        results.append(analyze_corpus(loaded, texts, st))
        wholes.append(time.perf_counter() - t)
        print(f"whole analysis: {wholes[-1]:.1f} s", file=sys.stderr, flush=True)
    whole = min(wholes)
    r = results[int(np.argmin(wholes))]
    print(json.dumps({
        "model": "GPT-2-small shape, random weights", "texts": args.texts, "tokens": args.tokens,
        "bootstrap": args.bootstrap, "batch_size": args.batch_size, "pooled_points": int(r.n_points.max()),
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
        "forward_only_s": round(fwd, 2), "whole_analysis_s": round(whole, 2), "ratio": round(whole / fwd, 2),
        "breakdown_s": {k: round(v, 2) for k, v in r.timings.items()},
    }))


if __name__ == "__main__":
    main()
