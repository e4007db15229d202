"""Small image utilities shared by training validation, evaluation reports and docs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image


def to_uint8_hwc(image: PIL.Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image, a uint8 array, or a float array in [0, 1]."""
    if isinstance(image, PIL.Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return arr


def image_grid(rows: Sequence[Sequence[PIL.Image.Image | np.ndarray]], pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile rows of equally sized images into one (H, W, 3) uint8 grid with ``pad`` px gutters."""
    cells = [[to_uint8_hwc(im) for im in row] for row in rows]
    if not cells or not cells[0]:
        raise ValueError("image_grid needs at least one image")
    h, w = cells[0][0].shape[:2]
    ncols = max(len(r) for r in cells)
    grid = np.full((len(cells) * (h + pad) + pad, ncols * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for r, row in enumerate(cells):
        for c, im in enumerate(row):
            if im.shape[:2] != (h, w):
                im = np.asarray(PIL.Image.fromarray(im).resize((w, h), PIL.Image.BILINEAR))
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + h, x : x + w] = im
    return grid
