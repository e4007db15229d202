"""Georeferenced conditional tasks: read rasters, check their grids, run the ControlNet pipeline.

One library call per task, shared by the CLI and the server: :func:`superresolve`,
:func:`predict_temporal`, :func:`inpaint_raster` and :func:`controlled_generation`. Each returns a
:class:`TaskResult` — uint8 RGB pixels plus the CRS/transform they sit on (the input's footprint,
with a finer GSD after super-resolution) and the metadata used — that :func:`save_task_result`
writes as PNG + GeoTIFF + JSON sidecar (SPEC §5).

Conditioning images are given to ControlNets in [0, 1]: 8-bit rasters by their dtype range, others
by the scene's 2nd–98th percentile per band (the data module's ``pixel_range``, also used in training).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .choices import CONTROL_KINDS, DEFAULT_MAX_INPUT_PIXELS
from .data.errors import DataError
from .data.geotiff import RasterInfo, open_raster
from .geo import as_crs, crs_label, gsd_metres, scaled_transform, window_center_lonlat, window_transform
from .imaging import to_uint8_hwc as to_uint8
from .metadata import SatMetadata, parse_date
from .outputs import GenerationRecord, OutputPaths, save_generated
from .pipelines.pipeline_controlnet import DiffusionSatControlNetPipeline, sort_frames_by_date
from .pipelines.sampling import composite_pixels
from .validation import MIN_INPUT_SIDE, too_small_problem  # noqa: F401  (MIN_INPUT_SIDE: re-exported)

logger = logging.getLogger(__name__)

Window = tuple[int, int, int, int]  # col_off, row_off, width, height


@dataclass
class RasterInput:
    """Pixels of one input raster (or a window of it) and where they are on Earth."""

    path: Path
    pixels: np.ndarray  # (C, H, W) float32 in [0, 1]
    valid: np.ndarray  # (H, W) bool, False where nodata
    crs: Any
    transform: Any
    metadata: SatMetadata
    band_names: list[str]
    raw: np.ndarray | None = None  # (H, W, C) uint8 of 8-bit inputs, for exact compositing

    @property
    def height(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None


@dataclass
class TaskResult:
    """A generated image on a grid, with what made it."""

    image: np.ndarray  # (H, W, 3) uint8
    crs: Any
    transform: Any
    metadata: SatMetadata
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)


# --- reading: the one small helper to swap for the data module's reader ------------------------------
def parse_window(text: str | None) -> Window | None:
    """``"COL,ROW,WIDTH,HEIGHT"`` → a pixel window."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"window={text!r}: expected COL,ROW,WIDTH,HEIGHT as non-negative integers")
    col, row, w, h = (int(p) for p in parts)
    if w <= 0 or h <= 0:
        raise ValueError(f"window={text!r}: width and height must be positive")
    return col, row, w, h


def read_pixels(info: RasterInfo, window: Window | None) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) raw pixels as float32 and a (H, W) validity mask for ``window`` of a raster."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window as RioWindow

    col, row, w, h = window or (0, 0, info.width, info.height)
    if col + w > info.width or row + h > info.height:
        raise DataError(info.path, f"window {window} lies outside the {info.width}x{info.height} raster")
    try:
        with rasterio.open(info.dataset) as src:
            data = src.read(info.bands, window=RioWindow(col, row, w, h), masked=True)
    except (RasterioError, OSError) as err:
        raise DataError(info.path, f"cannot read pixels ({str(err).splitlines()[0]})") from None
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    pixels = np.ma.filled(data.astype(np.float32), 0.0)
    valid &= np.isfinite(pixels).all(axis=0)
    return np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0), valid


def raster_metadata(info: RasterInfo, window: Window | None, date: str | None = None) -> SatMetadata:
    """Centre lon/lat, GSD (m/px), date and cloud cover of a raster window, as far as known."""
    col, row, w, h = window or (0, 0, info.width, info.height)
    values: dict[str, Any] = {}
    if info.georeferenced:
        lon, lat = window_center_lonlat(info.crs_wkt, info.transform, col, row, w, h)
        if np.isfinite(lon) and np.isfinite(lat):
            values.update(lon=lon, lat=lat)
            gsd = gsd_metres(info.crs_wkt, info.transform, lon, lat)
            if 0 < gsd <= 1000:
                values["gsd"] = gsd
    acq = info.acquisition
    if date is not None:
        year, month, day = parse_date(date)
        values.update({k: v for k, v in (("year", year), ("month", month), ("day", day)) if v is not None})
    else:
        values.update({k: v for k, v in (("year", acq.year), ("month", acq.month), ("day", acq.day)) if v is not None})
    if acq.cloud_cover is not None:
        values["cloud_cover"] = acq.cloud_cover
    return SatMetadata(**values)


