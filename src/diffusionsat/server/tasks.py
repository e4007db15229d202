"""The model the server serves, and the one place where a task name meets the code that runs it.

Text+metadata generation runs :func:`diffusionsat.generation.generate_images`; super-resolution,
temporal generation and in-painting run the library's task functions
(:mod:`diffusionsat.conditional`) with the ControlNet the served model has for the task: a
``controlnet_<task>/`` sub-folder, or a ``controlnet/`` sub-folder whose class fits the task
(``SatControlNet3D`` for temporal, ``SatControlNet`` for super-resolution and in-painting). Without
one, the API answers 409 naming the missing component; a task with no runner in
:data:`TASK_RUNNERS` answers 501.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..generation import GenerationRequest, generate_images, save_images
from ..loading import load_pipeline, model_version, read_model_card, resolve_model
from ..outputs import output_paths
from ..schedulers import SCHEDULERS, scheduler_name
from ..validation import check_weights
from .jobs import Job, JobResult, install_cancel_hooks
from .uploads import UploadedImage

logger = logging.getLogger(__name__)

#: Conditional task → the model component (sub-folder / pipeline component) it needs.
TASK_COMPONENTS: dict[str, str] = {
    "superres": "controlnet_superres",
    "temporal": "controlnet_temporal",
    "inpaint": "controlnet_inpaint",
}

TASK_TITLES: dict[str, str] = {
    "generate": "text + metadata generation",
    "superres": "super-resolution",
    "temporal": "temporal generation",
    "inpaint": "in-painting",
}


class TaskUnavailable(Exception):
    """The loaded model (409) or this package version (501) cannot run a task."""

    def __init__(self, status: int, code: str, task: str, component: str, message: str):
        super().__init__(message)
        self.status, self.code, self.task, self.component = status, code, task, component


#: A generic ``controlnet/`` sub-folder (one task model, as ``diffusionsat superres --model`` takes) serves
#: the tasks its class fits.
GENERIC_CONTROLNET = "controlnet"
CONTROLNET_FITS: dict[str, tuple[str, ...]] = {
    "superres": ("SatControlNet",),
    "temporal": ("SatControlNet3D",),
    "inpaint": ("SatControlNet",),
}


def find_controlnets(folder: Path) -> dict[str, Path]:
    """Task → ControlNet folder inside a model folder (per-task sub-folders first)."""
    found = {task: folder / name for task, name in TASK_COMPONENTS.items() if (folder / name / "config.json").is_file()}
    generic = folder / GENERIC_CONTROLNET / "config.json"
    if generic.is_file():
        kind = json.loads(generic.read_text(encoding="utf-8")).get("_class_name")
        for task, classes in CONTROLNET_FITS.items():
            if task not in found and kind in classes:
                found[task] = generic.parent
    return found


def load_controlnets(folder: Path, device: Any) -> dict[str, Any]:
    """Load each task's ControlNet once (a folder serving several tasks is loaded once)."""
    from ..pipelines.pipeline_controlnet import controlnet_class

    loaded: dict[Path, Any] = {}
    nets = {}
    for task, path in find_controlnets(folder).items():
        if path not in loaded:
            check_weights(path)
            loaded[path] = controlnet_class(path).from_pretrained(str(path)).to(device)
            logger.info("loaded %s from %s for %s", type(loaded[path]).__name__, path.name, task)
        nets[task] = loaded[path]
    return nets


class WorkerPipeline:
    """One sampler thread's pipeline: weights shared with the others, its own scheduler.

    Pipelines are not thread-safe (``set_timesteps`` mutates the scheduler, and a request may
    swap the scheduler), so each worker gets its own object around the same modules, and every
    job starts from the model's own scheduler.
    """

    def __init__(self, pipe: Any):
        self.pipe = type(pipe)(**pipe.components)
        self.pipe.set_progress_bar_config(disable=True)
        self._default = pipe.scheduler
        self._task_pipes: dict[str, Any] = {}

    def _scheduler(self) -> Any:
        return type(self._default).from_config(self._default.config)

    def fresh(self) -> Any:
        self.pipe.scheduler = self._scheduler()
        return self.pipe

    def for_task(self, task: str, controlnet: Any) -> Any:
        """This worker's ControlNet pipeline for ``task`` (same base weights), with a fresh scheduler."""
        from ..pipelines.pipeline_controlnet import DiffusionSatControlNetPipeline

        pipe = self._task_pipes.get(task)
        if pipe is None:
            parts = {k: v for k, v in self.pipe.components.items() if k != "scheduler"}
            pipe = DiffusionSatControlNetPipeline(**parts, controlnet=controlnet, scheduler=self._scheduler())
            pipe.set_progress_bar_config(disable=True)
            self._task_pipes[task] = pipe
        pipe.scheduler = self._scheduler()
        return pipe


