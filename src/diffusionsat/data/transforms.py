"""Sample transforms, kept apart from the datasets (torchgeo style): scaling to the model's
[-1, 1] range and back, band selection, resizing with GSD bookkeeping, caption dropout, collation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..metadata import SatMetadata
from .captions import CaptionTemplate


def to_model_range(
    image: np.ndarray, pixel_range: tuple[Sequence[float], Sequence[float]], valid: np.ndarray | None = None
) -> torch.Tensor:
    """Native pixels (C, H, W) → float32 tensor in [-1, 1] via per-band (low, high); nodata → -1."""
    arr = np.asarray(image, dtype=np.float32)
    lows = np.asarray(pixel_range[0], dtype=np.float32).reshape(-1, 1, 1)
    highs = np.asarray(pixel_range[1], dtype=np.float32).reshape(-1, 1, 1)
    if lows.shape[0] != arr.shape[0]:
        raise ValueError(f"pixel_range has {lows.shape[0]} bands, the image {arr.shape[0]}")
    out = np.clip((arr - lows) / np.maximum(highs - lows, 1e-12), 0.0, 1.0) * 2.0 - 1.0
    out = np.nan_to_num(out, nan=-1.0)
    if valid is not None:
        out = np.where(valid[None], out, -1.0)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def resample(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Resample (C, H, W) to ``size``×``size`` keeping the dtype.

    Downsampling by a whole factor is a block average (what a coarser sensor would record);
    other factors use antialiased bilinear interpolation; ``nearest`` for masks and labels.
    """
    c, h, w = image.shape
    if (h, w) == (size, size):
        return image
    if nearest:
        rows = (np.arange(size) * h // size).clip(0, h - 1)
        cols = (np.arange(size) * w // size).clip(0, w - 1)
        return image[:, rows][:, :, cols]
    if h == w and h % size == 0:
        f = h // size
        out = image.astype(np.float64).reshape(c, size, f, size, f).mean(axis=(2, 4))
    else:
        x = torch.from_numpy(image.astype(np.float32))[None]
        out = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=size < h,
                                              align_corners=False)[0].numpy()
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(image.dtype)


def to_uint8(pixel_values: torch.Tensor | np.ndarray) -> np.ndarray:
    """[-1, 1] (C, H, W) → uint8 (H, W, C), for PNG previews and outputs."""
    arr = pixel_values.detach().cpu().numpy() if isinstance(pixel_values, torch.Tensor) else np.asarray(pixel_values)
    return np.moveaxis(np.round((np.clip(arr, -1, 1) + 1) * 127.5).astype(np.uint8), 0, -1)


class SelectBands:
    """Keep the given 0-based channels of ``pixel_values`` (e.g. ``(0, 1, 2)`` for RGB of RGBN)."""

    def __init__(self, channels: Sequence[int]):
        self.channels = list(channels)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        c = sample["pixel_values"].shape[0]
        bad = [i for i in self.channels if not 0 <= i < c]
        if bad:
            raise ValueError(f"channel {bad[0]} requested; the sample has {c} (allowed 0–{c - 1})")
        return {**sample, "pixel_values": sample["pixel_values"][self.channels]}


def _resize_tensor(x: torch.Tensor, size: tuple[int, int], nearest: bool = False) -> torch.Tensor:
    """Resize (..., H, W) floats: antialiased bilinear (clamped to [-1, 1]) or nearest for masks."""
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:]).float()
    if nearest:
        out = torch.nn.functional.interpolate(flat, size=size, mode="nearest")
    else:
        out = torch.nn.functional.interpolate(flat, size=size, mode="bilinear", antialias=True,
                                              align_corners=False).clamp(-1, 1)
    return out.reshape(*lead, *size).to(x.dtype)


def _scaled(meta: Any, from_size: int, to_size: int) -> Any:
    if isinstance(meta, SatMetadata):
        return meta.resized(from_size, to_size)
    if isinstance(meta, list):
        return [_scaled(m, from_size, to_size) for m in meta]
    return meta


class Resize:
    """Resize a sample to ``size``×``size``; every GSD scales with its pixels.

    ``pixel_values``, ``valid_mask`` and ``mask`` (nearest) and temporal conditioning frames go to
    ``size``; a super-resolution input keeps its ratio to the target (a 4× smaller input stays 4×
    smaller).
    """

    def __init__(self, size: int):
        if size <= 0:
            raise ValueError(f"resize size={size}: must be a positive number of pixels")
        self.size = size

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        x = sample["pixel_values"]
        h, w = x.shape[-2:]
        if (h, w) == (self.size, self.size):
            return sample
        target = (self.size, self.size)
        out = dict(sample)
        out["pixel_values"] = _resize_tensor(x, target)
        for key in ("valid_mask", "mask"):
            if key in sample:
                out[key] = _resize_tensor(sample[key], target, nearest=True)
        out["metadata"] = _scaled(sample.get("metadata"), w, self.size)
        cond = sample.get("conditioning_pixel_values")
        if cond is not None:
            ch, cw = cond.shape[-2:]
            if cond.ndim == 4 or (ch, cw) == (h, w):  # temporal frames / same-size control image
                new = target
            else:  # super-resolution input: keep the ratio
                new = (max(1, round(ch * self.size / h)), max(1, round(cw * self.size / w)))
            out["conditioning_pixel_values"] = _resize_tensor(cond, new)
            out["conditioning_metadata"] = _scaled(sample.get("conditioning_metadata"), cw, new[1])
        return out


class CaptionDropout:
    """Re-render ``caption`` from ``caption_fields`` dropping each part with probability ``p``."""

    def __init__(self, p: float, template: str | None = None, seed: int | None = None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"caption dropout p={p!r} out of range; allowed [0, 1]")
        self.p, self.template, self.rng = p, template, random.Random(seed)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        fields = sample.get("caption_fields")
        template = self.template or sample.get("caption_template")
        if not fields or not template:
            return sample
        return {**sample, "caption": CaptionTemplate(template).render(fields, dropout=self.p, rng=self.rng)}


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Any]):
        self.transforms = list(transforms)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        for t in self.transforms:
            sample = t(sample)
        return sample


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch sample dicts: tensors of equal shape are stacked; everything else becomes a list.

    ``metadata`` stays a list of :class:`SatMetadata` (pass it to
    :func:`diffusionsat.metadata.metadata_tensor`, where dropout and "unknown" are handled).
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s.get(key) for s in samples]
        if all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
