"""The domain encoder: a small CNN trained by this project on real satellite chips.

It replaces Inception where no pretrained weights are available (offline machines, tests): its
embedding gives domain-FID/KID, its scene head a classification score, its GSD and season heads
metadata faithfulness, and its stage feature maps an LPIPS-style distance. The weights shipped in
``diffusionsat/assets/domain-encoder`` were trained by ``scripts/train_domain_encoder.py``; the
card beside them states the data and the held-out accuracy.
"""

from __future__ import annotations

import logging
import math
import os
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

logger = logging.getLogger(__name__)

#: Meteorological seasons, indexed as the season head's outputs.
SEASONS: tuple[str, ...] = ("winter", "spring", "summer", "autumn")
IGNORE = -100


def season_of(month: int | None, lat: float | None = None) -> int | None:
    """Season index (``SEASONS``) of a month, flipped for the southern hemisphere; ``None`` if unknown."""
    if month is None:
        return None
    index = (month % 12) // 3  # Dec-Feb 0, Mar-May 1, Jun-Aug 2, Sep-Nov 3
    if lat is not None and lat < 0:
        index = (index + 2) % 4
    return index


class DomainEncoder(ModelMixin, ConfigMixin):
    """RGB chip → 128-d embedding + scene logits + log2(GSD) + season logits.

    Input: ``(N, 3, H, W)`` floats in [0, 1], any size (resized to ``image_size``, whose GSD the
    GSD head predicts: a chip of GSD g and side s is seen at g · s / image_size).
    """

    @register_to_config
    def __init__(
        self,
        scene_classes: tuple[str, ...] = ("naip-prairie",),
        widths: tuple[int, ...] = (24, 48, 96, 128),
        embed_dim: int = 128,
        image_size: int = 64,
        num_seasons: int = 4,
        mean: float = 0.4,
        std: float = 0.25,
        feature_scale: float = 1.0,
    ):
        super().__init__()
        stages, channels = [], 3
        for i, width in enumerate(widths):
            layers: list[nn.Module] = [
                nn.Conv2d(channels, width, 3, stride=2, padding=1),
                nn.GroupNorm(min(8, width), width),
                nn.SiLU(),
            ]
            if i > 0:  # full-resolution stage kept to one conv: it dominates the CPU cost
                layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
            stages.append(nn.Sequential(*layers))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.project = nn.Linear(channels, embed_dim)
        self.scene_head = nn.Linear(embed_dim, len(scene_classes))
        self.gsd_head = nn.Linear(embed_dim, 1)
        self.season_head = nn.Linear(embed_dim, num_seasons)

    @property
    def num_features(self) -> int:
        return int(self.config.embed_dim)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Resize to the trained size and normalise; the one input convention of every method."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) RGB in [0, 1], got shape {tuple(images.shape)}")
        size = int(self.config.image_size)
        images = images.float()
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return (images - self.config.mean) / self.config.std

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The output of each stage (used by the LPIPS-style domain distance)."""
        x = self.prepare(images)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.feature_maps(images)[-1].mean(dim=(2, 3)))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The embedding divided by ``feature_scale`` (its RMS on the training chips), so that
        domain FID/KID land on a readable scale whatever the training run."""
        return self.embed(images) / float(self.config.feature_scale)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        emb = self.embed(images)
        hidden = F.silu(emb)
        return {
            "embedding": emb,
            "scene_logits": self.scene_head(hidden),
            "log2_gsd": self.gsd_head(hidden).squeeze(-1),
            "season_logits": self.season_head(hidden),
        }

    @property
    def scene_classes(self) -> tuple[str, ...]:
        return tuple(self.config.scene_classes)

    def gsd_at_input(self, gsd: float, side: int) -> float:
        """The GSD the encoder sees for an image of ``side`` px with GSD ``gsd`` (after resizing)."""
        return gsd * side / int(self.config.image_size)


def shipped_encoder_path() -> Path:
    """Where the project's trained domain encoder lives inside the installed package."""
    return Path(str(resources.files("diffusionsat") / "assets" / "domain-encoder"))


def load_domain_encoder(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> DomainEncoder:
    """Load a domain encoder folder (``config.json`` + safetensors); ``None`` = the shipped one."""
    folder = Path(path) if path is not None else shipped_encoder_path()
    if not (folder / "config.json").is_file():
        where = "the shipped domain encoder" if path is None else "domain encoder"
        raise FileNotFoundError(
            f"{where} not found at {str(folder)!r} (expected config.json + diffusion_pytorch_model.safetensors; "
            "train one with scripts/train_domain_encoder.py)"
        )
    model = DomainEncoder.from_pretrained(folder, use_safetensors=True)
    return model.to(device).eval()


def gsd_error_log2(predicted_log2: torch.Tensor, gsd: torch.Tensor) -> torch.Tensor:
    """|log2(predicted GSD) − log2(requested GSD)|: 1.0 means off by a factor of two."""
    return (predicted_log2 - torch.log2(gsd)).abs()


WITHIN_FACTOR = 1.5
WITHIN_LOG2 = math.log2(WITHIN_FACTOR)
