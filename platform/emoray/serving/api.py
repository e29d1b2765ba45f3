"""The HTTP API of the emoray model server, independent of Ray Serve.

The Serve router (:mod:`emoray.serving.app`) and the plain FastAPI server of the benchmark
answer with the same functions, so they differ only in where the model runs. A *backend*
offers ``settings`` (:class:`~emoray.config.ServeConfig`), ``api_key_digest`` (sha256 hex or
None), ``info() -> dict``, ``async health(deep) -> dict`` and ``async predict(inputs) ->
dict``.

Endpoints (versioned; OpenAPI at ``/openapi.json``, docs at ``/docs``):

``POST /v1/predict``
    ``application/json`` (:class:`PredictRequest`) or ``multipart/form-data`` (files or
    arrays (``.npy``, ``.npz``, raw bytes) under ``eeg``, ``speech``, ``video``; see
    :mod:`emoray.serving.decode`).
``GET /v1/model``
    Version, classes, expected channels and rates.
``GET /v1/health``
    ``?deep=true`` also asks every encoder deployment.
``POST /v1/subjects/{subject}/calibration``
    A short recording of one person (the same body as ``/v1/predict``, any modalities, no
    label): the router keeps its input statistics, and every later ``/v1/predict?subject=ID``
    is standardised with them (:mod:`emoray.data.subject_norm`). Recordings of one subject
    add up; ``?reset=true`` starts the subject over. A request naming no
    subject, or one never calibrated, takes the subject-independent (pooled) path. The
    statistics live in the router replica's memory (bounded by ``max_subjects``).
``WS /v1/stream``
    A live EEG and/or audio stream in chunks, answered once per window
    (:mod:`emoray.serving.stream`).

Every refusal is a 4xx with ``{"error": {"status", "field", "kind", "message"}}``: 400 for
a body that cannot be parsed, 401 for a missing or wrong API key, 413 for a body over
``max_body_mb``, 415 for another content type, 422 for inputs the model cannot take.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from emoray.errors import ConfigError, DataError
from emoray.serving.guard import (API_KEY_HEADER, Refused, Timings, api_key_digest,  # noqa: F401
                                  check_answer, check_key, error, install_errors, key_digest,
                                  printable, refusal)
from emoray.serving.stream import STREAM_PATH, run_stream



# -- documented shapes (the decoders do the validation) -------------------------------------

class EEGJson(BaseModel):
    data: list[list[float]] = Field(..., description="(channels, samples) in volts.")
    sfreq: float = Field(..., gt=0, description="Sampling rate in Hz (any; resampled).")
    ch_names: list[str] = Field(..., description="One name per row, any order.")


class SpeechJson(BaseModel):
    samples: list[float] | None = Field(None, description="Mono waveform in [-1, 1].")
    sample_rate: int | None = Field(None, gt=0, description="Hz (any; resampled).")
    audio_base64: str | None = Field(None, description="A whole WAV or FLAC file, base64 "
                                     "(instead of samples + sample_rate).")


class VideoJson(BaseModel):
    frames_base64: list[str] = Field(..., description="One JPEG per frame, base64.")
    fps: float | None = Field(None, gt=0, description="Frame rate; null: the clip spans "
                              "the other modalities' time.")


class PredictRequest(BaseModel):
    """Any non-empty subset of the modalities."""

    eeg: EEGJson | None = None
    speech: SpeechJson | None = None
    video: VideoJson | None = None


class ModalityAnswer(BaseModel):
    label: str
    probabilities: dict[str, float]


class IncongruenceAnswer(BaseModel):
    flag: bool
    score: float = Field(..., description="JS divergence (bits) of the expressed "
                         "distribution (speech, averaged with video when given) vs EEG's.")
    threshold: float
    speech: str = Field(..., description="speech's own label")
    eeg: str = Field(..., description="EEG's own label")
    expressed: str = Field("", description="label of the expressed distribution")
    expressed_by: list[str] = Field(default_factory=list,
                                    description="modalities averaged as expressed")


class PredictResponse(BaseModel):
    label: str
    probabilities: dict[str, float]
    valence: float | None
    arousal: float | None
    modalities: list[str]
    per_modality: dict[str, ModalityAnswer]
    attention_mass: dict[str, float] | None
    incongruence: IncongruenceAnswer | None
    path: str | None = Field(None, description="JMML inference path.")
    n_segments: int
    ignored: list[str]
    stage: str
    model_version: str


class ErrorBody(BaseModel):
    status: int
    field: str | None
    kind: str | None
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


_MULTIPART_DOC = {"type": "object", "properties": {
    "eeg": {"type": "string", "format": "binary", "description": "EDF, BDF or FIF file; or "
            "float32 (channels, samples) as .npy, .npz (data, sfreq, ch_names) or raw bytes"},
    "speech": {"type": "string", "format": "binary", "description": "WAV or FLAC file; or "
               "float32/int16 (samples,) as .npy, .npz (samples, sample_rate) or raw bytes"},
    "video": {"type": "array", "items": {"type": "string", "format": "binary"},
              "description": "one MP4, or JPEG frames in order; or uint8 (frames, height, "
              "width, 3) as .npy, .npz (frames, fps) or raw bytes"},
    "video_fps": {"type": "number", "description": "frame rate of JPEG frames or arrays"},
    "eeg_sfreq": {"type": "number", "description": "Hz, of an EEG array"},
    "eeg_ch_names": {"type": "string", "description": "of an EEG array: a JSON array of "
                     "strings or names separated by commas"},
    "speech_sample_rate": {"type": "integer", "description": "Hz, of a speech array"},
    "eeg_dtype": {"type": "string", "description": "of raw EEG bytes: float32"},
    "eeg_shape": {"type": "string", "description": "of raw EEG bytes, e.g. 30,2500"},
    "speech_dtype": {"type": "string", "description": "of raw speech bytes: float32 or "
                     "int16"},
    "speech_shape": {"type": "string", "description": "of raw speech bytes (optional)"},
    "video_dtype": {"type": "string", "description": "of raw video bytes: uint8"},
    "video_shape": {"type": "string", "description": "of raw video bytes, e.g. "
                    "50,224,224,3"}}}


async def read_body(request: Request, cap_bytes: int) -> bytes:
    """The body, refusing (413) more than ``cap_bytes`` without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap_bytes:
        raise Refused(413, f"request body of {int(declared)} bytes exceeds the "
                      f"{cap_bytes} byte limit (serve.max_body_mb)", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap_bytes:
            raise Refused(413, f"request body exceeds the {cap_bytes} byte limit "
                          "(serve.max_body_mb)", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_multipart(request: Request, body: bytes):
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    from emoray.serving.decode import Upload

    async def once():
        yield body
        yield b""

    try:
        form = await MultiPartParser(request.headers, once(), max_files=4096,
                                     max_fields=64, max_part_size=1 << 20).parse()
    except (MultiPartException, ValueError, KeyError, TypeError) as err:
        raise Refused(400, f"cannot parse the multipart body: {err}", field="body") from None
    files, fields = [], {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            files.append(Upload(field=name, filename=value.filename,
                                data=await value.read(), content_type=value.content_type))
        elif name in fields:
            raise Refused(422, f"form field {name!r} given twice", field=name)
        else:
            fields[name] = value
    await form.close()
    return files, fields


async def decode_request(backend: Any, request: Request,
                         timings: Timings | None = None) -> dict[str, Any]:
    """Auth, size cap, content type, then the decoders: the request's model inputs."""
    from emoray.serving.decode import DecodeLimits

    timings = timings or Timings()
    s = backend.settings
    check_key(backend, request)
    with timings.step("read"):
        body = await read_body(request, int(s.max_body_mb * (1 << 20)))
    if not body:
        raise Refused(400, "empty request body; expected JSON or multipart with at least one "
                      "of eeg, speech, video", field="body")
    with timings.step("decode"):
        return await _decode_body(request, body, DecodeLimits(
            max_seconds=s.max_seconds, max_channels=s.max_channels, max_frames=s.max_frames,
            max_array_bytes=int(s.max_body_mb * (1 << 20)), max_pixels=s.max_pixels))


async def _decode_body(request: Request, body: bytes, limits: Any) -> dict[str, Any]:
    from emoray.serving.decode import decode_json, decode_multipart

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("application/json", ""):
        return await asyncio.to_thread(decode_json, body, limits)
    if ctype == "multipart/form-data":
        files, fields = await _parse_multipart(request, body)
        return await asyncio.to_thread(decode_multipart, files, fields, limits)
    raise Refused(415, f"content type {ctype!r}; expected application/json or "
                  "multipart/form-data", field="content-type")


def subject_id(value: str | None, field: str = "subject") -> str | None:
    """A subject id from a URL (None stays None): 1-128 printable characters, no ``/``."""
    if value is None:
        return None
    if not 0 < len(value) <= 128 or not value.isprintable() or "/" in value:
        raise Refused(422, f"{field}: expected 1-128 printable characters without '/', got "
                      f"{len(value)} characters", field=field)
    return value


async def _in_time(backend: Any, work: Any) -> Any:
    """Await ``work`` for at most ``serve.request_timeout_s``; past it, a 504 (the replica
    stops waiting and answers others; a step already running in a worker thread ends on
    its own)."""
    limit = backend.settings.request_timeout_s
    try:
        return await asyncio.wait_for(work, limit)
    except asyncio.TimeoutError:
        raise Refused(504, f"the request took longer than {limit:g} s "
                      "(serve.request_timeout_s); send less signal or raise the limit",
                      field="request", kind="timeout") from None


async def handle_predict(backend: Any, request: Request) -> JSONResponse:
    timings = Timings()
    try:
        with timings.step("total"):
            subject = subject_id(request.query_params.get("subject"))

            async def work():
                inputs = await decode_request(backend, request, timings)
                inputs["subject"] = subject
                return await backend.predict(inputs, timings)

            answer = await _in_time(backend, work())
            check_answer(answer)
    except (Refused, DataError, ConfigError) as err:
        return refusal(err)
    return JSONResponse(answer, headers={"Server-Timing": timings.header()})


async def handle_calibration(backend: Any, request: Request, subject: str) -> JSONResponse:
    """Keep the input statistics of ``subject``'s calibration recording (module docstring)."""
    try:
        subject = subject_id(subject)
        reset = request.query_params.get("reset", "").lower() in ("1", "true", "yes")

        async def work():
            inputs = await decode_request(backend, request)
            return await backend.calibrate(subject, inputs, reset)

        answer = await _in_time(backend, work())
    except (Refused, DataError, ConfigError) as err:
        return refusal(err)
    return JSONResponse(answer)


async def handle_model(backend: Any, request: Request) -> JSONResponse:
    try:
        check_key(backend, request)
    except Refused as err:
        return refusal(err)
    return JSONResponse(backend.info())


async def handle_docs(backend: Any, request: Request, app: FastAPI, what: str):
    """``/openapi.json`` or ``/docs``: behind the API key when one is set, unless
    ``serve.public_docs``."""
    from fastapi.openapi.docs import get_swagger_ui_html

    if not backend.settings.public_docs:
        try:
            check_key(backend, request)
        except Refused as err:
            return refusal(err)
    if what == "openapi":
        return JSONResponse(app.openapi())
    return get_swagger_ui_html(openapi_url="openapi.json", title="emoray API")


async def handle_health(backend: Any, request: Request) -> JSONResponse:
    deep = request.query_params.get("deep", "").lower() in ("1", "true", "yes")
    report = await backend.health(deep)
    return JSONResponse(report, status_code=200 if report.get("status") == "ok" else 503)


PREDICT_DOC = dict(
    summary="Predict the emotion of one recording from any subset of EEG, speech, video",
    response_model=PredictResponse,
    responses={s: {"model": ErrorResponse} for s in (400, 401, 413, 415, 422)},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}},
        "multipart/form-data": {"schema": _MULTIPART_DOC}}}})


