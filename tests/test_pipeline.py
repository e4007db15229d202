"""DiffusionSatPipeline: determinism, CFG, schedulers, batching, save/load (SPEC §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from diffusionsat import DiffusionSatPipeline, SatMetadata
from diffusionsat.models.presets import OUR_UNKNOWN_VALUE, build_pipeline
from diffusionsat.pipelines.pipeline_diffusionsat import combine_guidance
from diffusionsat.schedulers import SCHEDULERS, make_scheduler

MD = SatMetadata(lat=47.0, lon=-99.2, gsd=5.0, year=2019, month=7, day=15)


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 4)
    kwargs.setdefault("output_type", "np")
    return pipe("a satellite image of farmland", metadata=kwargs.pop("metadata", MD),
                generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_seeded_generation_is_deterministic(tiny_pipeline):
    a, b, c = run(tiny_pipeline, 0), run(tiny_pipeline, 0), run(tiny_pipeline, 1)
    assert a.shape == (1, 16, 16, 3) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_cfg_on_off_and_metadata_guidance_change_output(tiny_pipeline):
    off = run(tiny_pipeline, guidance_scale=1.0)
    on = run(tiny_pipeline, guidance_scale=5.0)
    three = run(tiny_pipeline, guidance_scale=5.0, metadata_guidance_scale=2.0)
    assert np.abs(off - on).max() > 1e-4
    assert np.abs(on - three).max() > 1e-4
    negative = run(tiny_pipeline, guidance_scale=5.0, negative_prompt="water")
    assert np.abs(on - negative).max() > 1e-4


def test_metadata_changes_the_image(tiny_pipeline):
    summer = run(tiny_pipeline, metadata=MD)
    winter = run(tiny_pipeline, metadata=MD.replace(month=1))
    unknown = run(tiny_pipeline, metadata=None)
    assert np.abs(summer - winter).max() > 1e-5
    assert np.abs(summer - unknown).max() > 1e-5


def spy_metadata(pipe, monkeypatch) -> list[torch.Tensor]:
    """Record the metadata of every UNet call (all CFG branches of a step in one batch)."""
    seen = []
    original = pipe.unet.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["metadata"].clone())
        return original(*args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    return seen


def test_unconditional_branch_uses_models_unknown_value(tiny_pipeline, monkeypatch):
    seen = spy_metadata(tiny_pipeline, monkeypatch)
    run(tiny_pipeline, guidance_scale=4.0, num_inference_steps=1)
    md = seen[0]
    assert md.shape == (2, 7)
    assert torch.all(md[0] == OUR_UNKNOWN_VALUE)
    assert torch.allclose(md[1], torch.tensor(MD.normalize(OUR_UNKNOWN_VALUE), dtype=torch.float32))


def test_anchored_guidance_keeps_the_trained_fields_in_the_negative_branch(tiny_pipeline, tmp_path, monkeypatch):
    """A UNet trained with a guidance anchor (lon/lat) gets, for requests that give both, a negative
    branch with just those fields; requests missing one, and ``anchored_guidance=False``, keep the
    all-unknown branch. The anchor is part of the saved UNet's config."""
    tiny_pipeline.unet.register_to_config(guidance_anchor_fields=["lon", "lat"])
    tiny_pipeline.save_pretrained(tmp_path / "anchored")
    pipe = DiffusionSatPipeline.from_pretrained(tmp_path / "anchored")
    assert pipe.guidance_anchor_fields == ("lon", "lat")
    seen = spy_metadata(pipe, monkeypatch)
    located, unlocated = MD, SatMetadata(lat=47.0, gsd=5.0)
    pipe(["a", "b"], metadata=[located, unlocated], guidance_scale=4.0, num_inference_steps=1, output_type="np")
    full = torch.tensor(located.normalize(OUR_UNKNOWN_VALUE))
    negative = seen[-1][:2]
    torch.testing.assert_close(negative[0, :2], full[:2])
    assert torch.all(negative[0, 2:] == OUR_UNKNOWN_VALUE) and torch.all(negative[1] == OUR_UNKNOWN_VALUE)
    pipe(["a"], metadata=located, guidance_scale=4.0, num_inference_steps=1, output_type="np", anchored_guidance=False)
    assert torch.all(seen[-1][0] == OUR_UNKNOWN_VALUE)
    pipe(["a"], metadata=located, guidance_scale=4.0, metadata_guidance_scale=2.0, num_inference_steps=1,
         output_type="np")
    torch.testing.assert_close(seen[-1][1], seen[-1][0])  # the text-only branch is anchored the same way
    torch.testing.assert_close(seen[-1][0, :2], full[:2])


def test_guidance_anchor_fields_must_be_metadata_fields(tiny_pipeline):
    config = dict(tiny_pipeline.unet.config, guidance_anchor_fields=["lat", "altitude"])
    with pytest.raises(ValueError, match=r"guidance_anchor_fields: unknown field\(s\) 'altitude'; allowed lon, lat"):
        type(tiny_pipeline.unet).from_config(config)


def test_combine_guidance_formulas():
    u, t, c = torch.zeros(1, 1), torch.ones(1, 1), torch.full((1, 1), 3.0)
    assert combine_guidance(torch.cat([u, c]), 2.0, None).item() == pytest.approx(6.0)
    assert combine_guidance(torch.cat([u, t, c]), 2.0, 0.5).item() == pytest.approx(2.0 + 0.5 * 2.0)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_swaps_in(tiny_pipeline, name):
    tiny_pipeline.scheduler = make_scheduler(name, tiny_pipeline.scheduler)
    image = run(tiny_pipeline, num_inference_steps=10)
    assert image.shape == (1, 16, 16, 3) and np.isfinite(image).all()


