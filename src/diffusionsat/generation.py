"""Text+metadata generation as one library call shared by the CLI and the server."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .fileio import atomic_files
from .metadata import SatMetadata
from .outputs import GenerationRecord, OutputPaths, save_generated
from .schedulers import check_scheduler, make_scheduler, scheduler_name

MAX_IMAGES = 64
MAX_SIDE = 2048


def check_text(name: str, text: str | None) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate, e.g. undecodable bytes in argv).

    The tokenizer would otherwise fail deep inside with a ``TypeError``, and JSON answers that echo
    it could not be encoded.
    """
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{name}: not valid UTF-8 text (undecodable character at position {err.start})") from None


@dataclass
class GenerationRequest:
    """What to generate; validated in :meth:`validate` before any model is loaded."""

    prompt: str
    metadata: SatMetadata
    seed: int | None = None
    steps: int = 25
    guidance_scale: float = 3.0
    metadata_guidance_scale: float | None = None
    negative_prompt: str | None = None
    anchored_guidance: bool = True  # the model's location-anchored negative branch, when it has one
    scheduler: str | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1

    def validate(self) -> GenerationRequest:
        if not isinstance(self.prompt, str):
            raise ValueError("prompt: must be a string")
        for name in ("prompt", "negative_prompt"):
            check_text(name, getattr(self, name))
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise ValueError(f"steps={self.steps!r}: out of range; allowed [1, 1000]")
        for name in ("guidance_scale", "metadata_guidance_scale"):
            value = getattr(self, name)
            if value is not None and not (0.0 <= float(value) <= 50.0):
                raise ValueError(f"{name}={value!r}: out of range; allowed [0, 50]")
        if not isinstance(self.num_images, int) or not 1 <= self.num_images <= MAX_IMAGES:
            raise ValueError(f"num_images={self.num_images!r}: out of range; allowed [1, {MAX_IMAGES}]")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not 8 <= value <= MAX_SIDE):
                raise ValueError(f"{name}={value!r}: out of range; allowed [8, {MAX_SIDE}] pixels")
            if value is not None and value % 8:
                raise ValueError(f"{name}={value!r}: must be a multiple of 8")
        if self.scheduler is not None:
            check_scheduler(self.scheduler)
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise ValueError(f"seed={self.seed!r}: must be an integer in [0, 2^63)")
        return self

    def sidecar_extra(self) -> dict[str, bool]:
        """What a sidecar records beyond the record's own fields: the negative branch, when not the default."""
        return {} if self.anchored_guidance else {"anchored_guidance": False}

    def seeds(self) -> list[int]:
        """One seed per image (``seed + i``), so each image can be reproduced on its own."""
        base = self.seed if self.seed is not None else random.SystemRandom().randrange(2**31)
        self.seed = base
        return [base + i for i in range(self.num_images)]


def generate_images(pipe, request: GenerationRequest, callback: Callable[[int, int, torch.Tensor], None] | None = None):
    """Run the pipeline for ``request``; returns (PIL images, per-image seeds, scheduler name)."""
    request.validate()
    if request.scheduler is not None:
        pipe.scheduler = make_scheduler(request.scheduler, pipe.scheduler)
    seeds = request.seeds()
    device = pipe._execution_device
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    result = pipe(
        request.prompt,
        metadata=request.metadata,
        height=request.height,
        width=request.width,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        metadata_guidance_scale=request.metadata_guidance_scale,
        negative_prompt=request.negative_prompt,
        anchored_guidance=request.anchored_guidance,
        num_images_per_prompt=request.num_images,
        generator=generators,
        callback=callback,
    )
    return result.images, seeds, scheduler_name(pipe.scheduler)


def save_images(
    images,
    seeds: list[int],
    request: GenerationRequest,
    paths: list[OutputPaths],
    *,
    model: str,
    model_version: str | None,
    scheduler: str,
    overwrite: bool = False,
) -> list[OutputPaths]:
    """Write each image with its sidecar (and GeoTIFF when its path is set): all files or none."""
    written = []
    with atomic_files([p for op in paths[:len(images)] for p in op.all()], overwrite=overwrite) as staging:
        for image, seed, path in zip(images, seeds, paths):
            written.append(_save_one(image, seed, request, path, model, model_version, scheduler, staging))
    return written


def _save_one(image, seed: int, request: GenerationRequest, path: OutputPaths, model: str, model_version: str | None,
              scheduler: str, staging: Mapping[Path, Path]) -> OutputPaths:
    record = GenerationRecord(
        prompt=request.prompt,
        metadata=request.metadata,
        seed=seed,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        metadata_guidance_scale=request.metadata_guidance_scale,
        negative_prompt=request.negative_prompt,
        scheduler=scheduler,
        width=image.size[0],
        height=image.size[1],
        model=model if not Path(model).exists() else Path(model).name,
        extra=request.sidecar_extra(),
    )
    return save_generated(image, path, record, model_version=model_version, staging=staging)
