"""Downstream check of a synthetic dataset: train a small classifier on it, test it on real images.

The same classifier (a small CNN, fixed seed, flips/rot90 or ``strong`` augmentation) is trained twice: on the
synthetic images and on the same number of real training images per class. Both are tested on the
same real held-out images; the report gives each accuracy with a bootstrap 95 % interval over the
test images, per-class accuracies, and the synthetic-to-real ratio (paired bootstrap interval).

Labelled inputs: a folder of shards (``prepare-data`` of UC Merced, or ``synthesize``; each record
has ``class``) or a UC Merced folder (its seeded split: ``heldout`` for the test set, ``train`` for
the real training set).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.errors import DataError
from ..fileio import atomic_write_text, check_writable
from .baselines import gaussian_blur
from .stats import BOOTSTRAP, CONFIDENCE, Estimate, mean_estimate

logger = logging.getLogger(__name__)


# --- labelled images ------------------------------------------------------------------------------


@dataclass
class LabelledImages:
    """uint8 RGB images (N, 3, S, S) with their class names."""

    images: torch.Tensor
    classes: list[str]
    source: str
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.classes)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.classes:
            out[c] = out.get(c, 0) + 1
        return dict(sorted(out.items()))

    def subset(self, index: list[int]) -> LabelledImages:
        return LabelledImages(self.images[index], [self.classes[i] for i in index], self.source,
                              [self.keys[i] for i in index] if self.keys else [])


def load_labelled(path: str | os.PathLike, *, split: str = "heldout", size: int = 64, split_seed: int = 0,
                  progress: Callable[[Any], Any] | None = None) -> LabelledImages:
    """Images + classes of a UC Merced folder (its ``split``) or of shards whose records name a ``class``."""
    from ..data.shards import decode_sample, expand_urls, iter_tar_samples
    from ..data.transforms import resample, to_uint8
    from ..data.ucmerced import UCMerced, is_ucmerced_folder

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    images: list[np.ndarray] = []
    classes: list[str] = []
    keys: list[str] = []
    if is_ucmerced_folder(path):
        dataset = UCMerced(path, split, size=size, seed=split_seed)
        items = range(len(dataset))
        for i in progress(items) if progress else items:
            sample = dataset[i]
            images.append(np.moveaxis(to_uint8(sample["pixel_values"]), -1, 0))
            classes.append(sample["class_name"])
            keys.append(sample["key"])
        source = f"{path} (UC Merced {split} split, seed {split_seed})"
    else:
        try:
            urls = expand_urls(path)
        except DataError:
            raise DataError(path, "neither a UC Merced folder nor a folder of .tar shards") from None
        for url in urls:
            for key, entries in iter_tar_samples(url):
                sample = decode_sample(key, entries, raw=True, source=url)
                name = sample["record"].get("class")
                if not name:
                    raise DataError(url, f"sample {key!r} has no 'class' in its record; downstream needs labelled "
                                         "data (prepare-data of UC Merced, or synthesize)")
                image = sample["image"]
                if image.dtype != np.uint8 or image.shape[0] < 3:
                    raise DataError(url, f"sample {key!r}: expected 8-bit RGB, found {image.shape[0]} bands of {image.dtype}")
                images.append(resample(np.ascontiguousarray(image[:3]), size))
                classes.append(str(name))
                keys.append(key)
        source = str(path)
    if not images:
        raise DataError(path, "no labelled images")
    return LabelledImages(torch.from_numpy(np.stack(images)), classes, source, keys)


def match_counts(a: LabelledImages, b: LabelledImages, classes: list[str], seed: int) -> tuple[list[int], list[int]]:
    """Per class, the same number of images from ``a`` and from ``b`` (a seeded choice of the larger)."""
    rng = np.random.default_rng(seed)
    ia: list[int] = []
    ib: list[int] = []
    for c in classes:
        xa = [i for i, k in enumerate(a.classes) if k == c]
        xb = [i for i, k in enumerate(b.classes) if k == c]
        n = min(len(xa), len(xb))
        ia.extend(sorted(rng.permutation(xa)[:n].tolist()) if len(xa) > n else xa)
        ib.extend(sorted(rng.permutation(xb)[:n].tolist()) if len(xb) > n else xb)
    return ia, ib


# --- the classifier -------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Four stride-2 conv stages (BatchNorm, ReLU), global average pooling, a linear head."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 192), dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if i > 0:
                layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x).mean(dim=(2, 3))))


MEAN, STD = 0.4, 0.25

#: The classifier's augmentation protocols: ``basic`` is the eight symmetries of a nadir image
#: (flips, quarter turns); ``strong`` adds what a generator gets wrong that a land-use class does
#: not depend on: scale and framing (random resized crops), colour and contrast (jitter) and
#: sharpness (blur), so the classifier learns the class rather than the generator's rendering.
AUGMENTATIONS: dict[str, str] = {
    "basic": "flips + rot90",
    "strong": "flips + rot90, resized crops (area 0.35-1), colour jitter (brightness/contrast/saturation 0.7-1.3), "
              "blur (p 0.3, sigma 0.3-1.2 px)",
}


def check_augmentation(name: str) -> str:
    """``name`` if it is one of :data:`AUGMENTATIONS`, else a ValueError naming the field."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"augment={name!r}: must be one of {', '.join(AUGMENTATIONS)}")
    return name


