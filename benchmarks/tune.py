"""Search campaigns, Optuna TPE + ASHA vs random search (FIFO), same trial budget:
``python benchmarks/tune.py [--quick] [--features FOLDER] [--seeds N] [--trials N]
[--epochs N]``.

Same as ``emoray bench tune``; the implementation is emoray.bench.tune.
"""

from emoray.bench import runner_parser
from emoray.bench.tune import run_benchmark

if __name__ == "__main__":
    parser = runner_parser(__doc__)
    parser.add_argument("--seeds", type=int, help="campaign pairs (default 1 quick, 3 full)")
    parser.add_argument("--trials", type=int, help="trials per campaign (default 4 / 8)")
    parser.add_argument("--epochs", type=int, help="epochs of the tuned inter stage (3 / 6)")
    args = parser.parse_args()
    run_benchmark(quick=args.quick, out_dir=args.out, features=args.features,
                  seeds=args.seeds, trials=args.trials, epochs=args.epochs)
