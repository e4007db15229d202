"""`diffusionsat generate` / `info`: success path, sidecar, GeoTIFF, and bad input (SPEC §5, §6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer

from diffusionsat.cli.main import main
from diffusionsat.fileio import _umask

ARGS = ["a satellite image of farmland", "--lat", "47.0", "--lon", "-99.2", "--gsd", "5",
        "--date", "2019-07-15", "--steps", "3", "--seed", "7"]


def test_generate_writes_png_sidecar_and_geotiff(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "farm.png"
    code = main(["generate", *ARGS, "--model", str(tiny_model_dir), "--out", str(out), "--geotiff",
                 "--scheduler", "ddim", "--guidance", "2.5"])
    assert code == 0, capsys.readouterr().err
    image = np.asarray(Image.open(out))
    assert image.shape == (16, 16, 3) and image.std() > 0
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["prompt"] == ARGS[0] and sidecar["seed"] == 7 and sidecar["steps"] == 3
    assert sidecar["scheduler"] == "ddim" and sidecar["guidance_scale"] == 2.5
    assert sidecar["metadata"] == {"lon": -99.2, "lat": 47.0, "gsd": 5.0, "date": "2019-07-15"}
    assert sidecar["model_version"] and sidecar["diffusionsat_version"]
    assert sidecar["metadata_normalized"][3] is None  # cloud cover unknown, not 0
    assert sidecar["metadata_normalized"][1] == pytest.approx((47.0 + 90) / 180 * 1000)
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's private 0600
    with rasterio.open(out.with_suffix(".tif")) as src:
        assert src.crs.to_epsg() == 32614  # UTM 14N
        assert src.res == (5.0, 5.0)
        assert (src.width, src.height, src.count) == (16, 16, 3)
        np.testing.assert_array_equal(np.moveaxis(src.read(), 0, -1), image)
        cx, cy = (src.bounds.left + src.bounds.right) / 2, (src.bounds.top + src.bounds.bottom) / 2
        lon, lat = Transformer.from_crs(src.crs.to_wkt(), "EPSG:4326", always_xy=True).transform(cx, cy)
    assert lon == pytest.approx(-99.2, abs=1e-6) and lat == pytest.approx(47.0, abs=1e-6)


def test_same_seed_reproduces_and_num_images_names_files(tiny_model_dir, tmp_path):
    assert main(["generate", *ARGS, "--model", str(tiny_model_dir), "--out", str(tmp_path / "a.png")]) == 0
    assert main(["generate", *ARGS, "--model", str(tiny_model_dir), "--out", str(tmp_path / "b.png"),
                 "--num-images", "2"]) == 0
    a = np.asarray(Image.open(tmp_path / "a.png"))
    b0 = np.asarray(Image.open(tmp_path / "b_0.png"))
    b1 = np.asarray(Image.open(tmp_path / "b_1.png"))
    np.testing.assert_array_equal(a, b0)  # image i uses seed + i
    assert json.loads((tmp_path / "b_1.json").read_text())["seed"] == 8
    assert np.abs(a.astype(int) - b1).max() > 0


def test_no_anchored_guidance_switches_to_the_all_unknown_negative(tiny_pipeline, tmp_path, capsys):
    """On a model with a location anchor the two negatives give different images; the sidecar says
    when the anchored one was turned off. The evaluate flag is refused where it has no meaning."""
    tiny_pipeline.unet.register_to_config(guidance_anchor_fields=["lon", "lat"])
    tiny_pipeline.save_pretrained(tmp_path / "anchored")
    common = ["generate", *ARGS, "--model", str(tmp_path / "anchored")]
    assert main([*common, "--out", str(tmp_path / "a.png")]) == 0
    assert main([*common, "--no-anchored-guidance", "--out", str(tmp_path / "p.png")]) == 0
    anchored, plain = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in "ap")
    assert np.abs(anchored - plain).max() > 0
    assert "anchored_guidance" not in json.loads((tmp_path / "a.json").read_text())
    assert json.loads((tmp_path / "p.json").read_text())["anchored_guidance"] is False
    code = main(["evaluate", "--task", "superres", "--data", str(tmp_path), "--out", str(tmp_path / "eval"),
                 "--no-anchored-guidance"])
    assert code == 2 and "--no-anchored-guidance applies to --task generate only, not superres" in capsys.readouterr().err


def test_existing_output_is_never_overwritten(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    out.write_bytes(b"precious")
    assert main(["generate", *ARGS, "--model", str(tiny_model_dir), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"precious" and not out.with_suffix(".json").exists()
    assert main(["generate", *ARGS, "--model", str(tiny_model_dir), "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_default_out_picks_a_free_name(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "generated-1.png").write_bytes(b"x")
    assert main(["generate", *ARGS, "--model", str(tiny_model_dir)]) == 0
    assert (tmp_path / "generated-2.png").exists() and (tmp_path / "generated-1.png").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lat", "100"], "lat=100.0: out of range; allowed [-90, 90]"),
        (["--date", "2021-02-30"], "date='2021-02-30': not a real calendar date"),
        (["--gsd", "-1"], "gsd=-1.0: out of range; allowed (0, 1000]"),
        (["--lon", "east"], "lon='east': must be a number"),
        (["--cloud-cover", "2"], "cloud_cover=2.0: out of range; allowed [0, 1]"),
        (["--steps", "0"], "steps=0: out of range"),
        (["--width", "30"], "width=30: must be a multiple of 8"),
        (["--scheduler", "fancy"], "scheduler='fancy': unknown"),
        (["--num-images", "0"], "num_images=0"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_model_load(extra, message, tmp_path, capsys):
    # A model folder that does not exist proves validation happens before any model is loaded.
    code = main(["generate", "x", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o.png"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_missing_model_unwritable_out_and_geotiff_without_location(tiny_model_dir, tmp_path, capsys):
    assert main(["generate", "x", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o.png")]) == 2
    assert "model folder" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["generate", "x", "--model", str(tiny_model_dir), "--out", str(blocker / "o.png")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(tiny_model_dir), "--out", str(tmp_path / "g.png"), "--geotiff"]) == 2
    assert "--geotiff needs --lat, --lon and --gsd" in capsys.readouterr().err
    empty = tmp_path / "empty-model"
    empty.mkdir()
    assert main(["generate", "x", "--model", str(empty), "--out", str(tmp_path / "e.png")]) == 2
    assert "no model_index.json" in capsys.readouterr().err


def test_console_script_exit_code_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", "from diffusionsat.cli.main import run; run()", "generate", "x", "--lat", "100"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: lat=100.0: out of range; allowed [-90, 90]"


def test_info_shows_versions_and_model_card(tiny_model_dir, capsys):
    (tiny_model_dir / "MODEL_CARD.md").write_text("# Tiny test model\ntrained on nothing\n")
    assert main(["info", "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "diffusionsat" in out and "torch" in out and "diffusers" in out
    assert "# Tiny test model" in out


def test_info_lists_the_task_controlnets_of_a_model(tiny_model_dir, capsys):
    import shutil

    for task in ("superres", "inpaint"):
        (tiny_model_dir / f"controlnet_{task}").mkdir()
        (tiny_model_dir / f"controlnet_{task}" / "config.json").write_text("{}")
    assert main(["info", "--model", str(tiny_model_dir)]) == 0
    out = capsys.readouterr().out
    assert "task models (used by these commands with no --model): superres (controlnet_superres/), inpaint" in out
    (tiny_model_dir / "controlnet_inpaint" / "MODEL_CARD.md").write_text("# In-painting card\n")
    assert main(["info", "--model", str(tiny_model_dir), "--task", "inpaint"]) == 0
    assert "# In-painting card" in capsys.readouterr().out
    assert main(["info", "--model", str(tiny_model_dir), "--task", "superres"]) == 0
    assert "(controlnet_superres/ has no MODEL_CARD.md)" in capsys.readouterr().out
    assert main(["info", "--model", str(tiny_model_dir), "--task", "temporal"]) == 2
    assert "this model has no temporal ControlNet (it has: superres, inpaint)" in capsys.readouterr().err
    for task in ("superres", "inpaint"):
        shutil.rmtree(tiny_model_dir / f"controlnet_{task}")
    assert main(["info", "--model", str(tiny_model_dir)]) == 0
    assert "task models" not in capsys.readouterr().out
