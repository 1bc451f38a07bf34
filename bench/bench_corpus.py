"""Corpus mode cost: the batched forward passes alone vs the whole corpus analysis (200 bootstrap resamples).

    python bench/bench_corpus.py [--texts 200] [--tokens 64] [--bootstrap 200] [--batch-size 8]

GPT-2-small shape (random weights from GPT2Config(), no download), texts of exactly --tokens tokens. The goal of
issue 11: the whole analysis ≤ 2× the forward passes. Prints one JSON line with the timings and the ratios, in wall
time and in process CPU time (all threads): on a shared, overloaded machine the CPU-time ratio is the steadier one.
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

    from core.model.tokens import encode_texts
    from core.studies.corpus import CorpusSettings, analyze_corpus, fast_attention, forward_batches

    loaded = load_gpt2_small()
    texts = make_texts(loaded, args.texts, args.tokens)
    st = CorpusSettings(max_tokens=args.tokens, batch_size=args.batch_size, bootstrap=args.bootstrap)
    enc = encode_texts(loaded, texts, args.tokens)

    def forward_only() -> tuple[float, float]:
        t, c = time.perf_counter(), time.process_time()
        with loaded.lock, fast_attention(loaded):
            for _ in forward_batches(loaded, enc, args.batch_size):
                pass
        return time.perf_counter() - t, time.process_time() - c

    # the whole analysis first, then the forward passes alone: each line is printed as soon as it is measured
    wholes, cpus, results = [], [], []
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        results.append(analyze_corpus(loaded, texts, st))
        wholes.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
        print(
            f"whole analysis: {wholes[-1]:.1f} s wall, {cpus[-1]:.1f} s CPU; in-run timings "
            f"{ {k: round(v, 1) for k, v in results[-1].timings.items()} }",
            file=sys.stderr,
            flush=True,
        )
    whole, whole_cpu = min(wholes), min(cpus)
    fwds = [forward_only() for _ in range(args.repeat)]
    fwd, fwd_cpu = min(f[0] for f in fwds), min(f[1] for f in fwds)
    print(f"forward passes alone: {fwd:.1f} s wall, {fwd_cpu:.1f} s CPU", file=sys.stderr, flush=True)
    r = results[int(np.argmin(wholes))]
    print(
        json.dumps(
            {
                "model": "GPT-2-small shape, random weights",
                "texts": args.texts,
                "tokens": args.tokens,
                "bootstrap": args.bootstrap,
                "batch_size": args.batch_size,
                "pooled_points": int(r.n_points.max()),
                "torch_threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "load_avg": os.getloadavg(),
                "forward_only_s": round(fwd, 2),
                "whole_analysis_s": round(whole, 2),
                "ratio_wall": round(whole / fwd, 2),
                "forward_only_cpu_s": round(fwd_cpu, 2),
                "whole_analysis_cpu_s": round(whole_cpu, 2),
                "ratio_cpu": round(whole_cpu / fwd_cpu, 2),
                "breakdown_s": {k: round(v, 2) for k, v in r.timings.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
