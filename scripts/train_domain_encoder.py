#!/usr/bin/env python
"""Train the domain encoder shipped in ``diffusionsat/assets/domain-encoder`` on CPU (the shipped run,
2000 steps, took ~21 minutes on one heavily shared thread).

Data (26 scene classes, read through the data layer by ``diffusionsat.evaluation.chips``):

- five geo classes, every raster listed in ``chips.SOURCES`` (../shared/data: NAIP, Landsat river
  time series, SpaceNet, Sentinel-2 Slovenia, Landsat 8 scenes): random square crops (32–192 native
  px, log-uniform) resized to 64 px, so each source is seen at several GSDs; training chips from
  the left three quarters of every raster, held-out chips from the right-most quarter only;
- the 21 UC Merced classes (``ucm-<class>``): training chips only from the ``UCMerced(split="train",
  seed=0)`` images (the diffusion model's training split), held-out chips only from the 16
  ``split="heldout"`` images per class; random square crops of 128–256 native px and (40 %) whole
  images, resized to 64 px (GSD = 0.3048 · crop / 64). The held-out UC Merced images are also
  measured once each as whole images at 64 px: the view of a generated UC Merced image.

Heads: scene class (cross-entropy, classes balanced), log2 GSD (smooth L1), season (cross-entropy,
only chips with a known month).

    .venv/bin/python scripts/train_domain_encoder.py --data ../shared/data \
        --out src/diffusionsat/assets/domain-encoder
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from diffusionsat.evaluation.chips import (
    GEO_CROP_RANGE,
    GEO_SCENE_CLASSES,
    SCENE_CLASSES,
    SOURCES,
    UCM_CROP_RANGE,
    UCM_SCENE_CLASSES,
    UCM_SEED,
    UCM_WHOLE_FRACTION,
    Chip,
    load_sources,
    load_ucmerced,
    sample_chips,
    whole_image_chip,
)
from diffusionsat.evaluation.domain_encoder import IGNORE, SEASONS, WITHIN_LOG2, DomainEncoder, season_of
from diffusionsat.fileio import atomic_dir, atomic_write_text

logger = logging.getLogger("train_domain_encoder")


def chips_to_tensors(chips: list[Chip]) -> dict[str, torch.Tensor]:
    images = torch.from_numpy(np.stack([c.image for c in chips])).permute(0, 3, 1, 2).contiguous()  # uint8
    scene = torch.tensor([SCENE_CLASSES.index(c.scene) for c in chips])
    gsd = torch.tensor([c.metadata.gsd for c in chips], dtype=torch.float32)
    season = torch.tensor([
        IGNORE if (s := season_of(c.metadata.month, c.metadata.lat)) is None else s for c in chips
    ])
    return {"images": images, "scene": scene, "log2_gsd": torch.log2(gsd), "season": season}


def draw(rasters, per_class: int, region: str, rng: np.random.Generator) -> list[Chip]:
    """``per_class`` chips per scene class, split evenly over that class's rasters."""
    by_class = defaultdict(list)
    for raster in rasters:
        by_class[raster.source.scene].append(raster)
    chips: list[Chip] = []
    for scene in SCENE_CLASSES:
        group = by_class[scene]
        if not group:
            raise ValueError(f"no image of scene class {scene!r} to draw {region} chips from")
        for i, raster in enumerate(group):
            count = per_class // len(group) + (1 if i < per_class % len(group) else 0)
            chips += sample_chips(raster, count, rng, region=region)
    return chips


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flips and 90° rotations: they change neither scene, GSD nor season."""
    if torch.rand((), generator=gen) < 0.5:
        images = images.flip(-1)
    return torch.rot90(images, int(torch.randint(0, 4, (), generator=gen)), dims=(-2, -1))


@torch.no_grad()
def evaluate(model: DomainEncoder, data: dict[str, torch.Tensor], sources: list[str]) -> dict:
    model.eval()
    outs = [model(data["images"][i:i + 256].float() / 255.0) for i in range(0, len(data["images"]), 256)]
    scene_pred = torch.cat([o["scene_logits"] for o in outs]).argmax(-1)
    log2_gsd = torch.cat([o["log2_gsd"] for o in outs])
    season_pred = torch.cat([o["season_logits"] for o in outs]).argmax(-1)
    correct = scene_pred == data["scene"]
    err = (log2_gsd - data["log2_gsd"]).abs()
    known = data["season"] != IGNORE
    per_class = {c: float(correct[data["scene"] == i].float().mean())
                 for i, c in enumerate(SCENE_CLASSES) if (data["scene"] == i).any()}
    confusion = torch.zeros(len(SCENE_CLASSES), len(SCENE_CLASSES), dtype=torch.long)
    for t, p in zip(data["scene"].tolist(), scene_pred.tolist()):
        confusion[t, p] += 1
    season_by_source = defaultdict(list)
    for ok, src, k in zip((season_pred == data["season"]).tolist(), sources, known.tolist()):
        if k:
            season_by_source[src].append(ok)
    model.train()
    return {
        "num_chips": len(data["scene"]),
        "scene_accuracy": float(correct.float().mean()),
        "scene_accuracy_class_mean": float(np.mean(list(per_class.values()))),
        "scene_accuracy_per_class": per_class,
        "scene_confusion": {"classes": list(SCENE_CLASSES), "rows_true_cols_pred": confusion.tolist()},
        "gsd_median_abs_log2_error": float(err.median()),
        "gsd_within_1.5x": float((err < WITHIN_LOG2).float().mean()),
        "season_num_chips": int(known.sum()),
        "season_accuracy": float((season_pred == data["season"])[known].float().mean()) if known.any() else None,
        # Always answering the most frequent season would score this:
        "season_majority_baseline": float(data["season"][known].bincount().max() / known.sum()) if known.any() else None,
        "season_accuracy_per_source": {s: float(np.mean(v)) for s, v in sorted(season_by_source.items())},
    }


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def write_card(folder: Path, record: dict) -> None:
    held, whole = record["heldout"], record["heldout_ucm_whole"]
    groups = held["scene_accuracy_class_mean_by_group"]
    ucm = record["ucmerced"]
    n_train_ucm = sum(ucm["train_images"].values())
    n_held_ucm = sum(ucm["heldout_images"].values())
    lines = [
        "# diffusionsat domain encoder",
        "",
        f"A small CNN (64 px RGB in; 128-d embedding; heads for {len(SCENE_CLASSES)} scene classes, log2 GSD and season)",
        "trained by `scripts/train_domain_encoder.py` on real chips of `../shared/data`. Used by `diffusionsat evaluate`",
        "for domain-FID/KID, the classification score (overall, per condition and averaged over classes), metadata",
        "faithfulness and the domain LPIPS distance.",
        "",
        "## Training data",
        "",
        "Five geo classes (one per kind of raster) and the 21 UC Merced land-use classes (`ucm-<class>`), all read",
        "through `diffusionsat.data` (`evaluation/chips.py`).",
        "",
        "| scene class | rasters | native GSD (m) | months known |",
        "|---|---|---|---|",
    ]
    for scene in GEO_SCENE_CLASSES:
        rows = [s for s in record["sources"] if s["scene"] == scene]
        gsds = sorted({round(s["gsd"], 1) for s in rows})
        dated = sum(1 for s in rows if s["month"] is not None)
        lines.append(f"| {scene} | {', '.join(s['file'] for s in rows)} | {', '.join(map(str, gsds))} | {dated} of {len(rows)} |")
    lines.append(f"| ucm-* (21 classes) | ucmerced/<class>/*.jpg: {n_train_ucm} training images "
                 f"({n_train_ucm // len(UCM_SCENE_CLASSES)} per class) | 0.3 | none (no dates) |")
    geo_lo, geo_hi = record["crops"]["geo"]
    ucm_lo, ucm_hi = record["crops"]["ucm"]
    lines += [
        "",
        f"Geo chips: square crops of {geo_lo}–{geo_hi} native pixels (log-uniform), resized to 64 px (GSD scaled",
        "accordingly), ≥ 95 % valid pixels, from the **left three quarters of every raster** only.",
        f"UC Merced chips: square crops of {ucm_lo}–{ucm_hi} native pixels (log-uniform) and, for "
        f"{record['crops']['ucm_whole_fraction']:.0%} of them, the whole",
        "image, resized to 64 px (GSD = 0.3048 · crop / 64; a whole 256 px image: 1.2192 m, the view the diffusion",
        f"model generates), only from the **`UCMerced(split=\"train\", seed={UCM_SEED})` images** — the diffusion",
        f"model's training split; the {n_held_ucm // len(UCM_SCENE_CLASSES)} held-out images per class are never trained on by either model.",
        f"{record['train_chips']} training chips ({record['per_class_train']} per class, classes balanced);",
        "augmentation: flips and 90° rotations.",
        f"Optimiser: AdamW lr {record['lr']}, cosine schedule, batch {record['batch_size']}, {record['steps']} steps,",
        f"seed {record['seed']}, {record['train_seconds']:.0f} s on CPU (plus {record['prepare_seconds']:.0f} s reading and cutting chips).",
        "",
        "## Held-out accuracy",
        "",
        f"Measured on {held['num_chips']} chips ({record['per_class_heldout']} per class): geo chips drawn only from the",
        "**right-most quarter of columns of every raster**, a region never used in training (same rasters, disjoint pixels;",
        "no raster is entirely unseen, so this measures generalisation across space within each scene, not to new sensors);",
        f"UC Merced chips only from the {n_held_ucm} **held-out images** (`split=\"heldout\"`), same crops as in training.",
        "",
        f"- scene accuracy: **{held['scene_accuracy']:.3f}** (chance {1 / len(SCENE_CLASSES):.3f}); averaged over classes:",
        f"  all {_pct(groups['all'])}, geo classes {_pct(groups['geo'])}, UC Merced classes **{_pct(groups['ucm'])}**",
        f"- **whole held-out UC Merced images at 64 px** (each of the {whole['num_chips']} once; the view of a generated",
        f"  image, and of `train_default_model.py --export-heldout --ucmerced`): **{whole['scene_accuracy']:.3f}**",
        f"  (averaged over classes {whole['scene_accuracy_class_mean']:.3f})",
        "",
        "| scene class | held-out chips | whole held-out images (64 px) |",
        "|---|---|---|",
    ]
    for c in SCENE_CLASSES:
        lines.append(f"| {c} | {_pct(held['scene_accuracy_per_class'].get(c))} | "
                     f"{_pct(whole['scene_accuracy_per_class'].get(c))} |")
    lines += [
        "",
        f"- GSD: median |log2 error| **{held['gsd_median_abs_log2_error']:.3f}** "
        f"(factor {2 ** held['gsd_median_abs_log2_error']:.2f}); within a factor 1.5: **{held['gsd_within_1.5x']:.3f}**;",
        f"  whole UC Merced images: median |log2 error| {whole['gsd_median_abs_log2_error']:.3f}",
        f"- season ({', '.join(SEASONS)}; southern hemisphere flipped), on the {held['season_num_chips']} held-out chips",
        f"  with a known month: **{_pct(held['season_accuracy'])}** (always answering the most frequent season: "
        f"{_pct(held['season_majority_baseline'])})",
    ]
    lines += [f"  - {s}: {v:.3f}" for s, v in held["season_accuracy_per_source"].items()]
    lines += [
        "",
        "Caveats: UC Merced held-out accuracy rests on 16 images per class (one image = 6 points of a class's",
        "whole-image rate). Season labels exist only for NAIP (summer and autumn, North Dakota) and the two Landsat 8",
        "scenes (spring, winter); outside NAIP, season is confounded with the sensor, so treat season faithfulness as a",
        "coarse signal (UC Merced has no dates). Confusion matrices and all numbers: `training.json`.",
        "",
        "Licences of the data: see ../shared/data/README.md (opengeos/data MIT, rasterio BSD-3, solaris Apache-2.0 /",
        "SpaceNet CC BY-SA 4.0, eo-learn MIT / Copernicus, rio-pansharpen MIT; UC Merced: USGS imagery, US public",
        "domain — Yang & Newsam, ACM SIGSPATIAL GIS 2010).",
    ]
    (folder / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def group_means(per_class: dict[str, float]) -> dict[str, float]:
    """Class-averaged accuracy over the geo classes, the UC Merced classes and all classes."""
    geo = [v for c, v in per_class.items() if c in GEO_SCENE_CLASSES]
    ucm = [v for c, v in per_class.items() if c in UCM_SCENE_CLASSES]
    return {"geo": float(np.mean(geo)) if geo else None, "ucm": float(np.mean(ucm)) if ucm else None,
            "all": float(np.mean(list(per_class.values())))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="the shared data folder")
    parser.add_argument("--out", default="src/diffusionsat/assets/domain-encoder", help="output folder (replaced)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--per-class-train", type=int, default=1000)
    parser.add_argument("--per-class-heldout", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--card-only", action="store_true",
                        help="re-measure the saved encoder in --out on the same chips and rewrite its card")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    start_all = time.time()
    rasters = load_sources(args.data)
    ucm_train = load_ucmerced(args.data, "train", seed=UCM_SEED)
    ucm_held = load_ucmerced(args.data, "heldout", seed=UCM_SEED)
    assert not {r.source.paths for r in ucm_train} & {r.source.paths for r in ucm_held}
    logger.info("read %d rasters, %d + %d UC Merced images in %.0f s", len(rasters), len(ucm_train), len(ucm_held),
                time.time() - start_all)
    train_chips = draw(rasters + ucm_train, args.per_class_train, "train", rng)
    held_chips = draw(rasters + ucm_held, args.per_class_heldout, "heldout", rng)
    whole_chips = [whole_image_chip(r) for r in ucm_held]
    logger.info("train chips %s", Counter(c.scene for c in train_chips))
    logger.info("held-out chips %s; %d whole held-out UC Merced images", Counter(c.scene for c in held_chips),
                len(whole_chips))
    train, held, whole = chips_to_tensors(train_chips), chips_to_tensors(held_chips), chips_to_tensors(whole_chips)
    prep_seconds = time.time() - start_all

    def measure(model: DomainEncoder) -> dict:
        out = {
            "train": evaluate(model, train, [c.source for c in train_chips]),
            "heldout": evaluate(model, held, [c.source for c in held_chips]),
            "heldout_ucm_whole": evaluate(model, whole, [c.source for c in whole_chips]),
        }
        out["heldout"]["scene_accuracy_class_mean_by_group"] = group_means(out["heldout"]["scene_accuracy_per_class"])
        return out

    if args.card_only:
        model = DomainEncoder.from_pretrained(args.out)
        record = json.loads((Path(args.out) / "training.json").read_text(encoding="utf-8"))
        record.update(measure(model))
        atomic_write_text(Path(args.out) / "training.json", json.dumps(record, indent=2) + "\n", overwrite=True)
        write_card(Path(args.out), record)
        logger.info("rewrote the card in %s", args.out)
        return

    model = DomainEncoder(scene_classes=SCENE_CLASSES)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for step in (bar := tqdm(range(args.steps), desc="domain encoder", mininterval=30)):
        idx = torch.randint(0, len(train["scene"]), (args.batch_size,), generator=gen)
        images = augment(train["images"][idx].float() / 255.0, gen)
        out = model(images)
        loss_scene = F.cross_entropy(out["scene_logits"], train["scene"][idx])
        loss_gsd = F.smooth_l1_loss(out["log2_gsd"], train["log2_gsd"][idx])
        season = train["season"][idx]
        loss_season = F.cross_entropy(out["season_logits"], season, ignore_index=IGNORE) if (season != IGNORE).any() else 0.0
        loss = loss_scene + loss_gsd + 0.5 * loss_season
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 250 == 0:
            logger.info("step %d loss %.3f (scene %.3f) %.0f s", step, loss.item(), loss_scene.item(), time.time() - start)
    seconds = time.time() - start
    with torch.no_grad():
        model.eval()
        sample = train["images"][torch.randperm(len(train["scene"]), generator=gen)[:1024]].float() / 255.0
        rms = float(model.embed(sample).pow(2).mean().sqrt())
    model.register_to_config(feature_scale=rms)
    logger.info("embedding RMS on training chips: %.4f (stored as feature_scale)", rms)

    record = {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "train_seconds": seconds, "prepare_seconds": prep_seconds, "per_class_train": args.per_class_train,
        "per_class_heldout": args.per_class_heldout, "train_chips": len(train_chips),
        "num_classes": len(SCENE_CLASSES),
        "split": "geo rasters: train columns [0, 0.75 W), held-out columns [0.75 W, W); UC Merced: "
                 f"UCMerced(split='train'/'heldout', seed={UCM_SEED}, heldout_fraction=0.2), whole images",
        "crops": {"geo": list(GEO_CROP_RANGE), "ucm": list(UCM_CROP_RANGE), "ucm_whole_fraction": UCM_WHOLE_FRACTION},
        "sources": [
            {"file": s.paths[0], "scene": s.scene, "gsd": r.metadata.gsd, "month": r.metadata.month}
            for s, r in zip(SOURCES, rasters)
        ],
        "ucmerced": {
            "train_images": dict(sorted(Counter(r.source.scene for r in ucm_train).items())),
            "heldout_images": dict(sorted(Counter(r.source.scene for r in ucm_held).items())),
            "heldout_files": sorted(r.source.paths[0] for r in ucm_held),
        },
        **measure(model),
    }
    logger.info("held-out: %s", json.dumps({k: v for k, v in record["heldout"].items() if "confusion" not in k}))
    logger.info("held-out UCM whole: %s", json.dumps(
        {k: v for k, v in record["heldout_ucm_whole"].items() if "confusion" not in k}))
    with atomic_dir(args.out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        write_card(tmp, record)
    shutil.rmtree(Path(args.out) / "__pycache__", ignore_errors=True)
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
