"""The text+metadata training loop, on ``accelerate`` from one CPU to many GPUs (DDP/FSDP/DeepSpeed).

Reads like a plain diffusers training script: encode → add noise at random timesteps → predict
ε or v → (Min-SNR-weighted) MSE → step. What it adds is what long runs need: EMA, per-field
metadata dropout and caption dropout for classifier-free guidance, atomic checkpoints that
restore everything (model, EMA, optimiser, LR schedule, data position), validation grids,
TensorBoard, and a final ``save_pretrained`` folder that ``diffusionsat generate`` loads.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Subset

from ..fileio import atomic_dir, atomic_path, check_writable_dir
from ..metadata import METADATA_FIELDS, SatMetadata, as_metadata, metadata_tensor
from ..pipelines import DiffusionSatPipeline
from ..pipelines.pipeline_diffusionsat import anchored_unconditional_metadata
from .components import build_initial_pipeline, model_resolution
from .config import TrainConfig
from .reproducibility import EpochSampler, check_rng_state, sample_generator

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
VOCAB_SCAN_SAMPLES = 20000
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


@dataclass
class TrainState:
    """Where the run is: saved in every checkpoint as ``trainer_state.json``."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0


class _Indexed(Dataset):
    """Adds the sample's index, which seeds its noise/timestep/dropout."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        item["index"] = index
        return item


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack pixels; keep captions, metadata and sample ids (index, or key for streamed shards) as lists."""
    batch = {
        "pixel_values": torch.stack([torch.as_tensor(it["pixel_values"], dtype=torch.float32) for it in items]),
        "caption": [str(it.get("caption") or "") for it in items],
        "metadata": [as_metadata(it.get("metadata")) for it in items],
        "sample_id": [it["index"] if "index" in it else str(it["key"]) for it in items],
        "distill": [it.get("distill", True) is not False for it in items],  # teacher_model's samples
    }
    for key in ("conditioning_pixel_values", "mask"):  # task samples
        if key in items[0]:
            tensors = [torch.as_tensor(it[key], dtype=torch.float32) for it in items]
            if key == "conditioning_pixel_values" and len({t.shape for t in tensors}) > 1:
                tensors = _common_size(tensors, tuple(batch["pixel_values"].shape[-2:]))
            batch[key] = torch.stack(tensors)
    if "conditioning_metadata" in items[0]:
        batch["conditioning_metadata"] = [it["conditioning_metadata"] for it in items]
    return batch


