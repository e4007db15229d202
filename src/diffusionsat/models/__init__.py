"""Models: the metadata-conditioned UNet, small text encoders, presets."""

from .controlnet import SatControlNet
from .controlnet_3d import SatControlNet3D
from .sat_unet import SatUNet

__all__ = ["SatUNet", "SatControlNet", "SatControlNet3D"]
