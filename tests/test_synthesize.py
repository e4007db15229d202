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
