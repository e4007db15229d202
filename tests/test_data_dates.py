"""Dates and cloud cover from file names, Landsat IDs, MTL files, sidecars and tags."""

from __future__ import annotations

import json
import shutil

import pytest

from diffusionsat.data import (
    DataError,
    acquisition_from_mtl,
    date_for_file,
    date_from_pattern,
    landsat_id_date,
)
from diffusionsat.data.dates import acquisition_from_tags, find_mtl

NAIP_DATES = ["2009-08-18", "2010-06-29", "2012-07-31", "2014-07-20", "2015-09-26", "2016-08-16",
              "2017-08-27", "2018-07-16", "2019-09-04"]


def test_naip_dates_from_user_pattern(shared_data):
    files = sorted((shared_data / "naip-timeseries").glob("*.tif"))
    dates = []
    for f in files:
        acq = date_for_file(f, date_pattern="*_{YYYYMMDD}.tif")
        dates.append(f"{acq.year:04d}-{acq.month:02d}-{acq.day:02d}")
    assert dates == NAIP_DATES


def test_year_only_pattern_gives_a_partial_date(shared_data):
    acq = date_for_file(shared_data / "landsat-timeseries/1985.tif", date_pattern="{YYYY}.tif")
    assert (acq.year, acq.month, acq.day) == (1985, None, None)


def test_pattern_that_does_not_match_leaves_date_unknown():
    assert date_from_pattern("scene.tif", "*_{YYYYMMDD}.tif") is None


def test_impossible_date_in_name_is_an_error(tmp_path):
    path = tmp_path / "tile_20190231.tif"
    path.touch()
    with pytest.raises(DataError, match=r"tile_20190231.tif.*February 2019 has 28 days"):
        date_for_file(path, date_pattern="*_{YYYYMMDD}.tif")


def test_unknown_placeholder_is_named():
    with pytest.raises(ValueError, match=r"\{YY\}.*allowed"):
        date_from_pattern("a_19.tif", "*_{YY}.tif")


def test_landsat_scene_id_year_and_day_of_year(shared_data):
    acq = date_for_file(shared_data / "landsat8-bands/LC81070352015122LGN00_B2.tif")
    assert (acq.year, acq.month, acq.day, acq.sensor) == (2015, 5, 2, "Landsat 8")
    acq = date_for_file(shared_data / "landsat8-bands/LC81210442015044LGN00_B4.tif")
    assert (acq.year, acq.month, acq.day) == (2015, 2, 13)


def test_landsat_collection_product_ids(shared_data):
    acq = landsat_id_date("LE07_L2SP_225078_20110306_02_T1_B1.tif")
    assert (acq.year, acq.month, acq.day, acq.sensor) == (2011, 3, 6, "Landsat 7")
    acq = date_for_file(shared_data / "planetscope-like/LC08_L1TP_224077_20200518_20200518_01_RT_B2_60m.TIF")
    assert (acq.year, acq.month, acq.day) == (2020, 5, 18)
    assert acq.cloud_cover is None  # the MTL beside it describes another scene (224078, 2020-01-27)


def test_mtl_cloud_cover_and_date(shared_data, tmp_path):
    mtl = next((shared_data / "planetscope-like").glob("*_MTL.txt"))
    acq = acquisition_from_mtl(mtl)
    assert (acq.year, acq.month, acq.day) == (2020, 1, 27)
    assert acq.cloud_cover == pytest.approx(0.0724)
    # An image of the same scene beside the MTL picks it up.
    shutil.copy(mtl, tmp_path / mtl.name)
    image = tmp_path / "LC08_L2SP_224078_20200127_20200823_02_T1_SR_B4.TIF"
    image.touch()
    assert find_mtl(image) == tmp_path / mtl.name
    assert date_for_file(image).cloud_cover == pytest.approx(0.0724)


def test_not_an_mtl_file_is_named(shared_data):
    with pytest.raises(DataError, match="README.md: not a Landsat MTL"):
        acquisition_from_mtl(shared_data / "README.md")


def test_sidecar_json_date_and_cloud_cover(tmp_path):
    image = tmp_path / "x.tif"
    image.touch()
    (tmp_path / "x.json").write_text(json.dumps({"timestamp": "2021-06-15T10:00:00Z", "cloud_cover": 0.25}))
    acq = date_for_file(image)
    assert (acq.year, acq.month, acq.day, acq.cloud_cover) == (2021, 6, 15, 0.25)


def test_unreadable_sidecar_names_the_file(tmp_path):
    image = tmp_path / "x.tif"
    image.touch()
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DataError, match=r"x.json: unreadable JSON"):
        date_for_file(image)


def test_tiff_write_time_is_not_an_acquisition_date(shared_data):
    import rasterio

    with rasterio.open(shared_data / "geotiff-samples/all-nodata.tif") as src:
        tags = src.tags()
    assert "TIFFTAG_DATETIME" in tags
    assert acquisition_from_tags(tags) is None
    assert acquisition_from_tags({"ACQUISITION_DATE": "2020:05:18 10:00:00"}).month == 5
