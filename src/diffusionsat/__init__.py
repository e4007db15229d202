"""DiffusionSat: a generative foundation model for satellite imagery.

Public API::

    from diffusionsat import SatMetadata, SatUNet, DiffusionSatPipeline
    from diffusionsat import SatControlNet, SatControlNet3D, DiffusionSatControlNetPipeline
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .metadata import SatMetadata
from .models import SatControlNet, SatControlNet3D, SatUNet
from .pipelines import DiffusionSatControlNetPipeline, DiffusionSatPipeline

try:
    __version__ = version("diffusionsat")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+local"

__all__ = [
    "SatMetadata",
    "SatUNet",
    "SatControlNet",
    "SatControlNet3D",
    "DiffusionSatPipeline",
    "DiffusionSatControlNetPipeline",
    "__version__",
]
