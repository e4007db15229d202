"""scripts/export_task_heldout.py: held-out folders of the task models, read back as `evaluate` reads them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from diffusionsat.evaluation.dataset import load_records, load_stack, read_image, read_mask
from diffusionsat.evaluation.evaluate import _sidecar_metadata, build_baselines, with_known_metadata

TASKS = ("superres", "temporal", "inpaint")
UCM_CLASSES = 21


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("scripts/export_task_heldout.py")


@pytest.fixture(scope="module")
def exported(shared_data, script, tmp_path_factory):
    """Each task's folder with --per-class 1: one record per UC Merced class and per geo source."""
    base = tmp_path_factory.mktemp("task-heldout")
    for task in TASKS:
        assert script.main(["--task", task, "--out", str(base / task), "--data", str(shared_data), "--per-class", "1"]) == 0
    return base


def _inputs(record):
    return ([record.mask] if record.mask else []) + record.condition


def _check_inputs_are_not_records(folder, records):
    images = {r.image.resolve() for r in records}
    inputs = [p.resolve() for r in records for p in _inputs(r)]
    assert inputs and all(p.is_file() for p in inputs)
    assert not images & set(inputs)
    assert all(r.image.parent.resolve() == folder.resolve() for r in records)
    assert all(p.parent.resolve() != folder.resolve() for p in inputs)  # in lowres/, frames/, masks/
    # Every image file at the top level is a record; none is left out or doubled.
    top = sorted(p.stem for p in folder.iterdir() if p.suffix in (".png", ".tif"))
    assert top == sorted(r.key for r in records)


@pytest.mark.shared_data
def test_superres_export_pairs_references_with_their_block_average(exported):
    from diffusionsat.conditional import read_input

    folder = exported / "superres"
    records = load_records(folder)
    assert len(records) == UCM_CLASSES + 2
    _check_inputs_are_not_records(folder, records)
    by_key = {r.key: r for r in records}
    naip = by_key["naip-r000-c000"]
    assert naip.scene == "naip-prairie" and naip.image.suffix == ".tif" and naip.metadata.gsd == pytest.approx(5.0)
    ucm = [r for r in records if r.key.startswith("ucmerced-")]
    assert len({r.scene for r in ucm}) == UCM_CLASSES and all(r.scene.startswith("ucm-") for r in ucm)
    for rec, side in ((naip, 64), (ucm[0], 256)):
        ref, low = read_image(rec.image), read_image(rec.condition[0])
        assert ref.shape[-1] == side and low.shape[-1] == side // 4
        block = torch.nn.functional.avg_pool2d(ref[None], 4)[0]
        assert (block - low).abs().max() <= 1.01 / 255  # the 4x block average, rounded to 8 bits
    # The task pipeline reads the inputs with their metadata: the GeoTIFF from its georeference,
    # the UC Merced PNG (no georeference) with the GSD of its sidecar.
    low = read_input(naip.condition[0])
    assert low.georeferenced and low.metadata.gsd == pytest.approx(20.0) and low.width == 16
    png = read_input(ucm[0].condition[0])
    assert png.metadata.gsd is None
    assert with_known_metadata(png, _sidecar_metadata(ucm[0].condition[0])).metadata.gsd == pytest.approx(1.2192)
    assert ucm[0].metadata.gsd == pytest.approx(0.3048)
    summary = json.loads((folder / "export.json").read_text())
    assert summary["counts"] == {"ucmerced": UCM_CLASSES, "naip": 1, "spacenet": 1}


@pytest.mark.shared_data
def test_superres_spacenet_pair_is_the_held_out_east_of_the_real_pan_pair(exported, script, shared_data, tmp_path):
    import rasterio
    import yaml

    from diffusionsat.conditional import read_input

    assert script.main(["--task", "superres", "--sources", "spacenet", "--out", str(tmp_path / "sn"),
                        "--data", str(shared_data)]) == 0
    records = load_records(tmp_path / "sn")
    assert len(records) == 18  # 2 chip columns x 9 rows of the 600 px pan scene
    train_roi = yaml.safe_load((Path(script.__file__).parents[1] / "configs/tasks/superres-finetune.yaml").read_text())["sr_pairs"][0]["roi"]
    for rec in records:
        with rasterio.open(rec.image) as ref:
            assert ref.bounds.left >= script.SPACENET_PAIR_HELDOUT_ROI[0] >= train_roi[2]  # never trained on
            assert ref.res[0] == pytest.approx(0.5, abs=1e-3) and ref.count == 3
            gray = ref.read()
        assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()  # panchromatic as R=G=B
        low = read_input(rec.condition[0])
        assert low.width == 32 and low.metadata.gsd == pytest.approx(1.0, abs=1e-3)  # the real 1 m sensor, x2


