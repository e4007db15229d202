"""Turn the ``data`` entries of a training config into a dataset of sample dicts."""

from __future__ import annotations

import logging
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset, Subset

from .components import model_resolution
from .config import TrainConfig

logger = logging.getLogger(__name__)

SHARD_SUFFIXES = (".tar",)
MANIFEST_SUFFIXES = (".csv", ".parquet", ".jsonl")


def _is_shards(entry: str) -> bool:
    path = Path(entry)
    if "://" in entry or entry.endswith(SHARD_SUFFIXES) or "{" in entry:
        return True
    return path.is_dir() and any(path.glob("*.tar"))


def build_dataset(cfg: TrainConfig) -> Dataset:
    """GeoTIFF scenes/folders → chips; ``.tar``/folders of shards/URLs → streamed shards;
    manifests → their rows; UC Merced folders → their training split (seeded by ``seed``).
    Every sample is resized to the model's resolution (GSD scales)."""
    from ..data.geotiff import GeoTiffChips
    from ..data.shards import ShardDataset
    from ..data.transforms import Resize
    from ..data.ucmerced import UCMerced, is_ucmerced_folder

    if not cfg.data:
        raise ValueError("data: no training data given (a list of GeoTIFFs, folders, shards or manifests)")
    resolution = model_resolution(cfg)
    missing = [d for d in cfg.data if "://" not in d and "{" not in d and not Path(d).exists()]
    if missing:
        raise FileNotFoundError(f"data: {missing[0]!r} does not exist")
    if cfg.task != "generate":
        from .tasks import build_task_dataset

        return _limit(build_task_dataset(cfg, resolution), cfg.max_samples)
    shards = [d for d in cfg.data if _is_shards(d)]
    manifests = [d for d in cfg.data if d.endswith(MANIFEST_SUFFIXES)]
    ucmerced = [d for d in cfg.data if d not in shards and is_ucmerced_folder(d)]
    rasters = [d for d in cfg.data if d not in shards and d not in manifests and d not in ucmerced]
    if shards and (rasters or manifests):
        raise ValueError("data: mix of streamed shards and files; convert the files with `diffusionsat prepare-data`")
    if shards:
        return ShardDataset(shards, shuffle_buffer=1000, seed=cfg.seed, transform=Resize(resolution))
    parts: list[Dataset] = [UCMerced(d, "train", size=resolution, seed=cfg.seed) for d in ucmerced]
    skipped: list[tuple[str, str]] = []
    if rasters:
        # Every file's pixels are read once here: a damaged one is skipped (and reported) now,
        # not found when its first chip is drawn at step N.
        chips = GeoTiffChips(rasters, chip_size=cfg.chip_size or resolution, resize_to=resolution,
                             bands=cfg.bands, date_pattern=cfg.date_pattern, max_nodata=cfg.max_nodata,
                             on_error="skip", verify_pixels=True)
        skipped = chips.skipped
        if skipped and len(chips):
            logger.warning("data: %d file(s) skipped (%s); training on the %d chips of the others",
                           len(skipped), "; ".join(f"{p}: {why}" for p, why in skipped[:3]), len(chips))
        parts.append(chips)
    if manifests:
        from ..data.manifest import ManifestDataset

        parts.append(ManifestDataset(manifests, transform=Resize(resolution)))
    dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    if len(dataset) == 0:
        raise ValueError(no_samples_message(cfg.data, skipped))
    return _limit(dataset, cfg.max_samples)


def no_samples_message(data: list[str], skipped: list[tuple[str, str]]) -> str:
    """One line: nothing to train on, and why (the first skipped files and their problems)."""
    if not skipped:
        return f"data: no usable samples in {data} (no chip passed the size/nodata filters)"
    reasons = "; ".join(f"{path}: {why}" for path, why in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return f"data: no usable samples, every file was skipped ({reasons}{more})"


def _limit(dataset: Dataset, max_samples: int | None) -> Dataset:
    """At most ``max_samples``, spread evenly over the whole dataset (not just the first scene)."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("data: no usable samples (all files skipped or empty)")
    if max_samples is None or max_samples >= len(dataset):  # type: ignore[arg-type]
        return dataset
    step = len(dataset) / max_samples  # type: ignore[arg-type]
    return Subset(dataset, [int(i * step) for i in range(max_samples)])


class WithKeys(Dataset):
    """Every sample of ``dataset`` with fixed extra keys, e.g. ``distill=False`` to keep a
    ``teacher_model`` off data it never saw."""

    def __init__(self, dataset: Dataset, **keys):
        self.dataset, self.keys = dataset, keys

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], **self.keys}
