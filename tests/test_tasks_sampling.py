"""The task sampling functions: tiles, blending, fusion, in-painting compositing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from diffusionsat.pipelines import sampling


def test_tile_windows_cover_the_sample_with_the_requested_overlap():
    windows = sampling.tile_windows(50, 37, tile=16, overlap=4, multiple=2)
    covered = np.zeros((50, 37), dtype=int)
    for y0, y1, x0, x1 in windows:
        assert (y1 - y0, x1 - x0) == (16, 16)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    starts = sorted({x0 for _, _, x0, _ in windows})
    assert all(b - a <= 12 for a, b in zip(starts, starts[1:]))  # >= 4 px shared
    assert sampling.tile_windows(10, 12, tile=16, overlap=4) == [(0, 10, 0, 12)]
    with pytest.raises(ValueError, match="overlap"):
        sampling.tile_windows(50, 50, tile=16, overlap=16)


def test_blending_is_exact_for_a_local_model():
    """A pixel-wise model gives the same result tiled as untiled: the weights normalise."""
    model = lambda x, t, windows: torch.tanh(3 * x) + 0.1 * t  # noqa: E731
    x = torch.randn(2, 3, 40, 52)
    whole = model(x, torch.tensor(1.0), None)
    tiled = sampling.tiled(model, tile=16, overlap=6, batch_tiles=5)(x, torch.tensor(1.0))
    torch.testing.assert_close(tiled, whole)


def seam_ratio(image: np.ndarray, boundaries: list[int]) -> float:
    """Mean jump across the given columns relative to the median column-to-column jump."""
    jumps = np.abs(np.diff(image.astype(np.float64), axis=1)).mean(axis=tuple(i for i in range(image.ndim) if i != 1))
    return float(jumps[[b - 1 for b in boundaries]].mean() / np.median(jumps))


def test_blended_tiles_have_no_seams_where_hard_tiles_do():
    """A non-local model (it subtracts the tile mean) makes seams between hard tiles; blending removes them."""

    def model(x, t, windows):
        return x - x.mean(dim=(-2, -1), keepdim=True)

    ramp = torch.linspace(0, 4, 96).repeat(1, 1, 32, 1)  # smooth left-to-right ramp
    hard = sampling.tiled(model, tile=32, overlap=0)(ramp, torch.tensor(0)).numpy()[0, 0]
    soft = sampling.tiled(model, tile=32, overlap=16)(ramp, torch.tensor(0)).numpy()[0, 0]
    assert seam_ratio(hard, [32, 64]) > 10
    windows = sampling.tile_windows(32, 96, 32, 16)
    edges = sorted({x0 for _, _, x0, _ in windows if x0} | {x1 for _, _, _, x1 in windows if x1 < 96})
    assert seam_ratio(soft, edges) < 2.0


def test_fused_averages_estimates():
    models = [lambda x, t, w, k=k: x * 0 + k for k in (1.0, 2.0, 6.0)]
    x = torch.zeros(1, 1, 4, 4)
    assert sampling.fused(models)(x, 0).unique().item() == pytest.approx(3.0)
    assert sampling.fused(models, weights=[1, 0, 1])(x, 0).unique().item() == pytest.approx(3.5)
    with pytest.raises(ValueError):
        sampling.fused([])


def test_inpaint_known_region_follows_the_noised_original_and_ends_clean():
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(4)
    known = torch.rand(1, 3, 8, 8)
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., :4] = 1
    noise = torch.randn(1, 3, 8, 8)
    lat = torch.randn(1, 3, 8, 8)
    mid = sampling.inpaint_known(lat, known, keep, noise, scheduler, scheduler.timesteps[1])
    expected = scheduler.add_noise(known, noise, scheduler.timesteps[1].reshape(1))
    torch.testing.assert_close(mid[..., :4], expected[..., :4])
    torch.testing.assert_close(mid[..., 4:], lat[..., 4:])
    end = sampling.inpaint_known(lat, known, keep, noise, scheduler, None)
    assert torch.equal(end[..., :4], known[..., :4])


def test_composite_pixels_is_bit_exact():
    original = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    generated = np.full((10, 12, 3), 7, dtype=np.uint8)
    mask = np.zeros((10, 12, 1), dtype=bool)
    mask[2:5, 3:9] = True
    out = sampling.composite_pixels(generated, original, mask)
    assert np.array_equal(out[~mask[..., 0]], original[~mask[..., 0]])
    assert np.all(out[mask[..., 0]] == 7)