def check_input_size(path: str | os.PathLike, window: Window | None = None,
                     max_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS, what: str = "input") -> None:
    """Refuse a raster (window) too large or too small to read whole, from its header alone."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            width, height = src.width, src.height
    except (RasterioError, OSError):
        return  # open_raster reports an unreadable file with its reason
    if window is not None:
        width, height = window[2], window[3]
    if max_pixels is not None and width * height > max_pixels:
        raise DataError(path, f"{what} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
                              f"pixels; pass --max-pixels {width * height} to raise it, or --window to take a part")
    if (problem := too_small_problem(width, height, what)) is not None:
        raise DataError(path, problem)


def window_size(path: str | os.PathLike, window: Window | None = None) -> tuple[int, int]:
    """(width, height) of a raster window, or of the whole raster from its header."""
    if window is not None:
        return window[2], window[3]
    import rasterio
    from rasterio.errors import RasterioError

    if not Path(path).exists():
        raise DataError(path, "file not found")
    try:
        with rasterio.open(path) as src:
            return src.width, src.height
    except (RasterioError, OSError) as err:
        raise DataError(path, f"not a readable raster ({str(err).splitlines()[0]})") from None


def open_input(path: str | os.PathLike, *, bands: str | Sequence[int | str] | None = None,
               date_pattern: str | None = None) -> RasterInfo:
    """Open and validate a task input (georeference optional); its ``pixel_range`` is the whole scene's."""
    return open_raster(path, bands=bands, require_georeference=False, date_pattern=date_pattern)


def read_input(
    path: str | os.PathLike,
    *,
    bands: str | Sequence[int | str] | None = None,
    window: Window | None = None,
    date: str | None = None,
    date_pattern: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_INPUT_PIXELS,
    info: RasterInfo | None = None,
    require_valid: bool = True,
) -> RasterInput:
    """Open, validate and read a raster (window) scaled to [0, 1], with its metadata and grid.

    The size is checked from the header first (:func:`check_input_size`): a scene over
    ``max_pixels`` is refused before any pixel is read.

    ``info`` (from :func:`open_input`) reads a window of a raster opened once (a scene read block
    by block): ``bands``/``date_pattern``/``max_pixels`` are then those it was opened with, and
    every window is scaled by the same scene-level ``info.pixel_range``. ``require_valid=False``
    accepts a window that is all nodata (its ``valid`` is all False).
    """
    if info is None:
        if Path(path).is_file():
            check_input_size(path, window, max_pixels)
        info = open_input(path, bands=bands, date_pattern=date_pattern)
    raw, valid = read_pixels(info, window)
    if require_valid and not valid.any():
        raise DataError(info.path, "every pixel of the input (window) is nodata")
    lows, highs = (np.asarray(v, dtype=np.float32)[:, None, None] for v in info.pixel_range)
    pixels = np.clip((raw - lows) / (highs - lows), 0.0, 1.0).astype(np.float32)
    col, row, _, _ = window or (0, 0, info.width, info.height)
    transform = window_transform(info.transform, col, row) if info.georeferenced else None
    raw8 = np.moveaxis(raw, 0, -1).astype(np.uint8) if info.dtype == "uint8" else None
    return RasterInput(
        path=info.path, pixels=pixels, valid=valid, crs=as_crs(info.crs_wkt) if info.crs_wkt else None,
        transform=transform, metadata=raster_metadata(info, window, date), band_names=info.band_names, raw=raw8,
    )