@pytest.mark.shared_data
def test_temporal_export_holds_out_the_latest_date(exported):
    from diffusionsat.conditional import read_input, same_grid

    folder = exported / "temporal"
    records = load_records(folder)
    assert sorted(r.key for r in records) == ["landsat-r000-c000", "naip-r000-c000"]
    _check_inputs_are_not_records(folder, records)
    targets = {"naip-r000-c000": "2019-09-04", "landsat-r000-c000": "2015"}
    frames_of = {"naip-r000-c000": ["2016-08-16", "2017-08-27", "2018-07-16"],
                 "landsat-r000-c000": ["2000", "2005", "2010"]}
    for rec in records:
        assert rec.metadata.date_string() == targets[rec.key] and rec.metadata.gsd is not None
        dates = [_sidecar_metadata(p).date_string() for p in rec.condition]
        assert dates == frames_of[rec.key]  # the three dates before the target, oldest first
        inputs = [read_input(p, date=d) for p, d in zip(rec.condition, dates)]
        assert all(same_grid(inputs[0], x) for x in inputs)  # predict_temporal needs one grid
        assert [x.metadata.date_string() for x in inputs] == dates
        plain = read_input(rec.condition[0])  # without the evaluator's date: the GeoTIFF's tag
        assert plain.metadata.date_string() == dates[0] and plain.metadata.lat == pytest.approx(rec.metadata.lat)
        assert read_image(rec.image).shape == (3, 64, 64)


@pytest.mark.shared_data
def test_inpaint_export_masks(exported, script):
    from diffusionsat.conditional import read_input
    from diffusionsat.data.tasks import random_box_mask

    folder = exported / "inpaint"
    records = load_records(folder)
    assert len(records) == UCM_CLASSES + 1
    _check_inputs_are_not_records(folder, records)
    for rec in records:
        mask = read_mask(rec.mask)
        assert mask.shape == (1, 64, 64) and 0 < mask.mean() < 1
        assert read_image(rec.image).shape == (3, 64, 64)
    space = next(r for r in records if r.key.startswith("spacenet-"))
    assert space.scene == "spacenet-urban" and read_mask(space.mask).mean() >= 0.02
    assert read_input(space.image).georeferenced and read_input(space.image).metadata.gsd == pytest.approx(0.5)
    # UC Merced boxes: random_box_mask seeded by (seed, index in the held-out split): the first image is 0.
    first = next(r for r in records if r.key == "ucmerced-agricultural00")
    expected = random_box_mask(64, 64, np.random.default_rng([0, 0]), boxes=3)
    assert np.array_equal(read_mask(first.mask)[0].numpy(), expected.astype(np.float32))
    assert first.metadata.gsd == pytest.approx(1.2192)


@pytest.mark.shared_data
def test_classical_baselines_run_on_the_exports(exported):
    expected = {"superres": {"bicubic", "lanczos"}, "temporal": {"latest-frame", "mean-of-frames"},
                "inpaint": {"biharmonic", "mean-fill"}}
    for task in TASKS:
        records = load_records(exported / task)
        real = load_stack(records, (64, 64))
        rows = {c.name: c for c in build_baselines(task, records, real, seed=0)}
        assert expected[task] <= set(rows), task
        for name in expected[task]:
            assert rows[name].images.shape == real.shape and 0 <= rows[name].images.min() <= rows[name].images.max() <= 1
    # Super-resolution baselines use each record's own input, also when the sources differ in size.
    records = load_records(exported / "superres")
    rows = {c.name: c for c in build_baselines("superres", records, load_stack(records, (64, 64)), seed=0)}
    assert "low-res input" in rows["lanczos"].description


