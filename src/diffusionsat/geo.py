"""Coordinate helpers and GeoTIFF writing: CRS, transform and GSD travel with the pixels."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import CRS, Transformer
from rasterio.transform import Affine, from_origin

from .fileio import atomic_path


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS 84 / UTM zone CRS containing (lon, lat), with the Norway and Svalbard exceptions."""
    if not (-180.0 <= lon <= 180.0 and -80.0 <= lat <= 84.0):
        if -90.0 <= lat <= 90.0:
            # UPS for the poles.
            return CRS.from_epsg(32661 if lat > 0 else 32761)
        raise ValueError(f"lat={lat!r}: out of range; allowed [-90, 90]")
    zone = int((lon + 180.0) // 6.0) + 1
    zone = min(zone, 60)
    if 56.0 <= lat < 64.0 and 3.0 <= lon < 12.0:
        zone = 32
    if 72.0 <= lat < 84.0 and lon >= 0.0:
        for lo, hi, z in ((0.0, 9.0, 31), (9.0, 21.0, 33), (21.0, 33.0, 35), (33.0, 42.0, 37)):
            if lo <= lon < hi:
                zone = z
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def grid_for_center(lon: float, lat: float, gsd: float, width: int, height: int) -> tuple[CRS, Affine]:
    """CRS and transform of a ``width``×``height`` image of ``gsd`` m/px centred at (lon, lat)."""
    crs = utm_crs(lon, lat)
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    return crs, from_origin(x - width * gsd / 2.0, y + height * gsd / 2.0, gsd, gsd)


def write_geotiff(
    path: str | os.PathLike,
    image: np.ndarray,
    crs: CRS | str | None,
    transform: Affine | None,
    *,
    nodata: float | None = None,
    band_descriptions: Sequence[str] | None = None,
    tags: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``image`` (H, W[, C], channels last) as a tiled, deflate-compressed GeoTIFF, atomically."""
    import rasterio

    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {arr.shape}")
    height, width, count = arr.shape
    if band_descriptions is not None and len(band_descriptions) != count:
        raise ValueError(f"{len(band_descriptions)} band descriptions for {count} bands")
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": arr.dtype.name,
        "compress": "deflate",
    }
    if width >= 256 and height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if crs is not None:
        profile["crs"] = rasterio.crs.CRS.from_wkt(CRS.from_user_input(crs).to_wkt())
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    if count in (3, 4) and arr.dtype == np.uint8:
        profile["photometric"] = "RGB"
    with atomic_path(path, overwrite=overwrite) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(np.moveaxis(arr, -1, 0))
        for i, desc in enumerate(band_descriptions or [], start=1):
            dst.set_band_description(i, desc)
        if tags:
            dst.update_tags(**{k: str(v) for k, v in tags.items()})
    return Path(path)
