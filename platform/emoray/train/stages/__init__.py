"""Training stages, one file each; importing this package registers them all.

A new stage is one new file here that calls :func:`register_stage` (plus its settings
class in :mod:`emoray.config.train`), and its line below.
"""

from emoray.train.stages.base import (Stage, get_stage, previous, register_stage,
                                      reported_metrics, stage_names)
from emoray.train.stages import fusion, jmml_classifier, jmml_inter, jmml_intra  # noqa: F401

__all__ = ["Stage", "get_stage", "previous", "register_stage", "reported_metrics",
           "stage_names"]
