"""``evaluate``: real held-out data + generated images (or a model) → metrics with baselines → report.

The algorithm, step by step (see :func:`evaluate`):

1. check the inputs (task, paths, output folder) before anything heavy;
2. read the real records and pick ``num_samples`` of them (seeded);
3. get generated images per model: from ``--generated`` folders (matched by key) or by running the
   model (``generate`` task) and saving them with sidecars under ``REPORT_DIR/generated-*``;
4. build the baselines from the real images: real-vs-real halves (floor), a trivial generator and
   the task's classical methods (bicubic/Lanczos, latest frame/mean of frames, biharmonic/mean fill);
5. load the feature networks that are available (the shipped domain encoder always; Inception,
   CLIP and LPIPS only from local paths) and extract features once per image set;
6. compute the task's metrics for every row, with intervals and sample counts;
7. write ``report.json``, ``report.md`` (with which baselines beat the model, per metric) and one
   real-vs-generated grid per condition.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..choices import EVAL_TASKS
from ..fileio import check_writable
from ..metadata import SatMetadata
from ..schedulers import check_scheduler
from .baselines import (
    bicubic_upsample,
    biharmonic_fill,
    blur_noise,
    centre_mask,
    lanczos_upsample,
    latest_frame,
    mean_fill,
    mean_of_frames,
)
from .dataset import (
    EvalRecord,
    at_size,
    image_size,
    load_records,
    load_stack,
    match_generated,
    read_image,
    read_mask,
    record_conditions,
    record_mask,
    resize,
)
from .domain_encoder import SEASONS, WITHIN_LOG2, DomainEncoder, load_domain_encoder, season_of
from .features import DomainOutputs, domain_outputs, inception_outputs
from .metrics import (
    clip_score_per_image,
    fid,
    inception_score,
    kid,
    psnr_per_image,
    ssim_per_image,
    summarize_psnr,
)
from .networks import InceptionFeatures, LPIPSDistance, PretrainedWeightsMissing, load_clip, load_lpips
from .stats import Estimate, class_mean_estimate, mean_estimate

logger = logging.getLogger(__name__)

TASKS = EVAL_TASKS
PAIRED_TASKS = ("superres", "temporal", "inpaint")
REPORT_FILES = ("report.json", "report.md")


def embedded_task_model(task: str) -> bool:
    """Whether the embedded default model ships a ControlNet for ``task`` (``controlnet_<task>/``)."""
    from ..loading import default_model_path, has_default_model

    return has_default_model() and (default_model_path() / f"controlnet_{task}" / "config.json").is_file()


@dataclass
class EvaluationConfig:
    """Everything one evaluation run needs; :meth:`validate` checks it before any model is loaded."""

    task: str
    data: Path
    out: Path
    model: str | None = None
    generated: Path | None = None
    compare: str | None = None
    num_samples: int | None = None
    seed: int = 0
    steps: int = 25
    guidance_scale: float = 3.0
    metadata_guidance_scale: float | None = None
    anchored_guidance: bool = True  # --task generate: the model's location-anchored negative, when it has one
    scheduler: str | None = None  # a short name of diffusionsat.schedulers; None: the model's own
    size: int | None = None
    device: str = "cpu"
    domain_encoder: Path | None = None
    inception: Path | None = None
    clip: Path | None = None
    lpips_backbone: Path | None = None
    lpips_weights: Path | None = None
    bootstrap: int = 20
    overwrite: bool = False

    def validate(self) -> EvaluationConfig:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: unknown; choose one of {', '.join(TASKS)}")
        if not Path(self.data).exists():
            raise FileNotFoundError(f"--data {str(self.data)!r} does not exist")
        if self.model is None and self.generated is None and self.task in PAIRED_TASKS \
                and not embedded_task_model(self.task):
            raise ValueError(f"--task {self.task} needs --model (a task model with controlnet/) or --generated DIR "
                             f"(images already generated): the embedded model has no {self.task} ControlNet")
        if self.generated is not None and not Path(self.generated).is_dir():
            raise FileNotFoundError(f"--generated {str(self.generated)!r} is not a folder")
        if self.compare is not None and not Path(self.compare).exists():
            raise FileNotFoundError(f"--compare {str(self.compare)!r} does not exist")
        if self.num_samples is not None and self.num_samples < 2:
            raise ValueError(f"num_samples={self.num_samples!r}: need at least 2 (real-vs-real halves)")
        if self.metadata_guidance_scale is not None:
            if self.task != "generate":
                raise ValueError(f"--metadata-guidance applies to --task generate only, not {self.task}")
            if not math.isfinite(self.metadata_guidance_scale) or self.metadata_guidance_scale < 0:
                raise ValueError(f"metadata_guidance_scale={self.metadata_guidance_scale!r}: must be a finite number >= 0")
        if not self.anchored_guidance and self.task != "generate":
            raise ValueError(f"--no-anchored-guidance applies to --task generate only, not {self.task}")
        if self.scheduler is not None:
            if self.generated is not None and not (self.compare is not None and is_model_folder(self.compare)):
                raise ValueError("--scheduler applies when evaluate generates the images (--model, or a model "
                                 "folder as --compare), not to --generated")
            self.scheduler = check_scheduler(self.scheduler)
        if self.size is not None and (self.size < 8 or self.size % 8):
            raise ValueError(f"size={self.size!r}: must be a multiple of 8, at least 8")
        if not 0 <= self.bootstrap <= 10_000:
            raise ValueError(f"bootstrap={self.bootstrap!r}: out of range; allowed [0, 10000]")
        for optional in ("inception", "clip", "lpips_backbone", "lpips_weights", "domain_encoder"):
            value = getattr(self, optional)
            if value is not None and not Path(value).exists():
                raise PretrainedWeightsMissing(
                    f"--{optional.replace('_', '-')} {str(value)!r} does not exist; nothing is downloaded"
                )
        check_writable([Path(self.out) / name for name in REPORT_FILES], overwrite=self.overwrite)
        return self


@dataclass
class Candidate:
    """One row of every table: images aligned with the records (index i = record i)."""

    name: str
    role: str  # "model" | "floor" | "baseline"
    images: torch.Tensor
    description: str
    source: str | None = None
    requested: list[EvalRecord] | None = None  # the conditions the images were made for (default: records)


@dataclass
class Networks:
    domain: DomainEncoder | None = None
    inception: InceptionFeatures | None = None
    clip: Any = None
    lpips: LPIPSDistance | None = None
    domain_lpips: LPIPSDistance | None = None
    status: dict[str, dict[str, Any]] = field(default_factory=dict)


# --- step 2/3: data and generated images -----------------------------------------------------------
def select_records(records: list[EvalRecord], num: int | None, seed: int) -> list[EvalRecord]:
    """A seeded random subset of ``num`` records (all when ``num`` is None), in key order."""
    if num is None or num >= len(records):
        return records
    rng = np.random.default_rng(seed)
    keep = sorted(rng.choice(len(records), size=num, replace=False).tolist())
    return [records[i] for i in keep]


def is_model_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "model_index.json").is_file()


def _metadata_at(rec: EvalRecord, real_side: int, side: int):
    """The record's metadata for an image of ``side`` px covering the same ground (GSD scaled).

    When the scaled GSD leaves the valid range (e.g. 300 m chips generated at 16 px), GSD is
    requested as unknown rather than clipped, and faithfulness skips it for that record.
    """
    try:
        return rec.metadata.resized(real_side, side)
    except ValueError:
        logger.warning("record %s: GSD %.1f m scaled to %d px is out of range; generated with GSD unknown",
                       rec.key, rec.metadata.gsd, side)
        return rec.metadata.replace(gsd=None)


def generate_for_records(
    model: str, records: list[EvalRecord], out_dir: Path, *, seed: int, steps: int, guidance_scale: float,
    size: int | None, device: str, overwrite: bool, metadata_guidance_scale: float | None = None,
    scheduler: str | None = None, anchored_guidance: bool = True,
) -> Path:
    """Run the text+metadata pipeline once per record (seed + i) and save PNG + sidecar as ``{key}.png``.

    The requested GSD covers the same ground as the real image: gsd · real side / generated side.
    """
    from ..generation import GenerationRequest, generate_images
    from ..loading import load_pipeline, model_version, resolve_model
    from ..outputs import GenerationRecord, OutputPaths, save_generated
    from ..schedulers import make_scheduler

    location = resolve_model(model)
    pipe = load_pipeline(location, device=device)
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:  # once for the run, as generate_conditional_for_records does
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler)
    version = model_version(location) if Path(location).exists() else None
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, rec in enumerate(tqdm(records, desc=f"generating with {Path(model).name}")):
        real_side = image_size(rec)[1]
        native = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
        side = size or native
        request = GenerationRequest(
            prompt=rec.caption, metadata=_metadata_at(rec, real_side, side), seed=seed + i, steps=steps,
            guidance_scale=guidance_scale, metadata_guidance_scale=metadata_guidance_scale, width=side, height=side,
            anchored_guidance=anchored_guidance,
        )
        images, seeds, used = generate_images(pipe, request)
        record = GenerationRecord(
            prompt=request.prompt, metadata=request.metadata, seed=seeds[0], steps=steps, guidance_scale=guidance_scale,
            metadata_guidance_scale=metadata_guidance_scale,
            scheduler=used, width=side, height=side, model=Path(location).name,
            extra={"scene": rec.scene, "eval_key": rec.key, **request.sidecar_extra()},
        )
        paths = OutputPaths(png=out_dir / f"{rec.key}.png", sidecar=out_dir / f"{rec.key}.json")
        save_generated(images[0], paths, record, model_version=version, overwrite=overwrite)
    return out_dir


def _sidecar_metadata(path: Path) -> SatMetadata | None:
    """A task input's metadata from its sidecar (``{file}.json``, the evaluation format), if it has one."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    from .dataset import record_from_dict

    return record_from_dict(json.loads(sidecar.read_text(encoding="utf-8")), path, path.stem, path.parent).metadata


