"""Sentinel-2, fMoW-style and manifest inputs on real files; their bad-input cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from diffusionsat.data import (
    DataError,
    FMoWDataset,
    ManifestDataset,
    Sentinel2Chips,
    Sentinel2Scene,
    read_manifest,
    to_reflectance,
    write_manifest,
)
from diffusionsat.data.sentinel2 import normalize_band_name

S2 = "sentinel2-slovenia/reference_scene_2.tif"


def test_sentinel2_named_bands_and_metadata(shared_data):
    scene = Sentinel2Scene(shared_data / S2)
    assert len(scene.bands) == 13 and "B8A" in scene.bands
    rgb = scene.read(["B04", "b3", "B02"])
    with rasterio.open(shared_data / S2) as src:
        assert np.array_equal(rgb[0], src.read(4)) and np.array_equal(rgb[1], src.read(3))
    meta = scene.metadata()
    assert meta.gsd == pytest.approx(10.0, rel=1e-3) and 45.8 < meta.lat < 45.95
    ds = Sentinel2Chips([shared_data / S2], 32, bands=["B08", "B04", "B03", "B02"])
    sample = ds[0]
    assert len(ds) == 9 and sample["pixel_values"].shape == (4, 32, 32)
    assert "Slovenia" in sample["caption"] and "Sentinel-2" in sample["caption"]


def test_sentinel2_20m_band_files_are_resampled_to_10m_grid(shared_data, tmp_path):
    with rasterio.open(shared_data / S2) as src:
        profile = src.profile | {"count": 1}
        b02, b05 = src.read(2), src.read(5)
        b05_20m = b05[:100, :].reshape(50, 2, 50, 2).mean(axis=(1, 3)).astype(np.float32)
        folder = tmp_path / "GRANULE"
        folder.mkdir()
        with rasterio.open(folder / "T33TVM_B02_10m.tif", "w", **profile) as dst:
            dst.write(b02, 1)
        p20 = profile | {"width": 50, "height": 50, "transform": src.transform @ rasterio.Affine.scale(2)}
        with rasterio.open(folder / "T33TVM_B05_20m.tif", "w", **p20) as dst:
            dst.write(b05_20m, 1)
    scene = Sentinel2Scene(folder)
    assert scene.bands == ["B02", "B05"] and (scene.height, scene.width) == (101, 100)
    out = scene.read(["B05"], window=(0, 0, 100, 100))
    assert out.shape == (1, 100, 100)
    assert np.abs(out[0] - b05[:100]).mean() < 0.02  # back on the 10 m grid, close to the original


def test_sentinel2_scaling_and_band_names():
    assert to_reflectance(np.array([10000], np.uint16))[0] == pytest.approx(1.0)
    assert to_reflectance(np.array([2000], np.uint16), offset=-1000)[0] == pytest.approx(0.1)
    assert normalize_band_name("b8a") == "B8A" and normalize_band_name("8") == "B08"
    with pytest.raises(ValueError, match="B13.*not a Sentinel-2 band"):
        normalize_band_name("B13")


def test_sentinel2_wrong_band_count(shared_data):
    with pytest.raises(DataError, match=r"RGB.byte.tif: has 3 bands without Sentinel-2 band names; expected 13"):
        Sentinel2Scene(shared_data / "geotiff-samples/RGB.byte.tif")


@pytest.fixture
def fmow_dir(shared_data, tmp_path):
    import PIL.Image

    with rasterio.open(shared_data / "spacenet-samples/rgb_unmasked.tif") as src:
        rgb = np.moveaxis(src.read(), 0, -1)[:64, :64]
    folder = tmp_path / "fmow" / "port"
    folder.mkdir(parents=True)
    PIL.Image.fromarray(rgb).save(folder / "port_0_rgb.jpg")
    (folder / "port_0_rgb.json").write_text(json.dumps({
        "gsd": 4.5, "cloud_cover": 12, "timestamp": "2016-03-04T10:20:30Z",
        "raw_location": "POLYGON ((2.30 48.80, 2.31 48.80, 2.31 48.81, 2.30 48.81, 2.30 48.80))",
        "bounding_boxes": [{"category": "port", "box": [0, 0, 10, 10]}],
    }))
    return tmp_path / "fmow"


def test_fmow_sample_metadata_and_caption(fmow_dir):
    ds = FMoWDataset(fmow_dir)
    sample = ds[0]
    meta = sample["metadata"]
    assert meta.cloud_cover == pytest.approx(0.12) and meta.date_string() == "2016-03-04"
    assert meta.lon == pytest.approx(2.305) and meta.lat == pytest.approx(48.805)
    assert sample["caption"] == "a satellite image of a port in France"
    assert sample["pixel_values"].shape == (3, 64, 64)
    assert ds.captions() == ["a satellite image of a port in France"]
    dropped = FMoWDataset(fmow_dir, caption_dropout=1.0)[0]["caption"]
    assert dropped == "a satellite image"


def test_fmow_unreadable_json(fmow_dir):
    (fmow_dir / "port" / "port_0_rgb.json").write_text('{"gsd": 4.5,')
    with pytest.raises(DataError, match=r"port_0_rgb.json: unreadable JSON"):
        FMoWDataset(fmow_dir)
    ds = FMoWDataset(fmow_dir, on_error="skip")
    assert len(ds) == 0 and "unreadable JSON" in ds.skipped[0][1]


def test_fmow_out_of_range_value_names_field(fmow_dir):
    (fmow_dir / "port" / "port_0_rgb.json").write_text(json.dumps({"gsd": -1}))
    with pytest.raises(DataError, match=r"port_0_rgb.json: gsd=-1.*\(0, 1000\]"):
        FMoWDataset(fmow_dir)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_formats_round_trip(shared_data, tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow", reason="Parquet manifests need pyarrow (the 'train' extra)")
    rows = [{"path": str(shared_data / "spacenet-samples/rgb_unmasked.tif"), "caption": "a port", "lat": 5.3,
             "lon": -4.0, "gsd": 4.5, "cloud_cover": None, "date": "2017-01-02"},
            {"path": str(shared_data / "geotiff-samples/shade.tif"), "caption": None, "lat": None, "lon": None,
             "gsd": None, "cloud_cover": 0.1, "date": "1999"}]
    path = write_manifest(rows, tmp_path / f"m{suffix}")
    parsed = read_manifest(path)
    assert [r.metadata.to_dict() for r in parsed] == [{"lat": 5.3, "lon": -4.0, "gsd": 4.5, "date": "2017-01-02"},
                                                       {"cloud_cover": 0.1, "year": 1999}]
    ds = ManifestDataset([path])
    assert len(ManifestDataset(path)) == 2
    assert ds[0]["caption"] == "a port" and ds[0]["pixel_values"].shape == (3, 200, 200)
    assert ds[1]["caption"] == "a satellite image"  # nothing known → nothing claimed
    assert ds.captions() == [ds[0]["caption"], ds[1]["caption"]]


def test_manifest_row_pointing_nowhere(shared_data, tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(f"path,caption,lat,lon,gsd,cloud_cover,date\n{shared_data / 'geotiff-samples/shade.tif'},,,,,,\n"
                    "missing/scene.tif,x,1,2,3,,\n")
    with pytest.raises(DataError, match=r"m.csv: row 2: path 'missing/scene.tif' points nowhere"):
        read_manifest(path)
    skipped = []
    assert len(read_manifest(path, on_error="skip", skipped=skipped)) == 1
    assert "row 2" in skipped[0].reason


def test_manifest_bad_value_names_row_and_field(tmp_path, shared_data):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"path": str(shared_data / "geotiff-samples/shade.tif"), "lat": 95}) + "\n")
    with pytest.raises(DataError, match=r"m.jsonl: row 1: lat=95.*\[-90, 90\]"):
        read_manifest(path)
