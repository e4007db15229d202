"""`train --task`: ControlNets trained on a frozen base, on real rasters (tiny models, few steps)."""

from __future__ import annotations

import pytest
import torch

from diffusionsat import SatUNet
from diffusionsat.cli.main import main
from diffusionsat.pipelines.pipeline_controlnet import DiffusionSatControlNetPipeline
from diffusionsat.training import Trainer, load_config
from diffusionsat.training.datasets import build_dataset

NAIP_DIR = "naip-timeseries"
NAIP = "naip-timeseries/m_4709963_se_14_1_20090818.tif"
SPACENET = "spacenet-samples/"


def task_config(shared_data, tmp_path, task, data, **extra):
    values = {"task": task, "data": data, "chip_size": 64, "bands": "1,2,3", "preset": "tiny", "max_samples": 4,
              "batch_size": 2, "max_steps": 2, "checkpoint_every": 2, "report_to": None, "learning_rate": 1e-3,
              "output_dir": str(tmp_path / task)}
    values.update(extra)
    return load_config(overrides=values)


@pytest.mark.parametrize(
    ("task", "data", "extra", "controlnet_class"),
    [
        ("temporal", [NAIP_DIR], {"max_frames": 2, "date_pattern": "*_{YYYYMMDD}.tif"}, "SatControlNet3D"),
        ("superres", [NAIP], {"sr_factor": 4}, "SatControlNet"),
        ("inpaint", [NAIP], {}, "SatControlNet"),
        ("inpaint", [SPACENET + "sample_geotiff.tif"],
         {"bands": "1,1,1", "mask_vector": "SHARED/" + SPACENET + "sample_geotiff_buildings.geojson"}, "SatControlNet"),
        ("superres", [SPACENET + "pan1.tif"], {"bands": "1,1,1", "lowres": "SHARED/" + SPACENET + "ms1.tif"},
         "SatControlNet"),
        ("control", [NAIP], {}, "SatControlNet"),
        ("control", [SPACENET + "sample_geotiff.tif"],  # building footprints → image (segmentation pairs)
         {"bands": "1,1,1", "control_kind": "mask",
          "mask_vector": "SHARED/" + SPACENET + "sample_geotiff_buildings.geojson"}, "SatControlNet"),
        ("superres", ["ucmerced", NAIP], {"sr_factor": 4}, "SatControlNet"),  # UCM: native tiles vs 4x average
        ("inpaint", ["ucmerced", NAIP], {}, "SatControlNet"),  # UCM: random boxes
        ("temporal", [NAIP_DIR], {"max_frames": 2, "date_pattern": "*_{YYYYMMDD}.tif", "temporal_every_date": True},
         "SatControlNet3D"),
    ],
)
def test_each_task_trains_only_its_controlnet(shared_data, tmp_path, tiny_model_dir, task, data, extra,
                                              controlnet_class):
    extra = {k: v.replace("SHARED/", f"{shared_data}/") if isinstance(v, str) else v for k, v in extra.items()}
    cfg = task_config(shared_data, tmp_path, task, [str(shared_data / d) for d in data],
                      base_model=str(tiny_model_dir), **extra)
    trainer = Trainer(cfg, build_dataset(cfg))
    final = trainer.train()
    assert len(trainer.loss_history) == 2 and all(torch.isfinite(torch.tensor(trainer.loss_history)))
    pipe = DiffusionSatControlNetPipeline.from_pretrained(final)
    assert type(pipe.controlnet).__name__ == controlnet_class
    # the base model is frozen: its UNet is bit-identical to the folder it came from
    original = SatUNet.from_pretrained(tiny_model_dir / "unet").state_dict()
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(value, original[key]), key
    # and the ControlNet moved away from its zero-initialised output convolutions
    zero_convs = [p for n, p in pipe.controlnet.named_parameters() if "controlnet_down_blocks" in n or "zero" in n]
    assert zero_convs and any(p.abs().sum() > 0 for p in zero_convs)


