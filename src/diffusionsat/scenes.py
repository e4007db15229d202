"""Whole scenes, block by block: ``superres`` and ``inpaint`` on rasters of any size.

An input (window) whose output is larger than one block (``block`` output pixels a side) is cut
into blocks (:mod:`diffusionsat.blocks`: a grid of cores with a context margin of ``block / 8``
on every side, blended where they overlap). For each block:

1. its window is read from the scene, opened once (windowed reads; every block is scaled by the
   scene's pixel range, not its own);
2. the ordinary task function runs on it (:func:`~diffusionsat.conditional.superresolve`,
   :func:`~diffusionsat.conditional.inpaint_raster`: same checks, same metadata rules), with
   seed ``seed + block index`` and, when there are several blocks, its initial noise cut from one
   noise field over the whole scene (overlapping blocks start from the same noise);
3. the result is written into the output GeoTIFF with a windowed, feathered write.

In-painting blocks without a masked pixel (or without a valid one) are copied through without a
model call; unmasked pixels are written exactly as read. A super-resolution block that is all
nodata is written black without a model call. One block (an input no larger than ``block``) is
exactly the single-pass task.

The output is written on a staged temporary path and renamed with its sidecar (all or nothing):
a GeoTIFF (a plain TIFF for inputs without georeference), the sidecar, and the PNG only when the
output has at most :data:`~diffusionsat.choices.MAX_PNG_PIXELS` pixels (it is then read back whole
once); a larger output is GeoTIFF + sidecar only (``"png": null`` and ``png_skipped`` in the sidecar).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import conditional as tasks
from .blocks import Block, BlockWriter, Window, block_grid, feather, scene_noise
from .choices import DEFAULT_BLOCK, MAX_PNG_PIXELS, MIN_BLOCK_INPUT
from .data.errors import DataError
from .geo import as_crs, scaled_transform, transform_bounds_of, window_transform
from .metadata import SatMetadata
from .outputs import GenerationRecord, OutputPaths

#: The context margin read around a block's core: ``block // MARGIN_DIVISOR`` on each side.
MARGIN_DIVISOR = 8

#: What rendering a block gives: its (H, W, 3) uint8 result over the block's read window, the pixels
#: to write as they are (or None), and whether the model ran.
Rendered = tuple[np.ndarray, Any, bool]


@dataclass
class SceneResult:
    """What a block-processed task wrote."""

    paths: list[Path]
    width: int
    height: int
    blocks: int
    model_calls: int
    png_skipped: str | None  # why no PNG was written (None: it was)


def needs_blocks(width: int, height: int, scale: int = 1, block: int = DEFAULT_BLOCK) -> bool:
    """True when a ``width`` × ``height`` input's output (``scale`` times finer) is larger than one block."""
    return width * scale > block or height * scale > block


