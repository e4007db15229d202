"""The metrics, computed with torchmetrics on tensors in [0, 1] and returned as :class:`Estimate`.

Set metrics (FID, KID, IS) take *features* extracted once per network, so the same features serve
the model, the baselines and the bootstrap. Pairwise metrics (PSNR, SSIM, LPIPS) are per image,
then summarised with a bootstrap interval.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from .stats import Estimate, bootstrap_set_metric, mean_estimate

logger = logging.getLogger(__name__)


class PrecomputedFeatures(nn.Module):
    """Identity "feature extractor": lets torchmetrics' FID/KID/IS run on features extracted once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_value(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between two feature sets (torchmetrics' FID on precomputed features)."""
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]))
    metric.update(torch.from_numpy(np.ascontiguousarray(real)).double(), real=True)
    metric.update(torch.from_numpy(np.ascontiguousarray(fake)).double(), real=False)
    return float(metric.compute())


def fid(real: np.ndarray, fake: np.ndarray, seed: int = 0, resamples: int = 20) -> Estimate:
    """FID with a bootstrap interval; needs ≥ 2 samples per set (more than the feature dim for a full-rank covariance)."""
    n = min(len(real), len(fake))
    if n < 2:
        return Estimate.missing("FID needs at least 2 images in each set", n=n)
    value, low, high, std = bootstrap_set_metric(fid_value, real, fake, seed=seed, resamples=resamples)
    note = None
    if n <= real.shape[1]:
        note = f"{n} samples ≤ {real.shape[1]} feature dims: covariance is rank-deficient, FID is biased upwards"
    return Estimate(value, n, low, high, std, method=f"torchmetrics FID; bootstrap 95% CI ({resamples} resamples)" if low is not None else "torchmetrics FID (no bootstrap)", note=note)


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> Estimate:
    """KID (unbiased MMD², cubic kernel) mean ± std over random subsets, as in torchmetrics."""
    n = min(len(real), len(fake))
    if n < 2:
        return Estimate.missing("KID needs at least 2 images in each set", n=n)
    # Subsets must be smaller than the sets, or every subset is the same and the spread is zero.
    size = subset_size if n > subset_size else max(2, n // 2)
    torch.manual_seed(seed)
    metric = KernelInceptionDistance(feature=PrecomputedFeatures(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(torch.from_numpy(np.ascontiguousarray(real)).double(), real=True)
    metric.update(torch.from_numpy(np.ascontiguousarray(fake)).double(), real=False)
    mean, std = (float(v) for v in metric.compute())
    return Estimate(mean, n, mean - 1.96 * std, mean + 1.96 * std, std,
                    method=f"torchmetrics KID; {subsets} subsets of {size}; ±1.96 std over subsets")


def inception_score(logits: np.ndarray, splits: int = 10, seed: int = 0) -> Estimate:
    """IS = exp(E KL(p(y|x) ‖ p(y))) mean ± std over splits (torchmetrics)."""
    n = len(logits)
    if n < 2:
        return Estimate.missing("IS needs at least 2 images", n=n)
    splits = max(1, min(splits, n // 2))
    torch.manual_seed(seed)
    metric = InceptionScore(feature=PrecomputedFeatures(logits.shape[1]), splits=splits)
    metric.update(torch.from_numpy(np.ascontiguousarray(logits)).double())
    mean, std = (float(v) for v in metric.compute())
    return Estimate(mean, n, mean - 1.96 * std, mean + 1.96 * std, std, method=f"torchmetrics IS; {splits} splits")


def _check_pairs(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"generated images {tuple(pred.shape)} and references {tuple(target.shape)} differ in shape")
    if pred.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) batches, got shape {tuple(pred.shape)}")


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """PSNR in dB of each image pair, data range 1 (images in [0, 1]); identical pairs give +inf."""
    _check_pairs(pred, target)
    values = peak_signal_noise_ratio(pred.double(), target.double(), data_range=1.0, reduction="none", dim=(1, 2, 3))
    return values.numpy()


SSIM_SIGMA = 1.5
#: Gaussian window side used by torchmetrics for σ = 1.5 (3.5 σ truncation): 11 px.
SSIM_WINDOW = int(3.5 * SSIM_SIGMA + 0.5) * 2 + 1


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """SSIM (Gaussian window σ = 1.5, data range 1) of each pair, averaged over channels.

    Averaged over the *valid* region, where the 11 px window lies inside the image, as in Wang et
    al.'s reference code and scikit-image; torchmetrics' scalar would also average the
    reflect-padded border, so its SSIM map is cropped here.
    """
    _check_pairs(pred, target)
    if min(pred.shape[-2:]) <= SSIM_WINDOW:
        raise ValueError(f"SSIM needs images larger than {SSIM_WINDOW} px, got {tuple(pred.shape[-2:])}")
    _, full = structural_similarity_index_measure(
        pred.double(), target.double(), data_range=1.0, sigma=SSIM_SIGMA, reduction="none", return_full_image=True
    )
    pad = (SSIM_WINDOW - 1) // 2
    return full[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3)).numpy()


def summarize_psnr(values: np.ndarray, seed: int = 0) -> Estimate:
    """Mean PSNR over finite values; identical pairs (+inf dB) are counted and reported in the note."""
    finite = values[np.isfinite(values)]
    est = mean_estimate(finite, seed=seed) if finite.size else Estimate(float("inf"), len(values), method="all identical")
    if finite.size < values.size:
        extra = f"{values.size - finite.size} identical pair(s) (PSNR = +inf) left out of the mean"
        est.note = extra if est.note is None else f"{est.note}; {extra}"
        est.n = int(values.size)
    return est


def batched(tensor: torch.Tensor, size: int = 64) -> Sequence[torch.Tensor]:
    return [tensor[i:i + size] for i in range(0, len(tensor), size)]


def _embeds(output) -> torch.Tensor:
    """transformers ≥ 5 returns a ModelOutput from ``get_*_features``; older versions a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def clip_score_per_image(model, processor, images: torch.Tensor, captions: Sequence[str], batch: int = 32) -> np.ndarray:
    """CLIP score of each (image, caption): 100 · max(cos(E_image, E_text), 0), as in torchmetrics.

    Computed here with the same formula because torchmetrics 1.9's ``CLIPScore`` expects tensors
    from ``get_image_features``, which transformers 5 no longer returns.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    scores = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        pixels = [(img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for img in chunk]
        image_in = processor(images=pixels, return_tensors="pt")
        text_in = processor(text=list(captions[start:start + batch]), return_tensors="pt", padding=True, truncation=True)
        img = _embeds(model.get_image_features(pixel_values=image_in["pixel_values"]))
        txt = _embeds(model.get_text_features(input_ids=text_in["input_ids"], attention_mask=text_in["attention_mask"]))
        cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
        scores.append((100.0 * cos.clamp_min(0)).double())
    return torch.cat(scores).numpy()
