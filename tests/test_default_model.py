"""The embedded default model: loads offline, reproducible, image-like, metadata-sensitive."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusionsat import SatMetadata
from diffusionsat.loading import default_model_path, has_default_model, load_pipeline

pytestmark = pytest.mark.skipif(not has_default_model(), reason="no embedded default model in this checkout")

PROMPT = "a satellite image of vegetation and water in United States of America in summer from NAIP aerial at 5 m resolution"
README_PROMPT = "a satellite image in Peru from Landsat false colour at 89 m resolution"
SUMMER = SatMetadata(lat=47.02, lon=-99.15, gsd=5.0, year=2016, month=7, day=15)


def high_frequency_share(image: np.ndarray) -> float:
    """Share of the (mean-free) spectral power above a quarter of the sampling frequency."""
    gray = image.astype(np.float64).mean(axis=-1)
    power = np.abs(np.fft.fftshift(np.fft.fft2(gray - gray.mean()))) ** 2
    h, w = gray.shape
    yy, xx = np.mgrid[:h, :w]
    radius = np.hypot(yy - h / 2, xx - w / 2)
    return float(power[radius > min(h, w) / 4].sum() / max(power.sum(), 1e-12))


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, metadata=SUMMER, seed=0, prompt=PROMPT, guidance=3.0):
    return pipe(prompt, metadata=metadata, num_inference_steps=25, guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


def test_model_folder_is_complete_and_small():
    folder = default_model_path()
    for part in ("model_index.json", "unet", "text_encoder", "tokenizer", "scheduler", "MODEL_CARD.md"):
        assert (folder / part).exists(), part
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 50 * 2**20
    assert not list(folder.rglob("*.bin")), "safetensors only"


def test_fixed_seed_is_reproducible(pipe):
    np.testing.assert_array_equal(sample(pipe, seed=3), sample(pipe, seed=3))


def test_output_is_image_like_not_constant_or_noise(pipe, shared_data):
    """The README's example: its spectra lie within those of real held-out chips, far from noise."""
    from diffusionsat.data.geotiff import GeoTiffChips
    from diffusionsat.data.transforms import to_uint8

    real = []
    for path, bands in (("naip-timeseries/m_4709963_se_14_1_20190904.tif", "1,2,3"), ("landsat-timeseries/2015.tif", "1,2,3")):
        chips = GeoTiffChips([shared_data / path], chip_size=64, bands=bands, max_nodata=0.05)
        real += [high_frequency_share(to_uint8(chips[i]["pixel_values"])) for i in range(0, len(chips), 3)]
    noise = high_frequency_share(np.random.default_rng(0).random((64, 64, 3)))
    peru = SatMetadata(lat=-8.4, lon=-74.4, gsd=89.0, year=2005)
    for seed in range(3):
        image = sample(pipe, peru, seed=seed, prompt=README_PROMPT, guidance=2.0)
        assert image.std() > 0.02, "constant image"
        share = high_frequency_share(image)
        assert min(real) <= share <= max(real), (share, min(real), max(real))
        assert share < 0.5 * noise


def test_changing_metadata_changes_the_image(pipe):
    summer = sample(pipe, SUMMER)
    winter = sample(pipe, SUMMER.replace(month=1))
    coarse = sample(pipe, SUMMER.replace(gsd=30.0))
    assert np.abs(summer - winter).mean() > 1e-3
    assert np.abs(summer - coarse).mean() > 1e-3


def test_model_card_documents_data_training_and_metrics():
    card = (default_model_path() / "MODEL_CARD.md").read_text()
    for needle in ("../shared/data", "held out", "scripts/train_default_model.py", "steps", "domain-fid"):
        assert needle in card.lower(), needle


@pytest.mark.parametrize("task", ["superres", "temporal", "inpaint"])
def test_each_shipped_controlnet_has_a_card_with_its_training_command_and_held_out_numbers(task):
    """`diffusionsat info --task T` prints this card: it must say how the weights were made and measured."""
    from diffusionsat.cli.main import main as cli

    card = (default_model_path() / f"controlnet_{task}" / "MODEL_CARD.md").read_text()
    assert f"configs/tasks/{task}" in card
    assert f"export_task_heldout.py --task {task}" in card
    assert f"diffusionsat evaluate --task {task}" in card
    assert re.search(r"\| PSNR \(dB\) \| [0-9.]+ \[", card), "PSNR with its interval"
    assert "held out" in card.lower()
    assert cli(["info", "--task", task]) == 0


def test_land_use_class_in_the_prompt_changes_the_image(pipe):
    ucm = SatMetadata(gsd=1.2192)
    harbor = sample(pipe, ucm, prompt="a satellite image of a harbor in United States of America at 1.2 m resolution")
    forest = sample(pipe, ucm, prompt="a satellite image of forest in United States of America at 1.2 m resolution")
    assert np.abs(harbor - forest).mean() > 0.02
    vocab = pipe.tokenizer.get_vocab()
    assert {"harbor", "tennis", "runway", "chaparral"} <= set(vocab)


@pytest.mark.slow
def test_model_card_numbers_match_a_rerun_of_the_documented_evaluation(tmp_path, shared_data):
    """Re-runs the card's first documented export + evaluate commands and compares the domain-FID."""
    import json
    import shlex

    from diffusionsat.cli.main import main

    card = (default_model_path() / "MODEL_CARD.md").read_text()
    reported = float(re.search(r"\| domain-FID \| ([0-9.]+)", card).group(1))
    export = shlex.split(re.search(r"^python scripts/train_default_model.py (--export-heldout .*)$", card, re.MULTILINE).group(1))
    command = shlex.split(re.search(r"^diffusionsat evaluate (.*)$", card, re.MULTILINE).group(1))
    folders = {export[1]: str(tmp_path / export[1]), command[command.index("--out") + 1]: str(tmp_path / "eval")}
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_default_model.py"
    subprocess.run([sys.executable, str(script), "--data", str(shared_data), *[folders.get(a, a) for a in export]],
                   check=True, capture_output=True)
    assert main(["evaluate", *[folders.get(a, a) for a in command]]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    rerun = report["metrics"]["domain_fid"]["rows"]["model"]["value"]
    assert rerun == pytest.approx(reported, rel=0.05)
