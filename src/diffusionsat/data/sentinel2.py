"""Sentinel-2 MSI scenes: named bands, resampling to the 10 m grid, reflectance scaling.

Data: Copernicus Sentinel-2 L1C (top-of-atmosphere) or L2A (surface) reflectance, 13 bands:

=====  ====  ===========  =====  ====  ===========
band   m     name         band   m     name
=====  ====  ===========  =====  ====  ===========
B01    60    coastal      B08    10    NIR
B02    10    blue         B8A    20    narrow NIR
B03    10    green        B09    60    water vapour
B04    10    red          B10    60    cirrus (L1C)
B05    20    red edge 1   B11    20    SWIR 1
B06    20    red edge 2   B12    20    SWIR 2
B07    20    red edge 3
=====  ====  ===========  =====  ====  ===========

Inputs: one multi-band raster whose band descriptions name the bands (as eo-learn exports), or a
folder of per-band files (``*_B04.jp2``, ``*_B8A_20m.tif``, ...). 20 m and 60 m bands are resampled
(bilinear) onto the grid of a 10 m band covering the same footprint.

Reflectance scaling: integer DNs are ``reflectance = (DN + offset) / 10000`` with ``offset = 0``
before processing baseline 04.00 and ``-1000`` from it on (25 January 2022; ``RADIO_ADD_OFFSET``
for L1C, ``BOA_ADD_OFFSET`` for L2A); pass ``offset`` explicitly, or set it from the product's
metadata. Float rasters are taken to be reflectance already (0–1). ``pixel_values`` maps
reflectance ``[0, max_reflectance]`` (default 0.3, bright land) linearly onto [-1, 1].
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import geo
from ..metadata import SatMetadata
from .captions import AUTO_TEMPLATE, CaptionTemplate, caption_fields, land_cover_words
from .dates import date_for_file
from .errors import DataError

BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
RESOLUTION_M: dict[str, int] = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20,
                                "B08": 10, "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20}
RGB: tuple[str, str, str] = ("B04", "B03", "B02")
#: The 10 bands the original super-resolution ControlNet uses (B01, B09, B10 dropped).
SR_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
QUANTIFICATION_VALUE = 10000.0
OFFSET_FROM_BASELINE_0400 = -1000.0


def normalize_band_name(name: str) -> str:
    """``"b4"``, ``"B04"``, ``"b8a"`` → ``"B04"``/``"B8A"``; unknown names raise ``ValueError``."""
    m = re.fullmatch(r"[Bb]?0?(\d{1,2}|8[Aa])", name.strip())
    if not m:
        raise ValueError(f"band {name!r}: not a Sentinel-2 band; allowed {', '.join(BANDS)}")
    code = m.group(1).upper()
    band = "B8A" if code == "8A" else f"B{int(code):02d}"
    if band not in BANDS:
        raise ValueError(f"band {name!r}: not a Sentinel-2 band; allowed {', '.join(BANDS)}")
    return band


def to_reflectance(dn: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """DN → reflectance ``(DN + offset) / 10000``; floats are returned as float32 unchanged."""
    if np.issubdtype(dn.dtype, np.floating):
        return dn.astype(np.float32)
    return ((dn.astype(np.float32) + offset) / QUANTIFICATION_VALUE).astype(np.float32)


class Sentinel2Scene:
    """One Sentinel-2 scene (multi-band file or folder of band files) on its 10 m grid."""

    def __init__(self, path: str | os.PathLike, *, offset: float = 0.0, date_pattern: str | None = None):
        import rasterio
        from rasterio.errors import RasterioError

        self.path = Path(path)
        self.offset = offset
        self.files: dict[str, tuple[Path, int]] = {}
        if not self.path.exists():
            raise DataError(self.path, "not found")
        try:
            if self.path.is_dir():
                for f in sorted(self.path.rglob("*")):
                    m = re.search(r"_(B\d{2}|B8A)(?:_\d{2}m)?\.(jp2|tif|tiff)$", f.name, re.IGNORECASE)
                    if m:
                        self.files.setdefault(m.group(1).upper(), (f, 1))
                if not self.files:
                    raise DataError(self.path, "no Sentinel-2 band files (*_B02.jp2, *_B8A_20m.tif, ...) in folder")
            else:
                with rasterio.open(self.path) as src:
                    names = [(d or "").upper() for d in src.descriptions]
                    for i, name in enumerate(names, start=1):
                        if name in BANDS:
                            self.files[name] = (self.path, i)
                    if not self.files:
                        if src.count == len(BANDS):
                            self.files = {b: (self.path, i) for i, b in enumerate(BANDS, start=1)}
                        else:
                            raise DataError(self.path, f"has {src.count} band{'s' if src.count != 1 else ''} "
                                                       f"without Sentinel-2 band names; expected {len(BANDS)} bands "
                                                       f"({', '.join(BANDS)}) or band descriptions naming them")
            ref_band = next((b for b in ("B02", "B03", "B04", "B08") if b in self.files), None)
            if ref_band is None:
                ref_band = min(self.files, key=lambda b: RESOLUTION_M[b])
            ref_path, _ = self.files[ref_band]
            with rasterio.open(ref_path) as ref:
                if ref.crs is None:
                    raise DataError(ref_path, "no georeference (no CRS)")
                self.crs_wkt, self.transform = ref.crs.to_wkt(), ref.transform
                self.width, self.height = ref.width, ref.height
                self.bounds = tuple(ref.bounds)
                self.acquisition = date_for_file(ref_path, tags=ref.tags(), date_pattern=date_pattern)
        except (RasterioError, OSError) as err:
            raise DataError(self.path, f"not a readable raster ({str(err).splitlines()[0]})") from None

    @property
    def bands(self) -> list[str]:
        return [b for b in BANDS if b in self.files]

    def read(self, bands: Sequence[str] = RGB, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Reflectance (C, H, W) float32 of ``bands`` on the 10 m grid, for a pixel ``window``."""
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.windows import Window, from_bounds

        names = [normalize_band_name(b) for b in bands]
        missing = [b for b in names if b not in self.files]
        if missing:
            raise DataError(self.path, f"band {missing[0]} not in this scene; it has {', '.join(self.bands)}")
        col, row, w, h = window or (0, 0, self.width, self.height)
        left, top = self.transform @ (col, row)
        right, bottom = self.transform @ (col + w, row + h)
        out = np.empty((len(names), h, w), np.float32)
        for i, band in enumerate(names):
            path, index = self.files[band]
            with rasterio.open(path) as src:
                win = from_bounds(left, bottom, right, top, transform=src.transform) if path != self.path or \
                    src.transform != self.transform else Window(col, row, w, h)
                dn = src.read(index, window=win, out_shape=(h, w), resampling=Resampling.bilinear, boundless=False)
            out[i] = to_reflectance(dn, self.offset)
        return out

    def metadata(self, window: tuple[int, int, int, int] | None = None, out_size: int | None = None) -> SatMetadata:
        col, row, w, h = window or (0, 0, self.width, self.height)
        lon, lat = geo.window_center_lonlat(self.crs_wkt, self.transform, col, row, w, h)
        gsd = geo.gsd_metres(self.crs_wkt, self.transform, lon, lat) * (w / out_size if out_size else 1.0)
        acq = self.acquisition
        return SatMetadata(lon=lon, lat=lat, gsd=gsd, cloud_cover=acq.cloud_cover,
                           year=acq.year, month=acq.month, day=acq.day)