def block_layout(block: int, scale: int, vae_scale_factor: int = 1) -> tuple[int, int, int]:
    """(core side, margin, alignment) in input pixels for blocks of ``block`` output pixels.

    Cuts and margins are multiples of the alignment, so that every block starts on a latent pixel
    of the scene-wide noise field.
    """
    align = vae_scale_factor // math.gcd(vae_scale_factor, scale)
    core = max(MIN_BLOCK_INPUT, block // scale)
    margin = -(-max(1, core // MARGIN_DIVISOR) // align) * align
    return core, margin, align


@contextlib.contextmanager
def quiet_pipeline(pipe: Any, quiet: bool = True) -> Iterator[None]:
    """No denoising bar per block (the blocks have their own)."""
    if not quiet:
        yield
        return
    old = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    pipe.set_progress_bar_config(**{**old, "disable": True})
    try:
        yield
    finally:
        pipe._progress_bar_config = old


def block_noise(pipe: Any, seed: int, block: Block, origin: tuple[int, int], scale: int = 1) -> Any:
    """Initial latents of a block: its window of the scene-wide noise field (padded as the task pads)."""
    col, row, width, height = block.output_window(origin, scale)
    pad_h, pad_w = tasks.padded_size(height, width, pipe.size_multiple)
    factor = pipe.vae_scale_factor
    return scene_noise(seed, pipe.unet.config.in_channels, row // factor, col // factor, pad_h // factor, pad_w // factor)


def scene_window(info: Any, window: Window | None) -> Window:
    """The window to process (the whole raster by default), checked to lie inside it."""
    window = window or (0, 0, info.width, info.height)
    col, row, width, height = window
    if col + width > info.width or row + height > info.height:
        raise DataError(info.path, f"window {window} lies outside the {info.width}x{info.height} raster")
    return window


def write_scene(
    outputs: OutputPaths,
    *,
    window: Window,
    scale: int,
    crs: Any,
    transform: Any,
    blocks: Sequence[Block],
    render: Callable[[Block], Rendered],
    record: Callable[[], GenerationRecord],
    model_version: str | None,
    overwrite: bool = False,
    progress: bool = True,
    desc: str = "blocks",
) -> SceneResult:
    """Render every block into one output (Geo)TIFF (+ PNG when small enough) + sidecar, all or nothing.

    ``record`` is called after the last block (it may raise: then nothing is written).
    """
    from tqdm.auto import tqdm

    from .fileio import atomic_files

    out_w, out_h = window[2] * scale, window[3] * scale
    tif = outputs.geotiff or outputs.png.with_suffix(".tif")
    png = outputs.png if out_w * out_h <= MAX_PNG_PIXELS else None
    targets = [p for p in (png, outputs.sidecar, tif) if p is not None]
    calls = 0
    with atomic_files(targets, overwrite=overwrite) as staged:
        writer = BlockWriter(staged[tif], out_w, out_h, crs=crs, transform=transform,
                             band_descriptions=["red", "green", "blue"])
        with writer, tqdm(total=len(blocks), desc=desc, unit="block", disable=not progress or len(blocks) == 1) as bar:
            for block in blocks:
                image, keep, called = render(block)
                calls += called
                weight = feather(image.shape[0], image.shape[1], block.shared_top * scale, block.shared_left * scale)
                writer.write(block.output_window(window[:2], scale), image, weight, keep)
                bar.update()
            done = record()
            sidecar = done.to_json(model_version)
            writer.update_tags(diffusionsat=json.dumps({k: sidecar[k] for k in ("prompt", "seed", "model")}))
            pixels = writer.read_all() if png is not None else None
        if pixels is not None:
            import PIL.Image

            PIL.Image.fromarray(pixels).save(staged[png], format="PNG")
        key = "geotiff" if crs is not None else "tiff"
        sidecar[key] = {"path": tif.name, "crs": None if crs is None else str(crs),
                        "transform": None if transform is None else list(transform)[:6]}
        skipped = None if png is not None else (
            f"the output is {out_w}x{out_h} = {out_w * out_h} pixels, over the PNG limit of {MAX_PNG_PIXELS}")
        sidecar["png"] = None if png is None else png.name
        sidecar["png_skipped"] = skipped
        sidecar["blocks"] = {"count": len(blocks), "model_calls": calls}
        staged[outputs.sidecar].write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    if png is None and overwrite and outputs.png.is_file():
        outputs.png.unlink()  # an earlier run's PNG would show another image than the TIFF now beside it
    return SceneResult(paths=targets, width=out_w, height=out_h, blocks=len(blocks), model_calls=calls,
                       png_skipped=skipped)


def _record(task: str, prompt: str, metadata: SatMetadata, seed: int, width: int, height: int,
            describe: Mapping[str, Any], extra: dict[str, Any]) -> GenerationRecord:
    return GenerationRecord(prompt=prompt, metadata=metadata, seed=seed, width=width, height=height, task=task,
                            extra=extra, **describe)


def _on_grid(a: Any, b: Any, tolerance: float = 1e-6) -> bool:
    """Two opened rasters on one pixel grid (size, CRS, transform)."""
    def grid(info: Any) -> tuple[Any, Any]:
        return (info.crs_wkt, info.transform) if info.georeferenced else (None, None)

    return tasks.grids_equal((a.width, a.height), *grid(a), (b.width, b.height), *grid(b), tolerance)


def covering_window(info: Any, first: Any, read: Window) -> Window:
    """The window of raster ``info`` covering window ``read`` of raster ``first`` (+1 px for resampling).

    Clipped to the raster, and at least 1 px: where ``info`` does not cover the block, reprojecting
    it leaves the block's pixels empty (nodata), as for the whole scene.
    """
    from rasterio.warp import transform_bounds
    from rasterio.windows import from_bounds

    bounds = transform_bounds_of(window_transform(first.transform, read[0], read[1]), read[2], read[3])
    if as_crs(first.crs_wkt) != as_crs(info.crs_wkt):
        bounds = transform_bounds(first.crs_wkt, info.crs_wkt, *bounds, densify_pts=21)
    win = from_bounds(*bounds, transform=info.transform)

    def clip(start: float, size: float, limit: int) -> tuple[int, int]:
        lo = min(max(0, math.floor(start) - 1), limit - 1)
        return lo, max(min(limit, math.ceil(start + size) + 1), lo + 1)

    (col0, col1), (row0, row1) = clip(win.col_off, win.width, info.width), clip(win.row_off, win.height, info.height)
    return col0, row0, col1 - col0, row1 - row0


def superresolve_scene(
    pipe: Any,
    paths: Sequence[str | os.PathLike],
    outputs: OutputPaths,
    *,
    scale: int,
    bands: str | Sequence[int | str] | None = None,
    window: Window | None = None,
    block: int = DEFAULT_BLOCK,
    prompt: str = "",
    metadata: SatMetadata | None = None,
    seed: int = 0,
    reproject: bool = False,
    describe: Mapping[str, Any],
    model_version: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **sampling: Any,
) -> SceneResult:
    """:func:`~diffusionsat.conditional.superresolve` of a scene of any size, block by block, into
    ``outputs`` (see the module). ``describe``: the sidecar's steps, guidance_scale, scheduler, model."""
    infos = [tasks.open_input(p, bands=bands) for p in paths]
    first = infos[0]
    window = scene_window(first, window)
    for i, info in enumerate(infos[1:], start=2):
        if not reproject and not _on_grid(first, info):
            raise ValueError(f"input {i} ({info.path.name}) is not on the grid of input 1 ({first.path.name}); "
                             "pass --reproject to resample it onto input 1's grid")
    core, margin, align = block_layout(block, scale, pipe.vae_scale_factor)
    blocks = block_grid(window, core, margin, align)
    origin = window[:2]
    valid = [False]

    same = [_on_grid(first, info) for info in infos]

    def windows(read: Window) -> list[Window]:
        return [read if on else covering_window(info, first, read) for info, on in zip(infos, same)]

    def render(b: Block) -> Rendered:
        rasters = [tasks.read_input(info.path, window=w, info=info, require_valid=False)
                   for info, w in zip(infos, windows(b.read))]
        if not rasters[0].valid.any():
            return np.zeros((b.read[3] * scale, b.read[2] * scale, 3), np.uint8), None, False
        valid[0] = True
        extra = {"latents": block_noise(pipe, seed, b, origin, scale)} if len(blocks) > 1 else {}
        result = tasks.superresolve(pipe, rasters, scale=scale, prompt=prompt, metadata=metadata, seed=seed + b.index,
                                    reproject=reproject, **sampling, **extra)
        return result.image, None, True

    def record() -> GenerationRecord:
        if not valid[0]:
            raise DataError(first.path, "every pixel of the input (window) is nodata")
        md = tasks.superres_metadata([tasks.raster_metadata(first, window)]
                                     + [tasks.raster_metadata(info, None) for info in infos[1:]], scale, metadata)
        return _record("superres", prompt, md, seed, window[2] * scale, window[3] * scale, describe,
                       {"task_inputs": [str(info.path) for info in infos], "scale": scale})

    col, row, width, height = window
    transform = (scaled_transform(window_transform(first.transform, col, row), (width, height),
                                  (width * scale, height * scale)) if first.georeferenced else None)
    with quiet_pipeline(pipe, len(blocks) > 1):
        return write_scene(outputs, window=window, scale=scale, crs=as_crs(first.crs_wkt) if first.georeferenced else None,
                           transform=transform, blocks=blocks, render=render, record=record,
                           model_version=model_version, overwrite=overwrite, progress=progress, desc="superres blocks")


def inpaint_scene(
    pipe: Any,
    path: str | os.PathLike,
    outputs: OutputPaths,
    *,
    mask: str | os.PathLike | None = None,
    geojson: str | os.PathLike | None = None,
    bands: str | Sequence[int | str] | None = None,
    window: Window | None = None,
    block: int = DEFAULT_BLOCK,
    prompt: str = "",
    metadata: SatMetadata | None = None,
    seed: int = 0,
    describe: Mapping[str, Any],
    model_version: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **sampling: Any,
) -> SceneResult:
    """:func:`~diffusionsat.conditional.inpaint_raster` of a scene of any size, block by block, into
    ``outputs``; the fill mask is a 1-band ``mask`` raster or ``geojson`` features (see the module)."""
    if (mask is None) == (geojson is None):
        raise ValueError("give exactly one of --mask MASK.tif or --geojson FEATURES.geojson")
    info = tasks.open_input(path, bands=bands)
    whole = window is None
    window = scene_window(info, window)
    mask_info = tasks.open_mask(mask) if mask is not None else None
    if mask_info is not None and whole and not (mask_info.georeferenced and info.georeferenced) \
            and (mask_info.width, mask_info.height) != (info.width, info.height):
        raise ValueError(f"mask {mask_info.path.name} is {mask_info.width}x{mask_info.height} px but the image is "
                         f"{info.width}x{info.height} px")
    core, margin, align = block_layout(block, 1, pipe.vae_scale_factor)
    blocks = block_grid(window, core, margin, align)
    origin = window[:2]
    state: dict[str, Any] = {"masked": 0, "valid": False, "shapes": None}

    def fill_mask(image: tasks.RasterInput, b: Block) -> np.ndarray:
        if mask_info is not None:
            return tasks.mask_from_raster(mask_info.path, image, window=b.read, info=mask_info)
        if state["shapes"] is None:
            state["shapes"] = tasks.geojson_shapes(geojson, image)
        return tasks.rasterize_shapes(state["shapes"], image)

    def render(b: Block) -> Rendered:
        image = tasks.read_input(info.path, window=b.read, info=info, require_valid=False)
        if b.index == 0:
            tasks.check_inpaint_input(pipe, image)
        fill = fill_mask(image, b)
        state["masked"] += int(fill[b.core_slices()].sum())
        state["valid"] = state["valid"] or bool(image.valid.any())
        if not fill.any() or not image.valid.any():  # nothing to fill: copied through, no model call
            return tasks.known_pixels(image), np.ones(fill.shape, bool), False
        extra = {"latents": block_noise(pipe, seed, b, origin)} if len(blocks) > 1 else {}
        result = tasks.inpaint_raster(pipe, image, fill, prompt=prompt, metadata=metadata, seed=seed + b.index,
                                      **sampling, **extra)
        return result.image, ~fill, True

    def record() -> GenerationRecord:
        if not state["valid"]:
            raise DataError(info.path, "every pixel of the input (window) is nodata")
        if state["masked"] == 0:
            raise ValueError(f"{Path(geojson).name}: no feature overlaps {info.path.name}" if geojson is not None
                             else "the mask is empty: nothing to fill")
        md = tasks.target_metadata(tasks.raster_metadata(info, window), metadata)
        return _record("inpaint", prompt, md, seed, window[2], window[3], describe,
                       {"task_inputs": [str(info.path)], "masked_pixels": state["masked"]})

    transform = window_transform(info.transform, *origin) if info.georeferenced else None
    with quiet_pipeline(pipe, len(blocks) > 1):
        return write_scene(outputs, window=window, scale=1, crs=as_crs(info.crs_wkt) if info.georeferenced else None,
                           transform=transform, blocks=blocks, render=render, record=record,
                           model_version=model_version, overwrite=overwrite, progress=progress, desc="inpaint blocks")
