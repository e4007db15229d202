"""Issue #17 for the CLI and the library: inputs of any size, no partial outputs, user errors exit 2."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from diffusionsat.cli.main import main as cli_main
from diffusionsat.fileio import atomic_dir, atomic_files, clean_stale_partials

PROMPT = "a satellite image of farmland in united states"


def run(capsys, *argv: str) -> tuple[int, str]:
    code = cli_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def huge_geotiff(path: Path, side: int = 20000) -> Path:
    """A raster whose header says ``side`` × ``side`` × 3 but whose file is a few KiB (sparse tiles)."""
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8", tiled=True,
                       blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True, crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(np.full((3, 512, 512), 7, np.uint8), window=((0, 512), (0, 512)))
    assert path.stat().st_size < 1024 * 1024
    return path


# --- item 2: inputs of any size ------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["superres", "inpaint"])
def test_huge_raster_is_refused_from_its_header(capsys, tmp_path, tiny_model_dir, command):
    scene = huge_geotiff(tmp_path / "huge.tif")
    extra = ["--mask", str(scene)] if command == "inpaint" else []
    code, err = run(capsys, command, scene, *extra, "--model", tiny_model_dir, "--out", tmp_path / "o.png")
    assert code == 2, err
    assert "20000x20000 = 400000000 pixels" in err and "--max-pixels" in err and "Traceback" not in err
    assert not list(tmp_path.glob("o*"))


def test_max_pixels_raises_the_limit_and_window_takes_a_part(capsys, tmp_path):
    from diffusionsat.conditional import check_input_size

    scene = huge_geotiff(tmp_path / "huge.tif")
    check_input_size(scene, max_pixels=20000 * 20000)  # raised: accepted
    check_input_size(scene, window=(0, 0, 512, 512))  # a window of it: accepted
    with pytest.raises(ValueError, match="over the limit"):
        check_input_size(scene, window=(0, 0, 8192, 8192))


# --- item 3: prepare-data ------------------------------------------------------------------------------
def test_failed_prepare_data_writes_nothing_and_a_fixed_rerun_works(capsys, tmp_path, shared_data):
    out = tmp_path / "dataset"
    code, err = run(capsys, "prepare-data", shared_data / "geotiff-samples" / "corrupt.tif", "--out", out,
                    "--chip-size", "64", "--no-progress")
    assert code == 2 and "no samples" in err and "nothing was written" in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".dataset")]
    code, err = run(capsys, "prepare-data", shared_data / "geotiff-samples" / "RGB.byte.tif", "--out", out,
                    "--chip-size", "64", "--no-progress")
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["samples"] > 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()  # not mkdtemp's 0700


def test_stride_zero_is_refused(capsys, tmp_path, shared_data):
    code, err = run(capsys, "prepare-data", shared_data / "geotiff-samples" / "RGB.byte.tif", "--out", tmp_path / "d",
                    "--chip-size", "64", "--stride", "0")
    assert code == 2 and "stride=0" in err and "[1, 8192]" in err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- item 4: partial outputs ---------------------------------------------------------------------------
def test_disk_full_during_generate_leaves_no_final_named_file(capsys, tmp_path, tiny_model_dir, monkeypatch):
    calls = {"n": 0}
    original = PIL.Image.Image.save

    def full_disk(self, fp, *args, **kwargs):  # the third image's PNG hits a full disk
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        return original(self, fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image.Image, "save", full_disk)
    out = tmp_path / "out" / "img.png"
    code, err = run(capsys, "generate", PROMPT, "--model", tiny_model_dir, "--num-images", "4", "--steps", "1",
                    "--lat", "47", "--lon", "-99", "--gsd", "5", "--geotiff", "--seed", "1", "--out", out)
    assert code == 2 and "No space left" in err, err
    assert list(out.parent.iterdir()) == []  # no img_0.tif without its PNG/JSON, no temporary files


def test_outputs_of_one_call_appear_together(tmp_path):
    targets = [tmp_path / "a.png", tmp_path / "a.json"]
    with pytest.raises(RuntimeError), atomic_files(targets) as staged:
        staged[targets[0]].write_text("x")
        raise RuntimeError("crash while writing the second file")
    assert list(tmp_path.iterdir()) == []
    with atomic_files(targets) as staged:
        for tmp in staged.values():
            tmp.write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.png"]


def test_stale_partials_of_dead_runs_are_removed(tmp_path):
    dead = tmp_path / ".model.999999999.abc123.partial"
    (dead / "unet").mkdir(parents=True)
    alive = tmp_path / f".model.{os.getpid()}.zzz.partial"
    alive.mkdir()
    foreign = tmp_path / ".model.not-ours"
    foreign.mkdir()
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("w")
    assert not dead.exists() and alive.exists() and foreign.exists() and (tmp_path / "model" / "weights").is_file()
    stale_file = tmp_path / ".img.png.999999999.q1w2.partial.png"
    stale_file.write_text("half")
    assert clean_stale_partials(tmp_path / "img.png") == [stale_file] and not stale_file.exists()


# --- item 5: user errors exit 2 -------------------------------------------------------------------------
def _weights(model: Path) -> Path:
    return next((model / "unet").glob("*.safetensors"))


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "pickle"])
def test_damaged_weights_exit_2_naming_the_file(capsys, tmp_path, tiny_pipeline, damage):
    model = tmp_path / "model"
    tiny_pipeline.save_pretrained(model)
    weights = _weights(model)
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "corrupt":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 64)
    else:
        weights.rename(weights.with_suffix(".bin"))
    code, err = run(capsys, "generate", PROMPT, "--model", model, "--steps", "1", "--out", tmp_path / "o.png")
    assert code == 2, err
    expected = {"truncated": "truncated", "corrupt": "corrupt", "pickle": "pickle"}[damage]
    assert expected in err and "unet" in err and "internal error" not in err, err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(("device", "message"), [("foo", "unknown device"), ("cuda:0", "CUDA")])
def test_bad_device_exits_2(capsys, tmp_path, device, message):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = run(capsys, "generate", PROMPT, "--device", device, "--out", tmp_path / "o.png")
    assert code == 2 and message in err and f"--device={device!r}" in err, err


def test_read_only_output_of_prepare_data_exits_2(capsys, tmp_path, shared_data, monkeypatch):
    def read_only(*_args, **kwargs):  # as on a read-only mount (root ignores permission bits)
        raise OSError(errno.EROFS, "Read-only file system", str(kwargs.get("dir", tmp_path)))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    code, err = run(capsys, "prepare-data", shared_data / "geotiff-samples" / "RGB.byte.tif", "--out", tmp_path / "d",
                    "--chip-size", "64", "--no-progress")
    assert code == 2 and "Read-only file system" in err and str(tmp_path) in err, err


def test_invalid_utf8_prompt_exits_2(capsys, tmp_path):
    prompt = b"farm\xff land".decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    code, err = run(capsys, "generate", prompt, "--out", tmp_path / "o.png")
    assert code == 2 and "prompt: not valid UTF-8" in err, err


# --- item 7: smaller ------------------------------------------------------------------------------------
@pytest.mark.parametrize("out", ["folder", "/dev/full"])
def test_out_naming_a_folder_or_a_device_is_refused(capsys, tmp_path, out):
    target = tmp_path if out == "folder" else Path(out)
    if not target.exists():
        pytest.skip(f"{target} does not exist here")
    code, err = run(capsys, "generate", PROMPT, "--steps", "1", "--out", target)
    assert code == 2 and ("directory" in err or "folder" in err or "not a regular file" in err), err


def test_width_out_of_range_says_the_range(capsys, tmp_path):
    code, err = run(capsys, "generate", PROMPT, "--width", "100000", "--out", tmp_path / "o.png")
    assert code == 2 and "out of range; allowed [8, 2048]" in err and "multiple" not in err, err


def test_tiny_input_and_three_band_mask_are_one_line_errors(capsys, tmp_path, tiny_model_dir):
    PIL.Image.fromarray(np.full((1, 1, 3), 9, np.uint8)).save(tmp_path / "dot.png")
    code, err = run(capsys, "superres", tmp_path / "dot.png", "--model", tiny_model_dir, "--out", tmp_path / "o.png")
    assert code == 2 and "1x1 pixels; at least 8x8" in err, err
    PIL.Image.fromarray(np.full((16, 16, 3), 9, np.uint8)).save(tmp_path / "img.png")
    PIL.Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(tmp_path / "mask.png")
    code, err = run(capsys, "inpaint", tmp_path / "img.png", "--mask", tmp_path / "mask.png", "--model",
                    tiny_model_dir, "--out", tmp_path / "o.png")
    assert code == 2 and "mask must have 1 band" in err and "got 3" in err, err


# --- item 6: training data checked when the dataset is built --------------------------------------------
NAIP = "naip-timeseries/m_4709963_se_14_1_20090818.tif"


def train_flags(data: list[Path], out: Path, **extra) -> list[str]:
    values = {"data": "[" + ", ".join(str(d) for d in data) + "]", "chip-size": 64, "bands": "1,2,3",
              "preset": "tiny", "max-samples": 2, "batch-size": 2, "max-steps": 1, "checkpoint-every": 1,
              "report-to": "null", "output-dir": out, "use-ema": "false", **extra}
    return ["train", *[str(x) for key, value in values.items() for x in (f"--{key}", value)]]


def test_train_skips_and_reports_a_damaged_raster(capsys, caplog, tmp_path, shared_data):
    corrupt = shared_data / "geotiff-samples" / "corrupt.tif"
    with caplog.at_level("WARNING"):
        code, err = run(capsys, *train_flags([corrupt, shared_data / NAIP], tmp_path / "run"))
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(corrupt) in m and "damaged" in m for m in warnings), warnings
    assert (tmp_path / "run" / "model" / "model_index.json").is_file()


def test_train_on_only_damaged_rasters_exits_2_before_any_step(capsys, tmp_path, shared_data, monkeypatch):
    from diffusionsat.training.trainer import Trainer

    def no_training(*_args, **_kwargs):
        raise AssertionError("training started on a dataset without usable samples")

    monkeypatch.setattr(Trainer, "train", no_training)
    corrupt = shared_data / "geotiff-samples" / "corrupt.tif"
    code, err = run(capsys, *train_flags([corrupt], tmp_path / "run"))
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: data: no usable samples") and str(corrupt) in line and "damaged" in line, err
    assert "Traceback" not in err and not (tmp_path / "run" / "model").exists()


# --- item 7: a damaged RNG state is an error on resume, not silently ignored ----------------------------
@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_resume_from_a_damaged_rng_state_exits_2_naming_the_file(capsys, tmp_path, shared_data, damage):
    from diffusionsat.training import list_checkpoints
    from diffusionsat.training.reproducibility import check_rng_state

    flags = train_flags([shared_data / NAIP], tmp_path / "run")
    code, err = run(capsys, *flags)
    assert code == 0, err
    rng = list_checkpoints(tmp_path / "run")[-1] / "random_states_0.pkl"
    assert check_rng_state(rng.parent) == rng  # what accelerate wrote passes the check
    if damage == "garbage":
        rng.write_bytes(b"\x80\x04not a pickle at all")
    else:
        rng.unlink()
    code, err = run(capsys, *flags, "--max-steps", "2", "--resume", "latest")
    assert code == 2, err
    assert str(rng) in err and ("unreadable RNG state" if damage == "garbage" else "missing") in err, err
    assert len(err.strip().splitlines()) == 1
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-00000001"]  # no step was taken


# --- item 5: train into a folder that cannot be written --------------------------------------------------
@pytest.mark.parametrize("problem", ["read-only", "file in the way"])
def test_read_only_output_of_train_exits_2_naming_the_folder(capsys, tmp_path, shared_data, monkeypatch, problem):
    from diffusionsat.training import datasets

    def no_dataset(_cfg):
        raise AssertionError("the dataset was built although the output folder cannot be written")

    monkeypatch.setattr(datasets, "build_dataset", no_dataset)
    out = tmp_path / "run"
    if problem == "read-only":
        def read_only(*_args, **kwargs):  # as on a read-only mount (root ignores permission bits)
            raise OSError(errno.EROFS, "Read-only file system", str(kwargs.get("dir")))

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    else:
        out.write_text("not a folder")
    code, err = run(capsys, *train_flags([shared_data / NAIP], out))
    assert code == 2, err
    assert f"output_dir {str(out)!r}" in err and ("Read-only file system" if problem == "read-only" else "in the way") in err
    assert len(err.strip().splitlines()) == 1, err


def test_tiny_inputs_are_refused_alike_by_the_cli_and_the_server(tmp_path):
    import io

    from diffusionsat.conditional import check_input_size
    from diffusionsat.server.uploads import UploadError, inspect_image

    buffer = io.BytesIO()
    PIL.Image.fromarray(np.full((1, 1, 3), 9, np.uint8)).save(buffer, format="PNG")
    (tmp_path / "dot.png").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError) as cli_error:
        check_input_size(tmp_path / "dot.png")
    with pytest.raises(UploadError) as server_error:  # a 422 before anything is queued, not a failed job
        inspect_image("image", "dot.png", buffer.getvalue(), max_bytes=1 << 20, max_pixels=1 << 20, max_bands=4)
    assert server_error.value.status == 422 and server_error.value.field == "image"
    assert "1x1 pixels; at least 8x8 needed" in str(cli_error.value)
    assert "1x1 pixels; at least 8x8 needed" in str(server_error.value)
