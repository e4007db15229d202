"""Issue #17 item 2: `superres`/`inpaint` on scenes of any size, block by block (windowed reads and writes)."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import TINY_CAPTIONS
from diffusionsat import blocks, conditional, scenes
from diffusionsat.cli.main import main
from diffusionsat.models.controlnet import SatControlNet
from diffusionsat.models.presets import build_pipeline
from diffusionsat.outputs import OutputPaths
from test_controlnet import perturb

FAST = ["--steps", "1", "--seed", "3", "--guidance", "1"]
#: Super-resolution in blocks of 32 output px at x2: each block (core 16 + margins 2 input px) in one model tile.
SR_BLOCKS = ["--scale", "2", "--block", "32", "--tile", "64", *FAST]
CRS = "EPSG:32633"
ORIGIN = from_origin(500000, 5000000, 10, 10)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny task models: a 4-band super-resolution and an RGB in-painting ControlNet."""
    root = tmp_path_factory.mktemp("block-models")
    base = build_pipeline("tiny", TINY_CAPTIONS, seed=0)
    base.save_pretrained(root / "base")
    folders = {}
    for i, task in enumerate(("superres", "inpaint")):
        shutil.copytree(root / "base", root / task)
        perturb(SatControlNet.from_unet(base.unet, conditioning_channels=4), seed=i).save_pretrained(root / task / "controlnet")
        folders[task] = root / task
    return folders


def write_raster(path: Path, data: np.ndarray, georeferenced: bool = True) -> Path:
    geo = {"crs": CRS, "transform": ORIGIN} if georeferenced else {}
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype.name, **geo) as dst:
        dst.write(data)
    return path


