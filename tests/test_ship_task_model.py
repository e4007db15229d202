"""scripts/ship_task_model.py: ship a ControlNet beside its base, stage a retrained base, install it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusionsat.models import SatControlNet

UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def ship(load_script):
    return load_script("scripts/ship_task_model.py")


def trained_run(pipe, folder: Path, task: str) -> Path:
    """A training run's final model folder as `diffusionsat train` leaves it: base + controlnet/."""
    pipe.save_pretrained(folder / "model")
    channels = {"superres": 13, "inpaint": 4, "temporal": 3}[task]
    SatControlNet.from_unet(pipe.unet, conditioning_channels=channels).save_pretrained(folder / "model" / "controlnet")
    config = {"batch_size": 2, "learning_rate": 1e-4, "controlnet_init": "base"}
    (folder / "model" / "training.json").write_text(json.dumps({"state": {"global_step": 5}, "config": config}))
    return folder


def test_stage_retrain_ship_install_moves_controlnets_with_their_base(ship, tiny_pipeline, tmp_path):
    base = tmp_path / "package-default-model"
    tiny_pipeline.save_pretrained(base)
    for task in ship.TASKS:  # today's package: every ControlNet trained on today's UNet
        ship.ship(task, trained_run(tiny_pipeline, tmp_path / f"run-{task}", task), base)
    assert ship.stale_controlnets(base) == []
    old_unet = load_file(base / UNET)

    with torch.no_grad():  # a retrained default model
        for p in tiny_pipeline.unet.parameters():
            p.add_(0.01)
    retrained = tmp_path / "default-model-v4"
    tiny_pipeline.save_pretrained(retrained)

    staged = ship.stage(retrained, tmp_path / "stage-v4", base)
    assert ship.same_base(staged, retrained) and not ship.same_base(staged, base)
    assert (staged / "controlnet_superres" / "config.json").is_file()  # kept: fine-tuning starts from it
    assert sorted(ship.stale_controlnets(staged)) == sorted(ship.TASKS)
    with pytest.raises(SystemExit, match="stage into a new folder"):
        ship.stage(retrained, staged, base)

    with pytest.raises(SystemExit, match="not trained on the shipped default model"):  # an old-base run
        ship.ship("inpaint", tmp_path / "run-inpaint", staged)
    ship.ship("superres", trained_run(tiny_pipeline, tmp_path / "rebase-superres", "superres"), staged)
    with pytest.raises(SystemExit, match="temporal, inpaint not retrained"):
        ship.install(staged, base)
    assert all(torch.equal(load_file(base / UNET)[k], v) for k, v in old_unet.items())  # package untouched

    for task in ("inpaint", "temporal"):
        ship.ship(task, trained_run(tiny_pipeline, tmp_path / f"rebase-{task}", task), staged)
    assert ship.main(["--install", str(staged), "--base", str(base)]) == 0
    assert ship.same_base(base, retrained) and ship.stale_controlnets(base) == []
    record = json.loads((base / "controlnet_superres" / "training.json").read_text())
    assert record["base_unet_sha256"] == ship.unet_digest(retrained) and record["steps"] == 5


def test_stage_refuses_a_folder_that_is_not_a_default_model(ship, tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "base")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    with pytest.raises(SystemExit, match="missing text_encoder/, tokenizer/, scheduler/"):
        ship.stage(tmp_path / "half", tmp_path / "out", tmp_path / "base")
    assert not (tmp_path / "out").exists()


def test_every_shipped_controlnet_records_the_shipped_unet(ship):
    from diffusionsat.loading import default_model_path, has_default_model

    if not has_default_model():
        pytest.skip("no embedded default model in this install")
    assert ship.stale_controlnets(default_model_path()) == []
