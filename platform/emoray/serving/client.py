"""A small client of the emoray Serve API: the ``emoray predict`` command's side.

:func:`predict_files` sends real files (EDF/BDF/FIF, WAV/FLAC, MP4, JPEG frames or a folder
of them), :func:`predict_signals` in-memory signals, to ``{url}/v1/predict`` in one of
:data:`ENCODINGS`: ``binary`` (the default: files as they are, :func:`build_multipart`, or
signals as ``.npy`` parts, :func:`binary_request`), ``arrays`` (files decoded here by
:func:`read_inputs` and sent as ``.npy`` parts: the server parses no file format) or
``json`` (:func:`json_request`, the inverse of :func:`emoray.serving.decode.decode_json`).
Refusals come back as :class:`ClientError` carrying the server's status, field and message.
Importing this module does not import torch.

Examples
--------
>>> predict_files("http://127.0.0.1:8000", ["rec.edf", "speech.wav"])  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emoray.errors import DataError, EmorayError
from emoray.serving.decode import MODALITY_EXTENSIONS, npy_bytes

if TYPE_CHECKING:
    from emoray.predict import EEGInput, SpeechInput, VideoInput

API_KEY_HEADER = "X-API-Key"
PREDICT_PATH = "/v1/predict"
_JPEG = (".jpg", ".jpeg")
_CONTENT_TYPES = {".edf": "application/octet-stream", ".bdf": "application/octet-stream",
                  ".fif": "application/octet-stream", ".wav": "audio/wav",
                  ".flac": "audio/flac", ".mp4": "video/mp4", ".jpg": "image/jpeg",
                  ".jpeg": "image/jpeg"}
_EXT_MODALITY = {ext: m for m, exts in MODALITY_EXTENSIONS.items() for ext in exts}
#: ``encoding=`` values of :func:`predict_files` and :func:`predict_signals`.
ENCODINGS = ("binary", "arrays", "json")
_NPY_TYPE = "application/octet-stream"


class ClientError(EmorayError):
    """A request the server refused or could not be sent.

    Parameters
    ----------
    message : str
        What went wrong, with the server's message when it answered.
    status : int | None
        The HTTP status (None when no answer came).
    field : str | None
        The request field the server named (``eeg.sfreq``, ``video`` ...).
    """

    def __init__(self, message: str, *, status: int | None = None, field: str | None = None):
        super().__init__(message)
        self.status, self.field = status, field


def modality_of(path: Path) -> str:
    """The modality of a file by its extension; a folder (of JPEG frames) is ``video``.

    Raises
    ------
    DataError
        ``unknown_format`` for an extension the server does not take.
    """
    path = Path(path)
    if path.is_dir():
        return "video"
    ext = path.suffix.lower()
    if ext not in _EXT_MODALITY:
        accepted = "; ".join(f"{m}: {', '.join(e)}" for m, e in MODALITY_EXTENSIONS.items())
        raise DataError(str(path), f"unknown file type {ext or '(none)'!r}; expected {accepted}"
                        " or a folder of JPEG frames", kind="unknown_format", field="input")
    return _EXT_MODALITY[ext]


def _folder_frames(folder: Path) -> list[Path]:
    from emoray.io.video import iter_frame_files

    files = list(iter_frame_files(folder))                       # natural order
    others = [p.name for p in files if p.suffix.lower() not in _JPEG]
    if others:
        raise ClientError(f"{folder}: frames {others[:3]} are not JPEG; the server takes "
                          "JPEG frames only (convert them, or send an MP4)")
    if not files:
        raise ClientError(f"{folder}: no .jpg/.jpeg frames in the folder")
    return files


def build_multipart(paths: list[Path], video_fps: float | None = None) -> list[tuple]:
    """The ``files=`` entries of a ``requests`` multipart POST for ``paths``.

    Parameters
    ----------
    paths : list[Path]
        At most one EEG file and one speech file, and either one MP4, JPEG files (frames in
        the given order) or one folder of JPEG frames (natural order; its ``fps.txt``
        gives the frame rate).
    video_fps : float | None
        Frame rate of JPEG frames (overrides a folder's ``fps.txt``).

    Returns
    -------
    list[tuple]
        ``(field, (filename, bytes, content_type))`` per file, then
        ``("video_fps", (None, "25.0"))`` when a frame rate applies.

    Raises
    ------
    ClientError
        Two files of one modality (JPEG frames apart), MP4 mixed with frames, no path,
        a frame rate without frames.
    DataError
        A missing file or an unknown extension.
    """
    groups, fps = _group(paths, video_fps)
    entries: list[tuple] = []
    for modality, files in groups.items():
        for p in files:
            entries.append((modality, (p.name, p.read_bytes(),
                                       _CONTENT_TYPES[p.suffix.lower()])))
    if fps is not None:
        entries.append(("video_fps", (None, repr(float(fps)))))
    return entries


def _group(paths: list[Path], video_fps: float | None) -> tuple[dict, float | None]:
    """``paths`` by modality (a folder of frames expanded to its JPEG files) and the frame
    rate of JPEG frames, refusing what :func:`build_multipart` refuses."""
    from emoray.io.video import FPS_FILE, _folder_fps

    if not paths:
        raise ClientError("no input files given; expected EEG, speech and/or video files")
    by_modality: dict[str, list[Path]] = {"eeg": [], "speech": [], "video": []}
    for p in map(Path, paths):
        modality = modality_of(p)
        if not p.exists():
            raise DataError(str(p), "file not found", kind="unreadable", field=modality)
        by_modality[modality].append(p)
    for modality in ("eeg", "speech"):
        if len(by_modality[modality]) > 1:
            raise ClientError(f"{len(by_modality[modality])} {modality} files "
                              f"{[str(p) for p in by_modality[modality]]}; send one per "
                              "request")
    video = by_modality["video"]
    fps = _check_fps(video_fps) if video_fps is not None else None
    if len(video) > 1 and not all(p.suffix.lower() in _JPEG for p in video):
        raise ClientError(f"video: {[str(p) for p in video]}; expected one MP4, one folder "
                          "of frames, or JPEG frame files")
    if video and video[0].is_dir():
        folder, video = video[0], _folder_frames(video[0])
        if fps is None and (folder / FPS_FILE).is_file():
            fps = _folder_fps(folder, 0.0)                  # DataError for a bad fps.txt
    elif video and video[0].suffix.lower() == ".mp4" and fps is not None:
        raise ClientError("video_fps applies to JPEG frames; an MP4 carries its own rate")
    if fps is not None and not video:
        raise ClientError("video_fps given without video frames")
    return {"eeg": by_modality["eeg"], "speech": by_modality["speech"], "video": video}, fps


def read_inputs(paths: list[str | Path], video_fps: float | None = None) -> dict[str, Any]:
    """Files (``paths``, ``video_fps`` as in :func:`build_multipart`) decoded here into
    ``{"eeg": EEGInput, ...}`` for the modalities given: what the ``arrays`` and ``json``
    encodings send. Mono 16-bit PCM stays int16 (half the bytes of float32), JPEG frames
    stay JPEG blobs, an MP4 becomes ``(N, H, W, 3)`` uint8 frames."""
    import soundfile as sf

    from emoray.io.audio import read_audio
    from emoray.io.eeg import read_eeg
    from emoray.io.video import read_video
    from emoray.predict import EEGInput, SpeechInput, VideoInput

    groups, fps = _group([Path(p) for p in paths], video_fps)
    out: dict[str, Any] = {}
    for p in groups["eeg"]:
        eeg = read_eeg(p)                                                   # (C, T) f32
        out["eeg"] = EEGInput(eeg.data, eeg.sfreq, list(eeg.ch_names))
    for p in groups["speech"]:
        info = sf.info(str(p))
        if info.subtype == "PCM_16" and info.channels == 1:
            samples, rate = sf.read(str(p), dtype="int16")                  # (T,) i16
            out["speech"] = SpeechInput(samples, int(rate))
        else:
            audio = read_audio(p)                                           # (T,) f32
            out["speech"] = SpeechInput(audio.samples, audio.sample_rate)
    video = groups["video"]
    if video and video[0].suffix.lower() == ".mp4":
        clip = read_video(video[0])                                         # (N, H, W, 3)
        out["video"] = VideoInput(clip.frames, clip.fps)
    elif video:
        out["video"] = VideoInput([p.read_bytes() for p in video], fps)
    return out


def _check_fps(value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) <= 0:
        raise ClientError(f"video_fps: expected a number > 0, got {value!r}")
    return float(value)


def _endpoint(url: str) -> str:
    return url.rstrip("/") + PREDICT_PATH


def _headers(api_key: str | None) -> dict[str, str]:
    return {API_KEY_HEADER: api_key} if api_key else {}


def _send(url: str, timeout: float, path: str | None = None, subject: str | None = None,
          **kwargs: Any) -> dict:
    """POST to ``{url}/v1/predict`` (or ``{url}{path}``), naming ``subject`` in the query;
    the answer's JSON, or a ClientError."""
    import requests

    endpoint = _endpoint(url) if path is None else url.rstrip("/") + path
    params = {"subject": subject} if subject is not None else None
    try:
        resp = requests.post(endpoint, timeout=timeout, params=params, **kwargs)
    except requests.exceptions.ReadTimeout:
        raise ClientError(f"no answer from {endpoint} within {timeout:g} s") from None
    except requests.exceptions.ConnectionError as exc:
        raise ClientError(f"the emoray endpoint {endpoint} is not reachable ({type(exc).__name__}"
                          "); start a server with `emoray serve CHECKPOINT` or pass its "
                          "URL") from None
    except requests.exceptions.RequestException as exc:      # bad URL, too many redirects
        raise ClientError(f"cannot send the request to {endpoint}: {exc}") from None
    try:
        answer = resp.json()
    except ValueError:
        answer = None
    if resp.status_code >= 400:
        raise _refused(resp.status_code, answer, resp.text, endpoint)
    if not isinstance(answer, dict):
        raise ClientError(f"{endpoint} answered {resp.status_code} with a body that is not "
                          f"a JSON object: {resp.text[:200]!r}", status=resp.status_code)
    return answer


def _refused(status: int, answer: Any, text: str, endpoint: str) -> ClientError:
    field, message = None, text[:500] or "(empty body)"
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        field = answer["error"].get("field")
        message = str(answer["error"].get("message", message))
    elif isinstance(answer, dict) and "detail" in answer:           # FastAPI's own errors
        message = str(answer["detail"])
    hint = f" (send the key in the {API_KEY_HEADER} header)" if status == 401 else ""
    return ClientError(f"HTTP {status} from {endpoint}: {message}{hint}", status=status,
                       field=field)


def _body(encoding: str, paths: list | None = None, video_fps: float | None = None,
          inputs: dict | None = None) -> dict[str, Any]:
    """The ``requests.post`` body arguments of files (``paths``) or ``inputs``."""
    if encoding not in ENCODINGS:
        raise ClientError(f"encoding {encoding!r}; expected one of {list(ENCODINGS)}")
    if paths is not None and encoding == "binary":
        return {"files": build_multipart([Path(p) for p in paths], video_fps)}
    inputs = read_inputs(paths, video_fps) if paths is not None else inputs
    return {"json": json_request(**inputs)} if encoding == "json" else \
        {"files": binary_request(**inputs)}


def predict_files(url: str, paths: list[str | Path], *, api_key: str | None = None,
                  video_fps: float | None = None, timeout: float = 60.0,
                  subject: str | None = None, encoding: str = "binary") -> dict:
    """Send files to ``{url}/v1/predict`` and return the prediction.

    Parameters
    ----------
    url : str
        The server base, e.g. ``"http://127.0.0.1:8000"``.
    paths : list[str | Path]
        Files as in :func:`build_multipart`.
    api_key : str | None
        Sent in the ``X-API-Key`` header when given.
    video_fps : float | None
        Frame rate of JPEG frames.
    timeout : float
        Seconds to wait for the answer.
    subject : str | None
        The person recorded: the server standardises the inputs with that subject's
        calibration (:func:`calibrate_files`), else subject-independently.
    encoding : str
        ``binary`` (the files as they are), ``arrays`` or ``json`` (module docstring).

    Returns
    -------
    dict
        The server's JSON answer (label, probabilities, per-modality predictions ...).

    Raises
    ------
    ClientError
        A refusal (status, field and the server's message), an unreachable endpoint, or
        inputs refused before sending.
    """
    body = _body(encoding, paths, video_fps)
    return _send(url, timeout, subject=subject, headers=_headers(api_key), **body)


def calibrate_files(url: str, subject: str, paths: list[str | Path], *,
                    api_key: str | None = None, video_fps: float | None = None,
                    timeout: float = 60.0, encoding: str = "binary") -> dict:
    """Send a calibration recording of ``subject`` (files and encoding as in
    :func:`predict_files`) to ``{url}/v1/subjects/{subject}/calibration``; later
    predictions naming the subject use its statistics. Returns the server's summary
    (segments, modalities)."""
    from urllib.parse import quote

    body = _body(encoding, paths, video_fps)
    return _send(url, timeout, path=f"/v1/subjects/{quote(subject, safe='')}/calibration",
                 headers=_headers(api_key), **body)


def predict_signals(url: str, eeg: EEGInput | None = None, speech: SpeechInput | None = None,
                    video: VideoInput | None = None, *, encoding: str = "binary",
                    api_key: str | None = None, timeout: float = 60.0,
                    subject: str | None = None) -> dict:
    """Send in-memory signals (any non-empty subset) to ``{url}/v1/predict`` as ``.npy``
    parts (:func:`binary_request`; ``encoding="binary"`` or ``"arrays"``) or as JSON
    (``"json"``: :func:`json_request`) and return the server's JSON answer; ``api_key``,
    ``timeout`` and ``subject`` as in :func:`predict_files`."""
    body = _body(encoding, inputs={"eeg": eeg, "speech": speech, "video": video})
    return _send(url, timeout, subject=subject, headers=_headers(api_key), **body)


def post_json(url: str, body: dict, *, api_key: str | None = None,
              timeout: float = 60.0, subject: str | None = None) -> dict:
    """POST a JSON body (see :func:`json_request`) to ``{url}/v1/predict``."""
    return _send(url, timeout, subject=subject, json=body, headers=_headers(api_key))


def _float_pcm(samples: np.ndarray) -> np.ndarray:
    """Samples as float in [-1, 1]: integer PCM is scaled by its type's range."""
    arr = np.asarray(samples)
    if arr.dtype.kind in "iu":
        info = np.iinfo(arr.dtype)
        mid = (int(info.max) + int(info.min) + 1) / 2                 # 0, or 128 for uint8
        return ((arr.astype(np.float64) - mid) / (int(info.max) + 1 - mid)).astype(np.float32)
    return arr.astype(np.float32, copy=False)


def json_request(eeg: EEGInput | None = None, speech: SpeechInput | None = None,
                 video: VideoInput | None = None, *, speech_as_file: bool = False,
                 jpeg_quality: int = 90) -> dict:
    """The JSON body :func:`~emoray.serving.decode.decode_json` takes, from model inputs.

    Parameters
    ----------
    eeg, speech, video : EEGInput | SpeechInput | VideoInput | None
        Any non-empty subset. Integer PCM speech is scaled to [-1, 1]; video frames
        ``(N, H, W, 3)`` uint8 are JPEG-encoded (JPEG blobs are sent as they are).
    speech_as_file : bool
        Send speech as a base64 WAV file (32-bit float, lossless) instead of samples.
    jpeg_quality : int
        JPEG quality of encoded frames.

    Returns
    -------
    dict
        A JSON-able body.
    """
    body: dict[str, Any] = {}
    if eeg is not None:
        data = np.asarray(eeg.data, dtype=np.float64)                      # (C, T)
        body["eeg"] = {"data": data.tolist(), "sfreq": float(eeg.sfreq),
                       "ch_names": [str(n) for n in eeg.ch_names]}
    if speech is not None:
        samples = _float_pcm(speech.samples)                               # (T,)
        if speech_as_file:
            import soundfile as sf

            buf = io.BytesIO()
            sf.write(buf, samples, int(speech.sample_rate), format="WAV", subtype="FLOAT")
            body["speech"] = {"audio_base64": base64.b64encode(buf.getvalue()).decode()}
        else:
            body["speech"] = {"samples": samples.tolist(),
                              "sample_rate": int(speech.sample_rate)}
    if video is not None:
        blobs = _jpeg_blobs(video.frames, jpeg_quality)
        body["video"] = {"frames_base64": [base64.b64encode(b).decode() for b in blobs],
                         "fps": None if video.fps is None else float(video.fps)}
    if not body:
        raise ClientError("no modality given; expected at least one of eeg, speech, video")
    return body


def _jpeg_blobs(frames: Any, quality: int) -> list[bytes]:
    """JPEG blobs of frames: ``(N, H, W, 3)`` uint8 encoded, blobs as they are."""
    if isinstance(frames, np.ndarray):
        from emoray.io.video import encode_jpeg

        return encode_jpeg(frames, quality=quality)                        # one per frame
    return [bytes(b) for b in frames]


def binary_request(eeg: EEGInput | None = None, speech: SpeechInput | None = None,
                   video: VideoInput | None = None, *, video_as_jpeg: bool = False,
                   jpeg_quality: int = 90) -> list[tuple]:
    """The multipart body of in-memory signals as ``.npy`` parts: the ``files=`` entries
    of a ``requests`` POST, ``(field, (filename, bytes, content_type))`` per part and
    ``(field, (None, text))`` per form field (:func:`~emoray.serving.decode.decode_multipart`
    takes them).

    Parameters
    ----------
    eeg, speech, video : EEGInput | SpeechInput | VideoInput | None
        Any non-empty subset: EEG as float32 ``(C, T)`` + ``eeg_sfreq``, ``eeg_ch_names``;
        int16 speech as int16, other speech as float32 [-1, 1], + ``speech_sample_rate``;
        uint8 frames ``(N, H, W, 3)`` as they are, JPEG blobs as JPEG parts, + ``video_fps``.
    video_as_jpeg : bool
        JPEG-encode uint8 frames (fewer bytes, lossy) at ``jpeg_quality``.
    """
    entries: list[tuple] = []
    if eeg is not None:
        data = np.asarray(eeg.data, dtype="<f4")                           # (C, T)
        entries += [("eeg", ("eeg.npy", npy_bytes(data), _NPY_TYPE)),
                    ("eeg_sfreq", (None, repr(float(eeg.sfreq)))),
                    ("eeg_ch_names", (None, json.dumps([str(n) for n in eeg.ch_names])))]
    if speech is not None:
        samples = np.asarray(speech.samples)                               # (T,)
        samples = samples.astype("<i2") if samples.dtype == np.int16 else \
            _float_pcm(samples).astype("<f4")
        entries += [("speech", ("speech.npy", npy_bytes(samples), _NPY_TYPE)),
                    ("speech_sample_rate", (None, str(int(speech.sample_rate))))]
    if video is not None:
        frames = video.frames
        if isinstance(frames, np.ndarray) and not video_as_jpeg:
            frames = np.asarray(frames, dtype=np.uint8)                    # (N, H, W, 3)
            entries.append(("video", ("video.npy", npy_bytes(frames), _NPY_TYPE)))
        else:
            entries += [("video", (f"frame_{i:05d}.jpg", b, "image/jpeg"))
                        for i, b in enumerate(_jpeg_blobs(frames, jpeg_quality))]
        if video.fps is not None:
            entries.append(("video_fps", (None, repr(float(video.fps)))))
    if not entries:
        raise ClientError("no modality given; expected at least one of eeg, speech, video")
    return entries
