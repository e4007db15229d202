"""ControlNet task training (``train --task superres|temporal|inpaint|control``): datasets and conditions.

The base model (UNet, text encoder, VAE) is frozen; only a ControlNet initialised from its UNet is
trained with plain MSE (SPEC §8). Conditions are built exactly as the task pipelines build them at
inference (:mod:`diffusionsat.pipelines.pipeline_controlnet`), so training and sampling agree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from ..metadata import SatMetadata
from .config import TrainConfig

TASKS = ("generate", "superres", "temporal", "inpaint", "control")


def build_task_dataset(cfg: TrainConfig, resolution: int) -> Dataset:
    """The paired dataset of a task, from ``cfg.data`` (rasters) and the task's own keys."""
    from ..data.geotiff import GeoTiffChips
    from ..data.tasks import InpaintSamples, SuperResPairs, TemporalSequences

    chip = cfg.chip_size or resolution
    if cfg.task == "superres":
        if len(cfg.data) != 1:
            raise ValueError("superres: data must be one high-resolution raster (the low-res one goes in lowres)")
        return SuperResPairs(cfg.data[0], chip, low=cfg.lowres, factor=cfg.sr_factor, bands=cfg.bands,
                             low_bands=cfg.lowres_bands, out_size=resolution)
    if cfg.task == "temporal":
        return TemporalSequences(cfg.data, chip, num_frames=cfg.max_frames + 1, date_pattern=cfg.date_pattern,
                                 bands=cfg.bands, out_size=resolution)
    if cfg.task == "inpaint":
        return InpaintSamples(cfg.data, chip, vector=cfg.mask_vector, bands=cfg.bands, seed=cfg.seed,
                              out_size=resolution)
    if cfg.task == "control":
        return GeoTiffChips(cfg.data, chip_size=chip, resize_to=resolution, bands=cfg.bands,
                            date_pattern=cfg.date_pattern, max_nodata=cfg.max_nodata, on_error="skip",
                            verify_pixels=True)
    raise ValueError(f"task={cfg.task!r}: choose one of {', '.join(TASKS)}")


def conditioning_channels(task: str, sample: dict[str, Any], out_channels: int) -> int:
    """Input bands of the task's ControlNet, read off one sample."""
    if task == "superres":
        return int(sample["conditioning_pixel_values"].shape[0])
    if task == "temporal":
        return int(sample["conditioning_pixel_values"].shape[1])
    if task == "inpaint":
        return out_channels + 1
    return 3


def task_condition(task: str, batch: dict[str, Any], pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The ControlNet input of a batch, in [0, 1], as the task pipelines build it at inference.

    ``pixels`` are the (possibly augmented) targets in [-1, 1]; ``size`` the model-space size.
    """
    from ..conditional import edge_map
    from ..pipelines.pipeline_controlnet import inpaint_condition, resize_condition

    device = pixels.device
    if task == "superres":
        low = (batch["conditioning_pixel_values"].to(device) + 1) / 2
        return resize_condition(low, size)
    if task == "temporal":
        frames = (batch["conditioning_pixel_values"].to(device) + 1) / 2  # (B, T, C, H, W)
        return resize_condition(frames.permute(0, 2, 1, 3, 4), size)  # (B, C, T, h, w)
    if task == "inpaint":
        mask = batch["mask"].to(device)
        return resize_condition(inpaint_condition((pixels + 1) / 2, mask), size)
    if task == "control":
        edges = torch.stack([torch.from_numpy(edge_map(((p + 1) / 2).cpu().numpy())) for p in pixels])
        return resize_condition(edges.to(device).repeat(1, 3, 1, 1), size)
    raise ValueError(f"task={task!r} has no condition")


def conditioning_metadata(task: str, batch: dict[str, Any]) -> list[list[SatMetadata]] | None:
    """Per-sample conditioning metadata: T frames (temporal), one image (superres), none otherwise."""
    if task == "temporal":
        return [list(frames) for frames in batch["conditioning_metadata"]]
    if task == "superres":
        return [[m] for m in batch["conditioning_metadata"]]
    return None
