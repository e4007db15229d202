"""DiffusionSat: a generative foundation model for satellite imagery.

Public API::

    from diffusionsat import SatMetadata, SatUNet, DiffusionSatPipeline
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .metadata import SatMetadata
from .models import SatUNet
from .pipelines import DiffusionSatPipeline

try:
    __version__ = version("diffusionsat")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+local"

__all__ = ["SatMetadata", "SatUNet", "DiffusionSatPipeline", "__version__"]