def with_known_metadata(raster: Any, known: SatMetadata | None) -> Any:
    """``raster`` (a :class:`~diffusionsat.conditional.RasterInput`) with the fields its file does not give
    taken from ``known`` (its sidecar, or the record): a PNG has no place or GSD, a GeoTIFF may lack the
    date. What the file says is kept; the date is taken whole (year, month, day) or not at all."""
    if known is None:
        return raster
    md = raster.metadata
    changes = {k: getattr(known, k) for k in ("lon", "lat", "gsd", "cloud_cover")
               if getattr(md, k) is None and getattr(known, k) is not None}
    if md.year is None and known.year is not None:
        changes.update(year=known.year, month=known.month, day=known.day)
    return dataclasses.replace(raster, metadata=md.replace(**changes)) if changes else raster


def generate_conditional_for_records(
    model: str, task: str, records: list[EvalRecord], out_dir: Path, *, seed: int, steps: int, guidance_scale: float,
    device: str, overwrite: bool, scheduler: str | None = None,
) -> Path:
    """Run a task model (base model + ControlNet) on each record's inputs, as the task commands do.

    superres: ``condition`` = the low-res input(s), upscaled to the reference's width; temporal:
    ``condition`` = the frames (dates from their GeoTIFF/file name or sidecar), target date = the
    record's date; inpaint: the reference image with its ``mask`` (or the central square) filled.
    """
    from ..conditional import inpaint_raster, predict_temporal, read_input, save_task_result, superresolve
    from ..loading import model_version, resolve_model
    from ..outputs import OutputPaths
    from ..pipelines.pipeline_controlnet import load_controlnet_pipeline
    from ..schedulers import make_scheduler, scheduler_name

    location = resolve_model(model)
    pipe = load_controlnet_pipeline(location, device=device, task=task)
    pipe.set_progress_bar_config(disable=True)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler)
    version = model_version(location) if Path(location).exists() else None
    sampling = {"num_inference_steps": steps, "guidance_scale": guidance_scale}
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, rec in enumerate(tqdm(records, desc=f"{task} with {Path(model).name}")):
        if rec.pixels is not None:
            raise ValueError(f"record {rec.key!r} comes from a shard: run `diffusionsat {task}` on GeoTIFF/PNG "
                             "inputs, or pass its outputs with --generated")
        if task == "inpaint":
            image = with_known_metadata(read_input(rec.image), rec.metadata)
            mask = (read_mask(rec.mask)[0] if rec.mask else centre_mask(read_image(rec.image)[None])[0, 0]) > 0.5
            result = inpaint_raster(pipe, image, mask.numpy(), prompt=rec.caption, seed=seed + i, **sampling)
        else:
            if not rec.condition:
                raise ValueError(f"record {rec.key!r}: task {task} needs its input images in 'condition'")
            known = [_sidecar_metadata(p) for p in rec.condition]
            inputs = [with_known_metadata(read_input(p, date=k.date_string() if k else None), k)
                      for p, k in zip(rec.condition, known)]
            if task == "superres":
                width = image_size(rec.image)[1]
                if width % inputs[0].width:
                    raise ValueError(f"record {rec.key!r}: reference width {width} px is not a multiple of the "
                                     f"low-res width {inputs[0].width} px")
                result = superresolve(pipe, inputs, scale=width // inputs[0].width, prompt=rec.caption,
                                      metadata=rec.metadata, seed=seed + i, **sampling)
            else:
                target_date = rec.metadata.date_string()
                if target_date is None:
                    raise ValueError(f"record {rec.key!r}: temporal prediction needs the record's date")
                result = predict_temporal(pipe, inputs, target_date=target_date, prompt=rec.caption,
                                          metadata=rec.metadata, seed=seed + i, **sampling)
        result.extra.update({"scene": rec.scene, "eval_key": rec.key})
        save_task_result(
            result, OutputPaths(png=out_dir / f"{rec.key}.png", sidecar=out_dir / f"{rec.key}.json"), task=task,
            prompt=rec.caption, steps=steps, guidance_scale=guidance_scale, scheduler=scheduler_name(pipe.scheduler),
            model=Path(location).name, model_version=version, overwrite=overwrite,
        )
    return out_dir


