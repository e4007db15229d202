"""SatMetadata: validation (SPEC §1), date parsing, and the normalisation formula."""

from __future__ import annotations

import math
import random

import pytest
import torch

from diffusionsat import SatMetadata
from diffusionsat.metadata import (
    METADATA_FIELDS,
    MetadataError,
    denormalize_values,
    metadata_tensor,
    normalize_values,
    parse_date,
)


def spec_formula(lon, lat, gsd, cloud, year, month, day):
    """SPEC §1 written out independently of the implementation."""
    return [
        (lon + 180) / 360 * 1000,
        (lat + 90) / 180 * 1000,
        gsd / 1.0 * 1000,
        cloud * 1000,
        (year - 1980) / 120 * 1000,
        month / 12 * 1000,
        day / 31 * 1000,
    ]


def test_normalize_matches_spec_formula():
    md = SatMetadata(lon=-99.2, lat=47.0, gsd=5.0, cloud_cover=0.25, year=2019, month=9, day=4)
    assert md.normalize() == pytest.approx(spec_formula(-99.2, 47.0, 5.0, 0.25, 2019, 9, 4))


def test_normalize_round_trip_random():
    rng = random.Random(0)
    for _ in range(200):
        year, month = rng.randint(1950, 2100), rng.randint(1, 12)
        md = SatMetadata(
            lon=rng.uniform(-179.9, 180), lat=rng.uniform(-89.9, 90), gsd=rng.uniform(0.01, 1000),
            cloud_cover=rng.uniform(0.001, 1), year=year, month=month, day=rng.randint(1, 28),
        )
        if md.year == 1980:
            continue  # normalises to exactly the original "unknown" value 0.0
        back = SatMetadata.denormalize(md.normalize())
        for field in METADATA_FIELDS:
            assert getattr(back, field) == pytest.approx(getattr(md, field), rel=1e-9, abs=1e-9), field


def test_unknown_fields_use_unknown_value_not_zero_degrees():
    md = SatMetadata(lat=10.0)
    values = md.normalize(unknown_value=-100.0)
    assert values[1] == pytest.approx((10 + 90) / 180 * 1000)
    assert [v for i, v in enumerate(values) if i != 1] == [-100.0] * 6
    assert SatMetadata.denormalize(values, unknown_value=-100.0) == md
    assert SatMetadata().normalize() == (0.0,) * 7  # the original's all-unknown vector


def test_functional_forms_are_inverse():
    raw = (12.5, -33.0, 0.3, 0.1, 2021, 6, 15)
    assert denormalize_values(normalize_values(raw)) == pytest.approx(raw)


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ({"lat": 100}, "lat", "[-90, 90]"),
        ({"lat": -90.0001}, "lat", "[-90, 90]"),
        ({"lon": 180.5}, "lon", "[-180, 180]"),
        ({"gsd": 0}, "gsd", "(0, 1000]"),
        ({"gsd": -1}, "gsd", "(0, 1000]"),
        ({"gsd": 1000.1}, "gsd", "(0, 1000]"),
        ({"cloud_cover": 1.5}, "cloud_cover", "[0, 1]"),
        ({"year": 1949}, "year", "[1950, 2100]"),
        ({"month": 13}, "month", "[1, 12]"),
        ({"day": 0}, "day", "[1, 31]"),
        ({"lat": float("nan")}, "lat", "finite"),
        ({"lon": float("inf")}, "lon", "finite"),
        ({"lat": "47"}, "lat", "number"),
        ({"gsd": True}, "gsd", "number"),
        ({"year": 2020.5}, "year", "whole number"),
        ({"date": "2021-02-30"}, "date", "28 days"),
        ({"date": "2020-13-01"}, "date", "date"),
        ({"date": "yesterday"}, "date", "ISO-8601"),
        ({"month": 2, "day": 30}, "day", "calendar"),
        ({"latitude": 3}, "latitude", "unknown metadata field"),
    ],
)
def test_invalid_values_name_field_and_range(data, field, fragment):
    with pytest.raises(MetadataError) as info:
        SatMetadata.from_dict(data)
    assert info.value.field == field
    assert field in str(info.value) and fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bounds_are_inclusive_where_spec_says():
    SatMetadata(lon=-180, lat=90, gsd=1000, cloud_cover=0, year=1950, month=12, day=31)
    SatMetadata(lon=180, lat=-90, cloud_cover=1, year=2100)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-06-15", (2021, 6, 15)),
        ("2021-06-15T10:30:00Z", (2021, 6, 15)),
        ("2021-06-15T10:30:00+02:00", (2021, 6, 15)),
        ("2021-06-15 10:30", (2021, 6, 15)),
        ("2021-06", (2021, 6, None)),
        ("1985", (1985, None, None)),
        ("2020-02-29", (2020, 2, 29)),
    ],
)
def test_parse_iso_dates(text, expected):
    assert parse_date(text) == expected


def test_leap_day_only_in_leap_years():
    SatMetadata.from_dict({"date": "2020-02-29"})
    with pytest.raises(MetadataError, match="February 2019 has 28 days"):
        SatMetadata.from_dict({"date": "2019-02-29"})


def test_dict_json_and_cli_parsing():
    md = SatMetadata.from_dict({"lat": 47, "lon": -99.2, "gsd": 5, "cloud_cover": 0.1, "date": "2019-09-04"})
    assert md.date.isoformat() == "2019-09-04"
    assert SatMetadata.from_dict(md.to_dict()) == md
    assert SatMetadata.from_json('{"lat": 47, "lon": -99.2, "gsd": 5, "cloud_cover": 0.1, "date": "2019-09-04"}') == md
    cli = SatMetadata.from_cli(lat="47", lon="-99.2", gsd="5", cloud_cover="10", date="2019-09-04", cloud_cover_percent=True)
    assert cli == md
    with pytest.raises(MetadataError, match="cloud_cover.*percent"):
        SatMetadata.from_cli(cloud_cover="150", cloud_cover_percent=True)
    with pytest.raises(MetadataError, match="lat='north'"):
        SatMetadata.from_cli(lat="north")
    with pytest.raises(MetadataError, match="JSON"):
        SatMetadata.from_json("{not json")


def test_partial_date_round_trip_and_views():
    md = SatMetadata.from_dict({"date": "1985"})
    assert (md.year, md.month, md.day, md.date) == (1985, None, None, None)
    assert md.date_string() == "1985"
    assert SatMetadata.from_dict(md.to_dict()) == md


def test_resized_scales_gsd():
    md = SatMetadata(gsd=5.0)
    assert md.resized(from_size=256, to_size=64).gsd == pytest.approx(20.0)
    assert SatMetadata().resized(256, 64).gsd is None


def test_metadata_tensor_shapes_and_values():
    rows = [SatMetadata(lat=0.0), {"lon": 0.0}, None]
    tensor = metadata_tensor(rows, unknown_value=-1.0)
    assert tensor.shape == (3, 7) and tensor.dtype == torch.float32
    assert tensor[0, 1].item() == pytest.approx(500.0)
    assert tensor[1, 0].item() == pytest.approx(500.0)
    assert torch.all(tensor[2] == -1.0)
    assert math.isclose(tensor[0, 0].item(), -1.0)
