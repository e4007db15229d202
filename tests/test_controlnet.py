"""SatControlNet / SatControlNet3D and the ControlNet pipeline on tiny random models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusionsat import DiffusionSatControlNetPipeline, SatControlNet, SatControlNet3D, SatMetadata
from diffusionsat.conversion import convert_controlnet, downsample_factor_from_scale
from diffusionsat.models.controlnet import downsample_strides
from diffusionsat.pipelines import controlnet_noise_pred, load_controlnet_pipeline

PROMPT = "a satellite image of farmland in united states"
MD = SatMetadata(lat=47.0, lon=-99.2, gsd=5.0, year=2019, month=9, day=4)


def perturb(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give the zero-initialised parts (output convs, mixing weights) values, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 0:
                p.fill_(0.5)
            elif p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def unet_inputs(pipe, batch: int = 2):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 16, 16, generator=gen)
    text = torch.randn(batch, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size, generator=gen)
    md = torch.rand(batch, 7, generator=gen) * 1000
    return x, torch.tensor(500), text, md


def test_zero_init_2d_controlnet_leaves_base_output_unchanged(tiny_pipeline):
    unet = tiny_pipeline.unet
    controlnet = SatControlNet.from_unet(unet, conditioning_channels=13)
    x, t, text, md = unet_inputs(tiny_pipeline)
    control = torch.rand(2, 13, 16, 16)
    base = unet(x, t, text, metadata=md).sample
    out = controlnet_noise_pred(unet, controlnet, x, t, text, control, metadata=md, cond_metadata=torch.rand(2, 7) * 1000)
    assert torch.equal(base, out)
    # ... and the check can fail: a trained ControlNet does change the prediction
    out = controlnet_noise_pred(unet, perturb(controlnet), x, t, text, control, metadata=md)
    assert not torch.allclose(base, out, atol=1e-4)


def test_zero_init_3d_controlnet_leaves_base_output_unchanged(tiny_pipeline):
    unet = tiny_pipeline.unet
    controlnet = SatControlNet3D.from_unet(unet, conditioning_channels=4, max_frames=3)
    x, t, text, md = unet_inputs(tiny_pipeline)
    out = controlnet_noise_pred(unet, controlnet, x, t, text, torch.rand(2, 4, 3, 16, 16), metadata=md,
                                cond_metadata=torch.rand(2, 3, 7) * 1000)
    assert torch.equal(unet(x, t, text, metadata=md).sample, out)


def test_zero_init_pipeline_matches_base_pipeline(tiny_pipeline):
    controlnet = SatControlNet.from_unet(tiny_pipeline.unet, conditioning_channels=5)
    pipe = DiffusionSatControlNetPipeline(**tiny_pipeline.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, torch.rand(1, 5, 16, 16), metadata=MD, cond_metadata=MD, num_inference_steps=2,
               generator=torch.Generator().manual_seed(3), output_type="np").images
    ref = tiny_pipeline(PROMPT, metadata=MD, num_inference_steps=2, guidance_scale=3.0,
                        generator=torch.Generator().manual_seed(3), output_type="np").images
    np.testing.assert_array_equal(out, ref)


def test_3d_controlnet_takes_one_to_max_frames(tiny_pipeline):
    unet = tiny_pipeline.unet
    controlnet = perturb(SatControlNet3D.from_unet(unet, conditioning_channels=3, max_frames=4))
    x, t, text, md = unet_inputs(tiny_pipeline)
    shapes = None
    for frames in range(1, 5):
        down, mid = controlnet(x, t, text, torch.rand(2, 3, frames, 16, 16), metadata=md,
                               cond_metadata=torch.rand(2, frames, 7) * 1000, return_dict=False)
        assert all(torch.isfinite(d).all() for d in down) and torch.isfinite(mid).all()
        current = [d.shape for d in down] + [mid.shape]
        assert shapes is None or current == shapes
        shapes = current
    with pytest.raises(ValueError, match="takes 1 to 4"):
        controlnet(x, t, text, torch.rand(2, 3, 5, 16, 16), metadata=md, return_dict=False)


def test_temporal_pipeline_is_order_invariant_and_sees_every_frame(tiny_pipeline):
    controlnet = perturb(SatControlNet3D.from_unet(tiny_pipeline.unet, conditioning_channels=3, max_frames=3))
    pipe = DiffusionSatControlNetPipeline(**tiny_pipeline.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    frames = torch.rand(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    dates = [SatMetadata(year=2015, month=9, day=26), SatMetadata(year=2010, month=6, day=29), SatMetadata(year=2012)]

    def run(images, metadata):
        return pipe(PROMPT, images, metadata=MD, cond_metadata=metadata, num_inference_steps=2, guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(7), output_type="np").images

    reference = run(frames, dates)
    for order in ([2, 0, 1], [1, 2, 0]):
        shuffled = run(frames[:, :, order], [dates[i] for i in order])
        np.testing.assert_array_equal(reference, shuffled)
    changed = frames.clone()
    changed[:, :, 1] = 1 - changed[:, :, 1]
    assert np.abs(run(changed, dates) - reference).max() > 1e-3
    other_date = [dates[0], SatMetadata(year=2011, month=6, day=29), dates[2]]
    assert np.abs(run(frames, other_date) - reference).max() > 1e-4
    # without sorting, the order matters (so sorting is what makes it invariant)
    unsorted = pipe(PROMPT, frames[:, :, [2, 0, 1]], metadata=MD, cond_metadata=[dates[i] for i in (2, 0, 1)],
                    num_inference_steps=2, guidance_scale=1.0, sort_frames=False, generator=torch.Generator().manual_seed(7),
                    output_type="np").images
    assert np.abs(unsorted - reference).max() > 1e-5


def test_frames_need_all_dates_or_none(tiny_pipeline):
    controlnet = SatControlNet3D.from_unet(tiny_pipeline.unet, conditioning_channels=3, max_frames=3)
    pipe = DiffusionSatControlNetPipeline(**tiny_pipeline.components, controlnet=controlnet)
    with pytest.raises(ValueError, match="frame 2 has no date"):
        pipe(PROMPT, torch.rand(1, 3, 2, 16, 16), cond_metadata=[SatMetadata(year=2010), SatMetadata()],
             num_inference_steps=1)


def test_unconditional_branch_gets_unknown_target_and_conditioning_metadata(tiny_pipeline, monkeypatch):
    controlnet = SatControlNet.from_unet(tiny_pipeline.unet, conditioning_channels=3)
    pipe = DiffusionSatControlNetPipeline(**tiny_pipeline.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    seen = {}
    original = SatControlNet.forward

    def spy(self, sample, timestep, text, cond, scale=1.0, metadata=None, cond_metadata=None, **kw):
        seen.update(metadata=metadata.clone(), cond_metadata=cond_metadata.clone(), control=cond.clone())
        return original(self, sample, timestep, text, cond, scale, metadata=metadata, cond_metadata=cond_metadata, **kw)

    monkeypatch.setattr(SatControlNet, "forward", spy)
    control = torch.rand(1, 3, 16, 16)
    pipe(PROMPT, control, metadata=MD, cond_metadata=SatMetadata(gsd=10.0, year=2018), num_inference_steps=1)
    unknown = pipe.metadata_unknown_value
    uncond_md, cond_md = seen["metadata"].chunk(2)
    uncond_cmd, cond_cmd = seen["cond_metadata"].chunk(2)
    assert torch.all(uncond_md == unknown) and torch.all(uncond_cmd == unknown)
    assert torch.allclose(cond_md[0], torch.tensor(MD.normalize(unknown)))
    assert cond_cmd[0, 2] == pytest.approx(10_000.0) and cond_cmd[0, 0] == unknown
    # the control image itself is not zeroed in the unconditional branch
    uncond_ctrl, cond_ctrl = seen["control"].chunk(2)
    assert torch.equal(uncond_ctrl, cond_ctrl) and torch.allclose(cond_ctrl, control)


def test_left_out_conditioning_metadata_adds_no_term(tiny_pipeline, monkeypatch):
    """cond_metadata=None skips the conditioning-metadata embedding (as the original), rather than
    adding the embedding of all-"unknown" metadata."""
    x, t, text, md = unet_inputs(tiny_pipeline)
    for net, control in ((perturb(SatControlNet.from_unet(tiny_pipeline.unet, conditioning_channels=3)),
                          torch.rand(2, 3, 16, 16)),
                         (perturb(SatControlNet3D.from_unet(tiny_pipeline.unet, conditioning_channels=3, max_frames=2)),
                          torch.rand(2, 3, 2, 16, 16))):
        frames = (2,) if control.ndim == 5 else ()
        unknown = torch.full((2, *frames, 7), net.config.metadata_unknown_value)
        skipped = net(x, t, text, control, metadata=md, cond_metadata=None, return_dict=False)[1]
        with_unknown = net(x, t, text, control, metadata=md, cond_metadata=unknown, return_dict=False)[1]
        assert not torch.allclose(skipped, with_unknown)
    seen = []
    original = SatControlNet.forward

    def spy(self, *args, cond_metadata=None, **kw):
        seen.append(cond_metadata)
        return original(self, *args, cond_metadata=cond_metadata, **kw)

    monkeypatch.setattr(SatControlNet, "forward", spy)
    controlnet = SatControlNet.from_unet(tiny_pipeline.unet, conditioning_channels=3)
    pipe = DiffusionSatControlNetPipeline(**tiny_pipeline.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    pipe(PROMPT, torch.rand(1, 3, 16, 16), metadata=MD, num_inference_steps=1)
    assert seen == [None]


def test_band_count_the_controlnet_was_not_trained_for(tiny_pipeline):
    controlnet = SatControlNet.from_unet(tiny_pipeline.unet, conditioning_channels=10)
    pipe = DiffusionSatControlNetPipeline(**tiny_pipeline.components, controlnet=controlnet)
    with pytest.raises(ValueError, match="13 bands/channels but this ControlNet was trained for 10"):
        pipe(PROMPT, torch.rand(1, 13, 16, 16), num_inference_steps=1)
    x, t, text, md = unet_inputs(tiny_pipeline)
    with pytest.raises(ValueError, match="trained for 10"):
        controlnet(x, t, text, torch.rand(2, 4, 16, 16), metadata=md)


def test_sr_controlnet_conditions_at_sample_size_without_downsampling(tiny_pipeline):
    sr = SatControlNet.from_unet(tiny_pipeline.unet, conditioning_channels=10)
    assert sr.config.conditioning_downsample_factor == 1
    assert all(block.stride == (1, 1) for block in sr.controlnet_cond_embedding.blocks)
    assert sr.conditioning_size(16, 16) == (16, 16)
    image_sized = SatControlNet.from_unet(tiny_pipeline.unet, conditioning_channels=3,
                                          conditioning_downsample_factor=8, conditioning_embedding_out_channels=(4, 8, 8, 16))
    assert image_sized.conditioning_size(16, 16) == (128, 128)
    x, t, text, md = unet_inputs(tiny_pipeline)
    down, _ = image_sized(x, t, text, torch.rand(2, 3, 128, 128), metadata=md, return_dict=False)
    assert down[0].shape[-2:] == (16, 16)
    with pytest.raises(ValueError, match="needs \\(128, 128\\)"):
        image_sized(x, t, text, torch.rand(2, 3, 16, 16), metadata=md)
    assert downsample_strides(4, 3) == [2, 2, 1]
    with pytest.raises(ValueError, match="power of two"):
        downsample_strides(3, 3)
    assert [downsample_factor_from_scale(s, 3) for s in (1, 2, 4, 8)] == [8, 4, 2, 1]


def test_multi_image_fusion_of_identical_inputs_equals_single_input(tiny_pipeline):
    controlnet = perturb(SatControlNet.from_unet(tiny_pipeline.unet, conditioning_channels=4))
    pipe = DiffusionSatControlNetPipeline(**tiny_pipeline.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    low = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    md = SatMetadata(gsd=10.0, year=2017)

    def run(control, cond):
        return pipe(PROMPT, control, metadata=MD, cond_metadata=cond, num_inference_steps=2, guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(5), output_type="np").images

    single = run(low, md)
    fused = run(torch.stack([low, low, low], dim=2), [md, md, md])
    np.testing.assert_allclose(fused, single, atol=1e-5)
    other = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(9))
    mixed = run(torch.stack([low, other], dim=2), [md, md])
    assert np.abs(mixed - single).max() > 1e-3 and np.abs(mixed - run(other, md)).max() > 1e-3


def test_noise_pred_trains_only_the_controlnet(tiny_pipeline):
    unet = tiny_pipeline.unet.requires_grad_(False)
    controlnet = perturb(SatControlNet3D.from_unet(unet, conditioning_channels=3, max_frames=2))
    x, t, text, md = unet_inputs(tiny_pipeline)
    pred = controlnet_noise_pred(unet, controlnet, x, t, text, torch.rand(2, 3, 2, 16, 16), metadata=md,
                                 cond_metadata=torch.rand(2, 2, 7) * 1000)
    torch.nn.functional.mse_loss(pred, torch.randn_like(pred)).backward()
    assert controlnet.controlnet_mid_block.weight.grad is not None
    assert controlnet.mixing_attns[0].grad is not None
    assert all(p.grad is None for p in unet.parameters())


def test_task_model_folder_round_trip(tiny_pipeline, tmp_path):
    controlnet = perturb(SatControlNet3D.from_unet(tiny_pipeline.unet, conditioning_channels=3, max_frames=3))
    pipe = DiffusionSatControlNetPipeline(**tiny_pipeline.components, controlnet=controlnet)
    pipe.save_pretrained(tmp_path / "task")
    # base folder + a controlnet/ saved on its own: the documented task-model layout
    tiny_pipeline.save_pretrained(tmp_path / "base")
    controlnet.save_pretrained(tmp_path / "base" / "controlnet")
    for folder in (tmp_path / "task", tmp_path / "base"):
        loaded = load_controlnet_pipeline(folder)
        assert isinstance(loaded.controlnet, SatControlNet3D)
        for a, b in zip(controlnet.state_dict().values(), loaded.controlnet.state_dict().values()):
            assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="controlnet/"):
        load_controlnet_pipeline(tmp_path / "base", controlnet=tmp_path / "missing")


def original_folder(model, folder, kind: str):
    """Write ``model`` the way the original code saved its ControlNets (original config keys)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    config["conditioning_in_channels"] = config.pop("conditioning_channels")
    for ours in ("metadata_unknown_value", "conditioning_downsample_factor", "max_frames", "use_cond_metadata",
                 "temporal_first_block_heads", "temporal_first_block_head_dim", "conditioning_bands", "mid_block_type",
                 "num_attention_heads", "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type",
                 "addition_time_embed_dim", "transformer_layers_per_block", "addition_embed_type_num_heads"):
        config.pop(ours, None)
    if kind == "2d":
        config["conditioning_scale"] = 8  # latent-size conditioning (super-resolution)
    config["_class_name"] = "ControlNetModel3D" if kind == "3d" else "ControlNetModel"
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "diffusion_pytorch_model.safetensors"))