# --- grids -------------------------------------------------------------------------------------------
def grids_equal(size_a: tuple[int, int], crs_a: Any, transform_a: Any, size_b: tuple[int, int], crs_b: Any,
                transform_b: Any, tolerance: float = 1e-6) -> bool:
    """Same size, CRS and transform (to ``tolerance`` of a pixel); ``crs``/``transform`` None = no georeference."""
    geo_a, geo_b = crs_a is not None and transform_a is not None, crs_b is not None and transform_b is not None
    if tuple(size_a) != tuple(size_b) or geo_a != geo_b:
        return False
    if not geo_a:
        return True
    if as_crs(crs_a) != as_crs(crs_b):
        return False
    pixel = max(abs(transform_a.a), abs(transform_a.e), 1e-12)
    return all(abs(x - y) <= tolerance * pixel for x, y in zip(tuple(transform_a)[:6], tuple(transform_b)[:6]))


def same_grid(a: RasterInput, b: RasterInput, tolerance: float = 1e-6) -> bool:
    """Two read inputs on one pixel grid."""
    return grids_equal((a.width, a.height), a.crs, a.transform, (b.width, b.height), b.crs, b.transform, tolerance)


def reproject_to(source: RasterInput, target: RasterInput) -> RasterInput:
    """``source`` resampled (bilinear) onto ``target``'s grid; metadata keeps its date."""
    from rasterio.warp import Resampling, reproject

    if not (source.georeferenced and target.georeferenced):
        raise ValueError(f"{source.path}: cannot reproject a raster without georeference")
    out = np.zeros((source.pixels.shape[0], target.height, target.width), dtype=np.float32)
    valid = np.zeros((target.height, target.width), dtype=np.float32)
    src_crs, dst_crs = source.crs.to_wkt(), target.crs.to_wkt()
    reproject(source.pixels, out, src_transform=source.transform, src_crs=src_crs, dst_transform=target.transform,
              dst_crs=dst_crs, resampling=Resampling.bilinear, dst_nodata=0.0)
    reproject(source.valid.astype(np.float32), valid, src_transform=source.transform, src_crs=src_crs,
              dst_transform=target.transform, dst_crs=dst_crs, resampling=Resampling.nearest, dst_nodata=0.0)
    md = source.metadata.replace(lon=target.metadata.lon, lat=target.metadata.lat, gsd=target.metadata.gsd)
    return RasterInput(path=source.path, pixels=out, valid=valid > 0.5, crs=target.crs, transform=target.transform,
                       metadata=md, band_names=source.band_names)


def align_inputs(inputs: list[RasterInput], reproject: bool, what: str = "frame") -> list[RasterInput]:
    """All inputs on the first one's grid: identical grids pass, others are an error or reprojected."""
    first = inputs[0]
    out = [first]
    for i, item in enumerate(inputs[1:], start=2):
        if item.pixels.shape[0] != first.pixels.shape[0]:
            raise ValueError(f"{what} {i} ({item.path.name}) has {item.pixels.shape[0]} bands, {what} 1 "
                             f"({first.path.name}) {first.pixels.shape[0]}; select the same bands with --bands")
        if same_grid(first, item):
            out.append(item)
            continue
        if not reproject:
            def describe(r: RasterInput) -> str:
                crs = crs_label(r.crs) if r.crs is not None else "no CRS"
                return f"{crs}, {r.width}x{r.height} px, origin {tuple(round(v, 3) for v in tuple(r.transform)[2:6:3]) if r.transform else None}"

            raise ValueError(
                f"{what} {i} ({item.path.name}: {describe(item)}) is not on the grid of {what} 1 "
                f"({first.path.name}: {describe(first)}); pass --reproject to resample it onto {what} 1's grid"
            )
        logger.info("reprojecting %s onto the grid of %s", item.path.name, first.path.name)
        out.append(reproject_to(item, first))
    return out


