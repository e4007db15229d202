"""Block processing of a scene: a grid of overlapping blocks, feathered writes, scene-wide noise.

A scene (or a window of it) is cut into *core* blocks that tile it without overlap, as evenly as
possible; each block is read with a context *margin* on every side (clipped at the scene's edge),
so neighbouring blocks share a band ``2 × margin`` wide. Every block's whole result (core and
margins) is written into the output with a windowed write; blocks go row by row, left to right.
Where a block overlaps what its left and upper neighbours already wrote, the output becomes

    out = w · new + (1 − w) · old,   w = w_left(x) · w_top(y),

with ``old`` read back from the output file and ``w`` rising linearly across the shared band,
``w = (d + 0.5) / band`` at ``d`` pixels from the block's outer edge (1 elsewhere, also on the
right and bottom, whose neighbours blend into it later). The output thus passes continuously from
one block into the next (no hard seams); pixels a task must keep exactly (the unmasked pixels of
in-painting) are written as the block gives them. Memory is bounded by the block size: one block's
pixels, plus GDAL's block cache (``GDAL_CACHEMAX``) for the output file.

The tasks themselves are in :mod:`diffusionsat.scenes`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Window = tuple[int, int, int, int]  # col_off, row_off, width, height


@dataclass(frozen=True)
class Span:
    """One block along one axis: its core ``[core0, core1)``, what is read ``[read0, read1)``, and how
    many of those pixels it shares with the span before it."""

    core0: int
    core1: int
    read0: int
    read1: int
    shared: int


def spans(start: int, length: int, block: int, margin: int, align: int = 1) -> list[Span]:
    """Cut ``[start, start + length)`` into ``ceil(length / block)`` near-equal cores (cuts at
    multiples of ``align`` from ``start``), each read with ``margin`` pixels more on both sides."""
    if block <= 0 or margin < 0 or align <= 0:
        raise ValueError(f"block={block}, margin={margin}, align={align}: block and align must be positive")
    count = max(1, math.ceil(length / block))
    inner = [start + round(i * length / count / align) * align for i in range(1, count)]
    cuts = [start, *inner, start + length]
    out: list[Span] = []
    for a, b in zip(cuts, cuts[1:]):
        if b <= a:
            raise ValueError(f"cannot cut {length} px into blocks of {block} px aligned to {align} px")
        read0, read1 = max(start, a - margin), min(start + length, b + margin)
        out.append(Span(a, b, read0, read1, out[-1].read1 - read0 if out else 0))
    return out


@dataclass(frozen=True)
class Block:
    """One block of a scene, in the scene's pixel coordinates."""

    index: int
    row: int
    col: int
    core: Window
    read: Window
    shared_left: int  # pixels of ``read`` shared with the block to the left (0: none)
    shared_top: int  # pixels of ``read`` shared with the block above (0: none)

    def output_window(self, origin: tuple[int, int], scale: int = 1) -> Window:
        """Where the block's result (its read window, ``scale`` times finer) goes in the output."""
        col, row, width, height = self.read
        return (col - origin[0]) * scale, (row - origin[1]) * scale, width * scale, height * scale

    def core_slices(self, scale: int = 1) -> tuple[slice, slice]:
        """(rows, cols) of the core inside the block's result."""
        dc, dr = self.core[0] - self.read[0], self.core[1] - self.read[1]
        return (slice(dr * scale, (dr + self.core[3]) * scale), slice(dc * scale, (dc + self.core[2]) * scale))


def block_grid(window: Window, block: int, margin: int, align: int = 1) -> list[Block]:
    """Blocks over ``window`` (col, row, width, height), row by row: cores of about ``block`` px."""
    col, row, width, height = window
    columns, rows = spans(col, width, block, margin, align), spans(row, height, block, margin, align)
    out = []
    for i, r in enumerate(rows):
        for j, c in enumerate(columns):
            out.append(Block(
                index=len(out), row=i, col=j,
                core=(c.core0, r.core0, c.core1 - c.core0, r.core1 - r.core0),
                read=(c.read0, r.read0, c.read1 - c.read0, r.read1 - r.read0),
                shared_left=c.shared, shared_top=r.shared,
            ))
    return out


