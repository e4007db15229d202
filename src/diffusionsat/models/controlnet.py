"""`SatControlNet`: diffusers' `ControlNetModel` plus DiffusionSat's metadata conditioning (SPEC §3).

The conditioning image may have any channel count C (13 Sentinel-2 bands, 4 NAIP bands, a 1-channel
mask, a road map …). The ControlNet embeds the *target* metadata with its own copy of the UNet's
metadata MLPs, and — as the original ``diffusionsat/controlnet.py`` — adds the *same* MLPs applied to
the conditioning image's metadata. All output convolutions are zero-initialised, so a fresh
ControlNet leaves the base UNet's prediction unchanged.

Rather than copying diffusers' forward pass, the metadata embedding rides through the
``timestep_cond`` slot: our ``time_embedding`` (same parameters as diffusers' ``TimestepEmbedding``)
adds that vector to its output, which is exactly where the original added its metadata embeddings.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from diffusers import ModelMixin  # noqa: F401  (diffusers' pipeline loader looks it up in this module)
from diffusers.configuration_utils import register_to_config
from diffusers.models.controlnets.controlnet import ControlNetModel, ControlNetOutput
from diffusers.models.embeddings import TimestepEmbedding
from torch import nn

from ..metadata import NUM_METADATA, ORIGINAL_UNKNOWN_VALUE
from .sat_unet import SatUNet, check_metadata_tensor, embed_metadata, metadata_embedding_for


class TimeAndMetadataEmbedding(TimestepEmbedding):
    """``TimestepEmbedding`` whose ``condition`` is an already embedded vector added to its output.

    Same parameter names and shapes as diffusers' class, so UNet weights copy over unchanged.
    """

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        emb = super().forward(sample)
        return emb if condition is None else emb + condition.to(emb.dtype)


def metadata_embedding_sum(
    model: nn.Module,
    metadata: torch.Tensor,
    cond_metadata: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Σ MLPs(target metadata) [+ Σ the same MLPs(conditioning metadata)], per sample.

    ``cond_metadata`` is ``(B, 7)`` for one conditioning image or ``(B, T, 7)`` for several; several
    are summed over T (the original 2D ControlNet's rule).
    """
    emb = embed_metadata(metadata, model.time_proj, model.metadata_embedding, dtype)
    if cond_metadata is None:
        return emb
    if cond_metadata.ndim == 3:
        batch, frames, num = cond_metadata.shape
        per_frame = embed_metadata(cond_metadata.reshape(batch * frames, num), model.time_proj, model.metadata_embedding, dtype)
        return emb + per_frame.reshape(batch, frames, -1).sum(dim=1)
    return emb + embed_metadata(cond_metadata, model.time_proj, model.metadata_embedding, dtype)


def unknown_metadata(like: torch.Tensor, shape: tuple[int, ...], value: float) -> torch.Tensor:
    """A normalised metadata tensor of ``shape`` where every field is "unknown"."""
    return torch.full(shape, value, device=like.device, dtype=torch.float32)


def check_conditioning_channels(image: torch.Tensor, expected: int, what: str = "ControlNet") -> None:
    """A conditioning image must have the band count the ControlNet was built/trained for."""
    if image.shape[1] != expected:
        raise ValueError(
            f"conditioning image has {image.shape[1]} bands/channels but this {what} was trained for {expected}; "
            f"select {expected} bands (e.g. --bands) or use a ControlNet trained for {image.shape[1]}"
        )


def downsample_strides(factor: int, available: int) -> list[int]:
    """Strides of the conditioning embedding's resolution-changing convolutions for ``factor``."""
    if factor < 1 or factor & (factor - 1):
        raise ValueError(f"conditioning_downsample_factor={factor!r}: must be a power of two >= 1")
    halvings = int(math.log2(factor))
    if halvings > available:
        raise ValueError(
            f"conditioning_downsample_factor={factor}: needs {halvings} stride-2 convolutions, but "
            f"conditioning_embedding_out_channels gives only {available}"
        )
    return [2] * halvings + [1] * (available - halvings)


