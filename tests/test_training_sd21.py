"""The `sd21` preset: a Stable-Diffusion-2.1-style folder becomes a DiffusionSat model, unchanged at step 0."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from diffusionsat import DiffusionSatPipeline, SatUNet
from diffusionsat.models.text import build_caption_tokenizer, build_text_encoder
from diffusionsat.training import Trainer, load_config
from diffusionsat.training.components import load_sd21
from diffusionsat.training.datasets import build_dataset


def make_sd_folder(path):
    """A tiny folder laid out like stabilityai/stable-diffusion-2-1 (v-prediction)."""
    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                         layers_per_block=1, attention_head_dim=2, norm_num_groups=8).save_pretrained(path / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  norm_num_groups=8, sample_size=16).save_pretrained(path / "vae")
    tokenizer = build_caption_tokenizer(["a satellite image of farmland"], max_length=16)
    tokenizer.save_pretrained(path / "tokenizer")
    build_text_encoder(len(tokenizer), hidden_size=32, num_layers=1, max_length=16).save_pretrained(path / "text_encoder")
    DDPMScheduler(prediction_type="v_prediction").save_pretrained(path / "scheduler")
    return path


def test_sd21_folder_loads_with_zero_initialised_metadata(tmp_path):
    folder = make_sd_folder(tmp_path / "sd21")
    pipe = load_sd21(str(folder))
    assert isinstance(pipe.unet, SatUNet) and pipe.unet.config.use_metadata
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    plain = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    sample, text = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32)
    with torch.no_grad():
        ours = pipe.unet.eval()(sample, 10, text, metadata=torch.rand(2, 7) * 1000).sample
        torch.testing.assert_close(ours, plain(sample, 10, text).sample)


def test_sd21_preset_fine_tunes_a_latent_model(tmp_path, shared_data):
    folder = make_sd_folder(tmp_path / "sd21")
    cfg = load_config(overrides={
        "preset": "sd21", "pretrained": str(folder), "resolution": 16, "snr_gamma": 5.0,
        "data": [str(shared_data / "naip-timeseries/m_4709963_se_14_1_20090818.tif")], "chip_size": 64,
        "bands": "1,2,3", "max_samples": 4, "batch_size": 2, "max_steps": 2, "report_to": None,
        "output_dir": str(tmp_path / "run"), "precompute_latents": True,
    })
    trainer = Trainer(cfg, build_dataset(cfg))
    final = trainer.train()
    assert trainer._trained == ["unet"]  # the CLIP text encoder stays frozen for sd21
    pipe = DiffusionSatPipeline.from_pretrained(final)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae is not None and pipe.scheduler.config.prediction_type == "v_prediction"
    image = pipe("a satellite image", metadata={"lat": 47.0}, num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)