def load_generated(
    folder: Path, records: list[EvalRecord], size: tuple[int, int], task: str, name: str
) -> tuple[list[EvalRecord], torch.Tensor, list[EvalRecord]]:
    """Generated images aligned with the real records they belong to (by key).

    Returns (the real records kept, the generated images, the generated records = what was asked).
    Paired tasks need every image to match a record; ``generate`` keeps only matched records.
    """
    generated = load_records(folder)
    pairs = match_generated(records, generated)
    if not pairs:
        raise ValueError(
            f"{name}: no image in {str(folder)!r} matches a real record key (expected {{key}}.png, "
            f"e.g. {records[0].key}.png)"
        )
    missing = [r.key for r in records if r.key not in pairs]
    if missing and task in PAIRED_TASKS:
        raise ValueError(f"{name}: no generated image for record {missing[0]!r} in {str(folder)!r} ({len(missing)} missing)")
    if missing:
        logger.warning("%s: %d of %d real records have no generated image; they are left out", name, len(missing), len(records))
    kept = [r for r in records if r.key in pairs]
    requested = []
    for r in kept:
        gen = pairs[r.key]
        # What was asked: the generated sidecar when it has it, else the real record's condition.
        asked = gen if not gen.metadata.is_unknown() else r  # whose metadata (and native size) applies
        requested.append(dataclasses.replace(
            r, image=gen.image, pixels=None, caption=gen.caption or r.caption, metadata=at_size(asked, size).metadata,
            scene=gen.scene or r.scene,
        ))
    images = torch.stack([resize(read_image(g.image), size) for g in requested])
    return kept, images, requested


