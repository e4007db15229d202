"""``diffusionsat prepare-data`` end to end on real files: shards, manifest, summary, bad inputs."""

from __future__ import annotations

import json

import numpy as np

from diffusionsat.cli.main import main
from diffusionsat.data import ShardDataset


def _run(capsys, *args):
    code = main(["prepare-data", *map(str, args), "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prepare_generate_naip_with_bad_inputs_reported(shared_data, tmp_path, capsys):
    out = tmp_path / "prepared"
    naip = sorted((shared_data / "naip-timeseries").glob("*.tif"))[:2]
    bad = [shared_data / "geotiff-samples/corrupt.tif", shared_data / "geotiff-samples/all-nodata.tif",
           shared_data / "spacenet-samples/sample_fp_mask.tif", tmp_path / "missing.tif"]
    code, stdout, stderr = _run(capsys, *naip, *bad, "--out", out, "--chip-size", 256, "--resize", 32,
                                "--date-pattern", "*_{YYYYMMDD}.tif", "--shard-size", 5, "--sensor", "NAIP")
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 12 and summary["files_used"] == 2 and len(summary["shards"]) == 3
    reasons = {item["path"].rsplit("/", 1)[-1]: item["reason"] for item in summary["skipped"]}
    assert "damaged" in reasons["corrupt.tif"] and "every pixel is nodata" in reasons["all-nodata.tif"]
    assert "no georeference" in reasons["sample_fp_mask.tif"] and reasons["missing.tif"] == "not found"
    for name in reasons:
        assert f"skipped {next(i['path'] for i in summary['skipped'] if i['path'].endswith(name))}" in stderr
    assert summary["metadata_ranges"]["date"] == ["2009-08-18", "2010-06-29"]
    assert summary["metadata_ranges"]["gsd"] == [40.0, 40.0]  # 5 m × 256 / 32
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["shard"] for r in rows} == set(summary["shards"])
    samples = list(ShardDataset(out, rank=0, world_size=1))
    assert sorted(s["key"] for s in samples) == sorted(r["key"] for r in rows)
    assert samples[0]["pixel_values"].shape == (4, 32, 32) and "from NAIP" in samples[0]["caption"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    # Idempotent: same settings → nothing redone; other settings → refused without --overwrite.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, stdout, _ = _run(capsys, *naip, *bad, "--out", out, "--chip-size", 256, "--resize", 32,
                           "--date-pattern", "*_{YYYYMMDD}.tif", "--shard-size", 5, "--sensor", "NAIP")
    assert code == 0 and "already up to date" in stdout
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, stderr = _run(capsys, *naip, "--out", out, "--chip-size", 128)
    assert code == 2 and "other settings" in stderr


def test_prepare_nothing_usable_is_bad_input(shared_data, tmp_path, capsys):
    code, _, stderr = _run(capsys, shared_data / "geotiff-samples/all-nodata.tif", "--out", tmp_path / "o",
                           "--chip-size", 64)
    assert code == 2 and "all-nodata.tif: every pixel is nodata" in stderr and "no samples" in stderr


def test_prepare_superres_and_inpaint_tasks(shared_data, tmp_path, capsys):
    sn = shared_data / "spacenet-samples"
    code, _, err = _run(capsys, sn / "pan1.tif", "--lowres", sn / "ms1.tif", "--task", "superres", "--out",
                        tmp_path / "sr", "--chip-size", 300)
    assert code == 0, err
    sample = next(iter(ShardDataset(tmp_path / "sr", rank=0, world_size=1)))
    assert sample["pixel_values"].shape == (1, 300, 300)
    assert sample["conditioning_pixel_values"].shape == (4, 150, 150)
    code, _, err = _run(capsys, sn / "sample_geotiff.tif", "--task", "inpaint", "--mask-vector",
                        sn / "sample_geotiff_buildings.geojson", "--out", tmp_path / "ip", "--chip-size", 450)
    assert code == 0, err
    masks = [s["mask"] for s in ShardDataset(tmp_path / "ip", rank=0, world_size=1)]
    assert len(masks) == 4 and all(m.shape == (1, 450, 450) for m in masks) and sum(float(m.sum()) for m in masks) > 0


def test_prepare_temporal_task(shared_data, tmp_path, capsys):
    code, _, err = _run(capsys, shared_data / "landsat-timeseries", "--task", "temporal", "--num-frames", 3,
                        "--date-pattern", "{YYYY}.tif", "--out", tmp_path / "t", "--chip-size", 256, "--resize", 32)
    assert code == 0, err
    samples = list(ShardDataset(tmp_path / "t", rank=0, world_size=1))
    assert len(samples) == 2
    s = samples[0]
    assert s["conditioning_pixel_values"].shape == (2, 4, 32, 32)
    assert [m.year for m in s["conditioning_metadata"]] == [2005, 2010] and s["metadata"].year == 2015
    assert np.isfinite(s["pixel_values"].numpy()).all()


def test_prepare_fmow_tree_and_manifest(shared_data, tmp_path, capsys):
    import PIL.Image
    import rasterio

    with rasterio.open(shared_data / "spacenet-samples/rgb_unmasked.tif") as src:
        rgb = np.moveaxis(src.read(), 0, -1)[:48, :48]
    tree = tmp_path / "fmow" / "airport"
    tree.mkdir(parents=True)
    PIL.Image.fromarray(rgb).save(tree / "airport_1_rgb.png")
    (tree / "airport_1_rgb.json").write_text(json.dumps(
        {"gsd": 0.6, "cloud_cover": 0, "timestamp": "2017-05-01T00:00:00Z", "lat": -8.4, "lon": -74.4,
         "bounding_boxes": [{"category": "airport"}]}))
    PIL.Image.fromarray(rgb).save(tree / "broken_rgb.png")
    (tree / "broken_rgb.json").write_text("{oops")
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,caption,lat,lon,gsd,cloud_cover,date\n"
                        f"{shared_data / 'spacenet-samples/rgb_unmasked.tif'},a harbour,5.3,-4.0,4.5,,2017-01-02\n"
                        "nowhere.tif,x,,,,,\n")
    code, _, err = _run(capsys, tmp_path / "fmow", manifest, "--out", tmp_path / "o", "--chip-size", 64,
                        "--shard-size", 1)
    assert code == 0, err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["samples"] == 2 and len(summary["shards"]) == 2
    reasons = " | ".join(f"{s['path']}: {s['reason']}" for s in summary["skipped"])
    assert "broken_rgb.json: unreadable JSON" in reasons and "row 2: path 'nowhere.tif' points nowhere" in reasons
    captions = sorted(s["caption"] for s in ShardDataset(tmp_path / "o", rank=0, world_size=1))
    assert captions == ["a harbour", "a satellite image of an airport in Peru"]


def test_prepare_wrong_band_selection_is_reported(shared_data, tmp_path, capsys):
    code, _, err = _run(capsys, shared_data / "geotiff-samples/shade.tif", shared_data / "planetscope-like/rgbn.tif",
                        "--bands", "1,2,3", "--out", tmp_path / "o", "--chip-size", 128)
    assert code == 0
    assert "shade.tif: band 2 requested but the file has 1 band (allowed 1–1)" in err
