"""Small sampling functions for the conditional tasks, in the spirit of k-diffusion's ``sampling.py``.

A *denoiser* here is ``model(x, t, windows) -> noise prediction`` where ``windows`` lists the
``(top, bottom, left, right)`` parts of the full sample that ``x`` holds, concatenated along the
batch (``None`` = ``x`` is the whole sample), so a denoiser can crop its conditioning to match. Each task trick is one short function:

* :func:`tiled` — evaluate a large sample tile by tile with overlap and blend the predictions with
  smooth weights at every step (MultiDiffusion-style), so tiles agree and seams vanish;
* :func:`fused` — one estimate per conditioning input, combined at every step (SatDiffMoE-style
  multi-image super-resolution);
* :func:`inpaint_known` / :func:`composite_pixels` — keep the known region on the trajectory and
  return unmasked pixels exactly as given;
* :func:`sample` — the scheduler loop itself, with an optional per-step hook.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
import torch

Window = tuple[int, int, int, int]
Denoiser = Callable[[torch.Tensor, torch.Tensor, "list[Window] | None"], torch.Tensor]


def tile_windows(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> list[Window]:
    """Windows of ``tile``×``tile`` covering ``height``×``width`` with at least ``overlap`` shared.

    The last row/column of tiles is aligned to the far edge. Window origins are multiples of
    ``multiple`` (the UNet's downsampling factor) where the grid allows it.
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"tile={tile}, overlap={overlap}: need tile > 0 and 0 <= overlap < tile")

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        stride = max(multiple, (tile - overlap) // multiple * multiple)
        out = list(range(0, size - tile, stride))
        out.append(size - tile)
        return sorted(set(out))

    th, tw = min(tile, height), min(tile, width)
    return [(y, y + th, x, x + tw) for y in starts(height) for x in starts(width)]


def blend_weights(height: int, width: int, overlap: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(H, W) weights rising smoothly from the tile border over ``overlap`` pixels, never zero."""

    def ramp(size: int) -> torch.Tensor:
        pos = torch.arange(size, device=device, dtype=torch.float64)
        dist = torch.minimum(pos + 1, size - pos)  # 1 at the border
        if overlap <= 0:
            return torch.ones(size, device=device, dtype=torch.float64)
        w = torch.clamp(dist / (overlap + 1), max=1.0)
        return (torch.sin(w * torch.pi / 2) ** 2).clamp(min=1e-3)

    return (ramp(height)[:, None] * ramp(width)[None, :]).to(dtype)


def tiled(model: Denoiser, tile: int, overlap: int, multiple: int = 1, batch_tiles: int = 16) -> Denoiser:
    """A denoiser over the whole sample that calls ``model`` on overlapping tiles and blends them.

    Several tiles go through ``model`` in one batch (``batch_tiles``) to keep small models fast.
    """

    def run(x: torch.Tensor, t: torch.Tensor, windows: list[Window] | None = None) -> torch.Tensor:
        if windows is not None:
            raise ValueError("tiled denoisers cover the whole sample")
        batch, _, height, width = x.shape
        windows = tile_windows(height, width, tile, overlap, multiple)
        if len(windows) == 1:
            return model(x, t, None)
        out = None
        total = torch.zeros(height, width, device=x.device, dtype=torch.float32)
        for start in range(0, len(windows), batch_tiles):
            group = windows[start:start + batch_tiles]
            crops = torch.cat([x[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in group])
            preds = model(crops, t, group).split(batch)
            for (y0, y1, x0, x1), pred in zip(group, preds):
                weight = blend_weights(y1 - y0, x1 - x0, overlap, x.device)
                if out is None:
                    out = torch.zeros(batch, pred.shape[1], height, width, device=x.device, dtype=torch.float32)
                out[:, :, y0:y1, x0:x1] += pred.float() * weight
                total[y0:y1, x0:x1] += weight
        return (out / total).to(x.dtype)

    return run


def fused(models: Sequence[Denoiser], weights: Sequence[float] | None = None) -> Denoiser:
    """One estimate per model (e.g. per low-res date), averaged (or weighted) at every step."""
    if not models:
        raise ValueError("fused() needs at least one denoiser")
    w = [1.0 / len(models)] * len(models) if weights is None else [float(v) / sum(weights) for v in weights]

    def run(x: torch.Tensor, t: torch.Tensor, windows: list[Window] | None = None) -> torch.Tensor:
        return sum(wi * m(x, t, windows) for wi, m in zip(w, models))

    return run


def inpaint_known(
    latents: torch.Tensor,
    known: torch.Tensor,
    keep: torch.Tensor,
    noise: torch.Tensor,
    scheduler,
    next_timestep: torch.Tensor | None,
) -> torch.Tensor:
    """Replace the known region (``keep`` = 1) by the known sample noised to ``next_timestep``.

    After the last step (``next_timestep`` is ``None``) the clean known sample is used.
    """
    target = known if next_timestep is None else scheduler.add_noise(known, noise, next_timestep.reshape(1))
    return keep * target.to(latents.dtype) + (1 - keep) * latents


def composite_pixels(generated, original, mask):
    """``generated`` where ``mask`` (1 = fill), ``original`` elsewhere, bit-exactly.

    Works on numpy arrays or tensors of the same layout; ``mask`` broadcasts over channels.
    """
    if isinstance(generated, torch.Tensor):
        return torch.where(mask.to(torch.bool), generated.to(original.dtype), original)
    return np.where(np.asarray(mask).astype(bool), np.asarray(generated).astype(np.asarray(original).dtype), original)


def sample(
    scheduler,
    model: Denoiser,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    generator=None,
    after_step: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    progress=None,
) -> torch.Tensor:
    """The scheduler loop: ``latents ← step(model(scale(latents), t))`` for each timestep.

    ``after_step(i, t, latents)`` may rewrite the latents (in-painting keeps the known region).
    """
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for i, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        noise = model(model_input, t, None)
        latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        if after_step is not None:
            latents = after_step(i, t, latents)
        if callback is not None:
            callback(i, int(t), latents)
        if progress is not None:
            progress.update()
    return latents
