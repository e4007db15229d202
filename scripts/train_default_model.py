"""Train the embedded default model on the real imagery in ../shared/data (issue: default model).

Every usable RGB(+NIR) raster is cut into 64-px chips at two scales (native GSD and 2× coarser),
with metadata read from the raster (centre lat/lon, GSD, date from the file name) and automatic
captions (country, sensor, scale, season, land cover from NIR where present). Held out, never
trained on: NAIP 2019-09-04, Landsat 2015, Sentinel-2 reference scene 4.

    python scripts/train_default_model.py --out runs/default-model            # fresh or resumed
    python scripts/train_default_model.py --out runs/default-model --export   # checkpoint → model

Stage 2 (the shipped model) fine-tunes stage 1's model with v-prediction on zero-terminal-SNR betas
and trailing timesteps, so sampling starts from pure noise and no seed-dependent colour cast remains:

    python scripts/train_default_model.py --out runs/default-model-v --init runs/default-model/model

Version 2 (issue: default model v2) adds UC Merced's 21 land-use classes (64 per class for
training, 16 held out by a seeded per-class split; 256 px resized to 64 px, so 1.2 m GSD), seen
twice per epoch beside the georeferenced chips, and fine-tunes version 1 (the vocabulary grows by
the class words; every word version 1 knew keeps its id):

    python scripts/train_default_model.py --out runs/default-model-v2 --init default --ucmerced

``--teacher MODEL`` blends MODEL's predictions into the georeferenced chips' targets (UC Merced's
keep the data's), e.g. v1 while UC Merced is learned; measured, it did not keep v1's geo hold-out
(docs/default-model.md).

``--anchor MODEL`` trains location-anchored guidance: guidance's negative branch, for requests with
lon/lat, learns MODEL's unconditional prediction (e.g. v1's, trained on the georeferenced chips
alone) instead of the unconditional over both data sets (docs/training.md).

Runs resume from the latest checkpoint, so several runs of at most two hours each add up.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from diffusionsat.data.geotiff import GeoTiffChips
from diffusionsat.data.transforms import SelectBands
from diffusionsat.data.ucmerced import UCMerced
from diffusionsat.training import TrainConfig, Trainer, load_config
from diffusionsat.training.datasets import WithKeys

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RESOLUTION = 64
UCM_REPEAT = 2  # UC Merced images per epoch = 2 × 1,344: about 45 % of each batch


@dataclass(frozen=True)
class Source:
    """One group of rasters: which bands to read, how to name the sensor, and what is held out."""

    pattern: str
    sensor: str
    bands: str | None = None
    band_names: str | None = None
    rgb: tuple[int, ...] = (0, 1, 2)
    date_pattern: str | None = None
    holdout: tuple[str, ...] = ()
    scales: tuple[int, ...] = (64, 128)
    scene: str | None = None  # the domain encoder's class (evaluation's classification score)


SOURCES = [
    Source("naip-timeseries/*.tif", "NAIP aerial", band_names="red,green,blue,nir", date_pattern="*_{YYYYMMDD}.tif",
           holdout=("m_4709963_se_14_1_20190904.tif",), scene="naip-prairie"),
    Source("landsat-timeseries/*.tif", "Landsat false colour", date_pattern="{YYYY}.tif", holdout=("2015.tif",),
           scene="landsat-river"),
    Source("planetscope-like/rgbn.tif", "PlanetScope-like", band_names="red,green,blue,nir"),
    Source("spacenet-samples/rgb_unmasked.tif", "WorldView", scene="spacenet-urban"),
    Source("sentinel2-slovenia/reference_scene_*.tif", "Sentinel-2", bands="B04,B03,B02,B08",
           holdout=("reference_scene_4.tif",), scales=(64,), scene="sentinel2-farmland"),
    Source("geotiff-samples/RGB.byte.tif", "Landsat 7"),
]


def split_files(source: Source, root: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(root.glob(source.pattern))
    train = [f for f in files if f.name not in source.holdout]
    held = [f for f in files if f.name in source.holdout]
    return train, held


def build(root: Path, held_out: bool = False, ucmerced: bool = False, ucm_repeat: int = UCM_REPEAT) -> Dataset:
    """The training chips (or, with ``held_out``, the evaluation chips) of every source.

    UC Merced's images carry ``distill=False``: a ``--teacher`` trained on the georeferenced chips
    alone (v1) teaches those, not classes it never saw.
    """
    parts = [part for _, part in build_parts(root, held_out)]
    if ucmerced:
        ucm = ucm_split(root, held_out)
        parts += [ucm if held_out else WithKeys(ucm, distill=False)] * (1 if held_out else ucm_repeat)
    return ConcatDataset(parts)


def ucm_split(root: Path, held_out: bool) -> UCMerced:
    """UC Merced at the model's size; the per-class seeded split (seed 0, 20 % held out)."""
    return UCMerced(root / "ucmerced", "heldout" if held_out else "train", size=RESOLUTION, seed=0)


