"""Fusion training on Ray Train (Ray Data ingest) vs a plain PyTorch loop:
``python benchmarks/train.py [--quick] [--features FOLDER]``.

Same as ``emoray bench train``; the implementation is emoray.bench.train.
"""

from emoray.bench import runner_parser
from emoray.bench.train import run_benchmark

if __name__ == "__main__":
    parser = runner_parser(__doc__)
    parser.add_argument("--epochs", type=int, help="epochs per run (first = warm-up)")
    args = parser.parse_args()
    run_benchmark(quick=args.quick, out_dir=args.out, features=args.features,
                  epochs=args.epochs)
