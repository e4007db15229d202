"""The FastAPI application: REST API, job endpoints, the web page and its offline assets.

Every route is a thin layer over the library: requests become a
:class:`~diffusionsat.generation.GenerationRequest` (validated by the library, errors become 422
naming the field and its allowed range), work goes through the bounded :class:`JobQueue`, and
files are written by :mod:`diffusionsat.outputs` into one folder per job under generated names.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import re
import shutil
import tempfile
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..generation import GenerationRequest
from ..metadata import VALID_RANGES, MetadataError, SatMetadata, describe_range, parse_date
from .config import ServerConfig
from .jobs import Job, JobQueue, JobState, QueueFull, ShuttingDown
from .tasks import (
    ConditionalInputs,
    OverLimit,
    ServedModel,
    TaskUnavailable,
    check_available,
    check_work,
    conditional_work,
    generate_work,
    size_multiple,
)
from .uploads import UploadedImage, UploadError, check_mask, inspect_image

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
FILE_NAME = re.compile(r"^(\d{1,3})\.(png|json|tif)$")
MEDIA_TYPES = {"png": "image/png", "json": "application/json", "tif": "image/tiff"}
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'")


class ApiError(Exception):
    """An error answer: ``{"error": code, "detail": ..., "field": ..., "allowed": ...}``."""

    def __init__(self, status: int, code: str, detail: str, *, field: str | None = None,
                 allowed: str | None = None, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}
        self.body: dict[str, Any] = {"error": code, "detail": detail, **extra}
        if field is not None:
            self.body["field"] = field
        if allowed is not None:
            self.body["allowed"] = allowed


def _error_doc(text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"example": {"error": "code", "detail": text}}}}


#: Error answers every job-creating endpoint may give (shown in the OpenAPI document).
JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error_doc("missing or wrong bearer token (only when the server has --token)"),
    413: _error_doc("request body or an uploaded image is over the size limits"),
    422: _error_doc("a field is invalid (`invalid_field`), or the request's work is over a server limit "
                    "(`over_limit`, `limit` names it); `field` names the field and `detail` the allowed range"),
    429: _error_doc("the job queue is full; retry after `Retry-After` seconds"),
    503: _error_doc("the server is shutting down; retry after `Retry-After` seconds"),
}
TASK_ERRORS: dict[int | str, dict[str, Any]] = {
    **JOB_ERRORS,
    409: _error_doc("the served model lacks the ControlNet this task needs; `component` names it"),
    501: _error_doc("the model has the component but this diffusionsat version cannot run the task"),
}


#: ``?wait=true``: answer when the job has finished (200) instead of at once (202); disconnecting cancels it.
WaitQuery = Annotated[bool, Query(description="Hold the connection until the job ends (200 with the finished "
                                              "job); a client that disconnects meanwhile cancels its job.")]
WAIT_POLL_SECONDS = 0.05


def field_error(field: str, detail: str, allowed: str | None = None, status: int = 422) -> ApiError:
    return ApiError(status, "invalid_field" if status == 422 else "too_large", detail, field=field, allowed=allowed)


# --- request bodies ---------------------------------------------------------------------------------
class GenerateBody(BaseModel):
    """``POST /v1/generate``. Unset fields take the library's defaults; ranges are checked there."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "prompt": "a satellite image of farmland in united states",
        "metadata": {"lat": 47.0, "lon": -99.2, "gsd": 5.0, "cloud_cover": 0.1, "date": "2019-07-15"},
        "seed": 1, "steps": 25, "guidance_scale": 3.0, "num_images": 1,
    }})

    prompt: str = Field(description="Text prompt, e.g. 'a satellite image of farmland in united states'.")
    metadata: dict[str, Any] | None = Field(None, description=(
        "lat [-90, 90], lon [-180, 180], gsd (0, 1000] m/px, cloud_cover [0, 1], date (ISO 8601) or "
        "year/month/day; any field may be left out (unknown)."))
    seed: int | None = Field(None, description="Seed of image 0 (image i uses seed + i); random if omitted.")
    steps: int | None = Field(None, description="Denoising steps, [1, 1000].")
    guidance_scale: float | None = Field(None, description="Classifier-free guidance, [0, 50].")
    metadata_guidance_scale: float | None = Field(None, description="Separate metadata guidance, [0, 50].")
    negative_prompt: str | None = None
    anchored_guidance: bool = Field(True, description=(
        "Guide against the model's location-anchored branch when the request gives lat and lon and the "
        "model has one (the default model does); false: the all-unknown branch."))
    scheduler: str | None = Field(None, description="ddim, ddpm, dpm++, euler, euler-a, heun, lms, pndm, unipc.")
    width: int | None = Field(None, description="Pixels; a multiple of the model's size multiple (GET /v1/model).")
    height: int | None = None
    num_images: int | None = Field(None, description="Images to generate, [1, 64].")
    geotiff: bool | None = Field(None, description="Write a GeoTIFF too (default: when lat, lon and gsd are given).")
    cloud_cover_percent: bool = Field(False, description="Read metadata.cloud_cover as percent [0, 100].")


