"""DiffusionSat: a generative foundation model for satellite imagery.

Public API::

    from diffusionsat import SatMetadata, SatUNet, DiffusionSatPipeline
    from diffusionsat import SatControlNet, SatControlNet3D, DiffusionSatControlNetPipeline

Names are imported on first use (as diffusers does), so ``import diffusionsat`` and the command
line's ``--help`` do not pay for torch and diffusers.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("diffusionsat")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+local"

_LAZY = {
    "SatMetadata": ".metadata",
    "SatUNet": ".models",
    "SatControlNet": ".models",
    "SatControlNet3D": ".models",
    "DiffusionSatPipeline": ".pipelines",
    "DiffusionSatControlNetPipeline": ".pipelines",
}

if TYPE_CHECKING:
    from .metadata import SatMetadata
    from .models import SatControlNet, SatControlNet3D, SatUNet
    from .pipelines import DiffusionSatControlNetPipeline, DiffusionSatPipeline


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "SatMetadata",
    "SatUNet",
    "SatControlNet",
    "SatControlNet3D",
    "DiffusionSatPipeline",
    "DiffusionSatControlNetPipeline",
    "__version__",
]
