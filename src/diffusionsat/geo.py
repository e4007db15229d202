"""Coordinate helpers and GeoTIFF writing: CRS, transform and GSD travel with the pixels."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pyproj import CRS, Transformer
from rasterio.transform import Affine

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
    return crs, Affine(gsd, 0.0, x - width * gsd / 2.0, 0.0, -gsd, y + height * gsd / 2.0)


def geotiff_profile(
    width: int, height: int, count: int, dtype: str, crs: CRS | str | None, transform: Affine | None,
    *, nodata: float | None = None,
) -> dict[str, Any]:
    """rasterio creation options of our outputs: deflate, 256 px tiles (from 256 px up), BigTIFF when needed.

    Without ``crs``/``transform`` it is a plain TIFF (no georeference).
    """
    import rasterio

    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",  # classic TIFF unless the file could pass 4 GiB
    }
    if width >= 256 and height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if crs is not None:
        profile["crs"] = rasterio.crs.CRS.from_wkt(CRS.from_user_input(crs).to_wkt())
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    if count in (3, 4) and dtype == "uint8":
        profile["photometric"] = "RGB"
    return profile


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
    profile = geotiff_profile(width, height, count, arr.dtype.name, crs, transform, nodata=nodata)
    with atomic_path(path, overwrite=overwrite) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(np.moveaxis(arr, -1, 0))
        for i, desc in enumerate(band_descriptions or [], start=1):
            dst.set_band_description(i, desc)
        if tags:
            dst.update_tags(**{k: str(v) for k, v in tags.items()})
    return Path(path)


# --- Reading side: where a raster window lies and how big its pixels are on the ground -----------

#: Below this relative scale distortion the nominal pixel size *is* the GSD (UTM: at most 0.1 %);
#: above it (Web-Mercator away from the equator, ...) the GSD is corrected by the projection's scale.
SCALE_TOLERANCE = 0.01


def as_crs(crs: Any) -> CRS:
    """A pyproj CRS from a rasterio CRS, a pyproj CRS, WKT, ``"EPSG:n"`` or an EPSG integer.

    Goes through WKT so that CRSs without an EPSG code (e.g. a geostationary projection) survive.
    """
    if crs is None:
        raise ValueError("no CRS (the raster is not georeferenced)")
    if isinstance(crs, CRS):
        return crs
    to_wkt = getattr(crs, "to_wkt", None)
    if callable(to_wkt):
        return CRS.from_wkt(to_wkt())
    return CRS.from_user_input(crs)


def crs_label(crs: Any) -> str:
    """Short human-readable name: ``EPSG:32614`` when it has a code, else the CRS name."""
    pcrs = as_crs(crs)
    epsg = pcrs.to_epsg(min_confidence=90)
    return f"EPSG:{epsg}" if epsg else (pcrs.name or "custom CRS")


@functools.lru_cache(maxsize=128)
def _to_wgs84(wkt: str, thread: int) -> Transformer:
    """Transformers are costly to build (≈ms) and not thread-safe: one per (CRS, thread), cached."""
    return Transformer.from_crs(CRS.from_wkt(wkt), "EPSG:4326", always_xy=True)


def to_lonlat(crs: Any, x: float, y: float) -> tuple[float, float]:
    """Reproject one point of ``crs`` to WGS 84 (lon, lat); NaN when it has no place on Earth."""
    lon, lat = _to_wgs84(as_crs(crs).to_wkt(), threading.get_ident()).transform(x, y)
    if not (np.isfinite(lon) and np.isfinite(lat)):
        return float("nan"), float("nan")
    return float(lon), float(lat)


def window_center(transform: Affine, col_off: float, row_off: float, width: float, height: float) -> tuple[float, float]:
    """Map coordinates of the centre of a pixel window (pixel corners convention, as rasterio)."""
    x, y = transform @ (col_off + width / 2.0, row_off + height / 2.0)
    return float(x), float(y)


def window_center_lonlat(
    crs: Any, transform: Affine, col_off: float, row_off: float, width: float, height: float
) -> tuple[float, float]:
    """(lon, lat) in WGS 84 of the centre of a pixel window of a raster in ``crs``."""
    return to_lonlat(crs, *window_center(transform, col_off, row_off, width, height))


def pixel_size(transform: Affine) -> tuple[float, float]:
    """Pixel width and height in CRS units, also for rotated/sheared transforms."""
    return float(np.hypot(transform.a, transform.d)), float(np.hypot(transform.b, transform.e))


def gsd_metres(crs: Any, transform: Affine, lon: float | None = None, lat: float | None = None) -> float:
    """Ground sampling distance in metres per pixel, at (lon, lat) when the projection needs it.

    - geographic CRS (EPSG:4326, ...): the geodesic length of one pixel east-west and north-south
      at the given point, averaged;
    - projected CRS: pixel size times the unit's metres, divided by the projection's linear scale
      (square root of its areal scale) when that differs from 1 by more than ``SCALE_TOLERANCE``
      (Web-Mercator: 1/cos(lat)); for UTM and other local projections the nominal size is the GSD.
    The result is the square root of the ground area of one pixel, so anisotropic pixels average.
    """
    from pyproj import Geod, Proj

    pcrs = as_crs(crs)
    size_x, size_y = pixel_size(transform)
    if pcrs.is_geographic:
        if lon is None or lat is None:
            raise ValueError("gsd of a geographic CRS needs the (lon, lat) where it is measured")
        geod = Geod(ellps="WGS84")
        _, _, dx = geod.inv(lon - size_x / 2, lat, lon + size_x / 2, lat)
        half = min(size_y / 2, 90 - abs(lat)) if abs(lat) < 90 else size_y / 2
        _, _, dy = geod.inv(lon, lat - half, lon, lat + half)
        dy *= size_y / (2 * half) if half > 0 else 1.0
        return float(np.sqrt(abs(dx) * abs(dy)))
    factor = pcrs.axis_info[0].unit_conversion_factor if pcrs.axis_info else 1.0
    nominal = float(np.sqrt(size_x * size_y)) * factor
    if lon is None or lat is None or not (np.isfinite(lon) and np.isfinite(lat)):
        return nominal
    try:
        factors = Proj(pcrs).get_factors(lon, lat)
        scale = float(np.sqrt(factors.areal_scale))
    except Exception:  # noqa: BLE001 - projections without a scale model: nominal size is all we know
        return nominal
    if not np.isfinite(scale) or scale <= 0 or abs(scale - 1.0) <= SCALE_TOLERANCE:
        return nominal
    return nominal / scale


def window_transform(transform: Affine, col_off: float, row_off: float) -> Affine:
    """Transform of a window starting at (col_off, row_off) of a raster with ``transform``."""
    return transform @ Affine.translation(col_off, row_off)


def scaled_transform(transform: Affine, from_size: tuple[int, int], to_size: tuple[int, int]) -> Affine:
    """Transform of the same footprint resampled from (w, h) ``from_size`` to ``to_size`` pixels.

    Used for super-resolved or resized outputs: the bounds stay, the pixels shrink or grow.
    """
    return transform @ Affine.scale(from_size[0] / to_size[0], from_size[1] / to_size[1])


def transform_bounds_of(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a ``width``×``height`` grid (north-up or not)."""
    xs, ys = zip(*(transform @ (c, r) for c, r in ((0, 0), (width, 0), (0, height), (width, height))))
    return float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))


def write_geotiff_like(
    path: str | os.PathLike,
    image: np.ndarray,
    reference: str | os.PathLike,
    *,
    window: tuple[int, int, int, int] | None = None,
    nodata: float | None = None,
    band_descriptions: Sequence[str] | None = None,
    tags: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``image`` (H, W[, C]) over the footprint of ``reference`` (or its pixel ``window``).

    The output covers the same ground whatever its size: a 4× super-resolved chip gets the input
    chip's bounds with pixels four times smaller. ``window`` is (col_off, row_off, width, height).
    """
    import rasterio

    with rasterio.open(reference) as src:
        if src.crs is None:
            raise ValueError(f"{os.fspath(reference)}: no CRS, cannot georeference an output on it")
        col_off, row_off, w, h = window or (0, 0, src.width, src.height)
        transform = window_transform(src.transform, col_off, row_off)
        crs = as_crs(src.crs)
    arr = np.asarray(image)
    out_h, out_w = arr.shape[:2]
    return write_geotiff(
        path, arr, crs, scaled_transform(transform, (w, h), (out_w, out_h)), nodata=nodata,
        band_descriptions=band_descriptions, tags=tags, overwrite=overwrite,
    )