def test_task_training_from_the_cli_and_resume(shared_data, tmp_path, tiny_model_dir):
    args = ["train", "--task", "control", "--data", str(shared_data / NAIP), "--chip-size", "64", "--bands", "1,2,3",
            "--preset", "tiny", "--max-samples", "4", "--batch-size", "2", "--checkpoint-every", "1",
            "--report-to", "null", "--base-model", str(tiny_model_dir), "--output-dir", str(tmp_path / "run")]
    assert main([*args, "--max-steps", "2"]) == 0
    assert main([*args, "--max-steps", "3", "--resume", "latest"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-00000003").is_dir()


def test_task_config_errors(tmp_path, capsys):
    assert main(["train", "--task", "paint", "--data", str(tmp_path)]) == 2
    assert "task='paint': must be one of generate, superres, temporal, inpaint, control" in capsys.readouterr().err
    assert main(["train", "--task", "temporal", "--augment", "true", "--data", str(tmp_path)]) == 2
    assert "augment: only for task=generate" in capsys.readouterr().err


def test_task_resolution_follows_the_base_model(tiny_model_dir, tmp_path):
    import json

    from diffusionsat.training.components import model_resolution

    native = json.loads((tiny_model_dir / "unet" / "config.json").read_text())["sample_size"]
    cfg = load_config(overrides={"task": "superres", "base_model": str(tiny_model_dir), "preset": "small",
                                 "output_dir": str(tmp_path)})
    assert model_resolution(cfg) == native  # not the small preset's 64
    cfg.resolution = 32
    assert model_resolution(cfg) == 32


def test_ucmerced_is_refused_for_temporal(shared_data, tmp_path, tiny_model_dir):
    cfg = task_config(shared_data, tmp_path, "temporal", [str(shared_data / "ucmerced")],
                      base_model=str(tiny_model_dir))
    with pytest.raises(ValueError, match="UC Merced folders are not time series"):
        build_dataset(cfg)


def test_real_sr_pairs_beside_degraded_data_and_fine_tuning_a_trained_controlnet(shared_data, tmp_path,
                                                                                 tiny_model_dir):
    from diffusionsat.pipelines.pipeline_controlnet import load_controlnet
    from diffusionsat.training.tasks import build_task_dataset

    pair = {"high": str(shared_data / SPACENET / "pan1.tif"), "low": str(shared_data / SPACENET / "ms1.tif"),
            "bands": "1,1,1", "low_bands": "2,2,2", "stride": 64, "repeat": 3}
    cfg = task_config(shared_data, tmp_path, "superres", [str(shared_data / NAIP)], base_model=str(tiny_model_dir),
                      sr_pairs=[pair], max_samples=None)
    data = build_task_dataset(cfg, 64)
    naip, pan = len(data.datasets[0]), len(data.datasets[1])
    assert len(data) == naip + 3 * pan  # the real pair (x2, 32 px inputs) repeated beside NAIP (x4, 16 px)
    # a batch mixing both factors trains: conditions meet on the target grid
    first = Trainer(cfg, build_dataset(cfg))
    first_final = first.train()
    start = load_controlnet(first_final / "controlnet").state_dict()
    # fine-tuning starts from the given weights, not a fresh copy of the UNet (whose zero
    # convolutions are zero): with a vanishing learning rate the result is the given ControlNet
    tuned = task_config(shared_data, tmp_path, "superres", [str(shared_data / NAIP)], base_model=str(tiny_model_dir),
                        controlnet_init=str(first_final / "controlnet"), output_dir=str(tmp_path / "tuned"),
                        learning_rate=1e-12, use_ema=False)
    after = load_controlnet(Trainer(tuned, build_dataset(tuned)).train() / "controlnet").state_dict()
    zero_convs = [k for k in start if "controlnet_down_blocks" in k]
    assert any(start[k].abs().sum() > 0 for k in zero_convs)
    assert all(torch.allclose(start[k], after[k], atol=1e-6) for k in start)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sr_pairs": [{"high": "a.tif"}]}, "sr_pairs[0].low: missing"),
        ({"sr_pairs": [{"high": "a.tif", "low": "b.tif", "scale": 2}]}, "sr_pairs[0]: unknown key(s) scale"),
        ({"sr_pairs": [{"high": "a.tif", "low": "b.tif", "repeat": 0}]}, "sr_pairs[0].repeat=0: must be an integer >= 1"),
        ({"sr_pairs": [{"high": "a.tif", "low": "b.tif", "roi": [1, 2]}]}, "sr_pairs[0].roi=[1, 2]: must be"),
        ({"task": "inpaint", "sr_pairs": [{"high": "a.tif", "low": "b.tif"}]}, "sr_pairs: only for task=superres"),
        ({"task": "generate", "controlnet_init": "x"}, "controlnet_init: only for a ControlNet task"),
        ({"task": "control", "control_kind": "mask"}, "control_kind='mask': needs mask_vector"),
        ({"task": "control", "control_kind": "roads"}, "control_kind='roads': must be one of road, mask, edges"),
        ({"task": "inpaint", "control_kind": "mask", "mask_vector": "b.geojson"}, "control_kind='mask': only for task=control"),
    ],
)
def test_sr_pairs_and_controlnet_init_config_errors(extra, message):
    values = {"task": "superres", "data": ["x.tif"], **extra}
    with pytest.raises(ValueError) as err:
        load_config(overrides=values)
    assert message in str(err.value)


