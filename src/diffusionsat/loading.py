"""Finding and loading models: a folder path, a hub id, or the embedded default model."""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

import torch

DEFAULT_MODEL_NAME = "default-model"
#: ``--model default`` names the embedded model explicitly (e.g. in documented evaluation commands).
DEFAULT_ALIAS = "default"


class ModelNotFoundError(FileNotFoundError):
    """The model folder does not exist or is not a diffusers pipeline folder."""


def default_model_path() -> Path:
    """Where the embedded default model lives inside the installed package."""
    return Path(str(resources.files("diffusionsat") / "assets" / DEFAULT_MODEL_NAME))


def has_default_model() -> bool:
    return (default_model_path() / "model_index.json").is_file()


def resolve_model(model: str | os.PathLike | None) -> str:
    """Validate a ``--model`` value early (before any heavy loading) and return it as a string.

    ``None`` (or ``"default"`` when no such folder exists) means the embedded default model. A hub
    id (``org/name``) is passed through to ``from_pretrained`` (it works where the hub or a local
    cache is reachable).
    """
    if model is not None and str(model) == DEFAULT_ALIAS and not Path(DEFAULT_ALIAS).exists():
        model = None
    if model is None:
        if not has_default_model():
            raise ModelNotFoundError(
                f"no embedded default model in {default_model_path()}; pass --model PATH to a model folder"
            )
        return str(default_model_path())
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"model {text!r} is a file; expected a folder with model_index.json")
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(f"model folder {text!r} has no model_index.json (not a saved pipeline)")
        return str(path)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ModelNotFoundError(f"model folder {text!r} does not exist")
    return text


def model_version(model_path: str | os.PathLike) -> str | None:
    """A short content hash of the UNet weights: identifies exactly which weights made an image."""
    unet = Path(model_path) / "unet"
    files = sorted(unet.glob("*.safetensors")) if unet.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def read_model_card(model_path: str | os.PathLike) -> str | None:
    card = Path(model_path) / "MODEL_CARD.md"
    return card.read_text(encoding="utf-8") if card.is_file() else None


def load_pipeline(model: str | os.PathLike | None = None, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a :class:`DiffusionSatPipeline` (default model when ``model`` is ``None``)."""
    from .pipelines import DiffusionSatPipeline
    from .validation import check_weights

    location = resolve_model(model)
    check_weights(location)  # truncated, corrupt or pickled weights are the user's error (exit 2), not ours
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    pipe = DiffusionSatPipeline.from_pretrained(location, **kwargs)
    return pipe.to(device)
