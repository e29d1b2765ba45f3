"""Events -> trials over recordings written by other tools: MNE's exporters (EDF+/BDF+ through
edfio, BrainVision through pybv), pybv itself, MNE's FIF with a stim channel, a hand-typed
events TSV, and a BIDS tree written by mne_bids.write_raw_bids. Every way of giving the
same events must give the same trials: count, labels, onsets and EEG values."""

from __future__ import annotations

import datetime
import warnings

import mne
import numpy as np
import pybv
import pytest

from emoray.config import IngestConfig
from emoray.data.ingest import format_report, run_ingest, run_tasks_local
from emoray.datasets import get_adapter
from emoray.datasets.events import EventSettings, read_events_file
from emoray.datasets.manifest import ManifestAdapter, write_manifest
from emoray.errors import ConfigError

UTC = datetime.timezone.utc

SFREQ = 128.0
CHANNELS = ["Fp1", "Fp2", "Cz", "Pz"]
SECONDS = 32.0
# (onset s, duration s, description, valence 1-9, arousal 1-9); "boundary" is no trial
EVENTS = [(0.5, 0.0, "boundary", None, None), (2.0, 4.0, "happy", 8.0, 6.0),
          (9.0, 4.0, "sad", 2.0, 3.0), (16.5, 4.0, "happy", 7.0, 5.0),
          (24.0, 4.0, "calm", 6.0, 2.0)]
TRIALS = [e for e in EVENTS if e[2] != "boundary"]
MAP = {"happy": "happiness", "sad": "sadness", "calm": "calmness"}
CODES = {"happy": 1, "sad": 2, "calm": 3, "boundary": 9}
LABELS = [MAP[e[2]] for e in TRIALS]
OPTIONS = {"va_scale": [1, 9], "events": {"map": MAP, "post": 4.0, "baseline": [-1.0, 0.0]}}


def _raw(with_annotations: bool = True) -> mne.io.RawArray:
    rng = np.random.default_rng(7)
    data = 1e-5 * rng.standard_normal((len(CHANNELS), int(SFREQ * SECONDS)))   # (C, T) V
    data[2] += 3e-5            # an offset on Cz that the baseline must remove
    raw = mne.io.RawArray(data, mne.create_info(CHANNELS, SFREQ, "eeg"), verbose="error")
    if with_annotations:
        raw.set_annotations(mne.Annotations(
            [e[0] for e in EVENTS], [e[1] for e in EVENTS], [e[2] for e in EVENTS],
            extras=[{} if e[3] is None else {"valence": e[3], "arousal": e[4]}
                    for e in EVENTS]))
    return raw


