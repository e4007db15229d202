"""synthesize (spec → resumable, rank-split shards) and downstream (synthetic-trained vs real-trained)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffusionsat.cli.main import main
from diffusionsat.synthesis import SpecError, load_spec, parse_spec, sample_list, synthesize

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

SMALL = {
    "images_per_class": 3, "steps": 1, "size": 16, "batch_size": 2, "shard_size": 2, "seed": 3,
    "fields": {"country": "United States of America"}, "metadata": {"gsd": 1.2192},
    "classes": {
        "harbor": {},
        "river": {"metadata": {"lat": [30, 40], "lon": [-100, -90], "date": ["2015", "2016-06"],
                               "cloud_percent": [0, 10]}},
    },
}


def write_spec(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from conftest import TINY_CAPTIONS
    from diffusionsat.models.presets import build_pipeline

    folder = tmp_path_factory.mktemp("model") / "tiny"
    build_pipeline("tiny", TINY_CAPTIONS, seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory) -> Path:
    """The small spec synthesised in one uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("ref") / "out"
    summary = synthesize(parse_spec(SMALL), out, model=tiny_model)
    assert summary["samples"] == 6 and len(summary["written"]) == 3
    return out


def shard_members(folder: Path) -> dict[str, bytes]:
    out = {}
    for shard in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                assert m.name not in out, f"{m.name} twice"
                out[m.name] = tar.extractfile(m).read()
    return out


def assert_same_output(a: Path, b: Path) -> None:
    assert sorted(p.name for p in a.glob("shard-*.tar")) == sorted(p.name for p in b.glob("shard-*.tar"))
    for shard in a.glob("shard-*.tar"):
        assert shard.read_bytes() == (b / shard.name).read_bytes(), shard.name
    assert (a / "manifest.jsonl").read_text() == (b / "manifest.jsonl").read_text()


# --- the spec --------------------------------------------------------------------------------------


def test_sample_list_is_a_pure_function_of_the_spec():
    spec = parse_spec(SMALL)
    one, two = sample_list(spec), sample_list(parse_spec(SMALL))
    assert one == two
    assert [s.key for s in one] == ["harbor-000000", "river-000000", "harbor-000001", "river-000001",
                                    "harbor-000002", "river-000002"]
    assert len({s.seed for s in one}) == 6
    assert one[0].prompt == "a satellite image of a harbor in United States of America at 1.2 m resolution"
    assert one[0].metadata.lat is None and one[0].metadata.gsd == 1.2192
    for s in one[1::2]:
        m = s.metadata
        assert 30 <= m.lat <= 40 and -100 <= m.lon <= -90 and 0 <= m.cloud_cover <= 0.1
        assert "2015-01-01" <= m.date.isoformat() <= "2016-06-30"
        assert "in United States of America" in s.prompt  # from the coordinates, not the fixed field
    # more images per class keeps the earlier samples' seeds and metadata
    more = sample_list(parse_spec({**SMALL, "images_per_class": 4}))
    assert {s.key: (s.seed, s.metadata) for s in more if s.key in {t.key for t in one}} == \
        {s.key: (s.seed, s.metadata) for s in one}


def test_polygon_metadata_stays_inside():
    from shapely.geometry import Point, Polygon

    triangle = [[-100, 30], [-90, 30], [-95, 40]]
    spec = parse_spec({"images_per_class": 20, "classes": {"forest": {"metadata": {"polygon": triangle}}}})
    shape = Polygon(triangle)
    assert all(shape.contains(Point(s.metadata.lon, s.metadata.lat)) for s in sample_list(spec))


def test_example_ucmerced_spec_has_the_21_classes_in_the_training_caption_style():
    from diffusionsat.data.ucmerced import CLASS_WORDS

    spec = load_spec(ROOT / "configs" / "synthesize" / "ucmerced.yaml")
    assert [c.key for c in spec.classes] == list(CLASS_WORDS)
    assert spec.size == 64 and spec.num_samples == 21 * 64
    assert spec.scheduler == "dpm++" and spec.guidance == 2.0  # the measured setting (docs/synthesize.md)
    prompts = {s.class_key: s.prompt for s in sample_list(spec)[:21]}
    assert prompts["harbor"] == "a satellite image of a harbor in United States of America at 1.2 m resolution"
    assert prompts["agricultural"].startswith("a satellite image of agricultural fields in United States")


