"""Optional extras (``pip install 'diffusionsat[eval]'``) and the modules each one brings.

The base install runs generation, conditional tasks, ``info``, ``prepare-data`` and
``convert-checkpoint``; ``train``, ``evaluate`` and ``serve`` need their extra. Checking is done with
``find_spec`` (nothing is imported), so a command can refuse in one line before any work.
"""

from __future__ import annotations

import importlib.util

#: Extra → the top-level modules it installs (pyproject.toml ``[project.optional-dependencies]``).
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("tensorboard", "pyarrow"),
    "eval": ("torchmetrics", "scipy", "skimage"),
    "serve": ("fastapi", "uvicorn", "multipart"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that are not installed (empty when the extra is complete)."""
    return [m for m in EXTRAS[extra] if not _installed(m)]


def extra_for_module(name: str | None) -> str | None:
    """Which extra provides module ``name`` (``torchmetrics.image`` → ``eval``), if any."""
    root = (name or "").split(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if root in modules), None)


def install_hint(extra: str, module: str) -> str:
    return f"needs the '{extra}' extra: pip install 'diffusionsat[{extra}]' ({module} is not installed)"
