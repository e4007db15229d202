"""Task samples on the real time series, SpaceNet pairs and building footprints."""

from __future__ import annotations

import numpy as np
import pytest

from diffusionsat.data import InpaintSamples, SuperResPairs, TemporalSequences, degrade, random_box_mask
from diffusionsat.data.errors import DataError
from diffusionsat.data.tasks import read_vector


def test_temporal_sequence_sorted_with_per_frame_metadata(shared_data):
    ds = TemporalSequences([shared_data / "naip-timeseries"], 256, date_pattern="*_{YYYYMMDD}.tif", num_frames=4,
                           out_size=32)
    assert len(ds) == 6
    sample = ds[0]
    assert sample["conditioning_pixel_values"].shape == (3, 4, 32, 32)
    dates = [m.date_string() for m in sample["conditioning_metadata"]]
    assert dates == ["2016-08-16", "2017-08-27", "2018-07-16"] and sample["metadata"].date_string() == "2019-09-04"
    assert all(m.lat == sample["metadata"].lat for m in sample["conditioning_metadata"])


def test_temporal_needs_two_dates(shared_data):
    from diffusionsat.data import DataError

    with pytest.raises(DataError, match="at least two rasters of the same place"):
        TemporalSequences([shared_data / "geotiff-samples/shade.tif"], 128)


def test_real_superres_pair_same_footprint(shared_data):
    ds = SuperResPairs(shared_data / "spacenet-samples/pan1.tif", 128, low=shared_data / "spacenet-samples/ms1.tif")
    assert ds.factor == 2 and len(ds) == 16
    sample = ds[5]
    assert sample["pixel_values"].shape == (1, 128, 128)
    assert sample["conditioning_pixel_values"].shape == (4, 64, 64)
    assert sample["conditioning_metadata"].gsd == pytest.approx(2 * sample["metadata"].gsd)
    assert sample["conditioning_metadata"].lat == sample["metadata"].lat


def test_synthetic_degradation_block_average(shared_data):
    img = np.arange(16, dtype=np.uint16).reshape(1, 4, 4)
    assert degrade(img, 2).tolist() == [[[2, 4], [10, 12]]]
    ds = SuperResPairs(shared_data / "planetscope-like/rgbn.tif", 64, factor=4)
    sample = ds[0]
    assert sample["conditioning_pixel_values"].shape == (4, 16, 16)
    assert sample["conditioning_metadata"].gsd == pytest.approx(20.0)
    with pytest.raises(ValueError, match="divisible"):
        SuperResPairs(shared_data / "planetscope-like/rgbn.tif", 66, factor=4)


def test_inpaint_mask_from_building_footprints(shared_data):
    vector = shared_data / "spacenet-samples/sample_geotiff_buildings.geojson"
    ds = InpaintSamples(shared_data / "spacenet-samples/sample_geotiff.tif", 900, vector=vector)
    sample = ds[0]
    geoms, _ = read_vector(vector)
    footprint_area = sum(g.area for g in geoms)  # m², UTM 16N
    masked_area = float(sample["mask"].sum()) * 0.5 * 0.5
    assert sample["mask"].shape == (1, 900, 900)
    assert masked_area == pytest.approx(footprint_area, rel=0.05)
    some = InpaintSamples(shared_data / "spacenet-samples/sample_geotiff.tif", 300, vector=vector, min_mask=0.05)
    assert 0 < len(some) < 9


def test_random_box_masks_are_reproducible():
    a = random_box_mask(64, 64, np.random.default_rng(1))
    b = random_box_mask(64, 64, np.random.default_rng(1))
    assert np.array_equal(a, b) and 0 < a.mean() < 1


def test_resize_keeps_task_keys_consistent(shared_data):
    from diffusionsat.data import Resize

    sr = SuperResPairs(shared_data / "spacenet-samples/pan1.tif", 128, low=shared_data / "spacenet-samples/ms1.tif")[0]
    out = Resize(64)(sr)
    assert out["pixel_values"].shape == (1, 64, 64) and out["conditioning_pixel_values"].shape == (4, 32, 32)
    assert out["metadata"].gsd == pytest.approx(2 * sr["metadata"].gsd)
    assert out["conditioning_metadata"].gsd == pytest.approx(2 * sr["conditioning_metadata"].gsd)
    ip = InpaintSamples(shared_data / "spacenet-samples/sample_geotiff.tif", 300, boxes=2)[0]
    small = Resize(60)(ip)
    assert small["mask"].shape == (1, 60, 60) and set(small["mask"].unique().tolist()) <= {0.0, 1.0}
    assert small["valid_mask"].dtype == ip["valid_mask"].dtype


