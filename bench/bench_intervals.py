"""Coverage of the corpus intervals by simulation (issue 22): every interval method on synthetic corpora whose
target is known (core.studies.interval_sim).

    python bench/bench_intervals.py [--sizes 10 30 100] [--corpora 500] [--resamples 200] [--truth 2000]
                                    [--metrics intrinsic_dim_95 …] [--methods jackknife_step …]

For each corpus size: the target E[θ̂_n] of every pooled metric from --truth independent corpora, then --corpora
corpora, each with every method's 95 % interval (--resamples rows per resampling scheme). Prints, per size, a
markdown table of coverage (and mean width) per metric and method, the coverage of the chosen method
(core.studies.geometry.INTERVAL_METHOD), and one JSON line with everything. Runs on one core (BLAS single-threaded)
so that it can share the machine; the full table takes about three quarters of an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100])
    ap.add_argument("--corpora", type=int, default=500)
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--truth", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--metrics", nargs="+", default=None, help="score only these pooled metrics (default: all)")
    ap.add_argument("--methods", nargs="+", default=None, help="compare only these methods (default: all)")
    args = ap.parse_args()

    from core.studies import geometry, interval_sim

    pop = interval_sim.Population()
    metrics = tuple(args.metrics or geometry.POOLED_METRICS)
    methods = tuple(args.methods or interval_sim.COMPARED)
    out: dict[str, object] = {"population": pop.__dict__, "corpora": args.corpora, "resamples": args.resamples}
    for n in args.sizes:
        t = time.perf_counter()
        cov = interval_sim.coverage(
            pop,
            n,
            args.corpora,
            n_resamples=args.resamples,
            n_truth=args.truth,
            seed=args.seed + n,
            metrics=metrics,
            methods=methods,
        )
        secs = time.perf_counter() - t
        print(f"\n### {n} texts, {args.corpora} corpora ({secs:.0f} s)\n", flush=True)
        print("| metric | " + " | ".join(methods) + " | chosen |")
        print("|---|" + "---|" * (len(methods) + 1))
        rows = {}
        for m in metrics:
            cells = [f"{cov.rate(k, m):.3f} ({cov.mean_width(k, m):.3g})" for k in methods]
            chosen = geometry.INTERVAL_METHOD[m]
            mark = f"{cov.rate(chosen, m):.3f}" if chosen in methods else "not run"
            print(f"| {m} | " + " | ".join(cells) + f" | {chosen}: {mark} |")
            rows[m] = {k: {"coverage": cov.rate(k, m), "width": cov.mean_width(k, m)} for k in methods}
        print(
            "\nestimate inside its interval: "
            f"{ {k: f'{v}/{cov.n_intervals}' for k, v in cov.contains_estimate.items()} }"
            f"; outside the bounds: {cov.out_of_bounds}",
            flush=True,
        )
        out[str(n)] = {
            "seconds": secs,
            "coverage": rows,
            "contains_estimate": cov.contains_estimate,
            "out_of_bounds": cov.out_of_bounds,
            "n_intervals": cov.n_intervals,
            "target": {f"{m}@{layer}": v for (m, layer), v in cov.target.items()},
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
