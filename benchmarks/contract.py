"""The preprocessing contract per request: the fast path vs the per-call reference.

Both sides turn the same raw request into the same model inputs through
:func:`emoray.predict.inputs.prepare_inputs` (checks, segments, the contract, tensors), on
the quickstart's contract (30 EEG channels at 500 Hz -> 100 Hz, 5 s segments, 16 kHz
speech, 10 video frames of 64 x 64). They differ only in the contract's implementation:

``fast``
    :mod:`emoray.data.transforms` as it is: MNE's filter designs cached and applied to all
    channels by one FFT, the pitch tracker's short FFT and skipped silent frames.
``reference``
    :mod:`emoray.data.transforms.reference`: MNE's ``notch_filter``/``filter_data``/
    ``resample`` on every call (a filter design per call, channel by channel), the
    original pitch tracker.

Two requests: ``serve``, the request of ``benchmarks/serve.py`` (2 s of noise per
modality; one segment, zero-padded to 5 s as serving pads it), the headline; and
``trial``, one 10 s trial of the synthetic corpus as ``emoray synth`` writes the README's
example files (EEG at 500 Hz with blinks and hum, speech at 44.1 kHz, so it is resampled,
video frames; two segments). The sides take turns, round by round, alternating which goes
first, so a machine whose speed drifts slows both alike; each request's time is the median
over all its calls. A second table times each step on each request's first segment.
Both sides run with ``--threads`` torch threads (default 1, as Ray workers run).

It prints the tables and ``contract: ratio R (target 3.0)`` (R = reference ms / fast ms
per ``serve`` request) and writes ``benchmarks/results/contract.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):      # run as a script (python benchmarks/NAME.py): the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # makes `benchmarks` importable

import contextlib
import os
import statistics
import time
from typing import Any, Callable

import numpy as np

from benchmarks._runner import runner_parser, table, write_result

TARGET = 3.0
SIDES = ("reference", "fast")


def quickstart_contract():
    """The contract ``emoray quickstart`` trains with (``configs/data/quickstart.yaml``)."""
    from emoray.config.contract import PreprocessContract
    from emoray.synth.config import default_eeg_channels

    c = PreprocessContract()
    c.eeg.channels = list(default_eeg_channels())
    c.video.n_frames, c.video.size = 10, 64
    return c


def serve_request(contract, seed: int = 0) -> dict[str, Any]:
    """``benchmarks/serve.py``'s request: 2 s of noise per modality, 10 frames of 48 x 48."""
    from emoray.predict import EEGInput, SpeechInput, VideoInput

    rng = np.random.default_rng(seed)
    ch, sf, sr = contract.eeg.channels, 500.0, contract.audio.sample_rate
    return {"eeg": EEGInput(rng.normal(0, 20e-6, (len(ch), int(2 * sf))), sf, ch),  # (C, T)
            "speech": SpeechInput(rng.uniform(-0.1, 0.1, 2 * sr).astype("float32"), sr),
            "video": VideoInput(rng.integers(0, 256, (10, 48, 48, 3), dtype=np.uint8))}


def trial_request(seconds: float = 10.0, seed: int = 0) -> dict[str, Any]:
    """One trial of the synthetic corpus (``emoray synth``'s defaults, the README's
    ``sub-01`` files before they are written): EEG 500 Hz, speech 44.1 kHz, video."""
    from emoray.predict import EEGInput, SpeechInput, VideoInput
    from emoray.synth.config import SynthConfig
    from emoray.synth.design import build_design
    from emoray.synth.trial import simulate_trial

    cfg = SynthConfig(subjects=1, trials_per_class=1, seconds=seconds, seed=seed)
    gt = build_design(cfg)
    trial = next(t for t in gt.trials if t.task == "speaking")
    sig = simulate_trial(cfg, gt, trial)
    return {"eeg": EEGInput(sig["eeg"], cfg.eeg_sfreq, list(cfg.eeg_channels)),
            "speech": SpeechInput(sig["audio"], cfg.audio_rate),
            "video": VideoInput(sig["video"], cfg.video_fps)}


