"""Array parts of a multipart request -> model inputs (see :mod:`emoray.serving.decode`).

A modality's part is an array when it is an ``.npy`` file, an ``.npz`` archive, or raw
little-endian bytes described by the form fields ``<modality>_dtype`` and
``<modality>_shape``. Accepted dtypes (:data:`DTYPES`): EEG float32 ``(channels, samples)``
in volts; speech float32 in [-1, 1] or int16 PCM ``(samples,)``; video uint8 RGB
``(frames, height, width, 3)``. What an array does not say comes from form fields
(:data:`META_KEYS`: ``eeg_sfreq``, ``eeg_ch_names``, ``speech_sample_rate``,
``video_fps``) or, in an ``.npz``, from arrays named as the JSON keys (``data``, ``sfreq``,
``ch_names``; ``samples``, ``sample_rate``; ``frames``, ``fps``).

Refusals name the part or field and what was expected, in the decoder's own words; what
numpy or zipfile said goes to the ``emoray.serving.decode`` log only.

Nothing is trusted before it is checked against the bytes: an ``.npy`` header's shape and
dtype are read with :mod:`numpy.lib.format` and must account for every byte after the
header before an array is made (object arrays, i.e. pickles, are refused from the header);
an ``.npz`` member's declared size is charged to the request's byte budget
(``DecodeLimits.max_array_bytes``) before it is inflated, and it is inflated no further.
"""

from __future__ import annotations

import io
import json
import logging
import math
import zipfile
import zlib
from typing import Any

import numpy as np

from emoray.serving.decode.common import (_A, _EXT_MODALITY, _TAKES, DecodeLimits, Upload,
                                          _bad, _channel_names, _extension, _limit,
                                          _limit_seconds, _magic, _positive, _show,
                                          _upload_source, short_reason)
from emoray.serving.decode.media import MAX_JPEG_PIXELS, _resize, fit_size

_log = logging.getLogger("emoray.serving.decode")
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
ARRAY_EXTENSIONS = (".npy", ".npz")
#: The dtypes a modality's signal array may have (little-endian; uint8 has no byte order).
DTYPES: dict[str, tuple[np.dtype, ...]] = {
    "eeg": (np.dtype("<f4"),), "speech": (np.dtype("<f4"), np.dtype("<i2")),
    "video": (np.dtype("u1"),)}
SHAPES = {"eeg": "(channels, samples)", "speech": "(samples,)",
          "video": "(frames, height, width, 3)"}
#: Per modality: the signal's name in an ``.npz``, then its metadata names. A metadata
#: value comes from the ``.npz`` or from the form field ``<modality>_<name>``.
NPZ_KEYS = {"eeg": ("data", "sfreq", "ch_names"), "speech": ("samples", "sample_rate"),
            "video": ("frames", "fps")}
META_KEYS = {m: keys[1:] for m, keys in NPZ_KEYS.items()}
#: Form fields of a raw part.
RAW_KEYS = ("dtype", "shape")
_NDIM = {"eeg": 2, "speech": 1, "video": 4}
_INT16_SCALE = np.float32(1 / 32768)         # as libsndfile reads 16-bit PCM: [-1, 1)
_HEADER_ERRORS = (ValueError, TypeError, SyntaxError, EOFError, OverflowError,
                  MemoryError, RecursionError)   # what numpy's header parser raises on junk


def form_fields(modality: str) -> tuple[str, ...]:
    """The form fields that describe an array part of ``modality``."""
    return tuple(f"{modality}_{k}" for k in (*META_KEYS[modality], *RAW_KEYS))


