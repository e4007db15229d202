"""Real satellite chips for the domain encoder and held-out evaluation sets, read through the data layer.

Pixels come only from :mod:`diffusionsat.data`: GeoTIFFs through :func:`~diffusionsat.data.geotiff.open_raster`
and :func:`~diffusionsat.data.geotiff.read_chip` (the scene's ``pixel_range``: 8-bit as is, Sentinel-2 on
its fixed reflectance scale, anything else 2nd–98th percentile of the scene; nodata masked), UC Merced
through :class:`~diffusionsat.data.ucmerced.UCMerced`, and every resize through
:func:`~diffusionsat.data.transforms.resample`. This module only decides *which* chips to cut (scene
class, window, held-out rule) and writes evaluation folders.

Scene classes: five geo classes (one per kind of raster of ``../shared/data``) and the 21 UC Merced
land-use classes as ``ucm-<class>`` (e.g. ``ucm-harbor``).

Held-out rules (used by the domain encoder and by :func:`export_eval_set`):

- geo rasters: the **right-most quarter of columns** of every raster is never used for training;
  chips of the ``"heldout"`` region come only from it, chips of the ``"train"`` region only from
  the other three quarters;
- UC Merced: whole images, by the data layer's seeded per-class split (``UCMerced(split=...,
  seed=0)``, the split the diffusion model trains on): training chips only from ``split="train"``
  images, held-out chips only from the 16 ``split="heldout"`` images per class.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from ..data.geotiff import BandStack, open_raster, read_chip
from ..data.transforms import resample
from ..data.ucmerced import CLASS_WORDS as UCM_CLASS_WORDS
from ..data.ucmerced import UCM_GSD, UCMerced, ucm_caption
from ..metadata import SatMetadata

logger = logging.getLogger(__name__)

#: Fraction of columns (from the left) used for training; the rest is held out (geo rasters).
TRAIN_FRACTION = 0.75
#: Chips smaller than this many native pixels are not drawn (too little context).
MIN_CROP = 24
#: Crop sides (native px) of geo raster chips, log-uniform.
GEO_CROP_RANGE = (32, 192)
#: UC Merced chips: crop sides (native px, log-uniform) and the share of whole-image views (the view
#: the diffusion model generates: a whole 256 px image at 64 px, GSD 1.2192 m).
UCM_CROP_RANGE = (128, 256)
UCM_WHOLE_FRACTION = 0.4
#: The folder of UC Merced under the shared data root, and the split seed (the diffusion model's).
UCM_FOLDER = "ucmerced"
UCM_SEED = 0
UCM_PREFIX = "ucm-"


@dataclass(frozen=True)
class ChipSource:
    """One raster (or a stack of single-band rasters, or one UC Merced image) of a known scene kind.

    ``bands`` are 1-based band indices per path (a single path with three equal indices = a grey
    band shown as RGB); ``nodata`` declares the nodata value of files that lack one (e.g. the
    zero-filled borders of SpaceNet scenes).
    """

    scene: str
    paths: tuple[str, ...]
    bands: tuple[int, ...]
    date: str | None = None
    nodata: float | None = None

    @property
    def name(self) -> str:
        return Path(self.paths[0]).stem


def _naip(stem: str) -> ChipSource:
    date = re.search(r"(\d{8})$", stem).group(1)  # type: ignore[union-attr]
    return ChipSource("naip-prairie", (f"naip-timeseries/{stem}.tif",), (1, 2, 3),
                      f"{date[:4]}-{date[4:6]}-{date[6:]}")


def _landsat8(scene_id: str) -> ChipSource:
    year, doy = int(scene_id[9:13]), int(scene_id[13:16])
    date = (_dt.date(year, 1, 1) + _dt.timedelta(days=doy - 1)).isoformat()
    return ChipSource("landsat8-rgb", tuple(f"landsat8-bands/{scene_id}_B{b}.tif" for b in (4, 3, 2)), (1, 1, 1), date)


#: Geo scene classes (one per kind of raster), with a caption phrase for each.
GEO_SCENE_CAPTIONS: dict[str, str] = {
    "naip-prairie": "farmland and prairie potholes in united states",
    "landsat-river": "a meandering river and forest in peru",
    "spacenet-urban": "buildings and roads of a city",
    "sentinel2-farmland": "fields and villages in slovenia",
    "landsat8-rgb": "a large landscape with mountains and coast",
}
GEO_SCENE_CLASSES: tuple[str, ...] = tuple(GEO_SCENE_CAPTIONS)
#: The 21 UC Merced classes as scene classes ``ucm-<class>``.
UCM_SCENE_CLASSES: tuple[str, ...] = tuple(f"{UCM_PREFIX}{c}" for c in UCM_CLASS_WORDS)
#: Every scene class of the domain encoder, with a caption phrase for each.
SCENE_CAPTIONS: dict[str, str] = {
    **GEO_SCENE_CAPTIONS,
    **{f"{UCM_PREFIX}{c}": words for c, words in UCM_CLASS_WORDS.items()},
}
SCENE_CLASSES: tuple[str, ...] = tuple(SCENE_CAPTIONS)


def is_ucm_scene(scene: str) -> bool:
    return scene.startswith(UCM_PREFIX)


def ucm_class(scene: str) -> str:
    """``"ucm-harbor"`` → ``"harbor"`` (the UC Merced folder name)."""
    if not is_ucm_scene(scene) or scene[len(UCM_PREFIX):] not in UCM_CLASS_WORDS:
        raise ValueError(f"scene {scene!r} is not a UC Merced class (ucm-<class>)")
    return scene[len(UCM_PREFIX):]


#: Every geo raster of ``../shared/data`` the domain encoder learns from, by scene class.
SOURCES: tuple[ChipSource, ...] = (
    *(_naip(f"m_4709963_se_14_1_{d}") for d in (
        "20090818", "20100629", "20120731", "20140720", "20150926", "20160816", "20170827", "20180716", "20190904")),
    *(ChipSource("landsat-river", (f"landsat-timeseries/{y}.tif",), (1, 2, 3), str(y))
      for y in (1985, 1990, 1995, 2000, 2005, 2010, 2015)),
    ChipSource("spacenet-urban", ("spacenet-samples/sample_geotiff.tif",), (1, 1, 1), nodata=0.0),
    ChipSource("spacenet-urban", ("spacenet-samples/pan1.tif",), (1, 1, 1), nodata=0.0),
    ChipSource("spacenet-urban", ("spacenet-samples/ms1.tif",), (3, 2, 1), nodata=0.0),
    ChipSource("spacenet-urban", ("spacenet-samples/rgb_unmasked.tif",), (1, 2, 3)),
    *(ChipSource("sentinel2-farmland", (f"sentinel2-slovenia/reference_scene_{i}.tif",), (4, 3, 2)) for i in range(5)),
    _landsat8("LC81070352015122LGN00"),
    _landsat8("LC81210442015044LGN00"),
    ChipSource("landsat8-rgb", ("geotiff-samples/RGB.byte.tif",), (1, 2, 3)),
)


@dataclass
class RasterImage:
    """An RGB image in [0, 1] (3, H, W) with its valid-pixel mask and metadata (GSD of one pixel).

    ``split`` is ``None`` for a geo raster (train/held-out are column regions inside it) and
    ``"train"``/``"heldout"`` for a UC Merced image (the whole image belongs to that split).
    """

    source: ChipSource
    rgb: np.ndarray
    valid: np.ndarray
    metadata: SatMetadata
    split: str | None = None


def read_source(root: str | os.PathLike, source: ChipSource) -> RasterImage:
    """Read a whole geo source raster through the data layer as RGB [0, 1] with nodata masked."""
    root = Path(root)
    missing = [p for p in source.paths if not (root / p).is_file()]
    if missing:
        raise FileNotFoundError(f"raster {str(root / missing[0])!r} not found (scene {source.scene!r})")
    if len(source.paths) > 1:  # one single-band file per colour: a band stack (Landsat 8 B4, B3, B2)
        files = tuple(root / p for p in source.paths)
        target: Path | BandStack = BandStack(name=files[0].parent / source.name.rsplit("_B", 1)[0], files=files,
                                             bands=tuple(Path(p).stem.rsplit("_", 1)[-1] for p in source.paths))
        bands = None
    else:
        target, bands = root / source.paths[0], list(source.bands)
    info = open_raster(target, bands=bands, nodata=source.nodata)
    chip = read_chip(info, (0, 0, info.width, info.height), key=source.name)
    # [-1, 1] with the scene's pixel range (nodata → -1) → [0, 1]
    from ..data.transforms import to_model_range

    rgb = ((to_model_range(chip.image, chip.pixel_range, chip.valid).numpy() + 1.0) / 2.0).astype(np.float32)
    if rgb.shape[0] != 3:
        raise ValueError(f"source {source.name}: expected 3 bands, read {rgb.shape[0]}")
    md = {k: v for k, v in chip.metadata.to_dict().items() if k in ("lon", "lat", "gsd")}
    if chip.metadata.gsd is None:  # GSD out of the model's range: keep the native one for chips
        raise ValueError(f"source {source.name}: no usable GSD")
    if source.date:
        md["date"] = source.date
    return RasterImage(source, rgb, chip.valid.astype(bool), SatMetadata.from_dict(md))


def load_sources(root: str | os.PathLike, sources: Sequence[ChipSource] = SOURCES) -> list[RasterImage]:
    """Read every geo source raster under ``root`` (``../shared/data``)."""
    return [read_source(root, s) for s in sources]


def load_ucmerced(
    root: str | os.PathLike, split: str, classes: Sequence[str] | None = None, seed: int = UCM_SEED
) -> list[RasterImage]:
    """The UC Merced images of ``split`` (``"train"`` or ``"heldout"``, the data layer's seeded split)
    under ``root/ucmerced``, native size, each as a :class:`RasterImage` of scene ``ucm-<class>``."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split={split!r}: choose train or heldout (chips never mix the two)")
    dataset = UCMerced(Path(root) / UCM_FOLDER, split, seed=seed, classes=tuple(classes) if classes else None)
    images = []
    for i, (path, _) in enumerate(dataset.records):
        sample = dataset[i]
        rgb = ((sample["pixel_values"].numpy() + 1.0) / 2.0).astype(np.float32)
        rel = f"{UCM_FOLDER}/{path.parent.name}/{path.name}"
        source = ChipSource(f"{UCM_PREFIX}{sample['class_name']}", (rel,), (1, 2, 3))
        images.append(RasterImage(source, rgb, np.ones(rgb.shape[1:], bool), sample["metadata"], split=split))
    return images


