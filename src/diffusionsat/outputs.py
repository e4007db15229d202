"""Generated images on disk: PNG (+ GeoTIFF) + a JSON sidecar that reproduces them (SPEC §5)."""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from .fileio import atomic_files, check_writable
from .geo import grid_for_center, write_geotiff
from .imaging import to_uint8_hwc
from .metadata import SatMetadata


@dataclass
class OutputPaths:
    """The files of one generated image."""

    png: Path
    sidecar: Path
    geotiff: Path | None = None

    def all(self) -> list[Path]:
        return [p for p in (self.png, self.sidecar, self.geotiff) if p is not None]


@dataclass
class GenerationRecord:
    """Everything needed to reproduce one image; written as its JSON sidecar."""

    prompt: str
    metadata: SatMetadata
    seed: int
    steps: int
    guidance_scale: float
    scheduler: str
    width: int
    height: int
    model: str
    task: str = "generate"
    negative_prompt: str | None = None
    metadata_guidance_scale: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, model_version: str | None = None) -> dict[str, Any]:
        from . import __version__

        return {
            "task": self.task,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "metadata": self.metadata.to_dict(),
            # null = unknown (each model encodes "unknown" its own way: see its metadata_unknown_value)
            "metadata_normalized": [None if raw is None else value for raw, value in
                                    zip(self.metadata.values(), self.metadata.normalize())],
            "seed": self.seed,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "metadata_guidance_scale": self.metadata_guidance_scale,
            "scheduler": self.scheduler,
            "width": self.width,
            "height": self.height,
            "model": self.model,
            "model_version": model_version,
            "diffusionsat_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **self.extra,
        }


def output_paths(out: str | os.PathLike, count: int, geotiff: bool) -> list[OutputPaths]:
    """File names for ``count`` images: ``out.png`` or ``out_0.png``, ``out_1.png``, … .

    ``out`` naming an existing folder or a non-file (``/dev/full``) is refused, not turned into
    ``folder.png`` beside it.
    """
    base = Path(out)
    if base.is_dir():
        raise IsADirectoryError(f"--out {str(base)!r} is a folder; give a file name such as {str(base / 'image.png')!r}")
    if base.exists() and not base.is_file():
        raise ValueError(f"--out {str(base)!r} is not a regular file (a device or pipe); give a file name")
    if base.suffix.lower() in (".png", ".tif", ".tiff", ".json"):
        base = base.with_suffix("")
    stems = [base] if count == 1 else [base.with_name(f"{base.name}_{i}") for i in range(count)]
    return [
        OutputPaths(png=s.with_suffix(".png"), sidecar=s.with_suffix(".json"), geotiff=s.with_suffix(".tif") if geotiff else None)
        for s in stems
    ]


def next_free_name(folder: str | os.PathLike = ".", prefix: str = "generated") -> Path:
    """``generated-1.png``, ``generated-2.png``, … : the first name not taken in ``folder``."""
    i = 1
    while True:
        candidate = Path(folder) / f"{prefix}-{i}"
        if not any(candidate.with_suffix(s).exists() for s in (".png", ".json", ".tif")):
            return candidate.with_suffix(".png")
        i += 1


def check_outputs(paths: Sequence[OutputPaths], overwrite: bool) -> None:
    """Fail before any work if any output exists (unless ``overwrite``) or cannot be written."""
    check_writable([p for op in paths for p in op.all()], overwrite=overwrite)


def save_generated(
    image: PIL.Image.Image | np.ndarray,
    paths: OutputPaths,
    record: GenerationRecord,
    *,
    model_version: str | None = None,
    crs: Any = None,
    transform: Any = None,
    overwrite: bool = False,
    staging: Mapping[Path, Path] | None = None,
) -> OutputPaths:
    """Write one image's PNG, optional GeoTIFF and sidecar: all of them or none.

    ``staging`` (from :func:`~diffusionsat.fileio.atomic_files`) maps each final path to the
    temporary one to write, when several images must appear together; without it this image's
    files are staged and renamed on their own. For a GeoTIFF without an input grid
    (``crs``/``transform``), the image is placed at the metadata's lat/lon with its GSD in the
    local UTM zone.
    """
    if staging is None:
        with atomic_files(paths.all(), overwrite=overwrite) as staged:
            return save_generated(image, paths, record, model_version=model_version, crs=crs, transform=transform,
                                  staging=staged)
    pixels = to_uint8_hwc(image)
    sidecar = record.to_json(model_version)
    if paths.geotiff is not None:
        if crs is None or transform is None:
            md = record.metadata
            if md.lat is None or md.lon is None or md.gsd is None:
                raise ValueError("a GeoTIFF from metadata alone needs lat, lon and gsd")
            crs, transform = grid_for_center(md.lon, md.lat, md.gsd, pixels.shape[1], pixels.shape[0])
        write_geotiff(
            staging[paths.geotiff],
            pixels,
            crs,
            transform,
            band_descriptions=["red", "green", "blue"][: pixels.shape[2]],
            tags={"diffusionsat": json.dumps({k: sidecar[k] for k in ("prompt", "seed", "model")})},
            overwrite=True,  # the staged temporary file
        )
        sidecar["geotiff"] = {"path": paths.geotiff.name, "crs": str(crs), "transform": list(transform)[:6]}
    PIL.Image.fromarray(pixels).save(staging[paths.png], format="PNG")
    staging[paths.sidecar].write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return paths
