"""Samples for the conditional tasks (SPEC §3): temporal sequences, super-resolution pairs,
in-painting image + mask. Each yields the common sample dict plus task keys:

- temporal: ``conditioning_pixel_values`` (T, C, H, W) earlier frames sorted by date,
  ``conditioning_metadata`` (list of T :class:`SatMetadata`); ``pixel_values``/``metadata`` are the
  latest frame (the target);
- super-resolution: ``conditioning_pixel_values`` (C_lr, h, w) low-res input of the same footprint,
  ``conditioning_metadata`` its metadata (GSD of the low-res pixels);
- in-painting: ``mask`` (1, H, W) float, 1 = pixels to fill.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import geo
from ..metadata import SatMetadata
from .errors import DataError
from .geotiff import Chip, RasterInfo, chip_windows, find_rasters, open_raster, read_chip
from .transforms import to_model_range

logger = logging.getLogger(__name__)


def _date_key(meta: SatMetadata) -> tuple[int, int, int]:
    return (meta.year or 0, meta.month or 0, meta.day or 0)


def _read_bounds(info: RasterInfo, bounds: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and validity of a map-coordinate box of ``info`` resampled to ``size`` (h, w)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError
    from rasterio.windows import from_bounds

    try:
        with rasterio.open(info.dataset) as src:
            win = from_bounds(*bounds, transform=src.transform)
            # Read at (about) native resolution, so GDAL never substitutes an overview, then
            # resample like the target chip (block average / antialiased bilinear).
            native = (max(1, round(win.height)), max(1, round(win.width)))
            data = src.read(info.bands, window=win, out_shape=(len(info.bands), *native),
                            resampling=Resampling.bilinear, boundless=True, fill_value=src.nodata or 0)
            valid = src.dataset_mask(window=win, out_shape=native, boundless=True) > 0
    except (RasterioError, OSError) as err:
        raise DataError(info.source, f"cannot read pixels ({str(err).splitlines()[0]})") from None
    if native != tuple(size):
        from .transforms import resample

        if size[0] != size[1]:
            raise ValueError(f"chips are square; got size {size}")
        data = resample(data, size[0])
        valid = resample(valid[None], size[0], nearest=True)[0]
    return data, valid


def _bounds(chip: Chip) -> tuple[float, float, float, float]:
    from rasterio.transform import Affine

    h, w = chip.image.shape[-2:]
    return geo.transform_bounds_of(Affine(*chip.transform), w, h)


# --- temporal ---------------------------------------------------------------------------------


def group_by_place(infos: Sequence[RasterInfo], tolerance_px: float = 2.0) -> list[list[RasterInfo]]:
    """Group scenes of the same place (same CRS, origins within ``tolerance_px`` pixels), each
    group sorted by date (unknown dates first)."""
    groups: list[list[RasterInfo]] = []
    for info in infos:
        for group in groups:
            ref = group[0]
            res = geo.pixel_size(ref.transform)[0]
            if ref.crs_wkt == info.crs_wkt and abs(ref.transform.c - info.transform.c) <= tolerance_px * res \
                    and abs(ref.transform.f - info.transform.f) <= tolerance_px * res:
                group.append(info)
                break
        else:
            groups.append([info])
    for group in groups:
        group.sort(key=lambda i: (i.acquisition.year or 0, i.acquisition.month or 0, i.acquisition.day or 0))
    return groups


@dataclass
class TemporalSample:
    """The frames of one place at one window, oldest first; the last is the target."""

    frames: list[Chip]

    def to_sample(self) -> dict[str, Any]:
        target = self.frames[-1]
        sample = target.to_sample()
        sample["conditioning_pixel_values"] = torch.stack([f.to_sample()["pixel_values"] for f in self.frames[:-1]])
        sample["conditioning_metadata"] = [f.metadata for f in self.frames[:-1]]
        return sample


class TemporalSequences:
    """Map-style dataset: for each chip window of a place, the frames of all its dates.

    Data: several rasters of one place at different dates (e.g. the NAIP or Landsat time series);
    places are found by :func:`group_by_place`. ``num_frames`` (default: all) keeps the latest ones.
    Frames are read over the target chip's map bounds, so rasters that differ by a row line up.
    ``every_date`` (with ``num_frames``) makes every date that has ``num_frames - 1`` earlier ones a
    target too, so a series of D dates gives D - num_frames + 1 sequences per window, not one.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], chip_size: int, *, num_frames: int | None = None,
                 date_pattern: str | None = None, bands: Any = None, stride: int | None = None,
                 every_date: bool = False, **chip_kwargs: Any):
        infos = [open_raster(p, bands=bands, date_pattern=date_pattern) for p in find_rasters(paths)]
        self.groups = [g for g in group_by_place(infos) if len(g) >= 2]
        if not self.groups:
            raise DataError(None, "temporal samples need at least two rasters of the same place")
        if num_frames is not None and num_frames < 2:
            raise ValueError(f"num_frames={num_frames}: must be ≥ 2 (conditioning frames + target)")
        if every_date and num_frames is None:
            raise ValueError("every_date needs num_frames (the length of each sequence)")
        self.num_frames, self.chip_kwargs = num_frames, chip_kwargs
        self.index: list[tuple[int, tuple[int, int, int, int], int]] = []
        for gi, group in enumerate(self.groups):
            width = min(i.width for i in group)
            height = min(i.height for i in group)
            ends = range(min(num_frames, len(group)), len(group) + 1) if every_date and num_frames else [len(group)]
            self.index.extend((gi, w, end) for end in ends for w in chip_windows(width, height, chip_size, stride))

    def __len__(self) -> int:
        return len(self.index)

    def sequence(self, idx: int) -> TemporalSample:
        gi, window, end = self.index[idx]
        group = self.groups[gi][:end]
        group = group[-self.num_frames:] if self.num_frames else group
        target = read_chip(group[-1], window, **self.chip_kwargs)
        bounds = _bounds(target)
        frames = []
        for info in group[:-1]:
            data, valid = _read_bounds(info, bounds, target.image.shape[-2:])
            meta = SatMetadata(lon=target.metadata.lon, lat=target.metadata.lat, gsd=target.metadata.gsd,
                               cloud_cover=info.acquisition.cloud_cover, year=info.acquisition.year,
                               month=info.acquisition.month, day=info.acquisition.day)
            frames.append(Chip(key=target.key, image=data, valid=valid, metadata=meta, caption=target.caption,
                               caption_fields=target.caption_fields, source=info.source, window=window,
                               crs_wkt=target.crs_wkt, transform=target.transform, band_names=info.band_names,
                               pixel_range=info.pixel_range, nodata=info.nodata))
        return TemporalSample([*frames, target])

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.sequence(idx).to_sample()


