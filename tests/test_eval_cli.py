"""``diffusionsat evaluate`` end to end with the tiny model and real held-out chips."""

from __future__ import annotations

import json
import socket

import numpy as np
import PIL.Image
import pytest

from diffusionsat.cli.main import main
from diffusionsat.evaluation.chips import export_eval_set
from diffusionsat.evaluation.dataset import load_records

SCENES = ("naip-prairie", "landsat-river")


@pytest.fixture(scope="module")
def heldout(shared_data, tmp_path_factory):
    """16 real held-out chips (9 NAIP dates + 7 Landsat years, one each) with sidecars."""
    folder = tmp_path_factory.mktemp("heldout")
    export_eval_set(shared_data, folder, per_source=1, size=64, scenes=SCENES, seed=3)
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly if anything tries to open a network connection (no downloads, ever)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _report(folder):
    report = json.loads((folder / "report.json").read_text())
    assert (folder / "report.md").read_text().startswith("# diffusionsat evaluation")
    return report


@pytest.mark.shared_data
def test_evaluate_generate_end_to_end(tiny_model_dir, heldout, tmp_path, capsys, no_network):
    out = tmp_path / "eval"
    code = main(["evaluate", "--task", "generate", "--model", str(tiny_model_dir), "--data", str(heldout),
                 "--out", str(out), "--steps", "1", "--num-samples", "8", "--bootstrap", "3",
                 "--metadata-guidance", "4", "--scheduler", "DDIM"])
    assert code == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "inception not available" in err and "nothing is downloaded" in err
    report = _report(out)
    assert report["task"] == "generate" and report["num_records"] == 8 and report["image_size"] == [16, 16]
    assert [r["name"] for r in report["rows"]] == ["model", "real-vs-real", "blur+noise"]
    for metric in ("domain_fid", "domain_kid", "classification_score", "gsd_error", "season_accuracy"):
        rows = report["metrics"][metric]["rows"]
        assert set(rows) == {"model", "real-vs-real", "blur+noise"}
        assert all(isinstance(r["value"], float) and r["n"] >= 1 for r in rows.values()), metric
    # Without weights: FID/IS/CLIP are reported as missing with the reason, not silently dropped.
    assert report["metrics"]["fid"]["rows"]["model"]["value"] is None
    assert "--inception" in report["metrics"]["fid"]["rows"]["model"]["note"]
    assert report["metrics"]["clip_score"]["rows"]["model"]["value"] is None
    assert report["networks"]["domain_encoder"]["available"] is True
    # An untrained model is recognised as the requested scene less often than the real images.
    cls = report["metrics"]["classification_score"]["rows"]
    assert cls["real-vs-real"]["value"] > cls["model"]["value"]
    assert set(report["per_condition"]) <= set(SCENES) and report["per_condition"]
    for grid in report["grids"]:
        with PIL.Image.open(out / grid) as img:
            assert img.size[1] > 96  # real row + model row
    generated = sorted((out / "generated-model").glob("*.png"))
    assert len(generated) == 8
    sidecar = json.loads(generated[0].with_suffix(".json").read_text())
    assert sidecar["scene"] in SCENES and sidecar["width"] == 16
    # The separate metadata guidance reached the sampler and is recorded with each image and the report.
    assert sidecar["metadata_guidance_scale"] == 4.0
    assert report["generation"]["metadata_guidance_scale"] == 4.0
    assert "guidance 3, metadata guidance 4, scheduler ddim" in (out / "report.md").read_text()
    # So did the sampler chosen with --scheduler (the tiny model's own is DDPM).
    assert sidecar["scheduler"] == "ddim" and report["generation"]["scheduler"] == "ddim"
    # The GSD asked of a 16 px image covers the same ground as the 64 px real chip.
    real = {r.key: r for r in load_records(heldout)}[generated[0].stem]
    if "gsd" in sidecar["metadata"]:
        assert sidecar["metadata"]["gsd"] == pytest.approx(real.metadata.gsd * 4)

    # Re-evaluate the saved images side by side with a second set (--generated + --compare).
    again = tmp_path / "again"
    code = main(["evaluate", "--task", "generate", "--generated", str(out / "generated-model"), "--compare",
                 str(out / "generated-model"), "--data", str(heldout), "--out", str(again), "--bootstrap", "0"])
    assert code == 0
    rows = _report(again)["metrics"]["domain_fid"]["rows"]
    assert rows["model"]["value"] == pytest.approx(rows["compare"]["value"])
    assert rows["model"]["value"] == pytest.approx(report["metrics"]["domain_fid"]["rows"]["model"]["value"], rel=1e-6)
    assert "compare" in (again / "report.md").read_text()


