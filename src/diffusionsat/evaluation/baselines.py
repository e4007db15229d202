"""Trivial generators that put a model's numbers on a scale readers can judge.

Each is a short pure function of the reference images (and the task's inputs), like a sampler:
no model, no state. Together with real-vs-real halves they bracket what a useful model must beat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dataset import resize

BLUR_SIGMA = 2.0
NOISE_SIGMA = 0.1
SUPERRES_FACTOR = 4


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflect padding."""
    if sigma <= 0:
        return images
    radius = max(1, int(3 * sigma))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def add_noise(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Additive Gaussian noise of standard deviation ``sigma`` (reproducible), clipped to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=gen)).clamp(0, 1)


def blur_noise(images: torch.Tensor, sigma_blur: float = BLUR_SIGMA, sigma_noise: float = NOISE_SIGMA, seed: int = 0) -> torch.Tensor:
    """The generic trivial generator: the real image blurred, then noised."""
    return add_noise(gaussian_blur(images, sigma_blur), sigma_noise, seed=seed)


def bicubic_upsample(images: torch.Tensor, factor: int = SUPERRES_FACTOR, low_res: torch.Tensor | None = None) -> torch.Tensor:
    """Super-resolution baseline: bicubic upsampling of the low-res input (or of the reference ↓ factor)."""
    size = tuple(images.shape[-2:])
    if low_res is None:
        low_res = resize(images, (max(1, size[0] // factor), max(1, size[1] // factor)))
    return F.interpolate(low_res, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def centre_mask(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) mask of the central square of half the side: the default hole to fill."""
    n, _, h, w = images.shape
    mask = torch.zeros(n, 1, h, w)
    mask[:, :, h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2] = 1
    return mask


def mean_fill(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """In-painting baseline: masked pixels (mask = 1) take the mean colour of the unmasked ones."""
    keep = 1 - mask
    mean = (images * keep).sum(dim=(2, 3), keepdim=True) / keep.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    return images * keep + mean * mask


def persistence(previous: torch.Tensor) -> torch.Tensor:
    """Temporal baseline: predict that nothing changed since the last conditioning frame."""
    return previous.clamp(0, 1)