# --- step 4: baselines ---------------------------------------------------------------------------------
def upsample_inputs(upsample: Any, records: list[EvalRecord], real: torch.Tensor) -> torch.Tensor:
    """A super-resolution baseline per record: its own low-res input (``condition``) upsampled to its
    reference's native size, then resized to the compared size like the reference. Without inputs for
    every record: the compared references downsampled 4x and upsampled again."""
    size = tuple(real.shape[-2:])
    if not all(r.has_condition for r in records):
        return upsample(real)
    out = [resize(upsample(real[i:i + 1], low_res=record_conditions(r)[0][:3][None], size=image_size(r))[0], size)
           for i, r in enumerate(records)]
    return torch.stack(out)


def build_baselines(task: str, records: list[EvalRecord], real: torch.Tensor, seed: int) -> list[Candidate]:
    """Real-vs-real (floor), the trivial generator and the classical baselines of ``task``, aligned with ``records``."""
    size = tuple(real.shape[-2:])
    rows = [
        Candidate("real-vs-real", "floor", real,
                  "held-out real images: set metrics between two random halves, pairwise metrics against another "
                  "real image, classification and faithfulness on the real images themselves (the encoder's ceiling)"),
        Candidate("blur+noise", "baseline", blur_noise(real, seed=seed),
                  "trivial generator: each real image blurred (Gaussian sigma 2 px) then noised (sigma 0.1)"),
    ]
    if task == "superres":
        given = "the low-res input (condition)" if all(r.has_condition for r in records) else \
            "the reference downsampled 4x"
        rows.append(Candidate("bicubic", "baseline", upsample_inputs(bicubic_upsample, records, real),
                              f"classical: bicubic upsampling of {given}"))
        rows.append(Candidate("lanczos", "baseline", upsample_inputs(lanczos_upsample, records, real),
                              f"classical: Lanczos-3 upsampling (PIL LANCZOS, float) of {given}"))
    elif task == "inpaint":
        masks = (torch.stack([resize(record_mask(r), size) for r in records]).round()
                 if all(r.has_mask for r in records) else centre_mask(real))
        rows.append(Candidate("biharmonic", "baseline", biharmonic_fill(real, masks),
                              "classical: scikit-image biharmonic in-painting of the hole (mask = 1, or the central "
                              "square); the rest unchanged"))
        rows.append(Candidate("mean-fill", "baseline", mean_fill(real, masks),
                              "hole (mask = 1, or the central square) filled with the mean colour of the rest"))
    elif task == "temporal" and all(r.has_condition for r in records):
        frames = [[resize(f[:3], size) for f in record_conditions(r)] for r in records]
        rows.append(Candidate("latest-frame", "baseline", latest_frame(torch.stack([f[-1] for f in frames])),
                              "classical: the latest conditioning frame repeated (predicts no change)"))
        rows.append(Candidate("mean-of-frames", "baseline", torch.stack([mean_of_frames(f) for f in frames]),
                              "classical: the per-pixel mean of all conditioning frames"))
    return rows