# --- helpers shared by the tasks ------------------------------------------------------------------------
def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def pad_to(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Reflect-pad the last two dims up to (height, width) (replicate when too small to reflect)."""
    dh, dw = height - tensor.shape[-2], width - tensor.shape[-1]
    if dh == 0 and dw == 0:
        return tensor
    mode = "reflect" if dh < tensor.shape[-2] and dw < tensor.shape[-1] else "replicate"
    shape = tensor.shape
    flat = tensor.reshape(-1, *shape[-3:]) if tensor.ndim > 4 else tensor
    padded = F.pad(flat, (0, dw, 0, dh), mode=mode)
    return padded.reshape(*shape[:-2], height, width)


def check_bands(pipe: DiffusionSatControlNetPipeline, inputs: Sequence[RasterInput], extra: int = 0) -> None:
    """The band count must be what the ControlNet was trained for (``extra`` = added mask band)."""
    expected = pipe.controlnet.config.conditioning_channels
    got = inputs[0].pixels.shape[0] + extra
    if got != expected:
        trained = pipe.controlnet.config.get("conditioning_bands")
        hint = f" ({', '.join(trained)})" if trained else ""
        raise ValueError(
            f"{inputs[0].path.name} gives {got - extra} band{'s' if got - extra != 1 else ''} but this ControlNet was "
            f"trained for {expected - extra}{hint}; select bands with --bands"
        )


def known_pixels(image: RasterInput) -> np.ndarray:
    """(H, W, 3) uint8 of an input as an output keeps it: the raw 8-bit values, else its [0, 1] scaling."""
    return image.raw if image.raw is not None else to_uint8(np.moveaxis(image.pixels, 0, -1))


def check_inpaint_input(pipe: DiffusionSatControlNetPipeline, image: RasterInput) -> None:
    """The image must have the bands the model generates (+ the mask band for the ControlNet)."""
    channels = pipe.unet.config.out_channels
    if image.pixels.shape[0] != channels:
        raise ValueError(f"{image.path.name} gives {image.pixels.shape[0]} bands; in-painting needs {channels} "
                         f"(select them with --bands, e.g. 1,2,3)")
    check_bands(pipe, [image], extra=1)


def controlnet_bands(pipe: DiffusionSatControlNetPipeline) -> list[str] | None:
    """Band names the ControlNet was trained on, when its config records them."""
    bands = pipe.controlnet.config.get("conditioning_bands")
    return list(bands) if bands else None


def run_pipeline(pipe: DiffusionSatControlNetPipeline, seed: int, **kwargs: Any) -> np.ndarray:
    """One image as (H, W, 3) float in [0, 1]."""
    generator = torch.Generator(device=pipe._execution_device).manual_seed(seed)
    return pipe(generator=generator, output_type="np", **kwargs).images[0]


def target_metadata(base: SatMetadata, overrides: SatMetadata | None) -> SatMetadata:
    """The inputs' metadata with every field the user gave replacing it."""
    if overrides is None:
        return base
    changes = {k: v for k, v in zip(("lon", "lat", "gsd", "cloud_cover", "year", "month", "day"), overrides.values())
               if v is not None}
    if any(k in changes for k in ("year", "month", "day")):
        changes = {"month": None, "day": None, **changes}
    return base.replace(**changes)


def superres_metadata(inputs: Sequence[SatMetadata], scale: int, overrides: SatMetadata | None) -> SatMetadata:
    """Target metadata of super-resolution: input 1's place, the latest input's date, GSD / ``scale``."""
    latest = max(inputs, key=lambda m: (m.year or 0, m.month or 0, m.day or 0))
    base = inputs[0].replace(year=latest.year, month=latest.month, day=latest.day, cloud_cover=None)
    base = base.resized(1, scale) if base.gsd is not None else base
    return target_metadata(base, overrides)


# --- the tasks ---------------------------------------------------------------------------------------------
BACK_PROJECTION_STEPS = 5


def back_project(image: np.ndarray, low: np.ndarray, valid: np.ndarray, scale: int,
                 steps: int = BACK_PROJECTION_STEPS) -> np.ndarray:
    """Make a super-resolved (H, W, C) image in [0, 1] agree with its low-res (C, h, w) input.

    Iterative back-projection (Irani & Peleg 1991): the ``scale``× block average of the result is
    pulled onto the observed pixels, the residual spread back with bicubic upsampling. The model's
    high-frequency detail stays; its colour and brightness come from the sensor, as a user
    measuring radiometry expects. Nodata input pixels (``valid`` False) exert no pull.
    """
    out = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32))[None]
    target = torch.from_numpy(np.asarray(low, dtype=np.float32))[None]
    weight = torch.from_numpy(np.asarray(valid, dtype=np.float32))[None, None]
    for _ in range(steps):
        residual = (target - F.avg_pool2d(out, scale)) * weight
        out = (out + F.interpolate(residual, scale_factor=scale, mode="bicubic", align_corners=False)).clamp(0, 1)
    return np.moveaxis(out[0].numpy(), 0, -1)