def test_convert_original_checkpoint(tiny_pipeline, tmp_path):
    unet = tiny_pipeline.unet
    x, t, text, md = unet_inputs(tiny_pipeline)
    for kind, model, control, cond_md in (
        ("3d", SatControlNet3D.from_unet(unet, conditioning_channels=3, max_frames=3, temporal_first_block_heads=8,
                                         temporal_first_block_head_dim=64, conditioning_embedding_out_channels=(8, 16)),
         torch.rand(2, 3, 3, 16, 16), torch.rand(2, 3, 7) * 1000),
        ("2d", SatControlNet.from_unet(unet, conditioning_channels=10), torch.rand(2, 10, 16, 16), torch.rand(2, 7) * 1000),
    ):
        if kind == "3d":  # the original's 3D embedding downsamples at every block: feed larger frames
            model = SatControlNet3D.from_config({**model.config, "conditioning_downsample_factor": 2})
            control = torch.rand(2, 3, 3, 32, 32)
        perturb(model, seed=4)
        original_folder(model, tmp_path / kind, kind)
        converted = convert_controlnet(tmp_path / kind)
        assert type(converted) is type(model)
        want = model(x, t, text, control, metadata=md, cond_metadata=cond_md, return_dict=False)
        got = converted(x, t, text, control, metadata=md, cond_metadata=cond_md, return_dict=False)
        for a, b in zip(want[0] + [want[1]], got[0] + [got[1]]):
            assert torch.equal(a, b)
    state = {"controlnet_mid_block.weight": torch.zeros(32, 32, 1, 1, 1)}
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "3d" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="does not match"):
        convert_controlnet(tmp_path / "3d")


