"""Dataset adapters: EAV, DEAP, SEED, DREAMER, IEMOCAP and a generic manifest CSV."""

from emoray.datasets.base import (DatasetAdapter, DatasetInfo, Rejection, adapter_names,
                                  get_adapter, register_adapter)

__all__ = ["DatasetAdapter", "DatasetInfo", "Rejection", "adapter_names", "get_adapter",
           "register_adapter"]
