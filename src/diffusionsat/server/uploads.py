"""Checks on uploaded images and masks before any work is queued.

Uploads are kept in memory (bounded by the size limits) and never written under a name the
client chose: the client's file name is recorded for the sidecar only, stripped of any folder.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np

from ..validation import too_small_problem

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class UploadError(ValueError):
    """A bad upload; ``field`` names the form field, ``status`` is 422 or 413."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status


@dataclass
class UploadedImage:
    """A validated PNG or GeoTIFF held in memory, with what its header says."""

    field: str
    filename: str
    kind: str  # "png" or "geotiff"
    data: bytes
    width: int
    height: int
    bands: int
    dtype: str
    crs: str | None
    transform: tuple[float, ...] | None

    def read(self) -> np.ndarray:
        """Pixels as ``(bands, height, width)``, in the file's dtype."""
        from rasterio.io import MemoryFile

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning for plain PNGs
            with MemoryFile(self.data) as memfile, memfile.open() as src:
                return src.read()

    def describe(self) -> dict[str, Any]:
        return {
            "field": self.field, "filename": self.filename, "kind": self.kind, "width": self.width,
            "height": self.height, "bands": self.bands, "dtype": self.dtype, "crs": self.crs,
        }


def safe_filename(name: str | None) -> str:
    """The last path component of a client-supplied name, printable ASCII only, at most 100 chars."""
    base = PurePath((name or "upload").replace("\\", "/")).name
    cleaned = "".join(c for c in base if c.isascii() and (c.isalnum() or c in "._- "))
    return cleaned[:100] or "upload"


def inspect_image(field: str, filename: str | None, data: bytes, *, max_bytes: int, max_pixels: int,
                  max_bands: int) -> UploadedImage:
    """Validate one upload from its header only (a decompression bomb is refused before decoding)."""
    if not data:
        raise UploadError(field, "empty file; upload a GeoTIFF or PNG")
    if len(data) > max_bytes:
        raise UploadError(field, f"file is {len(data)} bytes; the limit is {max_bytes} bytes", status=413)
    if data.startswith(PNG_MAGIC):
        kind = "png"
    elif data[:4] in TIFF_MAGICS:
        kind = "geotiff"
    else:
        raise UploadError(field, "not a GeoTIFF or PNG file (unrecognised file signature)")
    from rasterio.errors import RasterioIOError
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning for plain PNGs
            with MemoryFile(data) as memfile, memfile.open() as src:
                width, height, bands = src.width, src.height, src.count
                dtype = src.dtypes[0] if src.count else "none"
                crs = src.crs.to_string() if src.crs else None
                transform = tuple(src.transform)[:6] if src.crs else None
    except RasterioIOError as err:
        raise UploadError(field, f"cannot read the {kind} file ({str(err).splitlines()[0][:120]})") from None
    if width * height > max_pixels:
        side = int(math.isqrt(max_pixels))
        raise UploadError(field, f"image is {width}x{height} pixels; the limit is {max_pixels} pixels "
                                 f"(e.g. {side}x{side})", status=413)
    if (problem := too_small_problem(width, height, "image")) is not None:  # as the CLI: refused, not padded
        raise UploadError(field, problem)
    if not 1 <= bands <= max_bands:
        raise UploadError(field, f"image has {bands} bands; allowed [1, {max_bands}]")
    return UploadedImage(field, safe_filename(filename), kind, data, width, height, bands, dtype, crs, transform)


def check_mask(mask: UploadedImage, image: UploadedImage) -> np.ndarray:
    """A one-band mask of the image's size with at least one pixel to fill; returns it as bool (1 = fill)."""
    if mask.bands != 1:
        raise UploadError(mask.field, f"mask must have 1 band, got {mask.bands}")
    if (mask.width, mask.height) != (image.width, image.height):
        raise UploadError(mask.field, f"mask is {mask.width}x{mask.height} but the image is "
                                      f"{image.width}x{image.height}; they must match")
    filled = mask.read()[0] > 0
    if not filled.any():
        raise UploadError(mask.field, "mask has no pixels to fill (all zero); mark the area to fill with non-zero values")
    return filled
