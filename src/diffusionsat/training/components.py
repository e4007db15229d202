"""The pipeline a run starts from: a preset built from scratch, a DiffusionSat model to fine-tune, or a
pretrained SD-2.1-style folder; then the noise schedule the run trains with."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..models.presets import PRESETS, build_pipeline, get_preset
from ..models.sat_unet import SatUNet
from ..models.text import extend_caption_vocabulary
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
    """Image size the model trains at: ``resolution``, else a task's base model's own size, else the preset's."""
    if cfg.resolution is None and cfg.task != "generate" and cfg.base_model is not None:
        size = base_model_resolution(cfg.base_model)
        if size is not None:
            return size
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


def base_model_resolution(model: str) -> int | None:
    """Pixel size a local model folder samples at (UNet sample size × the VAE's factor), from its configs."""
    import json
    from pathlib import Path

    from ..loading import resolve_model

    folder = Path(resolve_model(model))
    unet = folder / "unet" / "config.json"
    if not unet.is_file():
        return None  # a hub id or an original run folder: the preset decides
    size = json.loads(unet.read_text(encoding="utf-8")).get("sample_size")
    vae = folder / "vae" / "config.json"
    if vae.is_file():
        blocks = json.loads(vae.read_text(encoding="utf-8")).get("block_out_channels") or [0]
        size = size * 2 ** (len(blocks) - 1) if isinstance(size, int) else size
    return size if isinstance(size, int) else None


def build_initial_pipeline(cfg: TrainConfig, captions: Iterable[str]) -> DiffusionSatPipeline:
    """The starting pipeline for ``cfg``, with the noise schedule the run trains with.

    tiny/small: from scratch, or with ``pretrained`` a DiffusionSat model folder (or ``default``) to
    fine-tune, its word-level vocabulary extended by the new captions' words; sd21: a Stable-Diffusion-2.1-style folder with metadata MLPs added.
    """
    if cfg.preset == "sd21":
        pipe = load_sd21(cfg.pretrained)
    elif cfg.pretrained:
        pipe = load_diffusionsat(cfg.pretrained, model_resolution(cfg))
        pipe.tokenizer, added = extend_caption_vocabulary(pipe.tokenizer, pipe.text_encoder, captions)
        if added:
            logger.info("%d new caption words added to the vocabulary: %s", len(added), " ".join(added[:40]))
    else:
        preset = get_preset(cfg.preset)
        if cfg.resolution and cfg.resolution != preset.resolution:
            from dataclasses import replace

            preset = replace(preset, resolution=model_resolution(cfg))
        pipe = build_pipeline(preset, [*captions, " ".join(BASE_VOCABULARY)], seed=cfg.seed)
    pipe.scheduler = training_scheduler(pipe.scheduler, cfg)
    return pipe


def training_scheduler(scheduler: SchedulerMixin, cfg: TrainConfig) -> DDPMScheduler:
    """A DDPM scheduler like ``scheduler`` with the run's prediction type and terminal-SNR choice.

    Saved with the model, so sampling uses the same betas, parametrisation and timestep spacing.
    """
    changes: dict[str, object] = {}
    if cfg.prediction_type and scheduler.config.prediction_type != cfg.prediction_type:
        changes["prediction_type"] = cfg.prediction_type
    if cfg.zero_terminal_snr is not None and bool(scheduler.config.get("rescale_betas_zero_snr")) != cfg.zero_terminal_snr:
        changes["rescale_betas_zero_snr"] = cfg.zero_terminal_snr
        changes["timestep_spacing"] = "trailing" if cfg.zero_terminal_snr else "leading"
    if changes:
        logger.info("training with %s (the starting model's scheduler differs)", changes)
    trained = DDPMScheduler.from_config(scheduler.config, **changes)
    if trained.config.rescale_betas_zero_snr and trained.config.prediction_type != "v_prediction":
        raise ValueError("zero_terminal_snr: the starting model's betas reach zero SNR, which needs "
                         f"prediction_type=v_prediction, not {trained.config.prediction_type}")
    return trained


def load_diffusionsat(path: str, resolution: int) -> DiffusionSatPipeline:
    """A DiffusionSat model folder (``default`` = the shipped model) to fine-tune."""
    from ..loading import resolve_model

    pipe = DiffusionSatPipeline.from_pretrained(resolve_model(path))  # clear error if not a model folder
    if pipe.default_size != resolution:
        raise ValueError(f"pretrained={path!r} generates {pipe.default_size} px but the run trains at "
                         f"{resolution} px: set resolution to {pipe.default_size}")
    return pipe


def load_sd21(path: str | None) -> DiffusionSatPipeline:
    """A Stable-Diffusion-2.1-style folder → DiffusionSat pipeline with zero-initialised metadata MLPs.

    The pretrained model is unchanged at step 0: the metadata embeddings' output layers are zero.
    """
    from diffusers import AutoencoderKL
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
    return DiffusionSatPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
