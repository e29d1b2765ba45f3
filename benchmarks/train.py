"""Fusion training on Ray Train (Ray Data ingest) vs a plain PyTorch loop:
``python benchmarks/train.py [--quick] [--features FOLDER]``.

Same as ``emoray bench train``; the implementation is emoray.bench.train.
"""

import argparse

from emoray.bench.train import run_benchmark

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run for smoke checks")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--features", help="reuse this preprocess output folder instead of "
                        "generating one")
    parser.add_argument("--epochs", type=int, help="epochs per run (first = warm-up)")
    args = parser.parse_args()
    run_benchmark(quick=args.quick, out_dir=args.out, features=args.features,
                  epochs=args.epochs)