# --- step 5: networks ------------------------------------------------------------------------------------
def load_networks(config: EvaluationConfig) -> Networks:
    """Load what is available; every absent network is reported with its reason, never downloaded."""
    nets = Networks()
    try:
        nets.domain = load_domain_encoder(config.domain_encoder, device=config.device)
        folder = config.domain_encoder or "shipped (diffusionsat/assets/domain-encoder)"
        nets.status["domain_encoder"] = {"available": True, "path": str(folder)}
        nets.domain_lpips = LPIPSDistance(nets.domain.feature_maps, None, name="domain_lpips")
    except FileNotFoundError as err:
        nets.status["domain_encoder"] = {"available": False, "reason": str(err)}
        logger.warning("domain metrics skipped: %s", err)
    loaders = {
        "inception": lambda: InceptionFeatures(config.inception),
        "clip": lambda: load_clip(config.clip),
        "lpips": lambda: load_lpips(config.lpips_backbone, config.lpips_weights),
    }
    wanted = {"inception": True, "clip": config.task == "generate", "lpips": config.task in PAIRED_TASKS}
    for name, loader in loaders.items():
        if not wanted[name]:
            continue
        try:
            setattr(nets, name, loader())
            path = {"inception": config.inception, "clip": config.clip, "lpips": config.lpips_backbone}[name]
            nets.status[name] = {"available": True, "path": str(path)}
        except PretrainedWeightsMissing as err:
            nets.status[name] = {"available": False, "reason": str(err)}
            logger.warning("%s metrics skipped: %s", name, err)
    return nets


# --- step 6: metrics -------------------------------------------------------------------------------------
METRIC_INFO: dict[str, tuple[str, str]] = {
    "fid": ("lower", "FID on Inception features (reference: real half A; rows: images of half B's records)"),
    "kid": ("lower", "KID on Inception features (same sets as FID)"),
    "is": ("higher", "Inception Score of all images of the row"),
    "clip_score": ("higher", "CLIP score (100 x cosine) between each image and its caption"),
    "domain_fid": ("lower", "FID on the domain encoder's 128-d embedding (reference: real half A; rows: half B)"),
    "domain_kid": ("lower", "KID on the domain encoder's embedding (same sets as domain FID)"),
    "classification_score": ("higher", "fraction of images the domain encoder assigns to the requested scene class "
                                       "(the record's 'scene', else the class it assigns to the real image)"),
    "classification_score_class_mean": ("higher", "classification score averaged over classes: the mean over target "
                                                  "classes of each class's recognition rate (every class counts once)"),
    "classification_ratio_to_real": ("higher", "class-averaged classification score of the row divided by that of the "
                                               "real images (real-vs-real row): 1 = recognised as often as real images"),
    "gsd_error": ("lower", "metadata faithfulness, GSD: |log2(predicted GSD / requested GSD)| (1 = off by 2x)"),
    "gsd_within_1.5x": ("higher", "metadata faithfulness, GSD: fraction predicted within a factor 1.5 of the request"),
    "season_accuracy": ("higher", "metadata faithfulness, season: predicted season = requested (month, hemisphere)"),
    "psnr": ("higher", "PSNR in dB against the reference (data range 1)"),
    "ssim": ("higher", "SSIM against the reference (Gaussian window, sigma 1.5)"),
    "lpips": ("lower", "LPIPS against the reference (given backbone)"),
    "domain_lpips": ("lower", "LPIPS formula over the domain encoder's stage features, uniform channel weights"),
}


