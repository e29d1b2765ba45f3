"""Ray Data ingest+preprocess vs a sequential loop: ``python benchmarks/ingest.py [--quick]``.

Same as ``emoray bench ingest``; the implementation is emoray.bench.ingest.
"""

import argparse

from emoray.bench.ingest import run_benchmark

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run for smoke checks")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    run_benchmark(quick=args.quick, out_dir=args.out)
