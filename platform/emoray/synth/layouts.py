"""Layout writers of the synthetic corpus: native (manifest CSV), EAV, DEAP and IEMOCAP.

Each writer simulates the trials of a :class:`~emoray.synth.design.GroundTruth` one by one,
writes them through the real-format writers of :mod:`emoray.io` and the dataset twins of
:mod:`emoray.datasets`, records on every trial its files and the ids the layout's adapter
will give it (``subject_id``, ``session_id``, ``trial_id``, ``record_id``), and returns the
layout's roots/manifests relative to the output folder.

Labels written are the *recorded* ones (``TrialTruth.label``, with label noise); ratings
(DEAP 1-9, IEMOCAP V/A/D 1-5) come from the recorded label's valence/arousal plus rating
noise, and the ground truth is updated to the rating actually written.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from emoray.labels import EAV_CLASSES, EAV_VA, to_common_scale
from emoray.synth.config import SynthConfig
from emoray.synth.trial import simulate_trial
from emoray.synth.design import DOMINANCE, GroundTruth, TrialTruth, stream
from emoray.types import EEG, Audio, Video

_SUBJECT_PREFIX = {"parallel": "sub", "eeg": "eeg", "speech": "spk"}
DEAP_BASELINE_SECONDS = 3.0


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _set_ids(trial: TrialTruth, dataset: str, subject: str, session: str, name: str) -> None:
    trial.subject_id, trial.session_id, trial.trial_id = subject, session, name
    trial.record_id = f"{dataset}/{subject}/{session}/{name}"


# ---------------------------------------------------------------------------- native
def write_native(cfg: SynthConfig, gt: GroundTruth, root: Path, bar) -> dict[str, str]:
    """Per-trial files plus a manifest CSV per corpus.

    parallel: ``root/manifest.csv`` and ``root/sub-NN/sub-NN_trial-KKK_{eeg.<fmt>,
    audio.wav, video.mp4 | video/}``; nonparallel: the same under ``root/eeg/`` (EEG only)
    and ``root/speech/`` (speech only, other speakers), one manifest each.
    """
    from emoray.datasets.manifest import write_manifest
    from emoray.io.audio import write_audio
    from emoray.io.eeg import write_eeg
    from emoray.io.video import write_frames, write_mp4

    paths = {}
    for corpus in gt.corpora():
        base = root if corpus == "parallel" else root / corpus
        rows = []
        for trial in gt.trials_of(corpus):
            sid = f"{_SUBJECT_PREFIX[corpus]}-{trial.subject:02d}"
            stem = base / sid / f"{sid}_trial-{trial.trial:03d}"
            signals = simulate_trial(cfg, gt, trial)
            row = {"subject": sid, "session": str(trial.session), "trial": trial.trial,
                   "label": trial.label, "valence": round(trial.label_valence, 4),
                   "arousal": round(trial.label_arousal, 4), "eeg": "", "audio": "",
                   "video": "", "task": trial.task}
            if "eeg" in signals:
                path = Path(f"{stem}_eeg.{cfg.eeg_format}")
                write_eeg(path, EEG(signals["eeg"], cfg.eeg_sfreq, list(cfg.eeg_channels)))
                row["eeg"] = str(path.resolve())
            if "audio" in signals:
                path = Path(f"{stem}_audio.wav")
                write_audio(path, Audio(signals["audio"], cfg.audio_rate))
                row["audio"] = str(path.resolve())
            if "video" in signals:
                if cfg.video_format == "mp4":
                    path = Path(f"{stem}_video.mp4")
                    write_mp4(path, signals["video"], cfg.video_fps)
                else:
                    path = Path(f"{stem}_video")
                    write_frames(path, signals["video"], cfg.video_fps)
                row["video"] = str(path.resolve())
            for modality in ("eeg", "audio", "video"):
                if row[modality]:
                    trial.files[modality] = _rel(Path(row[modality]), root)
            _set_ids(trial, "manifest", sid, str(trial.session), str(trial.trial))
            rows.append(row)
            bar.update(1)
        write_manifest(base / "manifest.csv", rows)
        paths["manifest" if corpus == "parallel" else f"{corpus}_manifest"] = \
            _rel(base / "manifest.csv", root)
    return paths


# ---------------------------------------------------------------------------- EAV
def write_eav(cfg: SynthConfig, gt: GroundTruth, root: Path, bar) -> dict[str, str]:
    """EAV's layout: per subject one EEG ``.mat`` (uV; ``seg`` for odd subjects, ``seg1``
    for even ones), a one-hot label ``.mat``, audio for speaking trials, video for all."""
    from emoray.datasets.eav import write_subject

    for sid in sorted({t.subject for t in gt.trials}):
        trials = gt.trials_of("parallel", sid)
        eeg, audio, video = [], {}, {}
        for i, trial in enumerate(trials):
            signals = simulate_trial(cfg, gt, trial)
            eeg.append(signals["eeg"] / 1e-6)                                 # (C, T) uV
            if "audio" in signals:
                audio[i] = Audio(signals["audio"], cfg.audio_rate)
            video[i] = Video(signals["video"], cfg.video_fps)
            bar.update(1)
        write_subject(root, sid, np.stack(eeg),                               # (n, C, T)
                      [EAV_CLASSES.index(t.label) for t in trials], [t.task for t in trials],
                      audio, video, var_name="seg" if sid % 2 else "seg1")
        folder = root / f"subject{sid:02d}"
        media = {}
        for modality, sub in (("audio", "Audio"), ("video", "Video")):
            for path in (folder / sub).iterdir():
                media[(modality, int(path.name.split("_")[0]) - 1)] = path
        for i, trial in enumerate(trials):
            trial.files["eeg"] = _rel(folder / "EEG" / f"{folder.name}_eeg.mat", root)
            trial.file_index = i
            for modality in ("audio", "video"):
                if (modality, i) in media:
                    trial.files[modality] = _rel(media[(modality, i)], root)
            _set_ids(trial, "eav", f"{sid:02d}", "1", f"{i + 1:03d}")
            # EAV records only the class: its valence/arousal is the class position.
            trial.label_valence, trial.label_arousal = EAV_VA[trial.label]
    return {"root": "."}


# ---------------------------------------------------------------------------- DEAP
def write_deap(cfg: SynthConfig, gt: GroundTruth, root: Path, bar) -> dict[str, str]:
    """DEAP's preprocessed-Python layout: ``data_preprocessed_python/sNN.dat`` with 32 EEG
    channels (uV) + 8 peripheral channels, a 3 s resting baseline before each trial, and
    ratings (valence, arousal, dominance, liking) on 1-9."""
    from emoray.datasets.deap import DEAP_FOLDER, write_subject
    from emoray.synth.eeg import simulate_peripheral

    total = DEAP_BASELINE_SECONDS + cfg.seconds
    for sid in sorted({t.subject for t in gt.trials}):
        trials = gt.trials_of("eeg", sid)
        eeg, periph, ratings = [], [], []
        for trial in trials:
            signals = simulate_trial(cfg, gt, trial, baseline_seconds=DEAP_BASELINE_SECONDS)
            eeg.append(signals["eeg"] / 1e-6)                                 # (32, T) uV
            g = stream(cfg.seed, trial.corpus, trial.subject, trial.trial, "peripheral")
            periph.append(simulate_peripheral(arousal=trial.arousal, seconds=total,
                                              sfreq=cfg.eeg_sfreq, rng=g,
                                              blink_times=signals["blink_times"]))
            ratings.append(_deap_ratings(trial, g))
            bar.update(1)
        write_subject(root, sid, np.stack(eeg), np.stack(periph), np.array(ratings))
        path = root / DEAP_FOLDER / f"s{sid:02d}.dat"
        for k, trial in enumerate(trials):
            trial.files["eeg"] = _rel(path, root)
            trial.file_index = k
            _set_ids(trial, "deap", f"s{sid:02d}", "1", f"{k + 1:02d}")
    return {"root": "."}


def _deap_ratings(trial: TrialTruth, g: np.random.Generator) -> list[float]:
    """Self-ratings on 1-9 from the recorded label's position plus rating noise."""
    noise = g.normal(0.0, [0.5, 0.5, 0.8, 1.0])
    label = trial.label or trial.felt
    raw = [5 + 4 * trial.label_valence, 5 + 4 * trial.label_arousal,
           5 + 4 * DOMINANCE[label], 5 + 3 * trial.label_valence]
    values = [float(np.round(np.clip(r + e, 1.0, 9.0), 2)) for r, e in zip(raw, noise)]
    trial.label_valence = to_common_scale(values[0], 1, 9)
    trial.label_arousal = to_common_scale(values[1], 1, 9)
    return values


