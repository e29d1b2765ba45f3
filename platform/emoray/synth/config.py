"""The typed configuration of the synthetic multimodal corpus (``emoray synth``).

:class:`SynthConfig` holds every size, format and difficulty knob. Fields left at their
defaults are *resolved* per output layout when the config is built (EAV: 500 Hz and its 30
channels; DEAP: 128 Hz and its 32 channels; IEMOCAP: 16 kHz audio), so the resolved config
written next to a corpus (``synth_config.yaml``) states exactly what was generated.

The difficulty defaults are chosen so that EEG is the most reliable modality (it always
follows the *felt* emotion), speech and video are fooled on the ``acted_fraction`` of trials,
and the ``label_noise`` caps every modality below 100 %. Measured with simple features and a
ridge classifier, leave-one-subject-out over 6 subjects x 60 trials of 5 s (per-subject
feature z-scoring): EEG log band powers 0.84, video (mean frame) 0.62, speech prosody
features 0.49 (chance 0.20), a weighted late fusion of the three 0.86.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from emoray.errors import ConfigError

Layout = Literal["native", "eav", "deap", "iemocap"]

# Sample rates and trial lengths fixed by the real datasets' layouts.
EAV_SFREQ = 500.0
DEAP_SFREQ = 128.0
IEMOCAP_RATE = 16000


def default_eeg_channels(layout: str = "native") -> list[str]:
    """The EEG channel list a layout uses when ``eeg_channels`` is not given.

    Parameters
    ----------
    layout : str
        ``"deap"`` gives DEAP's 32 channels; every other layout EAV's 30 channels.

    Returns
    -------
    list of str
        10-20 channel names in the dataset's file order.
    """
    if layout == "deap":
        from emoray.datasets.deap import DEAP_EEG_CHANNELS

        return list(DEAP_EEG_CHANNELS)
    from emoray.datasets.eav import EAV_CHANNELS

    return list(EAV_CHANNELS)


class SynthConfig(BaseModel):
    """Everything that decides a synthetic corpus; the same config and seed write the same
    corpus.

    Examples
    --------
    >>> cfg = SynthConfig(subjects=2, trials_per_class=1, seconds=2.0)
    >>> cfg.mode, cfg.layout, len(cfg.eeg_channels)
    ('parallel', 'native', 30)
    """

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0, description="Master seed: every random stream (per subject, "
                      "trial and modality) is derived from it.")
    mode: Literal["parallel", "nonparallel"] = Field(
        "parallel", description="'parallel': every trial has EEG, speech and video (EAV-like). "
        "'nonparallel': an EEG-only corpus and a separate speech-only corpus of different "
        "subjects sharing the valence/arousal label space (DEAP + IEMOCAP-like).")
    layout: Layout = Field(
        "native", description="On-disk layout: 'native' (per-trial files + manifest.csv), "
        "'eav' (parallel only), 'deap' (EEG-only, nonparallel), 'iemocap' (speech-only, "
        "nonparallel); an unset mode follows the layout.")
    subjects: int = Field(4, ge=1, le=999, description="Subjects per corpus (in nonparallel "
                          "mode: EEG subjects and, separately, as many speakers).")
    trials_per_class: int = Field(4, ge=1, le=1000, description="Trials per emotion class and "
                                  "subject (5 EAV classes; IEMOCAP uses 4 classes).")
    seconds: float = Field(10.0, ge=1.0, le=600.0, description="Trial length in seconds (EAV's "
                           "own trials are 20 s; DEAP adds a 3 s baseline; IEMOCAP utterances "
                           "are 2-6 s and ignore this).")
    eeg_sfreq: float = Field(500.0, ge=128.0, le=5000.0, description="EEG sample rate in Hz "
                             "(EAV 500, resolved to 128 for the DEAP layout).")
    eeg_format: Literal["fif", "edf", "vhdr"] = Field(
        "fif", description="EEG file format of the native layout: FIF, EDF or BrainVision.")
    eeg_channels: list[str] | None = Field(
        None, description="10-20 EEG channel names; default: EAV's 30 channels (DEAP's 32 for "
        "the DEAP layout).")
    audio_rate: int = Field(44100, ge=8000, le=192000, description="WAV sample rate in Hz "
                            "(default 44.1 kHz so resampling is exercised; IEMOCAP: 16 kHz).")
    video_fps: float = Field(10.0, gt=0.0, le=60.0, description="Video frame rate.")
    video_size: int = Field(96, ge=32, le=512, description="Square frame side in pixels "
                            "(even, as H.264 needs).")
    video_format: Literal["mp4", "frames"] = Field(
        "mp4", description="Video as H.264 MP4 files or as JPEG frame folders.")
    label_noise: float = Field(0.05, ge=0.0, le=0.8, description="Probability that a trial's "
                               "recorded label differs from the felt emotion (a uniformly "
                               "drawn other class); it bounds every modality's accuracy.")
    acted_fraction: float = Field(0.2, ge=0.0, le=1.0, description="Fraction of trials whose "
                                  "speech AND face display a different emotion than felt; EEG "
                                  "always follows the felt emotion.")
    eeg_snr_db: float = Field(-3.0, ge=-20.0, le=40.0, description="EEG emotion signal vs "
                              "trial-to-trial variation: ratio (dB) of the emotion-driven band "
                              "log-power effects to the random per-trial log-power "
                              "fluctuations.")
    speech_snr_db: float = Field(15.0, ge=-10.0, le=60.0, description="Speech-to-background-"
                                 "noise ratio (dB) of a neutral utterance; the noise floor is "
                                 "fixed, so loud (angry) speech has a higher SNR.")
    video_noise: float = Field(0.06, ge=0.0, le=0.5, description="Camera sensor noise std as a "
                               "fraction of full scale; it also scales the trial-to-trial "
                               "expression variation.")
    hum: bool = Field(True, description="Add 50 Hz mains hum (and a weak 150 Hz harmonic) to "
                      "the EEG.")
    blinks_per_min: float = Field(15.0, ge=0.0, le=60.0, description="Eye-blink rate: large "
                                  "frontal EEG transients, and eye closures in the video.")
    subject_variation: float = Field(1.0, ge=0.0, le=3.0, description="Strength of per-subject "
                                     "offsets (EEG band powers, voice, face geometry); 0 makes "
                                     "subjects identical up to noise.")

    @model_validator(mode="after")
    def _resolve_and_check(self) -> "SynthConfig":
        given = self.model_fields_set
        layout = self.layout
        if "mode" not in given and layout in ("deap", "iemocap"):
            self.mode = "nonparallel"          # the only mode these layouts have
        if layout == "eav" and self.mode != "parallel":
            raise ValueError("layout 'eav' is a parallel EEG+audio+video corpus: set "
                             "mode='parallel'")
        if layout in ("deap", "iemocap") and self.mode != "nonparallel":
            kind = "EEG-only" if layout == "deap" else "speech-only"
            raise ValueError(f"layout {layout!r} is an {kind} corpus: set mode='nonparallel'")
        if self.video_size % 2:
            raise ValueError(f"video_size must be even (H.264 needs even sizes), got "
                             f"{self.video_size}")
        fixed_sfreq = {"eav": EAV_SFREQ, "deap": DEAP_SFREQ}.get(layout)
        if fixed_sfreq is not None:
            if "eeg_sfreq" in given and self.eeg_sfreq != fixed_sfreq:
                raise ValueError(f"layout {layout!r} stores EEG at {fixed_sfreq:g} Hz; got "
                                 f"eeg_sfreq={self.eeg_sfreq:g} (leave it unset)")
            self.eeg_sfreq = fixed_sfreq
        if layout == "iemocap":
            if "audio_rate" in given and self.audio_rate != IEMOCAP_RATE:
                raise ValueError(f"layout 'iemocap' stores 16 kHz WAV; got audio_rate="
                                 f"{self.audio_rate} (leave it unset)")
            self.audio_rate = IEMOCAP_RATE
            if self.subjects % 2:
                raise ValueError(f"layout 'iemocap' has sessions of 2 speakers: subjects must "
                                 f"be even, got {self.subjects}")
        self.eeg_channels = self._resolve_channels(given)
        return self

    def _resolve_channels(self, given: set[str]) -> list[str]:
        if self.eeg_channels is None:
            return default_eeg_channels(self.layout)
        names = [str(n) for n in self.eeg_channels]
        if len(names) < 4:
            raise ValueError(f"eeg_channels needs at least 4 channels, got {names}")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"eeg_channels has duplicate names {dup}")
        if self.layout in ("eav", "deap"):
            expected = default_eeg_channels(self.layout)
            if names != expected:
                raise ValueError(f"layout {self.layout!r} needs its own channel list "
                                 f"{expected} (leave eeg_channels unset)")
        from emoray.io.eeg import standard_montage

        known = set(standard_montage().ch_names)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"eeg_channels {unknown} are not 10-20 montage names "
                             f"(e.g. 'Fp1', 'F3', 'Cz', 'O2')")
        return names


def make_config(**values) -> SynthConfig:
    """Build a :class:`SynthConfig`, turning validation failures into :class:`ConfigError`.

    Parameters
    ----------
    **values
        Field values (unknown names are rejected).

    Returns
    -------
    SynthConfig
        The resolved config.
    """
    from pydantic import ValidationError

    try:
        return SynthConfig(**values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "synth"
            lines.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid synth config: " + "; ".join(lines)) from None
