"""Ray Job entrypoint for evaluate: ``python jobs/evaluate.py ARGS`` with the arguments of ``emoray evaluate``.

Thin by design. Inside a Ray Job, Ray is already initialised for the driver's cluster, so
no address is needed (``init_ray`` connects to it).
"""

import sys

from emoray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