class Sentinel2Chips:
    """Map-style dataset of chips of Sentinel-2 scenes with chosen bands (see module docstring).

    ``pixel_values`` holds the chosen bands (default true-colour B04, B03, B02) scaled from
    ``[0, max_reflectance]`` to [-1, 1]; ``reflectance`` holds the unscaled values.
    """

    def __init__(self, scenes: Sequence[str | os.PathLike], chip_size: int, *, bands: Sequence[str] = RGB,
                 stride: int | None = None, max_reflectance: float = 0.3, offset: float = 0.0,
                 template: str = AUTO_TEMPLATE, countries: str | os.PathLike | None = None, transform: Any = None):
        from .geotiff import chip_windows

        if not 0 < max_reflectance <= 2:
            raise ValueError(f"max_reflectance={max_reflectance!r} out of range; allowed (0, 2]")
        self.bands = [normalize_band_name(b) for b in bands]
        self.scenes = [Sentinel2Scene(s, offset=offset) for s in scenes]
        for scene in self.scenes:
            missing = [b for b in self.bands if b not in scene.files]
            if missing:
                raise DataError(scene.path, f"band {missing[0]} not in this scene; it has {', '.join(scene.bands)}")
        self.index = [(i, w) for i, s in enumerate(self.scenes) for w in chip_windows(s.width, s.height, chip_size, stride)]
        self.max_reflectance, self.template, self.countries, self.transform = max_reflectance, template, countries, transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        import torch

        i, window = self.index[idx]
        scene = self.scenes[i]
        refl = scene.read(self.bands, window)
        meta = scene.metadata(window)
        land = None
        if {"B04", "B08"} <= set(scene.files):
            extra = scene.read(["B03", "B04", "B08"], window)
            land = land_cover_words(extra[1], extra[2], extra[0])
        fields = caption_fields(meta, sensor="Sentinel-2", land_cover=land, countries=self.countries)
        scaled = np.clip(refl / self.max_reflectance, 0, 1) * 2 - 1
        sample = {
            "key": f"{scene.path.stem}_c{window[0]}_r{window[1]}_s{window[2]}",
            "pixel_values": torch.from_numpy(np.nan_to_num(scaled, nan=-1.0).astype(np.float32)),
            "reflectance": torch.from_numpy(refl),
            "caption": CaptionTemplate(self.template).render(fields),
            "metadata": meta,
            "bands": list(self.bands),
            "caption_fields": {k: v for k, v in fields.items() if v is not None},
        }
        return self.transform(sample) if self.transform else sample
