"""Ray Job entrypoint for preprocessing: ``python jobs/preprocess.py INPUT --out OUT``."""

import sys

from emoray.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