def _export(raw, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mne.export.export_raw(str(path), raw, overwrite=True, verbose="error")
    return path


def _events_tsv(path):
    lines = ["onset\tduration\ttrial_type\tvalence\tarousal"]
    lines += [f"{o}\t{d}\t{t}\t{'n/a' if v is None else v}\t{'n/a' if a is None else a}"
              for o, d, t, v, a in EVENTS]
    path.write_text("\n".join(lines) + "\n")
    return path


def _fif_with_stim(path):
    raw = _raw(with_annotations=False)
    stim = np.zeros((1, raw.n_times))
    for onset, _, name, _, _ in EVENTS:
        i = int(round(onset * SFREQ))
        stim[0, i:i + 3] = CODES[name]
    raw.add_channels([mne.io.RawArray(stim, mne.create_info(["STI 014"], SFREQ, "stim"),
                                      verbose="error")], force_update_info=True)
    raw.save(str(path), overwrite=True, verbose="error")
    return path


def _pybv(folder):
    raw = _raw(with_annotations=False)
    events = [{"onset": int(round(o * SFREQ)), "duration": max(1, int(d * SFREQ)),
               "description": CODES[n], "type": "Stimulus"} for o, d, n, _, _ in EVENTS]
    pybv.write_brainvision(data=raw.get_data(), sfreq=SFREQ, ch_names=CHANNELS,
                           fname_base="pybv", folder_out=str(folder), events=events,
                           resolution=1e-3, overwrite=True)
    return folder / "pybv.vhdr"


@pytest.fixture
def recordings(tmp_path):
    """The same 32 s recording and events, written every supported way."""
    raw = _raw()
    paths = {"edf": _export(raw, tmp_path / "rec.edf"),
             "bdf": _export(raw, tmp_path / "rec.bdf"),
             "brainvision": _export(raw, tmp_path / "rec.vhdr"),
             "fif_stim": _fif_with_stim(tmp_path / "stim_raw.fif"),
             "pybv": _pybv(tmp_path),
             "plain_edf": _export(_raw(with_annotations=False), tmp_path / "plain.edf")}
    _events_tsv(tmp_path / "rec_events.tsv")
    rows = [{"subject": "s1", "trial": "edf", "eeg": paths["edf"], "events": "annotations"},
            {"subject": "s1", "trial": "bv", "eeg": paths["brainvision"],
             "events": "annotations"},
            {"subject": "s1", "trial": "bdf", "eeg": paths["bdf"], "events": "annotations"},
            {"subject": "s1", "trial": "tsv", "eeg": paths["plain_edf"],
             "events": tmp_path / "rec_events.tsv"}]
    write_manifest(tmp_path / "manifest.csv", rows)
    return tmp_path, paths


def _trials(adapter):
    specs, rejections = adapter.list_trials()
    return specs, rejections, [adapter.load_trial(s) for s in specs]


def _by_recording(specs, trials, name):
    return [(s, t) for s, t in zip(specs, trials) if s.trial.startswith(name + "-")]


def _check_same(pairs, reference):
    """Same count, labels, onsets and EEG values (within the file formats' precision)."""
    assert len(pairs) == len(TRIALS)
    assert [s.extra["onset"] for s, _ in pairs] == [e[0] for e in TRIALS]
    for (spec, trial), (_, ref) in zip(pairs, reference):
        assert trial.eeg.data.shape == (len(CHANNELS), int(4 * SFREQ))
        np.testing.assert_allclose(trial.eeg.data, ref.eeg.data, atol=2e-8)


def test_annotations_and_events_file_give_the_same_trials(recordings):
    root, _ = recordings
    adapter = ManifestAdapter(str(root / "manifest.csv"), **OPTIONS)
    specs, rejections, trials = _trials(adapter)
    assert not rejections
    assert len(specs) == 4 * len(TRIALS)            # "boundary" is no trial
    edf = _by_recording(specs, trials, "edf")
    for name in ("edf", "bv", "bdf", "tsv"):
        pairs = _by_recording(specs, trials, name)
        names = [adapter.label_names[s.label] for s, _ in pairs]
        assert names == LABELS, name
        _check_same(pairs, edf)
    # the truth: the raw's window, baseline-corrected, against the EDF's trials
    data = _raw().get_data()
    for (spec, trial), (onset, *_rest) in zip(edf, TRIALS):
        i = int(onset * SFREQ)
        # MNE's baseline interval includes both ends: samples onset-1 s ... onset
        want = data[:, i:i + 512] - data[:, i - 128:i + 1].mean(axis=1, keepdims=True)
        np.testing.assert_allclose(trial.eeg.data, want, atol=2e-8)
        assert abs(trial.eeg.data[2].mean()) < 1e-5        # the Cz offset is gone
    # the events file carries valence/arousal; the annotations' extras do not survive EDF
    tsv = _by_recording(specs, trials, "tsv")
    assert [s.extra["valence_raw"] for s, _ in tsv] == [e[3] for e in TRIALS]
    assert tsv[0][0].valence == pytest.approx(0.75) and edf[0][0].valence is None
    assert any("'boundary' x1" in n for n in adapter.info().notes)


def test_stim_channel_and_pybv_markers(recordings):
    root, paths = recordings
    codes = {str(CODES[k]): v for k, v in MAP.items()}
    write_manifest(root / "stim.csv", [
        {"subject": "s1", "trial": "fif", "eeg": paths["fif_stim"], "events": "stim"},
        {"subject": "s1", "trial": "pybv", "eeg": paths["pybv"], "events": "annotations"}])
    options = {"events": {"map": {**codes, **{f"S  {c}": v for c, v in codes.items()}},
                          "post": 4.0, "baseline": [-1.0, 0.0]}}
    adapter = ManifestAdapter(str(root / "stim.csv"), **options)
    specs, rejections, trials = _trials(adapter)
    assert not rejections
    edf, _, edf_trials = _trials(ManifestAdapter(str(root / "manifest.csv"), **OPTIONS))
    reference = _by_recording(edf, edf_trials, "edf")
    for name in ("fif", "pybv"):
        pairs = _by_recording(specs, trials, name)
        assert [adapter.label_names[s.label] for s, _ in pairs] == LABELS, name
        _check_same(pairs, reference)
    # the FIF's stim channel is not EEG: it never reaches the trial
    assert trials[0].eeg.ch_names == CHANNELS


def test_bids_tree_gives_the_same_trials(recordings, tmp_path):
    from mne_bids import BIDSPath, write_raw_bids

    root, paths = recordings
    raw = mne.io.read_raw(paths["edf"], verbose="error")
    raw.set_annotations(_raw().annotations)           # with the valence/arousal extras
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_raw_bids(raw, BIDSPath(subject="01", session="a", task="film", run=1,
                                     datatype="eeg", root=tmp_path / "bids"),
                       overwrite=True, verbose="error")
    adapter = get_adapter("bids", str(tmp_path / "bids"), OPTIONS)
    specs, rejections, trials = _trials(adapter)
    assert not rejections
    assert [s.trial_id for s in specs][:1] == ["bids/01/a/task-film_run-1-002"]
    assert [adapter.label_names[s.label] for s in specs] == LABELS
    assert [s.extra["valence_raw"] for s in specs] == [e[3] for e in TRIALS]
    edf, _, edf_trials = _trials(ManifestAdapter(str(root / "manifest.csv"), **OPTIONS))
    _check_same(list(zip(specs, trials)), _by_recording(edf, edf_trials, "edf"))


def test_out_of_range_overlapping_and_bad_rows_are_reported(tmp_path):
    _export(_raw(with_annotations=False), tmp_path / "rec.edf")
    (tmp_path / "ev.csv").write_text(
        "onset,duration,label\n"
        "2,4,anger\n"
        "4,4,sadness\n"          # overlaps the first
        "30,4,anger\n"           # past the end (32 s)
        "10,4,surprise\n"        # outside the label space
        "oops,4,anger\n"         # not a number
        "0.5,4,anger\n"          # baseline [-1, 0] starts before the recording
        "20,0,anger\n")          # no duration and no events.post
    write_manifest(tmp_path / "m.csv", [{"subject": "s1", "trial": "r", "eeg": "rec.edf",
                                         "events": "ev.csv"}])
    adapter = ManifestAdapter(str(tmp_path / "m.csv"),
                              events={"baseline": [-1, 0]})
    specs, rejections = adapter.list_trials()
    assert [s.trial for s in specs] == ["r-001"]
    by_trial = {r.trial_id.rsplit("/", 1)[1]: r for r in rejections}
    assert {t: r.kind for t, r in by_trial.items()} == {
        "r-002": "invalid_value", "r-003": "truncated", "r-004": "label",
        "r-005": "invalid_value", "r-006": "truncated", "r-007": "invalid_value"}
    assert "overlaps trial r-001 [2, 6]" in by_trial["r-002"].reason
    assert "ev.csv:4" in by_trial["r-003"].reason and "0 to 32 s" in by_trial["r-003"].reason
    assert "surprise" in by_trial["r-004"].reason
    assert "'oops' is not a number" in by_trial["r-005"].reason
    assert "baseline interval [-0.5, 0.5]" in by_trial["r-006"].reason
    assert "events.post" in by_trial["r-007"].reason
    assert all(r.files == [str(tmp_path / "ev.csv")] for r in rejections)
    kept = ManifestAdapter(str(tmp_path / "m.csv"), events={"overlap": "keep"})
    assert [s.trial for s in kept.list_trials()[0]] == ["r-001", "r-002", "r-006"]
    assert any("2 trial window(s) overlap" in n for n in kept.info().notes)   # r-001, r-002


def test_bad_recording_does_not_sink_the_batch(tmp_path):
    """Through ingest (sequential runner, no Ray): counts reconcile, the rest goes through."""
    _export(_raw(), tmp_path / "good.edf")
    (tmp_path / "broken.edf").write_bytes(b"0       not an edf")
    (tmp_path / "no_onset.tsv").write_text("start\tlabel\n1\tanger\n")
    write_manifest(tmp_path / "m.csv", [
        {"subject": "s1", "trial": "good", "eeg": "good.edf", "events": "annotations"},
        {"subject": "s2", "trial": "broken", "eeg": "broken.edf", "events": "annotations"},
        {"subject": "s3", "trial": "cols", "eeg": "good.edf", "events": "no_onset.tsv"},
        {"subject": "s4", "trial": "gone", "eeg": "good.edf", "events": "gone.tsv"}])
    cfg = IngestConfig(source=str(tmp_path / "m.csv"), output=str(tmp_path / "out"),
                       segment_seconds=2.0, options=OPTIONS)
    report = run_ingest(cfg, runner=run_tasks_local, echo=lambda *_: None)
    assert report["found"] == 4 + 3 and report["ingested"] == 4
    assert report["rejected"] == 3 and report["reconciled"]
    assert report["records"] == 4 * 2
    reasons = {r["trial_id"]: r for r in report["rejections"]}
    assert reasons["manifest/s2/1/broken"]["kind"] == "unreadable"
    assert "no 'onset' column" in reasons["manifest/s3/1/cols"]["reason"]
    assert reasons["manifest/s3/1/cols"]["files"] == [str(tmp_path / "no_onset.tsv")]
    assert "not found" in reasons["manifest/s4/1/gone"]["reason"]
    text = format_report(report)
    assert "Traceback" not in text and "no_onset.tsv" in text


def test_events_file_columns(tmp_path):
    (tmp_path / "e.csv").write_text("Onset,Duration,Condition,Valence,stim_file\n"
                                    "1.5,2,joy,n/a,clip1.mp4\n")
    [event] = read_events_file(tmp_path / "e.csv", "condition")
    assert (event.onset, event.duration, event.description) == (1.5, 2.0, "joy")
    assert event.valence is None and event.extra == {"stim_file": "clip1.mp4"}
    with pytest.raises(Exception) as err:
        read_events_file(tmp_path / "e.csv", "trial_type")
    assert "no column 'trial_type'" in str(err.value) and "e.csv" in str(err.value)


@pytest.mark.parametrize("option, message", [
    ({"mapping": {}}, "unknown key"), ({"map": []}, "events.map"),
    ({"map": {"a": 1.5}}, "class name or index"), ({"map": {"a": {"valance": 1}}}, "keys"),
    ({"map": {"a": {"valence": "high"}}}, "ratings as numbers"),
    ({"pre": -1}, "pre >= 0"), ({"post": "4s"}, "events.post"),
    ({"baseline": [0, -3]}, "start < end"), ({"baseline": 3}, "[start, end]"),
    ({"source": "markers"}, "events.source"), ({"overlap": "cut"}, "events.overlap"),
    ("annotations", "expected a mapping")])
def test_bad_event_options(option, message):
    with pytest.raises(ConfigError) as err:
        EventSettings.from_option(option)
    assert message in str(err.value)


def test_map_matches_brainvision_types_and_rating_targets():
    settings = EventSettings.from_option(
        {"map": {"S  1": "anger", 2: {"valence": 7, "arousal": 2}}})
    assert settings.target("Stimulus/S  1") == {"label": "anger"}
    assert settings.target("2") == {"valence": 7, "arousal": 2}
    assert settings.target("New Segment/") is None
    assert EventSettings.from_option(None).target("anger") == {"label": "anger"}


@pytest.mark.parametrize("meas_date", [None, datetime.datetime(2024, 1, 1, tzinfo=UTC)])
def test_cropped_fif_annotations_count_from_its_first_sample(tmp_path, meas_date):
    """A FIF saved after Raw.crop starts at first_samp > 0: onsets must count from it."""
    raw = _raw()
    raw.set_meas_date(meas_date)
    raw.set_annotations(mne.Annotations([5.0, 12.0], [2.0, 2.0], ["happy", "sad"]))
    raw.crop(tmin=3.0).save(tmp_path / "crop_raw.fif", verbose="error")
    write_manifest(tmp_path / "m.csv", [{"subject": "s", "trial": "c",
                                         "eeg": tmp_path / "crop_raw.fif",
                                         "events": "annotations"}])
    adapter = ManifestAdapter(str(tmp_path / "m.csv"), events={"map": MAP})
    specs, rejections = adapter.list_trials()
    assert not rejections and [s.extra["onset"] for s in specs] == [2.0, 9.0]
    events = mne.events_from_annotations(mne.io.read_raw(tmp_path / "crop_raw.fif",
                                                         verbose="error"), verbose="error")[0]
    first = int(3.0 * SFREQ)
    assert [int(s.extra["onset"] * SFREQ) for s in specs] == list(events[:, 0] - first)
    trial = adapter.load_trial(specs[0])
    np.testing.assert_allclose(trial.eeg.data, _raw().get_data()[:, 640:896], atol=1e-12)


def test_without_a_map_descriptions_are_class_names(tmp_path):
    """BrainVision's "Comment/" type prefix is not part of the class name."""
    raw = _raw(with_annotations=False)
    raw.set_annotations(mne.Annotations([1.0, 5.0], [2.0, 2.0], ["anger", "surprise"]))
    _export(raw, tmp_path / "r.vhdr")
    write_manifest(tmp_path / "m.csv", [{"subject": "s", "trial": "r", "eeg": "r.vhdr",
                                         "events": "annotations"}])
    specs, rejections = ManifestAdapter(str(tmp_path / "m.csv")).list_trials()
    assert [(s.extra["event"], s.label) for s in specs] == [("Comment/anger", 2)]
    assert [r.kind for r in rejections] == ["label"]
    assert "Comment/surprise" in rejections[0].reason



def test_source_option_and_a_missing_stim_channel(recordings):
    root, paths = recordings
    write_manifest(root / "rows.csv", [
        {"subject": "s1", "trial": "a", "eeg": paths["edf"]},                 # no events cell
        {"subject": "s2", "trial": "s", "eeg": paths["fif_stim"], "events": "stim"}])
    adapter = ManifestAdapter(str(root / "rows.csv"), va_scale=(1, 9), events={
        "source": "annotations", "map": MAP, "stim_channel": "TRIGGER"})
    specs, rejections = adapter.list_trials()
    assert [s.trial for s in specs] == ["a-002", "a-003", "a-004", "a-005"]
    [bad] = rejections
    assert bad.trial_id == "manifest/s2/1/s" and bad.kind == "layout"
    assert "TRIGGER" in bad.reason and "events.stim_channel" in bad.reason
    assert bad.files[0] == str(paths["fif_stim"])
