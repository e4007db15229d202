"""Metrics against known answers: identical sets, independent implementations, monotone degradation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from torch import nn

from diffusionsat.evaluation.baselines import (
    add_noise,
    bicubic_upsample,
    biharmonic_fill,
    blur_noise,
    centre_mask,
    gaussian_blur,
    lanczos_upsample,
    latest_frame,
    mean_fill,
    mean_of_frames,
)
from diffusionsat.evaluation.chips import SOURCES, read_source, sample_chips
from diffusionsat.evaluation.domain_encoder import load_domain_encoder
from diffusionsat.evaluation.features import domain_outputs
from diffusionsat.evaluation.metrics import (
    fid,
    inception_score,
    kid,
    psnr_per_image,
    ssim_per_image,
    summarize_psnr,
)
from diffusionsat.evaluation.networks import InceptionFeatures, LPIPSDistance, load_lpips
from diffusionsat.evaluation.stats import Estimate, mean_estimate


class StandInInception(nn.Module):
    """Random 2-conv network with the StyleGAN Inception calling convention (images in [0, 255])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12, 6)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.relu(self.conv1(img / 127.5 - 1.0))
        feats = torch.relu(self.conv2(x)).mean(dim=(2, 3))
        if return_features:
            return feats
        return torch.softmax(self.fc(feats), dim=-1)