BAD_SPECS = [
    ({"classes": {}}, "classes: empty"),
    ({"classes": []}, "classes: empty"),
    ({"images_per_class": 2, "classes": {"harbour": {}}}, "unknown class key 'harbour'"),
    ({"images_per_class": 2, "classes": {"harbor": {"promt": "x"}}}, "classes.harbor.promt: unknown key"),
    ({"images_per_class": 2, "clases": {}}, "clases: unknown key"),
    ({"images_per_class": 2, "classes": {"harbor": {"metadata": {"lat": [10, 100]}}}},
     "classes.harbor.metadata.lat=[10, 100]: out of range"),
    ({"images_per_class": 2, "classes": {"harbor": {"metadata": {"lon": [20, -20]}}}},
     "classes.harbor.metadata.lon=[20, -20]: min > max"),
    ({"images_per_class": 2, "classes": {"harbor": {"metadata": {"gsd": 0}}}}, "classes.harbor.metadata.gsd=0"),
    ({"images_per_class": 2, "metadata": {"cloud_cover": [0, 2]}, "classes": {"harbor": {}}}, "metadata.cloud_cover"),
    ({"images_per_class": 2, "classes": {"harbor": {"metadata": {"date": ["2020-02-30", "2021"]}}}},
     "not a real calendar date"),
    ({"images_per_class": 2, "classes": {"harbor": {"metadata": {"date": ["2021", "2020"]}}}},
     "first date is after the last"),
    ({"images_per_class": 2, "classes": {"harbor": {"metadata": {"polygon": [[0, 0], [1, 1], [2, 2]]}}}},
     "not a valid polygon"),
    ({"classes": {"harbor": {}}}, "no image count"),
    ({"images_per_class": 2, "scheduler": "fast", "classes": {"harbor": {}}}, "scheduler='fast'"),
]