@dataclass
class ServedModel:
    """A loaded pipeline plus what clients may know about it (never its path on this disk)."""

    pipeline: Any
    name: str
    location: str
    version: str | None
    card: str | None
    components: frozenset[str]
    controlnets: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, model: str | Path | None, device: str = "cpu") -> ServedModel:
        location = resolve_model(model)
        pipe = load_pipeline(location, device=device)
        return cls.from_pipeline(pipe, location)

    @classmethod
    def from_pipeline(cls, pipe: Any, location: str) -> ServedModel:
        folder = Path(location)
        components = set(pipe.components)
        if folder.is_dir():
            index = folder / "model_index.json"
            if index.is_file():
                components |= {k for k in json.loads(index.read_text(encoding="utf-8")) if not k.startswith("_")}
            components |= {p.name for p in folder.iterdir() if (p / "config.json").is_file()}
        name = folder.name if folder.exists() else location
        controlnets = load_controlnets(folder, pipe.device) if folder.is_dir() else {}
        for module in (pipe.unet, getattr(pipe, "vae", None), *controlnets.values()):
            if module is not None:
                install_cancel_hooks(module)
        return cls(pipe, name, location, model_version(location), read_model_card(location), frozenset(components),
                   controlnets)

    def workers(self, count: int) -> list[WorkerPipeline]:
        return [WorkerPipeline(self.pipeline) for _ in range(count)]

    def describe(self) -> dict[str, Any]:
        """The body of ``GET /v1/model``."""
        pipe = self.pipeline
        return {
            "name": self.name,
            "version": self.version,
            "card": self.card,
            "default_size": pipe.default_size,
            "size_multiple": size_multiple(pipe),
            "uses_metadata": pipe.uses_metadata,
            "scheduler": scheduler_name(pipe.scheduler),
            "schedulers": list(SCHEDULERS),
            "components": sorted(self.components),
            "tasks": {task: task_status(self, task) for task in TASK_TITLES},
        }


class OverLimit(ValueError):
    """A valid request whose work is above one of the server's limits (``limit`` names it)."""

    def __init__(self, field: str, limit: str, allowed: str, message: str):
        super().__init__(message)
        self.field, self.limit, self.allowed = field, limit, allowed


#: Bytes of activations kept per latent element and UNet channel while sampling (skip connections,
#: resnet intermediates, attention projections); measured on the tiny and SD-sized UNets on CPU,
#: rounded up.
ACTIVATION_FACTOR = 16
#: The same for the VAE decoder at full resolution (its widest, top level dominates).
DECODER_FACTOR = 8


