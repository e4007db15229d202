"""scripts/interpolate_models.py: weight interpolation of two default-model versions of one lineage."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from diffusionsat.models.text import extend_caption_vocabulary

UNET = "unet/diffusion_pytorch_model.safetensors"
TEXT = "text_encoder/model.safetensors"


@pytest.fixture(scope="module")
def interp(load_script):
    return load_script("scripts/interpolate_models.py")


@pytest.fixture
def lineage(tiny_pipeline, tmp_path):
    """An earlier model and its "fine-tuned" descendant: new caption words, every weight moved."""
    early = tmp_path / "early"
    tiny_pipeline.save_pretrained(early)
    tiny_pipeline.tokenizer, added = extend_caption_vocabulary(
        tiny_pipeline.tokenizer, tiny_pipeline.text_encoder, ["a satellite image of a harbor and a runway"])
    assert added
    with torch.no_grad():
        for module in (tiny_pipeline.unet, tiny_pipeline.text_encoder):
            for p in module.parameters():
                p.add_(torch.randn_like(p))
    late = tmp_path / "late"
    tiny_pipeline.save_pretrained(late)
    return early, late


def test_interpolation_is_the_weighted_mean_and_loads(interp, lineage, tmp_path):
    early, late = lineage
    out = interp.interpolate(early, late, 0.25, tmp_path / "mix")
    for weights in (UNET, TEXT):
        a, b, m = load_file(early / weights), load_file(late / weights), load_file(out / weights)
        assert m.keys() == b.keys()
        for name, tm in m.items():
            if tm.shape == a[name].shape:
                torch.testing.assert_close(tm, 0.75 * a[name] + 0.25 * b[name], rtol=1e-5, atol=1e-6)
    a, b, m = load_file(early / TEXT), load_file(late / TEXT), load_file(out / TEXT)
    emb = next(k for k in m if k.endswith("token_embedding.weight"))
    known = a[emb].shape[0]
    assert m[emb].shape == b[emb].shape and b[emb].shape[0] > known
    # The words the earlier model lacks start, on its side, from its mean word embedding.
    torch.testing.assert_close(m[emb][known:], 0.75 * a[emb].mean(0) + 0.25 * b[emb][known:], rtol=1e-5, atol=1e-6)
    assert json.loads((out / "interpolation.json").read_text())["alpha"] == 0.25
    assert (out / "tokenizer").is_dir() and not any(p.name.startswith("controlnet") for p in out.iterdir())

    from diffusionsat.loading import load_pipeline

    pipe = load_pipeline(str(out))
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt="a satellite image of a harbor", num_inference_steps=1, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape[-1] == 3 and float(image.std()) > 0


def test_the_ends_are_the_two_models(interp, lineage, tmp_path):
    early, late = lineage
    at_one = load_file(interp.interpolate(early, late, 1.0, tmp_path / "one") / UNET)
    at_zero = load_file(interp.interpolate(early, late, 0.0, tmp_path / "zero") / UNET)
    for name, t in load_file(late / UNET).items():
        torch.testing.assert_close(at_one[name], t)
    for name, t in load_file(early / UNET).items():
        torch.testing.assert_close(at_zero[name], t)


def test_refuses_what_does_not_interpolate(interp, lineage, tiny_pipeline, tmp_path):
    early, late = lineage
    with pytest.raises(SystemExit, match="alpha"):
        interp.interpolate(early, late, 1.5, tmp_path / "x")
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit, match="already exists"):
        interp.interpolate(early, late, 0.5, tmp_path / "taken")
    config = json.loads((late / "unet" / "config.json").read_text())
    other = tmp_path / "other"
    shutil.copytree(late, other)
    config["layers_per_block"] = config["layers_per_block"] + 1
    (other / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="layers_per_block"):
        interp.interpolate(early, other, 0.5, tmp_path / "y")
    # A model whose vocabulary does not extend the other's is not one lineage.
    from diffusionsat.models.presets import build_pipeline

    stranger = tmp_path / "stranger"
    build_pipeline("tiny", ["fields rivers roads towns", "a harbor"], seed=1).save_pretrained(stranger)
    with pytest.raises(SystemExit, match="lineage"):
        interp.interpolate(early, stranger, 0.5, tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()
