"""Honest automatic captions: country, season, scale, land cover, per-part dropout."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from diffusionsat.data import (
    FMOW_TEMPLATE,
    CaptionTemplate,
    DataError,
    build_caption,
    country_at,
    land_cover_words,
    season,
)
from diffusionsat.metadata import SatMetadata


def test_country_from_shipped_polygons_and_user_file(shared_data):
    assert country_at(-74.44, -8.43) == "Peru"
    assert country_at(14.56, 45.87) == "Slovenia"
    assert country_at(-30.0, 30.0) is None  # Atlantic
    assert country_at(-74.44, -8.43, shared_data / "world/countries.json") == "Peru"


def test_bad_country_file_is_named(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text("{")
    with pytest.raises(DataError, match="c.json: unreadable JSON"):
        country_at(1.0, 1.0, bad)


def test_season_by_hemisphere_and_none_in_tropics():
    assert season(7, 47.0) == "summer" and season(7, -40.0) == "winter"
    assert season(1, -40.0) == "summer" and season(10, 47.0) == "autumn"
    assert season(7, -8.4) is None and season(None, 47.0) is None


def test_missing_fields_leave_out_their_words():
    text = build_caption(SatMetadata(), land_cover=None)
    assert text == "a satellite image"
    text = build_caption(SatMetadata(lon=-99.2, lat=47.0, gsd=5.0, year=2019, month=9, day=4), sensor="NAIP")
    assert text == "a satellite image in United States of America in autumn from NAIP at 5 m resolution"


def test_fmow_template_article_and_dropout():
    meta = SatMetadata(lon=-99.2, lat=47.0)
    assert build_caption(meta, template=FMOW_TEMPLATE, class_name="airport") == \
        "a satellite image of an airport in United States of America"
    template = CaptionTemplate(FMOW_TEMPLATE)
    fields = {"class": "dam", "country": "Peru"}
    rng = random.Random(0)
    texts = {template.render(fields, dropout=0.5, rng=rng) for _ in range(200)}
    assert texts == {"a satellite image", "a satellite image of a dam", "a satellite image in Peru",
                     "a satellite image of a dam in Peru"}
    assert template.render(fields, dropout=1.0) == "a satellite image"
    with pytest.raises(ValueError, match=r"dropout=1.5 out of range; allowed \[0, 1\]"):
        template.render(fields, dropout=1.5)


def test_land_cover_from_ndvi_ndwi():
    veg = land_cover_words(red=np.full((8, 8), 20), nir=np.full((8, 8), 120), green=np.full((8, 8), 40))
    water = land_cover_words(red=np.full((8, 8), 30), nir=np.full((8, 8), 10), green=np.full((8, 8), 60))
    assert veg == "dense vegetation" and water == "water"


def test_land_cover_on_real_naip_and_sentinel2(shared_data):
    from diffusionsat.data import Sentinel2Scene, open_raster, read_chip

    chip = read_chip(open_raster(shared_data / "naip-timeseries/m_4709963_se_14_1_20160816.tif",
                                 band_names="red,green,blue,nir"), (0, 0, 256, 256))
    assert chip.caption_fields["land_cover"] is not None
    scene = Sentinel2Scene(shared_data / "sentinel2-slovenia/reference_scene_4.tif")
    g, r, n = scene.read(["B03", "B04", "B08"])
    assert land_cover_words(r, n, g) == "dense vegetation"  # median NDVI ≈ 0.74 in this summer scene
    assert json.dumps(chip.caption_fields)  # JSON-serialisable for shards