def test_new_task_controlnets_and_per_task_subfolders(tiny_pipeline, tmp_path):
    from diffusionsat.pipelines.pipeline_controlnet import new_task_controlnet

    unet = tiny_pipeline.unet
    sr = new_task_controlnet(unet, "superres", conditioning_channels=10)
    assert isinstance(sr, SatControlNet) and sr.config.conditioning_downsample_factor == 1
    temporal = new_task_controlnet(unet, "temporal", max_frames=5)
    assert isinstance(temporal, SatControlNet3D) and temporal.config.max_frames == 5
    assert new_task_controlnet(unet, "inpaint").config.conditioning_channels == 4
    assert new_task_controlnet(unet, "control", vae_scale_factor=1).config.conditioning_channels == 3
    with pytest.raises(ValueError, match="conditioning_channels"):
        new_task_controlnet(unet, "superres")
    with pytest.raises(ValueError, match="choose one of"):
        new_task_controlnet(unet, "segment")
    from diffusionsat.pipelines.pipeline_controlnet import build_task_pipeline

    tiny_sr = build_task_pipeline("tiny", ["a river"], "superres", conditioning_channels=13)
    assert tiny_sr.controlnet.config.conditioning_channels == 13 and tiny_sr.size_multiple == 2
    # one model folder serving two tasks: controlnet_<task>/ is preferred over controlnet/
    tiny_pipeline.save_pretrained(tmp_path / "multi")
    temporal.save_pretrained(tmp_path / "multi" / "controlnet_temporal")
    sr.save_pretrained(tmp_path / "multi" / "controlnet")
    assert isinstance(load_controlnet_pipeline(tmp_path / "multi", task="temporal").controlnet, SatControlNet3D)
    assert isinstance(load_controlnet_pipeline(tmp_path / "multi", task="superres").controlnet, SatControlNet)


