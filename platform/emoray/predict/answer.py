"""The answer of a prediction: per input, per modality, and the expressed-vs-felt
incongruence (what :class:`~emoray.predict.Predictor` and the HTTP API return)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from emoray.labels import EAV_VA

#: Default JS-divergence (bits) above which differing expressed/EEG labels are flagged.
INCONGRUENCE_THRESHOLD = 0.2
#: The modalities that show what a person *expresses* (an actor controls them), in order;
#: EEG reads what is felt. Speech is required for an incongruence verdict.
EXPRESSIVE = ("speech", "video")


@dataclass
class ModalityPrediction:
    """The prediction from one modality alone."""

    label: str
    probabilities: dict[str, float]


@dataclass
class Incongruence:
    """What is expressed against what EEG reads, for one input with speech and EEG.

    ``expressed_by`` are the expressive modalities given (speech, and the face when video
    is given); ``expressed`` is the label of their averaged class distribution, ``speech``
    the label of speech alone. ``score`` is the Jensen-Shannon divergence in bits of the
    expressed distribution and EEG's; ``flag`` when ``expressed != eeg`` and
    ``score >= threshold`` (:mod:`emoray.predict.heads`). Voice and face are what an actor
    controls together, so averaging them estimates the displayed emotion better than speech
    alone: on the accuracy benchmark's acted trials the ROC AUC rose from 0.69 (speech vs
    EEG) to 0.75-0.77 (``docs/benchmarks.md``).
    """

    flag: bool
    score: float
    threshold: float
    speech: str
    eeg: str
    expressed: str = ""
    expressed_by: list[str] = field(default_factory=list)


@dataclass
class Prediction:
    """The prediction for one input (averaged over its segments).

    ``modalities`` took part; ``ignored`` were given but the model has no encoder for them.
    ``attention_mass`` (fusion) covers every modality of the model (0 for unused ones).
    ``valence``/``arousal`` are the expected circumplex position ``sum_c p_c * VA_c``
    when the labels are EAV classes (JMML: ``2 P(high) - 1``), else None.
    ``incongruence`` compares speech with EEG when both are present; ``path`` is the JMML
    inference path (``combined``, ``speech_only``, ``eeg_only``).
    """

    stage: str
    label: str
    probabilities: dict[str, float]
    modalities: list[str]
    per_modality: dict[str, ModalityPrediction] = field(default_factory=dict)
    attention_mass: dict[str, float] | None = None
    valence: float | None = None
    arousal: float | None = None
    n_segments: int = 1
    ignored: list[str] = field(default_factory=list)
    incongruence: Incongruence | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (plain floats, strings and lists)."""
        return asdict(self)


def valence_arousal(names: list[str], probs: np.ndarray) -> tuple[float | None, float | None]:
    """The expected (valence, arousal) ``sum_c p_c VA_c`` for EAV classes, else (None, None)."""
    if not names or not all(n in EAV_VA for n in names):
        return None, None
    va = np.array([EAV_VA[n] for n in names])                            # (K, 2)
    v, a = probs @ va
    return float(v), float(a)


def named(names: list[str], probs: np.ndarray) -> tuple[str, dict[str, float]]:
    """The arg-max label and ``{class: probability}``."""
    return names[int(np.argmax(probs))], {n: float(p) for n, p in zip(names, probs)}


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits of two distributions over the same classes."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0, None)
    q = np.clip(np.asarray(q, dtype=np.float64), 0, None)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return float(min(1.0, max(0.0, 0.5 * kl(p) + 0.5 * kl(q))))


def incongruence(names: list[str], speech: np.ndarray, eeg: np.ndarray,
                 threshold: float = INCONGRUENCE_THRESHOLD,
                 face: np.ndarray | None = None) -> Incongruence:
    """Compare what one input expresses (speech, averaged with the ``face``'s video-only
    distribution when given) with its EEG-only class distribution."""
    shown = [np.asarray(speech, dtype=np.float64)]
    if face is not None:
        shown.append(np.asarray(face, dtype=np.float64))
    expressed = np.mean(shown, 0)
    score = js_divergence(expressed, eeg)
    x_label, e_label = names[int(np.argmax(expressed))], names[int(np.argmax(eeg))]
    return Incongruence(flag=bool(x_label != e_label and score >= threshold),
                        score=score, threshold=threshold, speech=names[int(np.argmax(speech))],
                        eeg=e_label, expressed=x_label,
                        expressed_by=list(EXPRESSIVE[:len(shown)]))