def _consistent(image: np.ndarray, inputs: Sequence[RasterInput], scale: int) -> np.ndarray:
    """:func:`back_project` onto the inputs' valid-pixel mean; unchanged when their bands are not the
    output's (a multispectral input has no RGB to agree with)."""
    if inputs[0].pixels.shape[0] != image.shape[-1] or scale < 2:
        return image
    valid = np.stack([r.valid for r in inputs]).astype(np.float32)
    counts = valid.sum(axis=0)
    low = (np.stack([r.pixels for r in inputs]) * valid[:, None]).sum(axis=0) / np.maximum(counts, 1)
    return back_project(image, low, counts > 0, scale)


def superresolve(
    pipe: DiffusionSatControlNetPipeline,
    inputs: Sequence[RasterInput],
    *,
    scale: int,
    prompt: str = "",
    metadata: SatMetadata | None = None,
    seed: int = 0,
    reproject: bool = False,
    consistency: bool = True,
    **sampling: Any,
) -> TaskResult:
    """Low-res raster(s) → RGB ``scale`` times finer on the same footprint.

    Several inputs (dates of one place) are fused during sampling: one estimate per input.
    ``consistency`` back-projects the result onto the input (:func:`back_project`), so that its
    ``scale``× average reproduces the input's pixels.
    """
    if not isinstance(scale, int) or not 1 <= scale <= 16:
        raise ValueError(f"scale={scale!r}: must be an integer in [1, 16]")
    inputs = align_inputs(list(inputs), reproject, what="input")
    check_bands(pipe, inputs)
    first = inputs[0]
    out_h, out_w = first.height * scale, first.width * scale
    pad_h, pad_w = padded_size(out_h, out_w, pipe.size_multiple)
    lowres = torch.from_numpy(np.stack([r.pixels for r in inputs], axis=1))[None]  # (1, C, K, h, w)
    upsampled = F.interpolate(lowres[0].permute(1, 0, 2, 3), size=(out_h, out_w), mode="bilinear", align_corners=False)
    control = pad_to(upsampled.permute(1, 0, 2, 3)[None], pad_h, pad_w)
    control = control[:, :, 0] if len(inputs) == 1 else control
    target = superres_metadata([r.metadata for r in inputs], scale, metadata)
    cond_md = [r.metadata for r in inputs]
    image = run_pipeline(
        pipe, seed, prompt=prompt, control_image=control, metadata=target,
        cond_metadata=cond_md[0] if len(inputs) == 1 else cond_md, height=pad_h, width=pad_w, **sampling,
    )[:out_h, :out_w]
    if consistency:
        image = _consistent(image, inputs, scale)
    transform = scaled_transform(first.transform, (first.width, first.height), (out_w, out_h)) if first.georeferenced else None
    return TaskResult(to_uint8(image), first.crs, transform, target, seed,
                      extra={"task_inputs": [str(r.path) for r in inputs], "scale": scale,
                             "back_projection_steps": BACK_PROJECTION_STEPS if consistency else 0})