def array_kind(up: Upload, fields: dict[str, str]) -> str | None:
    """``"npy"``, ``"npz"``, ``"raw"`` or None (a file: EDF, WAV, MP4, JPEG ...)."""
    ext = _extension(up.filename)
    if _given(fields, f"{up.field}_dtype"):
        if ext in ARRAY_EXTENSIONS or ext in _EXT_MODALITY or up.data.startswith(
                (NPY_MAGIC, ZIP_MAGIC)):
            what = f"a {ext} file" if ext else "an .npy/.npz file"
            raise _bad("request", f"{up.field}_dtype", f"describes raw bytes, but the "
                       f"{up.field} part is {what}; send raw little-endian bytes "
                       f"(no header, e.g. {up.field}.bin) or leave {up.field}_dtype out")
        return "raw"
    if _given(fields, f"{up.field}_shape"):
        raise _bad("request", f"{up.field}_shape", f"given without {up.field}_dtype; a raw "
                   "part needs both (an .npy/.npz part carries its own)")
    if ext == ".npy" or ext not in _EXT_MODALITY and up.data.startswith(NPY_MAGIC):
        return "npy"
    if ext == ".npz" or ext not in _EXT_MODALITY and up.data.startswith(ZIP_MAGIC):
        return "npz"
    if ext not in _EXT_MODALITY and _magic(up.data) is None and \
            (up.content_type or "").lower() == "application/octet-stream":
        raise _bad(_upload_source(up.filename, up.field), up.field, "unrecognised "
                   f"application/octet-stream bytes: raw arrays need the form fields "
                   f"{up.field}_dtype and {up.field}_shape {SHAPES[up.field]}; files need a "
                   f"known format ({_TAKES[up.field]}) or an .npy/.npz", "unknown_format")
    return None


def check_form_fields(kinds: dict[str, str | None], fields: dict[str, str],
                      files: set[str]) -> None:
    """Refuse array form fields given for a modality that sent no array part (``files``:
    the modalities sent as files; ``video_fps`` also serves JPEG frames and is checked by
    :func:`~emoray.serving.decode.decode_multipart`)."""
    for m, kind in kinds.items():
        given = [n for n in form_fields(m) if n != "video_fps" and _given(fields, n)]
        if kind is None and given:
            raise _bad("request", given[0], f"given without {_A[m]} array part (.npy, .npz "
                       "or raw bytes)" + ("; a file carries its own" if m in files else ""))


class ByteBudget:
    """What the arrays of one request may take once decoded (``max_array_bytes``)."""

    def __init__(self, limits: DecodeLimits):
        self.limit, self.used = limits.max_array_bytes, 0

    def take(self, nbytes: int, source: str, field: str) -> None:
        self.used += nbytes
        if self.used > self.limit:
            raise _bad(source, field, f"arrays of {self.used} bytes once decoded; the limit "
                       f"is {self.limit} bytes per request (serve.max_body_mb)")


def npy_bytes(arr: np.ndarray) -> bytes:
    """``arr`` in numpy's ``.npy`` format, never pickled (what :func:`decode_array` reads)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def decode_array(up: Upload, kind: str, fields: dict[str, str], limits: DecodeLimits,
                 budget: ByteBudget) -> Any:
    """One array part -> the modality's ``EEGInput``, ``SpeechInput`` or ``VideoInput``."""
    m, source = up.field, _upload_source(up.filename, up.field)
    members: dict[str, bytes] = {}
    if kind == "npz":
        members = _npz_members(up.data, m, source, budget)
        key = NPZ_KEYS[m][0]
        if key not in members:
            raise _bad(source, m, f"the .npz holds {sorted(members) or 'no arrays'}; expected "
                       f"{m} arrays {list(NPZ_KEYS[m])} ({key} {SHAPES[m]} required)")
        signal = _npy(members.pop(key), source, f"{m}.{key}", DTYPES[m])
        where = (source, f"{m}.{key}")
    elif kind == "npy":
        budget.take(len(up.data), source, m)
        signal, where = _npy(up.data, source, m, DTYPES[m]), (source, m)
    else:
        budget.take(len(up.data), source, m)
        signal, where = _raw(up.data, fields, m, source), (source, m)
    meta = {k: _meta(m, k, members, fields, source) for k in META_KEYS[m]}
    if m == "eeg":
        return _eeg(signal, meta["sfreq"], meta["ch_names"], where, limits)
    if m == "speech":
        return _speech(signal, meta["sample_rate"], where, limits)
    return _video(signal, meta["fps"], where, limits)


# -- signals -> inputs ----------------------------------------------------------------------

def _eeg(data: np.ndarray, sfreq: float, names: Any, where: tuple[str, str],
         limits: DecodeLimits) -> Any:
    from emoray.predict import EEGInput

    _shape(data, "eeg", where)
    _limit(data.shape[0], limits.max_channels, "channels", *where)
    _limit_seconds(data.shape[1] / sfreq, limits, *where)
    ch_names = names(data.shape[0])                # checked against the rows
    _finite(data, where)
    return EEGInput(np.ascontiguousarray(data), sfreq, ch_names)                # (C, T) f32