def test_controlnet_init_must_fit_the_task(shared_data, tmp_path, tiny_model_dir):
    from diffusionsat.models.controlnet_3d import SatControlNet3D

    unet = SatUNet.from_pretrained(tiny_model_dir / "unet")
    SatControlNet3D.from_unet(unet, conditioning_channels=3, max_frames=2).save_pretrained(tmp_path / "cn3d")
    cfg = task_config(shared_data, tmp_path, "superres", [str(shared_data / NAIP)], base_model=str(tiny_model_dir),
                      controlnet_init=str(tmp_path / "cn3d"))
    with pytest.raises(ValueError, match="a 3D ControlNet; task superres needs a 2D one"):
        Trainer(cfg, build_dataset(cfg)).train()
    cfg = task_config(shared_data, tmp_path, "superres", [str(shared_data / NAIP)], base_model=str(tiny_model_dir),
                      controlnet_init="base")
    with pytest.raises(ValueError, match="has no ControlNet for task superres"):
        Trainer(cfg, build_dataset(cfg)).train()


def test_mask_control_condition_is_the_rasterised_footprints(shared_data, tmp_path, tiny_model_dir):
    """task=control, control_kind=mask: the ControlNet sees each chip's footprints (as ``generate
    --control mask`` gives them: 1 band repeated to 3), not edges of the target image."""
    from diffusionsat.training.tasks import task_condition

    cfg = task_config(shared_data, tmp_path, "control", [str(shared_data / SPACENET / "sample_geotiff.tif")],
                      base_model=str(tiny_model_dir), bands="1,1,1", control_kind="mask",
                      mask_vector=str(shared_data / SPACENET / "sample_geotiff_buildings.geojson"))
    dataset = build_dataset(cfg)
    samples = [dataset[i] for i in range(len(dataset))]
    covered = [s for s in samples if 0 < s["mask"].mean() < 1]
    assert covered, "some chips of the SpaceNet scene hold buildings"
    batch = {"mask": torch.stack([s["mask"] for s in covered[:2]])}
    pixels = torch.stack([s["pixel_values"] for s in covered[:2]])
    cond = task_condition("control", batch, pixels, tuple(pixels.shape[-2:]), "mask")
    assert cond.shape == (len(batch["mask"]), 3, *pixels.shape[-2:])
    assert torch.equal(cond[:, 0], batch["mask"][:, 0]) and torch.equal(cond[:, 1], cond[:, 2])
    assert not torch.equal(cond, task_condition("control", batch, pixels, tuple(pixels.shape[-2:])))