def sampling_form(
    prompt: Annotated[str, Form()] = "",
    metadata: Annotated[str | None, Form(description="JSON object, as in /v1/generate")] = None,
    seed: Annotated[int | None, Form()] = None,
    steps: Annotated[int | None, Form()] = None,
    guidance_scale: Annotated[float | None, Form()] = None,
    scheduler: Annotated[str | None, Form()] = None,
    num_images: Annotated[int | None, Form()] = None,
    geotiff: Annotated[bool | None, Form()] = None,
    cloud_cover_percent: Annotated[bool, Form()] = False,
) -> dict[str, Any]:
    """The sampling fields shared by the multipart task endpoints (metadata arrives as JSON text)."""
    fields = {k: v for k, v in locals().items() if v is not None}
    if metadata is not None:
        try:
            fields["metadata"] = json.loads(metadata)
        except json.JSONDecodeError as err:
            raise field_error("metadata", f"metadata: not valid JSON ({err.msg})") from None
    return fields


# --- validation through the library ---------------------------------------------------------------
def _library_field(message: str) -> str:
    """The field a library ``ValueError`` names: its messages start with ``field=value:`` or ``field:``."""
    match = re.match(r"^([A-Za-z_][\w.\[\]]*)\s*[=:]", message)
    return match.group(1) if match else "request"


def parse_metadata(raw: Any, percent: bool = False, prefix: str = "metadata") -> SatMetadata:
    try:
        return SatMetadata.from_dict(raw or {}, cloud_cover_percent=percent)
    except MetadataError as err:
        allowed = describe_range(err.field) if err.field in VALID_RANGES else None
        if err.field == "date":
            allowed = "ISO 8601: YYYY-MM-DD, YYYY-MM or YYYY"
        name = prefix if err.field == "metadata" else f"{prefix}.{err.field}"
        raise field_error(name, f"{prefix}.{err}" if err.field != "metadata" else str(err), allowed) from None


def build_request(fields: dict[str, Any], model: ServedModel, size: tuple[int, int] | None = None,
                  config: ServerConfig | None = None) -> tuple[GenerationRequest, bool]:
    """A validated GenerationRequest and whether to write GeoTIFFs, or a 422 naming the field.

    With ``config``, the request's work (pixels × images × steps, estimated memory) is checked
    against its limits; ``size`` (a conditional task's output) is sampled tile by tile.
    """
    fields = dict(fields)
    metadata = parse_metadata(fields.pop("metadata", None), fields.pop("cloud_cover_percent", False))
    geotiff = fields.pop("geotiff", None)
    try:
        request = GenerationRequest(metadata=metadata, **fields).validate()
        pipe = model.pipeline
        width, height = size or (request.width or pipe.default_size, request.height or pipe.default_size)
        pipe.check_inputs(request.prompt, height, width, request.steps, request.guidance_scale, request.num_images)
        if config is not None:
            check_work(pipe, config, width=width, height=height, num_images=request.num_images, steps=request.steps,
                       tile=pipe.default_size if size is not None else None)
    except OverLimit as err:
        raise ApiError(422, "over_limit", str(err), field=err.field, allowed=err.allowed, limit=err.limit) from None
    except ValueError as err:
        field = _library_field(str(err))
        field = {"num_inference_steps": "steps", "num_images_per_prompt": "num_images"}.get(field, field)
        raise field_error(field, str(err)) from None
    georeferenced = None not in (metadata.lat, metadata.lon, metadata.gsd)
    if geotiff and not georeferenced:
        raise field_error("geotiff", "geotiff: a GeoTIFF needs metadata lat, lon and gsd to be georeferenced")
    return request, georeferenced if geotiff is None else bool(geotiff)


