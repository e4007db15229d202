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


def evaluate_report(task: str, model: Path, folder: Path, psnr: float = 21.5) -> Path:
    """The parts of `diffusionsat evaluate`'s report.json that --keep reads."""
    report = {"task": task, "data": "heldout", "num_records": 4, "created": "2026-12-06T00:00:00+00:00",
              "generation": {"steps": 25, "guidance_scale": 3.0},
              "rows": [{"name": "model", "role": "model", "source": str(model)},
                       {"name": "real-vs-real", "role": "floor", "source": None}],
              "metrics": {"psnr": {"rows": {"model": {"value": psnr}, "real-vs-real": {"value": None}}},
                          "domain_fid": {"rows": {"real-vs-real": {"value": 2.7}}}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report))
    return folder / "report.json"


def test_keep_a_controlnet_measured_on_the_new_unet_instead_of_retraining(ship, tiny_pipeline, tmp_path):
    base = tmp_path / "package-default-model"
    tiny_pipeline.save_pretrained(base)
    for task in ship.TASKS:
        ship.ship(task, trained_run(tiny_pipeline, tmp_path / f"run-{task}", task), base)
    trained_on = ship.unet_digest(base)
    with torch.no_grad():
        for p in tiny_pipeline.unet.parameters():
            p.add_(0.01)
    tiny_pipeline.save_pretrained(tmp_path / "v4")
    staged = ship.stage(tmp_path / "v4", tmp_path / "stage-v4", base)

    for bad, message in [(evaluate_report("superres", staged, tmp_path / "e1"), "evaluates task 'superres', not 'temporal'"),
                         (evaluate_report("temporal", base, tmp_path / "e2"), "its model is .*package-default-model"),
                         (tmp_path / "missing.json", "not a readable evaluate report")]:
        with pytest.raises(SystemExit, match=message):
            ship.keep("temporal", bad, staged)
    assert sorted(ship.stale_controlnets(staged)) == sorted(ship.TASKS)  # nothing recorded by a refusal

    report = evaluate_report("temporal", staged, tmp_path / "eval-temporal", psnr=19.0)
    assert ship.main(["--keep", "temporal", "--report", str(report), "--base", str(staged)]) == 0
    record = json.loads((staged / "controlnet_temporal" / "training.json").read_text())
    assert record["base_unet_sha256"] == trained_on  # what it was trained on stays as it was
    assert record["measured_on"]["base_unet_sha256"] == ship.unet_digest(staged)
    assert record["measured_on"]["metrics"] == {"psnr": 19.0} and record["measured_on"]["num_records"] == 4
    assert sorted(ship.stale_controlnets(staged)) == ["inpaint", "superres"]
    with pytest.raises(SystemExit, match="superres, inpaint not retrained.*--keep T --report"):
        ship.install(staged, base)

    for task in ("superres", "inpaint"):
        ship.ship(task, trained_run(tiny_pipeline, tmp_path / f"rebase-{task}", task), staged)
    ship.install(staged, base)
    assert ship.stale_controlnets(base) == []

    with torch.no_grad():  # the next base: a kept ControlNet is stale again until re-measured or retrained
        for p in tiny_pipeline.unet.parameters():
            p.add_(0.01)
    tiny_pipeline.save_pretrained(tmp_path / "v5")
    assert "temporal" in ship.stale_controlnets(ship.stage(tmp_path / "v5", tmp_path / "stage-v5", base))


def test_stage_refuses_a_folder_that_is_not_a_default_model(ship, tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "base")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    with pytest.raises(SystemExit, match="missing text_encoder/, tokenizer/, scheduler/"):
        ship.stage(tmp_path / "half", tmp_path / "out", tmp_path / "base")
    assert not (tmp_path / "out").exists()


def test_every_shipped_controlnet_was_trained_or_measured_on_the_shipped_unet(ship):
    from diffusionsat.loading import default_model_path, has_default_model

    if not has_default_model():
        pytest.skip("no embedded default model in this install")
    assert ship.stale_controlnets(default_model_path()) == []