def copy_unet_weights(controlnet: nn.Module, unet: nn.Module) -> None:
    """Copy the encoder half of a (Sat)UNet into a ControlNet (conv_in, embeddings, down, mid)."""
    controlnet.conv_in.load_state_dict(unet.conv_in.state_dict())
    controlnet.time_proj.load_state_dict(unet.time_proj.state_dict())
    controlnet.time_embedding.load_state_dict(unet.time_embedding.state_dict())
    if getattr(controlnet, "class_embedding", None) is not None and getattr(unet, "class_embedding", None) is not None:
        controlnet.class_embedding.load_state_dict(unet.class_embedding.state_dict())
    if hasattr(controlnet, "add_embedding") and hasattr(unet, "add_embedding"):
        controlnet.add_embedding.load_state_dict(unet.add_embedding.state_dict())
    if getattr(controlnet, "metadata_embedding", None) is not None and getattr(unet, "metadata_embedding", None) is not None:
        controlnet.metadata_embedding.load_state_dict(unet.metadata_embedding.state_dict())
    controlnet.down_blocks.load_state_dict(unet.down_blocks.state_dict())
    controlnet.mid_block.load_state_dict(unet.mid_block.state_dict())


def controlnet_kwargs_from_unet(unet: nn.Module) -> dict[str, Any]:
    """The ``ControlNetModel`` constructor arguments that a UNet's config determines."""
    params = inspect.signature(inspect.unwrap(ControlNetModel.__init__)).parameters
    skip = {"self", "conditioning_channels", "conditioning_embedding_out_channels", "controlnet_conditioning_channel_order"}
    kwargs = {name: unet.config[name] for name in params if name not in skip and name in unet.config}
    for name in ("use_metadata", "num_metadata", "metadata_unknown_value"):
        if name in unet.config:
            kwargs[name] = unet.config[name]
    return kwargs


def merge_config_signature(cls: type, base_init: Callable) -> None:
    """Make ``cls.__init__``'s signature = its own arguments + ``base_init``'s, then register it.

    The config *is* the constructor's arguments (diffusers convention), so ``save_pretrained`` /
    ``from_pretrained`` round-trip every base-class argument without custom code.
    """
    own = list(inspect.signature(cls.__init__).parameters.values())
    names = {p.name for p in own}
    base = list(inspect.signature(inspect.unwrap(base_init)).parameters.values())[1:]
    merged = [own[0]]
    merged += [p for p in base if p.kind is not inspect.Parameter.VAR_KEYWORD and p.name not in names]
    merged += [p for p in own[1:] if p.kind is not inspect.Parameter.VAR_KEYWORD]
    merged = [p if i == 0 else p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for i, p in enumerate(merged)]
    init = cls.__init__
    init.__signature__ = inspect.Signature(merged)  # type: ignore[attr-defined]
    cls.__init__ = register_to_config(init)  # type: ignore[method-assign]