def predict_temporal(
    pipe: DiffusionSatControlNetPipeline,
    frames: Sequence[RasterInput],
    *,
    target_date: str,
    prompt: str = "",
    metadata: SatMetadata | None = None,
    seed: int = 0,
    reproject: bool = False,
    sort_frames: bool = True,
    **sampling: Any,
) -> TaskResult:
    """Past (or later) images of one place → the image at ``target_date`` on the first frame's grid.

    Frames are sorted by date first (the 3D ControlNet sees their order); ``sort_frames=False``
    keeps the order given.
    """
    year, month, day = parse_date(target_date, field="target_date")
    if not pipe.is_3d:
        raise ValueError("temporal generation needs a 3D ControlNet (SatControlNet3D) in the model's controlnet/")
    frames = align_inputs(list(frames), reproject)
    check_bands(pipe, frames)
    max_frames = pipe.controlnet.config.max_frames
    if len(frames) > max_frames:
        raise ValueError(f"got {len(frames)} frames; this 3D ControlNet takes at most {max_frames} "
                         f"(give the {max_frames} closest to the target date)")
    if sort_frames:
        frames = [frames[i] for i in sort_frames_by_date([f.metadata for f in frames])]
    first = frames[0]
    pad_h, pad_w = padded_size(first.height, first.width, pipe.size_multiple)
    control = pad_to(torch.from_numpy(np.stack([f.pixels for f in frames], axis=1))[None], pad_h, pad_w)
    base = first.metadata.replace(year=year, month=month, day=day, cloud_cover=None)
    target = target_metadata(base, metadata)
    image = run_pipeline(
        pipe, seed, prompt=prompt, control_image=control, metadata=target, cond_metadata=[f.metadata for f in frames],
        height=pad_h, width=pad_w, sort_frames=False, **sampling,  # already in the order wanted
    )[:first.height, :first.width]
    return TaskResult(to_uint8(image), first.crs, first.transform, target, seed, extra={
        "task_inputs": [str(f.path) for f in frames],
        "frame_dates": [f.metadata.date_string() for f in frames],
        "target_date": target_date,
    })


def open_mask(path: str | os.PathLike) -> RasterInfo:
    """Open a fill-mask raster: it must have 1 band."""
    info = open_raster(path, bands=[1], require_georeference=False)
    if info.count != 1:  # as the server: a 3-band mask is refused, not silently reduced to band 1
        raise DataError(info.path, f"mask must have 1 band (non-zero = fill), got {info.count}")
    return info


def mask_from_raster(path: str | os.PathLike, image: RasterInput, window: Window | None = None,
                     info: RasterInfo | None = None) -> np.ndarray:
    """A (H, W) bool fill-mask (non-zero = fill) from a 1-band raster over the image.

    A georeferenced mask is read over the image's footprint (it may cover the whole scene or just
    the image window) and must share its CRS and pixel grid. A mask without georeference must have
    the image's pixel size and takes the same ``window``. ``info`` (from :func:`open_mask`) reuses
    a mask opened once (a scene read block by block).
    """
    info = info if info is not None else open_mask(path)
    if info.georeferenced and image.georeferenced:
        if as_crs(info.crs_wkt) != as_crs(image.crs):
            raise ValueError(f"mask {info.path.name} is in {crs_label(info.crs_wkt)}, the image in {crs_label(image.crs)}")
        col, row = ~info.transform @ (image.transform.c, image.transform.f)
        aligned = abs(col - round(col)) < 1e-3 and abs(row - round(row)) < 1e-3
        same_res = np.allclose(tuple(info.transform)[:6:4] + (info.transform.b, info.transform.d),
                               tuple(image.transform)[:6:4] + (image.transform.b, image.transform.d), rtol=1e-6)
        if not (aligned and same_res):
            raise ValueError(f"mask {info.path.name} is not on the pixel grid of {image.path.name} (resolution or alignment differ)")
        mask_window = (round(col), round(row), image.width, image.height)
        if mask_window[0] < 0 or mask_window[1] < 0 or mask_window[0] + image.width > info.width \
                or mask_window[1] + image.height > info.height:
            raise ValueError(f"mask {info.path.name} does not cover the whole image {image.path.name}")
    else:
        if window is None and (info.width, info.height) != (image.width, image.height):
            raise ValueError(
                f"mask {info.path.name} is {info.width}x{info.height} px but the image is {image.width}x{image.height} px"
            )
        mask_window = window
    raw, _ = read_pixels(info, mask_window)
    return raw[0] != 0


def geojson_shapes(path: str | os.PathLike, image: RasterInput) -> list[tuple[Any, int]]:
    """GeoJSON features (EPSG:4326 unless the file names a CRS) in the image's CRS, ready to rasterise."""
    import json

    import shapely
    from pyproj import Transformer
    from shapely.geometry import shape

    if not image.georeferenced:
        raise ValueError(f"{image.path.name} has no georeference; a GeoJSON mask cannot be placed on it")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable GeoJSON file ({err})") from None
    features = data.get("features", [data] if data.get("type") == "Feature" else []) if isinstance(data, dict) else []
    geoms = [shape(f["geometry"]) for f in features if isinstance(f, dict) and f.get("geometry")]
    if not geoms:
        raise ValueError(f"{path}: no features with a geometry")
    src_crs = ((data.get("crs") or {}).get("properties") or {}).get("name", "EPSG:4326")
    transformer = Transformer.from_crs(src_crs, image.crs, always_xy=True)

    def project(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))

    return [(shapely.transform(g, project), 1) for g in geoms]


