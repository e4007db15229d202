"""The model the server serves, and the one place where a task name meets the code that runs it.

Text+metadata generation runs through :func:`diffusionsat.generation.generate_images`. The
conditional tasks (super-resolution, temporal, in-painting) each need a ControlNet in the model
folder; their runners register in :data:`TASK_RUNNERS` as the conditional pipelines land. Until a
model has the component a task needs, the API answers 409 naming it; when the model has it but
this version of the package has no runner, 501.
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
from ..metadata import SatMetadata
from ..outputs import output_paths
from ..schedulers import SCHEDULERS, scheduler_name
from .jobs import Job, JobResult
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

    def fresh(self) -> Any:
        self.pipe.scheduler = type(self._default).from_config(self._default.config)
        return self.pipe


@dataclass
class ServedModel:
    """A loaded pipeline plus what clients may know about it (never its path on this disk)."""

    pipeline: Any
    name: str
    location: str
    version: str | None
    card: str | None
    components: frozenset[str]

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
        return cls(pipe, name, location, model_version(location), read_model_card(location), frozenset(components))

    def has(self, component: str) -> bool:
        return component in self.components

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


def size_multiple(pipe: Any) -> int:
    """Width and height must be multiples of this for ``pipe`` (its down-sampling factor)."""
    return pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


@dataclass
class ConditionalInputs:
    """A validated super-resolution / temporal / in-painting request, ready for a runner."""

    task: str
    request: GenerationRequest
    images: list[UploadedImage]
    frame_metadata: list[SatMetadata] = field(default_factory=list)
    mask: np.ndarray | None = None
    scale: int | None = None
    geotiff: bool = False


ConditionalRunner = Callable[[WorkerPipeline, Job, ConditionalInputs, ServedModel], Sequence[JobResult]]

#: Conditional task → runner. The conditional pipelines (issue #6) register here when they land.
TASK_RUNNERS: dict[str, ConditionalRunner] = {}


def check_available(model: ServedModel, task: str) -> None:
    """Raise :class:`TaskUnavailable` unless ``model`` can run ``task`` now."""
    if task == "generate":
        return
    component = TASK_COMPONENTS[task]
    if not model.has(component):
        raise TaskUnavailable(
            409, "model_component_missing", task, component,
            f"the loaded model {model.name!r} has no '{component}' (the ControlNet for {TASK_TITLES[task]}); "
            f"serve a model folder that contains {component}/ to use /v1/{task}",
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
