"""Online inference, Ray Serve router vs plain FastAPI vs the in-process floor:
``python benchmarks/serve.py [--quick] [--checkpoint PATH] [--replicas N]``.

Same as ``emoray bench serve``; the implementation is emoray.bench.serve.
"""

from emoray.bench import runner_parser
from emoray.bench.serve import run_benchmark

if __name__ == "__main__":
    parser = runner_parser(__doc__)
    parser.add_argument("--checkpoint", help="serve this checkpoint instead of training a "
                        "tiny model")
    parser.add_argument("--replicas", type=int, default=2, help="replicas of every Serve "
                        "deployment (default 2)")
    args = parser.parse_args()
    run_benchmark(quick=args.quick, out_dir=args.out, checkpoint=args.checkpoint,
                  replicas=args.replicas)