def build_parts(root: Path, held_out: bool = False) -> list[tuple[Source, Dataset]]:
    parts = []
    for source in SOURCES:
        train, held = split_files(source, root)
        files = held if held_out else train
        if not files:
            continue
        for scale in source.scales:
            parts.append((source, GeoTiffChips(
                files, chip_size=scale, stride=scale if scale > 64 else 48, resize_to=RESOLUTION,
                bands=source.bands, band_names=source.band_names, date_pattern=source.date_pattern,
                sensor=source.sensor, max_nodata=0.05, transform=SelectBands(source.rgb), on_error="skip",
            )))
    return [(source, part) for source, part in parts if len(part)]


def record_key(source: Source, count: int) -> str:
    """File stem of the ``count``-th held-out record: the same in every export, so they pair up."""
    return f"{Path(source.pattern).parent.name or 'chip'}-{count:05d}"


def export_heldout(root: Path, out: Path, which: str = "geo") -> int:
    """The held-out chips as PNG + JSON sidecars (caption, metadata, scene): `evaluate --data`.

    ``which``: ``geo`` (the georeferenced hold-out), ``ucmerced`` (the held-out UC Merced images,
    scene ``ucm-<class>``) or ``both``.
    """
    import json

    from PIL import Image

    from diffusionsat.data.transforms import to_uint8

    out.mkdir(parents=True, exist_ok=False)
    count = 0
    for source, part in build_parts(root, held_out=True) if which in ("geo", "both") else []:
        for i in range(len(part)):
            sample = part[i]
            key = record_key(source, count)
            Image.fromarray(to_uint8(sample["pixel_values"])).save(out / f"{key}.png")
            record = {"caption": sample["caption"], "metadata": sample["metadata"].to_dict()}
            if source.scene:
                record["scene"] = source.scene
            (out / f"{key}.json").write_text(json.dumps(record))
            count += 1
    if which in ("ucmerced", "both"):
        ucm = ucm_split(root, held_out=True)
        for i in range(len(ucm)):
            sample = ucm[i]
            key = f"ucmerced-{sample['key'][4:]}"
            Image.fromarray(to_uint8(sample["pixel_values"])).save(out / f"{key}.png")
            record = {"caption": sample["caption"], "metadata": sample["metadata"].to_dict(),
                      "scene": f"ucm-{sample['class_name']}", "class": sample["class_name"]}
            (out / f"{key}.json").write_text(json.dumps(record))
            count += 1
    return count


def export_nearest_training(root: Path, out: Path) -> int:
    """For each held-out chip (same keys as :func:`export_heldout`), the training chip of the same
    source and scale whose centre is nearest: a generator that memorises the training set.

    Scored with ``evaluate --generated``, it shows how close a perfect model of the training data
    could come to the held-out dates and scenes (the reachable floor, above real-vs-real).
    """
    from PIL import Image

    from diffusionsat.data.transforms import to_uint8

    def centre(sample: dict) -> tuple[float, float]:
        md = sample["metadata"]
        return md.lat or 0.0, md.lon or 0.0

    train_parts = {(s.pattern, part.chip_size): part for s, part in build_parts(root)}
    out.mkdir(parents=True, exist_ok=False)
    count = 0
    for source, part in build_parts(root, held_out=True):
        train = train_parts[(source.pattern, part.chip_size)]
        centres = [centre(train[j]) for j in range(len(train))]
        for i in range(len(part)):
            lat, lon = centre(part[i])
            j = min(range(len(centres)), key=lambda k: (centres[k][0] - lat) ** 2 + (centres[k][1] - lon) ** 2)
            key = record_key(source, count)
            Image.fromarray(to_uint8(train[j]["pixel_values"])).save(out / f"{key}.png")
            count += 1
    return count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/default-model")
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--max-steps", type=int, default=30000)
    parser.add_argument("--init", metavar="MODEL", help="fine-tune this model with v-prediction and zero terminal SNR")
    parser.add_argument("--ucmerced", action="store_true", help="add UC Merced's 21 classes (version 2)")
    parser.add_argument("--ucm-repeat", type=int, default=UCM_REPEAT,
                        help=f"UC Merced copies per epoch beside the georeferenced chips (default {UCM_REPEAT})")
    parser.add_argument("--learning-rate", type=float, default=None, help="default 3e-4 (2e-4 with --init)")
    parser.add_argument("--lr-schedule", choices=("constant_with_warmup", "cosine", "linear"),
                        default="constant_with_warmup",
                        help="learning-rate schedule after the 200 warm-up steps; cosine/linear decay to 0 at "
                             "--max-steps (a cool-down stage of a constant-rate model)")
    parser.add_argument("--train-only", action="append", default=[], metavar="PREFIX",
                        help="train only these parameters (name prefix, e.g. unet.metadata_embedding; repeatable)")
    parser.add_argument("--teacher", metavar="MODEL",
                        help="blend this model's predictions into the georeferenced chips' targets (e.g. v1 while "
                             "UC Merced is learned; UC Merced keeps the data's targets)")
    parser.add_argument("--teacher-weight", type=float, default=0.5,
                        help="share of the georeferenced chips' target from --teacher (default 0.5)")
    parser.add_argument("--anchor", metavar="MODEL",
                        help="location-anchored guidance: a share of the georeferenced chips is shown with no caption "
                             "and only lon/lat, and learns this model's unconditional prediction (e.g. v1); "
                             "generation then uses that branch as guidance's negative for requests with lon/lat")
    parser.add_argument("--anchor-share", type=float, default=0.25,
                        help="share of the georeferenced chips turned into anchor samples (default 0.25)")
    parser.add_argument("--metadata-dropout", type=float, default=0.1,
                        help="probability that a sample's metadata is dropped (default 0.1)")
    parser.add_argument("--export", action="store_true", help="write out/model from the latest checkpoint and stop")
    parser.add_argument("--export-heldout", metavar="DIR", help="write the held-out chips for `evaluate` and stop")
    parser.add_argument("--heldout-set", choices=("geo", "ucmerced", "both"), default="geo",
                        help="which held-out records --export-heldout writes (default: geo)")
    parser.add_argument("--export-nearest", metavar="DIR",
                        help="write, per held-out chip, the nearest training chip (`evaluate --generated`) and stop")
    return parser.parse_args(argv)


