"""Evaluation sets on disk: real held-out images (and generated ones) with their conditions.

Accepted layouts (``docs/evaluation.md``):

* a **folder** of images ``{key}.png|jpg|jpeg|tif|tiff``, each with an optional sidecar
  ``{key}.json`` holding ``caption`` (or ``prompt``), ``metadata`` (a SatMetadata dict) or the
  metadata keys at top level, and optionally ``scene``, ``mask`` and ``condition`` (paths relative
  to the folder). The sidecars ``diffusionsat generate`` writes are read as they are.
* a **manifest** ``.jsonl`` / ``.csv`` (SPEC §4): ``path, caption, lat, lon, gsd, cloud_cover, date``
  plus optional ``scene, mask, condition`` (``;``-separated in CSV); paths relative to the manifest.
* **WebDataset shards** written by the data layer (``prepare-data``): a ``.tar`` file, a folder of
  them, or a brace/glob pattern, decoded with :func:`diffusionsat.data.shards.decode_sample`
  (pixels, caption, metadata, and ``mask`` / conditioning images where the task has them).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..metadata import METADATA_FIELDS, SatMetadata

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_MD_KEYS = set(METADATA_FIELDS) | {"date"}


@dataclass
class EvalRecord:
    """One evaluation sample: an image and what it was (or is to be) generated from."""

    key: str
    image: Path
    caption: str = ""
    metadata: SatMetadata = field(default_factory=SatMetadata)
    scene: str | None = None
    mask: Path | None = None
    condition: list[Path] = field(default_factory=list)
    #: In-memory pixels (records decoded from shards): (3, H, W), (1, H, W) and a list of (3, h, w).
    pixels: torch.Tensor | None = None
    mask_pixels: torch.Tensor | None = None
    condition_pixels: list[torch.Tensor] = field(default_factory=list)

    @property
    def has_mask(self) -> bool:
        return self.mask is not None or self.mask_pixels is not None

    @property
    def has_condition(self) -> bool:
        return bool(self.condition or self.condition_pixels)


def _as_paths(value: Any, base: Path, key: str, name: str) -> list[Path]:
    if value in (None, "", []):
        return []
    items = value.split(";") if isinstance(value, str) else list(value)
    paths = [base / str(v).strip() for v in items if str(v).strip()]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"record {key!r}: {name} file {str(path)!r} not found")
    return paths


def record_from_dict(data: dict[str, Any], image: Path, key: str, base: Path) -> EvalRecord:
    """Build a record from a sidecar / manifest row, naming the record in every error."""
    md_source = data.get("metadata")
    if md_source is None:
        md_source = {k: data[k] for k in _MD_KEYS if data.get(k) not in (None, "")}
    elif not isinstance(md_source, dict):
        raise ValueError(f"record {key!r}: 'metadata' must be an object, got {type(md_source).__name__}")
    md_source = {k: (float(v) if k in ("lat", "lon", "gsd", "cloud_cover") and isinstance(v, str) else v)
                 for k, v in md_source.items() if k in _MD_KEYS}
    try:
        metadata = SatMetadata.from_dict(md_source)
    except ValueError as err:
        raise ValueError(f"record {key!r}: metadata {err}") from None
    masks = _as_paths(data.get("mask"), base, key, "mask")
    return EvalRecord(
        key=key,
        image=image,
        caption=str(data.get("caption") or data.get("prompt") or ""),
        metadata=metadata,
        scene=(str(data["scene"]) if data.get("scene") else None),
        mask=masks[0] if masks else None,
        condition=_as_paths(data.get("condition"), base, key, "condition"),
    )


def _read_folder(folder: Path) -> list[EvalRecord]:
    records = []
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        sidecar = image.with_suffix(".json")
        data: dict[str, Any] = {}
        if sidecar.is_file():
            try:
                data = json.loads(sidecar.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise ValueError(f"sidecar {str(sidecar)!r}: not valid JSON ({err.msg})") from None
        if data.get("role") in ("mask", "condition"):
            continue
        records.append(record_from_dict(data, image, image.stem, folder))
    # Files referenced as masks/conditions are inputs, not samples.
    referenced = {p.resolve() for r in records for p in ([r.mask] if r.mask else []) + r.condition}
    return [r for r in records if r.image.resolve() not in referenced]


def _read_manifest(file: Path) -> list[EvalRecord]:
    base = file.parent
    if file.suffix.lower() == ".jsonl":
        rows = []
        for i, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"manifest {str(file)!r} line {i}: not valid JSON ({err.msg})") from None
    else:
        with open(file, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    records = []
    for i, row in enumerate(rows, start=1):
        if not row.get("path"):
            raise ValueError(f"manifest {str(file)!r} row {i}: missing 'path'")
        image = base / row["path"]
        if not image.is_file():
            raise FileNotFoundError(f"manifest {str(file)!r} row {i}: image {str(image)!r} not found")
        records.append(record_from_dict(row, image, row.get("key") or image.stem, base))
    return records


def _rgb01(model_range: torch.Tensor) -> torch.Tensor:
    """Data-layer pixels in [-1, 1] (C, H, W) → RGB in [0, 1] (first three bands; gray repeated)."""
    x = ((model_range.float() + 1.0) / 2.0).clamp(0, 1)
    return x[:3] if x.shape[0] >= 3 else x[:1].repeat(3, 1, 1)


def _read_shards(source: str) -> list[EvalRecord]:
    """Records from WebDataset shards (the data layer's format), pixels kept in memory."""
    from ..data.shards import decode_sample, expand_urls, iter_tar_samples

    records = []
    for url in expand_urls(source):
        for key, entries in iter_tar_samples(url):
            sample = decode_sample(key, entries, source=url)
            record = sample.get("record") or {}
            cond = sample.get("conditioning_pixel_values")
            frames = [] if cond is None else ([_rgb01(f) for f in cond] if cond.ndim == 4 else [_rgb01(cond)])
            records.append(EvalRecord(
                key=key, image=Path(url), caption=sample.get("caption") or "", metadata=sample["metadata"],
                scene=record.get("scene"), pixels=_rgb01(sample["pixel_values"]),
                mask_pixels=sample.get("mask"), condition_pixels=frames,
            ))
    return records


def _is_shards(source: Path) -> bool:
    if source.is_file():
        return source.suffix.lower() == ".tar"
    if source.is_dir():
        return any(source.glob("*.tar")) and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in source.iterdir())
    return "{" in str(source) or "*" in str(source) or "://" in str(source)


