"""Models: the metadata-conditioned UNet, small text encoders, presets."""

from .sat_unet import SatUNet

__all__ = ["SatUNet"]
