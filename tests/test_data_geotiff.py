"""GeoTIFF scenes → chips on the real rasters: counts, shapes, metadata, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusionsat.data import (
    DataError,
    GeoTiffChips,
    chip_windows,
    collate_samples,
    iter_chips,
    open_raster,
    read_chip,
)
from diffusionsat.metadata import metadata_tensor

NAIP = "naip-timeseries/m_4709963_se_14_1_20190904.tif"


def test_chip_grid_counts():
    assert len(chip_windows(934, 723, 256)) == 3 * 2
    assert len(chip_windows(934, 723, 128, stride=64)) == 13 * 10
    assert chip_windows(100, 100, 128) == []
    with pytest.raises(ValueError, match="chip_size=0"):
        chip_windows(10, 10, 0)


def test_naip_chips_counts_shapes_and_metadata(shared_data):
    ds = GeoTiffChips(shared_data / NAIP, 256, resize_to=64, date_pattern="*_{YYYYMMDD}.tif")
    assert len(ds) == 6
    sample = ds[0]
    assert sample["pixel_values"].shape == (4, 64, 64)
    assert sample["pixel_values"].dtype == torch.float32
    assert float(sample["pixel_values"].min()) >= -1.0 and float(sample["pixel_values"].max()) <= 1.0
    meta = sample["metadata"]
    assert meta.gsd == pytest.approx(5.0 * 256 / 64)  # GSD scales with the resize
    assert meta.date_string() == "2019-09-04"
    assert 46.9 < meta.lat < 47.1 and -99.3 < meta.lon < -99.0
    assert "United States" in sample["caption"] and "autumn" in sample["caption"]
    batch = collate_samples([ds[0], ds[1]])
    assert batch["pixel_values"].shape == (2, 4, 64, 64)
    assert metadata_tensor(batch["metadata"]).shape == (2, 7)


def test_band_selection_names_and_land_cover(shared_data):
    info = open_raster(shared_data / NAIP, bands="1,2,3,4", band_names="red,green,blue,nir")
    chip = read_chip(info, (0, 0, 128, 128))
    assert chip.image.shape == (4, 128, 128) and chip.image.dtype == np.uint8
    assert chip.caption_fields["land_cover"]  # NDVI/NDWI words when a NIR band is named
    rgb = open_raster(shared_data / NAIP, bands=[1, 2, 3])
    assert read_chip(rgb, (0, 0, 64, 64)).image.shape == (3, 64, 64)


def test_uint16_scene_keeps_dtype_and_uses_scene_percentiles(shared_data):
    info = open_raster(shared_data / "landsat8-bands/LC81070352015122LGN00_B4.tif")
    chip = read_chip(info, (512, 512, 128, 128))
    assert chip.image.dtype == np.uint16 and chip.image.shape == (1, 128, 128)
    assert info.pixel_range[1][0] > 255
    assert chip.metadata.gsd == pytest.approx(150.0, rel=1e-3)
    assert "Landsat 8" in chip.caption and "Japan" in chip.caption


def test_float_multiband_and_crs_without_epsg(shared_data):
    info = open_raster(shared_data / "spacenet-samples/ms1.tif")
    assert info.dtype == "float64" and len(info.bands) == 4
    chip = read_chip(info, (0, 0, 64, 64))
    assert chip.to_sample()["pixel_values"].shape == (4, 64, 64)
    info = open_raster(shared_data / "geotiff-samples/rgb1.tif")
    chip = read_chip(info, (0, 0, 128, 128))
    assert chip.metadata.lat is not None and chip.metadata.gsd == pytest.approx(300.04, rel=1e-3)


def test_mostly_nodata_chips_are_skipped_and_counted(shared_data):
    info = open_raster(shared_data / "geotiff-samples/RGB.byte.tif")
    skipped: list[str] = []
    kept = list(iter_chips(info, 128, max_nodata=0.5, skipped=skipped))
    assert len(kept) + len(skipped) == len(chip_windows(791, 718, 128))
    assert skipped and all("nodata" in s for s in skipped)
    assert all(c.valid.mean() >= 0.5 for c in kept)
    strict = list(iter_chips(info, 128, max_nodata=0.0))
    assert len(strict) < len(kept)


def test_gsd_beyond_model_range_is_recorded_unknown(shared_data):
    info = open_raster(shared_data / "geotiff-samples/world.rgb.tif")
    chip = read_chip(info, (0, 0, 128, 128))
    assert chip.metadata.gsd is None and "outside the model" in chip.extra["notes"][0]


# --- bad input -----------------------------------------------------------------------------------


def test_corrupt_tif_names_file_and_problem(shared_data):
    info = open_raster(shared_data / "geotiff-samples/corrupt.tif")  # opens: headers are fine
    with pytest.raises(DataError, match=r"corrupt.tif: cannot read pixels .*damaged"):
        list(iter_chips(info, 256))


def test_all_nodata_raster(shared_data):
    with pytest.raises(DataError, match=r"all-nodata.tif: every pixel is nodata"):
        open_raster(shared_data / "geotiff-samples/all-nodata.tif")


def test_raster_without_georeference(shared_data):
    with pytest.raises(DataError, match=r"sample_fp_mask.tif: no georeference"):
        open_raster(shared_data / "spacenet-samples/sample_fp_mask.tif")


def test_wrong_band_count(shared_data):
    with pytest.raises(DataError, match=r"shade.tif: band 3 requested but the file has 1 band \(allowed 1–1\)"):
        open_raster(shared_data / "geotiff-samples/shade.tif", bands="1,3")
    with pytest.raises(DataError, match=r"shade.tif: has 1 band, expected 3"):
        open_raster(shared_data / "geotiff-samples/shade.tif", expected_bands=3)
    with pytest.raises(DataError, match=r"RGB.byte.tif: band 'B08' not found"):
        open_raster(shared_data / "geotiff-samples/RGB.byte.tif", bands="B08")


def test_missing_file_and_batch_skip(shared_data, tmp_path):
    with pytest.raises(DataError, match="nope.tif: file not found"):
        open_raster(tmp_path / "nope.tif")
    ds = GeoTiffChips([shared_data / "geotiff-samples/all-nodata.tif", shared_data / "geotiff-samples/shade.tif"],
                      512, max_nodata=0.8, on_error="skip")
    assert len(ds) == 1  # shade.tif is 88 % nodata; only its top-right quarter has > 20 % valid pixels
    assert ds.skipped == [(str(shared_data / "geotiff-samples/all-nodata.tif"), "every pixel is nodata (nodata=0.0)")]


def test_single_band_files_of_a_scene_are_stacked(shared_data):
    from diffusionsat.data.geotiff import BandStack, find_rasters

    items = find_rasters([shared_data / "landsat8-bands"], stack_bands=True)
    assert [type(i) for i in items] == [BandStack, BandStack]
    assert items[0].bands == ("B2", "B3", "B4")
    info = open_raster(items[0], bands="B4,B3,B2")
    chip = read_chip(info, (256, 256, 128, 128))
    assert chip.key == "LC81070352015122LGN00_c256_r256_s128"
    assert chip.image.shape == (3, 128, 128) and chip.image.dtype == np.uint16
    assert chip.metadata.date_string() == "2015-05-02" and "Landsat 8" in chip.caption
    import rasterio

    with rasterio.open(shared_data / "landsat8-bands/LC81070352015122LGN00_B4.tif") as src:
        red = src.read(1, window=((256, 384), (256, 384)))
    assert np.array_equal(chip.image[0], red)
    assert len(find_rasters([shared_data / "landsat8-bands"])) == 6  # stacking is opt-in here


def test_sentinel2_bands_use_a_fixed_reflectance_scale(shared_data):
    info = open_raster(shared_data / "sentinel2-slovenia/reference_scene_3.tif", bands="B04,B03,B02,B08")
    assert info.pixel_range == ([0.0] * 4, [0.3] * 4)
    chip = read_chip(info, (0, 0, 64, 64))
    assert "Sentinel-2" in chip.caption and "vegetation" in chip.caption


def test_landsat_fill_zero_is_nodata_and_user_nodata(shared_data):
    path = shared_data / "planetscope-like/LC08_L1TP_224077_20200518_20200518_01_RT_B2_60m.TIF"
    import rasterio

    with rasterio.open(path) as src:
        assert src.nodata is None
        zeros = float((src.read(1) == 0).mean())
    info = open_raster(path)
    assert info.nodata == 0.0 and info.pixel_range[0][0] > 0  # the black border does not set the scale
    assert zeros > 0.02  # without the fill value, the 2nd percentile would be 0
    from diffusionsat.data.geotiff import find_rasters

    scene = open_raster(find_rasters([shared_data / "landsat8-bands"], stack_bands=True)[0])
    skipped: list[str] = []
    kept = list(iter_chips(scene, 128, skipped=skipped))
    assert scene.nodata == 0.0 and len(skipped) > 20  # the rotated scene's black corners
    assert all(c.valid.mean() >= 0.5 for c in kept)
    # A user value for a file without one: rgbn.tif has no nodata; 0 never occurs in it → all valid.
    rgbn = open_raster(shared_data / "planetscope-like/rgbn.tif", nodata=0)
    assert rgbn.nodata == 0.0 and read_chip(rgbn, (0, 0, 64, 64)).valid.all()
    assert open_raster(shared_data / "planetscope-like/rgbn.tif").nodata is None


def test_captions_without_reading_pixels_match_the_samples(shared_data):
    ds = GeoTiffChips(shared_data / NAIP, 256, resize_to=32, date_pattern="*_{YYYYMMDD}.tif", sensor="NAIP")
    assert ds.captions() == [ds[i]["caption"] for i in range(len(ds))]
    named = GeoTiffChips(shared_data / NAIP, 256, band_names="red,green,blue,nir")
    assert named.captions() == [named[i]["caption"] for i in range(len(named))]