def load_records(path: str | os.PathLike) -> list[EvalRecord]:
    """Read an evaluation folder, manifest or shard set; keys must be unique."""
    source = Path(path).expanduser()
    if _is_shards(source):
        records = _read_shards(str(path))
    elif not source.exists():
        raise FileNotFoundError(f"evaluation data {str(source)!r} does not exist")
    elif source.is_dir():
        records = _read_folder(source)
    elif source.suffix.lower() in (".jsonl", ".csv"):
        records = _read_manifest(source)
    else:
        raise ValueError(f"evaluation data {str(source)!r}: expected a folder of images, a .jsonl/.csv manifest "
                         "or .tar shards")
    if not records:
        raise ValueError(f"evaluation data {str(source)!r}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    keys = [r.key for r in records]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"evaluation data {str(source)!r}: key {dup!r} appears more than once")
    return records


def match_generated(real: list[EvalRecord], generated: list[EvalRecord]) -> dict[str, EvalRecord]:
    """Pair generated images with real records by key (``{key}.png`` or ``{key}_{i}.png``)."""
    by_key = {r.key: r for r in real}
    pairs: dict[str, EvalRecord] = {}
    for gen in generated:
        key = gen.key if gen.key in by_key else re.sub(r"_\d+$", "", gen.key)
        if key in by_key and key not in pairs:
            pairs[key] = gen
    return pairs


def _stretch(band: np.ndarray) -> np.ndarray:
    low, high = np.percentile(band, [2, 98])
    return np.clip((band - low) / max(high - low, 1e-6), 0, 1)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """(3, H, W) float in [0, 1] from PNG/JPEG or GeoTIFF (first three bands; gray replicated)."""
    file = Path(path)
    if file.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        try:
            with rasterio.open(file) as src:
                arr = src.read(list(range(1, min(3, src.count) + 1))).astype(np.float64)
                dtype = src.dtypes[0]
        except rasterio.errors.RasterioError as err:
            raise ValueError(f"image {str(file)!r}: cannot read ({err})") from None
        arr = arr / 255.0 if dtype == "uint8" else np.stack([_stretch(b) for b in arr])
    else:
        try:
            with PIL.Image.open(file) as img:
                arr = np.asarray(img.convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 255.0
        except (OSError, PIL.UnidentifiedImageError) as err:
            raise ValueError(f"image {str(file)!r}: cannot read ({err})") from None
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    elif arr.shape[0] == 2:
        arr = np.concatenate([arr, arr[:1]])
    return torch.from_numpy(arr.astype(np.float32))


def read_mask(path: str | os.PathLike) -> torch.Tensor:
    """(1, H, W) float mask, 1 = pixels to fill (any non-zero value)."""
    return (read_image(path)[:1] > 0).float()


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased resize of (C, H, W) or (N, C, H, W) to ``size`` = (H, W); no-op when equal."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    batch = image[None] if image.ndim == 3 else image
    out = F.interpolate(batch, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return out[0] if image.ndim == 3 else out


def record_image(record: EvalRecord) -> torch.Tensor:
    """The record's image (3, H, W) in [0, 1], from memory (shards) or its file."""
    return record.pixels if record.pixels is not None else read_image(record.image)


def record_mask(record: EvalRecord) -> torch.Tensor | None:
    """The record's fill mask (1, H, W), 1 = fill, or ``None``."""
    if record.mask_pixels is not None:
        return (record.mask_pixels > 0).float()
    return read_mask(record.mask) if record.mask is not None else None


def record_conditions(record: EvalRecord) -> list[torch.Tensor]:
    """The record's conditioning images (low-res input, or frames oldest first) in [0, 1]."""
    return list(record.condition_pixels) or [read_image(p) for p in record.condition]


def load_stack(records: list[EvalRecord], size: tuple[int, int]) -> torch.Tensor:
    """(N, 3, H, W) images of ``records``, each resized to ``size``."""
    return torch.stack([resize(record_image(r), size) for r in records]) if records else torch.empty(0, 3, *size)


def image_size(path: str | os.PathLike | EvalRecord) -> tuple[int, int]:
    """(H, W) of a record's image or an image file, without reading the file's pixels."""
    if isinstance(path, EvalRecord):
        if path.pixels is not None:
            return int(path.pixels.shape[-2]), int(path.pixels.shape[-1])
        path = path.image
    file = Path(path)
    if file.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        with rasterio.open(file) as src:
            return src.height, src.width
    with PIL.Image.open(file) as img:
        return img.size[1], img.size[0]


def at_size(record: EvalRecord, size: tuple[int, int]) -> EvalRecord:
    """The record as compared at ``size``: same ground footprint, so GSD scales with the width.

    A GSD that leaves the valid range after scaling becomes unknown (faithfulness skips it).
    """
    if record.metadata.gsd is None:
        return record
    native = image_size(record)[1]
    try:
        metadata = record.metadata.resized(native, size[1])
    except ValueError:
        metadata = record.metadata.replace(gsd=None)
    return dataclasses.replace(record, metadata=metadata)
