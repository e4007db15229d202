"""Held-out evaluation folders for the task models (issue #15): what `diffusionsat evaluate --data` reads.

    python scripts/export_task_heldout.py --task superres --out runs/heldout-superres
    python scripts/export_task_heldout.py --task temporal --out runs/heldout-temporal
    python scripts/export_task_heldout.py --task inpaint  --out runs/heldout-inpaint --per-class 4

Each record is a reference image (PNG, or a GeoTIFF where the source is georeferenced) with a
JSON sidecar (``caption``, ``metadata``, ``scene``, ``source``) and its task inputs, in sub-folders
so they are never read as records (``docs/evaluation.md``):

superres
    ``ucmerced``: the held-out UC Merced split (``UCMerced(split="heldout", seed=0)``, 16 per class),
    native 256 px at 0.3048 m as references, ``condition`` = its 4x block average (64 px, 1.2192 m,
    ``lowres/{key}.png`` with a sidecar giving its GSD); ``--ucm-crop 64`` cuts each image into 16
    tiles of 64 px instead (16 px inputs), the view the task trains on. ``naip``: the held-out date
    ``m_4709963_se_14_1_20190904.tif`` (bands 1,2,3) in 64 px chips at 5 m, ``condition`` = the 4x
    block average (16 px, 20 m, ``lowres/{key}.tif``, georeferenced). As in task training
    (``SuperResPairs``), the metadata of these pairs has no date; the sidecar's ``acquired`` says it.
    ``spacenet``: the real 2x pair ``ms1.tif`` (WorldView multispectral, 1 m) → ``pan1.tif``
    (panchromatic, 0.5 m), gray → gray as trained (``configs/tasks/superres-finetune.yaml``: pan band
    1 as R=G=B, ms1's green band as the input's), 64 px chips from the eastern third of the scene
    (x >= 593470.3 m), which training never reads (``lowres/{key}.tif``, 32 px at 1 m).
temporal
    ``naip`` (``naip-timeseries``) and ``landsat`` (``landsat-timeseries``), bands 1,2,3, 64 px chips
    at the native GSD: the latest date is the target (held out: 2019-09-04, 2015), the three dates
    before it the ``condition`` frames, oldest first (``frames/{key}_{date}.tif``: GeoTIFFs on the
    target's grid, each with an ``ACQUISITION_DATE`` tag and a sidecar carrying its metadata).
inpaint
    ``ucmerced``: the held-out UC Merced split at 64 px (1.2192 m) with seeded random boxes
    (:func:`diffusionsat.data.tasks.random_box_mask` through ``BoxMasked``, ``--seed``);
    ``spacenet``: ``spacenet-samples/sample_geotiff.tif`` (band 1 as gray RGB) in 64 px chips at 0.5 m,
    the mask the rasterised building footprints ``sample_geotiff_buildings.geojson``, chips with at
    least 2 % building pixels. Masks are ``masks/{key}.png``, 1 band, 255 = pixels to fill.

Geo chips with more than 5 % nodata (in the target or any frame) are left out and counted. Pixels,
captions and metadata come from the data layer (``UCMerced``, ``DownsampledPairs``, ``SuperResPairs``,
``TemporalSequences``, ``InpaintSamples``, ``BoxMasked``, ``to_uint8``), as the task training reads
them. ``--per-class N`` keeps the first N records of every scene class (each UC Merced class and
each geo source is one class). The output is deterministic; an existing non-empty ``--out`` is
refused. The folder is written beside ``--out`` and moved into place when complete.

Super-resolution references differ in size between the sources (256 px UC Merced, 64 px NAIP) and
``evaluate`` compares every record at one size: score the sources separately (``--sources ucmerced``,
``--sources naip``), or use ``--ucm-crop 64``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

logger = logging.getLogger("export_task_heldout")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TASK_SOURCES: dict[str, tuple[str, ...]] = {
    "superres": ("ucmerced", "naip", "spacenet"),
    "temporal": ("naip", "landsat"),
    "inpaint": ("ucmerced", "spacenet"),
}
CHIP = 64
SR_FACTOR = 4
UCM_NATIVE = 256
UCM_SEED = 0  # the project's UC Merced split (the diffusion and task models hold out this split)
MAX_NODATA = 0.05
MIN_BUILDINGS = 0.02
NAIP_HELDOUT = "naip-timeseries/m_4709963_se_14_1_20190904.tif"
NAIP_DATE = "2019-09-04"
TEMPORAL = {  # source → (folder, date pattern, scene class)
    "naip": ("naip-timeseries", "*_{YYYYMMDD}.tif", "naip-prairie"),
    "landsat": ("landsat-timeseries", "{YYYY}.tif", "landsat-river"),
}
TEMPORAL_FRAMES = 3
SPACENET = ("spacenet-samples/sample_geotiff.tif", "spacenet-samples/sample_geotiff_buildings.geojson")
SPACENET_PAIR = ("spacenet-samples/pan1.tif", "spacenet-samples/ms1.tif")
# the held-out eastern third of the pair (UTM 31N); training reads x < 593470.3 m only
SPACENET_PAIR_HELDOUT_ROI = (593470.3, 5747357.0, 593571.0, 5747658.0)
GEO_SCENES = {"naip": "naip-prairie", "landsat": "landsat-river", "spacenet": "spacenet-urban"}


class ExportError(Exception):
    """A problem the user can fix (paths, options); reported as one line, exit status 2."""


# --- writing ------------------------------------------------------------------------------------------
class Folder:
    """The evaluation folder being written: images, sidecars and per-source counts."""

    def __init__(self, root: Path):
        self.root = root
        self.counts: Counter[str] = Counter()  # records per source
        self.skipped: dict[str, Counter[str]] = {}  # per source: chips left out, per reason

    def skip(self, source: str, reason: str, n: int = 1) -> None:
        self.skipped.setdefault(source, Counter())[reason] += n

    def path(self, rel: str) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def png(self, rel: str, pixels: np.ndarray) -> str:
        """(H, W, 3) uint8 RGB, or (H, W) uint8 for a 1-band mask."""
        PIL.Image.fromarray(np.ascontiguousarray(pixels)).save(self.path(rel))
        return rel

    def geotiff(self, rel: str, pixels: np.ndarray, chip: Any, metadata: Any = None) -> str:
        """(H, W, 3) uint8 covering ``chip``'s footprint (its grid rescaled to the pixels' size), tagged
        with the date of ``metadata`` (default: the chip's)."""
        from rasterio.transform import Affine

        from diffusionsat.geo import scaled_transform, write_geotiff

        (h, w), (ph, pw) = chip.image.shape[-2:], pixels.shape[:2]
        transform = scaled_transform(Affine(*chip.transform[:6]), (w, h), (pw, ph))
        date = (metadata or chip.metadata).date_string()
        write_geotiff(self.path(rel), pixels, chip.crs_wkt, transform,
                      tags={"ACQUISITION_DATE": date} if date else None)
        return rel

    def sidecar(self, image_rel: str, data: dict[str, Any]) -> None:
        self.path(image_rel).with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _uint8(chip_or_pixels: Any, pixel_range: Any = None) -> np.ndarray:
    """(H, W, C) uint8 as the data layer scales a chip (8-bit as is, else the scene's range; nodata black)."""
    from diffusionsat.data.transforms import to_model_range, to_uint8

    if pixel_range is not None:
        return to_uint8(to_model_range(chip_or_pixels, pixel_range))
    if hasattr(chip_or_pixels, "to_sample"):
        return to_uint8(chip_or_pixels.to_sample()["pixel_values"])
    return to_uint8(chip_or_pixels)


def _nodata(*chips: Any) -> float:
    return max(1.0 - float(chip.valid.mean()) for chip in chips)


def _grid_key(prefix: str, chip: Any) -> str:
    col, row = chip.window[:2]
    return f"{prefix}-r{row:03d}-c{col:03d}"


def _geo_record(chip: Any, scene: str, source: str, **extra: Any) -> dict[str, Any]:
    col, row, w, _ = chip.window
    return {"caption": chip.caption, "metadata": chip.metadata.to_dict(), "scene": scene, **extra,
            "source": source, "window": {"row": row, "col": col, "size": w}}


def _relative(root: Path, path: Any) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _first_per_class(labels: Iterable[Any], per_class: int | None) -> list[int]:
    """Indices of the first ``per_class`` items of every label (all when ``None``), in order."""
    seen: Counter[Any] = Counter()
    keep = []
    for i, label in enumerate(labels):
        if per_class is None or seen[label] < per_class:
            keep.append(i)
            seen[label] += 1
    return keep


def _limited(items: Iterator[Any], per_class: int | None) -> Iterator[Any]:
    for n, item in enumerate(items):
        if per_class is not None and n >= per_class:
            return
        yield item


# --- super-resolution -----------------------------------------------------------------------------------
def superres_ucmerced(root: Path, out: Folder, per_class: int | None, ucm_crop: int) -> None:
    from diffusionsat.data.tasks import DownsampledPairs
    from diffusionsat.data.ucmerced import UCMerced

    ucm = UCMerced(root / "ucmerced", "heldout", seed=UCM_SEED)
    pairs = DownsampledPairs(ucm, ucm_crop, factor=SR_FACTOR)
    tiles = len(pairs.grid)
    for item in _first_per_class((label for _, label in ucm.records), per_class):
        path, _ = ucm.records[item]
        for tile in range(tiles):
            sample = pairs[item * tiles + tile]
            key = f"ucmerced-{path.stem}" if tiles == 1 else f"ucmerced-{path.stem}-r{pairs.grid[tile][0]:03d}-c{pairs.grid[tile][1]:03d}"
            low = out.png(f"lowres/{key}.png", _uint8(sample["conditioning_pixel_values"]))
            out.sidecar(low, {"role": "condition", "metadata": sample["conditioning_metadata"].to_dict()})
            ref = out.png(f"{key}.png", _uint8(sample["pixel_values"]))
            name = sample["class_name"]
            out.sidecar(ref, {"caption": sample["caption"], "metadata": sample["metadata"].to_dict(),
                              "scene": f"ucm-{name}", "class": name, "condition": [low],
                              "source": _relative(root, path)})
            out.counts["ucmerced"] += 1


def superres_naip(root: Path, out: Folder, per_class: int | None) -> None:
    from diffusionsat.data.tasks import SuperResPairs

    pairs = SuperResPairs(root / NAIP_HELDOUT, CHIP, factor=SR_FACTOR, bands="1,2,3")

    def usable() -> Iterator[Any]:
        for i in range(len(pairs)):
            pair = pairs.pair(i)
            if _nodata(pair.high) > MAX_NODATA:
                out.skip("naip", f"more than {MAX_NODATA:.0%} nodata")
                continue
            yield pair

    for pair in _limited(usable(), per_class):
        high = pair.high
        key = _grid_key("naip", high)
        low = out.geotiff(f"lowres/{key}.tif", _uint8(pair.low, pair.low_pixel_range), high, pair.low_metadata)
        out.sidecar(low, {"role": "condition", "metadata": pair.low_metadata.to_dict()})
        ref = out.geotiff(f"{key}.tif", _uint8(high), high)
        # SuperResPairs reads no date (as in task training): the date is recorded beside the metadata.
        out.sidecar(ref, _geo_record(high, GEO_SCENES["naip"], NAIP_HELDOUT, condition=[low], acquired=NAIP_DATE))
        out.counts["naip"] += 1


def superres_spacenet(root: Path, out: Folder, per_class: int | None) -> None:
    from diffusionsat.data.tasks import SuperResPairs

    high, low = (root / p for p in SPACENET_PAIR)
    pairs = SuperResPairs(high, CHIP, low=low, bands="1,1,1", low_bands="2,2,2", roi=SPACENET_PAIR_HELDOUT_ROI)
    for i in _limited(iter(range(len(pairs))), per_class):
        pair = pairs.pair(i)
        if _nodata(pair.high) > MAX_NODATA:
            out.skip("spacenet", f"more than {MAX_NODATA:.0%} nodata")
            continue
        key = _grid_key("spacenet-pan", pair.high)
        rel = out.geotiff(f"lowres/{key}.tif", _uint8(pair.low, pair.low_pixel_range), pair.high, pair.low_metadata)
        out.sidecar(rel, {"role": "condition", "metadata": pair.low_metadata.to_dict(), "source": SPACENET_PAIR[1]})
        ref = out.geotiff(f"{key}.tif", _uint8(pair.high), pair.high)
        out.sidecar(ref, _geo_record(pair.high, GEO_SCENES["spacenet"], SPACENET_PAIR[0], condition=[rel]))
        out.counts["spacenet"] += 1


# --- temporal ------------------------------------------------------------------------------------------
def temporal_source(root: Path, out: Folder, per_class: int | None, name: str) -> None:
    from diffusionsat.data.tasks import TemporalSequences

    folder, pattern, scene = TEMPORAL[name]
    sequences = TemporalSequences([root / folder], CHIP, num_frames=TEMPORAL_FRAMES + 1, date_pattern=pattern,
                                  bands="1,2,3")
    if len(sequences.groups) != 1:
        raise ExportError(f"{root / folder}: expected one place, found {len(sequences.groups)}")
    group = sequences.groups[0]
    if len(group) < TEMPORAL_FRAMES + 1:
        raise ExportError(f"{root / folder}: {len(group)} dates; the temporal set needs {TEMPORAL_FRAMES + 1}")
    used = [Path(info.path).name for info in group[-(TEMPORAL_FRAMES + 1):]]
    logger.info("temporal/%s: frames %s → target %s (held out)", name, ", ".join(used[:-1]), used[-1])

    def usable() -> Iterator[Any]:
        for i in range(len(sequences)):
            frames = sequences.sequence(i).frames
            if _nodata(*frames) > MAX_NODATA:
                out.skip(name, f"more than {MAX_NODATA:.0%} nodata")
                continue
            yield frames

    for frames in _limited(usable(), per_class):
        *inputs, target = frames
        key = _grid_key(name, target)
        condition = []
        for frame in inputs:
            date = frame.metadata.date_string()
            rel = out.geotiff(f"frames/{key}_{date.replace('-', '')}.tif", _uint8(frame), frame)
            out.sidecar(rel, {"role": "condition", "metadata": frame.metadata.to_dict(),
                              "source": _relative(root, frame.source)})
            condition.append(rel)
        ref = out.geotiff(f"{key}.tif", _uint8(target), target)
        out.sidecar(ref, _geo_record(target, scene, _relative(root, target.source), condition=condition))
        out.counts[name] += 1


# --- in-painting ---------------------------------------------------------------------------------------
def inpaint_ucmerced(root: Path, out: Folder, per_class: int | None, seed: int) -> None:
    from diffusionsat.data.tasks import BoxMasked
    from diffusionsat.data.ucmerced import UCMerced

    ucm = UCMerced(root / "ucmerced", "heldout", seed=UCM_SEED, size=CHIP)
    masked = BoxMasked(ucm, seed=seed)  # masks seeded by (seed, index in the whole held-out split)
    for item in _first_per_class((label for _, label in ucm.records), per_class):
        path, _ = ucm.records[item]
        sample = masked[item]
        key = f"ucmerced-{path.stem}"
        mask = out.png(f"masks/{key}.png", (sample["mask"][0].numpy() > 0.5).astype(np.uint8) * 255)
        ref = out.png(f"{key}.png", _uint8(sample["pixel_values"]))
        name = sample["class_name"]
        out.sidecar(ref, {"caption": sample["caption"], "metadata": sample["metadata"].to_dict(),
                          "scene": f"ucm-{name}", "class": name, "mask": mask, "source": _relative(root, path)})
        out.counts["ucmerced"] += 1


def inpaint_spacenet(root: Path, out: Folder, per_class: int | None) -> None:
    from diffusionsat.data.geotiff import chip_windows
    from diffusionsat.data.tasks import InpaintSamples

    raster, vector = (root / p for p in SPACENET)
    samples = InpaintSamples(raster, CHIP, vector=vector, min_mask=MIN_BUILDINGS, bands="1,1,1")
    info = samples.infos[0]
    out.skip("spacenet", f"under {MIN_BUILDINGS:.0%} building pixels",
             len(chip_windows(info.width, info.height, CHIP)) - len(samples))

    def usable() -> Iterator[Any]:
        for i in range(len(samples)):
            chip, mask = samples.item(i)
            if _nodata(chip) > MAX_NODATA:
                out.skip("spacenet", f"more than {MAX_NODATA:.0%} nodata")
                continue
            yield chip, mask

    for chip, mask in _limited(usable(), per_class):
        key = _grid_key("spacenet", chip)
        mask_rel = out.png(f"masks/{key}.png", (mask > 0).astype(np.uint8) * 255)
        ref = out.geotiff(f"{key}.tif", _uint8(chip), chip)
        out.sidecar(ref, _geo_record(chip, GEO_SCENES["spacenet"], SPACENET[0], mask=mask_rel,
                                     mask_source=SPACENET[1], mask_fraction=round(float(mask.mean()), 4)))
        out.counts["spacenet"] += 1


# --- the export ----------------------------------------------------------------------------------------
def export(task: str, out_dir: Path, data: Path, *, sources: Iterable[str] | None = None, per_class: int | None = None,
           seed: int = 0, ucm_crop: int = UCM_NATIVE) -> dict[str, int]:
    """Write the held-out folder of ``task`` to ``out_dir`` (refused when it exists and is not empty);
    returns the number of records per source."""
    from diffusionsat.fileio import atomic_dir

    if task not in TASK_SOURCES:
        raise ExportError(f"--task {task!r}: choose one of {', '.join(TASK_SOURCES)}")
    chosen = tuple(TASK_SOURCES[task] if sources is None else sources)
    unknown = [s for s in chosen if s not in TASK_SOURCES[task]]
    if unknown or not chosen:
        raise ExportError(f"--sources {','.join(chosen)!r}: task {task} has {', '.join(TASK_SOURCES[task])}")
    if per_class is not None and per_class < 1:
        raise ExportError(f"--per-class {per_class}: must be at least 1")
    if ucm_crop not in (UCM_NATIVE, CHIP):
        raise ExportError(f"--ucm-crop {ucm_crop}: choose {UCM_NATIVE} (whole images) or {CHIP} (tiles)")
    if not data.is_dir():
        raise ExportError(f"--data {str(data)!r} is not a folder (the shared data, e.g. ../shared/data)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"--out {str(out_dir)!r} exists and is not empty; choose a new folder")
    with atomic_dir(out_dir, overwrite=out_dir.exists()) as tmp:
        folder = Folder(tmp)
        for source in chosen:
            if task == "superres":
                if source == "ucmerced":
                    superres_ucmerced(data, folder, per_class, ucm_crop)
                elif source == "naip":
                    superres_naip(data, folder, per_class)
                else:
                    superres_spacenet(data, folder, per_class)
            elif task == "temporal":
                temporal_source(data, folder, per_class, source)
            elif source == "ucmerced":
                inpaint_ucmerced(data, folder, per_class, seed)
            else:
                inpaint_spacenet(data, folder, per_class)
            skipped = folder.skipped.get(source, {})
            logger.info("%s/%s: %d records%s", task, source, folder.counts[source],
                        "".join(f"; {n} chips left out: {why}" for why, n in skipped.items()))
        records = sum(folder.counts[s] for s in chosen)
        if records == 0:
            raise ExportError(f"no records for task {task} from {', '.join(chosen)}")
        if task == "superres" and ucm_crop == UCM_NATIVE and "ucmerced" in chosen and len(chosen) > 1:
            logger.warning("superres: references are 256 px (UC Merced) and 64 px (NAIP, SpaceNet); evaluate compares every "
                           "record at one size, so score the sources separately (--sources ucmerced / naip) "
                           "or use --ucm-crop 64")
        summary = {"task": task, "sources": list(chosen), "per_class": per_class, "seed": seed,
                   "ucm_crop": ucm_crop if "ucmerced" in chosen and task == "superres" else None,
                   "records": records, "counts": {s: folder.counts[s] for s in chosen},
                   "skipped": {s: dict(folder.skipped[s]) for s in chosen if s in folder.skipped}}
        (tmp / "export.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("%d %s records in %s", records, task, out_dir)
    return {s: folder.counts[s] for s in chosen}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=tuple(TASK_SOURCES))
    parser.add_argument("--out", required=True, type=Path, help="new (or empty) folder to write")
    parser.add_argument("--data", type=Path, default=SHARED, help="the shared data (default: ../shared/data)")
    parser.add_argument("--sources", help="comma-separated: superres ucmerced,naip,spacenet; temporal naip,landsat; "
                                          "inpaint ucmerced,spacenet (default: both of the task)")
    parser.add_argument("--per-class", type=int, help="at most N records per scene class (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the UC Merced in-painting boxes")
    parser.add_argument("--ucm-crop", type=int, default=UCM_NATIVE,
                        help="superres UC Merced references: 256 = whole images (default), 64 = 16 tiles each")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sources = None if args.sources is None else [s.strip() for s in args.sources.split(",") if s.strip()]
    from diffusionsat.data.errors import DataError

    try:
        export(args.task, args.out, args.data, sources=sources, per_class=args.per_class, seed=args.seed,
               ucm_crop=args.ucm_crop)
    except (ExportError, DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