CALIBRATION_DOC = dict(
    summary="Calibrate a subject: keep the input statistics of a short recording of them",
    responses={s: {"model": ErrorResponse} for s in (400, 401, 413, 415, 422)},
    openapi_extra=PREDICT_DOC["openapi_extra"])


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` include the JSON request schema (the route reads the raw body
    itself, to take JSON and multipart on one path)."""
    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                          description=app.description)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        req = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(req.pop("$defs", {}))
        schemas["PredictRequest"] = req
        app.openapi_schema = doc
        return doc

    app.openapi = openapi


def new_app() -> FastAPI:
    from emoray import __version__

    app = FastAPI(title="emoray", version=__version__, description=(
        "Multimodal emotion recognition from EEG, speech and video."),
        docs_url=None, redoc_url=None, openapi_url=None)       # served behind the key
    install_openapi(app)
    install_errors(app)
    return app


def make_app(backend: Any) -> FastAPI:
    """A plain FastAPI app over ``backend`` (no Ray): the benchmark's single-process server."""
    app = new_app()

    @app.post("/v1/predict", **PREDICT_DOC)
    async def predict(request: Request):
        return await handle_predict(backend, request)

    @app.get("/v1/model")
    async def model(request: Request):
        return await handle_model(backend, request)

    @app.get("/v1/health")
    async def health(request: Request):
        return await handle_health(backend, request)

    @app.post("/v1/subjects/{subject}/calibration", **CALIBRATION_DOC)
    async def calibration(subject: str, request: Request):
        return await handle_calibration(backend, request, subject)

    @app.websocket(STREAM_PATH)
    async def stream(websocket: WebSocket):
        await run_stream(backend, websocket)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        return await handle_docs(backend, request, app, "openapi")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        return await handle_docs(backend, request, app, "docs")

    return app
