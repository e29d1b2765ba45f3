"""Dataset adapters: EAV, DEAP, SEED, DREAMER, IEMOCAP, a generic manifest CSV and BIDS.

Each adapter is one file that registers itself (:func:`register_adapter`) and carries a
fake-data writer of its dataset's real on-disk layout; importing this package imports them
all. A new adapter is one new file plus its name in the import line below.
"""

from emoray.datasets.base import (DatasetAdapter, DatasetInfo, Rejection, adapter_class,
                                  adapter_names, get_adapter, register_adapter)
from emoray.datasets import bids, deap, dreamer, eav, iemocap, manifest, seed  # noqa: E402,F401

__all__ = ["DatasetAdapter", "DatasetInfo", "Rejection", "adapter_class", "adapter_names",
           "get_adapter",
           "register_adapter"]