def _requested(c: Candidate, records: list[EvalRecord]) -> list[EvalRecord]:
    return c.requested if c.requested is not None else records


def classification_targets(encoder: DomainEncoder, records: list[EvalRecord], real_out: DomainOutputs) -> tuple[np.ndarray, int]:
    """Target class per record: its ``scene`` when the encoder knows it, else the class of the real image."""
    classes = encoder.scene_classes
    targets, labelled = [], 0
    for i, rec in enumerate(records):
        if rec.scene in classes:
            targets.append(classes.index(rec.scene))
            labelled += 1
        else:
            targets.append(int(real_out.scene_probs[i].argmax()))
    return np.asarray(targets), labelled


def faithfulness(
    encoder: DomainEncoder, out: DomainOutputs, requested: list[EvalRecord], side: int, seed: int
) -> dict[str, Estimate]:
    """GSD and season agreement between what the encoder sees and what was requested, per field."""
    result: dict[str, Estimate] = {}
    gsd_idx = [i for i, r in enumerate(requested) if r.metadata.gsd is not None]
    if gsd_idx:
        want = np.log2([encoder.gsd_at_input(requested[i].metadata.gsd, side) for i in gsd_idx])
        err = np.abs(out.log2_gsd[gsd_idx] - want)
        result["gsd_error"] = mean_estimate(err, seed=seed)
        result["gsd_within_1.5x"] = mean_estimate((err < WITHIN_LOG2).astype(float), seed=seed)
    else:
        note = "no record has a GSD"
        result["gsd_error"] = result["gsd_within_1.5x"] = Estimate.missing(note)
    season_idx = [i for i, r in enumerate(requested) if r.metadata.month is not None]
    if season_idx:
        want_s = np.asarray([season_of(requested[i].metadata.month, requested[i].metadata.lat) for i in season_idx])
        result["season_accuracy"] = mean_estimate((out.season[season_idx] == want_s).astype(float), seed=seed)
    else:
        result["season_accuracy"] = Estimate.missing("no record has a month (season unknown)")
    return result


