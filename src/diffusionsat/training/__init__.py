"""Training and fine-tuning with accelerate (one CPU → many GPUs/nodes)."""

from .config import TrainConfig, load_config
from .trainer import Trainer, list_checkpoints

__all__ = ["TrainConfig", "Trainer", "list_checkpoints", "load_config", "train"]


def train(cfg: TrainConfig, resume: str | None = None):
    """Build the dataset of ``cfg`` and train; returns the final model folder."""
    from ..fileio import check_writable_dir
    from .datasets import build_dataset

    check_writable_dir(cfg.output_dir, "output_dir")  # before the dataset is built and checked
    return Trainer(cfg, build_dataset(cfg)).train(resume=resume)