def _speech(samples: np.ndarray, rate: float, where: tuple[str, str],
            limits: DecodeLimits) -> Any:
    from emoray.predict import SpeechInput

    _shape(samples, "speech", where)
    _limit_seconds(samples.shape[0] / rate, limits, *where)
    if samples.dtype.kind == "i":
        samples = samples.astype(np.float32) * _INT16_SCALE                      # (T,) f32
    else:
        _finite(samples, where)
    return SpeechInput(np.ascontiguousarray(samples, dtype=np.float32), int(rate))


def _video(frames: np.ndarray, fps: float | None, where: tuple[str, str],
           limits: DecodeLimits) -> Any:
    from emoray.predict import VideoInput

    _shape(frames, "video", where)
    n, height, width, _ = frames.shape
    _limit(n, limits.max_frames, "frames", *where)
    if width * height > MAX_JPEG_PIXELS:
        raise _bad(*where, f"frames of {width}x{height} pixels; the limit is "
                   f"{MAX_JPEG_PIXELS} pixels per frame")
    if fps is not None:
        _limit_seconds(n / fps, limits, *where)
    out_w, out_h = fit_size(width, height, limits.max_video_side)
    if (out_w, out_h) == (width, height):
        return VideoInput(np.ascontiguousarray(frames), fps)
    out = np.empty((n, out_h, out_w, 3), dtype=np.uint8)                # (N, H', W', 3)
    for i in range(n):
        out[i] = _resize(np.ascontiguousarray(frames[i]), out_h, out_w)
    return VideoInput(out, fps)


def _shape(arr: np.ndarray, m: str, where: tuple[str, str]) -> None:
    if arr.ndim != _NDIM[m] or m == "video" and arr.shape[-1] != 3:
        raise _bad(*where, f"array of shape {arr.shape}; expected {_NDIM[m]}-D {SHAPES[m]}"
                   + (" RGB" if m == "video" else " mono" if m == "speech" else ""))
    if arr.size == 0:
        raise _bad(*where, f"empty array of shape {arr.shape}; expected {SHAPES[m]} with "
                   "at least one sample in each", "truncated")


def _finite(arr: np.ndarray, where: tuple[str, str]) -> None:
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise _bad(*where, f"{bad} NaN/inf value(s); expected finite numbers",
                   "invalid_value")


# -- metadata: form fields or npz members ---------------------------------------------------

def _given(fields: dict[str, str], name: str) -> bool:
    return name in fields and bool(str(fields[name]).strip())


def _meta(m: str, key: str, members: dict[str, bytes], fields: dict[str, str],
          source: str) -> Any:
    """A metadata value (sfreq, ch_names, sample_rate, fps) from the npz or the form."""
    form = f"{m}_{key}"
    if key in members and _given(fields, form):
        raise _bad("request", form, f"given twice: as the form field and as {key!r} in the "
                   f"{m} .npz; give one")
    if key in members:
        field = f"{m}.{key}"
        if key == "ch_names":
            arr = _npy(members[key], source, field, None)
            if arr.dtype.kind != "U" or arr.ndim != 1:
                raise _bad(source, field, f"array of {arr.dtype} shape {arr.shape}; expected "
                           "a 1-D array of strings (numpy unicode, e.g. np.array(['Fp1', "
                           "'Fp2']))")
            names = [str(n) for n in arr]
            return lambda rows: _channel_names(names, rows, source, field, f"{m}.data")
        arr = _npy(members[key], source, field, None)
        if arr.size != 1 or arr.dtype.kind not in "iuf":
            raise _bad(source, field, f"array of {arr.dtype} shape {arr.shape}; expected one "
                       "number", "sample_rate")
        return _positive(arr.reshape(()).item(), source, field,
                         integer=key == "sample_rate")
    if not _given(fields, form):
        if key == "fps":
            return None
        raise _bad("request", form, f"missing; {_A[m]} array needs {form} (or {key!r} "
                   "inside an .npz)", "sample_rate" if key != "ch_names" else "layout")
    text = str(fields[form]).strip()
    if key == "ch_names":
        names = _form_names(text, form)
        return lambda rows: _channel_names(names, rows, "request", form, m)
    try:
        value = float(text)
    except ValueError:
        raise _bad("request", form, f"expected a number > 0, got {_show(text)}",
                   "sample_rate") from None
    return _positive(value, "request", form, integer=key == "sample_rate")