def compute_metrics(
    task: str, records: list[EvalRecord], real: torch.Tensor, candidates: list[Candidate], nets: Networks,
    seed: int = 0, bootstrap: int = 20,
) -> tuple[dict[str, dict[str, Estimate]], dict[str, Any]]:
    """All metrics of ``task`` for every candidate → ({metric: {row: Estimate}}, per-condition details)."""
    n = len(records)
    order = np.random.default_rng(seed).permutation(n)
    half_a, half_b = np.sort(order[: n // 2]), np.sort(order[n // 2:])
    tables: dict[str, dict[str, Estimate]] = {}

    def put(metric: str, row: str, est: Estimate) -> None:
        tables.setdefault(metric, {})[row] = est

    side = int(real.shape[-1])
    per_condition: dict[str, Any] = {}
    # Domain encoder: set metrics, classification, faithfulness, domain LPIPS.
    if nets.domain is not None:
        real_out = domain_outputs(nets.domain, real, desc="domain features (real)")
        targets, labelled = classification_targets(nets.domain, records, real_out)
        ref = real_out.embedding[half_a]
        conditions = sorted({nets.domain.scene_classes[t] for t in targets})
        all_hits: dict[str, np.ndarray] = {}
        for c in candidates:
            out = real_out if c.role == "floor" else domain_outputs(nets.domain, c.images, desc=f"domain features ({c.name})")
            put("domain_fid", c.name, fid(ref, out.embedding[half_b], seed=seed, resamples=bootstrap))
            put("domain_kid", c.name, kid(ref, out.embedding[half_b], seed=seed))
            hits = (out.scene_probs.argmax(-1) == targets).astype(float)
            est = mean_estimate(hits, seed=seed)
            if labelled < n:
                est.note = f"{n - labelled} of {n} records have no known scene: target = class of the real image"
            put("classification_score", c.name, est)
            for metric, value in faithfulness(nets.domain, out, _requested(c, records), side, seed).items():
                put(metric, c.name, value)
            for cond in conditions:
                idx = np.asarray([i for i, t in enumerate(targets) if nets.domain.scene_classes[t] == cond])
                entry = per_condition.setdefault(cond, {"num_records": int(len(idx)), "classification_score": {}})
                entry["classification_score"][c.name] = float(hits[idx].mean())
            all_hits[c.name] = hits
        floor = next((c.name for c in candidates if c.role == "floor"), None)
        for c in candidates:
            put("classification_score_class_mean", c.name, class_mean_estimate(all_hits[c.name], targets, seed=seed))
            if floor is None:
                put("classification_ratio_to_real", c.name, Estimate.missing("no real-vs-real row"))
            elif c.name == floor:
                put("classification_ratio_to_real", c.name,
                    Estimate(1.0, n, method="the reference", note="the real images themselves"))
            else:
                put("classification_ratio_to_real", c.name,
                    class_mean_estimate(all_hits[c.name], targets, seed=seed, reference=all_hits[floor]))
        per_condition["_targets"] = [nets.domain.scene_classes[t] for t in targets]
        per_condition["_floor"] = floor
    # Inception: FID, KID (+ IS for generation).
    if nets.inception is not None:
        real_inc = inception_outputs(nets.inception, real, desc="inception features (real)")
        for c in candidates:
            out_i = real_inc if c.role == "floor" else inception_outputs(nets.inception, c.images)
            put("fid", c.name, fid(real_inc.features[half_a], out_i.features[half_b], seed=seed, resamples=bootstrap))
            put("kid", c.name, kid(real_inc.features[half_a], out_i.features[half_b], seed=seed))
            if task == "generate":
                put("is", c.name, inception_score(out_i.logits, seed=seed) if out_i.logits is not None
                    else Estimate.missing("the Inception network gives no class logits"))
    else:
        reason = nets.status.get("inception", {}).get("reason", "no Inception network")
        for metric in ("fid", "kid") + (("is",) if task == "generate" else ()):
            for c in candidates:
                put(metric, c.name, Estimate.missing(reason))
    if task == "generate":
        for c in candidates:
            if nets.clip is None:
                put("clip_score", c.name, Estimate.missing(nets.status.get("clip", {}).get("reason", "no CLIP model")))
            else:
                captions = [r.caption for r in _requested(c, records)]
                put("clip_score", c.name, mean_estimate(clip_score_per_image(*nets.clip, c.images, captions), seed=seed))
    # Pairwise metrics against the reference image of the same record.
    if task in PAIRED_TASKS:
        other = real.roll(n // 2, dims=0)  # the floor row compares each real image with another one
        for c in candidates:
            pred = other if c.role == "floor" else c.images
            put("psnr", c.name, summarize_psnr(psnr_per_image(pred, real), seed=seed))
            put("ssim", c.name, mean_estimate(ssim_per_image(pred, real), seed=seed))
            for metric, net in (("lpips", nets.lpips), ("domain_lpips", nets.domain_lpips)):
                if net is None:
                    reason = nets.status.get("lpips" if metric == "lpips" else "domain_encoder", {}).get("reason", "not available")
                    put(metric, c.name, Estimate.missing(reason))
                else:
                    values = np.concatenate([net(pred[i:i + 64], real[i:i + 64]).numpy() for i in range(0, n, 64)])
                    put(metric, c.name, mean_estimate(values, seed=seed))
    return tables, per_condition


def classification_summary(tables: dict[str, dict[str, Estimate]], per_condition: dict[str, Any]) -> dict[str, Any] | None:
    """The class-averaged classification score per row and its ratio to the real images' (for model cards:
    "X % of the real images' rate, averaged over classes"); ``None`` without the domain encoder."""
    means = tables.get("classification_score_class_mean")
    if not means:
        return None
    ratios = tables.get("classification_ratio_to_real", {})
    floor = per_condition.get("_floor")
    classes = [k for k in per_condition if not k.startswith("_")]
    return {
        "num_classes": len(classes),
        "reference_row": floor,
        "real_class_mean": means[floor].value if floor in means else None,
        "rows": {row: {"class_mean": est.value, "ratio_to_real": ratios[row].value if row in ratios else None,
                       "ratio_low": ratios[row].low if row in ratios else None,
                       "ratio_high": ratios[row].high if row in ratios else None}
                 for row, est in means.items()},
    }


# --- step 7 + the whole run ------------------------------------------------------------------------------
def evaluate(config: EvaluationConfig) -> dict[str, Any]:
    """Run one evaluation and write the report; returns the report as a dict."""
    from .. import __version__
    from .report import versus_baselines, write_report

    # 1. inputs
    config.validate()
    out = Path(config.out)  # created by the first file written, so a failed check leaves nothing behind

    # 2. real records
    records = select_records(load_records(config.data), config.num_samples, config.seed)
    if len(records) < 2:
        raise ValueError(f"evaluation data {str(config.data)!r}: need at least 2 records, found {len(records)}")

    # 3. generated images of each model
    from ..loading import DEFAULT_ALIAS

    sources = [("model", config.generated or config.model or DEFAULT_ALIAS)]  # no --model: the embedded model
    if config.compare is not None:
        sources.append(("compare", config.compare))
    folders: list[tuple[str, Path, str]] = []
    for role_name, source in sources:
        assert source is not None
        if is_model_folder(source) or (role_name == "model" and config.generated is None):
            options = {"seed": config.seed, "steps": config.steps, "guidance_scale": config.guidance_scale,
                       "scheduler": config.scheduler, "device": config.device, "overwrite": config.overwrite}
            target = out / f"generated-{role_name}"
            if config.task in PAIRED_TASKS:
                folder = generate_conditional_for_records(str(source), config.task, records, target, **options)
            else:
                folder = generate_for_records(str(source), records, target, size=config.size,
                                              metadata_guidance_scale=config.metadata_guidance_scale,
                                              anchored_guidance=config.anchored_guidance, **options)
            folders.append((role_name, folder, str(source)))
        else:
            folders.append((role_name, Path(source), str(source)))

    size: tuple[int, int] | None = None
    model_rows: list[tuple[str, list[EvalRecord], torch.Tensor, list[EvalRecord], str]] = []
    for role_name, folder, label in folders:
        if size is None:
            first = load_records(folder)[0]
            size = image_size(first)
        kept, images, requested = load_generated(folder, records, size, config.task, role_name)  # type: ignore[arg-type]
        model_rows.append((role_name, kept, images, requested, label))
    # Every row is evaluated on the records all models have.
    common = set.intersection(*({r.key for r in kept} for _, kept, _, _, _ in model_rows))
    records = [r for r in records if r.key in common]
    if len(records) < 2:
        raise ValueError("fewer than 2 real records have generated images; nothing to compare")
    assert size is not None
    real = load_stack(records, size)
    candidates: list[Candidate] = []
    for role_name, kept, images, requested, label in model_rows:
        index = [i for i, r in enumerate(kept) if r.key in common]
        candidates.append(Candidate(role_name, "model", images[index], f"{role_name}: {label}", source=label,
                                    requested=[requested[i] for i in index]))

    # 4. baselines
    candidates += build_baselines(config.task, records, real, config.seed)

    # 5-6. networks and metrics (real rows ask for the real metadata at the compared size)
    nets = load_networks(config)
    sized = [at_size(r, size) for r in records]
    tables, per_condition = compute_metrics(config.task, sized, real, candidates, nets, config.seed, config.bootstrap)

    report = {
        "task": config.task,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "diffusionsat_version": __version__,
        "data": str(config.data),
        "num_records": len(records),
        "image_size": list(size),
        "seed": config.seed,
        "generation": {"steps": config.steps, "guidance_scale": config.guidance_scale,
                       "metadata_guidance_scale": config.metadata_guidance_scale,
                       **({"anchored_guidance": config.anchored_guidance} if config.task == "generate" else {}),
                       "scheduler": config.scheduler} if config.generated is None else None,
        "rows": [{"name": c.name, "role": c.role, "description": c.description, "source": c.source} for c in candidates],
        "networks": nets.status,
        "metrics": {
            name: {"better": METRIC_INFO[name][0], "description": METRIC_INFO[name][1],
                   "rows": {row: est.to_dict() for row, est in rows.items()}}
            for name, rows in tables.items()
        },
        "per_condition": {k: v for k, v in per_condition.items() if not k.startswith("_")},
        "classification_summary": classification_summary(tables, per_condition),
        "seasons": list(SEASONS),
    }
    report["versus_baselines"] = versus_baselines(report)
    # 7. files
    targets = per_condition.get("_targets") or [r.scene or "all" for r in records]
    report["grids"] = write_report(report, out, records, real, candidates, targets, overwrite=config.overwrite)
    return report
