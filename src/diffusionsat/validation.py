"""Checks of user-supplied things that would otherwise fail deep inside a library as an internal error.

Each raises ``ValueError`` (the CLI's exit code 2, the server's 422) with one line naming the
file or field and what is wrong: a ``--device`` this machine does not have, model weights that are
truncated, corrupt or pickled. """

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

#: Weight files that are pickles: loading them can run code, so a model folder must not need them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: A safetensors header above this is not a real model header (and would be read into memory).
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


#: The smallest input side (px) of the conditional tasks, in the CLI and the server alike: smaller
#: images are refused with :func:`too_small_problem`'s message, never padded up.
MIN_INPUT_SIDE = 8


def too_small_problem(width: int, height: int, what: str = "input") -> str | None:
    """The one-line problem of an input under :data:`MIN_INPUT_SIDE` px on a side, else ``None``."""
    if min(width, height) >= MIN_INPUT_SIDE:
        return None
    return f"{what} is {width}x{height} pixels; at least {MIN_INPUT_SIDE}x{MIN_INPUT_SIDE} needed"


class WeightsError(ValueError):
    """A model's weight file is missing, truncated, corrupt or a pickle."""


def check_device(text: str) -> str:
    """``text`` if it names a torch device this machine has (cpu, cuda[:N], mps), else ``ValueError``."""
    if text == "cpu":
        return text  # no torch import for the common case
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={text!r}: unknown device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={text!r}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={text!r}: no such GPU; allowed cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device={text!r}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"device={text!r}: not supported; use cpu, cuda, cuda:N or mps")
    return text


def check_safetensors(path: str | os.PathLike) -> None:
    """Read only the header of a safetensors file and check that the file holds all it declares."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise WeightsError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise WeightsError(f"{path}: not a safetensors file, or truncated (header of {length} bytes in a "
                               f"{size}-byte file)")
        try:
            header = json.loads(fh.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WeightsError(f"{path}: corrupt safetensors file (its header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: corrupt safetensors file (its header is not a JSON object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise WeightsError(f"{path}: corrupt safetensors file (tensor {name!r} has no valid data_offsets)")
        end = max(end, offsets[1])
    if 8 + length + end > size:
        raise WeightsError(f"{path}: truncated safetensors file ({size} bytes; its header declares {8 + length + end})")


def check_weights(folder: str | os.PathLike) -> None:
    """Check every component of a model folder (``folder`` and its sub-folders with a ``config.json``).

    Each component with weights must have safetensors (a pickle alone is refused: it could run
    code), and each safetensors file must be complete. Only headers are read.
    """
    root = Path(folder)
    if not root.is_dir():
        return  # a hub id: nothing local to check
    components = [root] + sorted(p for p in root.iterdir() if p.is_dir() and (p / "config.json").is_file())
    for component in components:
        files = [p for p in component.iterdir() if p.is_file()]
        tensors = [p for p in files if p.name.endswith(".safetensors")]
        pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES and not p.name.startswith("training_args")]
        if pickles and not tensors:
            raise WeightsError(f"{pickles[0]}: pickle weights are not loaded (they can run code); "
                               "save the model as safetensors")
        for file in tensors:
            check_safetensors(file)

