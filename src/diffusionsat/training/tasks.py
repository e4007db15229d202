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
    """The paired dataset of a task, from ``cfg.data`` (rasters, UC Merced folders) and the task's own keys.

    UC Merced folders give their training split: super-resolution pairs from native 256 px tiles
    and their ``sr_factor``× downsample, in-painting samples at the model's size with random boxes.
    """
    from torch.utils.data import ConcatDataset

    from ..data.geotiff import GeoTiffChips
    from ..data.tasks import BoxMasked, DownsampledPairs, InpaintSamples, SuperResPairs, TemporalSequences
    from ..data.transforms import Resize
    from ..data.ucmerced import UCMerced, is_ucmerced_folder

    chip = cfg.chip_size or resolution
    ucmerced = [d for d in cfg.data if is_ucmerced_folder(d)]
    rasters = [d for d in cfg.data if d not in ucmerced]
    if ucmerced and cfg.task not in ("superres", "inpaint"):
        raise ValueError(f"data: UC Merced folders are not time series or control pairs; task={cfg.task} needs rasters")
    parts: list[Dataset] = []
    if cfg.task == "superres":
        if cfg.lowres is not None and len(rasters) != 1:
            raise ValueError("superres: lowres pairs with exactly one high-resolution raster in data")
        resize = Resize(resolution) if chip != resolution else None
        parts += [DownsampledPairs(UCMerced(d, "train", seed=cfg.seed), chip, factor=cfg.sr_factor, transform=resize)
                  for d in ucmerced]
        parts += [SuperResPairs(r, chip, low=cfg.lowres, factor=cfg.sr_factor, bands=cfg.bands,
                                low_bands=cfg.lowres_bands, out_size=resolution) for r in rasters]
        for pair in cfg.sr_pairs:  # real pairs, each repeated to weigh a small scene against large sets
            real = SuperResPairs(pair["high"], chip, low=pair["low"], bands=pair.get("bands"),
                                 low_bands=pair.get("low_bands"), roi=pair.get("roi"), stride=pair.get("stride"),
                                 out_size=resolution)
            parts += [real] * int(pair.get("repeat") or 1)
    elif cfg.task == "temporal":
        return TemporalSequences(cfg.data, chip, num_frames=cfg.max_frames + 1, date_pattern=cfg.date_pattern,
                                 bands=cfg.bands, every_date=cfg.temporal_every_date, out_size=resolution)
    elif cfg.task == "inpaint":
        parts += [BoxMasked(UCMerced(d, "train", size=resolution, seed=cfg.seed), seed=cfg.seed) for d in ucmerced]
        if rasters:
            parts.append(InpaintSamples(rasters, chip, vector=cfg.mask_vector, bands=cfg.bands, seed=cfg.seed,
                                        out_size=resolution))
    elif cfg.task == "control" and cfg.control_kind != "edges":  # the map is rasterised from a vector file
        return InpaintSamples(rasters, chip, vector=cfg.mask_vector, bands=cfg.bands, seed=cfg.seed, out_size=resolution)
    elif cfg.task == "control":
        return GeoTiffChips(cfg.data, chip_size=chip, resize_to=resolution, bands=cfg.bands,
                            date_pattern=cfg.date_pattern, max_nodata=cfg.max_nodata, on_error="skip",
                            verify_pixels=True)
    else:
        raise ValueError(f"task={cfg.task!r}: choose one of {', '.join(TASKS)}")
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def initial_controlnet(cfg: TrainConfig, channels: int) -> torch.nn.Module:
    """The trained ControlNet ``cfg.controlnet_init`` starts from (fine-tuning), checked against the task.

    ``"base"`` is the base model's own ControlNet for the task (``controlnet_<task>/``, as shipped
    with the default model); anything else a ControlNet folder or a run with ``controlnet/``.
    """
    from ..loading import local_model_folder, model_layout, resolve_model
    from ..pipelines.pipeline_controlnet import SatControlNet3D, find_controlnet_folder, load_controlnet

    init = cfg.controlnet_init
    if init == "base":
        root = model_layout(local_model_folder(resolve_model(cfg.base_model))).root
        folder = find_controlnet_folder(root, cfg.task)
        if not (folder / "config.json").is_file():
            raise ValueError(f"controlnet_init=base: the base model {cfg.base_model!r} has no ControlNet for "
                             f"task {cfg.task} ({folder.name}/)")
    else:
        folder = init
    try:
        net = load_controlnet(folder)
    except (OSError, ValueError) as err:
        raise ValueError(f"controlnet_init={init!r}: not a loadable ControlNet ({err})") from None
    is_3d = isinstance(net, SatControlNet3D)
    if is_3d != (cfg.task == "temporal"):
        raise ValueError(f"controlnet_init={init!r}: a {'3D' if is_3d else '2D'} ControlNet; task {cfg.task} "
                         f"needs a {'3D' if cfg.task == 'temporal' else '2D'} one")
    have = int(net.config.conditioning_channels)
    if have != channels:
        raise ValueError(f"controlnet_init={init!r}: takes {have} conditioning bands; the data gives {channels}")
    return net


def conditioning_channels(task: str, sample: dict[str, Any], out_channels: int) -> int:
    """Input bands of the task's ControlNet, read off one sample."""
    if task == "superres":
        return int(sample["conditioning_pixel_values"].shape[0])
    if task == "temporal":
        return int(sample["conditioning_pixel_values"].shape[1])
    if task == "inpaint":
        return out_channels + 1
    return 3


def task_condition(task: str, batch: dict[str, Any], pixels: torch.Tensor, size: tuple[int, int],
                   control_kind: str = "edges") -> torch.Tensor:
    """The ControlNet input of a batch, in [0, 1], as the task pipelines build it at inference.

    ``pixels`` are the (possibly augmented) targets in [-1, 1]; ``size`` the model-space size;
    ``control_kind`` (task control): ``edges`` of the targets, or the batch's ``mask`` (mask/road
    maps), repeated to 3 bands as ``generate --control`` repeats a 1-band map.
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
    if task == "control" and control_kind != "edges":
        return resize_condition((batch["mask"].to(device) > 0.5).float().repeat(1, 3, 1, 1), size)
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