def _common_size(conditions: list[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
    """Low-res inputs of different factors (a ×2 real pair beside ×4 degradations) on the target's
    grid, resized as the task condition is anyway (and as ``superres`` does at inference)."""
    from ..pipelines.pipeline_controlnet import resize_condition

    return [resize_condition(c[None], size)[0] if c.ndim == 3 else c for c in conditions]


def dropped_metadata(metadata: Sequence[Any], drop: torch.Tensor, unknown: float) -> torch.Tensor:
    """Normalised metadata rows (SPEC §1), the dropped fields set to the model's unknown value."""
    md = metadata_tensor(metadata, unknown_value=unknown)
    return torch.where(drop, torch.full_like(md, unknown), md)


TEACHER_SCHEDULER_KEYS = ("prediction_type", "num_train_timesteps", "beta_schedule", "rescale_betas_zero_snr")


def load_teacher(model: str, student: DiffusionSatPipeline, device, role: str = "teacher_model") -> DiffusionSatPipeline:
    """``teacher_model`` (or ``anchor_model``, named by ``role``), frozen, after checking that it predicts
    what the student learns to predict (same target, noise schedule and model space): otherwise its
    outputs are no target."""
    from ..loading import resolve_model

    teacher = DiffusionSatPipeline.from_pretrained(resolve_model(model))
    mine, theirs = student.scheduler.config, teacher.scheduler.config
    for key in TEACHER_SCHEDULER_KEYS:
        if mine.get(key) != theirs.get(key):
            raise ValueError(f"{role}={model!r}: its scheduler's {key} is {theirs.get(key)!r} but the model "
                             f"trained here uses {mine.get(key)!r}; a teacher must predict the same target")
    same_space = ((teacher.vae is None) == (student.vae is None)
                  and teacher.unet.config.in_channels == student.unet.config.in_channels
                  and teacher.unet.config.sample_size == student.unet.config.sample_size)
    if not same_space:
        raise ValueError(f"{role}={model!r}: it denoises {teacher.unet.config.in_channels}-channel "
                         f"{teacher.unet.config.sample_size}-px inputs, the model trained here "
                         f"{student.unet.config.in_channels}-channel {student.unet.config.sample_size}-px")
    for module in (teacher.unet, teacher.text_encoder):
        module.requires_grad_(False).eval().to(device)
    return teacher


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary ``.partial`` folders are ignored)."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: str | os.PathLike, resume: str | None) -> Path | None:
    """``latest`` → the newest checkpoint (or ``None`` for a fresh run); a path → that checkpoint."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume {resume!r}: not a checkpoint folder (no trainer_state.json)")
    return path


def selected_parameters(modules: dict[str, torch.nn.Module], prefixes: Sequence[str],
                        set_requires_grad: bool = True) -> list[torch.nn.Parameter]:
    """The parameters of ``modules`` to train: all, or those whose qualified name ("unet.conv_in.weight")
    starts with one of ``prefixes`` (``train_only``); the others are frozen when ``set_requires_grad``."""
    named = [(f"{module_name}.{name}", p) for module_name, module in modules.items()
             for name, p in module.named_parameters()]
    if not prefixes:
        return [p for _, p in named]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name, _ in named):
            examples = sorted({".".join(name.split(".")[:2]) for name, _ in named})[:8]
            raise ValueError(f"train_only: {prefix!r} matches no trained parameter; names start e.g. "
                             f"{', '.join(examples)}")
    chosen = []
    for name, p in named:
        keep = any(name.startswith(prefix) for prefix in prefixes)
        if set_requires_grad:
            p.requires_grad_(keep)
        if keep:
            chosen.append(p)
    return chosen


def draw_sample_randomness(cfg: TrainConfig, sample_ids: Sequence[int | str], epoch: int,
                           shape: tuple[int, ...], num_timesteps: int):
    """Noise, timestep, caption-dropout and per-field metadata-dropout decisions of each sample.

    Returns ``(noise (B, *shape), timesteps (B,), drop_caption (B,) bool, drop_metadata (B, 7) bool,
    symmetry (B,) int in [0, 8), anchor_draw (B,) uniform in [0, 1))`` — the symmetry indexes a
    flip/rotation (0 = identity); ``anchor_draw < anchor_share`` picks an ``anchor_model`` sample.
    """
    noise, timesteps, drop_caption, drop_md, symmetry, anchor_draw = [], [], [], [], [], []
    p_md = torch.tensor(cfg.field_dropout())
    for sample_id in sample_ids:
        g = sample_generator(cfg.seed, epoch, sample_id)
        noise.append(torch.randn(shape, generator=g))
        timesteps.append(torch.randint(0, num_timesteps, (1,), generator=g))
        drop_caption.append(torch.rand(1, generator=g) < cfg.caption_dropout)
        drop_md.append(torch.rand(len(METADATA_FIELDS), generator=g) < p_md)
        symmetry.append(torch.randint(0, 8, (1,), generator=g) if cfg.augment else torch.zeros(1, dtype=torch.long))
        anchor_draw.append(torch.rand(1, generator=g))
    return (torch.stack(noise), torch.cat(timesteps), torch.cat(drop_caption), torch.stack(drop_md),
            torch.cat(symmetry), torch.cat(anchor_draw))


def apply_symmetry(images: torch.Tensor, symmetry: torch.Tensor) -> torch.Tensor:
    """Apply one of the 8 dihedral symmetries per image: k = s % 4 quarter turns, mirrored if s >= 4."""
    out = []
    for image, s in zip(images, symmetry.tolist()):
        image = torch.rot90(image, s % 4, dims=(-2, -1))
        out.append(torch.flip(image, dims=(-1,)) if s >= 4 else image)
    return torch.stack(out)


def dataset_captions(dataset: Dataset) -> list[str]:
    """All captions of a dataset (the tokenizer's vocabulary), without decoding pixels where the
    dataset offers ``captions()`` — also through ``ConcatDataset`` and ``Subset``."""
    captions = getattr(dataset, "captions", None)
    if callable(captions):
        return list(captions())
    if isinstance(dataset, ConcatDataset):
        return [c for part in dataset.datasets for c in dataset_captions(part)]
    if isinstance(dataset, Subset):
        inner = dataset_captions(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, IterableDataset):  # streamed: the vocabulary of a large prefix
        return [str(s.get("caption") or "") for s in itertools.islice(dataset, VOCAB_SCAN_SAMPLES)]
    return [str(dataset[i].get("caption") or "") for i in range(len(dataset))]  # type: ignore[arg-type]


class Trainer:
    """Train (or fine-tune) a :class:`DiffusionSatPipeline` on a dataset of dict samples.

    A sample is ``{"pixel_values": (C, H, W) float in [-1, 1], "caption": str, "metadata":
    SatMetadata | dict | None}`` — the format of :mod:`diffusionsat.data`.
    """

    def __init__(self, cfg: TrainConfig, dataset: Dataset, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg = cfg.validate()
        self.output_dir = check_writable_dir(cfg.output_dir, "output_dir")
        if not isinstance(dataset, IterableDataset) and len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError("the training dataset is empty: check the data paths and chip settings")
        self.dataset = dataset
        log_with = cfg.report_to if cfg.report_to and _tensorboard_available() else None
        self.accelerator = accelerator or Accelerator(
            cpu=_cpu_processes(),
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=cfg.mixed_precision,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "logs")),
        )
        self.state = TrainState()
        self.teacher: DiffusionSatPipeline | None = None
        self.anchor: DiffusionSatPipeline | None = None
        self._anchor_null: torch.Tensor | None = None
        self.loss_history: list[float] = []

    # --- set-up --------------------------------------------------------------------------------
    def _first_sample(self) -> dict[str, Any]:
        if isinstance(self.dataset, IterableDataset):
            for sample in self.dataset:
                return sample
            raise ValueError("the training dataset is empty: check the data paths and chip settings")
        return self.dataset[0]

    def _check_sample_size(self, resolution: int) -> None:
        first = self._first_sample()
        shape = tuple(torch.as_tensor(first["pixel_values"]).shape)
        if len(shape) != 3 or shape[1:] != (resolution, resolution):
            raise ValueError(
                f"samples are {shape[1:] if len(shape) == 3 else shape} px but preset {self.cfg.preset!r} "
                f"trains at {resolution}x{resolution}: set chip_size/resolution so they agree"
            )

    def _captions(self) -> list[str]:
        return dataset_captions(self.dataset)

    def _base_pipeline(self, resume_from: Path | None) -> DiffusionSatPipeline:
        """Fresh runs save their initial pipeline in ``base/`` so a resume rebuilds it exactly."""
        if self.cfg.base_model is not None:  # a task's frozen base: read it as it is
            from ..loading import resolve_model

            return DiffusionSatPipeline.from_pretrained(resolve_model(self.cfg.base_model))
        base = self.output_dir / "base"
        if (base / "model_index.json").is_file():
            pipe = DiffusionSatPipeline.from_pretrained(base)
        elif resume_from is not None:
            raise FileNotFoundError(f"cannot resume: {base} (the run's initial model) is missing")
        else:
            pipe = build_initial_pipeline(self.cfg, self._captions())
            if self.accelerator.is_main_process:
                with atomic_dir(base, overwrite=True) as tmp:
                    pipe.save_pretrained(tmp)
            self.accelerator.wait_for_everyone()
        return pipe

    def _train_text_encoder(self) -> bool:
        if self.cfg.train_text_encoder is not None:
            return self.cfg.train_text_encoder
        return self.cfg.preset != "sd21"  # our small text encoders start random

    # --- the loss ------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any], epoch: int) -> torch.Tensor:
        device = self.accelerator.device
        pixels = batch["pixel_values"].to(device)
        shape = tuple(pixels.shape[1:]) if self.vae is None else self._latent_shape(pixels)
        num_t = self.noise_scheduler.config.num_train_timesteps
        noise, timesteps, drop_caption, drop_md, symmetry, anchor_draw = draw_sample_randomness(
            self.cfg, batch["sample_id"], epoch, shape, num_t
        )
        if self.cfg.augment:
            if self._latent_cache is not None:
                raise ValueError("augment and precompute_latents exclude each other (cached latents are unaugmented)")
            pixels = apply_symmetry(pixels, symmetry)
        latents = self._encode(pixels, batch["sample_id"])
        noise, timesteps = noise.to(device, latents.dtype), timesteps.to(device)

        unknown = float(self.unet_config.metadata_unknown_value)
        md = dropped_metadata(batch["metadata"], drop_md, unknown)
        anchored = torch.zeros(len(md), dtype=torch.bool)
        if self.anchor is not None:  # these rows become the guidance anchor's: no caption, anchor fields only
            anchor_md = anchored_unconditional_metadata(
                metadata_tensor(batch["metadata"], unknown_value=unknown), self.cfg.anchor_fields, unknown)
            anchored = (anchor_md != unknown).any(dim=1) & (anchor_draw < self.cfg.anchor_share)
            md = torch.where(anchored[:, None], anchor_md, md)
            drop_caption = drop_caption | anchored
        md = md.to(device)
        captions = ["" if drop else c for c, drop in zip(batch["caption"], drop_caption.tolist())]
        tokens = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids.to(device)
        text = self.text_encoder(tokens)[0]

        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        if self.teacher is not None:
            target = self._teacher_target(target, batch, noisy, timesteps, captions, drop_md, anchored)
        if anchored.any():
            target = self._anchor_target(target, anchored, noisy, timesteps)
        if self.controlnet is None:
            pred = self.unet(noisy, timesteps, text, metadata=md).sample
        else:
            pred = self._controlnet_pred(batch, pixels, noisy, timesteps, text, md, drop_md, unknown)
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.cfg.snr_gamma is not None:
            per_sample = per_sample * self._snr_weights(timesteps)
        return per_sample.mean()

    def _teacher_target(self, target, batch, noisy, timesteps, captions, drop_md, anchored) -> torch.Tensor:
        """Blend ``teacher_model``'s prediction into the target of the samples it is to keep
        (``distill`` not False, not an anchor sample), for the same noisy input, dropped caption and
        dropped metadata."""
        rows = [i for i, keep in enumerate(batch["distill"]) if keep and not anchored[i]]
        if not rows:
            return target
        teacher, index = self.teacher, torch.tensor(rows, device=noisy.device)
        with torch.no_grad():
            text = teacher.encode_prompt([captions[i] for i in rows], noisy.device)
            md = dropped_metadata([batch["metadata"][i] for i in rows], drop_md[rows],
                                  float(teacher.unet.config.metadata_unknown_value)).to(noisy.device)
            pred = teacher.unet(noisy[index], timesteps[index], text, metadata=md).sample.to(target.dtype)
        weight = self.cfg.teacher_weight
        target = target.clone()
        target[index] = (1.0 - weight) * target[index] + weight * pred
        return target

    def _anchor_target(self, target, anchored, noisy, timesteps) -> torch.Tensor:
        """The anchor samples' target: ``anchor_model``'s unconditional prediction (empty caption,
        all-unknown metadata) for the same noisy input and timestep."""
        anchor, index = self.anchor, anchored.nonzero().flatten().to(noisy.device)
        if self._anchor_null is None:  # the empty prompt's embedding is the same at every step
            self._anchor_null = anchor.encode_prompt([""], noisy.device)
        with torch.no_grad():
            text = self._anchor_null.expand(len(index), -1, -1)
            md = torch.full((len(index), len(METADATA_FIELDS)), float(anchor.unet.config.metadata_unknown_value),
                            device=noisy.device)
            pred = anchor.unet(noisy[index], timesteps[index], text, metadata=md).sample.to(target.dtype)
        target = target.clone()
        target[index] = pred
        return target

    def _controlnet_pred(self, batch, pixels, noisy, timesteps, text, md, drop_md, unknown):
        """Noise prediction of the frozen UNet with the task ControlNet's residuals.

        The conditioning images' metadata drops the same fields as the target's (at sampling, the
        unconditional branch sees both all-unknown); the control image itself is never dropped.
        """
        from ..pipelines.pipeline_controlnet import controlnet_noise_pred
        from .tasks import conditioning_metadata, task_condition

        control = task_condition(self.cfg.task, batch, pixels, tuple(noisy.shape[-2:]), self.cfg.control_kind)
        frames = conditioning_metadata(self.cfg.task, batch)
        cond_md = None
        if frames is not None:
            per_row = len(frames[0])  # each frame drops the fields its row's target drops
            cond = dropped_metadata([m for row in frames for m in row], drop_md.repeat_interleave(per_row, dim=0), unknown)
            cond = cond.view(len(frames), per_row, -1).to(md.device)
            cond_md = cond[:, 0] if self.cfg.task == "superres" else cond
        return controlnet_noise_pred(self.unet, self.controlnet, noisy, timesteps, text, control, md, cond_md)

    def _snr_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Min-SNR-γ weighting (Hang et al. 2023), as the original recipe (γ = 5)."""
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise_scheduler, timesteps)
        clipped = torch.clamp(snr, max=self.cfg.snr_gamma)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped / snr

    def _latent_shape(self, pixels: torch.Tensor) -> tuple[int, ...]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (self.vae.config.latent_channels, pixels.shape[-2] // factor, pixels.shape[-1] // factor)

    def _encode(self, pixels: torch.Tensor, sample_ids: list) -> torch.Tensor:
        """Pixels → model space; with ``precompute_latents`` each sample is encoded once (mode)."""
        if self.vae is None:
            return pixels
        if self._latent_cache is not None:
            cached = [self._latent_cache.get(i) for i in sample_ids]
            if all(c is not None for c in cached):
                return torch.stack(cached).to(pixels.device)
        with torch.no_grad():
            dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
            latents = (dist.mean if self._latent_cache is not None else dist.sample()) * self.vae.config.scaling_factor
        if self._latent_cache is not None:
            for i, lat in zip(sample_ids, latents):
                self._latent_cache[i] = lat.detach().cpu()
        return latents

    def _dataloader(self) -> tuple[DataLoader, EpochSampler | None]:
        cfg = self.cfg
        if isinstance(self.dataset, IterableDataset):
            loader = DataLoader(self.dataset, batch_size=cfg.batch_size, collate_fn=collate,
                                num_workers=cfg.num_workers, drop_last=True)
            return loader, None
        sampler = EpochSampler(len(self.dataset), seed=cfg.seed)  # type: ignore[arg-type]
        loader = DataLoader(_Indexed(self.dataset), batch_size=cfg.batch_size, sampler=sampler,
                            collate_fn=collate, num_workers=cfg.num_workers, drop_last=True)
        if len(loader) == 0:
            raise ValueError(f"batch_size={cfg.batch_size} is larger than the dataset ({len(self.dataset)} samples)")  # type: ignore[arg-type]
        return loader, sampler

    # --- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Atomically write a checkpoint (temp folder + rename) and keep the last K."""
        acc = self.accelerator
        folder = self.output_dir / "checkpoints"
        final = folder / f"{CHECKPOINT_PREFIX}{self.state.global_step:08d}"
        tmp = folder / f".{final.name}.partial"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            if self.ema is not None:
                save_ema(self.ema, tmp)
            (tmp / "trainer_state.json").write_text(json.dumps(self.state.__dict__, indent=2))
            (tmp / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2, default=str))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in list_checkpoints(self.output_dir)[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, path: Path) -> None:
        self.accelerator.load_state(str(path))
        if self.ema is not None:
            load_ema(self.ema, path)
        self.state = TrainState(**json.loads((path / "trainer_state.json").read_text()))
        logger.info("resumed from %s at step %d", path, self.state.global_step)

    # --- the loop ------------------------------------------------------------------------------
    def train(self, resume: str | None = None) -> Path:
        """Run to ``max_steps`` (resuming when asked); returns the final model folder."""
        from accelerate.utils import set_seed
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.accelerator
        set_seed(cfg.seed)
        resume_from = resolve_resume(self.output_dir, resume)
        if resume_from is not None:  # accelerate would silently skip a damaged RNG state
            check_rng_state(resume_from, acc.process_index)
        resolution = model_resolution(cfg)
        self._check_sample_size(resolution)
        pipe = self._base_pipeline(resume_from)
        self.pipeline = pipe
        if cfg.anchor_model is not None:  # generation reads the anchor's fields from the saved UNet
            pipe.unet.register_to_config(guidance_anchor_fields=list(cfg.anchor_fields))
        elif cfg.task == "generate" and pipe.guidance_anchor_fields:
            logger.warning("this model's guidance anchor (%s) is not trained in this run (no anchor_model): "
                           "the negative branch of its guidance will drift", ", ".join(pipe.guidance_anchor_fields))
        self.tokenizer, self.noise_scheduler, self.vae = pipe.tokenizer, pipe.scheduler, pipe.vae
        self.unet_config = pipe.unet.config
        self._latent_cache = {} if (cfg.precompute_latents and pipe.vae is not None) else None
        modules: dict[str, torch.nn.Module | None] = {
            "unet": pipe.unet, "text_encoder": pipe.text_encoder, "controlnet": None, "vae": pipe.vae}
        if cfg.task == "generate":
            trained = ["unet"] + (["text_encoder"] if self._train_text_encoder() else [])
        else:  # a ControlNet on the frozen base model (SPEC §8)
            from ..pipelines.pipeline_controlnet import new_task_controlnet
            from .tasks import conditioning_channels

            channels = conditioning_channels(cfg.task, self._first_sample(), pipe.unet.config.out_channels)
            set_seed(cfg.seed)
            if cfg.controlnet_init is not None:
                from .tasks import initial_controlnet

                modules["controlnet"] = initial_controlnet(cfg, channels)
            else:
                modules["controlnet"] = new_task_controlnet(
                    pipe.unet, cfg.task, conditioning_channels=channels, vae_scale_factor=pipe.vae_scale_factor,
                    max_frames=cfg.max_frames)
            trained = ["controlnet"]
        for name, module in modules.items():
            if module is not None:
                module.requires_grad_(name in trained)
        if cfg.gradient_checkpointing:
            for name in trained:
                module = modules[name]
                enable = getattr(module, "enable_gradient_checkpointing", None) or module.gradient_checkpointing_enable
                enable()
        params = selected_parameters({name: modules[name] for name in trained}, cfg.train_only)
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
        lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=optimizer,
                                     num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
                                     num_training_steps=cfg.max_steps * acc.num_processes)
        loader, sampler = self._dataloader()
        # Map-style data is sharded across processes by accelerate; streamed shards split
        # themselves by rank and worker (each sample read once), so their loader is not prepared.
        extra = [loader] if sampler is not None else []
        prepared = acc.prepare(*[modules[n] for n in trained], optimizer, lr_scheduler, *extra)
        for name, module in zip(trained, prepared):
            modules[name] = module
        optimizer, lr_scheduler = prepared[len(trained)], prepared[len(trained) + 1]
        if sampler is not None:
            loader = prepared[-1]
        for name, module in modules.items():
            if module is not None and name not in trained:
                module.to(acc.device)
        self.unet, self.text_encoder, self.controlnet = modules["unet"], modules["text_encoder"], modules["controlnet"]
        self.teacher = load_teacher(cfg.teacher_model, pipe, acc.device) if cfg.teacher_model else None
        self.anchor = load_teacher(cfg.anchor_model, pipe, acc.device, "anchor_model") if cfg.anchor_model else None
        self._trained = trained
        ema = None
        if cfg.use_ema:
            ema = EMAModel(params, decay=cfg.ema_decay)
            ema.to(acc.device)
        self.ema = ema
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        if acc.is_main_process and acc.log_with:
            acc.init_trackers("diffusionsat", config={k: str(v) for k, v in cfg.to_dict().items()})

        batches_per_epoch = len(loader) if sampler is not None else None
        total_batch = cfg.batch_size * acc.num_processes * cfg.gradient_accumulation_steps
        progress = tqdm(total=cfg.max_steps, initial=self.state.global_step, disable=not acc.is_local_main_process,
                        desc="training", unit="step")
        started, steps_timed = time.perf_counter(), 0
        try:
            while self.state.global_step < cfg.max_steps:
                epoch = self.state.epoch
                # accelerate's loaders re-set the sampler's epoch from their own counter on each
                # iteration: set theirs, so the data order depends on the epoch alone.
                skip = self.state.batches_in_epoch
                if sampler is not None:
                    loader.set_epoch(epoch)
                    epoch_loader = acc.skip_first_batches(loader, skip) if skip else loader
                    epoch_loader.set_epoch(epoch)
                else:
                    if hasattr(self.dataset, "set_epoch"):
                        self.dataset.set_epoch(epoch)
                    epoch_loader = itertools.islice(loader, skip, None)
                for batch in epoch_loader:
                    with acc.accumulate(*[modules[n] for n in trained]):
                        loss = self.compute_loss(batch, epoch)
                        acc.backward(loss)
                        if acc.sync_gradients and cfg.max_grad_norm > 0:
                            acc.clip_grad_norm_(params, cfg.max_grad_norm)
                        optimizer.step()
                        lr_scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    self.state.batches_in_epoch += 1
                    if not acc.sync_gradients:
                        continue
                    if ema is not None:
                        ema.step(params)
                    self.state.global_step += 1
                    self.state.samples_seen += total_batch
                    steps_timed += 1
                    loss_value = acc.gather(loss.detach()[None]).mean().item()
                    self.loss_history.append(loss_value)
                    rate = steps_timed * total_batch / max(time.perf_counter() - started, 1e-9)
                    progress.update()
                    progress.set_postfix(loss=f"{loss_value:.4f}", samples_per_s=f"{rate:.1f}")
                    if self.state.global_step % cfg.log_every == 0 or self.state.global_step == 1:
                        acc.log({"loss": loss_value, "lr": lr_scheduler.get_last_lr()[0],
                                 "samples_per_s": rate}, step=self.state.global_step)
                    if batches_per_epoch is not None and self.state.batches_in_epoch >= batches_per_epoch:
                        self.state.epoch += 1
                        self.state.batches_in_epoch = 0
                    step = self.state.global_step
                    if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                        self.save_checkpoint()
                    if cfg.validate_every and step % cfg.validate_every == 0:
                        self.validate()
                    if step >= cfg.max_steps:
                        break
                else:
                    self.state.epoch = epoch + 1
                    self.state.batches_in_epoch = 0
        except torch.OutOfMemoryError as err:
            raise RuntimeError(
                f"out of memory at batch_size={cfg.batch_size}, resolution={resolution}: lower batch_size (and raise "
                "gradient_accumulation_steps), enable gradient_checkpointing, or use mixed_precision=bf16/fp16"
            ) from err
        finally:
            progress.close()
        final = self.save_final()
        acc.end_training()
        return final

    @contextlib.contextmanager
    def _ema_applied(self):
        """Context: model weights temporarily replaced by their EMA (validation, final save)."""
        if self.ema is None:
            yield
            return
        params = list(self._trainable_parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            yield
        finally:
            self.ema.restore(params)

    def _trainable_parameters(self):
        modules = {name: self.accelerator.unwrap_model(getattr(self, name)) for name in self._trained}
        yield from selected_parameters(modules, self.cfg.train_only, set_requires_grad=False)

    def _inference_pipeline(self) -> DiffusionSatPipeline:
        """The pipeline of the current weights (a ControlNet pipeline when training a task)."""
        acc = self.accelerator
        components = {"vae": self.vae, "text_encoder": acc.unwrap_model(self.text_encoder), "tokenizer": self.tokenizer,
                      "unet": acc.unwrap_model(self.unet), "scheduler": self.noise_scheduler}
        if self.controlnet is not None:
            from ..pipelines.pipeline_controlnet import DiffusionSatControlNetPipeline

            pipe = DiffusionSatControlNetPipeline(**components, controlnet=acc.unwrap_model(self.controlnet))
        else:
            pipe = DiffusionSatPipeline(**components)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def validate(self) -> Path | None:
        """Save a grid of the fixed validation prompts × metadata (EMA weights) as PNG."""
        if not self.accelerator.is_main_process:
            return None
        if self.controlnet is not None:
            logger.info("validation grids are for task=generate; evaluate a task model with `diffusionsat evaluate`")
            return None
        from ..imaging import image_grid

        cfg = self.cfg
        with self._ema_applied():
            pipe = self._inference_pipeline()
            rows = []
            for prompt in cfg.validation_prompts:
                row = []
                for i, md in enumerate(cfg.validation_metadata):
                    gen = torch.Generator().manual_seed(cfg.seed + i)
                    row.append(pipe(prompt, metadata=SatMetadata.from_dict(md), num_inference_steps=cfg.validation_steps,
                                    generator=gen, output_type="np").images[0])
                rows.append(row)
        grid = image_grid(rows)
        path = self.output_dir / "validation" / f"step-{self.state.global_step:08d}.png"
        from PIL import Image

        with atomic_path(path, overwrite=True) as tmp:
            Image.fromarray(grid).save(tmp, format="PNG")
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("validation", grid, self.state.global_step, dataformats="HWC")
        return path

    def save_final(self) -> Path:
        """``output_dir/model``: a diffusers folder with the EMA weights, loadable by ``generate``."""
        acc = self.accelerator
        final = self.output_dir / "model"
        acc.wait_for_everyone()
        if acc.is_main_process:
            with self._ema_applied():
                pipe = self._inference_pipeline()
                with atomic_dir(final, overwrite=True) as tmp:
                    pipe.save_pretrained(tmp)
                    (tmp / "training.json").write_text(json.dumps(
                        {"state": self.state.__dict__, "config": self.cfg.to_dict()}, indent=2, default=str))
        acc.wait_for_everyone()
        return final


def _cpu_processes() -> bool:
    """Multi-process runs without CUDA (``accelerate launch`` on CPUs) must ask for gloo CPU processes:
    accelerate's multi-process launcher does not pass its ``use_cpu`` setting on to the processes."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def save_ema(ema, folder: Path) -> None:
    """EMA weights as safetensors + scalars as JSON (no pickle in checkpoints)."""
    from safetensors.torch import save_file

    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    save_file({f"shadow.{i}": p.detach().contiguous().cpu() for i, p in enumerate(shadow)}, folder / "ema.safetensors")
    (folder / "ema.json").write_text(json.dumps(state))


def load_ema(ema, folder: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(folder / "ema.safetensors")
    state = json.loads((folder / "ema.json").read_text())
    state["shadow_params"] = [tensors[f"shadow.{i}"] for i in range(len(tensors))]
    ema.load_state_dict(state)
