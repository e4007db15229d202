"""Trivial and classical generators that put a model's numbers on a scale readers can judge.

Each is a short pure function of the reference images (and the task's inputs), like a sampler:
no model, no state. Together with real-vs-real halves they bracket what a useful model must beat.
The classical baselines of the conditional tasks (issue #15): bicubic and Lanczos-3 upsampling
(super-resolution), the latest frame and the per-pixel mean of the frames (temporal), scikit-image's
biharmonic in-painting and a mean-colour fill (in-painting).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image
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


def _low_res(images: torch.Tensor, factor: int, low_res: torch.Tensor | None) -> torch.Tensor:
    size = tuple(images.shape[-2:])
    if low_res is None:
        low_res = resize(images, (max(1, size[0] // factor), max(1, size[1] // factor)))
    return low_res


def bicubic_upsample(images: torch.Tensor, factor: int = SUPERRES_FACTOR, low_res: torch.Tensor | None = None,
                     size: tuple[int, int] | None = None) -> torch.Tensor:
    """Super-resolution baseline: bicubic upsampling of the low-res input (or of the reference ↓ factor)
    to ``size`` (default: the reference's)."""
    low_res = _low_res(images, factor, low_res)
    size = tuple(size or images.shape[-2:])
    return F.interpolate(low_res, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def lanczos_upsample(images: torch.Tensor, factor: int = SUPERRES_FACTOR, low_res: torch.Tensor | None = None,
                     size: tuple[int, int] | None = None) -> torch.Tensor:
    """Super-resolution baseline: Lanczos-3 upsampling of the low-res input (or of the reference ↓ factor)
    to ``size`` (default: the reference's).

    PIL's ``Image.LANCZOS`` on each channel as a 32-bit float image (no 8-bit rounding), clipped to [0, 1].
    """
    low_res = _low_res(images, factor, low_res)
    h, w = (int(v) for v in (size or images.shape[-2:]))
    low = low_res.detach().cpu().float().numpy()
    out = np.empty((*low.shape[:2], h, w), dtype=np.float32)
    for i in range(low.shape[0]):
        for c in range(low.shape[1]):
            band = PIL.Image.fromarray(np.ascontiguousarray(low[i, c]))  # mode "F"
            out[i, c] = np.asarray(band.resize((w, h), PIL.Image.LANCZOS), dtype=np.float32)
    return torch.from_numpy(out).clamp(0, 1)


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


def biharmonic_fill(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """In-painting baseline: scikit-image's biharmonic in-painting of the masked pixels (mask = 1).

    ``skimage.restoration.inpaint_biharmonic`` per image (channels last, ``channel_axis=-1``); the
    unmasked pixels are returned exactly, the filled ones clipped to [0, 1]. An image whose mask
    covers every pixel (nothing to extrapolate from) gets :func:`mean_fill`'s answer.
    """
    from skimage.restoration import inpaint_biharmonic

    out = mean_fill(images, mask)
    for i in range(images.shape[0]):
        hole = mask[i, 0].detach().cpu().numpy() > 0.5
        if hole.all() or not hole.any():
            continue
        image = images[i].detach().cpu().double().permute(1, 2, 0).numpy()
        filled = inpaint_biharmonic(image, hole, channel_axis=-1).transpose(2, 0, 1)
        out[i] = torch.from_numpy(np.ascontiguousarray(filled)).to(images.dtype).clamp(0, 1)
    keep = 1 - mask
    return images * keep + out * mask


def latest_frame(latest: torch.Tensor) -> torch.Tensor:
    """Temporal baseline: repeat the latest conditioning frame (predicts that nothing changed)."""
    return latest.clamp(0, 1)


def mean_of_frames(frames: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Temporal baseline: the per-pixel mean of the conditioning frames (all of one shape, (…, C, H, W)).

    A tensor is read as (T, …): the mean is over its first dimension.
    """
    if len(frames) == 0:
        raise ValueError("mean_of_frames: no frames")
    stack = frames if isinstance(frames, torch.Tensor) else torch.stack(list(frames))
    return stack.float().mean(dim=0).clamp(0, 1)