def _prepare(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or [0, 1] float) images → the classifier's normalised input."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    return (x - MEAN) / STD


def augment(batch: torch.Tensor, generator: torch.Generator, strength: str = "basic") -> torch.Tensor:
    """Per image: random horizontal/vertical flips and quarter turns; with ``strong``, also a random
    resized crop, colour jitter and blur (:data:`AUGMENTATIONS`). ``strong`` returns [0, 1] floats."""
    check_augmentation(strength)
    n = batch.shape[0]
    flips = torch.randint(0, 2, (n, 2), generator=generator)
    turns = torch.randint(0, 4, (n,), generator=generator)
    out = []
    for i in range(n):
        x = batch[i]
        if flips[i, 0]:
            x = x.flip(-1)
        if flips[i, 1]:
            x = x.flip(-2)
        out.append(torch.rot90(x, int(turns[i]), dims=(-2, -1)))
    result = torch.stack(out)
    if strength == "strong":
        result = _photometric(_resized_crops(result.float() / 255.0, generator), generator)
    return result


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _resized_crops(x: torch.Tensor, generator: torch.Generator, area: tuple[float, float] = (0.35, 1.0),
                   ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """A random crop of each image (area share and aspect ratio drawn per image), resized back."""
    n, _, h, w = x.shape
    shares = _uniform(n, *area, generator)
    aspect = _uniform(n, float(np.log(ratio[0])), float(np.log(ratio[1])), generator).exp()
    offsets = torch.rand(n, 2, generator=generator)
    out = []
    for i in range(n):
        ch = int(round(min(h, max(2.0, (shares[i] * h * w / aspect[i]).sqrt().item()))))
        cw = int(round(min(w, max(2.0, (shares[i] * h * w * aspect[i]).sqrt().item()))))
        top = int(offsets[i, 0] * (h - ch))
        left = int(offsets[i, 1] * (w - cw))
        crop = x[i:i + 1, :, top:top + ch, left:left + cw]
        out.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(out)


def _photometric(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation jitter, then a light Gaussian blur on some images."""
    n = x.shape[0]
    brightness = _uniform(n, 0.7, 1.3, generator).view(n, 1, 1, 1)
    contrast = _uniform(n, 0.7, 1.3, generator).view(n, 1, 1, 1)
    saturation = _uniform(n, 0.7, 1.3, generator).view(n, 1, 1, 1)
    blur = torch.rand(n, generator=generator) < 0.3
    sigmas = _uniform(n, 0.3, 1.2, generator)
    x = x * brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (x - grey) * saturation + grey
    for i in torch.nonzero(blur).flatten().tolist():
        x[i] = gaussian_blur(x[i:i + 1], float(sigmas[i]))[0]
    return x.clamp(0.0, 1.0)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int = 15,
                     batch_size: int = 64, lr: float = 3e-3, seed: int = 0, device: str = "cpu",
                     augmentation: str = "basic") -> SmallCNN:
    """Train :class:`SmallCNN` from a fixed seed (same seed, same data → same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SmallCNN(num_classes).to(device)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(labels) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch))
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            if len(idx) < 2:  # BatchNorm needs two
                continue
            x = _prepare(augment(images[idx], generator, augmentation)).to(device)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed * 1_000_003 + epoch * 10_007 + b)  # dropout masks
                loss = F.cross_entropy(model(x), labels[idx].to(device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        logger.info("epoch %d/%d: loss %.4f", epoch + 1, epochs, total / len(labels))
    return model.eval()


@torch.no_grad()
def predict(model: SmallCNN, images: torch.Tensor, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
    return torch.cat([model(_prepare(images[b:b + batch_size]).to(device)).argmax(-1).cpu()
                      for b in range(0, len(images), batch_size)])


# --- the comparison -------------------------------------------------------------------------------


@dataclass
class DownstreamConfig:
    train: Path
    test: Path
    out: Path
    real_train: Path | None = None
    size: int = 64
    epochs: int = 15
    batch_size: int = 64
    seed: int = 0
    split_seed: int = 0
    bootstrap: int = 1000
    augment: str = "basic"
    device: str = "cpu"
    overwrite: bool = False

    def validate(self) -> DownstreamConfig:
        if not 8 <= self.size <= 512:
            raise ValueError(f"size={self.size}: out of range; allowed [8, 512]")
        if not 1 <= self.epochs <= 1000:
            raise ValueError(f"epochs={self.epochs}: out of range; allowed [1, 1000]")
        if not 2 <= self.batch_size <= 4096:
            raise ValueError(f"batch_size={self.batch_size}: out of range; allowed [2, 4096]")
        if not 0 <= self.bootstrap <= 100_000:
            raise ValueError(f"bootstrap={self.bootstrap}: out of range; allowed [0, 100000]")
        check_augmentation(self.augment)
        return self


def real_train_source(cfg: DownstreamConfig) -> Path:
    """``--real-train``, or the UC Merced train split when ``--test`` is a UC Merced folder."""
    from ..data.ucmerced import is_ucmerced_folder

    if cfg.real_train is not None:
        return cfg.real_train
    if is_ucmerced_folder(cfg.test):
        return cfg.test
    raise ValueError("give --real-train (real training images with classes): it can be derived only when --test "
                     "is a UC Merced folder")


def _ratio_interval(a: np.ndarray, b: np.ndarray, seed: int, resamples: int) -> Estimate:
    """accuracy(a) / accuracy(b) over the same test images, with a paired bootstrap interval."""
    value = float(a.mean() / b.mean()) if b.mean() > 0 else float("nan")
    if resamples < 2 or not np.isfinite(value):
        return Estimate(value if np.isfinite(value) else None, len(a), method="ratio of accuracies (no interval)")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    sa, sb = a[idx].mean(axis=1), b[idx].mean(axis=1)
    ratios = sa[sb > 0] / sb[sb > 0]
    alpha = (1 - CONFIDENCE) / 2
    return Estimate(value, len(a), float(np.quantile(ratios, alpha)), float(np.quantile(ratios, 1 - alpha)),
                    float(np.std(ratios)),
                    method=f"ratio; paired bootstrap {int(CONFIDENCE * 100)}% CI over test images ({resamples} resamples)")


def _estimate(correct: np.ndarray, seed: int, resamples: int) -> Estimate:
    return mean_estimate(correct.astype(np.float64), seed=seed, resamples=max(resamples, 2)) if len(correct) else \
        Estimate.missing("no test images")


def run_downstream(cfg: DownstreamConfig, progress: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Train on synthetic and on matched real images, test both on real; write report.json/.md."""
    cfg.validate()
    outputs = [cfg.out / "report.json", cfg.out / "report.md"]
    check_writable(outputs, overwrite=cfg.overwrite)
    real_source = real_train_source(cfg)
    started = time.perf_counter()
    test = load_labelled(cfg.test, split="heldout", size=cfg.size, split_seed=cfg.split_seed, progress=progress)
    synth = load_labelled(cfg.train, split="train", size=cfg.size, split_seed=cfg.split_seed, progress=progress)
    real = load_labelled(real_source, split="train", size=cfg.size, split_seed=cfg.split_seed, progress=progress)
    classes = sorted(set(test.classes))
    for name, data in (("--train", synth), ("real training set", real)):
        missing = [c for c in classes if c not in set(data.classes)]
        if missing:
            raise DataError(data.source, f"{name} has no images of test class {missing[0]!r} "
                                         f"({len(missing)} test class(es) missing)")
    if set(test.keys) & set(real.keys) and Path(real_source).resolve() != Path(cfg.test).resolve():
        logger.warning("real training and test sets share %d keys", len(set(test.keys) & set(real.keys)))
    ia, ib = match_counts(synth, real, classes, cfg.seed)
    synth_used, real_used = synth.subset(ia), real.subset(ib)
    index = {c: i for i, c in enumerate(classes)}
    y_test = torch.tensor([index[c] for c in test.classes])
    results: dict[str, Any] = {}
    correct: dict[str, np.ndarray] = {}
    for name, data in (("synthetic", synth_used), ("real", real_used)):
        t0 = time.perf_counter()
        labels = torch.tensor([index[c] for c in data.classes])
        model = train_classifier(data.images, labels, len(classes), epochs=cfg.epochs, batch_size=cfg.batch_size,
                                 seed=cfg.seed, device=cfg.device, augmentation=cfg.augment)
        pred = predict(model, test.images, device=cfg.device)
        hit = (pred == y_test).numpy()
        correct[name] = hit
        per_class = {c: _estimate(hit[(y_test == index[c]).numpy()], cfg.seed, cfg.bootstrap).to_dict() for c in classes}
        results[name] = {"train_source": data.source, "train_images": len(data), "train_counts": data.counts(),
                         "accuracy": _estimate(hit, cfg.seed, cfg.bootstrap).to_dict(), "per_class": per_class,
                         "seconds": round(time.perf_counter() - t0, 1)}
        logger.info("%s-trained accuracy %.3f", name, hit.mean())
    ratio = _ratio_interval(correct["synthetic"], correct["real"], cfg.seed, cfg.bootstrap)
    report = {
        "test_source": test.source, "test_images": len(test), "test_counts": test.counts(), "classes": classes,
        "chance": 1.0 / len(classes), "synthetic": results["synthetic"], "real": results["real"],
        "synthetic_to_real": ratio.to_dict(),
        "dropped_train_classes": sorted(set(synth.classes) - set(classes)),
        "config": {"size": cfg.size, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "seed": cfg.seed,
                   "split_seed": cfg.split_seed, "bootstrap": cfg.bootstrap, "classifier": "SmallCNN(32, 64, 128, 192)",
                   "augment": cfg.augment, "augmentation": AUGMENTATIONS[cfg.augment], "resamples_default": BOOTSTRAP},
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(outputs[0], json.dumps(report, indent=2), overwrite=cfg.overwrite)
    atomic_write_text(outputs[1], markdown(report), overwrite=cfg.overwrite)
    return report


def _pct(est: dict[str, Any]) -> str:
    if est.get("value") is None:
        return "—"
    text = f"{100 * est['value']:.1f} %"
    if est.get("low") is not None:
        text += f" [{100 * est['low']:.1f}, {100 * est['high']:.1f}]"
    return text


def markdown(report: dict[str, Any]) -> str:
    s, r, q = report["synthetic"], report["real"], report["synthetic_to_real"]
    ratio = "—" if q.get("value") is None else f"{q['value']:.3f}" + (
        f" [{q['low']:.3f}, {q['high']:.3f}]" if q.get("low") is not None else "")
    lines = [
        "# Downstream classification: synthetic-trained vs real-trained", "",
        f"Test: {report['test_images']} real images of {len(report['classes'])} classes ({report['test_source']}).",
        f"Classifier: {report['config']['classifier']}, {report['config']['epochs']} epochs, "
        f"{report['config']['size']} px, seed {report['config']['seed']}, {report['config']['augmentation']}.",
        "Intervals: bootstrap 95 % over the test images.", "",
        "| trained on | images | accuracy on real test |", "|---|---:|---|",
        f"| synthetic ({s['train_source']}) | {s['train_images']} | {_pct(s['accuracy'])} |",
        f"| real ({r['train_source']}) | {r['train_images']} | {_pct(r['accuracy'])} |",
        f"| chance | — | {100 * report['chance']:.1f} % |", "",
        f"**Synthetic-to-real ratio**: {ratio} (target ≥ 0.5).", "",
        "| class | test images | synthetic-trained | real-trained |", "|---|---:|---|---|",
    ]
    for c in report["classes"]:
        lines.append(f"| {c} | {report['test_counts'][c]} | {_pct(s['per_class'][c])} | {_pct(r['per_class'][c])} |")
    if report["dropped_train_classes"]:
        lines += ["", f"Training classes not in the test set (left out): {', '.join(report['dropped_train_classes'])}."]
    return "\n".join(lines) + "\n"