def _form_names(text: str, field: str) -> list:
    """Channel names: a JSON array of strings, or names separated by commas."""
    if not text.startswith("["):
        return [n.strip() for n in text.split(",")]
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        _log.info("%s: %s", field, short_reason(exc))
        raise _bad("request", field, "starts with '[' but is not valid JSON; expected a "
                   "JSON array of strings, e.g. [\"Fp1\", \"Fp2\"], or Fp1,Fp2") from None


# -- .npy / .npz / raw bytes ----------------------------------------------------------------

def _dtype_name(dt: np.dtype) -> str:
    return f"{dt.name} ({dt.str!r})"


def _check_dtype(dt: np.dtype, allowed: tuple[np.dtype, ...] | None, source: str,
                 field: str) -> None:
    """Refuse object dtypes (pickles) always, and any dtype not in ``allowed`` (None: any
    other)."""
    if dt.hasobject:
        raise _bad(source, field, f"object array ({dt.str!r}: pickled Python objects are "
                   "never loaded); expected plain numbers", "invalid_value")
    if allowed is None or dt in allowed:
        return
    expected = " or ".join(_dtype_name(d) for d in allowed)
    if dt.byteorder == ">" and dt.newbyteorder("<") in allowed:
        raise _bad(source, field, f"big-endian {_dtype_name(dt)}; expected little-endian "
                   f"{expected}", "invalid_value")
    raise _bad(source, field, f"dtype {_dtype_name(dt)}; expected {expected}",
               "invalid_value")


def _npy(data: bytes, source: str, field: str,
         allowed: tuple[np.dtype, ...] | None) -> np.ndarray:
    """An ``.npy`` blob -> its array, the header checked against the bytes first.

    ``allowed``: the dtypes taken (None: any dtype numpy can load without pickling)."""
    from numpy.lib import format as npy_format

    if not data.startswith(NPY_MAGIC) or len(data) < 10:
        raise _bad(source, field, f"not an .npy array (it does not start with {NPY_MAGIC!r} "
                   "and a version); expected numpy's .npy format (np.save)", "unreadable")
    if data[6:8] not in (b"\x01\x00", b"\x02\x00"):
        raise _bad(source, field, f".npy format version {data[6]}.{data[7]}; expected 1.0 "
                   "or 2.0 (np.save)", "unreadable")
    fp = io.BytesIO(data)
    try:
        read_header = (npy_format.read_array_header_1_0 if data[6] == 1
                       else npy_format.read_array_header_2_0)
        npy_format.read_magic(fp)
        shape, fortran_order, dtype = read_header(fp)
    except _HEADER_ERRORS as exc:
        _log.info("%s [%s]: .npy header: %s", source, field, short_reason(exc))
        raise _bad(source, field, "corrupt or truncated .npy header (a Python dict of "
                   "descr, fortran_order and shape expected); expected numpy's .npy format",
                   "unreadable") from None
    _check_dtype(dtype, allowed, source, field)
    if any(d < 0 for d in shape):
        raise _bad(source, field, f"the .npy header declares shape {shape}; expected "
                   "sizes >= 0", "unreadable")
    need, have = math.prod(shape) * dtype.itemsize, len(data) - fp.tell()
    if have != need:
        short = have < need
        raise _bad(source, field, f"{'truncated ' if short else ''}.npy: its header declares "
                   f"shape {shape} {dtype.name} ({need} bytes) and {have} bytes follow it",
                   "truncated" if short else "layout")
    try:
        arr = npy_format.read_array(io.BytesIO(data), allow_pickle=False)
    except _HEADER_ERRORS as exc:      # not expected once the sizes agree; never a 5xx
        _log.info("%s [%s]: .npy data: %s", source, field, short_reason(exc))
        raise _bad(source, field, "unreadable .npy data", "unreadable") from None
    return arr


