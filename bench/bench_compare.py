"""Benchmark of the comparison's numerical core: layer × layer linear CKA (centred and debiased) on hidden-state
stacks of real model shapes, random values (CKA's cost depends on the shapes only).

    python bench/bench_compare.py            # prints a table of median times

Shapes: GPT-2 small / BERT base (13 states × 768), TinyLlama (23 × 2048), at 128 and 512 tokens, and 4096 tokens
(the CLI's bound), where CKA uses MAX_CKA_TOKENS evenly spaced tokens. Numbers go into the issue note.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import timeit

from core.studies.compare import MAX_CKA_TOKENS, cka_matrix

SHAPES = [("GPT-2 small × GPT-2 small", 13, 13, 768, 768), ("GPT-2 small × TinyLlama", 13, 23, 768, 2048)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tokens", type=int, nargs="*", default=[128, 512, 4096])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'pair':<28}{'tokens':>8}{'centred s':>12}{'debiased s':>12}  (CKA over ≤ {MAX_CKA_TOKENS} tokens)")
    for name, la, lb, da, db in SHAPES:
        for T in args.tokens:
            Ha = rng.standard_normal((la, T, da), dtype=np.float32)
            Hb = rng.standard_normal((lb, T, db), dtype=np.float32)
            t_c = timeit(lambda a=Ha, b=Hb: cka_matrix(a, b), repeat=args.repeat)
            t_d = timeit(lambda a=Ha, b=Hb: cka_matrix(a, b, debiased=True), repeat=args.repeat)
            print(f"{name:<28}{T:>8}{t_c:>12.3f}{t_d:>12.3f}")


if __name__ == "__main__":
    main()
