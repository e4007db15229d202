"""Super-resolution data consistency: the result's block average reproduces the low-res input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F

from conftest import TINY_CAPTIONS
from diffusionsat.cli.main import main
from diffusionsat.conditional import back_project
from diffusionsat.models.controlnet import SatControlNet
from diffusionsat.models.presets import build_pipeline
from test_controlnet import perturb


def block_mean(image: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, C) → (C, H/scale, W/scale) block average."""
    return F.avg_pool2d(torch.from_numpy(np.moveaxis(image, -1, 0))[None], scale)[0].numpy()


def test_back_projection_pulls_the_block_average_onto_the_input():
    rng = np.random.default_rng(0)
    low = rng.uniform(0.2, 0.8, (3, 8, 8)).astype(np.float32)
    image = rng.uniform(0.0, 1.0, (32, 32, 3)).astype(np.float32)  # unrelated to the input
    before = np.abs(block_mean(image, 4) - low).mean()
    out = back_project(image, low, np.ones((8, 8), bool), 4)
    after = np.abs(block_mean(out, 4) - low).mean()
    assert after < 0.01 < before / 10
    # the detail inside each block is the model's, not a flat upsample of the input
    detail = out - np.moveaxis(F.interpolate(torch.from_numpy(low)[None], scale_factor=4, mode="bicubic",
                                             align_corners=False)[0].numpy(), 0, -1)
    assert detail.std() > 0.1


def test_back_projection_keeps_a_consistent_image_and_ignores_nodata():
    rng = np.random.default_rng(1)
    image = rng.uniform(0.1, 0.9, (16, 16, 3)).astype(np.float32)
    low = block_mean(image, 2)
    assert np.allclose(back_project(image, low, np.ones((8, 8), bool), 2), image, atol=1e-5)
    wrong = low.copy()
    wrong[:, :, :4] = 0.0  # nodata written as 0 on the left half
    valid = np.ones((8, 8), bool)
    valid[:, :4] = False
    out = back_project(image, wrong, valid, 2)
    assert np.abs(out[:, :4] - image[:, :4]).max() < 0.05  # barely touched next to nodata …
    assert np.abs(block_mean(out, 2) - wrong)[:, :, 6:].max() < 0.02  # … and consistent where valid


@pytest.fixture(scope="module")
def rgb_superres_model(tmp_path_factory):
    """The tiny base model with a (perturbed) RGB super-resolution ControlNet."""
    root = tmp_path_factory.mktemp("sr-rgb")
    base = build_pipeline("tiny", TINY_CAPTIONS, seed=0)
    base.save_pretrained(root / "model")
    net = SatControlNet.from_unet(base.unet, conditioning_channels=3, conditioning_bands=["1", "2", "3"])
    perturb(net, seed=5).save_pretrained(root / "model" / "controlnet")
    shutil.rmtree(root / "model" / "controlnet_superres", ignore_errors=True)
    return root / "model"


@pytest.mark.shared_data
def test_superres_output_reproduces_the_rgb_input_unless_turned_off(rgb_superres_model, shared_data, tmp_path):
    naip = shared_data / "naip-timeseries" / "m_4709963_se_14_1_20190904.tif"
    with rasterio.open(naip) as src:
        low = src.read([1, 2, 3], window=rasterio.windows.Window(400, 300, 16, 16)).astype(np.float32) / 255
    errors = {}
    for flag in ("--consistency", "--no-consistency"):
        out = tmp_path / f"{flag.strip('-')}.png"
        code = main(["superres", str(naip), "--bands", "1,2,3", "--window", "400,300,16,16", "--scale", "2",
                     "--model", str(rgb_superres_model), "--steps", "2", "--guidance", "1", "--seed", "0",
                     flag, "--out", str(out)])
        assert code == 0
        with rasterio.open(out.with_suffix(".tif")) as dst:
            result = np.moveaxis(dst.read().astype(np.float32) / 255, 0, -1)
        errors[flag] = np.abs(block_mean(result, 2) - low).mean()
    assert errors["--consistency"] < 0.01  # uint8 rounding and clamping only
    assert errors["--no-consistency"] > 5 * errors["--consistency"]  # an untrained model ignores the input