def training_config(args: argparse.Namespace) -> TrainConfig:
    """The run's config: the small preset, batch 8, EMA, and the schedule and stage the flags name."""
    stage = {"pretrained": args.init, "prediction_type": "v_prediction", "zero_terminal_snr": True} if args.init else {}
    learning_rate = args.learning_rate or (2e-4 if args.init else 3e-4)
    return load_config(overrides={
        **stage, "preset": "small", "output_dir": args.out, "batch_size": 8, "learning_rate": learning_rate,
        "lr_scheduler": args.lr_schedule, "lr_warmup_steps": 200, "max_steps": args.max_steps,
        "ema_decay": 0.999, "caption_dropout": 0.1, "metadata_dropout": args.metadata_dropout, "augment": True,
        "train_only": args.train_only, "teacher_model": args.teacher, "teacher_weight": args.teacher_weight,
        "anchor_model": args.anchor, "anchor_share": args.anchor_share,
        "checkpoint_every": 200, "keep_checkpoints": 2, "validate_every": 1000, "validation_steps": 25,
        "validation_prompts": ["a satellite image in United States of America at 5 m resolution",
                               "a satellite image in Peru at 89 m resolution",
                               *(["a satellite image of a harbor in United States of America at 1.2 m resolution",
                                  "a satellite image of dense residential in United States of America at 1.2 m resolution"]
                                 if args.ucmerced else [])],
        "validation_metadata": [{"lat": 47.0, "lon": -99.2, "gsd": 5, "date": "2016-07-15"},
                                {"lat": 47.0, "lon": -99.2, "gsd": 5, "date": "2016-01-15"},
                                {"lat": -8.4, "lon": -74.4, "gsd": 89, "date": "2000"}],
        "report_to": "tensorboard", "seed": 0,
    })


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.export_heldout:
        logging.info("%d held-out chips written", export_heldout(Path(args.data), Path(args.export_heldout), args.heldout_set))
        return
    if args.export_nearest:
        logging.info("%d nearest training chips written", export_nearest_training(Path(args.data), Path(args.export_nearest)))
        return

    dataset = build(Path(args.data), ucmerced=args.ucmerced, ucm_repeat=args.ucm_repeat)
    cfg = training_config(args)
    logging.info("%d training chips", len(dataset))
    trainer = Trainer(cfg, dataset)
    if args.export:
        from diffusionsat.training.trainer import list_checkpoints

        latest = list_checkpoints(args.out)
        if not latest:
            raise SystemExit(f"no checkpoint in {args.out}")
        cfg.max_steps = int(latest[-1].name.split("-")[1])
    final = trainer.train(resume="latest")
    logging.info("model in %s (step %d)", final, trainer.state.global_step)


if __name__ == "__main__":
    main()