BANDS_HELP = ("Bands to use, comma-separated: 1-based indices (1,2,3) or names (B04,B03,B02,B08); "
              "default: all bands, or for super-resolution the bands the ControlNet was trained on")
CONSISTENCY_HELP = ("Back-project the result onto the input, so that its scale-times average reproduces the "
                    "input's pixels (RGB inputs); false: the ControlNet's raw output")


def _bands(text: str | None, image: UploadedImage) -> str | None:
    """Check band indices against the upload's band count (names are checked by the reader)."""
    if text is None or not text.strip():
        return None
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise field_error("bands", f"bands={text!r}: empty entry; give e.g. 1,2,3 or B04,B03,B02")
    for part in parts:
        if part.isdigit() and not 1 <= int(part) <= image.bands:
            raise field_error("bands", f"bands={text!r}: band {part} out of range; allowed [1, {image.bands}]",
                              f"[1, {image.bands}]")
    return ",".join(parts)


async def read_upload(upload: UploadFile, field: str, config: ServerConfig) -> UploadedImage:
    """Read at most the size limit (one byte more tells it was exceeded), then check the header."""
    data = await upload.read(config.max_upload_bytes + 1)
    try:  # header parsing in a thread: the event loop keeps answering other clients
        return await asyncio.to_thread(inspect_image, field, upload.filename, data, max_bytes=config.max_upload_bytes,
                                       max_pixels=config.max_image_pixels, max_bands=config.max_bands)
    except UploadError as err:
        raise field_error(err.field, str(err), status=err.status) from None


# --- views ----------------------------------------------------------------------------------------
def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).isoformat(timespec="seconds")


def job_view(job: Job, queue: JobQueue) -> dict[str, Any]:
    base = f"/v1/jobs/{job.id}"
    results = []
    if job.state is JobState.SUCCEEDED:
        for result in job.results:
            files = {"geotiff" if kind == "tif" else kind: f"{base}/files/{result.index}.{kind}" for kind in result.files}
            results.append({"index": result.index, "seed": result.record.get("seed"),
                            "metadata": result.record.get("metadata"), "files": files, "record": result.record})
    return {
        "id": job.id,
        "task": job.task,
        "status": job.state.value,
        "progress": job.progress,
        "step": job.step,
        "steps": job.steps,
        "queue_position": queue.position(job),
        "error": job.error,
        "created": _iso(job.created),
        "started": _iso(job.started),
        "finished": _iso(job.finished_at),
        "request": job.summary,
        "links": {"self": base},
        "results": results,
    }