@pytest.mark.parametrize(("data", "message"), BAD_SPECS)
def test_bad_specs_fail_in_one_line_with_exit_2_and_write_nothing(data, message, tmp_path, capsys):
    with pytest.raises(SpecError, match=None) as err:
        parse_spec(data)
    assert message in str(err.value)
    spec = write_spec(tmp_path / "spec.yaml", data)
    out = tmp_path / "out"
    assert main(["synthesize", "--spec", str(spec), "--out", str(out), "--model", str(tmp_path / "none")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_folder_of_other_data_is_refused_untouched(tiny_model, reference, tmp_path, capsys):
    spec = write_spec(tmp_path / "other.yaml", {**SMALL, "seed": 4})
    before = {p.name: p.read_bytes() for p in reference.iterdir()}
    assert main(["synthesize", "--spec", str(spec), "--out", str(reference), "--model", str(tiny_model)]) == 2
    assert "holds another spec's data" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in reference.iterdir()} == before
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "summary.json").write_text("{}")
    assert main(["synthesize", "--spec", str(spec), "--out", str(prepared), "--model", str(tiny_model)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in prepared.iterdir()] == ["summary.json"]


# --- running ---------------------------------------------------------------------------------------


def test_output_is_readable_training_data(reference):
    from diffusionsat.data.shards import ShardDataset

    samples = list(ShardDataset(reference, rank=0, world_size=1))
    assert [s["key"] for s in samples] == [s.key for s in sample_list(parse_spec(SMALL))]
    first = samples[1]
    assert tuple(first["pixel_values"].shape) == (3, 16, 16)
    assert first["record"]["class"] == "river" and first["record"]["label"] == 1
    assert first["record"]["seed"] == sample_list(parse_spec(SMALL))[1].seed
    assert first["metadata"].gsd == 1.2192 and first["metadata"].lat is not None
    rows = [json.loads(line) for line in (reference / "manifest.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == [s["key"] for s in samples]
    assert rows[1]["class"] == "river" and rows[1]["shard"] == "shard-000000.tar"
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["classes"] == {"harbor": 3, "river": 3} and summary["shards"] == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]


def test_killed_run_resumes_without_duplicates_or_gaps(tiny_model, reference, tmp_path):
    out = tmp_path / "out"

    class Killed(Exception):
        pass

    def kill_after_first(k, path):
        raise Killed

    with pytest.raises(Killed):
        synthesize(parse_spec(SMALL), out, model=tiny_model, on_shard=kill_after_first)
    assert [p.name for p in out.glob("shard-*.tar")] == ["shard-000000.tar"]
    assert not (out / "manifest.jsonl").exists()
    (out / ".shard-000001.tar.x1y2.partial.tar").write_bytes(b"half a shard from a SIGKILLed run")
    done = []
    summary = synthesize(parse_spec(SMALL), out, model=tiny_model, on_shard=lambda k, p: done.append(k))
    assert done == [1, 2] and not summary["up_to_date"]
    assert not list(out.glob(".*partial*"))
    assert_same_output(reference, out)
    members = shard_members(out)
    assert sorted(k for k in members if k.endswith(".png")) == sorted(f"{s.key}.png" for s in sample_list(parse_spec(SMALL)))
    # a finished folder is not redone (no model load, no shard rewritten)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = synthesize(parse_spec(SMALL), out, model=tiny_model)
    assert again["up_to_date"] and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_fill_the_same_folder_as_one(tiny_model, reference, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", SMALL)
    out = tmp_path / "two"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    config = ROOT / "configs" / "accelerate" / "cpu-2proc.yaml"
    launch = [PY, "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port",
              str(_free_port()), "-m", "diffusionsat.cli.launch", "synthesize", "--spec", str(spec), "--out", str(out),
              "--model", str(tiny_model), "--no-progress"]
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("6 samples of 2 classes") == 1  # reported once, by the main process
    assert_same_output(reference, out)


# --- downstream ------------------------------------------------------------------------------------


def test_downstream_reports_both_classifiers_with_intervals(reference, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["downstream", "--train", str(reference), "--test", str(reference), "--real-train", str(reference),
            "--out", str(out), "--size", "16", "--epochs", "1", "--bootstrap", "50"]
    assert main(args) == 0
    assert "synthetic-to-real ratio" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["test_images"] == 6 and report["classes"] == ["harbor", "river"]
    for name in ("synthetic", "real"):
        acc = report[name]["accuracy"]
        assert 0 <= acc["low"] <= acc["value"] <= acc["high"] <= 1 and acc["n"] == 6
        assert set(report[name]["per_class"]) == {"harbor", "river"}
        assert report[name]["train_images"] == 6
    # same data, same seed: the two classifiers are the same, so the ratio is exactly 1
    assert report["synthetic_to_real"]["value"] == pytest.approx(1.0)
    assert "Synthetic-to-real ratio" in (out / "report.md").read_text()
    assert main(args) == 2  # an existing report is not overwritten
    assert "already exists" in capsys.readouterr().err


def test_downstream_strong_augmentation_is_seeded_and_keeps_images_valid():
    import torch

    from diffusionsat.evaluation.downstream import augment

    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, 256, (6, 3, 24, 24), dtype=np.uint8))
    a = augment(batch, torch.Generator().manual_seed(3), "strong")
    b = augment(batch, torch.Generator().manual_seed(3), "strong")
    assert a.shape == (6, 3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b)  # same seed, same augmentation
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    basic = augment(batch, torch.Generator().manual_seed(3), "basic").float() / 255
    assert not torch.allclose(a, basic, atol=0.05)  # crops/jitter change more than the symmetries do
    # crops and blur create no structure: a flat image stays flat (jitter moves its level only)
    flat = torch.full((4, 3, 24, 24), 120, dtype=torch.uint8)
    out = augment(flat, torch.Generator().manual_seed(0), "strong")
    assert float((out - out.mean(dim=(2, 3), keepdim=True)).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="augment='heavy'"):
        augment(batch, torch.Generator(), "heavy")


def test_downstream_cli_records_the_augmentation(reference, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["downstream", "--train", str(reference), "--test", str(reference), "--real-train", str(reference),
            "--out", str(out), "--size", "16", "--epochs", "1", "--bootstrap", "20", "--augment", "strong"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["augment"] == "strong" and "colour jitter" in report["config"]["augmentation"]
    assert "colour jitter" in (out / "report.md").read_text()
    assert main([*args[:-2], "--augment", "heavy", "--overwrite"]) == 2
    assert "heavy" in capsys.readouterr().err


def _fake_ucmerced(root: Path, per_class: int = 5) -> Path:
    import PIL.Image

    from diffusionsat.data.ucmerced import CLASSES

    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(10 * c, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            PIL.Image.fromarray(pixels).save(root / name / f"{name}{i:02d}.png")
    return root


def test_downstream_reads_a_ucmerced_folder_and_derives_the_real_training_split(tmp_path):
    from diffusionsat.evaluation.downstream import (
        DownstreamConfig,
        load_labelled,
        match_counts,
        real_train_source,
    )

    ucm = _fake_ucmerced(tmp_path / "ucm")
    test = load_labelled(ucm, split="heldout", size=16)
    train = load_labelled(ucm, split="train", size=16)
    assert len(test) == 21 and len(train) == 84 and tuple(test.images.shape[1:]) == (3, 16, 16)
    assert not set(test.keys) & set(train.keys)
    cfg = DownstreamConfig(train=tmp_path / "synthetic", test=ucm, out=tmp_path / "r")
    assert real_train_source(cfg) == ucm
    with pytest.raises(ValueError, match="give --real-train"):
        real_train_source(DownstreamConfig(train=ucm, test=tmp_path / "shards", out=tmp_path / "r"))
    few = train.subset([i for i, c in enumerate(train.classes) if c in ("harbor", "river")][:5])
    ia, ib = match_counts(train, few, ["harbor", "river"], seed=0)
    assert len(ia) == len(ib) == 5
    assert sorted(train.classes[i] for i in ia) == sorted(few.classes[i] for i in ib)


def test_downstream_refuses_unlabelled_or_incomplete_training_data(reference, tmp_path, capsys):
    from diffusionsat.data.shards import ShardWriter

    unlabelled = tmp_path / "unlabelled"
    with ShardWriter(unlabelled) as writer:
        for key, entries in list(_members_by_key(reference).items())[:2]:
            record = json.loads(entries["json"])
            record.pop("class")
            writer.write(key, {"png": entries["png"], "json": record})
    args = ["downstream", "--train", str(unlabelled), "--test", str(reference), "--real-train", str(reference),
            "--out", str(tmp_path / "r"), "--size", "16", "--epochs", "1"]
    assert main(args) == 2
    assert "has no 'class'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _members_by_key(folder: Path) -> dict[str, dict[str, bytes]]:
    from diffusionsat.data.shards import iter_tar_samples

    return {k: e for shard in sorted(folder.glob("shard-*.tar")) for k, e in iter_tar_samples(str(shard))}


# --- control maps (masks → image: segmentation pairs) ---------------------------------------------


def write_masks(folder: Path, size: int = 16) -> list[np.ndarray]:
    """Two binary building-style masks (0/255 PNGs): what a user's label rasters look like."""
    import PIL.Image

    folder.mkdir(parents=True, exist_ok=True)
    masks = [np.zeros((size, size), np.uint8), np.zeros((size, size), np.uint8)]
    masks[0][2:7, 3:12] = 255
    masks[1][8:15, 1:6] = 255
    masks[1][1:4, 10:14] = 255
    for i, m in enumerate(masks):
        PIL.Image.fromarray(m).save(folder / f"tile_{i}.png")
    return masks


@pytest.fixture(scope="module")
def control_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a (random) mask ControlNet in ``controlnet_control/``."""
    import shutil

    from diffusionsat.pipelines.pipeline_controlnet import new_task_controlnet
    from diffusionsat.pipelines.pipeline_diffusionsat import DiffusionSatPipeline

    folder = tmp_path_factory.mktemp("control") / "tiny"
    shutil.copytree(tiny_model, folder)
    unet = DiffusionSatPipeline.from_pretrained(folder).unet
    new_task_controlnet(unet, "control").save_pretrained(folder / "controlnet_control")
    return folder


def control_spec(tmp_path: Path) -> dict:
    write_masks(tmp_path / "masks")
    return {"images_per_class": 3, "steps": 1, "batch_size": 4, "shard_size": 4, "seed": 5,
            "classes": {"buildings": {"words": "buildings", "control": {"kind": "mask", "files": "masks"}},
                        "harbor": {"images": 2}}}


def test_control_maps_make_image_mask_pairs(control_model, tmp_path):
    from diffusionsat.data.shards import ShardDataset

    masks = write_masks(tmp_path / "masks")
    spec_path = write_spec(tmp_path / "spec.yaml", control_spec(tmp_path))
    spec = load_spec(spec_path)
    assert spec.classes[0].control.size == (16, 16) and len(spec.classes[0].control.files) == 2
    assert main(["synthesize", "--spec", str(spec_path), "--out", str(tmp_path / "out"), "--model",
                 str(control_model), "--no-progress"]) == 0
    samples = {s["key"]: s for s in ShardDataset(tmp_path / "out", rank=0, world_size=1)}
    assert sorted(samples) == sorted(s.key for s in sample_list(spec))
    for i in range(3):  # sample i of the class is steered by map i % 2, written beside it
        sample = samples[f"buildings-{i:06d}"]
        assert torch_equal(sample["mask"][0], masks[i % 2] > 0)
        assert tuple(sample["pixel_values"].shape) == (3, 16, 16)
        assert sample["record"]["control"]["file"] == f"tile_{i % 2}.png"
        assert sample["record"]["control"]["controlnet"].startswith("tiny/controlnet_control@")
    assert "mask" not in samples["harbor-000000"]
    rows = {r["key"]: r for r in map(json.loads, (tmp_path / "out" / "manifest.jsonl").read_text().splitlines())}
    assert rows["buildings-000001"]["mask"] == "buildings-000001.mask.png" and "mask" not in rows["harbor-000001"]
    # the same spec and maps again (mixed batches: plain and controlled samples) → the same bytes
    assert main(["synthesize", "--spec", str(spec_path), "--out", str(tmp_path / "again"), "--model",
                 str(control_model), "--no-progress"]) == 0
    assert_same_output(tmp_path / "out", tmp_path / "again")
    # other maps under the same names are another spec's data: refused, nothing touched
    import PIL.Image

    PIL.Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "masks" / "tile_0.png")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert main(["synthesize", "--spec", str(spec_path), "--out", str(tmp_path / "out"), "--model",
                 str(control_model)]) == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def torch_equal(tensor, array) -> bool:
    return bool((tensor.numpy() > 0.5).tolist() == np.asarray(array).tolist())


def test_control_needs_a_controlnet_and_controlnet_needs_control(tiny_model, control_model, tmp_path, capsys):
    spec_path = write_spec(tmp_path / "spec.yaml", control_spec(tmp_path))
    assert main(["synthesize", "--spec", str(spec_path), "--out", str(tmp_path / "a"), "--model", str(tiny_model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no ControlNet: pass --controlnet PATH" in err[0]
    plain = write_spec(tmp_path / "plain.yaml", SMALL)
    assert main(["synthesize", "--spec", str(plain), "--out", str(tmp_path / "b"), "--model", str(tiny_model),
                 "--controlnet", str(control_model / "controlnet_control")]) == 2
    assert "no class of the spec has control maps" in capsys.readouterr().err
    # an explicit --controlnet on a model without one
    assert main(["synthesize", "--spec", str(spec_path), "--out", str(tmp_path / "c"), "--model", str(tiny_model),
                 "--controlnet", str(control_model / "controlnet_control"), "--no-progress"]) == 0
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bad_control_specs(tmp_path):
    import PIL.Image

    write_masks(tmp_path / "masks")
    write_masks(tmp_path / "big", size=24)
    (tmp_path / "rgb").mkdir()
    PIL.Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "rgb" / "x.png")
    (tmp_path / "empty").mkdir()

    def fails(control, message, **top):
        data = {"images_per_class": 2, **top, "classes": {"buildings": {"words": "buildings", "control": control}}}
        with pytest.raises(SpecError) as err:
            parse_spec(data, base_dir=tmp_path)
        assert message in str(err.value), str(err.value)

    fails({"kind": "edges", "files": "masks"}, "classes.buildings.control.kind='edges': choose one of mask, road")
    fails({"files": "nowhere"}, "classes.buildings.control.files: ")
    fails({"files": "empty"}, "no map files")
    fails({"kind": "mask"}, "classes.buildings.control.files: missing")
    fails({"files": "masks", "colour": 1}, "classes.buildings.control.colour: unknown key")
    fails({"files": "rgb"}, "x.png has 3 bands; a mask map has 1")
    fails({"files": ["masks/tile_0.png", "big/tile_1.png"]}, "the maps of a class share one size")
    fails({"files": "masks/*.png"}, "the maps are 16x16 px but size=32", size=32)
    spec = parse_spec({"images_per_class": 2, "classes": {"roads": {"words": "roads", "control": {
        "kind": "road", "files": "masks/*.png"}}}}, base_dir=tmp_path)
    assert [s.control_kind for s in sample_list(spec)] == ["road", "road"]
