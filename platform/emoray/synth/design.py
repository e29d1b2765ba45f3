"""The latent ground truth of a synthetic corpus, deterministic by seed.

:func:`build_design` draws the subjects (EEG, voice and face traits) and the trials (felt
emotion, intensity, displayed emotion, recorded label, valence/arousal, task) of every
corpus a config asks for, and returns them as a :class:`GroundTruth`.

Randomness comes from independent :func:`stream` generators keyed by
``(seed, corpus, subject, trial, purpose)``: adding a modality, a trial or a channel does
not reshuffle the draws of the others (only the per-subject order of classes depends on the
number of trials).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from emoray.labels import EAV_CLASSES, EAV_VA
from emoray.synth.config import SynthConfig
from emoray.synth.eeg import channel_geometry
from emoray.synth.rng import stream

BANDS: tuple[str, ...] = ("theta", "alpha", "beta", "gamma")
#: IEMOCAP's usual 4-class set, written with EAV's class names (no calmness).
IEMOCAP_CLASSES: tuple[str, ...] = ("neutral", "happiness", "sadness", "anger")
IEMOCAP_CODES: dict[str, str] = {"neutral": "neu", "happiness": "hap", "sadness": "sad",
                                 "anger": "ang"}
#: Dominance on the common [-1, 1] scale (for DEAP/IEMOCAP ratings only).
DOMINANCE: dict[str, float] = {"neutral": 0.0, "sadness": -0.5, "anger": 0.6,
                               "happiness": 0.4, "calmness": 0.1}
# Utterances per speaker that IEMOCAP's 4-class protocol excludes ('fru', 'xxx').
_EXCLUDED_FRACTION = 0.1
_VA_JITTER = 0.05
_SKIN_LIGHT = np.array([0.96, 0.80, 0.69])
_SKIN_DARK = np.array([0.42, 0.28, 0.20])


@dataclass(frozen=True, eq=False)
class Subject:
    """One subject's (or speaker's) traits."""

    corpus: str                   # "parallel", "eeg" or "speech"
    subject: int                  # 1-based id within the corpus
    sex: str                      # "female" (odd ids) or "male" (even ids)
    # EEG
    eeg_offsets: np.ndarray       # (C, 4) natural-log band-power offsets (theta..gamma)
    eeg_gain: float               # overall amplitude factor
    aperiodic_exponent: float     # 1/f^x exponent of the background power spectrum
    alpha_peak: float             # individual alpha frequency, Hz
    # voice
    f0_base: float                # Hz, neutral speaking pitch
    formant_scale: float          # >1: shorter vocal tract, higher formants
    speaking_rate: float          # syllables per second at neutral
    loudness_db: float            # habitual level re. the reference
    # face
    face_width: float             # head half-width, fraction of the half frame
    face_ratio: float             # head height / width
    eye_spacing: float            # eye offset from the midline, fraction of face width
    skin_tone: tuple[float, float, float]
    hair_tone: tuple[float, float, float]
    background: tuple[float, float, float]


@dataclass
class TrialTruth:
    """The latent and recorded facts of one trial (a row of ``ground_truth.csv``)."""

    corpus: str
    subject: int
    session: int
    trial: int                    # 1-based within the subject
    felt: str                     # what the subject felt; EEG follows it
    displayed: str                # what speech and face show (= felt unless acted)
    label: str                    # the recorded label ("" for excluded utterances)
    acted: bool
    label_flipped: bool           # label noise changed the recorded label
    intensity: float              # 0.6-1: scales every emotion effect
    valence: float                # felt, common [-1, 1] scale
    arousal: float
    label_valence: float          # the recorded label's position (what a rating says)
    label_arousal: float
    task: str                     # speaking, listening, watching
    seconds: float
    code: str = ""                # IEMOCAP emotion code (neu/hap/exc/sad/ang/fru/xxx)
    excluded: bool = False        # outside the label space (IEMOCAP 'fru'/'xxx')
    # Filled in by the layout writer: the ids the layout's adapter gives this trial
    # (``record_id`` = ``TrialSpec.trial_id`` with the adapter's default dataset name).
    subject_id: str = ""
    session_id: str = ""
    trial_id: str = ""
    record_id: str = ""
    files: dict[str, str] = field(default_factory=dict)   # modality -> path re. output root
    file_index: int = -1          # index inside a multi-trial file (.mat, .dat), else -1

    def row(self) -> dict:
        """A flat dict for ``ground_truth.csv``."""
        out = {k: v for k, v in asdict(self).items() if k != "files"}
        for modality in ("eeg", "audio", "video"):
            out[modality] = self.files.get(modality, "")
        return out


@dataclass
class GroundTruth:
    """Subjects and trials of every corpus in one synthetic dataset."""

    seed: int
    ch_names: list[str]
    subjects: list[Subject]
    trials: list[TrialTruth]

    def subject(self, corpus: str, subject: int) -> Subject:
        """The traits of ``subject`` in ``corpus``."""
        for s in self.subjects:
            if s.corpus == corpus and s.subject == subject:
                return s
        raise KeyError(f"no subject {subject} in corpus {corpus!r}")

    def corpora(self) -> list[str]:
        """The corpus names present, in order."""
        return list(dict.fromkeys(s.corpus for s in self.subjects))

    def trials_of(self, corpus: str, subject: int | None = None) -> list[TrialTruth]:
        """The trials of one corpus (and subject), in order."""
        return [t for t in self.trials
                if t.corpus == corpus and (subject is None or t.subject == subject)]

    def to_frame(self):
        """All trials as a :class:`pandas.DataFrame` (one row per trial)."""
        import pandas as pd

        return pd.DataFrame([t.row() for t in self.trials])


def corpus_plan(cfg: SynthConfig) -> list[tuple[str, tuple[str, ...]]]:
    """The corpora a config writes, each with its class set.

    Returns
    -------
    list of (str, tuple of str)
        ``[("parallel", classes)]`` in parallel mode; ``("eeg", ...)`` and/or
        ``("speech", ...)`` in nonparallel mode (IEMOCAP's speech corpus has 4 classes).
    """
    if cfg.mode == "parallel":
        return [("parallel", EAV_CLASSES)]
    if cfg.layout == "deap":
        return [("eeg", EAV_CLASSES)]
    if cfg.layout == "iemocap":
        return [("speech", IEMOCAP_CLASSES)]
    return [("eeg", EAV_CLASSES), ("speech", EAV_CLASSES)]


def build_design(cfg: SynthConfig) -> GroundTruth:
    """Draw every subject and trial of the corpora ``cfg`` describes.

    Parameters
    ----------
    cfg : SynthConfig
        The resolved config.

    Returns
    -------
    GroundTruth
        Subjects (traits) and trials (ids, emotions, labels, task) in writing order.
    """
    subjects: list[Subject] = []
    trials: list[TrialTruth] = []
    for corpus, classes in corpus_plan(cfg):
        for sid in range(1, cfg.subjects + 1):
            subjects.append(draw_subject(cfg, corpus, sid))
            trials.extend(_draw_trials(cfg, corpus, sid, classes))
    return GroundTruth(cfg.seed, list(cfg.eeg_channels), subjects, trials)


def draw_subject(cfg: SynthConfig, corpus: str, sid: int) -> Subject:
    """Draw one subject's traits (each modality from its own stream).

    Parameters
    ----------
    cfg : SynthConfig
        Supplies the seed, channels and ``subject_variation``.
    corpus : str
        The corpus name (part of the stream key).
    sid : int
        1-based subject id; odd ids are female, even ids male.

    Returns
    -------
    Subject
    """
    sv = cfg.subject_variation
    female = sid % 2 == 1
    g = stream(cfg.seed, corpus, sid, "traits", "eeg")
    geo = channel_geometry(tuple(cfg.eeg_channels))
    smooth = geo.mix @ g.standard_normal((len(cfg.eeg_channels), len(BANDS)))  # (C, 4)
    smooth /= smooth.std() + 1e-12
    per_band = g.standard_normal(len(BANDS))[None, :]                            # (1, 4)
    offsets = sv * (0.5 * smooth + 0.35 * per_band)                              # (C, 4)
    eeg_gain = float(np.exp(0.2 * sv * g.standard_normal()))
    exponent = float(np.clip(1.8 + 0.15 * sv * g.standard_normal(), 1.2, 2.4))
    alpha_peak = float(np.clip(10.0 + 0.8 * sv * g.standard_normal(), 8.0, 12.5))

    g = stream(cfg.seed, corpus, sid, "traits", "speech")
    f0_mean, f0_lo, f0_hi = (205.0, 160.0, 255.0) if female else (118.0, 85.0, 155.0)
    f0 = float(np.clip(f0_mean * np.exp(0.09 * sv * g.standard_normal()), f0_lo, f0_hi))
    formant = float((1.16 if female else 1.0) * np.exp(0.04 * sv * g.standard_normal()))
    rate = float(4.5 * np.exp(0.1 * sv * g.standard_normal()))
    loud = float(2.0 * sv * g.standard_normal())

    g = stream(cfg.seed, corpus, sid, "traits", "video")
    spread = min(sv, 1.5)
    width = float(np.clip(0.62 + 0.04 * sv * g.standard_normal(), 0.48, 0.74))
    ratio = float(np.clip(1.28 + 0.06 * sv * g.standard_normal(), 1.1, 1.45))
    eyes = float(np.clip(0.38 + 0.03 * sv * g.standard_normal(), 0.3, 0.46))
    t = float(np.clip(0.5 + spread * (g.random() - 0.5), 0.0, 1.0))
    skin = (1 - t) * _SKIN_LIGHT + t * _SKIN_DARK + 0.02 * spread * g.standard_normal(3)
    hair = np.array([0.10, 0.07, 0.05]) + spread * g.random() * np.array([0.45, 0.33, 0.15])
    back = 0.55 + 0.15 * spread * (g.random(3) - 0.5)
    return Subject(corpus=corpus, subject=sid, sex="female" if female else "male",
                   eeg_offsets=offsets, eeg_gain=eeg_gain, aperiodic_exponent=exponent,
                   alpha_peak=alpha_peak, f0_base=f0, formant_scale=formant,
                   speaking_rate=rate, loudness_db=loud, face_width=width, face_ratio=ratio,
                   eye_spacing=eyes, skin_tone=_rgb(skin), hair_tone=_rgb(hair),
                   background=_rgb(back))


def _rgb(values) -> tuple[float, float, float]:
    v = np.clip(np.asarray(values, dtype=float), 0.0, 1.0)
    return (float(v[0]), float(v[1]), float(v[2]))


def _class_order(rng: np.random.Generator, classes: tuple[str, ...], per_class: int) -> list:
    """Balanced class sequence whose even and odd positions are each near-balanced.

    Tasks alternate by position (EAV: listening, speaking, ...), so splitting every class
    evenly between the two position parities keeps task and class nearly independent.
    """
    ordered = [c for c in classes for _ in range(per_class)]
    pools = [ordered[0::2], ordered[1::2]]
    for pool in pools:
        rng.shuffle(pool)
    out = []
    for i in range(len(ordered)):
        out.append(pools[i % 2][i // 2])
    return out


def _task(cfg: SynthConfig, corpus: str, position: int) -> str:
    if corpus == "eeg":
        return "watching"
    if cfg.layout == "eav":
        return "listening" if position % 2 == 0 else "speaking"
    return "speaking"


def _jittered(value: float, noise: float) -> float:
    """``value + noise`` clipped to [-1, 1] without changing the binary (sign) label."""
    out = float(np.clip(value + noise, -1.0, 1.0))
    if (out > 0) != (value > 0):
        out = 0.02 if value > 0 else -0.02
    return out


def _other(rng_value: float, choices: tuple[str, ...], current: str) -> str:
    others = [c for c in choices if c != current]
    return others[min(int(rng_value * len(others)), len(others) - 1)]


def _draw_trials(cfg: SynthConfig, corpus: str, sid: int,
                 classes: tuple[str, ...]) -> list[TrialTruth]:
    order = _class_order(stream(cfg.seed, corpus, sid, "order"), classes, cfg.trials_per_class)
    n_excluded = 0
    if cfg.layout == "iemocap":
        n_excluded = max(1, int(round(_EXCLUDED_FRACTION * len(order))))
    session = (sid + 1) // 2 if cfg.layout == "iemocap" else 1
    out = []
    for i in range(len(order) + n_excluded):
        g = stream(cfg.seed, corpus, sid, i + 1, "design")
        # Always draw the same values in the same order, whatever the branches decide.
        intensity = float(g.uniform(0.6, 1.0))
        jit = g.normal(0.0, _VA_JITTER, size=4)
        u_label, c_label, u_act, c_act, u_code = g.random(5)
        # Excluded utterances alternate 'fru' (a mild anger display) and 'xxx' (annotators
        # disagree: any class), starting differently for the two speakers of a session.
        frustrated = (i - len(order) + sid) % 2 == 0
        felt = order[i] if i < len(order) else ("anger" if frustrated else
                                                 classes[int(c_act * len(classes)) % 4])
        flipped = bool(u_label < cfg.label_noise)
        label = _other(c_label, classes, felt) if flipped else felt
        acted = bool(u_act < cfg.acted_fraction) and corpus != "eeg"
        displayed = _other(c_act, classes, felt) if acted else felt
        valence = _jittered(EAV_VA[felt][0], jit[0])
        arousal = _jittered(EAV_VA[felt][1], jit[1])
        code, excluded = "", False
        if cfg.layout == "iemocap":
            if i < len(order):
                code = IEMOCAP_CODES[label]
                if label == "happiness" and u_code < 0.5:
                    code = "exc"
            else:
                code, excluded, label, flipped = ("fru" if frustrated else "xxx"), True, "", False
                intensity *= 0.6
        lab_v, lab_a = ((valence, arousal) if not label or label == felt else
                        (_jittered(EAV_VA[label][0], jit[2]),
                         _jittered(EAV_VA[label][1], jit[3])))
        seconds = (float(np.round(2.0 + 4.0 * g.random(), 2)) if cfg.layout == "iemocap"
                   else float(cfg.seconds))
        out.append(TrialTruth(
            corpus=corpus, subject=sid, session=session, trial=i + 1, felt=felt,
            displayed=displayed, label=label, acted=acted, label_flipped=flipped,
            intensity=intensity, valence=valence, arousal=arousal, label_valence=lab_v,
            label_arousal=lab_a, task=_task(cfg, corpus, i), seconds=seconds, code=code,
            excluded=excluded))
    return out
