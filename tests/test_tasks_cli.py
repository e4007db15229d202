"""`superres`, `temporal`, `inpaint`, `generate --control`, `convert-checkpoint` on real files, tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from conftest import TINY_CAPTIONS
from diffusionsat.cli.main import main
from diffusionsat.models.controlnet import SatControlNet
from diffusionsat.models.controlnet_3d import SatControlNet3D
from diffusionsat.models.presets import build_pipeline
from diffusionsat.models.sat_unet import SatUNet
from diffusionsat.pipelines.sampling import tile_windows
from test_controlnet import original_folder, perturb

pytestmark = pytest.mark.shared_data

S2_BANDS = ["B04", "B03", "B02", "B08"]
FAST = ["--steps", "1", "--seed", "3", "--guidance", "1"]  # CFG on/off is covered in test_controlnet.py


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Task model folders: the tiny base model + a (perturbed, as if trained) controlnet/ each."""
    root = tmp_path_factory.mktemp("task-models")
    base = build_pipeline("tiny", TINY_CAPTIONS, seed=0)
    base.save_pretrained(root / "base")
    unet = base.unet
    nets = {
        "superres": SatControlNet.from_unet(unet, conditioning_channels=4, conditioning_bands=S2_BANDS),
        "temporal": SatControlNet3D.from_unet(unet, conditioning_channels=3, max_frames=3),
        "inpaint": SatControlNet.from_unet(unet, conditioning_channels=4),
        "control": SatControlNet.from_unet(unet, conditioning_channels=3),
    }
    folders = {"base": root / "base"}
    for i, (task, net) in enumerate(nets.items()):
        shutil.copytree(root / "base", root / task)
        perturb(net, seed=i).save_pretrained(root / task / "controlnet")
        folders[task] = root / task
    return folders


def sidecar(png: Path) -> dict:
    return json.loads(png.with_suffix(".json").read_text())


def test_superres_tiles_a_scene_and_keeps_its_georeference_with_finer_gsd(models, shared_data, tmp_path):
    scene = shared_data / "sentinel2-slovenia" / "reference_scene_0.tif"
    out = tmp_path / "sr.png"
    code = main(["superres", str(scene), "--scale", "2", "--window", "30,20,24,24", "--tile", "16", "--overlap", "4",
                 "--model", str(models["superres"]), "--out", str(out), *FAST])
    assert code == 0
    with rasterio.open(scene) as src, rasterio.open(out.with_suffix(".tif")) as dst:
        window = rasterio.windows.Window(30, 20, 24, 24)
        assert (dst.width, dst.height) == (48, 48)
        assert dst.crs == src.crs
        assert dst.res == pytest.approx((src.res[0] / 2, src.res[1] / 2))
        assert dst.bounds == pytest.approx(rasterio.windows.bounds(window, src.transform))
        image = dst.read().astype(np.float64)
    # the scene is larger than the 16 px tile: no seams at tile borders beyond the usual pixel-to-pixel change
    windows = tile_windows(48, 48, 16, 4, multiple=2)
    assert len(windows) > 4
    for axis, edges in ((2, sorted({x0 for _, _, x0, _ in windows if x0})), (1, sorted({y0 for y0, _, _, _ in windows if y0}))):
        jumps = np.abs(np.diff(image, axis=axis)).mean(axis=tuple(a for a in (0, 1, 2) if a != axis))
        assert jumps[[e - 1 for e in edges]].mean() < 1.5 * np.median(jumps)
    meta = sidecar(out)
    assert meta["task"] == "superres" and meta["scale"] == 2
    assert meta["metadata"]["gsd"] == pytest.approx(src.res[0] / 2, rel=1e-3)
    assert meta["geotiff"]["path"] == "sr.tif"


def test_multi_image_superres_fuses_several_dates(models, shared_data, tmp_path):
    scenes = [str(shared_data / "sentinel2-slovenia" / f"reference_scene_{i}.tif") for i in (0, 3)]
    out = tmp_path / "multi.png"
    args = ["--scale", "2", "--window", "10,20,12,12", "--tile", "24", "--model", str(models["superres"]), *FAST]
    assert main(["superres", *scenes, *args, "--out", str(out)]) == 0
    assert main(["superres", scenes[0], *args, "--out", str(tmp_path / "one.png")]) == 0
    assert len(sidecar(out)["task_inputs"]) == 2
    with rasterio.open(out.with_suffix(".tif")) as multi, rasterio.open(tmp_path / "one.tif") as one:
        assert multi.transform == one.transform and multi.shape == (24, 24)
        assert not np.array_equal(multi.read(), one.read())


