"""Label spaces: emotion classes and the shared valence/arousal scale.

All datasets map their ratings onto one **common scale**: valence and arousal in
``[-1, 1]`` with 0 as the midpoint of the dataset's own rating scale (DEAP 1-9 -> midpoint
5, DREAMER and IEMOCAP 1-5 -> midpoint 3). The binary labels are ``high = value > 0``, the
usual DEAP split at 5. Records whose dataset has no class labels (DEAP, DREAMER) carry only
valence/arousal; records of datasets without an arousal rating (SEED) carry NaN there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EAV_CLASSES: tuple[str, ...] = ("neutral", "sadness", "anger", "happiness", "calmness")

# Circumplex positions (valence, arousal) on the common [-1, 1] scale. Neutral sits slightly
# positive in valence and below the arousal midpoint, so every class has a definite binary
# label: valence-high = {neutral, happiness, calmness}, arousal-high = {anger, happiness}.
EAV_VA: dict[str, tuple[float, float]] = {
    "neutral": (0.15, -0.2),
    "sadness": (-0.7, -0.5),
    "anger": (-0.7, 0.8),
    "happiness": (0.8, 0.6),
    "calmness": (0.6, -0.7),
}


@dataclass(frozen=True)
class LabelSpace:
    """A dataset's label space: optional class names plus the valence/arousal scale."""

    name: str
    classes: tuple[str, ...] | None

    def index(self, label: str | int, *, path: str | None = None) -> int:
        """Class index of ``label`` (a name, case-insensitive, or an index)."""
        from emoray.errors import DataError

        if self.classes is None:
            raise DataError(path, f"label space {self.name!r} has no classes", kind="label",
                            field="label")
        if isinstance(label, (int,)) and not isinstance(label, bool):
            if 0 <= label < len(self.classes):
                return int(label)
        else:
            text = str(label).strip().lower()
            if text.lstrip("-").isdigit() and 0 <= int(text) < len(self.classes):
                return int(text)
            for i, name in enumerate(self.classes):
                if name.lower() == text:
                    return i
        raise DataError(path, f"label {label!r} is outside the label space {list(self.classes)}",
                        kind="label", field="label")


EAV_SPACE = LabelSpace("eav5", EAV_CLASSES)


def to_common_scale(value: float, low: float, high: float) -> float:
    """Map a rating on ``[low, high]`` to ``[-1, 1]`` (midpoint -> 0)."""
    mid = (low + high) / 2.0
    return float((value - mid) / ((high - low) / 2.0))


def binary(value: float | None) -> int | None:
    """High (1) / low (0) for a common-scale value; None for missing/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value > 0)
