"""IEMOCAP (Busso et al. 2008), speech: adapter and fake-data twin.

On-disk layout (five sessions, two speakers each)::

    IEMOCAP_full_release/SessionN/sentences/wav/<dialog>/<utterance>.wav      # 16 kHz
    IEMOCAP_full_release/SessionN/dialog/EmoEvaluation/<dialog>.txt

An EmoEvaluation file opens with ``% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]``;
each utterance then has one line ``[6.2901 - 8.2357]\\t<utterance>\\t<code>\\t[V, A, D]``
followed by the individual annotators' lines (``C-E1:``, ``A-E1:`` ...) and a blank line.
V/A/D are on 1-5. The speaker of an utterance is the letter that starts its last ``_``
field (``Ses01F_impro01_M003`` is spoken by the male actor of session 1, whatever the
dialog's own letter says). Only audio is read here.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from emoray.datasets.base import DatasetAdapter, DatasetInfo, Rejection, register_adapter
from emoray.errors import ConfigError, DataError
from emoray.labels import to_common_scale
from emoray.types import Audio, Trial, TrialSpec

IEMOCAP_CODES: dict[str, str] = {
    "neu": "neutral", "hap": "happiness", "exc": "excitement", "sad": "sadness",
    "ang": "anger", "fru": "frustration", "sur": "surprise", "fea": "fear",
    "dis": "disgust", "oth": "other", "xxx": "no agreement",
}
IEMOCAP_CLASSES: tuple[str, ...] = ("neutral", "happiness", "sadness", "anger")
#: The usual 4-class set: excitement merged into happiness.
IEMOCAP_4CLASS: dict[str, int] = {"neu": 0, "hap": 1, "exc": 1, "sad": 2, "ang": 3}
#: Every code with a class of its own ("all" mode); xxx/oth carry no usable emotion.
IEMOCAP_ALL_CODES: tuple[str, ...] = ("neu", "hap", "exc", "sad", "ang", "fru", "sur",
                                      "fea", "dis")
IEMOCAP_RATE = 16000
IEMOCAP_FOLDER = "IEMOCAP_full_release"

_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
_LINE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+"
                   r"\[\s*([^,\]]+),\s*([^,\]]+),\s*([^,\]]+)\]")
_SESSION = re.compile(r"^Session(\d+)$")
_WORDS = {"neu": "Neutral", "hap": "Happiness", "exc": "Excited", "sad": "Sadness",
          "ang": "Anger", "fru": "Frustration", "sur": "Surprise", "fea": "Fear",
          "dis": "Disgust", "oth": "Other", "xxx": "Neutral"}


@register_adapter
class IEMOCAPAdapter(DatasetAdapter):
    """Read IEMOCAP utterances (audio) with their categorical and V/A/D labels.

    Parameters
    ----------
    root : str
        The folder holding ``IEMOCAP_full_release/`` (or that folder itself).
    classes : str
        ``"4"``: neutral, happiness (hap + exc), sadness, anger; other codes are rejected.
        ``"all"``: every code except ``xxx`` (no agreement) and ``oth`` is its own class.
    """

    name = "iemocap"

    @classmethod
    def write_example(cls, root: Path) -> tuple[str, dict]:
        rng = np.random.default_rng(0)
        utterances = [{"dialog": "Ses01F_impro01", "name": f"Ses01F_impro01_F{k:03d}",
                       "audio": Audio(rng.uniform(-0.3, 0.3, 1600).astype(np.float32), 16000),
                       "code": code, "vad": (2.0 + k, 3.0, 3.0), "start": 2.0 * k,
                       "end": 2.0 * k + 1.5} for k, code in enumerate(("neu", "hap", "sad"))]
        write_session(root, 1, utterances)
        return str(root), {}

    def __init__(self, root: str, *, classes: str = "4"):
        super().__init__(root, classes=classes)
        if str(classes) not in ("4", "all"):
            raise ConfigError(f"iemocap option classes={classes!r}; expected '4' or 'all'")
        self.classes = str(classes)

    def _label_names(self) -> list[str]:
        if self.classes == "4":
            return list(IEMOCAP_CLASSES)
        return [IEMOCAP_CODES[c] for c in IEMOCAP_ALL_CODES]

    def _label(self, code: str, path: str, utterance: str) -> int:
        table = IEMOCAP_4CLASS if self.classes == "4" else {
            c: k for k, c in enumerate(IEMOCAP_ALL_CODES)}
        if code not in table:
            what = IEMOCAP_CODES.get(code, "unknown code")
            space = ("the 4-class set (neu, hap+exc, sad, ang)" if self.classes == "4"
                     else f"the usable codes {list(IEMOCAP_ALL_CODES)}")
            raise DataError(path, f"{utterance}: emotion {code!r} ({what}) is outside {space}",
                            kind="label", field="label")
        return table[code]

    def _sessions(self) -> list[tuple[str, Path]]:
        root = Path(self.root).absolute()    # specs travel to Ray tasks: absolute paths
        base = root / IEMOCAP_FOLDER if (root / IEMOCAP_FOLDER).is_dir() else root
        found = sorted((int(m.group(1)), p) for p in base.iterdir()
                       if p.is_dir() and (m := _SESSION.match(p.name))) if base.is_dir() else []
        if not found:
            raise DataError(self.root, f"no SessionN folders; expected the IEMOCAP layout "
                            f"{IEMOCAP_FOLDER}/SessionN/sentences/wav/<dialog>/<utt>.wav and "
                            f"{IEMOCAP_FOLDER}/SessionN/dialog/EmoEvaluation/<dialog>.txt",
                            kind="layout")
        return [(f"Session{n}", p) for n, p in found]

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name, label_names=self._label_names(), modalities=["audio"],
            audio_rate=IEMOCAP_RATE, trial_seconds=None,
            label_scale="valence/arousal 1-5 mapped to [-1, 1] (3 -> 0), high = value > 0",
            notes=[f"classes={self.classes}" + (": exc merged into happiness"
                                                if self.classes == "4" else ""),
                   "subject = session + speaker (last field's letter); protocol: "
                   "leave-one-session-out"])

    def list_trials(self) -> tuple[list[TrialSpec], list[Rejection]]:
        specs: list[TrialSpec] = []
        rejections: list[Rejection] = []
        for session, folder in self._sessions():
            eval_dir = folder / "dialog" / "EmoEvaluation"
            if not eval_dir.is_dir():
                err = DataError(str(eval_dir), "EmoEvaluation folder missing; expected "
                                "dialog/EmoEvaluation/<dialog>.txt", kind="label", field="label")
                rejections.append(Rejection.from_error(f"iemocap/{session}", [str(eval_dir)],
                                                       err))
                continue
            for txt in sorted(eval_dir.glob("*.txt")):
                if txt.name.startswith("."):
                    continue
                wav_dir = folder / "sentences" / "wav" / txt.stem
                wavs = {p.stem: p for p in wav_dir.glob("*.wav")} if wav_dir.is_dir() else {}
                for entry in _parse_evaluation(txt):
                    trial_id = f"iemocap/{_speaker(entry['name'])}/{session}/{entry['name']}"
                    try:
                        specs.append(self._spec(session, txt, entry, wavs))
                    except DataError as err:
                        rejections.append(Rejection.from_error(trial_id, [str(txt)], err))
        return specs, rejections

    def _spec(self, session: str, txt: Path, entry: dict, wavs: dict[str, Path]) -> TrialSpec:
        name = entry["name"]
        if "error" in entry:
            raise DataError(str(txt), entry["error"], kind="label", field="label")
        wav = wavs.get(name)
        if wav is None:
            expected = txt.parent.parent.parent / "sentences" / "wav" / txt.stem / f"{name}.wav"
            raise DataError(str(expected), f"no wav for utterance {name} listed in {txt.name}",
                            kind="unreadable", field="audio")
        label = self._label(entry["code"], str(txt), name)
        vad = entry["vad"]
        bad = [f"{k}={v}" for k, v in zip("VAD", vad) if not 1.0 <= v <= 5.0]
        if bad:
            raise DataError(str(txt), f"{name}: {', '.join(bad)} outside the 1-5 scale",
                            kind="label", field="label")
        return TrialSpec(
            dataset=self.name, subject=_speaker(name), session=session, trial=name,
            label=label, valence=to_common_scale(vad[0], 1, 5),
            arousal=to_common_scale(vad[1], 1, 5), refs={"audio": {"path": str(wav)}},
            extra={"code": entry["code"], "dialog": txt.stem, "start": entry["start"],
                   "end": entry["end"], "dominance": vad[2],
                   "improvised": "impro" in txt.stem})

    def load_trial(self, spec: TrialSpec) -> Trial:
        from emoray.io.audio import read_audio

        return Trial(spec=spec, audio=read_audio(spec.refs["audio"]["path"]))


def _speaker(utterance: str) -> str:
    """``Ses01F_impro01_M003`` -> ``Ses01M``: session prefix + the last field's letter."""
    last = utterance.rsplit("_", 1)[-1]
    letter = re.match(r"[A-Za-z]*", last).group(0)[-1:].upper()  # type: ignore[union-attr]
    return utterance[:5] + letter