def test_superres_rejects_a_band_count_it_was_not_trained_for(models, shared_data, tmp_path, capsys):
    scene = shared_data / "sentinel2-slovenia" / "reference_scene_0.tif"
    code = main(["superres", str(scene), "--bands", "1,2,3", "--window", "0,0,16,16", "--model", str(models["superres"]),
                 "--out", str(tmp_path / "x.png"), *FAST])
    assert code == 2
    err = capsys.readouterr().err
    assert "3 bands but this ControlNet was trained for 4 (B04, B03, B02, B08)" in err.splitlines()[-1]
    naip = shared_data / "naip-timeseries" / "m_4709963_se_14_1_20190904.tif"  # no band names in the file
    code = main(["superres", str(naip), "--window", "0,0,16,16", "--model", str(models["superres"]),
                 "--out", str(tmp_path / "y.png"), *FAST])
    assert code == 2 and "trained on B04, B03, B02, B08: pick them with --bands" in capsys.readouterr().err


def temporal_args(models, out, *extra):
    return ["--target-date", "2000", "--date-pattern", "{YYYY}.tif", "--bands", "1,2,3", "--window", "200,100,16,16",
            "--model", str(models["temporal"]), "--out", str(out), *FAST, *extra]


def test_temporal_sorts_frames_by_date_and_sees_every_frame(models, shared_data, tmp_path):
    series = shared_data / "landsat-timeseries"
    first = [str(series / f"{y}.tif") for y in (1995, 1985, 1990)]
    second = [str(series / f"{y}.tif") for y in (1990, 1995, 1985)]
    assert main(["temporal", *first, *temporal_args(models, tmp_path / "a.png")]) == 0
    assert main(["temporal", *second, *temporal_args(models, tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    meta = sidecar(tmp_path / "a.png")
    assert meta["frame_dates"] == ["1985", "1990", "1995"] and meta["metadata"]["year"] == 2000
    changed = [str(series / f"{y}.tif") for y in (1985, 1990, 2005)]
    assert main(["temporal", *changed, *temporal_args(models, tmp_path / "c.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    with rasterio.open(series / "1985.tif") as src, rasterio.open(tmp_path / "a.tif") as dst:
        assert dst.crs == src.crs and dst.shape == (16, 16)
        assert dst.transform == src.window_transform(rasterio.windows.Window(200, 100, 16, 16))


def test_temporal_frames_on_different_grids_need_reprojection(models, shared_data, tmp_path, capsys):
    naip = shared_data / "naip-timeseries"
    frames = [str(naip / "m_4709963_se_14_1_20100629.tif"), str(naip / "m_4709963_se_14_1_20090818.tif")]
    args = ["--target-date", "2021-06-01", "--date-pattern", "*_{YYYYMMDD}.tif", "--bands", "1,2,3",
            "--window", "300,300,16,16", "--model", str(models["temporal"]), *FAST]
    assert main(["temporal", *frames, *args, "--out", str(tmp_path / "n.png")]) == 2
    assert "not on the grid of frame 1" in capsys.readouterr().err
    assert main(["temporal", *frames, *args, "--reproject", "--out", str(tmp_path / "n.png")]) == 0
    assert sidecar(tmp_path / "n.png")["frame_dates"] == ["2009-08-18", "2010-06-29"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--target-date", "2021-02-30"], "not a real calendar date"),
    (["--target-date", "next spring"], "not an ISO-8601 date"),
])
def test_temporal_rejects_target_dates_that_are_not_dates(models, shared_data, tmp_path, capsys, extra, message):
    frame = str(shared_data / "landsat-timeseries" / "1985.tif")
    assert main(["temporal", frame, *extra, "--model", str(models["temporal"]), "--out", str(tmp_path / "t.png")]) == 2
    assert message in capsys.readouterr().err


def test_temporal_too_many_or_undated_frames(models, shared_data, tmp_path, capsys):
    series = shared_data / "landsat-timeseries"
    four = [str(series / f"{y}.tif") for y in (1985, 1990, 1995, 2000)]
    assert main(["temporal", *four, *temporal_args(models, tmp_path / "t.png")]) == 2
    assert "at most 3" in capsys.readouterr().err
    code = main(["temporal", four[0], "--target-date", "2000", "--model", str(models["temporal"]),
                 "--out", str(tmp_path / "u.png")])
    assert code == 2 and "no date known for 1985.tif" in capsys.readouterr().err


def test_inpaint_returns_unmasked_pixels_bit_exactly(models, shared_data, tmp_path):
    image = shared_data / "naip-timeseries" / "m_4709963_se_14_1_20190904.tif"
    window = rasterio.windows.Window(400, 300, 16, 16)
    with rasterio.open(image) as src:
        original = np.moveaxis(src.read([1, 2, 3], window=window), 0, -1)
        profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 1, "dtype": "uint8", "crs": src.crs,
                   "transform": src.window_transform(window)}
    fill = np.zeros((16, 16), dtype=np.uint8)
    fill[4:10, 3:12] = 1
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as dst:
        dst.write(fill[None])
    out = tmp_path / "filled.png"
    code = main(["inpaint", str(image), "--mask", str(tmp_path / "mask.tif"), "--window", "400,300,16,16",
                 "--bands", "1,2,3", "--model", str(models["inpaint"]), "--out", str(out), *FAST, "--steps", "3",
                 "--scheduler", "euler"])
    assert code == 0
    assert sidecar(out)["scheduler"] == "euler"
    with rasterio.open(out.with_suffix(".tif")) as dst:
        result = np.moveaxis(dst.read(), 0, -1)
        assert dst.transform == profile["transform"] and dst.crs == profile["crs"]
    keep = fill == 0
    assert np.array_equal(result[keep], original[keep])
    assert not np.array_equal(result[~keep], original[~keep])
    assert sidecar(out)["masked_pixels"] == int(fill.sum())


def test_inpaint_from_geojson_building_footprints(models, shared_data, tmp_path):
    samples = shared_data / "spacenet-samples"
    out = tmp_path / "buildings.png"
    code = main(["inpaint", str(samples / "sample_geotiff.tif"), "--geojson", str(samples / "sample_geotiff_buildings.geojson"),
                 "--bands", "1,1,1", "--window", "144,96,16,16", "--model", str(models["inpaint"]), "--out", str(out), *FAST])
    assert code == 0
    meta = sidecar(out)
    assert meta["task"] == "inpaint" and 0 < meta["masked_pixels"] < 16 * 16


def test_inpaint_mask_mismatch_and_mask_options(models, shared_data, tmp_path, capsys):
    image = str(shared_data / "naip-timeseries" / "m_4709963_se_14_1_20190904.tif")
    fp_mask = str(shared_data / "spacenet-samples" / "sample_fp_mask.tif")
    base = ["--bands", "1,2,3", "--model", str(models["inpaint"]), "--out", str(tmp_path / "m.png")]
    assert main(["inpaint", image, "--mask", fp_mask, *base]) == 2
    assert "is 900x900 px but the image is 934x723 px" in capsys.readouterr().err
    assert main(["inpaint", image, *base]) == 2
    assert "exactly one of --mask" in capsys.readouterr().err
    geojson = str(shared_data / "spacenet-samples" / "sample_geotiff_buildings.geojson")
    assert main(["inpaint", image, "--geojson", geojson, "--window", "0,0,16,16", *base]) == 2
    assert "no feature overlaps" in capsys.readouterr().err


def crop(source: Path, dest: Path, col: int, row: int, size: int) -> Path:
    """A small window of a real raster, written as its own GeoTIFF (keeps tests fast)."""
    with rasterio.open(source) as src:
        window = rasterio.windows.Window(col, row, size, size)
        profile = {**src.profile, "width": size, "height": size, "transform": src.window_transform(window)}
        profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
        data = src.read(window=window)
    with rasterio.open(dest, "w", **profile) as dst:
        dst.write(data)
    return dest


def test_generate_with_control_maps(models, shared_data, tmp_path):
    rgb = crop(shared_data / "spacenet-samples" / "rgb_unmasked.tif", tmp_path / "rgb.tif", 50, 60, 16)
    out = tmp_path / "edges.png"
    code = main(["generate", "a satellite image of a river in peru", "--control", "edges", str(rgb),
                 "--model", str(models["control"]), "--out", str(out), *FAST])
    assert code == 0
    with rasterio.open(rgb) as src, rasterio.open(out.with_suffix(".tif")) as dst:
        assert dst.transform == src.transform and dst.crs == src.crs and dst.shape == src.shape
    assert sidecar(out)["task"] == "control" and sidecar(out)["control"] == "edges"
    roads = crop(shared_data / "spacenet-samples" / "sample_road_raster_mask.tif", tmp_path / "roads.tif", 600, 600, 16)
    code = main(["generate", "roads", "--control", "road", str(roads), "--num-images", "2",
                 "--model", str(models["control"]), "--out", str(tmp_path / "roads_out.png"), *FAST])
    assert code == 0
    first, second = (np.asarray(Image.open(tmp_path / f"roads_out_{i}.png")) for i in (0, 1))
    assert (tmp_path / "roads_out_1.tif").is_file() and not np.array_equal(first, second)


def test_control_and_task_models_need_a_controlnet(models, shared_data, tmp_path, capsys):
    rgb = str(crop(shared_data / "spacenet-samples" / "rgb_unmasked.tif", tmp_path / "rgb.tif", 0, 0, 16))
    code = main(["generate", "x", "--control", "road", rgb, "--model", str(models["control"]), "--out", str(tmp_path / "r.png")])
    assert code == 2 and "a road map must have 1 band" in capsys.readouterr().err
    code = main(["superres", rgb, "--model", str(models["base"]), "--out", str(tmp_path / "s.png")])
    assert code == 2 and "controlnet/" in capsys.readouterr().err
    corrupt = str(shared_data / "geotiff-samples" / "corrupt.tif")
    code = main(["superres", corrupt, "--model", str(models["superres"]), "--bands", "1,2,3", "--out", str(tmp_path / "c.png")])
    assert code == 2 and "corrupt.tif" in capsys.readouterr().err


def test_convert_checkpoint_cli_builds_a_task_model(models, shared_data, tmp_path):
    # an original-style base model: "unknown" metadata is 0 after normalisation, as in the original
    base = build_pipeline("tiny", TINY_CAPTIONS, seed=0)
    unet = SatUNet.from_config({**base.unet.config, "metadata_unknown_value": 0.0})
    unet.load_state_dict(base.unet.state_dict())
    base.unet = unet
    base.register_modules(unet=unet)
    base.save_pretrained(tmp_path / "original-base")
    net = perturb(SatControlNet3D.from_unet(unet, conditioning_channels=3, max_frames=3, temporal_first_block_heads=8,
                                            temporal_first_block_head_dim=64, conditioning_embedding_out_channels=(8, 16)),
                  seed=1)
    original_folder(SatControlNet3D.from_config({**net.config, "conditioning_downsample_factor": 2}),
                    tmp_path / "original", "3d")
    dest = tmp_path / "converted"
    assert main(["convert-checkpoint", str(tmp_path / "original"), str(dest), "--base", str(tmp_path / "original-base")]) == 0
    assert main(["convert-checkpoint", str(tmp_path / "original"), str(dest)]) == 2  # exists, no --overwrite
    series = shared_data / "landsat-timeseries"
    frames = [str(series / f"{y}.tif") for y in (1985, 1990)]
    args = temporal_args({"temporal": dest}, tmp_path / "conv.png")
    args[args.index("--window") + 1] = "200,100,16,16"
    assert main(["temporal", *frames, *args]) == 0
    assert sidecar(tmp_path / "conv.png")["frame_dates"] == ["1985", "1990"]


def test_inputs_must_share_band_count_and_grid(shared_data):
    from diffusionsat.conditional import align_inputs, read_input

    s2 = read_input(shared_data / "sentinel2-slovenia" / "reference_scene_0.tif", bands="B04,B03,B02", window=(0, 0, 8, 8))
    other = read_input(shared_data / "sentinel2-slovenia" / "reference_scene_1.tif", bands="B04,B03", window=(0, 0, 8, 8))
    with pytest.raises(ValueError, match="has 2 bands, input 1 .* 3"):
        align_inputs([s2, other], reproject=False, what="input")
    shifted = read_input(shared_data / "sentinel2-slovenia" / "reference_scene_1.tif", bands="B04,B03,B02",
                         window=(1, 0, 8, 8))
    with pytest.raises(ValueError, match="pass --reproject"):
        align_inputs([s2, shifted], reproject=False, what="input")
    aligned = align_inputs([s2, shifted], reproject=True, what="input")
    assert aligned[1].transform == s2.transform and aligned[1].pixels.shape == s2.pixels.shape
    # resampled onto the first grid, the shifted window's pixels move back by one column
    np.testing.assert_allclose(aligned[1].pixels[:, :, 2:7], shifted.pixels[:, :, 1:6], atol=1e-5)


def test_task_inputs_read_what_open_raster_built(shared_data):
    """A band stack (single-band files of one scene) is an in-memory VRT: the task reader reads that,
    not the first file, so its pixels are the stacked bands of the scene."""
    import rasterio

    from diffusionsat.conditional import read_pixels
    from diffusionsat.data.geotiff import find_rasters, open_raster

    stack = find_rasters([shared_data / "landsat8-bands"], stack_bands=True)[0]
    info = open_raster(stack, bands="B4,B3,B2")
    pixels, _ = read_pixels(info, (256, 256, 32, 32))
    with rasterio.open(shared_data / "landsat8-bands/LC81070352015122LGN00_B2.tif") as src:
        blue = src.read(1, window=((256, 288), (256, 288)))
    assert pixels.shape == (3, 32, 32) and np.array_equal(pixels[2], blue.astype(np.float32))


def test_inpaint_num_samples_writes_each_sample_and_a_spread_map(models, shared_data, tmp_path):
    """K samples (seeds SEED..SEED+K-1) + OUT_spread.png/.tif: zero where nothing was filled."""
    image = shared_data / "naip-timeseries" / "m_4709963_se_14_1_20190904.tif"
    window = rasterio.windows.Window(400, 300, 16, 16)
    with rasterio.open(image) as src:
        profile = {"driver": "GTiff", "width": 16, "height": 16, "count": 1, "dtype": "uint8", "crs": src.crs,
                   "transform": src.window_transform(window)}
    fill = np.zeros((16, 16), dtype=np.uint8)
    fill[4:10, 3:12] = 1
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as dst:
        dst.write(fill[None])
    out = tmp_path / "filled.png"
    args = ["inpaint", str(image), "--mask", str(tmp_path / "mask.tif"), "--window", "400,300,16,16", "--bands", "1,2,3",
            "--model", str(models["inpaint"]), "--out", str(out), "--steps", "2", "--seed", "5", "--guidance", "1",
            "--num-samples", "3"]
    assert main(args) == 0
    samples = []
    for k in range(3):
        with rasterio.open(tmp_path / f"filled_{k}.tif") as dst:
            samples.append(np.moveaxis(dst.read(), 0, -1))
        meta = sidecar(tmp_path / f"filled_{k}.png")
        assert meta["seed"] == 5 + k and meta["num_samples"] == 3 and meta["spread"] == "filled_spread.tif"
    with rasterio.open(tmp_path / "filled_spread.tif") as dst:
        spread = dst.read(1)
        assert dst.dtypes[0] == "float32" and dst.transform == profile["transform"] and dst.crs == profile["crs"]
        assert "3 samples" in dst.descriptions[0]
    expected = np.stack([s.astype(np.float32) / 255 for s in samples]).std(axis=0).mean(axis=-1)
    assert np.allclose(spread, expected, atol=1e-6)
    assert np.all(spread[fill == 0] == 0) and spread[fill == 1].max() > 0  # guesses only where it fills
    assert (tmp_path / "filled_spread.png").is_file()
    # the same call again: every output exists, nothing is replaced
    assert main(args) == 2


def test_num_samples_out_of_range_is_an_input_error(models, shared_data, capsys, tmp_path):
    code = main(["superres", str(shared_data / "sentinel2-slovenia" / "reference_scene_0.tif"), "--window",
                 "0,0,16,16", "--model", str(models["superres"]), "--num-samples", "0", "--out", str(tmp_path / "x.png")])
    assert code == 2 and "--num-samples=0: out of range; allowed [1, 16]" in capsys.readouterr().err


def test_sample_spread_is_the_standard_deviation_across_samples():
    from diffusionsat.conditional import sample_spread

    a = np.zeros((2, 2, 3), np.uint8)
    b = np.full((2, 2, 3), 255, np.uint8)
    assert np.allclose(sample_spread([a, b]), 0.5)
    assert np.allclose(sample_spread([a, a, a]), 0.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        sample_spread([a])