# --- super-resolution -------------------------------------------------------------------------


def degrade(image: np.ndarray, factor: int) -> np.ndarray:
    """Synthetic low-res version: ``factor``×``factor`` block average (the sensor's footprint),
    same dtype; the caller scales the GSD by ``factor``."""
    if factor < 2:
        raise ValueError(f"degradation factor={factor}: must be ≥ 2")
    c, h, w = image.shape
    if h % factor or w % factor:
        raise ValueError(f"chip {h}×{w} is not divisible by the degradation factor {factor}")
    blocks = image.astype(np.float64).reshape(c, h // factor, factor, w // factor, factor).mean(axis=(2, 4))
    if np.issubdtype(image.dtype, np.integer):
        blocks = np.round(blocks)
    return blocks.astype(image.dtype)


@dataclass
class SuperResPair:
    """High-res target chip and the low-res input of the same footprint."""

    high: Chip
    low: np.ndarray
    low_metadata: SatMetadata
    low_pixel_range: tuple[list[float], list[float]]

    def to_sample(self) -> dict[str, Any]:
        sample = self.high.to_sample()
        sample["conditioning_pixel_values"] = to_model_range(self.low, self.low_pixel_range)
        sample["conditioning_metadata"] = self.low_metadata
        return sample


class SuperResPairs:
    """Map-style dataset of super-resolution pairs.

    Data: either a real pair (``low`` = a multispectral raster such as SpaceNet ``ms1.tif``, ``high``
    = a higher-resolution raster of the same place such as ``pan1.tif``): chips are cut on the
    high-res grid and the low-res pixels read over the same map bounds at their native resolution;
    or only ``high`` with ``factor``: the low-res input is a block-average degradation.

    ``roi`` (minx, miny, maxx, maxy in the high-res raster's CRS) keeps only the chips that lie
    wholly inside it: one scene split into a training and a held-out part with no shared pixel.
    """

    def __init__(self, high: str | os.PathLike, chip_size: int, *, low: str | os.PathLike | None = None,
                 factor: int = 4, stride: int | None = None, low_bands: Any = None, bands: Any = None,
                 roi: Sequence[float] | None = None, **chip_kwargs: Any):
        self.high = open_raster(high, bands=bands)
        self.low = open_raster(low, bands=low_bands) if low is not None else None
        if self.low is not None:
            if geo.as_crs(self.low.crs_wkt) != geo.as_crs(self.high.crs_wkt):
                raise DataError(low, f"CRS {geo.crs_label(self.low.crs_wkt)} differs from the high-res "
                                     f"raster's {geo.crs_label(self.high.crs_wkt)}")
            ratio = geo.pixel_size(self.low.transform)[0] / geo.pixel_size(self.high.transform)[0]
            factor = round(ratio)
            if factor < 1 or abs(ratio - factor) > 0.01:
                raise DataError(low, f"pixel size ratio {ratio:.3f} to the high-res raster is not a whole number ≥ 1")
        if chip_size % factor:
            raise ValueError(f"chip_size={chip_size} must be divisible by the resolution factor {factor}")
        self.factor, self.chip_kwargs = factor, chip_kwargs
        self.windows = chip_windows(self.high.width, self.high.height, chip_size, stride)
        if roi is not None:
            self.windows = self._inside(roi, high)

    def _inside(self, roi: Sequence[float], path: Any) -> list[tuple[int, int, int, int]]:
        """The chip windows wholly inside ``roi``; an empty result is the user's mistake, said as one."""
        from rasterio.transform import Affine

        if len(roi) != 4 or not (roi[0] < roi[2] and roi[1] < roi[3]):
            raise ValueError(f"roi={list(roi)!r}: must be [minx, miny, maxx, maxy] with minx < maxx and miny < maxy")
        minx, miny, maxx, maxy = (float(v) for v in roi)
        transform = Affine(*self.high.transform[:6])
        kept = []
        for col, row, w, h in self.windows:
            left, bottom, right, top = geo.transform_bounds_of(transform * Affine.translation(col, row), w, h)
            if left >= minx and right <= maxx and bottom >= miny and top <= maxy:
                kept.append((col, row, w, h))
        if not kept:
            bounds = geo.transform_bounds_of(transform, self.high.width, self.high.height)
            raise DataError(path, f"roi={list(roi)!r} holds no whole chip of the raster (bounds "
                                  f"{[round(b, 3) for b in bounds]})")
        return kept

    def __len__(self) -> int:
        return len(self.windows)

    def pair(self, idx: int) -> SuperResPair:
        high = read_chip(self.high, self.windows[idx], **self.chip_kwargs)
        size = high.image.shape[-1] // self.factor
        low_gsd = None if high.metadata.gsd is None else high.metadata.gsd * self.factor
        if self.low is not None:
            low, _ = _read_bounds(self.low, _bounds(high), (size, size))
            meta = high.metadata.replace(gsd=low_gsd, cloud_cover=self.low.acquisition.cloud_cover,
                                         year=self.low.acquisition.year, month=self.low.acquisition.month,
                                         day=self.low.acquisition.day)
            return SuperResPair(high, low, meta, self.low.pixel_range)
        return SuperResPair(high, degrade(high.image, self.factor), high.metadata.replace(gsd=low_gsd), high.pixel_range)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.pair(idx).to_sample()


class DownsampledPairs:
    """Super-resolution pairs from any dataset of sample dicts (e.g. :class:`~diffusionsat.data.UCMerced`
    at its native 256 px): each image is cut into ``crop``-pixel tiles, the targets, and each tile's
    ``factor``× block average is its low-res input (GSD × ``factor``).

    Tiles rather than resized images keep the target at the sensor's real resolution: a model
    trained this way learns real 0.3 m detail from real 1.2 m inputs (UC Merced 256 px vs 64 px).
    """

    def __init__(self, dataset: Any, crop: int, *, factor: int = 4, transform: Any = None):
        if crop % factor:
            raise ValueError(f"crop={crop} must be divisible by the resolution factor {factor}")
        first = dataset[0]["pixel_values"]
        h, w = int(first.shape[-2]), int(first.shape[-1])
        if h < crop or w < crop:
            raise ValueError(f"images are {w}x{h} px, smaller than the crop of {crop} px")
        self.dataset, self.crop, self.factor, self.size, self.transform = dataset, crop, factor, (h, w), transform
        self.grid = [(r, c) for r in range(0, h - crop + 1, crop) for c in range(0, w - crop + 1, crop)]

    def __len__(self) -> int:
        return len(self.dataset) * len(self.grid)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        item, tile = divmod(idx, len(self.grid))
        sample = dict(self.dataset[item])
        r, c = self.grid[tile]
        image = torch.as_tensor(sample["pixel_values"])
        meta: SatMetadata = sample["metadata"]
        if tuple(image.shape[-2:]) != self.size:  # a few UC Merced images are 256x247 etc.: onto the common grid
            if meta.gsd is not None:
                meta = meta.replace(gsd=meta.gsd * image.shape[-1] / self.size[1])
            image = torch.nn.functional.interpolate(image[None], size=self.size, mode="bilinear", align_corners=False,
                                                    antialias=True)[0]
        high = image[:, r:r + self.crop, c:c + self.crop]
        low = torch.nn.functional.avg_pool2d(high[None], self.factor)[0]
        sample.update(key=f"{sample.get('key', item)}-{r}-{c}", pixel_values=high.contiguous(), metadata=meta,
                      conditioning_pixel_values=low,
                      conditioning_metadata=meta.replace(gsd=None if meta.gsd is None else meta.gsd * self.factor))
        return self.transform(sample) if self.transform else sample


# --- in-painting ------------------------------------------------------------------------------


def read_vector(path: str | os.PathLike) -> tuple[list[Any], str]:
    """Geometries and CRS (WKT or ``EPSG:4326`` by the GeoJSON default) of a GeoJSON file."""
    from shapely.geometry import shape

    from .dates import read_json

    data = read_json(path)
    if not isinstance(data, dict) or data.get("type") not in ("FeatureCollection", "Feature") and "coordinates" not in data:
        raise DataError(path, "not GeoJSON (expected a FeatureCollection, Feature or geometry)")
    feats = data.get("features") if data.get("type") == "FeatureCollection" else [data]
    crs = ((data.get("crs") or {}).get("properties") or {}).get("name") or "EPSG:4326"
    geoms = []
    for n, feat in enumerate(feats or []):
        geom = feat.get("geometry", feat) if isinstance(feat, dict) else None
        if not geom:
            continue
        try:
            geoms.append(shape(geom))
        except Exception as err:  # noqa: BLE001 - any malformed geometry is the same user problem
            raise DataError(path, f"feature {n}: invalid geometry ({err})") from None
    return geoms, crs


def rasterize_mask(geometries: Sequence[Any], geometry_crs: str, crs_wkt: str, transform: Any,
                   shape: tuple[int, int]) -> np.ndarray:
    """1 inside the geometries (reprojected to the raster CRS when needed), 0 elsewhere; uint8 (H, W)."""
    from pyproj import Transformer
    from rasterio.features import rasterize
    from shapely.ops import transform as shp_transform

    src, dst = geo.as_crs(geometry_crs), geo.as_crs(crs_wkt)
    if src != dst:
        project = Transformer.from_crs(src, dst, always_xy=True).transform
        geometries = [shp_transform(project, g) for g in geometries]
    if not geometries:
        return np.zeros(shape, np.uint8)
    from rasterio.transform import Affine

    return rasterize([(g, 1) for g in geometries], out_shape=shape, transform=Affine(*transform[:6]),
                     fill=0, dtype="uint8")


def random_box_mask(height: int, width: int, rng: np.random.Generator, *, boxes: int = 3,
                    min_frac: float = 0.1, max_frac: float = 0.4) -> np.ndarray:
    """``boxes`` random rectangles, each side ``min_frac``–``max_frac`` of the image; uint8 (H, W)."""
    if not 0 < min_frac <= max_frac <= 1:
        raise ValueError(f"box fractions ({min_frac}, {max_frac}) out of range; need 0 < min ≤ max ≤ 1")
    mask = np.zeros((height, width), np.uint8)
    for _ in range(boxes):
        bh = max(1, int(rng.uniform(min_frac, max_frac) * height))
        bw = max(1, int(rng.uniform(min_frac, max_frac) * width))
        top, left = rng.integers(0, height - bh + 1), rng.integers(0, width - bw + 1)
        mask[top:top + bh, left:left + bw] = 1
    return mask


class InpaintSamples:
    """Map-style dataset of image chips with in-painting masks (1 = fill).

    Masks come from a vector file (e.g. SpaceNet building footprints GeoJSON, rasterised onto each
    chip) or, without one, from ``boxes`` random rectangles (seeded per chip: reproducible).
    ``min_mask`` drops chips whose vector mask covers less than that fraction.
    """

    def __init__(self, paths: Sequence[str | os.PathLike] | str | os.PathLike, chip_size: int, *,
                 vector: str | os.PathLike | None = None, boxes: int = 3, seed: int = 0, min_mask: float = 0.0,
                 stride: int | None = None, bands: Any = None, **chip_kwargs: Any):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.infos = [open_raster(p, bands=bands) for p in find_rasters(paths)]
        self.geoms, self.geom_crs = read_vector(vector) if vector is not None else ([], "")
        self.vector, self.boxes, self.seed, self.chip_kwargs = vector, boxes, seed, chip_kwargs
        self.index = []
        for i, info in enumerate(self.infos):
            for w in chip_windows(info.width, info.height, chip_size, stride):
                if vector is not None and min_mask > 0:
                    t = geo.window_transform(info.transform, w[0], w[1])
                    if rasterize_mask(self.geoms, self.geom_crs, info.crs_wkt, tuple(t), (w[3], w[2])).mean() < min_mask:
                        continue
                self.index.append((i, w))

    def __len__(self) -> int:
        return len(self.index)

    def mask_for(self, chip: Chip, idx: int) -> np.ndarray:
        h, w = chip.image.shape[-2:]
        if self.vector is not None:
            return rasterize_mask(self.geoms, self.geom_crs, chip.crs_wkt, chip.transform, (h, w))
        return random_box_mask(h, w, np.random.default_rng([self.seed, idx]), boxes=self.boxes)

    def item(self, idx: int) -> tuple[Chip, np.ndarray]:
        i, window = self.index[idx]
        chip = read_chip(self.infos[i], window, **self.chip_kwargs)
        return chip, self.mask_for(chip, idx)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        chip, mask = self.item(idx)
        sample = chip.to_sample()
        sample["mask"] = torch.from_numpy(mask.astype(np.float32))[None]
        return sample


class BoxMasked:
    """In-painting samples from any dataset of sample dicts: ``boxes`` random rectangles per sample,
    seeded by (``seed``, index) so every run and every resume sees the same masks."""

    def __init__(self, dataset: Any, *, boxes: int = 3, seed: int = 0):
        self.dataset, self.boxes, self.seed = dataset, boxes, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        sample = dict(self.dataset[idx])
        h, w = sample["pixel_values"].shape[-2:]
        mask = random_box_mask(int(h), int(w), np.random.default_rng([self.seed, idx]), boxes=self.boxes)
        sample["mask"] = torch.from_numpy(mask.astype(np.float32))[None]
        return sample
