"""Loading models as they are released: pipeline folders, original run folders, ControlNet runs, hub ids."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusionsat import DiffusionSatPipeline, SatControlNet
from diffusionsat.loading import (
    ModelNotFoundError,
    describe_model,
    model_version,
    resolve_model,
    run_checkpoints,
)
from diffusionsat.pipelines import load_controlnet_pipeline

SRC = Path(__file__).resolve().parents[1] / "src"


def perturbed_unet(unet, seed: int):
    """A copy of ``unet`` with distinct weights (so tests can tell which checkpoint was loaded) and the
    original's "unknown" metadata value 0."""
    copy = type(unet).from_config({**unet.config, "metadata_unknown_value": 0.0})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p, q in zip(copy.parameters(), unet.parameters()):
            p.copy_(q + 0.01 * torch.randn(q.shape, generator=gen))
    return copy


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def write_original_run(pipe, folder: Path) -> dict[str, torch.nn.Module]:
    """An original DiffusionSat run folder: components at the root, ``"unet": [null, "SatUNet"]``,
    no root ``unet/``, the trained UNets in ``checkpoint-<N>/unet`` and ``unet_ema`` beside optimizer state."""
    pipe.save_pretrained(folder)
    shutil.rmtree(folder / "unet")
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = [None, "SatUNet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    unets = {"100/unet": perturbed_unet(pipe.unet, 1), "200/unet": perturbed_unet(pipe.unet, 2),
             "200/unet_ema": perturbed_unet(pipe.unet, 3)}
    for where, unet in unets.items():
        step, name = where.split("/")
        unet.save_pretrained(folder / f"checkpoint-{step}" / name)
        (folder / f"checkpoint-{step}" / "optimizer.bin").write_bytes(b"not a model")
    (folder / "checkpoint-300").mkdir()  # an interrupted checkpoint without a UNet is not a choice
    return unets


def test_original_run_folder_latest_ema_or_chosen_checkpoint(tiny_pipeline, tmp_path):
    run = tmp_path / "finetune_sd21_sn-satlas-fmow_snr5_md7norm_bs64"
    unets = write_original_run(tiny_pipeline, run)
    assert list(run_checkpoints(run)) == [100, 200]

    latest = DiffusionSatPipeline.from_pretrained(run)
    assert same_weights(latest.unet, unets["200/unet_ema"])  # latest N, EMA preferred
    chosen = DiffusionSatPipeline.from_pretrained(run, checkpoint=100)
    assert same_weights(chosen.unet, unets["100/unet"])
    assert same_weights(DiffusionSatPipeline.from_pretrained(run / "checkpoint-100").unet, unets["100/unet"])
    assert same_weights(latest.text_encoder, tiny_pipeline.text_encoder)

    assert resolve_model(run) == str(run)
    assert resolve_model(run, 100) == str(run / "checkpoint-100")
    assert describe_model(run) == f"{run} (checkpoint-200/unet_ema)"
    assert describe_model(run / "checkpoint-100") == f"{run} (checkpoint-100/unet)"
    assert model_version(run) != model_version(run / "checkpoint-100") is not None
    with pytest.raises(ModelNotFoundError, match=r"no checkpoint-7 with a unet \(checkpoints: 100, 200\)"):
        resolve_model(run, 7)

    images = latest("a b", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 16, 16, 3)


def test_pipeline_folder_with_null_library_entry(tiny_pipeline, tmp_path):
    folder = tmp_path / "original-pipeline"
    tiny_pipeline.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = [None, "SatUNet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    loaded = DiffusionSatPipeline.from_pretrained(folder)
    assert same_weights(loaded.unet, tiny_pipeline.unet)
    assert describe_model(folder) == str(folder)
    index["unet"] = [None, "SomethingElse"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="unet=\\[None, 'SomethingElse'\\], a class diffusionsat does not know"):
        DiffusionSatPipeline.from_pretrained(folder)


def test_controlnet_run_folder_in_the_original_format_loads(tiny_pipeline, tmp_path):
    from test_controlnet import original_folder, perturb

    base = tmp_path / "base"
    write_original_run(tiny_pipeline, base)
    unet = perturbed_unet(tiny_pipeline.unet, 0)
    net = perturb(SatControlNet.from_unet(unet, conditioning_channels=3), seed=2)
    cn_run = tmp_path / "controlnet_sd21_md7norm_fmow_condres256"
    original_folder(net, cn_run / "checkpoint-5" / "controlnet", "2d")
    original_folder(perturb(SatControlNet.from_unet(unet, conditioning_channels=3), seed=9),
                    cn_run / "checkpoint-1" / "controlnet", "2d")
    pipe = load_controlnet_pipeline(base, controlnet=cn_run)  # latest checkpoint-N/controlnet, converted
    assert isinstance(pipe.controlnet, SatControlNet) and same_weights(pipe.controlnet, net)
    # the run's own controlnet/ next to the base components
    original_folder(net, base / "controlnet", "2d")
    assert same_weights(load_controlnet_pipeline(base).controlnet, net)


def fake_hub_cache(pipe, cache: Path, repo: str = "BiliSakura/DiffusionSat-Single-512") -> Path:
    """A huggingface_hub cache holding ``repo`` at ``refs/main``, as a finished download leaves it."""
    org, name = repo.split("/")
    revision = "0123456789abcdef0123456789abcdef01234567"
    entry = cache / f"models--{org}--{name}"
    pipe.save_pretrained(entry / "snapshots" / revision)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(revision)
    return entry / "snapshots" / revision


def test_hub_id_from_the_cache_offline(tiny_pipeline, tmp_path):
    cache = tmp_path / "hf"
    snapshot = fake_hub_cache(tiny_pipeline, cache / "hub")
    out = tmp_path / "hub.png"
    script = f"""
import torch
from diffusionsat import DiffusionSatPipeline
from diffusionsat.cli.main import main
pipe = DiffusionSatPipeline.from_pretrained("BiliSakura/DiffusionSat-Single-512")
want = DiffusionSatPipeline.from_pretrained({str(snapshot)!r})
assert all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), want.unet.state_dict().values()))
assert main(["generate", "a b", "--model", "BiliSakura/DiffusionSat-Single-512", "--steps", "1", "--seed", "0",
             "--out", {str(out)!r}]) == 0
assert main(["generate", "a b", "--model", "nobody/not-cached", "--steps", "1", "--out", {str(out)!r} + ".x.png"]) == 2
"""
    env = {**os.environ, "HF_HOME": str(cache), "HF_HUB_CACHE": str(cache / "hub"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file() and "nobody/not-cached" in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error:")]) == 1


def test_saved_model_folder_files_follow_the_umask(tiny_pipeline, tmp_path):
    """safetensors' own temp-file-and-rename leaves weights 0600; atomic_dir gives them the umask's mode."""
    import os
    import stat

    from diffusionsat.fileio import atomic_dir

    mask = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            tiny_pipeline.save_pretrained(tmp)
    finally:
        os.umask(mask)
    weights = list((tmp_path / "model").rglob("*.safetensors"))
    assert weights
    assert {stat.S_IMODE(p.stat().st_mode) for p in weights} == {0o644}