@dataclass
class Chip:
    """One chip: ``image`` (size, size, 3) uint8 and its metadata (GSD of the resized chip)."""

    image: np.ndarray
    metadata: SatMetadata
    scene: str
    source: str
    window: tuple[int, int, int]  # row, col, native crop size (a whole image: 0, 0, its side)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0).transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)


def whole_image_chip(raster: RasterImage, size: int = 64) -> Chip:
    """The whole image resized to ``size``×``size`` px (GSD scaled by its width, as
    ``UCMerced(size=...)`` does): the view of a generated whole image."""
    _, _, width = raster.rgb.shape
    image = _to_uint8(resample(raster.rgb, size))
    return Chip(image, raster.metadata.resized(width, size), raster.source.scene, raster.source.name, (0, 0, width))


def sample_chips(
    raster: RasterImage,
    count: int,
    rng: np.random.Generator,
    *,
    region: str = "train",
    size: int = 64,
    crop_range: tuple[int, int] | None = None,
    min_valid: float = 0.95,
    whole_fraction: float | None = None,
) -> list[Chip]:
    """Random square crops of ``raster`` inside ``region``, each resized to ``size`` px.

    The crop side is drawn log-uniformly in ``crop_range`` (clipped to the region), so one source
    yields several GSDs: GSD of the chip = native GSD · crop / size. With probability
    ``whole_fraction`` a chip is the whole image instead (:func:`whole_image_chip`).

    Geo rasters: ``region`` selects columns (train = left three quarters, heldout = the rest, all);
    defaults ``crop_range=GEO_CROP_RANGE``, no whole images. UC Merced images belong to one split as
    a whole: ``region`` must be that split (or ``"all"``); defaults ``UCM_CROP_RANGE`` and
    ``UCM_WHOLE_FRACTION``.
    """
    if region not in ("train", "heldout", "all"):
        raise ValueError(f"region={region!r}: choose train, heldout or all")
    _, height, width = raster.rgb.shape
    if raster.split is not None:
        if region not in ("all", raster.split):
            raise ValueError(f"{raster.source.name} is a {raster.split!r} image: no {region!r} chips come from it")
        col0, col1 = 0, width
        crop_range = crop_range or UCM_CROP_RANGE
        whole_fraction = UCM_WHOLE_FRACTION if whole_fraction is None else whole_fraction
    else:
        split = int(round(width * TRAIN_FRACTION))
        col0, col1 = {"train": (0, split), "heldout": (split, width), "all": (0, width)}[region]
        crop_range = crop_range or GEO_CROP_RANGE
        whole_fraction = whole_fraction or 0.0
    max_crop = min(crop_range[1], col1 - col0, height)
    min_crop = min(max(crop_range[0], MIN_CROP), max_crop)
    chips: list[Chip] = []
    attempts = 0
    while len(chips) < count and attempts < count * 30:
        attempts += 1
        if whole_fraction > 0 and rng.uniform() < whole_fraction and col1 - col0 == width:
            chips.append(whole_image_chip(raster, size))
            continue
        crop = int(round(math.exp(rng.uniform(math.log(min_crop), math.log(max_crop + 1e-9)))))
        crop = max(min_crop, min(crop, max_crop))
        row = int(rng.integers(0, height - crop + 1))
        col = int(rng.integers(col0, col1 - crop + 1))
        if raster.valid[row:row + crop, col:col + crop].mean() < min_valid:
            continue
        image = _to_uint8(resample(raster.rgb[:, row:row + crop, col:col + crop], size))
        md = raster.metadata.resized(crop, size)
        chips.append(Chip(image, md, raster.source.scene, raster.source.name, (row, col, crop)))
    if len(chips) < count:
        logger.warning("source %s: only %d of %d chips have enough valid pixels", raster.source.name, len(chips), count)
    return chips