def rasterize_shapes(shapes: Sequence[tuple[Any, int]], image: RasterInput) -> np.ndarray:
    """(H, W) bool: True where a shape (from :func:`geojson_shapes`) covers a pixel centre of the image."""
    from rasterio.features import rasterize

    if not shapes:
        return np.zeros((image.height, image.width), dtype=bool)
    mask = rasterize(shapes, out_shape=(image.height, image.width), transform=image.transform, fill=0, dtype="uint8")
    return mask.astype(bool)


def mask_from_geojson(path: str | os.PathLike, image: RasterInput) -> np.ndarray:
    """Rasterise GeoJSON features (EPSG:4326 unless the file names a CRS) onto the image's grid."""
    mask = rasterize_shapes(geojson_shapes(path, image), image)
    if not mask.any():
        raise ValueError(f"{Path(path).name}: no feature overlaps {image.path.name}")
    return mask


def inpaint_raster(
    pipe: DiffusionSatControlNetPipeline,
    image: RasterInput,
    mask: np.ndarray,
    *,
    prompt: str = "",
    metadata: SatMetadata | None = None,
    seed: int = 0,
    **sampling: Any,
) -> TaskResult:
    """Fill ``mask`` (True = fill) of an RGB raster; unmasked pixels come back exactly as read."""
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} px but the image is {image.width}x{image.height} px")
    if not mask.any():
        raise ValueError("the mask is empty: nothing to fill")
    check_inpaint_input(pipe, image)
    pad_h, pad_w = padded_size(image.height, image.width, pipe.size_multiple)
    pixels = torch.from_numpy(image.pixels)[None]
    fill = torch.from_numpy(mask.astype(np.float32))[None, None]
    target = target_metadata(image.metadata, metadata)
    out = run_pipeline(
        pipe, seed, prompt=prompt, image=pad_to(pixels, pad_h, pad_w), mask=pad_to(fill, pad_h, pad_w),
        metadata=target, cond_metadata=image.metadata, height=pad_h, width=pad_w, **sampling,
    )[:image.height, :image.width]
    result = composite_pixels(to_uint8(out), known_pixels(image), mask[:, :, None])
    return TaskResult(result, image.crs, image.transform, target, seed,
                      extra={"task_inputs": [str(image.path)], "masked_pixels": int(mask.sum())})


def edge_map(pixels: np.ndarray) -> np.ndarray:
    """(1, H, W) binary edges of a (C, H, W) image: the strongest 10 % of Sobel gradient magnitudes.

    Shared by ``generate --control edges`` and ``train --task control`` so both see the same maps.
    """
    gray = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32).mean(axis=0))[None, None]
    kx = torch.tensor([[[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]]])
    gx = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kx.transpose(-1, -2))
    magnitude = torch.sqrt(gx**2 + gy**2)[0, 0].numpy()
    return (magnitude > max(1e-6, float(np.percentile(magnitude, 90)))).astype(np.float32)[None]


def control_condition(control: RasterInput, kind: str, channels: int) -> np.ndarray:
    """A (channels, H, W) control map in [0, 1]: binary road/mask maps, or edges of an image."""
    if kind not in CONTROL_KINDS:
        raise ValueError(f"control={kind!r}: choose one of {', '.join(CONTROL_KINDS)}")
    pixels = control.pixels
    if kind == "edges" and pixels.shape[0] > 1:
        pixels = edge_map(pixels)
    elif kind in ("road", "mask"):
        if pixels.shape[0] != 1:
            raise ValueError(f"a {kind} map must have 1 band, {control.path.name} has {pixels.shape[0]}")
        pixels = (pixels > 0).astype(np.float32)
    if pixels.shape[0] == 1 and channels > 1:
        pixels = np.repeat(pixels, channels, axis=0)
    if pixels.shape[0] != channels:
        raise ValueError(f"the {kind} map has {pixels.shape[0]} bands but this ControlNet was trained for {channels}")
    return pixels