class SatControlNet(ControlNetModel):
    """Metadata-aware ControlNet (all ``ControlNetModel`` config keys, plus the ones below).

    Args:
        use_metadata: embed target (and conditioning) metadata like the UNet.
        num_metadata: number of metadata values (7).
        metadata_unknown_value: normalised value meaning "unknown" (must match the UNet's).
        use_cond_metadata: add the conditioning image's metadata embedding; when the caller gives
            none (``cond_metadata=None``) the term is left out, as in the original.
        conditioning_downsample_factor: how much smaller the UNet sample is than the conditioning
            image: 8 for an image-sized condition with an SD VAE, 1 for a condition given at the
            sample's (latent) size — the super-resolution ControlNet.
        conditioning_bands: optional band names the ControlNet was trained on (e.g. Sentinel-2
            ``B02``…), so the CLI can pick them from a multi-band raster by name.
    """

    def __init__(
        self,
        use_metadata: bool = True,
        num_metadata: int = NUM_METADATA,
        metadata_unknown_value: float = ORIGINAL_UNKNOWN_VALUE,
        use_cond_metadata: bool = True,
        conditioning_downsample_factor: int = 8,
        conditioning_bands: list[str] | None = None,
        **controlnet_kwargs: Any,
    ):
        super().__init__(**controlnet_kwargs)
        old = self.time_embedding
        self.time_embedding = TimeAndMetadataEmbedding(
            old.linear_1.in_features, old.linear_1.out_features, act_fn=self.config.act_fn
        )
        self.time_embedding.load_state_dict(old.state_dict())
        convs = [b for i, b in enumerate(self.controlnet_cond_embedding.blocks) if i % 2 == 1]
        for conv, stride in zip(convs, downsample_strides(conditioning_downsample_factor, len(convs))):
            conv.stride = (stride, stride)
        if conditioning_bands is not None and len(conditioning_bands) != self.config.conditioning_channels:
            raise ValueError(
                f"conditioning_bands has {len(conditioning_bands)} names for {self.config.conditioning_channels} channels"
            )
        self.metadata_embedding = metadata_embedding_for(self, num_metadata) if use_metadata else None

    @classmethod
    def from_unet(  # type: ignore[override]
        cls,
        unet: SatUNet,
        conditioning_channels: int = 3,
        conditioning_downsample_factor: int | None = None,
        conditioning_embedding_out_channels: tuple[int, ...] | None = None,
        load_weights_from_unet: bool = True,
        use_cond_metadata: bool = True,
        conditioning_bands: list[str] | None = None,
        controlnet_conditioning_channel_order: str = "rgb",
    ) -> SatControlNet:
        """A ControlNet whose encoder is a copy of ``unet``'s (the standard ControlNet initialisation).

        ``conditioning_downsample_factor`` defaults to 1 (condition at sample size, e.g. pixel-space
        models or the SR ControlNet); pass 8 for an image-sized condition with an SD VAE.
        """
        factor = 1 if conditioning_downsample_factor is None else conditioning_downsample_factor
        if conditioning_embedding_out_channels is None:
            first = unet.config.block_out_channels[0]
            conditioning_embedding_out_channels = (16, 32, 96, 256) if first >= 256 else (first // 2, first)
        controlnet = cls(
            **controlnet_kwargs_from_unet(unet),
            conditioning_channels=conditioning_channels,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_downsample_factor=factor,
            use_cond_metadata=use_cond_metadata,
            conditioning_bands=list(conditioning_bands) if conditioning_bands is not None else None,
        )
        if load_weights_from_unet:
            copy_unet_weights(controlnet, unet)
        return controlnet

    def conditioning_size(self, sample_height: int, sample_width: int) -> tuple[int, int]:
        """Size the conditioning image must have for a UNet sample of the given size."""
        factor = self.config.conditioning_downsample_factor
        return sample_height * factor, sample_width * factor

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        metadata: torch.Tensor | None = None,
        cond_metadata: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> ControlNetOutput | tuple:
        """``ControlNetModel.forward`` plus ``metadata`` (B, 7) of the target image and
        ``cond_metadata`` (B, 7) or (B, T, 7) of the conditioning image(s), both normalised."""
        check_conditioning_channels(controlnet_cond, self.config.conditioning_channels)
        expected = self.conditioning_size(sample.shape[-2], sample.shape[-1])
        if tuple(controlnet_cond.shape[-2:]) != expected:
            raise ValueError(
                f"conditioning image is {tuple(controlnet_cond.shape[-2:])} px but this ControlNet needs {expected} "
                f"for a {tuple(sample.shape[-2:])} sample (conditioning_downsample_factor="
                f"{self.config.conditioning_downsample_factor})"
            )
        if kwargs.get("timestep_cond") is not None:
            raise ValueError("timestep_cond is used for the metadata embedding of SatControlNet")
        if self.metadata_embedding is not None:
            batch = sample.shape[0]
            unknown = self.config.metadata_unknown_value
            num = self.config.num_metadata
            metadata = unknown_metadata(sample, (batch, num), unknown) if metadata is None else metadata
            metadata = check_metadata_tensor(metadata.to(sample.device), batch, num)
            if self.config.use_cond_metadata and cond_metadata is not None:  # None: no term, as the original
                cond_metadata = check_cond_metadata(cond_metadata.to(sample.device), batch, num)
            else:
                cond_metadata = None
            kwargs["timestep_cond"] = metadata_embedding_sum(self, metadata, cond_metadata, sample.dtype)
        return super().forward(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, **kwargs)


def check_cond_metadata(cond_metadata: torch.Tensor, batch: int, num_metadata: int) -> torch.Tensor:
    """Validate/broadcast conditioning metadata: (B, 7) or (B, T, 7)."""
    if cond_metadata.ndim == 3:
        if cond_metadata.shape[-1] != num_metadata:
            raise ValueError(f"cond_metadata must be (batch, frames, {num_metadata}), got {tuple(cond_metadata.shape)}")
        if cond_metadata.shape[0] == 1 and batch > 1:
            cond_metadata = cond_metadata.expand(batch, -1, -1)
        if cond_metadata.shape[0] != batch:
            raise ValueError(f"cond_metadata batch {cond_metadata.shape[0]} does not match sample batch {batch}")
        return cond_metadata
    return check_metadata_tensor(cond_metadata, batch, num_metadata)


merge_config_signature(SatControlNet, ControlNetModel.__init__)
