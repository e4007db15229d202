"""Geo helpers on the real rasters: chip centres, GSD in UTM / Web-Mercator / EPSG:4326, outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp_transform

from diffusionsat import geo

WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3


def _independent_centre(path, col, row, size):
    with rasterio.open(path) as src:
        x, y = src.xy(row + size / 2 - 0.5, col + size / 2 - 0.5, offset="center")
        lons, lats = warp_transform(src.crs, "EPSG:4326", [x], [y])
    return lons[0], lats[0]


@pytest.mark.parametrize("rel", ["naip-timeseries/m_4709963_se_14_1_20190904.tif", "geotiff-samples/rgb1.tif",
                                 "landsat-timeseries/2015.tif", "geotiff-samples/cogeo.tif"])
def test_window_centre_matches_rasterio_warp(shared_data, rel):
    path = shared_data / rel
    with rasterio.open(path) as src:
        lon, lat = geo.window_center_lonlat(src.crs, src.transform, 128, 64, 128, 128)
    ref_lon, ref_lat = _independent_centre(path, 128, 64, 128)
    assert lon == pytest.approx(ref_lon, abs=1e-7) and lat == pytest.approx(ref_lat, abs=1e-7)


def test_crs_without_epsg_is_labelled_by_name(shared_data):
    with rasterio.open(shared_data / "geotiff-samples/rgb1.tif") as src:
        assert src.crs.to_epsg() is None
        assert "UTM" in geo.crs_label(src.crs)


def test_gsd_utm_is_the_pixel_size(shared_data):
    with rasterio.open(shared_data / "naip-timeseries/m_4709963_se_14_1_20190904.tif") as src:
        lon, lat = geo.window_center_lonlat(src.crs, src.transform, 0, 0, src.width, src.height)
        assert geo.gsd_metres(src.crs, src.transform, lon, lat) == pytest.approx(5.0, rel=1e-9)


def test_gsd_web_mercator_is_scaled_by_latitude(shared_data):
    with rasterio.open(shared_data / "geotiff-samples/cogeo.tif") as src:
        assert src.crs.to_epsg() == 3857
        lon, lat = geo.window_center_lonlat(src.crs, src.transform, 0, 0, src.width, src.height)
        gsd = geo.gsd_metres(src.crs, src.transform, lon, lat)
        # Spherical Mercator: ground distance = map distance × cos(lat).
        assert gsd == pytest.approx(src.res[0] * math.cos(math.radians(lat)), rel=2e-3)
        assert gsd < 0.8 * src.res[0]


def test_gsd_geographic_from_ellipsoid_radii(shared_data):
    with rasterio.open(shared_data / "landsat-timeseries/2015.tif") as src:
        assert src.crs.to_epsg() == 4326
        lon, lat = geo.window_center_lonlat(src.crs, src.transform, 0, 0, src.width, src.height)
        gsd = geo.gsd_metres(src.crs, src.transform, lon, lat)
        phi = math.radians(lat)
        w = 1 - WGS84_E2 * math.sin(phi) ** 2
        n_radius, m_radius = WGS84_A / math.sqrt(w), WGS84_A * (1 - WGS84_E2) / w ** 1.5
        dx = n_radius * math.cos(phi) * math.radians(src.res[0])
        dy = m_radius * math.radians(src.res[1])
        assert gsd == pytest.approx(math.sqrt(dx * dy), rel=1e-4)
        assert 85 < gsd < 92  # 0.0008° near 8°S


def test_gsd_of_geographic_crs_needs_a_location(shared_data):
    with rasterio.open(shared_data / "landsat-timeseries/2015.tif") as src, pytest.raises(ValueError, match="lon, lat"):
        geo.gsd_metres(src.crs, src.transform)


def test_write_geotiff_like_keeps_crs_and_bounds_when_upscaled(shared_data, tmp_path):
    ref = shared_data / "spacenet-samples/ms1.tif"
    window = (100, 50, 64, 32)
    out = geo.write_geotiff_like(tmp_path / "sr.tif", np.zeros((128, 256, 3), np.uint8), ref, window=window,
                                 band_descriptions=["red", "green", "blue"])
    with rasterio.open(ref) as src:
        expected = rasterio.windows.bounds(rasterio.windows.Window(*window), src.transform)
        crs, res = src.crs, src.res
    with rasterio.open(out) as dst:
        assert dst.crs == crs
        assert tuple(dst.bounds) == pytest.approx(expected)
        assert dst.res == pytest.approx((res[0] / 4, res[1] / 4))
        assert dst.descriptions == ("red", "green", "blue")


def test_write_geotiff_like_refuses_an_ungeoreferenced_reference(shared_data, tmp_path):
    with pytest.raises(ValueError, match="sample_fp_mask.tif: no CRS"):
        geo.write_geotiff_like(tmp_path / "x.tif", np.zeros((8, 8), np.uint8),
                               shared_data / "spacenet-samples/sample_fp_mask.tif")
    assert not (tmp_path / "x.tif").exists()


def test_generated_geotiff_from_metadata_alone_is_in_local_utm(tmp_path):
    crs, transform = geo.grid_for_center(-99.15, 47.02, 5.0, 64, 32)
    path = geo.write_geotiff(tmp_path / "g.tif", np.ones((32, 64, 3), np.uint8), crs, transform)
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == 32614
        x, y = src.xy(16, 32, offset="ul")
        lon, lat = geo.to_lonlat(src.crs, x, y)
        assert (lon, lat) == pytest.approx((-99.15, 47.02), abs=1e-6)
        assert src.res == (5.0, 5.0)
        assert tuple(src.bounds) == pytest.approx(geo.transform_bounds_of(transform, 64, 32))


@pytest.mark.parametrize("rel, window", [("naip-timeseries/m_4709963_se_14_1_20100629.tif", (256, 128, 256)),
                                         ("geotiff-samples/cogeo.tif", (512, 0, 256)),
                                         ("landsat-timeseries/1990.tif", (128, 64, 128))])
def test_chip_metadata_centre_and_gsd_match_independent_computation(shared_data, rel, window):
    from diffusionsat.data import open_raster, read_chip

    col, row, size = window
    chip = read_chip(open_raster(shared_data / rel), (col, row, size, size), out_size=size // 2)
    ref_lon, ref_lat = _independent_centre(shared_data / rel, col, row, size)
    assert chip.metadata.lon == pytest.approx(ref_lon, abs=1e-7)
    assert chip.metadata.lat == pytest.approx(ref_lat, abs=1e-7)
    with rasterio.open(shared_data / rel) as src:
        native = geo.gsd_metres(src.crs, src.transform, ref_lon, ref_lat)
    assert chip.metadata.gsd == pytest.approx(native * 2)  # resized to half: pixels twice as large


def test_write_geotiff_like_crs_without_epsg(shared_data, tmp_path):
    ref = shared_data / "geotiff-samples/rgb1.tif"
    out = geo.write_geotiff_like(tmp_path / "o.tif", np.ones((50, 50, 3), np.uint8), ref, window=(10, 20, 100, 100),
                                 nodata=0)
    with rasterio.open(ref) as src, rasterio.open(out) as dst:
        assert geo.as_crs(dst.crs) == geo.as_crs(src.crs) and dst.crs.to_epsg() is None
        assert tuple(dst.bounds) == pytest.approx(
            rasterio.windows.bounds(rasterio.windows.Window(10, 20, 100, 100), src.transform))
        assert dst.nodata == 0
