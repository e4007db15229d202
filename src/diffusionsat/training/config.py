"""Training configuration: one flat dataclass, read from YAML and overridden by CLI flags.

Every key is checked: a misspelt key is an error naming the key and the closest valid ones, never
a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..metadata import METADATA_FIELDS


@dataclass
class TrainConfig:
    """All settings of one training run (see ``configs/*.yaml`` for commented examples)."""

    # data
    data: list[str] = field(default_factory=list)
    chip_size: int | None = None
    bands: str | None = None
    max_nodata: float = 0.1
    max_samples: int | None = None
    date_pattern: str | None = None
    num_workers: int = 0
    # task: "generate" trains the text+metadata model; the others train a ControlNet on a frozen base
    task: str = "generate"
    base_model: str | None = None
    max_frames: int = 3
    temporal_every_date: bool = False  # every date with max_frames earlier ones is a target, not just the latest
    sr_factor: int = 4
    lowres: str | None = None
    lowres_bands: str | None = None
    # superres: real low/high pairs beside the degraded ``data`` (each: high, low, and optionally
    # bands, low_bands, roi [minx, miny, maxx, maxy], stride, repeat = times per epoch)
    sr_pairs: list[dict[str, Any]] = field(default_factory=list)
    # task: start the ControlNet from this trained one (a ControlNet folder or a run) to fine-tune it
    controlnet_init: str | None = None
    # inpaint: building footprints etc. as holes; control with control_kind mask/road: the map to draw from
    mask_vector: str | None = None
    # control: what steers generation, as ``generate --control KIND`` reads it: edges of the target
    # image, or a mask/road map rasterised from ``mask_vector`` onto each chip (masks → image pairs)
    control_kind: str = "edges"
    # model
    preset: str = "tiny"
    pretrained: str | None = None
    resolution: int | None = None
    prediction_type: str | None = None  # None: the scheduler config's (epsilon for our presets)
    # rescale the betas to zero terminal SNR and sample with trailing timesteps (Lin et al. 2024):
    # the model then sees pure noise at t=T, so the noise's low frequencies can't leak into colours
    zero_terminal_snr: bool | None = None  # None: as the scheduler config says
    train_text_encoder: bool | None = None
    # train only the parameters whose name ("unet.metadata_embedding.4.linear_1.weight") starts with one
    # of these prefixes, the rest frozen (e.g. re-teach a fine-tuned model its metadata MLPs); [] = all
    train_only: list[str] = field(default_factory=list)
    # distil from a trained model (a folder, or "default"): on each sample whose ``distill`` key is
    # not False, the target blends the data's with this model's prediction for the same noisy input,
    # caption and metadata (learning without forgetting, Li & Hoiem 2016), so a fine-tune is held
    # near the teacher on the teacher's data while it learns new data (marked ``distill: False``)
    teacher_model: str | None = None
    teacher_weight: float = 0.5  # share of the target from the teacher, in [0, 1]
    # location-anchored guidance (docs/training.md): with ``anchor_model`` (a folder, or "default"), a
    # share ``anchor_share`` of the samples whose ``anchor_fields`` are all known are shown with no
    # caption and only those fields, and learn anchor_model's *unconditional* prediction; the saved
    # UNet records the fields, and generation then uses this branch as guidance's negative for any
    # request that gives them (requests without them keep the all-unknown branch)
    anchor_model: str | None = None
    anchor_fields: list[str] = field(default_factory=lambda: ["lon", "lat"])
    anchor_share: float = 0.25
    # optimisation
    seed: int = 0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    snr_gamma: float | None = None
    use_ema: bool = True
    ema_decay: float = 0.999
    # classifier-free guidance dropout
    caption_dropout: float = 0.1
    metadata_dropout: float = 0.1
    metadata_dropout_fields: dict[str, float] = field(default_factory=dict)
    # random flips/90° rotations (overhead imagery has no "up"); drawn per sample, resume-safe
    augment: bool = False
    # latent models
    precompute_latents: bool = False
    # bookkeeping
    output_dir: str = "runs/diffusionsat"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validate_every: int = 0
    validation_prompts: list[str] = field(default_factory=lambda: ["a satellite image"])
    validation_metadata: list[dict[str, Any]] = field(default_factory=lambda: [{}])
    validation_steps: int = 25
    log_every: int = 10
    report_to: str | None = "tensorboard"

    def validate(self) -> TrainConfig:
        """Range checks with messages that name the key and the allowed values."""
        def need(ok: bool, key: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{key}={getattr(self, key)!r}: {allowed}")

        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.max_samples is None or self.max_samples >= 1, "max_samples", "must be >= 1 (or null)")
        need(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be >= 1")
        need(self.max_steps >= 1, "max_steps", "must be >= 1")
        need(self.learning_rate > 0, "learning_rate", "must be > 0")
        need(isinstance(self.train_only, (list, tuple)) and all(isinstance(x, str) and x for x in self.train_only),
             "train_only", "must be a list of parameter-name prefixes, e.g. [unet.metadata_embedding]")
        need(0.0 <= self.teacher_weight <= 1.0, "teacher_weight", "must be in [0, 1]")
        if self.teacher_model is not None and self.task != "generate":
            raise ValueError(f"teacher_model: only for task=generate (task={self.task})")
        need(0.0 < self.anchor_share <= 1.0, "anchor_share", "must be in (0, 1]")
        need(isinstance(self.anchor_fields, (list, tuple)) and len(self.anchor_fields) > 0
             and all(f in METADATA_FIELDS for f in self.anchor_fields), "anchor_fields",
             f"must be a non-empty list of metadata fields from {', '.join(METADATA_FIELDS)}")
        if self.anchor_model is not None and self.task != "generate":
            raise ValueError(f"anchor_model: only for task=generate (task={self.task})")
        need(self.lr_warmup_steps >= 0, "lr_warmup_steps", "must be >= 0")
        need(self.prediction_type in (None, "epsilon", "v_prediction"), "prediction_type", "must be epsilon or v_prediction")
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            raise ValueError("zero_terminal_snr=True: needs prediction_type=v_prediction "
                             "(ε-prediction is undefined at zero signal-to-noise ratio)")
        need(self.mixed_precision in ("no", "fp16", "bf16"), "mixed_precision", "must be no, fp16 or bf16")
        need(0.0 <= self.caption_dropout <= 1.0, "caption_dropout", "must be in [0, 1]")
        need(0.0 <= self.metadata_dropout <= 1.0, "metadata_dropout", "must be in [0, 1]")
        need(0.0 < self.ema_decay < 1.0, "ema_decay", "must be in (0, 1)")
        need(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        need(self.snr_gamma is None or self.snr_gamma > 0, "snr_gamma", "must be > 0 (or null)")
        for name, p in self.metadata_dropout_fields.items():
            if name not in METADATA_FIELDS:
                raise ValueError(f"metadata_dropout_fields: unknown field {name!r}; allowed {', '.join(METADATA_FIELDS)}")
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"metadata_dropout_fields.{name}={p!r}: must be in [0, 1]")
        from .tasks import TASKS

        need(self.task in TASKS, "task", f"must be one of {', '.join(TASKS)}")
        need(self.max_frames >= 1, "max_frames", "must be >= 1")
        need(self.sr_factor >= 2, "sr_factor", "must be >= 2")
        self._validate_sr_pairs()
        from ..choices import CONTROL_KINDS

        need(self.control_kind in CONTROL_KINDS, "control_kind", f"must be one of {', '.join(CONTROL_KINDS)}")
        if self.control_kind != "edges" and self.task != "control":
            raise ValueError(f"control_kind={self.control_kind!r}: only for task=control (task={self.task})")
        if self.task == "control" and self.control_kind != "edges" and not self.mask_vector:
            raise ValueError(f"control_kind={self.control_kind!r}: needs mask_vector, the vector file whose "
                             "features are rasterised onto each chip as the map (e.g. building footprints)")
        if self.controlnet_init is not None and self.task in ("generate",):
            raise ValueError("controlnet_init: only for a ControlNet task (superres, temporal, inpaint, control)")
        if self.task != "generate" and self.augment:
            raise ValueError("augment: only for task=generate (a task's condition must stay aligned with its target)")
        if self.pretrained and self.task != "generate":
            raise ValueError("pretrained: only for task=generate (a task's frozen model is base_model)")
        if self.preset == "sd21" and not self.pretrained:
            raise ValueError("preset='sd21' needs pretrained: a Stable-Diffusion-2.1-style diffusers folder")
        return self

    def _validate_sr_pairs(self) -> None:
        if self.sr_pairs and self.task != "superres":
            raise ValueError(f"sr_pairs: only for task=superres (task={self.task})")
        for n, pair in enumerate(self.sr_pairs):
            if not isinstance(pair, dict):
                raise ValueError(f"sr_pairs[{n}]={pair!r}: must be a mapping with high and low")
            unknown = sorted(set(pair) - set(SR_PAIR_KEYS))
            if unknown:
                raise ValueError(f"sr_pairs[{n}]: unknown key(s) {', '.join(unknown)}; allowed {', '.join(SR_PAIR_KEYS)}")
            for key in ("high", "low"):
                if not pair.get(key):
                    raise ValueError(f"sr_pairs[{n}].{key}: missing (the {key}-resolution raster)")
            roi = pair.get("roi")
            if roi is not None and (not isinstance(roi, list) or len(roi) != 4
                                    or not all(isinstance(v, (int, float)) for v in roi)):
                raise ValueError(f"sr_pairs[{n}].roi={roi!r}: must be [minx, miny, maxx, maxy] in the high raster's CRS")
            for key in ("stride", "repeat"):
                value = pair.get(key)
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                    raise ValueError(f"sr_pairs[{n}].{key}={value!r}: must be an integer >= 1")

    def field_dropout(self) -> list[float]:
        """Per-field metadata dropout probabilities in model order."""
        return [float(self.metadata_dropout_fields.get(name, self.metadata_dropout)) for name in METADATA_FIELDS]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SR_PAIR_KEYS = ("high", "low", "bands", "low_bands", "roi", "stride", "repeat")
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES = get_type_hints(TrainConfig)


def _unknown_key(key: str) -> ValueError:
    close = difflib.get_close_matches(key, _FIELDS, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ValueError(f"unknown config key {key!r}{hint}")


def _coerce(key: str, value: Any) -> Any:
    """Parse a CLI string (or YAML value) into the key's declared type."""
    hint = _TYPES[key]
    args = [a for a in get_args(hint) if a is not type(None)]
    base = get_origin(hint) or hint
    if base is list or (args and get_origin(args[0]) is list):
        if isinstance(value, str):
            parsed = yaml.safe_load(value)
            value = parsed if isinstance(parsed, list) else [value]
        if not isinstance(value, list):
            raise ValueError(f"{key}={value!r}: must be a list")
        return value
    if base is dict:
        value = yaml.safe_load(value) if isinstance(value, str) else value
        if not isinstance(value, dict):
            raise ValueError(f"{key}={value!r}: must be a mapping")
        return value
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none")):
        if type(None) in get_args(hint):
            return None
        raise ValueError(f"{key}: may not be null")
    target = args[0] if args else hint
    if target is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}={value!r}: must be true or false")
    if target in (int, float):
        try:
            number = target(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or (target is int and float(value) != int(float(value))):
            raise ValueError(f"{key}={value!r}: must be {'an integer' if target is int else 'a number'}")
        return number
    return str(value)


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (optional) + overrides → a validated :class:`TrainConfig`."""
    values: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"config file {str(file)!r} does not exist")
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {str(file)!r} is not valid YAML: {err}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {str(file)!r} must hold a mapping of keys to values")
        values.update(loaded)
    values.update(overrides or {})
    parsed = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in _FIELDS:
            raise _unknown_key(key)
        parsed[key] = _coerce(key, value)
    if isinstance(parsed.get("data"), str):
        parsed["data"] = [parsed["data"]]
    return TrainConfig(**parsed).validate()


def parse_override_args(args: list[str]) -> dict[str, Any]:
    """``["--max-steps", "10", "--use-ema", "false"]`` → ``{"max_steps": "10", "use_ema": "false"}``."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; overrides look like --key value")
        key, sep, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in _FIELDS:
            raise _unknown_key(key)
        if not sep:
            if i + 1 >= len(args):
                raise ValueError(f"--{key.replace('_', '-')} needs a value")
            value = args[i + 1]
            i += 1
        overrides[key] = value
        i += 1
    return overrides
