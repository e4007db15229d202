"""`SatControlNet3D`: a ControlNet over a sequence of T conditioning frames (SPEC §3, temporal tasks).

Layout and behaviour follow the original ``diffusionsat/controlnet_3d.py`` so its checkpoints convert
(``diffusionsat convert-checkpoint``):

* frames ``(B, C, T, H, W)`` are folded into the batch; each frame's embedding is
  time + Σ metadata MLPs(target metadata) + Σ the *same* MLPs(that frame's metadata);
* the conditioning image goes through a ``Conv3d`` embedding (spatial downsampling, T kept);
* the backbone is a copy of the UNet encoder (2D blocks, built by diffusers' ``ControlNetModel``);
* each residual is reshaped to ``(B, C, T, H, W)``, passed through a zero-initialised 1×1×1
  ``Conv3d``, optionally mixed by a temporal transformer with a learnt weight clamped to [0, 1]
  (initialised 0), then **summed over T**.

The model itself is order-sensitive (the ``Conv3d`` embedding and temporal attention see frame order);
pipelines sort frames by date first (:func:`sort_frames_by_date`) so results do not depend on the
order the user listed them in.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # noqa: F401  (diffusers' pipeline loader looks it up in this module)
from diffusers.models.controlnets.controlnet import ControlNetModel, ControlNetOutput
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn

from ..metadata import NUM_METADATA, ORIGINAL_UNKNOWN_VALUE
from .controlnet import (
    check_conditioning_channels,
    controlnet_kwargs_from_unet,
    copy_unet_weights,
    downsample_strides,
    merge_config_signature,
    unknown_metadata,
)
from .sat_unet import SatUNet, check_metadata_tensor, embed_metadata, metadata_embedding_for


def clamp_straight_through(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` clamped to [0, 1] in the forward pass, identity gradient (the original's MixingParam)."""
    return weight + (weight.clamp(0.0, 1.0) - weight).detach()