def caption_for(scene: str, gsd: float | None = None) -> str:
    """The caption of a chip of ``scene``; UC Merced classes get the data layer's caption (with GSD)."""
    if is_ucm_scene(scene):
        return ucm_caption(ucm_class(scene), gsd)
    return f"a satellite image of {SCENE_CAPTIONS[scene]}"


def _write_record(out: Path, key: str, chip: Chip, source: str) -> Path:
    PIL.Image.fromarray(chip.image).save(out / f"{key}.png")
    sidecar = {
        "caption": caption_for(chip.scene, chip.metadata.gsd),
        "metadata": chip.metadata.to_dict(),
        "scene": chip.scene,
        "source": source,
        "window": {"row": chip.window[0], "col": chip.window[1], "size": chip.window[2]},
    }
    (out / f"{key}.json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return out / f"{key}.png"


def export_eval_set(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    per_source: int = 4,
    size: int = 64,
    region: str = "heldout",
    seed: int = 0,
    scenes: Sequence[str] | None = None,
) -> list[Path]:
    """Write held-out real chips as ``{key}.png`` + ``{key}.json`` (the evaluation folder format).

    Geo scenes: ``per_source`` random chips per raster of ``region``. UC Merced scenes: every image of
    the ``region`` split (``heldout`` by default: 16 per class) once, whole, at ``size`` px (the view
    the diffusion model generates), keyed ``ucmerced-<stem>`` like the default-model script's
    export. Each sidecar has ``caption``, ``metadata`` (lat/lon/gsd/date), ``scene`` and ``source``.
    """
    if scenes is not None:
        unknown = [s for s in scenes if s not in SCENE_CAPTIONS]
        if unknown:
            raise ValueError(f"scene {unknown[0]!r} unknown; choose from {', '.join(SCENE_CLASSES)}")
    wanted = tuple(SCENE_CLASSES if scenes is None else scenes)
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source in SOURCES:
        if source.scene not in wanted:
            continue
        raster = read_source(root, source)
        for i, chip in enumerate(sample_chips(raster, per_source, rng, region=region, size=size)):
            written.append(_write_record(out, f"{source.name}_{i:03d}", chip, source.paths[0]))
    ucm = [ucm_class(s) for s in wanted if is_ucm_scene(s)]
    if ucm:
        if region not in ("train", "heldout"):
            raise ValueError(f"region={region!r}: UC Merced images come from the train or heldout split")
        for raster in load_ucmerced(root, region, classes=ucm):
            chip = whole_image_chip(raster, size)
            written.append(_write_record(out, f"ucmerced-{raster.source.name}", chip, raster.source.paths[0]))
    return written


__all__ = [
    "GEO_CROP_RANGE", "GEO_SCENE_CLASSES", "MIN_CROP", "SCENE_CAPTIONS", "SCENE_CLASSES", "SOURCES", "TRAIN_FRACTION",
    "UCM_CROP_RANGE", "UCM_FOLDER", "UCM_GSD", "UCM_SCENE_CLASSES", "UCM_SEED", "UCM_WHOLE_FRACTION", "Chip",
    "ChipSource", "RasterImage", "caption_for", "export_eval_set", "is_ucm_scene", "load_sources", "load_ucmerced",
    "read_source", "sample_chips", "ucm_class", "whole_image_chip",
]