def estimate_memory(pipe: Any, width: int, height: int, batch: int) -> int:
    """A rough upper estimate of the peak bytes one sampling call of ``batch`` images needs.

    Weights + UNet activations over its levels (channels × latent pixels, ×2 for the
    classifier-free guidance batch) + the VAE decoder at full size. Used to refuse requests that
    would take the machine before they are queued, not to plan allocations.
    """
    weights = sum(p.numel() * p.element_size() for m in (pipe.unet, getattr(pipe, "vae", None),
                                                        getattr(pipe, "text_encoder", None))
                  if m is not None for p in m.parameters())
    scale = pipe.vae_scale_factor
    lh, lw = max(1, height // scale), max(1, width // scale)
    levels = pipe.unet.config.block_out_channels
    unet = sum(c * max(1, lh >> i) * max(1, lw >> i) for i, c in enumerate(levels))
    activations = unet * 2 * batch * 4 * ACTIVATION_FACTOR
    vae = getattr(pipe, "vae", None)
    decoder = vae.config.block_out_channels[0] * width * height * batch * 4 * DECODER_FACTOR if vae is not None else 0
    return int(weights + activations + decoder)


def check_work(pipe: Any, config: Any, *, width: int, height: int, num_images: int, steps: int,
               tile: int | None = None) -> None:
    """Refuse a request whose *work* is over the server's limits, naming the limit (422).

    Pixels over all images (``max_pixels``), steps per image (``max_steps``) and the estimated
    memory of one sampling call (``max_memory_bytes``; tiled tasks sample one ``tile`` at a time,
    one image at a time).
    """
    if steps > config.max_steps:
        raise OverLimit("steps", "max_steps", f"[1, {config.max_steps}]",
                        f"steps={steps}: over the server's limit max_steps={config.max_steps} (--max-steps)")
    pixels = width * height * num_images
    if pixels > config.max_pixels:
        field = "num_images" if num_images > 1 and width * height <= config.max_pixels else "width"
        raise OverLimit(field, "max_pixels", f"width × height × num_images <= {config.max_pixels}",
                        f"{field}: {num_images} image(s) of {width}x{height} = {pixels} pixels; over the server's "
                        f"limit max_pixels={config.max_pixels} (--max-pixels)")
    if tile is not None:
        memory = estimate_memory(pipe, min(width, tile), min(height, tile), 1)
    else:
        memory = estimate_memory(pipe, width, height, num_images)
    if memory > config.max_memory_bytes:
        raise OverLimit("width", "max_memory", f"estimated memory <= {config.max_memory_bytes} bytes",
                        f"width: {num_images} image(s) of {width}x{height} would need about {memory / 2**30:.1f} GiB; "
                        f"over the server's limit max_memory={config.max_memory_bytes / 2**30:.1f} GiB")


def size_multiple(pipe: Any) -> int:
    """Width and height must be multiples of this for ``pipe`` (its down-sampling factor)."""
    return pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


@dataclass
class ConditionalInputs:
    """A validated super-resolution / temporal / in-painting request, ready for a runner."""

    task: str
    request: GenerationRequest
    images: list[UploadedImage]
    frame_dates: list[str] = field(default_factory=list)
    mask: np.ndarray | None = None
    scale: int | None = None
    consistency: bool = True
    bands: str | None = None
    geotiff: bool = False


ConditionalRunner = Callable[[WorkerPipeline, Job, ConditionalInputs, ServedModel], Sequence[JobResult]]


def _read_uploads(job: Job, inputs: ConditionalInputs, bands: str | None) -> list[Any]:
    """Uploads → :class:`~diffusionsat.conditional.RasterInput` through the library's reader.

    Each upload is written under a generated name in the job's folder, read, and deleted.
    """
    from ..conditional import read_input

    rasters = []
    for i, upload in enumerate(inputs.images):
        path = job.folder / f"input-{i}.{'png' if upload.kind == 'png' else 'tif'}"
        path.write_bytes(upload.data)
        try:
            date = inputs.frame_dates[i] if inputs.frame_dates else None
            rasters.append(read_input(path, bands=bands, date=date))
        finally:
            path.unlink(missing_ok=True)
    return rasters


def run_conditional(worker: WorkerPipeline, job: Job, inputs: ConditionalInputs, model: ServedModel) -> list[JobResult]:
    """One task job: read the uploads, sample ``num_images`` results (seed + i), write them (SPEC §5)."""
    from .. import conditional
    from ..schedulers import make_scheduler

    pipe = worker.for_task(inputs.task, model.controlnets[inputs.task])
    request = inputs.request
    if request.scheduler is not None:
        pipe.scheduler = make_scheduler(request.scheduler, pipe.scheduler)
    bands = inputs.bands
    if bands is None and inputs.task == "superres" and conditional.controlnet_bands(pipe):
        bands = ",".join(conditional.controlnet_bands(pipe))
    rasters = _read_uploads(job, inputs, bands)
    seeds = request.seeds()
    job.report(0, request.steps * len(seeds))
    overrides = None if request.metadata.is_unknown() else request.metadata
    paths = output_paths(job.folder / "image", len(seeds), inputs.geotiff)
    written = []
    for i, (seed, path) in enumerate(zip(seeds, paths)):
        def progress(step: int, _timestep: int, _latents: Any, i: int = i) -> None:
            total = len(pipe.scheduler.timesteps)
            job.report(i * total + step + 1, total * len(seeds))

        common = {"prompt": request.prompt, "metadata": overrides, "seed": seed, "callback": progress,
                  "num_inference_steps": request.steps, "guidance_scale": request.guidance_scale,
                  "metadata_guidance_scale": request.metadata_guidance_scale,
                  "negative_prompt": request.negative_prompt}
        if inputs.task == "superres":
            result = conditional.superresolve(pipe, rasters, scale=inputs.scale, consistency=inputs.consistency, **common)
        elif inputs.task == "temporal":
            result = conditional.predict_temporal(pipe, rasters, target_date=request.metadata.date_string(), **common)
        else:
            result = conditional.inpaint_raster(pipe, rasters[0], inputs.mask, **common)
        result.extra["task_inputs"] = [upload.filename for upload in inputs.images]  # never server paths
        written.append(conditional.save_task_result(
            result, path, task=inputs.task, prompt=request.prompt, steps=request.steps,
            guidance_scale=request.guidance_scale, scheduler=scheduler_name(pipe.scheduler), model=model.name,
            model_version=model.version,
        ))
    return results_from(written)


#: Conditional task → runner: the one place a task meets the code that runs it.
TASK_RUNNERS: dict[str, ConditionalRunner] = {
    "superres": run_conditional,
    "temporal": run_conditional,
    "inpaint": run_conditional,
}


def check_available(model: ServedModel, task: str) -> None:
    """Raise :class:`TaskUnavailable` unless ``model`` can run ``task`` now."""
    if task == "generate":
        return
    component = TASK_COMPONENTS[task]
    if task not in model.controlnets:
        fits = " or ".join(CONTROLNET_FITS[task])
        raise TaskUnavailable(
            409, "model_component_missing", task, component,
            f"the loaded model {model.name!r} has no '{component}' (the ControlNet for {TASK_TITLES[task]}); "
            f"serve a model folder that contains {component}/ (or a {GENERIC_CONTROLNET}/ holding a {fits}) "
            f"to use /v1/{task}",
        )
    if task not in TASK_RUNNERS:
        raise TaskUnavailable(
            501, "task_not_implemented", task, component,
            f"this diffusionsat version has no {TASK_TITLES[task]} pipeline to run '{component}'",
        )


def task_status(model: ServedModel, task: str) -> dict[str, Any]:
    try:
        check_available(model, task)
    except TaskUnavailable as err:
        return {"available": False, "component": err.component, "reason": str(err)}
    return {"available": True, "component": TASK_COMPONENTS.get(task)}


def results_from(paths_written: Sequence[Any]) -> list[JobResult]:
    """JobResults (files by kind + sidecar) from :class:`~diffusionsat.outputs.OutputPaths`."""
    results = []
    for i, paths in enumerate(paths_written):
        files = {"png": paths.png, "json": paths.sidecar}
        if paths.geotiff is not None:
            files["tif"] = paths.geotiff
        results.append(JobResult(i, files, json.loads(paths.sidecar.read_text(encoding="utf-8"))))
    return results


def generate_work(request: GenerationRequest, geotiff: bool, model: ServedModel) -> Callable[[WorkerPipeline, Job], list[JobResult]]:
    """The job body of ``POST /v1/generate``: sample, report progress, write the files."""

    def work(worker: WorkerPipeline, job: Job) -> list[JobResult]:
        pipe = worker.fresh()
        job.report(0, request.steps)

        def progress(step: int, _timestep: int, _latents: Any) -> None:
            job.report(step + 1, len(pipe.scheduler.timesteps))

        images, seeds, used = generate_images(pipe, request, callback=progress)
        paths = output_paths(job.folder / "image", len(images), geotiff)
        written = save_images(images, seeds, request, paths, model=model.name, model_version=model.version, scheduler=used)
        return results_from(written)

    return work


def conditional_work(inputs: ConditionalInputs, model: ServedModel) -> Callable[[WorkerPipeline, Job], Sequence[JobResult]]:
    """The job body of a conditional task: its registered runner."""
    runner = TASK_RUNNERS[inputs.task]

    def work(worker: WorkerPipeline, job: Job) -> Sequence[JobResult]:
        return runner(worker, job, inputs, model)

    return work