def _parse_evaluation(path: Path) -> list[dict]:
    """Every ``[start - end]\\tname\\tcode\\t[V, A, D]`` line of one EmoEvaluation file."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(str(path), f"cannot read: {exc.strerror}", kind="unreadable",
                        field="label") from exc
    entries: list[dict] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("["):
            continue
        m = _LINE.match(line)
        if m is None:
            name = line.split("\t")[1] if line.count("\t") >= 1 else f"line{lineno}"
            entries.append({"name": name, "error": f"line {lineno} does not parse; expected "
                            "'[start - end]\\t<utterance>\\t<code>\\t[V, A, D]'"})
            continue
        start, end, name, code, *vad = m.groups()
        if name in seen:
            continue
        seen.add(name)
        try:
            values = [float(v) for v in vad]
        except ValueError:
            entries.append({"name": name, "error": f"line {lineno}: V/A/D {vad} not numbers"})
            continue
        entries.append({"name": name, "code": code.lower(), "start": float(start),
                        "end": float(end), "vad": values})
    return entries


# ---------------------------------------------------------------------- fake-data twin
def write_session(root: str | os.PathLike, session: int, utterances: list[dict]) -> None:
    """Write one IEMOCAP session (wavs + EmoEvaluation files) in the real layout.

    Parameters
    ----------
    root : path
        The folder that will hold ``IEMOCAP_full_release/``.
    session : int
        Session number (``Session1`` ...).
    utterances : list of dict
        Each with ``dialog`` (``Ses01F_impro01``), ``name`` (``Ses01F_impro01_F000``),
        ``audio`` (:class:`~emoray.types.Audio`, 16 kHz), ``code`` (``neu`` ...), ``vad``
        (three values on 1-5), ``start``/``end`` (seconds in the dialog).
    """
    from emoray.io.audio import write_audio

    base = Path(root) / IEMOCAP_FOLDER / f"Session{session}"
    eval_dir = base / "dialog" / "EmoEvaluation"
    eval_dir.mkdir(parents=True, exist_ok=True)
    by_dialog: dict[str, list[dict]] = defaultdict(list)
    for utt in utterances:
        by_dialog[utt["dialog"]].append(utt)
    for dialog, items in by_dialog.items():
        wav_dir = base / "sentences" / "wav" / dialog
        wav_dir.mkdir(parents=True, exist_ok=True)
        lines = [_HEADER, ""]
        for utt in sorted(items, key=lambda u: u["start"]):
            write_audio(str(wav_dir / f"{utt['name']}.wav"), utt["audio"])
            v, a, d = (float(x) for x in utt["vad"])
            lines.append(f"[{utt['start']:.4f} - {utt['end']:.4f}]\t{utt['name']}\t"
                         f"{utt['code']}\t[{v:.4f}, {a:.4f}, {d:.4f}]")
            word = _WORDS.get(utt["code"], "Other")
            other = "Frustration" if utt["code"] == "xxx" else word
            lines += [f"C-E1:\t{word};\t()", f"C-E2:\t{other};\t()", f"C-F1:\t{word};\t()",
                      f"A-E1:\tval {round(v)}; act {round(a)}; dom  {round(d)};\t()",
                      f"A-F1:\tval {round(v)}; act {round(a)}; dom  {round(d)};\t()", ""]
        (eval_dir / f"{dialog}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