def feather(height: int, width: int, top: int = 0, left: int = 0) -> np.ndarray:
    """(height, width) weights of a block's new pixels: linear ramps over the ``top`` rows and
    ``left`` columns it shares with blocks already written, 1 elsewhere."""

    def ramp(n: int, band: int) -> np.ndarray:
        if band <= 0:
            return np.ones(n, dtype=np.float32)
        return np.clip((np.arange(n, dtype=np.float32) + 0.5) / band, 0.0, 1.0)

    return ramp(height, top)[:, None] * ramp(width, left)[None, :]


#: Side (in latent pixels) of the chunks the scene-wide noise is drawn in.
NOISE_CHUNK = 64


def scene_noise(seed: int, channels: int, row: int, col: int, height: int, width: int, chunk: int = NOISE_CHUNK) -> Any:
    """(1, channels, height, width) standard normal noise for the latent window at (row, col) of a
    noise field over the whole scene: drawn chunk by chunk, each from a generator seeded by
    (seed, chunk row, chunk column), so overlapping blocks start from the same noise where they overlap."""
    import torch

    out = torch.empty(1, channels, height, width)
    for cr in range(row // chunk, (row + height - 1) // chunk + 1):
        for cc in range(col // chunk, (col + width - 1) // chunk + 1):
            state = np.random.SeedSequence([seed, cr, cc]).generate_state(1, dtype=np.uint64)[0]
            noise = torch.randn(channels, chunk, chunk, generator=torch.Generator().manual_seed(int(state)))
            y0, x0 = max(row, cr * chunk), max(col, cc * chunk)
            y1, x1 = min(row + height, (cr + 1) * chunk), min(col + width, (cc + 1) * chunk)
            out[0, :, y0 - row:y1 - row, x0 - col:x1 - col] = noise[:, y0 - cr * chunk:y1 - cr * chunk,
                                                                     x0 - cc * chunk:x1 - cc * chunk]
    return out


class BlockWriter:
    """A uint8 (Geo)TIFF written block by block: windowed writes, blended with what is already there.

    Tiled (256 px) and deflate-compressed, BigTIFF when it could pass 4 GiB; a plain TIFF when
    ``crs``/``transform`` are None. Open it on a staged temporary path (``fileio.atomic_files``).
    """

    def __init__(self, path: str | Path, width: int, height: int, count: int = 3, *, crs: Any = None,
                 transform: Any = None, band_descriptions: list[str] | None = None):
        from .geo import geotiff_profile

        self.path = Path(path)
        self.width, self.height, self.count = width, height, count
        self.profile = geotiff_profile(width, height, count, "uint8", crs, transform)
        self.band_descriptions = band_descriptions or []
        self._dst: Any = None

    def __enter__(self) -> BlockWriter:
        import rasterio

        with warnings.catch_warnings():  # a plain TIFF: rasterio warns that it has no georeference
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            self._dst = rasterio.open(self.path, "w+", **self.profile)
        for i, desc in enumerate(self.band_descriptions, start=1):
            self._dst.set_band_description(i, desc)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._dst.close()

    def write(self, window: Window, image: np.ndarray, weight: np.ndarray | None = None,
              keep: np.ndarray | None = None) -> None:
        """Write (H, W, C) uint8 ``image`` at ``window`` (col, row, width, height) of the output.

        ``weight`` (H, W) in [0, 1] (:func:`feather`) blends it with the pixels already written;
        where ``keep`` (H, W) is True the image is written as it is.
        """
        from rasterio.windows import Window as RioWindow

        col, row, width, height = window
        if image.shape != (height, width, self.count) or image.dtype != np.uint8:
            raise ValueError(f"block image {image.shape} {image.dtype} does not fit window {window}")
        new = image
        if weight is not None and (weight < 1).any():
            old = np.moveaxis(self._dst.read(window=RioWindow(col, row, width, height)), 0, -1)
            w = weight[:, :, None]
            blended = np.rint(w * new.astype(np.float32) + (1 - w) * old.astype(np.float32))
            new = np.clip(blended, 0, 255).astype(np.uint8)
            if keep is not None:
                new = np.where(keep[:, :, None], image, new)
        self._dst.write(np.moveaxis(new, -1, 0), window=RioWindow(col, row, width, height))

    def update_tags(self, **tags: str) -> None:
        self._dst.update_tags(**tags)

    def read_all(self) -> np.ndarray:
        """The whole output (H, W, C) as written so far (for a PNG of a small enough output)."""
        return np.moveaxis(self._dst.read(), 0, -1)
