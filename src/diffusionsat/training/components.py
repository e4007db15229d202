"""The pipeline a run starts from: a preset built from scratch, or a pretrained SD-2.1-style folder."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from ..models.presets import PRESETS, build_pipeline, get_preset
from ..models.sat_unet import SatUNet
from ..pipelines import DiffusionSatPipeline
from .config import TrainConfig

logger = logging.getLogger(__name__)

#: Words every caption vocabulary gets, so prompts about seasons, scales and land cover that the
#: training captions happen to miss still map to tokens the model can learn from later fine-tuning.
BASE_VOCABULARY = (
    "a satellite image aerial photo of in the and with spring summer autumn winter fall "
    "farmland fields cropland forest water river lake ponds urban city buildings roads desert "
    "grassland prairie wetland snow clouds vegetation bare soil coast sea high low medium resolution"
).split()


def model_resolution(cfg: TrainConfig) -> int:
    """Image size the model trains at (preset default unless ``resolution`` is set)."""
    if cfg.preset in PRESETS:
        preset = get_preset(cfg.preset)
        size = cfg.resolution or preset.resolution
        multiple = 2 ** (len(preset.block_out_channels) - 1)
        if size % multiple:
            raise ValueError(f"resolution={size}: preset {cfg.preset!r} needs a multiple of {multiple}")
        return size
    if cfg.preset == "sd21":
        return cfg.resolution or 512
    raise ValueError(f"preset={cfg.preset!r}: unknown; choose one of {', '.join([*PRESETS, 'sd21'])}")


def build_initial_pipeline(cfg: TrainConfig, captions: Iterable[str]) -> DiffusionSatPipeline:
    """The untrained pipeline for ``cfg``: from scratch for tiny/small, from ``pretrained`` for sd21."""
    if cfg.preset == "sd21":
        return load_sd21(cfg.pretrained, cfg.prediction_type)
    preset = get_preset(cfg.preset)
    if cfg.resolution and cfg.resolution != preset.resolution:
        from dataclasses import replace

        preset = replace(preset, resolution=model_resolution(cfg))
    return build_pipeline(preset, [*captions, " ".join(BASE_VOCABULARY)], seed=cfg.seed,
                          prediction_type=cfg.prediction_type or "epsilon")


def load_sd21(path: str | None, prediction_type: str | None = None) -> DiffusionSatPipeline:
    """A Stable-Diffusion-2.1-style folder → DiffusionSat pipeline with zero-initialised metadata MLPs.

    The pretrained model is unchanged at step 0: the metadata embeddings' output layers are zero.
    """
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import AutoTokenizer, CLIPTextModel

    if path is None or not (Path(path) / "unet").is_dir():
        raise FileNotFoundError(f"pretrained={path!r}: expected a diffusers folder with unet/, vae/, text_encoder/")
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
    unet = SatUNet.from_pretrained(path, subfolder="unet", use_metadata=True, num_metadata=7,
                                   low_cpu_mem_usage=False)
    unet.zero_init_metadata_embedding()
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    if prediction_type and scheduler.config.prediction_type != prediction_type:
        logger.warning("pretrained scheduler predicts %s; training with %s as configured",
                       scheduler.config.prediction_type, prediction_type)
        scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=prediction_type)
    return DiffusionSatPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
