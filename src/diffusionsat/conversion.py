"""Convert original DiffusionSat ControlNet checkpoints (``controlnet.py`` / ``controlnet_3d.py``) to ours.

The original saved its ControlNets with diffusers' ``save_pretrained``: a folder with ``config.json``
(``_class_name`` ``ControlNetModel`` or ``ControlNetModel3D``) and ``diffusion_pytorch_model.bin`` or
``.safetensors``. Our :class:`SatControlNet` / :class:`SatControlNet3D` keep the original parameter
names, so conversion is a config translation plus a strict state-dict load:

======================================  ===============================================
original config key                     ours
======================================  ===============================================
``conditioning_in_channels``            ``conditioning_channels``
``conditioning_scale`` (2D, 1/2/4/8)    ``conditioning_downsample_factor`` (8/4/2/1)
``num_cond`` (training flag, 3D)        ``max_frames`` (``--max-frames``, default 3)
(implicit: unknown metadata = 0)        ``metadata_unknown_value = 0.0``
(fixed: 8 heads × 64, first block)      ``temporal_first_block_heads/_head_dim = 8/64``
======================================  ===============================================

Original UNet folders (``SatUNet``) load unchanged and need no conversion.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .models.controlnet import SatControlNet
from .models.controlnet_3d import SatControlNet3D

logger = logging.getLogger(__name__)

#: Config keys shared verbatim with diffusers' ControlNetModel.
_SHARED_KEYS = (
    "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention", "block_out_channels",
    "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps",
    "cross_attention_dim", "attention_head_dim", "use_linear_projection", "class_embed_type", "num_class_embeds",
    "upcast_attention", "resnet_time_scale_shift", "projection_class_embeddings_input_dim",
    "controlnet_conditioning_channel_order", "conditioning_embedding_out_channels", "global_pool_conditions",
    "use_metadata", "num_metadata",
)


def downsample_factor_from_scale(conditioning_scale: int, blocks: int) -> int:
    """The original 2D rule: strided convs while the running scale (×2 each block) is below 8."""
    scale, strides = int(conditioning_scale), 0
    for _ in range(blocks):
        if scale < 8:
            strides += 1
            scale *= 2
    return 2**strides


def read_original_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Weights of an original checkpoint folder (safetensors preferred; .bin read with weights_only)."""
    safetensors_file = folder / "diffusion_pytorch_model.safetensors"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        return load_file(str(safetensors_file))
    bin_file = folder / "diffusion_pytorch_model.bin"
    if bin_file.is_file():
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no diffusion_pytorch_model.safetensors or .bin")


def convert_config(original: dict[str, Any], kind: str, max_frames: int = 3, use_cond_metadata: bool = True) -> dict[str, Any]:
    """Original ControlNet config → constructor arguments of ours."""
    config = {k: original[k] for k in _SHARED_KEYS if k in original}
    config["conditioning_channels"] = int(original.get("conditioning_in_channels", 3))
    config["metadata_unknown_value"] = 0.0
    blocks = len(config.get("conditioning_embedding_out_channels", (16, 32, 96, 256))) - 1
    if kind == "3d":
        config.update(
            max_frames=int(original.get("num_cond", max_frames)),
            use_temporal_transformer=bool(original.get("use_temporal_transformer", False)),
            temporal_first_block_heads=8,
            temporal_first_block_head_dim=64,
            conditioning_downsample_factor=2**blocks,
        )
    else:
        config.update(
            conditioning_downsample_factor=downsample_factor_from_scale(original.get("conditioning_scale", 1), blocks),
            use_cond_metadata=use_cond_metadata,
        )
    return config


def detect_kind(original: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    name = str(original.get("_class_name", ""))
    if name.endswith("3D") or state.get("controlnet_mid_block.weight", torch.empty(0)).ndim == 5:
        return "3d"
    return "2d"


def convert_controlnet(
    source: str | os.PathLike,
    *,
    kind: str = "auto",
    max_frames: int = 3,
    use_cond_metadata: bool = True,
) -> SatControlNet | SatControlNet3D:
    """Load an original ControlNet folder as a :class:`SatControlNet` / :class:`SatControlNet3D`.

    The state dict must match exactly; any missing or unexpected parameter is an error naming it.
    """
    folder = Path(source)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (expected an original ControlNet folder)")
    original = json.loads(config_file.read_text(encoding="utf-8"))
    state = read_original_state_dict(folder)
    if kind == "auto":
        kind = detect_kind(original, state)
    if kind not in ("2d", "3d"):
        raise ValueError(f"kind={kind!r}: must be auto, 2d or 3d")
    config = convert_config(original, kind, max_frames=max_frames, use_cond_metadata=use_cond_metadata)
    cls = SatControlNet3D if kind == "3d" else SatControlNet
    model = cls.from_config(config)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        missing = ", ".join(result.missing_keys[:5]) or "none"
        unexpected = ", ".join(result.unexpected_keys[:5]) or "none"
        raise ValueError(
            f"{folder}: the checkpoint does not match a {cls.__name__} built from its config "
            f"({len(result.missing_keys)} missing, e.g. {missing}; {len(result.unexpected_keys)} unexpected, e.g. {unexpected})"
        )
    logger.info("converted %s (%s, %d tensors)", folder, cls.__name__, len(state))
    if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise ValueError(f"{folder}: the checkpoint contains NaN or infinite weights")
    return model
