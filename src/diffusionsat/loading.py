"""Finding and loading models: a folder path, a hub id, an original run folder, or the embedded default model.

Importing this module is cheap (no torch/diffusers) so the CLI can validate ``--model`` before
loading anything. Layouts accepted (SPEC §2, and the original DiffusionSat releases):

* a diffusers pipeline folder (``model_index.json`` + one subfolder per component), including
  entries diffusers cannot import such as ``"unet": [null, "SatUNet"]`` written by the original code;
* an original *run folder*: pipeline components at the root and the trained UNet in
  ``checkpoint-<N>/unet_ema`` or ``checkpoint-<N>/unet`` (latest N, EMA preferred), or one
  ``checkpoint-<N>`` folder of it to choose N;
* a hub id (``org/name``) resolved through huggingface_hub's cache (``HF_HUB_OFFLINE=1`` works).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "default-model"
#: ``--model default`` names the embedded model explicitly (e.g. in documented evaluation commands).
DEFAULT_ALIAS = "default"
#: Subfolders of an original run's ``checkpoint-<N>`` holding the UNet, in order of preference.
CHECKPOINT_UNETS = ("unet_ema", "unet")
_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")


class ModelNotFoundError(FileNotFoundError):
    """The model folder does not exist or is not a diffusers pipeline folder."""


def default_model_path() -> Path:
    """Where the embedded default model lives inside the installed package."""
    return Path(str(resources.files("diffusionsat") / "assets" / DEFAULT_MODEL_NAME))


def has_default_model() -> bool:
    return (default_model_path() / "model_index.json").is_file()


def looks_like_hub_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).exists()


# --- run folders ------------------------------------------------------------------------------------------
def checkpoint_unet(folder: Path) -> Path | None:
    """The UNet folder of one ``checkpoint-<N>`` (EMA preferred), or ``None`` when it holds none."""
    for name in CHECKPOINT_UNETS:
        if (folder / name / "config.json").is_file():
            return folder / name
    return None


def run_checkpoints(folder: str | os.PathLike) -> dict[int, Path]:
    """``{N: checkpoint-<N> folder}`` of an original run folder, only those holding a UNet."""
    found = {}
    root = Path(folder)
    if root.is_dir():
        for child in root.iterdir():
            match = _CHECKPOINT_RE.fullmatch(child.name)
            if match and child.is_dir() and checkpoint_unet(child) is not None:
                found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def _is_metadata_unet(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("_class_name") == "SatUNet" or bool(config.get("use_metadata"))


@dataclass(frozen=True)
class ModelLayout:
    """Where the parts of a local model live: ``root`` has ``model_index.json``, ``unet`` the UNet."""

    root: Path
    unet: Path
    #: ``checkpoint-<N>/unet_ema`` (relative to ``root``) when the UNet comes from a run checkpoint.
    checkpoint: str | None = None

    @property
    def index(self) -> dict[str, Any]:
        return json.loads((self.root / "model_index.json").read_text(encoding="utf-8"))


def model_layout(location: str | os.PathLike, checkpoint: int | None = None) -> ModelLayout:
    """Where the UNet of a local model folder, run folder or ``checkpoint-<N>`` folder is.

    A run folder uses its latest checkpoint (``checkpoint`` picks N) unless its root ``unet/`` is
    already a metadata UNet (a finished pipeline) and no N is asked for.
    """
    path = Path(location)
    match = _CHECKPOINT_RE.fullmatch(path.name)
    if match and not (path / "model_index.json").is_file() and (path.parent / "model_index.json").is_file():
        if checkpoint is not None and int(match.group(1)) != checkpoint:
            raise ValueError(f"--checkpoint {checkpoint} contradicts the checkpoint folder {path.name!r}")
        path, checkpoint = path.parent, int(match.group(1))
    if not (path / "model_index.json").is_file():
        raise ModelNotFoundError(f"model folder {str(location)!r} has no model_index.json (not a saved pipeline)")
    checkpoints = run_checkpoints(path)
    if checkpoint is not None:
        if checkpoint not in checkpoints:
            have = ", ".join(str(n) for n in checkpoints) or "none"
            raise ModelNotFoundError(f"{str(path)!r} has no checkpoint-{checkpoint} with a unet (checkpoints: {have})")
        chosen = checkpoints[checkpoint]
    elif checkpoints and not _is_metadata_unet(path / "unet"):
        chosen = checkpoints[max(checkpoints)]
    else:
        return ModelLayout(path, path / "unet")
    unet = checkpoint_unet(chosen)
    assert unet is not None  # run_checkpoints keeps only checkpoints with a UNet
    return ModelLayout(path, unet, f"{chosen.name}/{unet.name}")


# --- validation and hub ids ----------------------------------------------------------------------------
def resolve_model(model: str | os.PathLike | None, checkpoint: int | None = None) -> str:
    """Validate a ``--model`` value early (before any heavy loading) and return it as a string.

    ``None`` (or ``"default"`` when no such folder exists) means the embedded default model. A run
    folder with ``checkpoint`` becomes its ``checkpoint-<N>`` folder. A hub id (``org/name``) is
    passed through to ``from_pretrained`` (it works where the hub or a local cache is reachable).
    """
    if model is not None and str(model) == DEFAULT_ALIAS and not Path(DEFAULT_ALIAS).exists():
        model = None
    if model is None:
        if not has_default_model():
            raise ModelNotFoundError(
                f"no embedded default model in {default_model_path()}; pass --model PATH to a model folder"
            )
        if checkpoint is not None:
            raise ValueError("--checkpoint needs --model RUN_FOLDER (the embedded model has no checkpoints)")
        return str(default_model_path())
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"model {text!r} is a file; expected a folder with model_index.json")
        layout = model_layout(path, checkpoint)
        if layout.checkpoint is not None and checkpoint is not None:
            return str(layout.root / layout.checkpoint.split("/")[0])
        return str(path)
    if not looks_like_hub_id(text):
        raise ModelNotFoundError(f"model folder {text!r} does not exist")
    if checkpoint is not None:
        raise ValueError("--checkpoint applies to local run folders, not hub ids")
    return text


#: ``from_pretrained`` keyword arguments that concern the hub download, passed on to it.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "token")


def local_model_folder(location: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """A local folder for ``location``: itself, or a hub id's snapshot in huggingface_hub's cache.

    Goes through diffusers' ``DiffusionPipeline.download`` (only the pipeline's components are
    fetched; ``HF_HUB_OFFLINE=1`` / ``local_files_only=True`` read the cache only).
    """
    path = Path(location).expanduser()
    if path.exists() or not looks_like_hub_id(str(location)):
        return path
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        hub_kwargs.setdefault("local_files_only", True)
    try:
        return Path(DiffusionPipeline.download(str(location), **hub_kwargs))
    except OSError as err:  # not cached while offline, no such repository, no network, ...
        raise ModelNotFoundError(f"model {str(location)!r}: not a local folder and not loadable from the hub "
                                 f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err


# --- what we record about a model -----------------------------------------------------------------------
def model_version(model_path: str | os.PathLike) -> str | None:
    """A short content hash of the UNet weights: identifies exactly which weights made an image."""
    try:
        unet = model_layout(model_path).unet
    except (OSError, ValueError):
        unet = Path(model_path) / "unet"
    files = sorted(unet.glob("*.safetensors")) or sorted(unet.glob("*.bin")) if unet.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def describe_model(model_path: str | os.PathLike) -> str:
    """``path`` or ``path (checkpoint-N/unet_ema)``: which weights a location loads, for users to see."""
    try:
        layout = model_layout(model_path)
    except (OSError, ValueError):
        return str(model_path)
    return f"{layout.root} ({layout.checkpoint})" if layout.checkpoint else str(layout.root)


def read_model_card(model_path: str | os.PathLike) -> str | None:
    card = Path(model_path) / "MODEL_CARD.md"
    return card.read_text(encoding="utf-8") if card.is_file() else None


def load_pipeline(model: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None, checkpoint: int | None = None):
    """Load a :class:`DiffusionSatPipeline` (default model when ``model`` is ``None``)."""
    from .pipelines import DiffusionSatPipeline
    from .validation import check_weights

    location = resolve_model(model, checkpoint)
    check_weights(location)  # truncated, corrupt or pickled weights are the user's error (exit 2), not ours
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    pipe = DiffusionSatPipeline.from_pretrained(location, **kwargs)
    return pipe.to(device)