def test_inpainting_with_a_latent_model_keeps_unmasked_pixels_bit_exactly(tiny_pipeline):
    from diffusers import AutoencoderKL

    from diffusionsat import SatUNet

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, layers_per_block=1)
    unet = SatUNet.from_config({**tiny_pipeline.unet.config, "in_channels": 4, "out_channels": 4})
    controlnet = perturb(SatControlNet.from_unet(unet, conditioning_channels=4, conditioning_downsample_factor=2,
                                                 conditioning_embedding_out_channels=(8, 16)))
    pipe = DiffusionSatControlNetPipeline(**{**tiny_pipeline.components, "unet": unet, "vae": vae}, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 8:20, 4:30] = 1
    mask[1, :, 0:6, 0:6] = 1
    out = pipe([PROMPT, PROMPT], image=image, mask=mask, metadata=MD, num_inference_steps=2, guidance_scale=1.0,
               output_type="pt").images
    keep = (mask == 0).expand_as(image)
    assert torch.equal(out[keep], image[keep])
    assert (out - image)[~keep].abs().mean() > 1e-3
    with pytest.raises(ValueError, match="mask is \\(16, 16\\) px but the image is \\(32, 32\\) px"):
        pipe(PROMPT, image=image[:1], mask=mask[:1, :, :16, :16], num_inference_steps=1)
    with pytest.raises(ValueError, match="only 0"):
        pipe(PROMPT, image=image[:1], mask=mask[:1] * 0.5, num_inference_steps=1)