class StandInBackbone(nn.Module):
    """Random 2-stage backbone returning its feature maps, like LPIPS' VGG/Alex slices."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = torch.relu(self.a(x))
        return [f1, torch.relu(self.b(f1))]


@pytest.fixture
def inception_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "standin-inception.pt"
    torch.jit.script(StandInInception().eval()).save(str(path))
    return path


@pytest.fixture
def backbone_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "standin-backbone.pt"
    torch.jit.script(StandInBackbone().eval()).save(str(path))
    return path


@pytest.fixture(scope="module")
def naip_chips(shared_data) -> torch.Tensor:
    """48 real held-out NAIP chips (64 px) as (N, 3, 64, 64) in [0, 1]."""
    rng = np.random.default_rng(7)
    chips = []
    for source in SOURCES[:3]:  # three NAIP dates
        chips += sample_chips(read_source(shared_data, source), 16, rng, region="heldout")
    return torch.stack([torch.from_numpy(c.image).permute(2, 0, 1).float() / 255.0 for c in chips])


def test_identical_sets_give_zero_fid_unit_ssim_zero_lpips(inception_file, backbone_file):
    torch.manual_seed(1)
    images = torch.rand(40, 3, 32, 32)
    net = InceptionFeatures(inception_file)
    feats = net.features(images).double().numpy()
    assert feats.shape == (40, 12)
    est = fid(feats, feats.copy(), resamples=0)
    assert abs(est.value) < 1e-6
    assert np.allclose(ssim_per_image(images, images.clone()), 1.0)
    lpips = load_lpips(backbone_file)
    assert torch.allclose(lpips(images, images.clone()), torch.zeros(40), atol=1e-7)
    # ...and different sets are not at zero, so the tests above can fail.
    other = torch.rand(40, 3, 32, 32) * 0.5
    assert fid(feats, net.features(other).double().numpy(), resamples=0).value > 1e-3
    assert (lpips(images, other) > 1e-3).all()


def test_lpips_is_the_standard_formula(backbone_file):
    """Unit-normalise channels, square the difference, weight channels, average space, sum layers."""
    torch.manual_seed(2)
    x, y = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    weights = [torch.rand(8), torch.rand(16)]
    net = torch.jit.load(str(backbone_file))
    scaled = [(v * 2 - 1 - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
              / torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1) for v in (x, y)]
    fx, fy = net(scaled[0]), net(scaled[1])
    expected = torch.zeros(3)
    for w, a, b in zip(weights, fx, fy):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        expected += ((a - b) ** 2 * w.view(1, -1, 1, 1)).sum(1).mean((1, 2))
    distance = load_lpips(backbone_file)
    distance.weights = weights
    assert torch.allclose(distance(x, y), expected, atol=1e-6)


def test_lpips_weights_from_file(tmp_path, backbone_file):
    from safetensors.torch import save_file

    save_file({"lin0.model.1.weight": torch.ones(1, 8, 1, 1) * 2, "lin1.model.1.weight": torch.zeros(1, 16, 1, 1)},
              str(tmp_path / "lin.safetensors"))
    weighted = load_lpips(backbone_file, tmp_path / "lin.safetensors")
    plain = load_lpips(backbone_file)
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    first_layer_only = LPIPSDistance(lambda im: plain.backbone(im)[:1])
    assert torch.allclose(weighted(x, y), 2 * first_layer_only(x, y), atol=1e-6)


@pytest.mark.shared_data
def test_psnr_ssim_equal_scikit_image_on_real_chips(naip_chips):
    ref = naip_chips[:6].double()
    degradations = {
        "noise 0.05": add_noise(ref.float(), 0.05, seed=3).double(),
        "blur 1.0": gaussian_blur(ref.float(), 1.0).double(),
        "bicubic x4": bicubic_upsample(ref.float()).double(),
        "jpeg-like quantisation": (ref * 15).round() / 15,
    }
    for name, degraded in degradations.items():
        ours_psnr = psnr_per_image(degraded, ref)
        ours_ssim = ssim_per_image(degraded, ref)
        for i in range(len(ref)):
            a, b = ref[i].permute(1, 2, 0).numpy(), degraded[i].permute(1, 2, 0).numpy()
            assert ours_psnr[i] == pytest.approx(sk_psnr(a, b, data_range=1.0), rel=1e-6), name
            mse = float(((a - b) ** 2).mean())
            assert ours_psnr[i] == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-6), name
            expected = sk_ssim(a, b, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False)
            assert ours_ssim[i] == pytest.approx(expected, abs=1e-6), name
    # Stronger degradation → lower PSNR and SSIM.
    assert psnr_per_image(add_noise(ref.float(), 0.2).double(), ref).mean() < psnr_per_image(degradations["noise 0.05"], ref).mean()


@pytest.mark.shared_data
def test_domain_fid_kid_increase_monotonically_with_noise(naip_chips):
    encoder = load_domain_encoder()
    half_a, half_b = naip_chips[0::2], naip_chips[1::2]
    ref = domain_outputs(encoder, half_a).embedding
    fids, kids = [], []
    for sigma in (0.0, 0.05, 0.1, 0.2, 0.4):
        feats = domain_outputs(encoder, add_noise(half_b, sigma, seed=11) if sigma else half_b).embedding
        fids.append(fid(ref, feats, resamples=0).value)
        kids.append(kid(ref, feats, subsets=20, subset_size=12).value)
    # σ = 0.05 is below what the encoder resolves on 64 px chips (within the two halves' own spread);
    # from there on the distance grows with every step of noise
    assert fids[1] < fids[0] * 1.5 and kids[1] < kids[0] + abs(kids[0]) * 0.5 + 1e-3, (fids, kids)
    assert all(a < b for a, b in zip(fids[1:], fids[2:])), fids
    assert all(a < b for a, b in zip(kids[1:], kids[2:])), kids


def test_kid_and_is_carry_spread(inception_file):
    torch.manual_seed(3)
    real = np.random.default_rng(0).normal(size=(30, 8))
    fake = np.random.default_rng(1).normal(loc=0.5, size=(30, 8))
    est = kid(real, fake, subsets=10, subset_size=100)
    assert est.n == 30 and est.std is not None and est.std > 0 and est.low < est.value < est.high
    logits = InceptionFeatures(inception_file).logits(torch.rand(20, 3, 32, 32))
    assert logits is not None
    score = inception_score(logits.double().numpy())
    assert 1.0 <= score.value <= 6.0  # IS is bounded by the number of classes


def test_mean_estimate_interval_and_psnr_infinity():
    est = mean_estimate(np.arange(100.0))
    assert est.value == pytest.approx(49.5) and est.low < 49.5 < est.high and est.n == 100
    assert est.std == pytest.approx(np.std(np.arange(100.0), ddof=1))
    psnr = summarize_psnr(np.array([30.0, 32.0, np.inf]))
    assert psnr.value == pytest.approx(31.0) and psnr.n == 3 and "identical" in psnr.note
    missing = Estimate.missing("no weights")
    assert missing.to_dict()["value"] is None and missing.format() == "—"


def test_baselines_do_what_they_say():
    torch.manual_seed(4)
    images = torch.rand(2, 3, 32, 32)
    mask = centre_mask(images)
    filled = mean_fill(images, mask)
    assert torch.equal(filled * (1 - mask), images * (1 - mask))  # unmasked pixels preserved
    assert not torch.equal(filled, images)
    up = bicubic_upsample(images)
    assert up.shape == images.shape
    noisy = blur_noise(images, seed=1)
    assert torch.equal(noisy, blur_noise(images, seed=1)) and (noisy - images).abs().mean() > 0.05


def test_lanczos_reproduces_a_smooth_ramp_better_than_nearest():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    ramp = torch.stack([0.1 + 0.8 * xx, 0.2 + 0.6 * yy, 0.5 + 0.3 * torch.sin(3 * xx + 2 * yy)])[None]
    low = torch.nn.functional.avg_pool2d(ramp, 4)
    lanczos = lanczos_upsample(ramp, low_res=low)
    nearest = torch.nn.functional.interpolate(low, size=(64, 64), mode="nearest")
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # away from the edge effects
    assert lanczos.shape == ramp.shape and lanczos.dtype == torch.float32
    err_lanczos = (lanczos - ramp)[inner].abs().mean()
    assert err_lanczos < 0.25 * (nearest - ramp)[inner].abs().mean() and err_lanczos < 2e-3
    # Without a low-res input it upsamples the reference downsampled 4x, like bicubic; same order of error.
    assert (lanczos_upsample(ramp) - ramp)[inner].abs().mean() < 5e-3
    assert (bicubic_upsample(ramp, low_res=low) - ramp)[inner].abs().mean() < 5e-3


def test_biharmonic_fills_a_linear_gradient_and_keeps_the_rest():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    images = torch.stack([0.2 + 0.6 * xx, 0.9 - 0.5 * yy, 0.3 + 0.2 * xx + 0.3 * yy])[None].repeat(2, 1, 1, 1)
    images[1] = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = centre_mask(images)
    mask[1, 0, :4, :4] = 1  # a second hole on the border
    filled = biharmonic_fill(images, mask)
    keep = mask == 0
    assert torch.equal(filled.expand_as(images)[keep.expand_as(images)], images[keep.expand_as(images)])
    hole = mask[0].expand(3, -1, -1) > 0
    assert (filled[0][hole] - images[0][hole]).abs().max() < 1e-3  # a linear field is biharmonic: exact
    assert (mean_fill(images, mask)[0][hole] - images[0][hole]).abs().max() > 0.1
    assert filled.min() >= 0 and filled.max() <= 1
    # A mask over everything leaves nothing to extrapolate from: mean_fill's answer, no error.
    full = torch.ones(1, 1, 32, 32)
    assert torch.equal(biharmonic_fill(images[:1], full), mean_fill(images[:1], full))


def test_temporal_baselines_latest_and_mean_of_frames():
    frames = [torch.full((3, 8, 8), v) for v in (0.1, 0.4, 0.7)]
    assert torch.allclose(mean_of_frames(frames), torch.full((3, 8, 8), 0.4))
    stacked = torch.rand(4, 2, 3, 8, 8)  # (T, N, C, H, W)
    assert torch.allclose(mean_of_frames(stacked), stacked.mean(0))
    assert torch.equal(latest_frame(frames[-1]), frames[-1])
    with pytest.raises(ValueError, match="no frames"):
        mean_of_frames([])
