"""Reading one whole image file (PNG/JPEG or any raster) as native (C, H, W) pixels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DataError

PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Pixels of an image file as (C, H, W) in the stored dtype; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        import PIL.Image

        try:
            with PIL.Image.open(path) as img:
                arr = np.asarray(img.convert("RGB") if img.mode in ("P", "CMYK", "YCbCr") else img)
        except (OSError, ValueError) as err:
            raise DataError(path, f"not a readable image ({err})") from None
        return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            return src.read()
    except (RasterioError, OSError) as err:
        raise DataError(path, f"not a readable raster ({str(err).splitlines()[0]})") from None


def image_pixel_range(image: np.ndarray) -> tuple[list[float], list[float]]:
    """(low, high) per band: the full range for uint8, else the 2nd/98th percentile of finite pixels."""
    bands = image.shape[0]
    if image.dtype == np.uint8:
        return [0.0] * bands, [255.0] * bands
    lows, highs = [], []
    for band in image.astype(np.float64):
        valid = band[np.isfinite(band)]
        lo, hi = (np.percentile(valid, [2, 98]) if valid.size else (0.0, 1.0))
        lows.append(float(lo))
        highs.append(float(hi) if hi > lo else float(lo) + 1.0)
    return lows, highs