# --- middleware -----------------------------------------------------------------------------------
class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Request body limits (413, also for chunked bodies) and security headers on every answer."""

    def __init__(self, app: Any, config: ServerConfig):
        self.app = app
        self.config = config

    def limit_for(self, path: str) -> int:
        if path.startswith(("/v1/superres", "/v1/temporal", "/v1/inpaint")):
            return self.config.max_upload_bytes * (self.config.max_frames + 1) + 64 * 1024
        return self.config.max_json_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._too_large(send, limit)
            return
        received = 0
        exceeded = False
        replaced = False

        async def limited_receive() -> dict:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal replaced
            if exceeded:  # whatever the app answered after the overflow becomes a 413
                if message["type"] == "http.response.start" and not replaced:
                    replaced = True
                    await self._too_large(send, limit)
                return
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers") or []) + [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", CSP.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not replaced:
                await self._too_large(send, limit)

    @staticmethod
    async def _too_large(send: Any, limit: int) -> None:
        body = json.dumps({"error": "too_large", "detail": f"request body exceeds {limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# --- the application ------------------------------------------------------------------------------
def create_app(model: str | Path | None = None, *, pipeline: Any = None, config: ServerConfig | None = None,
               **settings: Any) -> FastAPI:
    """Build the server for ``model`` (a folder, or the embedded default model when ``None``).

    ``pipeline`` serves an already loaded pipeline instead (``model`` then only names it).
    ``settings`` override :class:`ServerConfig` fields (``host``, ``token``, ``workers``, …).
    Raises ``ValueError`` for an unsafe bind and ``ModelNotFoundError`` when there is no model.
    """
    config = config or ServerConfig()
    for key, value in settings.items():
        if not hasattr(config, key):
            raise TypeError(f"create_app() got an unknown setting {key!r}")
        setattr(config, key, value)
    config.validate()
    served = (ServedModel.from_pipeline(pipeline, str(model or "in-memory")) if pipeline is not None
              else ServedModel.load(model, device=config.device))
    own_output_dir = config.output_dir is None
    if own_output_dir:
        config.output_dir = Path(tempfile.mkdtemp(prefix="diffusionsat-serve-"))
    else:
        config.output_dir = Path(config.output_dir)
        config.output_dir.mkdir(parents=True, exist_ok=True)
    queue = JobQueue(served.workers(config.workers), config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        queue.start()
        logger.info("serving %s (version %s); outputs in %s", served.name, served.version, config.output_dir)
        try:
            yield
        finally:
            await asyncio.to_thread(queue.shutdown)
            if own_output_dir:
                shutil.rmtree(config.output_dir, ignore_errors=True)

    app = FastAPI(
        title="DiffusionSat", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Text + metadata conditioned diffusion for satellite imagery. Long work runs as jobs: "
                    "POST returns a job id, GET /v1/jobs/{id} reports progress and result links.",
    )
    app.state.config = config
    app.state.model = served
    app.state.queue = queue
    app.add_middleware(GuardMiddleware, config=config)
    _install_error_handlers(app)

    def require_token(request: Request) -> None:
        if config.token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not config.tokens_equal(value.strip()):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token; send 'Authorization: Bearer TOKEN'",
                           headers={"WWW-Authenticate": "Bearer"})

    async def submit(task: str, work: Any, summary: dict[str, Any], http: Request | None = None,
                     wait: bool = False) -> JSONResponse:
        """Queue the job; answer 202 at once, or with ``wait`` hold the connection until it ends.

        A waiting client that disconnects cancels its job (at the next network block).
        """
        try:
            job = queue.submit(task, work, summary)
        except ShuttingDown as err:
            raise ApiError(503, "shutting_down", str(err), headers={"Retry-After": str(err.retry_after)}) from None
        except QueueFull as err:
            raise ApiError(429, "queue_full", f"{err}; retry later", headers={"Retry-After": str(err.retry_after)}) from None
        logger.info("job %s queued: %s", job.id, task)
        headers = {"Location": f"/v1/jobs/{job.id}"}
        if not wait or http is None:
            return JSONResponse(job_view(job, queue), status_code=202, headers=headers)
        while not job.state.finished:
            if await http.is_disconnected():
                queue.cancel(job.id, "cancelled: the client disconnected")
                logger.info("job %s: client disconnected, cancelled", job.id)
                break
            job.touch()
            await asyncio.sleep(WAIT_POLL_SECONDS)
        return JSONResponse(job_view(job, queue), status_code=200, headers=headers)

    def summary_of(request: GenerationRequest, geotiff: bool, **extra: Any) -> dict[str, Any]:
        return {"prompt": request.prompt, "metadata": request.metadata.to_dict(), "seed": request.seed,
                "steps": request.steps, "guidance_scale": request.guidance_scale, "scheduler": request.scheduler,
                "num_images": request.num_images, "geotiff": geotiff, **extra}

    api = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])

    @api.post("/generate", status_code=202, summary="Generate images from a prompt and metadata (a job)",
              responses=JOB_ERRORS)
    async def generate(body: GenerateBody, http: Request, wait: WaitQuery = False) -> JSONResponse:
        request, geotiff = build_request(body.model_dump(exclude_unset=True), served, config=config)
        return await submit("generate", generate_work(request, geotiff, served), summary_of(request, geotiff),
                            http, wait)

    async def conditional(task: str, fields: dict[str, Any], images: list[UploadedImage], http: Request,
                          wait: bool, **extra: Any) -> JSONResponse:
        first = images[0]
        request, geotiff = build_request(fields, served, size=_model_size(first, extra.get("scale")), config=config)
        inputs = ConditionalInputs(task=task, request=request, images=images,
                                   geotiff=geotiff or first.crs is not None, **extra)
        try:
            check_available(served, task)
        except TaskUnavailable as err:
            raise ApiError(err.status, err.code, str(err), task=err.task, component=err.component) from None
        summary = summary_of(request, inputs.geotiff, inputs=[i.describe() for i in images])
        return await submit(task, conditional_work(inputs, served), summary, http, wait)

    def _model_size(image: UploadedImage, scale: int | None) -> tuple[int, int]:
        factor = scale or 1
        if image.width * image.height * factor * factor > config.max_image_pixels:
            raise field_error("scale", f"scale={factor}: the output ({image.width * factor}x{image.height * factor}) "
                              f"would exceed {config.max_image_pixels} pixels", status=422)
        multiple = size_multiple(served.pipeline)
        return (max(multiple, image.width * factor // multiple * multiple),
                max(multiple, image.height * factor // multiple * multiple))

    @api.post("/superres", status_code=202, summary="Super-resolve a low-res GeoTIFF/PNG (a job)",
              responses=TASK_ERRORS)
    async def superres(
        http: Request,
        image: Annotated[UploadFile, File(description="Low-resolution GeoTIFF or PNG (any band count)")],
        fields: Annotated[dict[str, Any], Depends(sampling_form)],
        scale: Annotated[int, Form(description="Upscaling factor, [2, 8]")] = 4,
        consistency: Annotated[bool, Form(description=CONSISTENCY_HELP)] = True,
        bands: Annotated[str | None, Form(description=BANDS_HELP)] = None,
        wait: WaitQuery = False,
    ) -> JSONResponse:
        if not 2 <= scale <= 8:
            raise field_error("scale", f"scale={scale}: out of range; allowed [2, 8]", "[2, 8]")
        low = await read_upload(image, "image", config)
        return await conditional("superres", fields, [low], http, wait, scale=scale, consistency=consistency,
                                 bands=_bands(bands, low))

    @api.post("/temporal", status_code=202, summary="Generate the image of a place at a target date from past frames",
              responses=TASK_ERRORS)
    async def temporal(
        http: Request,
        frames: Annotated[list[UploadFile], File(description="1 to max_frames GeoTIFF/PNG images of one place")],
        frame_dates: Annotated[list[str], Form(description="One ISO date per frame (repeat the field or comma-separate)")],
        fields: Annotated[dict[str, Any], Depends(sampling_form)],
        bands: Annotated[str | None, Form(description=BANDS_HELP)] = None,
        wait: WaitQuery = False,
    ) -> JSONResponse:
        if not 1 <= len(frames) <= config.max_frames:
            raise field_error("frames", f"frames: got {len(frames)} files; allowed [1, {config.max_frames}]",
                              f"[1, {config.max_frames}]")
        dates = [d.strip() for text in frame_dates for d in text.split(",") if d.strip()]
        if len(dates) != len(frames):
            raise field_error("frame_dates", f"frame_dates: got {len(dates)} dates for {len(frames)} frames; give one per frame")
        target = parse_metadata(fields.get("metadata"), fields.get("cloud_cover_percent", False))
        if target.year is None:
            raise field_error("metadata.date", "metadata.date: the target date is required for temporal generation",
                              "ISO 8601: YYYY-MM-DD, YYYY-MM or YYYY")
        for i, text in enumerate(dates):
            try:
                parse_date(text, field=f"frame_dates[{i}]")
            except MetadataError as err:
                raise field_error(err.field, str(err), "ISO 8601: YYYY-MM-DD, YYYY-MM or YYYY") from None
        images = [await read_upload(f, f"frames[{i}]", config) for i, f in enumerate(frames)]
        for i, img in enumerate(images[1:], start=1):
            if (img.width, img.height, img.bands) != (images[0].width, images[0].height, images[0].bands):
                raise field_error(f"frames[{i}]", f"frames[{i}]: {img.width}x{img.height}x{img.bands} differs from "
                                  f"frames[0] ({images[0].width}x{images[0].height}x{images[0].bands}); frames must match")
        return await conditional("temporal", fields, images, http, wait, frame_dates=dates,
                                 bands=_bands(bands, images[0]))

    @api.post("/inpaint", status_code=202, summary="Fill the masked pixels of an image (a job)",
              responses=TASK_ERRORS)
    async def inpaint(
        http: Request,
        image: Annotated[UploadFile, File(description="GeoTIFF or PNG to fill")],
        mask: Annotated[UploadFile, File(description="1-band mask of the same size; non-zero = fill")],
        fields: Annotated[dict[str, Any], Depends(sampling_form)],
        bands: Annotated[str | None, Form(description=BANDS_HELP)] = None,
        wait: WaitQuery = False,
    ) -> JSONResponse:
        picture = await read_upload(image, "image", config)
        drawn = await read_upload(mask, "mask", config)
        try:
            filled = await asyncio.to_thread(check_mask, drawn, picture)
        except UploadError as err:
            raise field_error(err.field, str(err)) from None
        return await conditional("inpaint", fields, [picture], http, wait, mask=filled, bands=_bands(bands, picture))

    @api.get("/jobs/{job_id}", summary="Status, progress and result links of a job")
    async def get_job(job_id: str) -> dict[str, Any]:
        return job_view(_job(job_id), queue)

    @api.delete("/jobs/{job_id}", summary="Cancel a job (waiting: at once; sampling: at the next step)")
    async def cancel_job(job_id: str) -> dict[str, Any]:
        job = queue.cancel(job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r} (unknown, or expired and deleted)")
        return job_view(job, queue)

    @api.get("/jobs/{job_id}/files/{name}", summary="Download a result: N.png, N.tif (GeoTIFF) or N.json (sidecar)")
    async def get_file(job_id: str, name: str) -> FileResponse:
        job = _job(job_id)
        match = FILE_NAME.match(name)
        result = None
        if match and job.state is JobState.SUCCEEDED:
            result = next((r for r in job.results if r.index == int(match.group(1))), None)
        path = result.files.get(match.group(2)) if result is not None and match else None
        if path is None or not path.is_file():
            raise ApiError(404, "not_found", f"job {job_id} has no file {name!r}")
        ext = match.group(2)
        return FileResponse(path, media_type=MEDIA_TYPES[ext], filename=f"diffusionsat-{job.id[:8]}-{match.group(1)}.{ext}")

    @api.get("/model", summary="The served model: name, version, model card, sizes and available tasks")
    async def get_model() -> dict[str, Any]:
        return served.describe()

    def _job(job_id: str) -> Job:
        job = queue.get(job_id)
        if job is None:
            raise ApiError(404, "not_found", f"no job {job_id!r} (unknown, or expired and deleted)")
        return job

    app.include_router(api)

    @app.api_route("/health", methods=["GET", "HEAD"], summary="Liveness and queue state (no authentication)")
    async def health() -> JSONResponse:
        stats = queue.stats()
        status = 200 if stats["accepting"] else 503
        return JSONResponse({"status": "ok" if status == 200 else "shutting_down", "version": __version__,
                             "queue": {k: stats[k] for k in ("workers", "running", "waiting", "max_queue")}},
                            status_code=status)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.api_route("/docs", methods=["GET", "HEAD"], include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")

    @app.get("/assets/countries.geojson", include_in_schema=False)
    async def countries() -> FileResponse:
        path = Path(str(resources.files("diffusionsat") / "assets" / "world" / "countries.geojson"))
        return FileResponse(path, media_type="application/geo+json", headers={"Cache-Control": "max-age=86400"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body, status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        if first.get("type") == "json_invalid":
            field, detail = "body", "not valid JSON"
        else:
            loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "form")]
            field, detail = ".".join(loc) or "body", first.get("msg", "invalid")
        return JSONResponse({"error": "invalid_field", "field": field, "detail": f"{field}: {detail}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return JSONResponse({"error": code, "detail": str(err.detail)}, status_code=err.status_code,
                            headers=getattr(err, "headers", None))