@pytest.mark.shared_data
def test_evaluate_superres_with_generated_images(heldout, tmp_path):
    """Generated = the references themselves: PSNR +inf, SSIM 1, domain LPIPS 0; baselines worse."""
    gen = tmp_path / "sr"
    gen.mkdir()
    for png in heldout.glob("*.png"):
        (gen / png.name).write_bytes(png.read_bytes())
    out = tmp_path / "eval-sr"
    assert main(["evaluate", "--task", "superres", "--generated", str(gen), "--data", str(heldout),
                 "--out", str(out), "--bootstrap", "0", "--num-samples", "8"]) == 0
    metrics = _report(out)["metrics"]
    assert metrics["ssim"]["rows"]["model"]["value"] == pytest.approx(1.0)
    assert metrics["domain_lpips"]["rows"]["model"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["psnr"]["rows"]["model"]["value"] is None or np.isinf(metrics["psnr"]["rows"]["model"]["value"])
    for baseline in ("bicubic", "lanczos", "blur+noise", "real-vs-real"):
        assert metrics["ssim"]["rows"][baseline]["value"] < 0.99
        assert metrics["domain_lpips"]["rows"][baseline]["value"] > 0
    assert metrics["psnr"]["rows"]["bicubic"]["value"] > metrics["psnr"]["rows"]["real-vs-real"]["value"]
    assert metrics["psnr"]["rows"]["lanczos"]["value"] > metrics["psnr"]["rows"]["real-vs-real"]["value"]
    assert metrics["lpips"]["rows"]["model"]["value"] is None  # no backbone given: reported, not guessed


@pytest.mark.shared_data
def test_evaluate_bad_inputs_exit_2(tiny_model_dir, heldout, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", "--task", "generate", "--data", str(heldout), "--out", str(out)]
    assert main(args + ["--model", str(tiny_model_dir), "--inception", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and "nothing is downloaded" in err
    assert main(["evaluate", "--task", "superres", "--model", str(tiny_model_dir), "--data", str(heldout),
                 "--out", str(out)]) == 2
    assert "ControlNet" in capsys.readouterr().err  # a base model without a task ControlNet
    assert main(args + ["--model", str(tiny_model_dir), "--metadata-guidance", "-1"]) == 2
    assert "metadata_guidance_scale" in capsys.readouterr().err
    assert main(["evaluate", "--task", "superres", "--generated", str(heldout), "--data", str(heldout),
                 "--out", str(out), "--metadata-guidance", "3"]) == 2
    assert "--task generate only" in capsys.readouterr().err
    assert main(args + ["--model", str(tiny_model_dir), "--scheduler", "warp"]) == 2
    assert "scheduler='warp': unknown; choose one of ddim" in capsys.readouterr().err
    assert main(["evaluate", "--task", "generate", "--generated", str(heldout), "--data", str(heldout),
                 "--out", str(out), "--scheduler", "ddim"]) == 2
    assert "not to --generated" in capsys.readouterr().err
    assert main(["evaluate", "--task", "generate", "--generated", str(heldout), "--compare", str(heldout),
                 "--data", str(heldout), "--out", str(out), "--scheduler", "ddim"]) == 2  # two image folders
    assert "not to --generated" in capsys.readouterr().err
    assert main(["evaluate", "--task", "generate", "--data", str(tmp_path / "missing"), "--out", str(out),
                 "--model", str(tiny_model_dir)]) == 2
    (out).mkdir()
    (out / "report.json").write_text("{}")
    assert main(args + ["--model", str(tiny_model_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.fixture
def task_models(tiny_pipeline, tmp_path):
    """Tiny task models: the tiny base + a fresh ControlNet for superres (3 bands) and inpaint (3 + mask)."""
    from diffusionsat.models.controlnet import SatControlNet

    folders = {}
    for task, channels in (("superres", 3), ("inpaint", 4)):
        folder = tmp_path / f"{task}-model"
        tiny_pipeline.save_pretrained(folder)
        SatControlNet.from_unet(tiny_pipeline.unet, conditioning_channels=channels).save_pretrained(folder / "controlnet")
        folders[task] = folder
    return folders


@pytest.mark.shared_data
def test_evaluate_runs_task_models(shared_data, task_models, tmp_path):
    """--model with superres/inpaint runs the ControlNet pipeline on each record's inputs."""
    data = tmp_path / "sr-data"
    export_eval_set(shared_data, data, per_source=1, size=32, scenes=("naip-prairie",), seed=9)
    (data / "lowres").mkdir()
    for png in sorted(data.glob("*.png"))[:4]:
        low = PIL.Image.open(png).resize((8, 8), PIL.Image.BICUBIC)
        low.save(data / "lowres" / png.name)
        meta = json.loads(png.with_suffix(".json").read_text())
        meta["condition"] = [f"lowres/{png.name}"]
        png.with_suffix(".json").write_text(json.dumps(meta))
    for png in sorted(data.glob("*.png"))[4:]:
        png.unlink()
        png.with_suffix(".json").unlink()
    out = tmp_path / "eval-sr"
    assert main(["evaluate", "--task", "superres", "--model", str(task_models["superres"]), "--data", str(data),
                 "--out", str(out), "--steps", "1", "--bootstrap", "0"]) == 0
    report = _report(out)
    assert report["image_size"] == [32, 32] and report["num_records"] == 4
    assert {"model", "bicubic", "lanczos", "real-vs-real"} <= set(report["metrics"]["psnr"]["rows"])
    sidecar = json.loads(next((out / "generated-model").glob("*.json")).read_text())
    assert sidecar["task"] == "superres" and sidecar["scale"] == 4 and sidecar["width"] == 32

    out = tmp_path / "eval-inpaint"
    assert main(["evaluate", "--task", "inpaint", "--model", str(task_models["inpaint"]), "--data", str(data),
                 "--out", str(out), "--steps", "1", "--bootstrap", "0", "--num-samples", "3"]) == 0
    report = _report(out)
    assert {"biharmonic", "mean-fill"} <= set(report["metrics"]["ssim"]["rows"])
    # Unmasked pixels come back exactly: outside the central square the model equals the reference.
    gen = sorted((out / "generated-model").glob("*.png"))[0]
    ref = np.asarray(PIL.Image.open(data / gen.name), dtype=np.int16)
    got = np.asarray(PIL.Image.open(gen), dtype=np.int16)
    keep = np.ones((32, 32), bool)
    keep[8:24, 8:24] = False
    assert np.array_equal(got[keep], ref[keep])


def test_manifest_and_sidecar_errors_name_the_record(tmp_path):
    img = tmp_path / "a.png"
    PIL.Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    PIL.Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"path": "a.png", "caption": "x", "lat": 10, "date": "2020-06-01", "scene": "naip-prairie"}) + "\n"
        + json.dumps({"path": "b.png", "gsd": "5"}) + "\n")
    records = load_records(tmp_path / "m.jsonl")
    assert records[0].metadata.month == 6 and records[0].scene == "naip-prairie" and records[1].metadata.gsd == 5.0
    (tmp_path / "m.csv").write_text("path,caption,lat\na.png,x,95\n")
    with pytest.raises(ValueError, match=r"record 'a'.*lat"):
        load_records(tmp_path / "m.csv")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ValueError, match="a.json"):
        load_records(tmp_path)


@pytest.mark.shared_data
def test_evaluate_temporal_task_model(shared_data, tiny_pipeline, tmp_path):
    """Two NAIP dates as frames (dates from their sidecars) → the third date; latest-frame and mean-of-frames baselines."""
    from diffusionsat.evaluation.chips import SOURCES, read_source
    from diffusionsat.models.controlnet_3d import SatControlNet3D

    model = tmp_path / "temporal-model"
    tiny_pipeline.save_pretrained(model)
    SatControlNet3D.from_unet(tiny_pipeline.unet, conditioning_channels=3, max_frames=3).save_pretrained(model / "controlnet")
    rasters = [read_source(shared_data, s) for s in SOURCES[:3]]  # 2009, 2010, 2012 NAIP
    data = tmp_path / "temporal"
    (data / "frames").mkdir(parents=True)
    for k, (row, col) in enumerate(((500, 720), (100, 760))):  # held-out columns
        crops = [(r.rgb[:, row:row + 32, col:col + 32].transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8) for r in rasters]
        frames = []
        for r, crop in zip(rasters[:2], crops[:2]):
            name = f"frames/k{k}_{r.source.date}.png"
            PIL.Image.fromarray(crop).save(data / name)
            (data / name).with_suffix(".json").write_text(json.dumps({"metadata": {"date": r.source.date}, "role": "condition"}))
            frames.append(name)
        PIL.Image.fromarray(crops[2]).save(data / f"k{k}.png")
        target = rasters[2].metadata
        (data / f"k{k}.json").write_text(json.dumps({
            "caption": "farmland", "metadata": {"lat": target.lat, "lon": target.lon, "gsd": 5.0, "date": "2012-07-31"},
            "condition": frames, "scene": "naip-prairie"}))
    out = tmp_path / "eval-temporal"
    assert main(["evaluate", "--task", "temporal", "--model", str(model), "--data", str(data), "--out", str(out),
                 "--steps", "1", "--bootstrap", "0"]) == 0
    report = _report(out)
    assert report["num_records"] == 2 and {"latest-frame", "mean-of-frames"} <= set(report["metrics"]["psnr"]["rows"])
    sidecar = json.loads((out / "generated-model" / "k0.json").read_text())
    assert sidecar["target_date"] == "2012-07-31" and sidecar["frame_dates"] == ["2009-08-18", "2010-06-29"]


@pytest.mark.shared_data
def test_evaluate_reads_data_layer_shards(shared_data, tmp_path):
    """--data accepts the data layer's WebDataset shards; generated images match by sample key."""
    from diffusionsat.data.geotiff import GeoTiffChips
    from diffusionsat.data.shards import write_chips

    chips = GeoTiffChips([shared_data / "naip-timeseries" / "m_4709963_se_14_1_20190904.tif"], chip_size=128,
                         stride=256, resize_to=32, bands="1,2,3")
    picked = [chips.chip(i) for i in range(6)]
    shards = write_chips(picked, tmp_path / "shards")
    records = load_records(tmp_path / "shards")
    assert [r.key for r in records] == [c.key for c in picked]
    assert records[0].pixels.shape == (3, 32, 32) and records[0].metadata.gsd == pytest.approx(20.0)
    gen = tmp_path / "gen"
    gen.mkdir()
    for rec in records:  # "generated" = the shard pixels themselves
        arr = (rec.pixels.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        PIL.Image.fromarray(arr).save(gen / f"{rec.key}.png")
    out = tmp_path / "eval"
    assert main(["evaluate", "--task", "superres", "--generated", str(gen), "--data", str(shards[0]),
                 "--out", str(out), "--bootstrap", "0"]) == 0
    metrics = _report(out)["metrics"]
    assert metrics["ssim"]["rows"]["model"]["value"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["gsd_error"]["rows"]["model"]["n"] == 6


def test_generate_task_without_model_uses_the_embedded_model(tmp_path):
    from diffusionsat.evaluation.evaluate import EvaluationConfig

    EvaluationConfig(task="generate", data=tmp_path, out=tmp_path / "e").validate()  # no "give --model"
    from diffusionsat.evaluation.evaluate import embedded_task_model

    for task in ("superres", "temporal", "inpaint"):  # the shipped task models, or a clear error without one
        config = EvaluationConfig(task=task, data=tmp_path, out=tmp_path / "e")
        if embedded_task_model(task):
            config.validate()
        else:
            with pytest.raises(ValueError, match=f"--task {task} needs --model"):
                config.validate()
