"""Pretrained feature networks from local files only: nothing here ever downloads.

* Inception (FID/KID/IS): a TorchScript file. Two conventions are recognised from its signature:
  the StyleGAN / clean-fid ``inception-2015-12-05.pt`` (``forward(img, return_features=...)``, uint8
  images, resized inside; features 2048-d, otherwise 1008 class probabilities) or a plain module
  ``forward(x)`` taking (N, 3, 299, 299) in [0, 1] and returning features, or ``(features, logits)``.
* CLIP (CLIP score): a local transformers CLIP folder (``config.json``, weights, tokenizer and
  processor files), loaded with ``local_files_only=True``.
* LPIPS: a TorchScript backbone ``forward(x) -> list of feature maps`` on ImageNet-scaled input (as
  in the original LPIPS), optionally the learned linear weights (``lin{k}.model.1.weight`` as in the
  original ``.pth`` files, or the same keys in safetensors); without them every channel weighs 1.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class PretrainedWeightsMissing(FileNotFoundError):
    """A pretrained network was asked for but its local file is absent; never triggers a download."""


def _require_file(path: str | os.PathLike | None, what: str, option: str) -> Path:
    if path is None:
        raise PretrainedWeightsMissing(
            f"{what}: no weights given (pass {option} PATH to a local file); nothing is downloaded"
        )
    file = Path(path).expanduser()
    if not file.exists():
        raise PretrainedWeightsMissing(f"{what}: {str(file)!r} does not exist ({option}); nothing is downloaded")
    return file


def _load_torchscript(file: Path, what: str) -> torch.jit.ScriptModule:
    try:
        return torch.jit.load(str(file), map_location="cpu").eval()
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{what}: {str(file)!r} is not a TorchScript archive ({str(err).splitlines()[0]})") from None


class InceptionFeatures(nn.Module):
    """Inception-style features and class logits from a local TorchScript network."""

    def __init__(self, path: str | os.PathLike | None, input_size: int = 299):
        super().__init__()
        file = _require_file(path, "Inception network for FID/KID/IS", "--inception")
        self.net = _load_torchscript(file, "Inception network")
        names = [a.name for a in self.net.forward.schema.arguments]
        self.stylegan = "return_features" in names
        # StyleGAN's Inception Score drops the output bias; do the same when the network offers it.
        self.logit_kwargs = {"no_output_bias": True} if "no_output_bias" in names else {}
        self.input_size = input_size
        self.path = str(file)

    @staticmethod
    def _uint8(images: torch.Tensor) -> torch.Tensor:
        """StyleGAN's detector takes uint8 NCHW images, as its dataset loader gives them."""
        return (images.float().clamp(0, 1) * 255.0).round().to(torch.uint8)

    def _plain(self, images: torch.Tensor):
        x = F.interpolate(images.float(), size=(self.input_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
        return self.net(x)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] → (N, D) pool features."""
        if self.stylegan:
            return self.net(self._uint8(images), return_features=True).float()
        out = self._plain(images)
        return (out[0] if isinstance(out, (tuple, list)) else out).float()

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor | None:
        """Class logits for IS, or ``None`` when the network gives none."""
        if self.stylegan:
            probs = self.net(self._uint8(images), return_features=False, **self.logit_kwargs).float()
            return probs.clamp_min(1e-12).log()  # softmax(log p) = p, as torchmetrics' IS expects logits
        out = self._plain(images)
        return out[1].float() if isinstance(out, (tuple, list)) and len(out) > 1 else None


def load_clip(path: str | os.PathLike | None):
    """(CLIPModel, CLIPProcessor) from a local folder, strictly offline."""
    from transformers import CLIPModel, CLIPProcessor

    folder = _require_file(path, "CLIP model for CLIP score", "--clip")
    if not (folder.is_dir() and (folder / "config.json").is_file()):
        raise PretrainedWeightsMissing(f"CLIP model: {str(folder)!r} is not a transformers model folder (no config.json)")
    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise PretrainedWeightsMissing(f"CLIP model: cannot load {str(folder)!r}: {str(err).splitlines()[0]}") from None
    return model, processor


#: ImageNet scaling of the original LPIPS (``ScalingLayer``), for input in [-1, 1].
LPIPS_SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
LPIPS_SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


class LPIPSDistance(nn.Module):
    """The LPIPS formula over any backbone: Σ_layers mean_hw Σ_c w_c (f̂ₓ − f̂ᵧ)², f̂ unit-normalised over channels.

    ``backbone`` maps images in [0, 1] to a list of (N, C_l, H_l, W_l) feature maps. ``weights``: one
    non-negative (C_l,) tensor per layer (the learned LPIPS linear layers) or ``None`` for all ones
    (the original's ``lpips=False`` variant).
    """

    def __init__(self, backbone, weights: list[torch.Tensor] | None = None, name: str = "lpips"):
        super().__init__()
        self.backbone = backbone
        self.weights = weights
        self.name = name

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image distances (N,) between two batches in [0, 1]."""
        fx, fy = self.backbone(x.float()), self.backbone(y.float())
        if self.weights is not None and len(self.weights) != len(fx):
            raise ValueError(f"{self.name}: {len(self.weights)} weight layers for {len(fx)} backbone layers")
        total = torch.zeros(x.shape[0])
        for i, (a, b) in enumerate(zip(fx, fy)):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            diff = (a - b).pow(2)
            if self.weights is not None:
                diff = diff * self.weights[i].view(1, -1, 1, 1).to(diff)
            total += diff.sum(dim=1).mean(dim=(1, 2)).cpu()
        return total


def _lpips_weights(file: Path) -> list[torch.Tensor]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    keys = sorted((k for k in state if k.startswith("lin") and k.endswith("weight")), key=lambda k: int(k[3:].split(".")[0]))
    if not keys:
        raise ValueError(f"LPIPS weights {str(file)!r}: no 'lin<k>...weight' tensors found")
    return [state[k].flatten().float() for k in keys]


def load_lpips(backbone_path: str | os.PathLike | None, weights_path: str | os.PathLike | None = None) -> LPIPSDistance:
    """Standard LPIPS from a local TorchScript backbone (+ optional learned linear weights)."""
    file = _require_file(backbone_path, "LPIPS backbone", "--lpips-backbone")
    net = _load_torchscript(file, "LPIPS backbone")

    def backbone(images: torch.Tensor) -> list[torch.Tensor]:
        x = (images * 2.0 - 1.0 - LPIPS_SHIFT) / LPIPS_SCALE
        return list(net(x))

    weights = None
    if weights_path is not None:
        weights = _lpips_weights(_require_file(weights_path, "LPIPS linear weights", "--lpips-weights"))
    return LPIPSDistance(backbone, weights, name="lpips")