@contextlib.contextmanager
def implementation(side: str, calls: dict[str, int]):
    """Run ``prepare_inputs`` with ``side``'s contract functions; counts the reference
    calls in ``calls`` (a check that the swap reached the code that runs)."""
    import emoray.data.transforms as transforms
    from emoray.data.transforms import reference

    if side == "fast":
        yield
        return

    def counted(fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            calls[fn.__name__] = calls.get(fn.__name__, 0) + 1
            return fn(*args, **kwargs)
        return wrapper

    saved = transforms.preprocess_eeg, transforms.preprocess_speech
    transforms.preprocess_eeg = counted(reference.preprocess_eeg_reference)
    transforms.preprocess_speech = counted(reference.preprocess_speech_reference)
    try:
        yield
    finally:
        transforms.preprocess_eeg, transforms.preprocess_speech = saved


def _side_by_side(jobs: dict[str, dict[str, Callable[[], Any]]], rounds: int,
                  per_round: int) -> dict[str, dict[str, list[float]]]:
    """Per job and side, the milliseconds of every call: rounds in turn, the side that
    goes first alternating."""
    out = {job: {side: [] for side in SIDES} for job in jobs}
    for r in range(rounds):
        order = SIDES if r % 2 == 0 else SIDES[::-1]
        for job, sides in jobs.items():
            for side in order:
                fn = sides[side]
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    fn()
                    out[job][side].append((time.perf_counter() - t0) * 1000.0)
    return out


def _request_jobs(contract, requests: dict[str, dict], calls: dict[str, int]):
    from emoray.predict.inputs import prepare_inputs

    def run(side: str, sample: dict) -> Callable[[], Any]:
        def call():
            with implementation(side, calls):
                return prepare_inputs(contract, [sample])
        return call

    return {name: {side: run(side, s) for side in SIDES} for name, s in requests.items()}


def _step_jobs(contract, sample: dict) -> dict[str, dict[str, Callable[[], Any]]]:
    """Each step of the contract on ``sample``'s first segment, as the fast path and the
    reference compute it (the same function on both sides where nothing changed)."""
    import mne
    import torch

    from emoray.data.segment import cut
    from emoray.data.transforms import eeg, reference, speech, video

    e, c = sample["eeg"], contract.eeg
    seg = contract.segment_seconds
    x, _ = eeg._validate(cut(e.data, e.sfreq, 0.0, seg, axis=1), e.sfreq, list(e.ch_names),
                         c, None)                                       # (C, T) float64
    sf = e.sfreq
    freqs = eeg.mains_frequencies(c.notch, sf)
    highs, lows = eeg.notch_bands(freqs)
    xf = eeg.filter_eeg(x, sf, c)
    xr = eeg.resample_eeg(xf, sf, c.sfreq)
    s, a = sample["speech"], contract.audio
    raw = cut(s.samples, s.sample_rate, 0.0, seg, axis=0).astype(np.float32)  # (T,)
    wav = torch.from_numpy(raw)
    if s.sample_rate != a.sample_rate:
        wav = speech._resampler(s.sample_rate, a.sample_rate)(wav)           # (T',)
    mel = speech._mel_transform(a.sample_rate, a.n_fft, a.hop_length, a.f_min, a.f_max,
                                a.n_mels)
    resampled = wav.numpy()
    v = sample["video"]
    frames = cut(v.frames, v.fps or len(v.frames) / 2.0, 0.0, seg, axis=0)

    def both(fn):
        return {"reference": fn, "fast": fn}

    def logmel():
        with torch.no_grad():
            return torch.log(mel(wav) + a.log_eps).numpy()

    return {
        "eeg notch": {"reference": lambda: mne.filter.notch_filter(x, sf, freqs,
                                                                   verbose="error"),
                      "fast": lambda: eeg.fir_filter(x, sf, highs, lows, 0.5)},
        "eeg band-pass": {"reference": lambda: mne.filter.filter_data(
                              x, sf, c.l_freq, c.h_freq, verbose="error"),
                          "fast": lambda: eeg.fir_filter(x, sf, c.l_freq, c.h_freq)},
        "eeg blinks": {"reference": lambda: reference.remove_blinks_reference(
                           xf, sf, c.channels, c.blink_channels),
                       "fast": lambda: eeg.remove_blinks(xf, sf, c.channels,
                                                         c.blink_channels)},
        "eeg resample": {"reference": lambda: reference.resample_eeg_reference(xf, sf,
                                                                               c.sfreq),
                         "fast": lambda: eeg.resample_eeg(xf, sf, c.sfreq)},
        "eeg bands+norm": both(lambda: (eeg.eeg_band_features(xr, c.sfreq, c.bands),
                                        eeg.normalize_eeg(xr, c.normalize, c.clip))),
        "speech cut (segment.cut)": both(lambda: cut(s.samples, s.sample_rate, 0.0, seg,
                                                     axis=0)),
        "speech resample": both(lambda: speech._resampler(s.sample_rate, a.sample_rate)(
            torch.from_numpy(raw)) if s.sample_rate != a.sample_rate else None),
        "speech prosody (F0)": {"reference": lambda: speech._prosody(
                                    resampled, a, reference.track_f0_reference),
                                "fast": lambda: speech._prosody(resampled, a)},
        "speech log-mel": both(logmel),
        "video": both(lambda: video.preprocess_video(frames, contract.video,
                                                     normalize=False)),
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_benchmark(quick: bool = False, out_dir: str | Path = "benchmarks/results",
                  ray_cfg=None, threads: int = 1) -> dict[str, Any]:
    """Time the ``serve`` and ``trial`` requests and each step, both sides in turn."""
    import torch

    torch.set_num_threads(threads)
    load_start = os.getloadavg()
    contract = quickstart_contract()
    requests = {"serve": serve_request(contract), "trial": trial_request()}
    rounds, per_round = (4, 3) if quick else (12, 5)
    calls: dict[str, int] = {}
    jobs = _request_jobs(contract, requests, calls)
    for fns in jobs.values():                                           # warm-up
        for fn in fns.values():
            fn()
    if not calls:
        raise RuntimeError("the reference side never ran: prepare_inputs no longer reads "
                           "emoray.data.transforms.preprocess_* at call time")
    times = _side_by_side(jobs, rounds, per_round)
    step_times = {}
    for name, sample in requests.items():
        for step, by_side in _side_by_side(_step_jobs(contract, sample), rounds,
                                           per_round).items():
            step_times[f"{name}: {step}"] = by_side

    rows, step_rows = [], []
    for name, by_side in times.items():
        ref, fast = _median(by_side["reference"]), _median(by_side["fast"])
        n_seg = int(prepare_n_segments(contract, requests[name]))
        rows.append({"request": name, "segments": n_seg, "reference ms": f"{ref:.1f}",
                     "fast ms": f"{fast:.1f}", "ratio": f"{ref / fast:.2f}",
                     "calls per side": len(by_side["fast"])})
    for name, by_side in step_times.items():
        ref, fast = _median(by_side["reference"]), _median(by_side["fast"])
        step_rows.append({"step (first segment)": name, "reference ms": f"{ref:.2f}",
                          "fast ms": f"{fast:.2f}", "ratio": f"{ref / fast:.2f}"})
    ratio = _median(times["serve"]["reference"]) / _median(times["serve"]["fast"])
    load = (load_start, os.getloadavg())
    print(f"contract per request (prepare_inputs), {threads} torch thread(s), "
          f"{rounds} rounds x {per_round} calls per side; load average "
          f"{load[0][0]:.1f} at the start, {load[1][0]:.1f} at the end "
          f"({os.cpu_count()} CPUs)")
    print(table(rows, list(rows[0])))
    print()
    print(table(step_rows, list(step_rows[0])))
    details = {"threads": threads, "load_average": load, "rounds": rounds, "per_round": per_round, "quick": quick,
               "requests": {k: {s: v for s, v in by.items()} for k, by in times.items()},
               "steps": {k: {s: v for s, v in by.items()} for k, by in step_times.items()},
               "rows": rows, "step_rows": step_rows}
    path = write_result(out_dir, "contract", ratio, TARGET, details)
    print(f"wrote {path}")
    print(f"contract: ratio {ratio:.2f} (target {TARGET})")
    return details


def prepare_n_segments(contract, sample: dict) -> int:
    """How many segments ``prepare_inputs`` cuts ``sample`` into."""
    from emoray.predict.inputs import prepare_inputs

    return int(prepare_inputs(contract, [sample])["sample_index"].shape[0])


def main(argv: list[str] | None = None) -> None:
    """The command line of ``python benchmarks/contract.py``."""
    parser = runner_parser(__doc__)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads on both sides (default 1)")
    args = parser.parse_args(argv)
    run_benchmark(quick=args.quick, out_dir=args.out, threads=args.threads)


if __name__ == "__main__":
    main()