def controlled_generation(
    pipe: DiffusionSatControlNetPipeline,
    control: RasterInput,
    kind: str,
    *,
    prompt: str,
    metadata: SatMetadata | None = None,
    seed: int = 0,
    **sampling: Any,
) -> TaskResult:
    """Text + metadata generation steered by a road/mask/edge map, on the control raster's grid."""
    cond = control_condition(control, kind, pipe.controlnet.config.conditioning_channels)
    pad_h, pad_w = padded_size(control.height, control.width, pipe.size_multiple)
    target = target_metadata(control.metadata.replace(year=None, month=None, day=None, cloud_cover=None), metadata)
    image = run_pipeline(
        pipe, seed, prompt=prompt, control_image=pad_to(torch.from_numpy(cond)[None], pad_h, pad_w), metadata=target,
        cond_metadata=control.metadata, height=pad_h, width=pad_w, **sampling,
    )[:control.height, :control.width]
    return TaskResult(to_uint8(image), control.crs, control.transform, target, seed,
                      extra={"task_inputs": [str(control.path)], "control": kind})


def save_task_result(
    result: TaskResult,
    paths: OutputPaths,
    *,
    task: str,
    prompt: str,
    steps: int,
    guidance_scale: float,
    scheduler: str,
    model: str,
    model_version: str | None,
    overwrite: bool = False,
    staging: Any = None,
) -> OutputPaths:
    """PNG + GeoTIFF (on the result's grid) + JSON sidecar (all or none; ``staging``: see ``save_generated``)."""
    record = GenerationRecord(
        prompt=prompt, metadata=result.metadata, seed=result.seed, steps=steps, guidance_scale=guidance_scale,
        scheduler=scheduler, width=int(result.image.shape[1]), height=int(result.image.shape[0]), model=model,
        task=task, extra=result.extra,
    )
    if paths.geotiff is not None and result.crs is None:
        paths = OutputPaths(png=paths.png, sidecar=paths.sidecar, geotiff=None)
    return save_generated(result.image, paths, record, model_version=model_version, crs=result.crs,
                          transform=result.transform, overwrite=overwrite, staging=staging)


# --- several samples: where the model guesses ---------------------------------------------------------------
#: The spread PNG maps a standard deviation of SPREAD_PNG_FULL (of the 0-1 pixel range) to white.
SPREAD_PNG_FULL = 0.25


def sample_spread(images: Sequence[np.ndarray]) -> np.ndarray:
    """(H, W) float32 spread of K samples (H, W, 3) uint8: the per-pixel standard deviation across
    samples in 0-1 units, averaged over the bands. 0 where every sample agrees (e.g. the unmasked
    pixels of in-painting); large where the model had to guess."""
    if len(images) < 2:
        raise ValueError(f"a spread needs at least 2 samples, got {len(images)}")
    stack = np.stack([np.asarray(im, dtype=np.float64) / 255.0 for im in images])
    spread = stack.std(axis=0).mean(axis=-1)
    spread[(stack == stack[:1]).all(axis=(0, -1))] = 0.0  # exactly 0 where all agree (no rounding residue)
    return spread.astype(np.float32)


def save_spread(spread: np.ndarray, png: Path, geotiff: Path | None, crs: Any, transform: Any, num_samples: int) -> None:
    """The spread as an 8-bit PNG (``SPREAD_PNG_FULL`` = white) and, on the result's grid, a float32
    GeoTIFF band holding the exact values. Paths are the staged temporary ones of ``atomic_files``."""
    import PIL.Image

    from .geo import write_geotiff

    PIL.Image.fromarray(np.clip(spread / SPREAD_PNG_FULL * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L").save(
        png, format="PNG")
    if geotiff is not None:
        write_geotiff(geotiff, spread, crs, transform, band_descriptions=[f"spread: std across {num_samples} samples"],
                      tags={"diffusionsat_spread": f"per-pixel standard deviation of {num_samples} samples, 0-1 units, "
                                                   "averaged over RGB"}, overwrite=True)
