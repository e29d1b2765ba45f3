"""Ray Job entrypoint for tune: ``python jobs/tune.py ARGS`` with the arguments of ``emoray tune``.

Thin by design: ``--config configs/tune/cca.yaml FEATURES``, ``--resume NAME`` or
``report NAME``. Inside a Ray Job, Ray is already initialised for the driver's cluster
(``init_ray`` joins it through ``RAY_ADDRESS``); put ``tune.storage`` on storage every node
reaches (``--storage s3://...`` or a shared folder).
"""

import sys

from emoray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
