"""Real satellite chips from the project's GeoTIFFs, read minimally with rasterio.

This is the one place where evaluation touches raw rasters: it turns the files of
``../shared/data`` into RGB chips with metadata (GSD, centre lat/lon, date, scene class) for the
domain encoder's training and for held-out evaluation sets. It is deliberately small so that it
can be swapped for the data layer (``diffusionsat.data``) without touching the metrics.

Held-out rule (used by the domain encoder and by :func:`export_eval_set`): the **right-most
quarter of columns** of every raster is never used for training; chips of the ``"heldout"`` region
come only from it, chips of the ``"train"`` region only from the other three quarters.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..metadata import SatMetadata

logger = logging.getLogger(__name__)

#: Fraction of columns (from the left) used for training; the rest is held out.
TRAIN_FRACTION = 0.75
#: Chips smaller than this many native pixels are not drawn (too little context).
MIN_CROP = 24


@dataclass(frozen=True)
class ChipSource:
    """One raster (or a stack of single-band rasters) of a known scene kind."""

    scene: str
    paths: tuple[str, ...]
    bands: tuple[int, ...]
    date: str | None = None

    @property
    def name(self) -> str:
        return Path(self.paths[0]).stem


def _naip(stem: str) -> ChipSource:
    date = re.search(r"(\d{8})$", stem).group(1)  # type: ignore[union-attr]
    return ChipSource("naip-prairie", (f"naip-timeseries/{stem}.tif",), (1, 2, 3),
                      f"{date[:4]}-{date[4:6]}-{date[6:]}")


def _landsat8(scene_id: str) -> ChipSource:
    year, doy = int(scene_id[9:13]), int(scene_id[13:16])
    date = (_dt.date(year, 1, 1) + _dt.timedelta(days=doy - 1)).isoformat()
    return ChipSource("landsat8-rgb", tuple(f"landsat8-bands/{scene_id}_B{b}.tif" for b in (4, 3, 2)), (1, 1, 1), date)


#: Scene classes of the domain encoder, with a caption phrase for each.
SCENE_CAPTIONS: dict[str, str] = {
    "naip-prairie": "farmland and prairie potholes in united states",
    "landsat-river": "a meandering river and forest in peru",
    "spacenet-urban": "buildings and roads of a city",
    "sentinel2-farmland": "fields and villages in slovenia",
    "landsat8-rgb": "a large landscape with mountains and coast",
}
SCENE_CLASSES: tuple[str, ...] = tuple(SCENE_CAPTIONS)

#: Every raster of ``../shared/data`` the domain encoder learns from, by scene class.
SOURCES: tuple[ChipSource, ...] = (
    *(_naip(f"m_4709963_se_14_1_{d}") for d in (
        "20090818", "20100629", "20120731", "20140720", "20150926", "20160816", "20170827", "20180716", "20190904")),
    *(ChipSource("landsat-river", (f"landsat-timeseries/{y}.tif",), (1, 2, 3), str(y))
      for y in (1985, 1990, 1995, 2000, 2005, 2010, 2015)),
    ChipSource("spacenet-urban", ("spacenet-samples/sample_geotiff.tif",), (1, 1, 1)),
    ChipSource("spacenet-urban", ("spacenet-samples/pan1.tif",), (1, 1, 1)),
    ChipSource("spacenet-urban", ("spacenet-samples/ms1.tif",), (3, 2, 1)),
    ChipSource("spacenet-urban", ("spacenet-samples/rgb_unmasked.tif",), (1, 2, 3)),
    *(ChipSource("sentinel2-farmland", (f"sentinel2-slovenia/reference_scene_{i}.tif",), (4, 3, 2)) for i in range(5)),
    _landsat8("LC81070352015122LGN00"),
    _landsat8("LC81210442015044LGN00"),
    ChipSource("landsat8-rgb", ("geotiff-samples/RGB.byte.tif",), (1, 2, 3)),
)


@dataclass
class RasterImage:
    """An RGB raster in [0, 1] (3, H, W) with its valid-pixel mask and metadata (GSD of one pixel)."""

    source: ChipSource
    rgb: np.ndarray
    valid: np.ndarray
    metadata: SatMetadata


def _stretch(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Percentile (2–98 %) stretch of a non-uint8 band to [0, 1], over its valid pixels."""
    values = band[valid]
    if values.size == 0:
        return np.zeros_like(band, dtype=np.float32)
    low, high = np.percentile(values, [2, 98])
    return np.clip((band - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)


def _pixel_metres(src) -> tuple[float, float, float]:
    """(GSD in m, centre lon, centre lat) of an open rasterio dataset."""
    from pyproj import CRS, Transformer

    crs = CRS.from_user_input(src.crs.to_wkt())
    b = src.bounds
    cx, cy = (b.left + b.right) / 2.0, (b.bottom + b.top) / 2.0
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(cx, cy)
    rx, ry = abs(src.res[0]), abs(src.res[1])
    if crs.is_geographic:
        rx, ry = rx * 111_320.0 * math.cos(math.radians(lat)), ry * 110_574.0
    return (rx + ry) / 2.0, float(lon), float(lat)


def read_source(root: str | os.PathLike, source: ChipSource) -> RasterImage:
    """Read a whole source raster as RGB [0, 1] with nodata masked (files here are small)."""
    import rasterio

    bands, valid = [], None
    for path, band in zip(source.paths * (3 if len(source.paths) == 1 else 1), source.bands):
        full = Path(root) / path
        if not full.is_file():
            raise FileNotFoundError(f"raster {str(full)!r} not found (scene {source.scene!r})")
        with rasterio.open(full) as src:
            arr = src.read(band).astype(np.float64)
            ok = src.read_masks(band) > 0
            if src.dtypes[band - 1] != "uint8":
                ok &= arr != 0  # scene borders of Landsat 8 and SpaceNet are zero-filled
            gsd, lon, lat = _pixel_metres(src)
            dtype = src.dtypes[band - 1]
        bands.append((arr, dtype))
        valid = ok if valid is None else valid & ok
    assert valid is not None
    rgb = np.stack([(a / 255.0).astype(np.float32) if d == "uint8" else _stretch(a, valid) for a, d in bands])
    md: dict = {"lon": lon, "lat": lat, "gsd": gsd}
    if source.date:
        md["date"] = source.date
    return RasterImage(source, rgb, valid, SatMetadata.from_dict(md))


@dataclass
class Chip:
    """One chip: ``image`` (size, size, 3) uint8 and its metadata (GSD of the resized chip)."""

    image: np.ndarray
    metadata: SatMetadata
    scene: str
    source: str
    window: tuple[int, int, int]  # row, col, native crop size


def sample_chips(
    raster: RasterImage,
    count: int,
    rng: np.random.Generator,
    *,
    region: str = "train",
    size: int = 64,
    crop_range: tuple[int, int] = (32, 192),
    min_valid: float = 0.95,
) -> list[Chip]:
    """Random square crops of ``raster`` inside ``region``, each resized to ``size`` px.

    The crop side is drawn log-uniformly in ``crop_range`` (clipped to the region), so one source
    yields several GSDs: GSD of the chip = native GSD · crop / size.
    """
    if region not in ("train", "heldout", "all"):
        raise ValueError(f"region={region!r}: choose train, heldout or all")
    _, height, width = raster.rgb.shape
    split = int(round(width * TRAIN_FRACTION))
    col0, col1 = {"train": (0, split), "heldout": (split, width), "all": (0, width)}[region]
    max_crop = min(crop_range[1], col1 - col0, height)
    min_crop = min(max(crop_range[0], MIN_CROP), max_crop)
    chips: list[Chip] = []
    attempts = 0
    while len(chips) < count and attempts < count * 30:
        attempts += 1
        crop = int(round(math.exp(rng.uniform(math.log(min_crop), math.log(max_crop + 1e-9)))))
        crop = max(min_crop, min(crop, max_crop))
        row = int(rng.integers(0, height - crop + 1))
        col = int(rng.integers(col0, col1 - crop + 1))
        if raster.valid[row:row + crop, col:col + crop].mean() < min_valid:
            continue
        window = torch.from_numpy(raster.rgb[:, row:row + crop, col:col + crop].copy())[None]
        resized = F.interpolate(window, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        image = (resized[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        md = raster.metadata.resized(crop, size)
        chips.append(Chip(image, md, raster.source.scene, raster.source.name, (row, col, crop)))
    if len(chips) < count:
        logger.warning("source %s: only %d of %d chips have enough valid pixels", raster.source.name, len(chips), count)
    return chips


def load_sources(root: str | os.PathLike, sources: Sequence[ChipSource] = SOURCES) -> list[RasterImage]:
    """Read every source raster under ``root`` (``../shared/data``)."""
    return [read_source(root, s) for s in sources]


def caption_for(scene: str) -> str:
    return f"a satellite image of {SCENE_CAPTIONS[scene]}"


def export_eval_set(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    per_source: int = 4,
    size: int = 64,
    region: str = "heldout",
    seed: int = 0,
    scenes: Sequence[str] | None = None,
) -> list[Path]:
    """Write held-out real chips as ``{key}.png`` + ``{key}.json`` (the evaluation folder format).

    Each sidecar has ``caption``, ``metadata`` (lat/lon/gsd/date), ``scene`` and ``source``.
    """
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source in SOURCES:
        if scenes is not None and source.scene not in scenes:
            continue
        raster = read_source(root, source)
        for i, chip in enumerate(sample_chips(raster, per_source, rng, region=region, size=size)):
            key = f"{source.name}_{i:03d}"
            PIL.Image.fromarray(chip.image).save(out / f"{key}.png")
            sidecar = {
                "caption": caption_for(chip.scene),
                "metadata": chip.metadata.to_dict(),
                "scene": chip.scene,
                "source": source.paths[0],
                "window": {"row": chip.window[0], "col": chip.window[1], "size": chip.window[2]},
            }
            (out / f"{key}.json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
            written.append(out / f"{key}.png")
    return written