def s2_scene(path: Path, width: int = 48, height: int = 40) -> Path:
    """A 4-band uint16 scene with a strong left-to-right gradient: per-block percentiles would differ."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    bands = [1000 + 40 * x + 10 * y + rng.integers(0, 300, (height, width)) for _ in range(4)]
    return write_raster(path, np.stack(bands).astype(np.uint16))


def rgb_scene(path: Path, width: int = 96, height: int = 80) -> np.ndarray:
    data = np.random.default_rng(1).integers(0, 256, (3, height, width), dtype=np.uint8)
    write_raster(path, data)
    return data


def sidecar(png: Path) -> dict:
    return json.loads(png.with_suffix(".json").read_text())


def spy(monkeypatch, module, name: str) -> list:
    """Record the arguments of every call of ``module.name`` (the call still happens)."""
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_superres_in_blocks_is_one_georeferenced_scene_read_window_by_window(models, tmp_path, monkeypatch):
    scene = s2_scene(tmp_path / "s2.tif")
    reads = spy(monkeypatch, conditional, "read_pixels")
    runs = spy(monkeypatch, conditional, "superresolve")
    out = tmp_path / "sr.png"
    # 48x40 input, x2, blocks of 32 output px = 16 input px: 3 x 3 blocks with margins of 2 input px
    code = main(["superres", str(scene), *SR_BLOCKS, "--model", str(models["superres"]), "--out", str(out)])
    assert code == 0
    with rasterio.open(scene) as src, rasterio.open(out.with_suffix(".tif")) as dst:
        assert (dst.width, dst.height) == (96, 80) and dst.crs == src.crs
        assert dst.transform == src.transform @ rasterio.Affine.scale(0.5)
        assert dst.profile["compress"] == "deflate" and dst.count == 3
        image = np.moveaxis(dst.read(), 0, -1)
    assert np.array_equal(np.asarray(PIL.Image.open(out)), image)  # small enough: the PNG is written too
    windows = [args[1] for args, _ in reads]
    assert len(runs) == 9 and len(windows) == 9
    assert None not in windows and (0, 0, 48, 40) not in windows  # never read whole
    assert max(max(w[2], w[3]) for w in windows) <= 16 + 2 * 2  # a block and its margins
    meta = sidecar(out)
    assert meta["blocks"] == {"count": 9, "model_calls": 9} and meta["scale"] == 2
    assert meta["metadata"]["gsd"] == pytest.approx(5.0) and meta["png"] == "sr.png"
    # every block is scaled by the scene's pixel range, not its own
    whole = conditional.read_input(scene).pixels
    for args, _ in runs:
        block = args[1][0]
        col, row = (round(v) for v in ~ORIGIN @ (block.transform.c, block.transform.f))
        np.testing.assert_array_equal(block.pixels, whole[:, row:row + block.height, col:col + block.width])


def test_inpaint_in_blocks_keeps_unmasked_pixels_and_skips_blocks_without_a_mask(models, tmp_path, monkeypatch):
    original = rgb_scene(tmp_path / "rgb.tif")
    fill = np.zeros((80, 96), np.uint8)
    fill[5:18, 5:20] = 1  # inside block 0 only
    fill[35:45, 58:70] = 1  # across the boundary of blocks 4 and 5 (cores split at column 64)
    write_raster(tmp_path / "mask.tif", fill[None])
    runs = spy(monkeypatch, conditional, "inpaint_raster")
    out = tmp_path / "filled.png"
    code = main(["inpaint", str(tmp_path / "rgb.tif"), "--mask", str(tmp_path / "mask.tif"), "--block", "32",
                 "--model", str(models["inpaint"]), "--out", str(out), *FAST])
    assert code == 0
    with rasterio.open(out.with_suffix(".tif")) as dst:
        result = np.moveaxis(dst.read(), 0, -1)
        assert dst.transform == ORIGIN and dst.crs == CRS
    keep = fill == 0
    assert np.array_equal(result[keep], np.moveaxis(original, 0, -1)[keep])
    assert not np.array_equal(result[~keep], np.moveaxis(original, 0, -1)[~keep])
    grid = blocks.block_grid((0, 0, 96, 80), *scenes.block_layout(32, 1)[:2])
    masked = [b.index for b in grid if fill[b.read[1]:b.read[1] + b.read[3], b.read[0]:b.read[0] + b.read[2]].any()]
    assert len(grid) == 9 and masked == [0, 4, 5]
    assert len(runs) == 3  # the six blocks without a masked pixel were copied through
    meta = sidecar(out)
    assert meta["masked_pixels"] == int(fill.sum()) and meta["blocks"] == {"count": 9, "model_calls": 3}


@pytest.mark.parametrize("task", ["superres", "inpaint"])
def test_one_block_is_the_single_pass(models, tmp_path, task):
    from diffusionsat.pipelines.pipeline_controlnet import load_controlnet_pipeline

    if task == "superres":
        scene = s2_scene(tmp_path / "s2.tif", 24, 20)
        extra, kwargs = ["--scale", "2"], {"scale": 2}
        run = scenes.superresolve_scene
        inputs: object = [scene]
    else:
        rgb_scene(tmp_path / "rgb.tif", 40, 36)
        scene = tmp_path / "rgb.tif"
        fill = np.zeros((1, 36, 40), np.uint8)
        fill[:, 10:20, 5:30] = 1
        write_raster(tmp_path / "mask.tif", fill)
        extra, kwargs = ["--mask", str(tmp_path / "mask.tif")], {"mask": tmp_path / "mask.tif"}
        run = scenes.inpaint_scene
        inputs = scene
    assert main([task, str(scene), *extra, "--model", str(models[task]), "--out", str(tmp_path / "single.png"), *FAST]) == 0
    pipe = load_controlnet_pipeline(models[task])
    pipe.set_progress_bar_config(disable=True)
    outputs = OutputPaths(png=tmp_path / "blocks.png", sidecar=tmp_path / "blocks.json", geotiff=tmp_path / "blocks.tif")
    done = run(pipe, inputs, outputs, block=1024, seed=3, num_inference_steps=1, guidance_scale=1.0,
               describe={"steps": 1, "guidance_scale": 1.0, "scheduler": "ddpm", "model": task}, **kwargs)
    assert done.blocks == 1 and done.model_calls == 1
    with rasterio.open(tmp_path / "single.tif") as a, rasterio.open(tmp_path / "blocks.tif") as b:
        assert np.array_equal(a.read(), b.read())
        assert a.transform == b.transform and a.crs == b.crs
    assert (tmp_path / "single.png").read_bytes() == (tmp_path / "blocks.png").read_bytes()
    assert sidecar(tmp_path / "single.png")["metadata"] == sidecar(tmp_path / "blocks.png")["metadata"]


def test_overlaps_are_the_documented_feathered_combination(tmp_path):
    grid = blocks.block_grid((0, 0, 40, 16), block=20, margin=4)
    assert [(b.read, b.shared_left) for b in grid] == [((0, 0, 24, 16), 0), ((16, 0, 24, 16), 8)]
    with blocks.BlockWriter(tmp_path / "feather.tif", 40, 16) as writer:
        for b, value in zip(grid, (200, 0)):
            image = np.full((16, 24, 3), value, np.uint8)
            writer.write(b.output_window((0, 0)), image, blocks.feather(16, 24, b.shared_top, b.shared_left))
        out = writer.read_all()[0, :, 0].astype(int)
    w = (np.arange(8) + 0.5) / 8  # the right block's weight across the 8 shared columns
    assert out[:16].tolist() == [200] * 16 and out[24:].tolist() == [0] * 16
    assert out[16:24].tolist() == np.rint((1 - w) * 200).astype(int).tolist()


def test_blocks_that_disagree_meet_without_a_seam(models, tmp_path, monkeypatch):
    """Neighbouring blocks whose results differ by 40 grey levels: the output ramps, it does not step."""
    scene = s2_scene(tmp_path / "s2.tif", 96, 80)

    def fake(pipe, inputs, *, scale, seed, **kwargs):  # seed = --seed + block index: neighbours alternate
        first = inputs[0]
        image = np.full((first.height * scale, first.width * scale, 3), 80 + 40 * (seed % 2), np.uint8)
        return conditional.TaskResult(image, None, None, first.metadata, seed)

    monkeypatch.setattr(conditional, "superresolve", fake)
    out = tmp_path / "sr.png"
    assert main(["superres", str(scene), "--scale", "2", "--block", "64", "--model", str(models["superres"]),
                 "--out", str(out), *FAST]) == 0
    with rasterio.open(out.with_suffix(".tif")) as dst:
        image = dst.read(1).astype(int)
    assert {80, 120} <= set(np.unique(image))  # the blocks did differ
    # 3 x 3 blocks sharing 16 output px: the 40-level change is spread over them (≈ 2.5 per pixel)
    for axis in (0, 1):
        assert np.abs(np.diff(image, axis=axis)).max() <= 6


@pytest.mark.parametrize(("argv", "message"), [
    (["superres", "x.tif", "--scale", "1", "--block", "8"], "--block=8: out of range; allowed [32, 16384] output pixels"),
    (["superres", "x.tif", "--scale", "4", "--block", "32"],
     "--block=32: out of range; allowed [64, 16384] output pixels with --scale 4"),
    (["inpaint", "x.tif", "--mask", "m.tif", "--block", "100000"], "--block=100000: out of range; allowed [32, 16384]"),
    (["inpaint", "x.tif", "--mask", "m.tif", "--block", "big"], "'--block'"),
])
def test_bad_block_values_exit_2_naming_the_flag(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_failed_block_write_leaves_no_final_named_file(models, tmp_path, monkeypatch, capsys):
    scene = s2_scene(tmp_path / "s2.tif")
    calls = {"n": 0}
    original = blocks.BlockWriter.write

    def full_disk(self, *args, **kwargs):  # the third block hits a full disk
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(blocks.BlockWriter, "write", full_disk)
    out = tmp_path / "out" / "sr.png"
    out.parent.mkdir()
    code = main(["superres", str(scene), *SR_BLOCKS, "--model", str(models["superres"]), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "No space left" in err, err
    assert list(out.parent.iterdir()) == []  # no sr.tif, no sidecar, no temporary files


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_large_output_is_tiff_and_sidecar_only_and_plain_without_georeference(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(scenes, "MAX_PNG_PIXELS", 1000)
    image = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    PIL.Image.fromarray(image).save(tmp_path / "photo.png")
    fill = np.zeros((48, 64), np.uint8)
    fill[20:30, 30:40] = 255
    PIL.Image.fromarray(fill).save(tmp_path / "mask.png")
    out = tmp_path / "filled.png"
    code = main(["inpaint", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"), "--block", "32",
                 "--model", str(models["inpaint"]), "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "over the PNG limit of 1000" in captured.err
    assert not out.exists() and sorted(p.name for p in tmp_path.glob("filled*")) == ["filled.json", "filled.tif"]
    with rasterio.open(out.with_suffix(".tif")) as dst:
        assert dst.crs is None and dst.shape == (48, 64)
        result = np.moveaxis(dst.read(), 0, -1)
    assert np.array_equal(result[fill == 0], image[fill == 0])
    meta = sidecar(out)
    assert meta["png"] is None and "over the PNG limit" in meta["png_skipped"]
    assert meta["tiff"]["path"] == "filled.tif" and "geotiff" not in meta

    out.write_bytes(b"an earlier, smaller result")  # --overwrite replaces the set: no stale PNG is left beside it
    args = ["inpaint", str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"), "--block", "32",
            "--model", str(models["inpaint"]), "--out", str(out), *FAST]
    assert main(args) == 2 and "already exists" in capsys.readouterr().err  # without --overwrite: refused
    assert main([*args, "--overwrite"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.glob("filled*")) == ["filled.json", "filled.tif"]


def test_memory_does_not_grow_with_the_scene(models, tmp_path, monkeypatch):
    """Peak (numpy) memory of a scene twice as large is the same: it is bounded by the block.

    Both scenes cut into blocks of the same size (cores of 120 px) and are over 512 px, the
    decimated read that finds the scene's pixel range.
    """
    import tracemalloc

    from diffusionsat.pipelines.pipeline_controlnet import load_controlnet_pipeline

    def fake(pipe, inputs, *, scale, seed, **kwargs):  # the model is not what is measured
        first = inputs[0]
        image = np.full((first.height * scale, first.width * scale, 3), seed % 256, np.uint8)
        return conditional.TaskResult(image, None, None, first.metadata, seed)

    monkeypatch.setattr(conditional, "superresolve", fake)
    monkeypatch.setattr(scenes, "MAX_PNG_PIXELS", 0)  # no PNG: that one is held whole
    pipe = load_controlnet_pipeline(models["superres"])
    peaks = []
    for width in (600, 1200):
        scene = s2_scene(tmp_path / f"s2_{width}.tif", width, 600)
        outputs = OutputPaths(png=tmp_path / f"o{width}.png", sidecar=tmp_path / f"o{width}.json",
                              geotiff=tmp_path / f"o{width}.tif")
        tracemalloc.start()
        done = scenes.superresolve_scene(pipe, [scene], outputs, scale=2, block=256, progress=False,
                                         describe={"steps": 1, "guidance_scale": 1.0, "scheduler": "ddpm", "model": "m"})
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert done.blocks == width // 120 * 5
    assert peaks[1] < 1.1 * peaks[0] and peaks[1] < 2400 * 1200 * 3, peaks  # not even the output once


def test_inputs_on_other_grids_in_blocks_need_reprojection(models, tmp_path, monkeypatch, capsys):
    first = s2_scene(tmp_path / "a.tif")
    with rasterio.open(first) as src:
        data = src.read()
    shifted = tmp_path / "b.tif"
    with rasterio.open(shifted, "w", driver="GTiff", width=48, height=40, count=4, dtype="uint16", crs=CRS,
                       transform=from_origin(500000 + 15, 5000000 - 5, 10, 10)) as dst:
        dst.write(data)
    args = [*SR_BLOCKS, "--model", str(models["superres"])]
    assert main(["superres", str(first), str(shifted), *args, "--out", str(tmp_path / "n.png")]) == 2
    assert "pass --reproject" in capsys.readouterr().err
    reads = spy(monkeypatch, conditional, "read_pixels")
    assert main(["superres", str(first), str(shifted), *args, "--reproject", "--out", str(tmp_path / "r.png")]) == 0
    second = [args[1] for args, _ in reads if args[0].path == shifted]
    assert len(second) == 9 and max(max(w[2], w[3]) for w in second) <= 20 + 3  # the block's footprint + 1 px
    assert sidecar(tmp_path / "r.png")["task_inputs"] == [str(first), str(shifted)]


@pytest.mark.shared_data
def test_inpaint_geojson_features_in_blocks(models, shared_data, tmp_path):
    samples = shared_data / "spacenet-samples"
    image, features = samples / "sample_geotiff.tif", samples / "sample_geotiff_buildings.geojson"
    window = (96, 64, 64, 64)
    out = tmp_path / "buildings.png"
    code = main(["inpaint", str(image), "--geojson", str(features), "--bands", "1,1,1", "--window", "96,64,64,64",
                 "--block", "32", "--model", str(models["inpaint"]), "--out", str(out), *FAST])
    assert code == 0
    whole = conditional.read_input(image, bands="1,1,1", window=window)
    fill = conditional.mask_from_geojson(features, whole)
    with rasterio.open(out.with_suffix(".tif")) as dst:
        result = np.moveaxis(dst.read(), 0, -1)
        assert dst.transform == whole.transform
    assert np.array_equal(result[~fill], conditional.known_pixels(whole)[~fill])
    meta = sidecar(out)
    assert meta["masked_pixels"] == int(fill.sum()) > 0 and meta["blocks"]["count"] == 4


def test_block_grid_covers_the_window_and_noise_agrees_where_blocks_overlap():
    import torch

    grid = blocks.block_grid((10, 20, 100, 37), block=32, margin=4, align=2)
    covered = np.zeros((37, 100), int)
    for b in grid:
        col, row, width, height = b.core
        covered[row - 20:row - 20 + height, col - 10:col - 10 + width] += 1
        assert (b.read[0] - 10) % 2 == 0 and (b.read[1] - 20) % 2 == 0  # starts on the alignment
        assert max(b.read[2], b.read[3]) <= 32 + 2 * 4
    assert (covered == 1).all()  # the cores tile the window exactly
    a = blocks.scene_noise(7, 3, 10, 50, 80, 80)
    b = blocks.scene_noise(7, 3, 60, 100, 80, 80)
    torch.testing.assert_close(a[..., 50:, 50:], b[..., :30, :30])  # the same scene noise where they overlap
    assert not torch.equal(blocks.scene_noise(8, 3, 10, 50, 80, 80), a)
    assert abs(float(a.std()) - 1) < 0.05