# ---------------------------------------------------------------------------- IEMOCAP
def write_iemocap(cfg: SynthConfig, gt: GroundTruth, root: Path, bar) -> dict[str, str]:
    """IEMOCAP's layout: sessions of two speakers (odd id female, even id male), dialogs of
    up to 12 alternating utterances, 16 kHz WAVs and EmoEvaluation files with codes
    (hap/exc for happiness; 'fru'/'xxx' utterances outside the 4-class set) and V/A/D."""
    from emoray.datasets.iemocap import IEMOCAP_FOLDER, write_session

    sessions = sorted({t.session for t in gt.trials})
    for session in sessions:
        trials = [t for t in gt.trials_of("speech") if t.session == session]
        by_speaker = [[t for t in trials if t.subject == s]
                      for s in sorted({t.subject for t in trials})]
        order = [t for pair in _zip_longest(*by_speaker) for t in pair if t is not None]
        g = stream(cfg.seed, "speech", "session", session)
        utterances = []
        for d0 in range(0, len(order), 12):
            d = d0 // 12
            dialog = f"Ses{session:02d}{'F' if d % 2 == 0 else 'M'}_impro{d + 1:02d}"
            clock, counts = 0.0, {"F": 0, "M": 0}
            for trial in order[d0:d0 + 12]:
                letter = "F" if trial.subject % 2 else "M"
                name = f"{dialog}_{letter}{counts[letter]:03d}"
                counts[letter] += 1
                signals = simulate_trial(cfg, gt, trial)
                start = clock + float(g.uniform(0.3, 1.5))
                clock = start + trial.seconds
                utterances.append(dict(dialog=dialog, name=name, start=round(start, 4),
                                       end=round(clock, 4), code=trial.code,
                                       vad=_iemocap_vad(trial, g),
                                       audio=Audio(signals["audio"], cfg.audio_rate)))
                wav = (root / IEMOCAP_FOLDER / f"Session{session}" / "sentences" / "wav"
                       / dialog / f"{name}.wav")
                trial.files["audio"] = _rel(wav, root)
                _set_ids(trial, "iemocap", f"Ses{session:02d}{letter}", f"Session{session}",
                         name)
                bar.update(1)
        write_session(root, session, utterances)
    return {"root": "."}


def _iemocap_vad(trial: TrialTruth, g: np.random.Generator) -> tuple[float, float, float]:
    """Annotator-averaged V/A/D on 1-5 (steps of 0.5) from the recorded position."""
    label = trial.label or trial.displayed
    raw = np.array([3 + 2 * trial.label_valence, 3 + 2 * trial.label_arousal,
                    3 + 2 * DOMINANCE[label]]) + g.normal(0.0, 0.25, 3)
    v, a, d = (float(x) for x in np.clip(np.round(raw * 2) / 2, 1.0, 5.0))
    trial.label_valence = to_common_scale(v, 1, 5)
    trial.label_arousal = to_common_scale(a, 1, 5)
    return v, a, d


def _zip_longest(*lists):
    n = max((len(x) for x in lists), default=0)
    return [tuple(x[i] if i < len(x) else None for x in lists) for i in range(n)]
