"""Ray Job entrypoint for ingest: ``python jobs/ingest.py SOURCE --out OUT [--config ...]``.

Thin by design: the same arguments as ``emoray ingest``. Inside a Ray Job, Ray is already
initialised for the driver's cluster, so no address is needed.
"""

import sys

from emoray.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