def test_temporal_frames_on_the_same_grid_equal_chips_read_directly(shared_data):
    """The Landsat series shares one grid: a frame read over the target's bounds is that chip."""
    import torch

    from diffusionsat.data import open_raster, read_chip

    ds = TemporalSequences([shared_data / "landsat-timeseries"], 128, date_pattern="{YYYY}.tif", num_frames=2,
                           out_size=64)
    sample = ds[3]
    _, window, _ = ds.index[3]
    info = open_raster(shared_data / "landsat-timeseries/2010.tif", date_pattern="{YYYY}.tif")
    direct = read_chip(info, window, out_size=64).to_sample()["pixel_values"]
    assert torch.equal(sample["conditioning_pixel_values"][0], direct)
    assert sample["conditioning_metadata"][0].year == 2010 and sample["metadata"].year == 2015


def test_temporal_every_date_makes_each_date_a_target(shared_data):
    latest = TemporalSequences([shared_data / "landsat-timeseries"], 128, date_pattern="{YYYY}.tif", num_frames=3)
    every = TemporalSequences([shared_data / "landsat-timeseries"], 128, date_pattern="{YYYY}.tif", num_frames=3,
                              every_date=True)
    dates = 7  # 1985 ... 2015
    assert len(every) == len(latest) * (dates - 3 + 1)
    years = sorted({every.sequence(i).frames[-1].metadata.year for i in range(len(every))})
    assert years == [1995, 2000, 2005, 2010, 2015]
    first = every.sequence(0)
    assert [f.metadata.year for f in first.frames] == [1985, 1990, 1995]
    with pytest.raises(ValueError, match="every_date needs num_frames"):
        TemporalSequences([shared_data / "landsat-timeseries"], 128, date_pattern="{YYYY}.tif", every_date=True)


def test_downsampled_pairs_tile_native_images_and_average_them(shared_data):
    import torch

    from diffusionsat.data import DownsampledPairs, UCMerced

    ucm = UCMerced(shared_data / "ucmerced", "train", classes=("harbor",))
    pairs = DownsampledPairs(ucm, 64, factor=4)
    assert len(pairs) == len(ucm) * 16
    sample = pairs[5]  # image 0, tile row 1, col 1
    native = torch.as_tensor(ucm[0]["pixel_values"])
    assert torch.equal(sample["pixel_values"], native[:, 64:128, 64:128])
    assert sample["conditioning_pixel_values"].shape == (3, 16, 16)
    assert torch.allclose(sample["conditioning_pixel_values"][:, 0, 0], native[:, 64:68, 64:68].mean(dim=(1, 2)))
    assert sample["conditioning_metadata"].gsd == pytest.approx(4 * sample["metadata"].gsd)
    assert sample["metadata"].gsd == pytest.approx(0.3048)
    with pytest.raises(ValueError, match="divisible"):
        DownsampledPairs(ucm, 62, factor=4)


def test_downsampled_pairs_put_off_size_images_on_the_common_grid():
    import torch

    from diffusionsat.data import DownsampledPairs
    from diffusionsat.metadata import SatMetadata

    items = [{"pixel_values": torch.zeros(3, 64, 64), "metadata": SatMetadata(gsd=1.0)},
             {"pixel_values": torch.zeros(3, 60, 64), "metadata": SatMetadata(gsd=1.0)}]
    pairs = DownsampledPairs(items, 32, factor=2)
    assert pairs[4]["pixel_values"].shape == (3, 32, 32)
    assert pairs[4]["metadata"].gsd == pytest.approx(1.0)


def test_box_masked_adds_reproducible_masks():
    import torch

    from diffusionsat.data import BoxMasked

    items = [{"pixel_values": torch.zeros(3, 32, 32)} for _ in range(3)]
    a, b = BoxMasked(items, seed=1), BoxMasked(items, seed=1)
    assert torch.equal(a[2]["mask"], b[2]["mask"]) and a[2]["mask"].shape == (1, 32, 32)
    assert 0 < float(a[2]["mask"].mean()) < 1
    assert not torch.equal(a[0]["mask"], a[1]["mask"])


def test_superres_pairs_roi_keeps_only_chips_wholly_inside(shared_data):
    pan, ms = shared_data / "spacenet-samples/pan1.tif", shared_data / "spacenet-samples/ms1.tif"
    whole = SuperResPairs(pan, 64, low=ms)
    left = whole.high.transform[2]
    west = SuperResPairs(pan, 64, low=ms, roi=[left - 1, 0, left + 200, 1e8])  # the western 200 m
    east = SuperResPairs(pan, 64, low=ms, roi=[left + 200, 0, left + 1e4, 1e8])
    assert {w[0] for w in west.windows} == {0, 64, 128, 192, 256, 320}  # 384 + 64 px = 224 m > 200 m
    assert {w[0] for w in east.windows} == {448, 512}  # from 400 px (200 m) on, whole chips only
    assert len(west) + len(east) < len(whole)  # the straddling column is in neither split
    with pytest.raises(DataError, match="holds no whole chip"):
        SuperResPairs(pan, 64, low=ms, roi=[left, 0, left + 10, 1e8])
    with pytest.raises(ValueError, match="minx < maxx"):
        SuperResPairs(pan, 64, low=ms, roi=[left + 10, 0, left, 1e8])