def _npz_members(data: bytes, m: str, source: str, budget: ByteBudget) -> dict[str, bytes]:
    """The ``.npy`` members of an ``.npz``, by name (``data.npy`` -> ``data``); each one's
    declared size is charged to ``budget`` before it is inflated."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError,
            NotImplementedError) as exc:
        _log.info("%s [%s]: .npz: %s", source, m, short_reason(exc))
        raise _bad(source, m, "not a readable .npz (zip) archive: corrupt or truncated; "
                   "expected numpy's .npz format (np.savez)", "unreadable") from None
    names: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if key not in NPZ_KEYS[m]:
            raise _bad(source, m, f"unknown array {_show(key)} in the .npz; expected "
                       f"{list(NPZ_KEYS[m])}")
        if key in names:
            raise _bad(source, f"{m}.{key}", "given twice in the .npz")
        names[key] = info
    out = {}
    for key, info in names.items():
        budget.take(info.file_size, source, f"{m}.{key}")
        try:
            with archive.open(info) as member:
                out[key] = member.read(info.file_size + 1)    # inflates no further
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
                NotImplementedError, RuntimeError) as exc:    # RuntimeError: encrypted
            _log.info("%s [%s.%s]: .npz member: %s", source, m, key, short_reason(exc))
            raise _bad(source, f"{m}.{key}", "corrupt, truncated or encrypted .npz member",
                       "unreadable") from None
        if len(out[key]) != info.file_size:
            raise _bad(source, f"{m}.{key}", f"corrupt .npz member: {len(out[key])} bytes, "
                       f"its entry declares {info.file_size}", "unreadable")
    return out


def _form_dtype(text: str, m: str) -> np.dtype:
    field = f"{m}_dtype"
    expected = " or ".join(_dtype_name(d) for d in DTYPES[m])
    try:
        if len(text) > 32:
            raise ValueError("longer than 32 characters")
        dt = np.dtype(text.strip())
    except (TypeError, ValueError, SyntaxError) as exc:
        _log.info("%s: %s", field, short_reason(exc))
        raise _bad("request", field, f"unknown dtype {_show(text)}; expected {expected}",
                   "invalid_value") from None
    _check_dtype(dt, DTYPES[m], "request", field)
    return dt


def _form_shape(text: str, m: str) -> tuple[int, ...]:
    field = f"{m}_shape"
    parts = [p.strip() for p in text.strip().strip("()[]").split(",")]
    parts = parts[:-1] if len(parts) > 1 and not parts[-1] else parts     # "(5,)"
    if not all(p.isdigit() and len(p) <= 12 for p in parts):
        raise _bad("request", field, f"expected whole numbers separated by commas, e.g. "
                   f"{_example_shape(m)}, got {_show(text)}")
    shape = tuple(int(p) for p in parts)
    if len(shape) != _NDIM[m]:
        raise _bad("request", field, f"{len(shape)} dimension(s) {shape}; expected "
                   f"{_NDIM[m]}-D {SHAPES[m]}")
    return shape


def _example_shape(m: str) -> str:
    return {"eeg": "30,2500", "speech": "80000", "video": "50,224,224,3"}[m]


def _raw(data: bytes, fields: dict[str, str], m: str, source: str) -> np.ndarray:
    """Raw little-endian bytes shaped by ``<m>_dtype`` and ``<m>_shape`` (speech: shape
    optional), the declared shape checked against the byte count."""
    dtype = _form_dtype(str(fields[f"{m}_dtype"]), m)
    if len(data) % dtype.itemsize:
        raise _bad(source, m, f"{len(data)} bytes is not a whole number of {dtype.name} "
                   f"items ({dtype.itemsize} bytes each)", "truncated")
    count = len(data) // dtype.itemsize
    if _given(fields, f"{m}_shape"):
        shape = _form_shape(str(fields[f"{m}_shape"]), m)
    elif m == "speech":
        shape = (count,)
    else:
        raise _bad("request", f"{m}_shape", f"missing; a raw {m} part needs {m}_shape "
                   f"{SHAPES[m]}, e.g. {_example_shape(m)}")
    if math.prod(shape) != count:
        raise _bad("request", f"{m}_shape", f"shape {shape} holds {math.prod(shape)} items; "
                   f"the {m} part holds {count} {dtype.name} items ({len(data)} bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()      # writable
