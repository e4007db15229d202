"""SatUNet: original-checkpoint compatibility and metadata conditioning (SPEC §2)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import TimestepEmbedding
from safetensors.torch import save_file

from diffusionsat import SatUNet

UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 24,
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}


def make_original_folder(tmp_path):
    """An 'original DiffusionSat' folder: plain diffusers UNet weights + metadata MLP weights."""
    torch.manual_seed(0)
    plain = UNet2DConditionModel(**UNET_CONFIG)
    time_embed_dim = UNET_CONFIG["block_out_channels"][0] * 4
    mlps = torch.nn.ModuleList([TimestepEmbedding(32, time_embed_dim) for _ in range(7)])
    for p in mlps.parameters():  # non-trivial weights so a wrong sum/order is visible
        torch.nn.init.normal_(p, std=0.05)
    state = {k: v.contiguous() for k, v in plain.state_dict().items()}
    state.update({f"metadata_embedding.{k}": v.contiguous() for k, v in mlps.state_dict().items()})
    folder = tmp_path / "original-unet"
    folder.mkdir()
    save_file(state, folder / "diffusion_pytorch_model.safetensors")
    config = {"_class_name": "SatUNet", "_diffusers_version": "0.12.0", "use_metadata": True, "num_metadata": 7}
    config.update(UNET_CONFIG)
    (folder / "config.json").write_text(json.dumps(config))
    return folder, plain, mlps


def reference_forward(plain, mlps, sample, t, text, metadata):
    """The original computation: UNet whose timestep embedding has Σᵢ MLPᵢ(time_proj(mdᵢ)) added."""
    extra = sum(mlps[i](plain.time_proj(metadata[:, i])) for i in range(metadata.shape[1]))
    handle = plain.time_embedding.register_forward_hook(lambda mod, inp, out: out + extra)
    try:
        return plain(sample, t, encoder_hidden_states=text).sample
    finally:
        handle.remove()


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 5, 24, generator=g)
    metadata = torch.rand(2, 7, generator=g) * 1000
    return sample, torch.tensor([10, 500]), text, metadata


def test_original_folder_loads_and_matches_original_computation(tmp_path, inputs):
    folder, plain, mlps = make_original_folder(tmp_path)
    unet = SatUNet.from_pretrained(folder).eval()
    assert isinstance(unet, SatUNet) and len(unet.metadata_embedding) == 7
    sample, t, text, metadata = inputs
    with torch.no_grad():
        ours = unet(sample, t, text, metadata=metadata).sample
        ref = reference_forward(plain.eval(), mlps, sample, t, text, metadata)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_metadata_changes_output_and_none_means_unknown(tmp_path, inputs):
    folder, _, _ = make_original_folder(tmp_path)
    unet = SatUNet.from_pretrained(folder).eval()
    sample, t, text, metadata = inputs
    with torch.no_grad():
        a = unet(sample, t, text, metadata=metadata).sample
        b = unet(sample, t, text, metadata=metadata + 50).sample
        none = unet(sample, t, text).sample
        zeros = unet(sample, t, text, metadata=torch.zeros(2, 7)).sample
    assert (a - b).abs().max() > 1e-4
    torch.testing.assert_close(none, zeros)  # original "unknown" encoding is 0.0


def test_gradients_reach_every_metadata_mlp(inputs):
    unet = SatUNet(**UNET_CONFIG)
    sample, t, text, metadata = inputs
    unet(sample, t, text, metadata=metadata).sample.pow(2).mean().backward()
    for i, mlp in enumerate(unet.metadata_embedding):
        for name, param in mlp.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, f"metadata_embedding.{i}.{name}"


def test_save_load_round_trip_keeps_config_and_output(tmp_path, inputs):
    unet = SatUNet(**UNET_CONFIG, metadata_unknown_value=-100.0).eval()
    unet.save_pretrained(tmp_path / "u")
    again = SatUNet.from_pretrained(tmp_path / "u").eval()
    assert again.config.metadata_unknown_value == -100.0
    assert list(again.config.block_out_channels) == [32, 64]
    sample, t, text, metadata = inputs
    with torch.no_grad():
        torch.testing.assert_close(unet(sample, t, text, metadata=metadata).sample,
                                   again(sample, t, text, metadata=metadata).sample)
        # "unknown" follows the model's own encoding
        torch.testing.assert_close(again(sample, t, text).sample,
                                   again(sample, t, text, metadata=torch.full((2, 7), -100.0)).sample)


def test_zero_init_metadata_embedding_leaves_unet_unchanged(inputs):
    torch.manual_seed(0)
    plain = UNet2DConditionModel(**UNET_CONFIG).eval()
    sat = SatUNet(**UNET_CONFIG).eval()
    sat.load_state_dict(plain.state_dict(), strict=False)
    sat.zero_init_metadata_embedding()
    sample, t, text, metadata = inputs
    with torch.no_grad():
        torch.testing.assert_close(sat(sample, t, text, metadata=metadata).sample, plain(sample, t, text).sample)


def test_without_metadata_behaves_like_plain_unet(inputs):
    sat = SatUNet(**UNET_CONFIG, use_metadata=False).eval()
    assert sat.metadata_embedding is None
    plain = UNet2DConditionModel(**UNET_CONFIG).eval()
    plain.load_state_dict(sat.state_dict())
    sample, t, text, _ = inputs
    with torch.no_grad():
        torch.testing.assert_close(sat(sample, t, text).sample, plain(sample, t, text).sample)


def test_bad_metadata_shape_is_a_clear_error(inputs):
    unet = SatUNet(**UNET_CONFIG)
    sample, t, text, _ = inputs
    with pytest.raises(ValueError, match=r"shape \(batch, 7\)"):
        unet(sample, t, text, metadata=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="batch 3"):
        unet(sample, t, text, metadata=torch.zeros(3, 7))