def test_dpm_solver_ends_on_sigma_min_as_the_original_unless_configured(tiny_pipeline):
    from diffusers import DPMSolverMultistepScheduler

    dpm = make_scheduler("dpm++", tiny_pipeline.scheduler)  # from the model's DDPM config
    assert dpm.config.final_sigmas_type == "sigma_min"
    own = DPMSolverMultistepScheduler.from_config({**tiny_pipeline.scheduler.config, "final_sigmas_type": "zero"})
    assert make_scheduler("dpm++", own).config.final_sigmas_type == "zero"  # a saved choice is kept
    assert make_scheduler("ddim", dpm).config.get("final_sigmas_type") in (None, "sigma_min")


def test_batches_broadcast_metadata_and_images_per_prompt(tiny_pipeline):
    out = tiny_pipeline(["farmland", "a river"], metadata=MD, num_images_per_prompt=3, num_inference_steps=2,
                        output_type="pt").images
    assert out.shape == (6, 3, 16, 16)
    per_prompt = tiny_pipeline(["farmland", "a river"], metadata=[MD, {"lat": -8.4, "lon": -74.4}],
                               num_inference_steps=2, output_type="pil").images
    assert len(per_prompt) == 2 and per_prompt[0].size == (16, 16)
    latents = tiny_pipeline("farmland", MD, num_inference_steps=2, output_type="latent").images
    assert latents.shape == (1, 3, 16, 16)
    normalised = torch.tensor([MD.normalize(OUR_UNKNOWN_VALUE)])
    np.testing.assert_allclose(run(tiny_pipeline, metadata=normalised), run(tiny_pipeline), atol=1e-6)


def test_bad_inputs_are_clear_errors(tiny_pipeline):
    with pytest.raises(ValueError, match="height=15: must be a positive multiple of 2"):
        tiny_pipeline("x", height=15, num_inference_steps=1)
    with pytest.raises(ValueError, match="3 metadata entries for 2 prompts"):
        tiny_pipeline(["a", "b"], metadata=[MD, MD, MD], num_inference_steps=1)
    with pytest.raises(ValueError, match="num_inference_steps"):
        tiny_pipeline("x", num_inference_steps=0)
    with pytest.raises(ValueError, match="lat"):
        tiny_pipeline("x", metadata={"lat": 123}, num_inference_steps=1)
    with pytest.raises(ValueError, match="output_type"):
        tiny_pipeline("x", num_inference_steps=1, output_type="jpeg")


def test_save_load_round_trip_is_identical(tiny_pipeline, tmp_path):
    before = run(tiny_pipeline, guidance_scale=3.0)
    tiny_pipeline.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "model_index.json", "scheduler", "text_encoder", "tokenizer", "unet"]
    assert not list((tmp_path / "model").rglob("*.bin")), "safetensors only"
    loaded = DiffusionSatPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(before, run(loaded, guidance_scale=3.0))


def test_latent_pipeline_with_vae(tmp_path):
    pixel = build_pipeline("tiny", ["farmland"], seed=0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=32)
    unet_config = dict(pixel.unet.config)
    unet_config.update(in_channels=4, out_channels=4, sample_size=8)
    unet = type(pixel.unet).from_config(unet_config)
    pipe = DiffusionSatPipeline(vae=vae, text_encoder=pixel.text_encoder, tokenizer=pixel.tokenizer, unet=unet,
                                scheduler=pixel.scheduler)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 2 and pipe.default_size == 16
    image = run(pipe)
    assert image.shape == (1, 16, 16, 3)
    pipe.save_pretrained(tmp_path / "latent")
    again = DiffusionSatPipeline.from_pretrained(tmp_path / "latent")
    again.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(image, run(again))


def test_callback_sees_every_step(tiny_pipeline):
    steps = []
    tiny_pipeline("x", num_inference_steps=5, callback=lambda i, t, latents: steps.append(i))
    assert steps == list(range(5))


def test_guidance_rescale_matches_the_conditional_spread(tiny_pipeline, monkeypatch):
    conditional, guided = [], []
    unet_forward, step = tiny_pipeline.unet.forward, tiny_pipeline.scheduler.step

    def spy_unet(*args, **kwargs):
        out = unet_forward(*args, **kwargs)
        conditional.append(out[0].chunk(2)[1].clone())
        return out

    def spy_step(model_output, *args, **kwargs):
        guided.append(model_output.clone())
        return step(model_output, *args, **kwargs)

    monkeypatch.setattr(tiny_pipeline.unet, "forward", spy_unet)
    monkeypatch.setattr(tiny_pipeline.scheduler, "step", spy_step)
    plain = run(tiny_pipeline, guidance_scale=6.0, num_inference_steps=3)
    conditional.clear(), guided.clear()
    rescaled = run(tiny_pipeline, guidance_scale=6.0, num_inference_steps=3, guidance_rescale=1.0)
    assert np.abs(plain - rescaled).max() > 1e-4
    for cond, out in zip(conditional, guided, strict=True):
        torch.testing.assert_close(out.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"guidance_rescale=1.5: must be in \[0, 1\]"):
        tiny_pipeline("x", num_inference_steps=1, guidance_rescale=1.5)
