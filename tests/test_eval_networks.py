"""Pretrained networks come from local paths only: clear messages when absent, stand-ins when given."""

from __future__ import annotations

import json
import socket

import numpy as np
import PIL.Image
import pytest
import torch
from torch import nn

from diffusionsat.cli.main import main
from diffusionsat.evaluation.metrics import clip_score_per_image
from diffusionsat.evaluation.networks import (
    InceptionFeatures,
    PretrainedWeightsMissing,
    load_clip,
    load_lpips,
)


class PlainFeatures(nn.Module):
    """Stand-in with the plain convention: (N, 3, 299, 299) in [0, 1] → (features, logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 5, stride=4)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return feats, self.fc(feats)


class StyleGANLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 3, stride=2)
        self.fc = nn.Linear(10, 5)

    def forward(self, img: torch.Tensor, return_features: bool = False, no_output_bias: bool = False) -> torch.Tensor:
        feats = torch.relu(self.conv(img.to(torch.float32) / 255.0)).mean(dim=(2, 3))
        if return_features:
            return feats
        logits = feats @ self.fc.weight.t() if no_output_bias else self.fc(feats)
        return torch.softmax(logits, dim=-1)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: every byte gets a printable character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


@pytest.fixture
def clip_dir(tmp_path):
    """A tiny random CLIP (model + tokenizer + image processor) saved as a local folder."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor

    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab=str(tmp_path / "vocab.json"), merges=str(tmp_path / "merges.txt"))
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config={**small, "vocab_size": len(vocab), "max_position_embeddings": 77},
                        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=16)
    folder = tmp_path / "clip"
    CLIPModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_missing_weights_say_so_and_never_download(tmp_path, no_network):
    for call, option in ((lambda: InceptionFeatures(None), "--inception"),
                         (lambda: InceptionFeatures(tmp_path / "inception.pt"), "--inception"),
                         (lambda: load_clip(None), "--clip"),
                         (lambda: load_clip(tmp_path / "openai/clip-vit-base-patch32"), "--clip"),
                         (lambda: load_lpips(None), "--lpips-backbone")):
        with pytest.raises(PretrainedWeightsMissing, match="nothing is downloaded") as err:
            call()
        assert option in str(err.value)
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(PretrainedWeightsMissing, match="config.json"):
        load_clip(tmp_path / "not-a-model")
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="TorchScript"):
        InceptionFeatures(tmp_path / "junk.pt")


def test_inception_conventions(tmp_path):
    torch.manual_seed(0)
    torch.jit.script(PlainFeatures().eval()).save(str(tmp_path / "plain.pt"))
    torch.jit.script(StyleGANLike().eval()).save(str(tmp_path / "stylegan.pt"))
    images = torch.rand(3, 3, 20, 20)
    plain = InceptionFeatures(tmp_path / "plain.pt")
    assert not plain.stylegan and plain.features(images).shape == (3, 6) and plain.logits(images).shape == (3, 4)
    style = InceptionFeatures(tmp_path / "stylegan.pt")
    assert style.stylegan and style.features(images).shape == (3, 10)
    assert torch.allclose(style.logits(images).softmax(-1).sum(-1), torch.ones(3), atol=1e-5)
    # uint8 input as StyleGAN's loader gives it, and IS without the output bias, as StyleGAN computes it.
    net = torch.jit.load(str(tmp_path / "stylegan.pt"))
    as_uint8 = (images * 255).round().to(torch.uint8)
    assert torch.allclose(style.features(images), net(as_uint8, return_features=True))
    expected = net(as_uint8, no_output_bias=True).log()
    assert torch.allclose(style.logits(images), expected, atol=1e-5)
    assert not torch.allclose(style.logits(images), net(as_uint8).log(), atol=1e-5)


def test_clip_score_matches_the_formula(clip_dir, no_network):
    model, processor = load_clip(clip_dir)
    torch.manual_seed(1)
    images = torch.rand(3, 3, 24, 24)
    captions = ["a satellite image of farmland", "a river", "a city"]
    scores = clip_score_per_image(model, processor, images, captions)
    pix = processor(images=[(i.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for i in images], return_tensors="pt")
    txt = processor(text=captions, return_tensors="pt", padding=True)
    with torch.no_grad():
        a = model.get_image_features(pixel_values=pix["pixel_values"])
        b = model.get_text_features(input_ids=txt["input_ids"], attention_mask=txt["attention_mask"])
    a = a if isinstance(a, torch.Tensor) else a.pooler_output
    b = b if isinstance(b, torch.Tensor) else b.pooler_output
    expected = 100 * torch.nn.functional.cosine_similarity(a, b).clamp_min(0)
    assert np.allclose(scores, expected.numpy(), atol=1e-4)
    assert scores.shape == (3,) and (scores >= 0).all() and (scores <= 100).all()


@pytest.mark.shared_data
def test_report_with_all_networks_given(shared_data, tmp_path, clip_dir, no_network):
    """Stand-in Inception + CLIP from local paths: FID/KID/IS/CLIP rows are computed and reported."""
    from diffusionsat.evaluation.baselines import gaussian_blur
    from diffusionsat.evaluation.chips import export_eval_set

    torch.manual_seed(0)
    inception = tmp_path / "inception.pt"
    torch.jit.script(StyleGANLike().eval()).save(str(inception))
    data, gen = tmp_path / "real", tmp_path / "gen"
    export_eval_set(shared_data, data, per_source=1, scenes=("naip-prairie",), seed=5)
    gen.mkdir()
    for png in sorted(data.glob("*.png")):
        arr = torch.from_numpy(np.asarray(PIL.Image.open(png))).permute(2, 0, 1)[None].float() / 255
        out = (gaussian_blur(arr, 1.0)[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        PIL.Image.fromarray(out).save(gen / png.name)
    report_dir = tmp_path / "eval"
    assert main(["evaluate", "--task", "generate", "--generated", str(gen), "--data", str(data), "--out",
                 str(report_dir), "--inception", str(inception), "--clip", str(clip_dir), "--bootstrap", "2",
                 "--num-samples", "6"]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert report["networks"]["inception"]["available"] and report["networks"]["clip"]["available"]
    for metric in ("fid", "kid", "is", "clip_score"):
        rows = report["metrics"][metric]["rows"]
        assert all(r["value"] is not None for r in rows.values()), metric
    # Generated rows read the condition from the real record when the image has no sidecar.
    assert report["metrics"]["season_accuracy"]["rows"]["model"]["n"] == 6
