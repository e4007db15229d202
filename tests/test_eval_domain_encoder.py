"""The shipped domain encoder: loads offline, is small, and its documented accuracy holds up."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusionsat.evaluation.chips import SCENE_CLASSES, SOURCES, TRAIN_FRACTION, read_source, sample_chips
from diffusionsat.evaluation.domain_encoder import (
    SEASONS,
    DomainEncoder,
    load_domain_encoder,
    season_of,
    shipped_encoder_path,
)


def test_shipped_encoder_is_small_and_documented():
    folder = shipped_encoder_path()
    total = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert total < 3 * 1024 * 1024
    encoder = load_domain_encoder()
    assert isinstance(encoder, DomainEncoder) and encoder.scene_classes == SCENE_CLASSES
    record = json.loads((folder / "training.json").read_text())
    card = (folder / "README.md").read_text()
    held = record["heldout"]
    assert f"scene accuracy: **{held['scene_accuracy']:.3f}**" in card
    assert f"within a factor 1.5: **{held['gsd_within_1.5x']:.3f}**" in card
    assert "right-most quarter" in card and held["num_chips"] > 0
    out = encoder(torch.rand(2, 3, 40, 40))
    assert out["embedding"].shape == (2, 128) and out["scene_logits"].shape == (2, len(SCENE_CLASSES))
    assert out["season_logits"].shape == (2, len(SEASONS))


def test_missing_encoder_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_domain_encoder(tmp_path)


def test_season_of_flips_for_the_southern_hemisphere():
    assert SEASONS[season_of(1, 47.0)] == "winter" and SEASONS[season_of(1, -8.0)] == "summer"
    assert SEASONS[season_of(9, 47.0)] == "autumn" and SEASONS[season_of(4, -23.0)] == "autumn"
    assert season_of(None, 10.0) is None


@pytest.mark.shared_data
def test_train_and_heldout_regions_are_disjoint(shared_data):
    raster = read_source(shared_data, SOURCES[0])
    split = int(round(raster.rgb.shape[2] * TRAIN_FRACTION))
    rng = np.random.default_rng(0)
    assert all(c.window[1] >= split for c in sample_chips(raster, 20, rng, region="heldout"))
    assert all(c.window[1] + c.window[2] <= split for c in sample_chips(raster, 20, rng, region="train"))


@pytest.mark.shared_data
def test_heldout_accuracy_holds_on_fresh_heldout_chips(shared_data):
    """New held-out chips (another seed than training): scene accuracy well above chance (0.2)."""
    encoder = load_domain_encoder()
    rng = np.random.default_rng(12345)
    chips = []
    for source in SOURCES:
        chips += sample_chips(read_source(shared_data, source), 3, rng, region="heldout")
    images = torch.stack([torch.from_numpy(c.image).permute(2, 0, 1).float() / 255.0 for c in chips])
    with torch.no_grad():
        out = encoder(images)
    truth = torch.tensor([SCENE_CLASSES.index(c.scene) for c in chips])
    accuracy = float((out["scene_logits"].argmax(-1) == truth).float().mean())
    assert accuracy >= 0.6, accuracy
    gsd_err = (out["log2_gsd"] - torch.log2(torch.tensor([c.metadata.gsd for c in chips]))).abs()
    assert float(gsd_err.median()) < 1.5  # within a factor ~2.8 typically; 5 octaves span the data