def zero_conv3d(channels: int) -> nn.Conv3d:
    conv = nn.Conv3d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ConditioningEmbedding3D(nn.Module):
    """Conv3d conditioning embedding: 3×3×3 convs mix neighbouring frames, (1,3,3) convs downsample.

    Parameter names match the original (``conv_in``, ``blocks.{i}``, ``conv_out``).
    """

    def __init__(
        self,
        conditioning_embedding_channels: int,
        conditioning_channels: int,
        block_out_channels: tuple[int, ...],
        downsample_factor: int,
    ):
        super().__init__()
        self.conv_in = nn.Conv3d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        strides = downsample_strides(downsample_factor, len(block_out_channels) - 1)
        self.blocks = nn.ModuleList()
        for i, stride in enumerate(strides):
            channel_in, channel_out = block_out_channels[i], block_out_channels[i + 1]
            self.blocks.append(nn.Conv3d(channel_in, channel_in, kernel_size=3, padding=1))
            self.blocks.append(
                nn.Conv3d(channel_in, channel_out, kernel_size=(1, 3, 3), padding=(0, 1, 1), stride=(1, stride, stride))
            )
        self.conv_out = nn.Conv3d(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        embedding = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            embedding = F.silu(block(embedding))
        return self.conv_out(embedding)


class SatControlNet3D(ControlNetModel):
    """ControlNet over T dated conditioning frames (all ``ControlNetModel`` config keys plus these).

    Args:
        use_metadata, num_metadata, metadata_unknown_value: as :class:`SatUNet`.
        max_frames: the largest T accepted (the number of frames it was trained with; 3 in the original).
        use_temporal_transformer: mix each residual across frames with a temporal transformer.
        temporal_first_block_heads, temporal_first_block_head_dim: attention shape of the temporal
            transformer on the first residual (8 × 64 in the original); later ones use the UNet's
            ``channels // attention_head_dim`` heads of ``attention_head_dim``.
        conditioning_downsample_factor: conditioning frames are this much larger than the sample.
    """

    def __init__(
        self,
        use_metadata: bool = True,
        num_metadata: int = NUM_METADATA,
        metadata_unknown_value: float = ORIGINAL_UNKNOWN_VALUE,
        max_frames: int = 3,
        use_temporal_transformer: bool = False,
        temporal_first_block_heads: int = 8,
        temporal_first_block_head_dim: int = 64,
        conditioning_downsample_factor: int = 8,
        **controlnet_kwargs: Any,
    ):
        super().__init__(**controlnet_kwargs)
        if max_frames < 1:
            raise ValueError(f"max_frames={max_frames!r}: must be >= 1")
        config = self.config
        channels = config.block_out_channels
        self.controlnet_cond_embedding = ConditioningEmbedding3D(
            channels[0], config.conditioning_channels, tuple(config.conditioning_embedding_out_channels),
            conditioning_downsample_factor,
        )
        # Residual layout of ControlNetModel: conv_in, then per block `layers_per_block` resnets and a
        # downsampler (all but the last block). Keep that order for the 3D heads.
        residuals: list[tuple[int, str]] = [(channels[0], "first")]
        for i, out in enumerate(channels):
            residuals += [(out, "layer")] * config.layers_per_block
            if i < len(channels) - 1:
                residuals.append((out, f"down{i}"))
        self.controlnet_down_blocks = nn.ModuleList([zero_conv3d(c) for c, _ in residuals])
        self.controlnet_mid_block = zero_conv3d(channels[-1])
        self.metadata_embedding = metadata_embedding_for(self, num_metadata) if use_metadata else None
        self.temporal_blocks: nn.ModuleList | None = None
        self.mixing_attns: nn.ParameterList | None = None
        if use_temporal_transformer:
            head_dims = config.attention_head_dim
            head_dims = [head_dims] * len(channels) if isinstance(head_dims, int) else list(head_dims)
            blocks, weights = [], []
            for c, kind in residuals:
                if kind == "layer":  # the original mixes only the first and the downsampler residuals
                    blocks.append(nn.Identity())
                    weights.append(nn.Parameter(torch.tensor(0.0), requires_grad=False))
                    continue
                if kind == "first":
                    heads, head_dim = temporal_first_block_heads, temporal_first_block_head_dim
                else:
                    head_dim = head_dims[int(kind[4:])]
                    heads = c // head_dim
                blocks.append(
                    TransformerTemporalModel(
                        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=c, num_layers=1,
                        norm_num_groups=config.norm_num_groups,
                        cross_attention_dim=config.cross_attention_dim if kind != "first" else None,
                    )
                )
                weights.append(nn.Parameter(torch.tensor(0.0)))
            self.temporal_blocks = nn.ModuleList(blocks)
            self.mixing_attns = nn.ParameterList(weights)

    @classmethod
    def from_unet(  # type: ignore[override]
        cls,
        unet: SatUNet,
        conditioning_channels: int = 3,
        max_frames: int = 3,
        use_temporal_transformer: bool = True,
        conditioning_downsample_factor: int | None = None,
        conditioning_embedding_out_channels: tuple[int, ...] | None = None,
        temporal_first_block_heads: int | None = None,
        temporal_first_block_head_dim: int | None = None,
        load_weights_from_unet: bool = True,
    ) -> SatControlNet3D:
        """A 3D ControlNet whose 2D encoder is a copy of ``unet``'s.

        The first temporal block keeps the original's 8 heads × 64 for full-size UNets (>= 256
        first-block channels) and gets 2 heads sized to the channels for small ones, unless given.
        """
        first = unet.config.block_out_channels[0]
        if conditioning_embedding_out_channels is None:
            conditioning_embedding_out_channels = (16, 32, 96, 256) if first >= 256 else (first // 2, first)
        big = first >= 256
        controlnet = cls(
            **controlnet_kwargs_from_unet(unet),
            conditioning_channels=conditioning_channels,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
            conditioning_downsample_factor=1 if conditioning_downsample_factor is None else conditioning_downsample_factor,
            max_frames=max_frames,
            use_temporal_transformer=use_temporal_transformer,
            temporal_first_block_heads=temporal_first_block_heads or (8 if big else 2),
            temporal_first_block_head_dim=temporal_first_block_head_dim or (64 if big else first // 2),
        )
        if load_weights_from_unet:
            copy_unet_weights(controlnet, unet)
        return controlnet

    def conditioning_size(self, sample_height: int, sample_width: int) -> tuple[int, int]:
        factor = self.config.conditioning_downsample_factor
        return sample_height * factor, sample_width * factor

    def _frame_embedding(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        metadata: torch.Tensor | None,
        cond_metadata: torch.Tensor | None,
        frames: int,
    ) -> torch.Tensor:
        """(B·T, D): time + Σ MLPs(target md) + Σ MLPs(frame md), frame index fastest."""
        batch = sample.shape[0]
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=sample.device)
        timesteps = timestep.reshape(-1).to(sample.device).expand(batch) if timestep.numel() == 1 else timestep
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        if self.metadata_embedding is not None:
            num, unknown = self.config.num_metadata, self.config.metadata_unknown_value
            metadata = unknown_metadata(sample, (batch, num), unknown) if metadata is None else metadata
            metadata = check_metadata_tensor(metadata.to(sample.device), batch, num)
            emb = emb + embed_metadata(metadata, self.time_proj, self.metadata_embedding, sample.dtype)
        emb = emb.repeat_interleave(frames, dim=0)
        if self.metadata_embedding is not None and cond_metadata is not None:  # None: no term, as the original
            if cond_metadata.ndim == 2:
                cond_metadata = cond_metadata[:, None].expand(-1, frames, -1)
            if cond_metadata.shape[0] == 1 and batch > 1:
                cond_metadata = cond_metadata.expand(batch, -1, -1)
            if tuple(cond_metadata.shape) != (batch, frames, num):
                raise ValueError(
                    f"cond_metadata must be (batch, frames, {num}) = {(batch, frames, num)}, got {tuple(cond_metadata.shape)}"
                )
            flat = cond_metadata.to(sample.device).reshape(batch * frames, num)
            emb = emb + embed_metadata(flat, self.time_proj, self.metadata_embedding, sample.dtype)
        return emb

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        metadata: torch.Tensor | None = None,
        cond_metadata: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> ControlNetOutput | tuple:
        """Residuals for the UNet from ``controlnet_cond`` (B, C, T, H, W) and per-frame
        ``cond_metadata`` (B, T, 7); ``metadata`` (B, 7) is the target image's."""
        if controlnet_cond.ndim != 5:
            raise ValueError(f"conditioning frames must be (batch, channels, frames, H, W), got {tuple(controlnet_cond.shape)}")
        check_conditioning_channels(controlnet_cond, self.config.conditioning_channels, "3D ControlNet")
        frames = controlnet_cond.shape[2]
        if not 1 <= frames <= self.config.max_frames:
            raise ValueError(f"got {frames} conditioning frames; this 3D ControlNet takes 1 to {self.config.max_frames}")
        expected = self.conditioning_size(sample.shape[-2], sample.shape[-1])
        if tuple(controlnet_cond.shape[-2:]) != expected:
            raise ValueError(
                f"conditioning frames are {tuple(controlnet_cond.shape[-2:])} px but this ControlNet needs {expected} "
                f"for a {tuple(sample.shape[-2:])} sample"
            )
        if self.config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
            attention_mask = attention_mask.repeat_interleave(frames, dim=0)

        # 1. per-frame embedding (time + target metadata + frame metadata)
        emb = self._frame_embedding(sample, timestep, metadata, cond_metadata, frames)
        text = encoder_hidden_states.repeat_interleave(frames, dim=0)

        # 2. pre-process: the sample is shared by all frames; each frame adds its own condition
        hidden = self.conv_in(sample).repeat_interleave(frames, dim=0)
        cond = self.controlnet_cond_embedding(controlnet_cond)  # (B, C, T, h, w)
        hidden = hidden + cond.permute(0, 2, 1, 3, 4).reshape(hidden.shape)

        # 3. down, 4. mid: the copied 2D encoder on B·T images
        residuals: tuple[torch.Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(
                    hidden_states=hidden, temb=emb, encoder_hidden_states=text,
                    attention_mask=attention_mask, cross_attention_kwargs=cross_attention_kwargs,
                )
            else:
                hidden, res = block(hidden_states=hidden, temb=emb)
            residuals += res
        if getattr(self.mid_block, "has_cross_attention", False):
            hidden = self.mid_block(
                hidden, emb, encoder_hidden_states=text, attention_mask=attention_mask,
                cross_attention_kwargs=cross_attention_kwargs,
            )
        else:
            hidden = self.mid_block(hidden, emb)

        # 5. zero 1×1×1 convs, temporal mixing, sum over T
        down = [
            self._temporal_head(i, res, frames, cross_attention_kwargs) for i, res in enumerate(residuals)
        ]
        mid = self.controlnet_mid_block(_unfold_frames(hidden, frames)).sum(dim=2)

        # 6. scaling
        if guess_mode and not self.config.global_pool_conditions:
            scales = torch.logspace(-1, 0, len(down) + 1, device=sample.device) * conditioning_scale
            down = [d * s for d, s in zip(down, scales)]
            mid = mid * scales[-1]
        else:
            down = [d * conditioning_scale for d in down]
            mid = mid * conditioning_scale
        if self.config.global_pool_conditions:
            down = [torch.mean(d, dim=(2, 3), keepdim=True) for d in down]
            mid = torch.mean(mid, dim=(2, 3), keepdim=True)
        if not return_dict:
            return (down, mid)
        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)

    def _temporal_head(
        self, index: int, residual: torch.Tensor, frames: int, cross_attention_kwargs: dict[str, Any] | None
    ) -> torch.Tensor:
        out = self.controlnet_down_blocks[index](_unfold_frames(residual, frames))  # (B, C, T, h, w)
        if self.temporal_blocks is not None and not isinstance(self.temporal_blocks[index], nn.Identity):
            alpha = clamp_straight_through(self.mixing_attns[index]).to(out.dtype)
            folded = _fold_frames(out)
            mixed = self.temporal_blocks[index](
                folded, num_frames=frames, cross_attention_kwargs=cross_attention_kwargs
            ).sample
            out = alpha * _unfold_frames(mixed, frames) + (1 - alpha) * out
        return out.sum(dim=2)


def _unfold_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(B·T, C, H, W) → (B, C, T, H, W)."""
    bt, c, h, w = x.shape
    return x.reshape(bt // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)


def _fold_frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) → (B·T, C, H, W)."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


merge_config_signature(SatControlNet3D, ControlNetModel.__init__)
