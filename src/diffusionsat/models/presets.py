"""Model presets: architectures for tests (``tiny``), the embedded default model (``small``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from diffusers import DDPMScheduler

from .sat_unet import SatUNet
from .text import build_caption_tokenizer, build_text_encoder

#: "Unknown" encoding of our own models: outside every valid normalised value, so that e.g.
#: year 1980 or cloud cover 0 (both 0.0 after normalisation) stay distinguishable from unknown.
OUR_UNKNOWN_VALUE = -100.0


@dataclass(frozen=True)
class Preset:
    """A pixel-space text+metadata model small enough for a CPU."""

    name: str
    resolution: int
    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    layers_per_block: int
    attention_heads: int
    text_hidden: int
    text_layers: int
    max_length: int
    extra: dict[str, Any] = field(default_factory=dict)

    def unet_config(self, cross_attention_dim: int) -> dict[str, Any]:
        return {
            "sample_size": self.resolution,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": self.block_out_channels,
            "down_block_types": self.down_block_types,
            "up_block_types": self.up_block_types,
            "layers_per_block": self.layers_per_block,
            # diffusers' UNet2DConditionModel reads `attention_head_dim` as the number of heads.
            "attention_head_dim": self.attention_heads,
            "cross_attention_dim": cross_attention_dim,
            "norm_num_groups": min(32, self.block_out_channels[0]),
            "use_metadata": True,
            "num_metadata": 7,
            "metadata_unknown_value": OUR_UNKNOWN_VALUE,
            **self.extra,
        }


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        resolution=16,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_heads=2,
        text_hidden=32,
        text_layers=1,
        max_length=16,
    ),
    "small": Preset(
        name="small",
        resolution=64,
        block_out_channels=(32, 64, 128),
        # attention only at 16×16 (and the mid block): the 32×32 level's attention cost more than
        # it gave a CPU-trained model
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_heads=4,
        text_hidden=128,
        text_layers=2,
        max_length=32,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"preset={name!r}: unknown; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def build_pipeline(preset: str | Preset, captions: Iterable[str], seed: int = 0, prediction_type: str = "epsilon"):
    """A randomly initialised pixel-space :class:`DiffusionSatPipeline` for ``preset``.

    The tokenizer's vocabulary comes from ``captions`` (the training captions).
    """
    import torch

    from ..pipelines.pipeline_diffusionsat import DiffusionSatPipeline

    spec = get_preset(preset) if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    tokenizer = build_caption_tokenizer(captions, max_length=spec.max_length)
    text_encoder = build_text_encoder(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        num_layers=spec.text_layers,
        num_heads=max(1, spec.text_hidden // 32),
        max_length=spec.max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    unet = SatUNet(**spec.unet_config(cross_attention_dim=spec.text_hidden))
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=False
    )
    return DiffusionSatPipeline(vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