@pytest.mark.shared_data
def test_export_refuses_a_used_folder_and_is_deterministic(exported, script, shared_data, tmp_path, capsys):
    capsys.readouterr()
    assert script.main(["--task", "temporal", "--out", str(exported / "temporal"), "--data", str(shared_data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not empty" in err and len(err.splitlines()) == 1
    assert script.main(["--task", "temporal", "--sources", "spacenet", "--out", str(tmp_path / "x"),
                        "--data", str(shared_data)]) == 2
    assert "naip, landsat" in capsys.readouterr().err and not (tmp_path / "x").exists()
    again = tmp_path / "again"
    again.mkdir()  # an empty folder is accepted
    assert script.main(["--task", "temporal", "--out", str(again), "--data", str(shared_data), "--per-class", "1"]) == 0
    first = sorted(p.relative_to(exported / "temporal") for p in (exported / "temporal").rglob("*") if p.is_file())
    second = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert first == second
    assert all((exported / "temporal" / p).read_bytes() == (again / p).read_bytes() for p in first)


def test_with_known_metadata_fills_only_what_the_file_lacks(tmp_path):
    from diffusionsat.conditional import read_input

    PIL.Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / "low.png")
    (tmp_path / "low.json").write_text(json.dumps({"role": "condition", "metadata": {"gsd": 1.2192, "date": "2010-06-01"}}))
    known = _sidecar_metadata(tmp_path / "low.png")
    raster = read_input(tmp_path / "low.png")
    filled = with_known_metadata(raster, known)
    assert raster.metadata.gsd is None and filled.metadata.gsd == pytest.approx(1.2192)
    assert filled.metadata.date_string() == "2010-06-01"
    dated = read_input(tmp_path / "low.png", date="2012")
    assert with_known_metadata(dated, known).metadata.date_string() == "2012"  # the file's date is kept
    assert with_known_metadata(raster, None) is raster
    assert _sidecar_metadata(tmp_path / "none.png") is None


def test_report_says_where_a_baseline_wins():
    from diffusionsat.evaluation.report import markdown, versus_baselines

    def est(value, low=None, high=None):
        return {"value": value, "low": low, "high": high, "std": None, "n": 10, "method": "m", "note": None}

    report = {
        "task": "superres", "data": "d", "num_records": 10, "image_size": [64, 64], "seed": 0, "created": "now",
        "diffusionsat_version": "x", "networks": {},
        "rows": [{"name": "model", "role": "model", "description": "", "source": None},
                 {"name": "real-vs-real", "role": "floor", "description": "", "source": None},
                 {"name": "bicubic", "role": "baseline", "description": "", "source": None},
                 {"name": "lanczos", "role": "baseline", "description": "", "source": None}],
        "metrics": {
            "psnr": {"better": "higher", "description": "", "rows": {
                "model": est(24.0, 23.5, 24.5), "real-vs-real": est(12.0), "bicubic": est(23.0, 22.0, 23.8),
                "lanczos": est(26.0, 25.0, 27.0)}},
            "domain_lpips": {"better": "lower", "description": "", "rows": {
                "model": est(0.5, 0.4, 0.6), "real-vs-real": est(5.0), "bicubic": est(0.55, 0.45, 0.65),
                "lanczos": est(None)}},
        },
    }
    versus = versus_baselines(report)
    assert [b["row"] for b in versus["psnr"]["model"]["beaten_by"]] == ["lanczos"]
    assert versus["psnr"]["model"]["beaten_by"][0]["clear"] is True  # [25, 27] is above [23.5, 24.5]
    assert versus["psnr"]["model"]["beats"] == [{"row": "bicubic", "value": 23.0, "clear": False}]  # overlapping
    assert versus["domain_lpips"]["model"]["beats"][0]["row"] == "bicubic"  # lower is better; lanczos missing
    assert "real-vs-real" not in str(versus)  # the floor is not a baseline to beat
    report["versus_baselines"] = versus
    text = markdown(report)
    assert "## Model against the baselines" in text and "**beaten by lanczos (26.0000*)**" in text
