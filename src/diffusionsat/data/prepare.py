"""``prepare-data``: scenes, folders, manifests, fMoW trees or UC Merced → WebDataset shards + manifest + summary.

Output folder layout::

    OUT/shard-000000.tar ...   samples (see diffusionsat.data.shards)
    OUT/manifest.jsonl         one row per sample: key, shard, path, caption, lat, lon, gsd, cloud_cover, date
    OUT/summary.json           config, counts, skipped files and why, metadata ranges

The whole folder is built beside ``OUT`` and renamed into place at the end, so an interrupted run
leaves nothing under ``OUT``; a finished run with the same configuration is detected and not
repeated (idempotent); a different configuration needs ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import OutputExistsError, atomic_dir
from ..metadata import SatMetadata
from .captions import AUTO_TEMPLATE, FMOW_TEMPLATE
from .errors import DataError, Skipped
from .fmow import find_fmow_pairs, parse_fmow_json
from .geotiff import (
    RASTER_SUFFIXES,
    check_pixels,
    chip_windows,
    find_rasters,
    group_band_files,
    iter_chips,
    open_raster,
)
from .images import image_pixel_range, read_image
from .manifest import MANIFEST_SUFFIXES, read_manifest, write_manifest
from .shards import ShardWriter, chip_entries, encode_image
from .tasks import InpaintSamples, SuperResPairs, TemporalSequences

logger = logging.getLogger(__name__)

TASKS = ("generate", "temporal", "superres", "inpaint")


@dataclass
class PrepareConfig:
    """Everything that determines the output (hashed to detect an up-to-date folder)."""

    inputs: list[str]
    chip_size: int
    task: str = "generate"
    stride: int | None = None
    resize: int | None = None
    bands: str | None = None
    band_names: str | None = None
    nodata: float | None = None
    date_pattern: str | None = None
    max_nodata: float = 0.5
    shard_size: int = 1000
    sensor: str | None = None
    template: str = AUTO_TEMPLATE
    countries: str | None = None
    num_frames: int | None = None
    sr_factor: int = 4
    lowres: str | None = None
    mask_vector: str | None = None
    mask_boxes: int = 3
    seed: int = 0
    stack_bands: bool = True
    split: str = "all"  # UC Merced folders: train / heldout / all (the dataset's seeded per-class split)

    def validate(self) -> PrepareConfig:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}; allowed {', '.join(TASKS)}")
        if not 8 <= self.chip_size <= 8192:
            raise ValueError(f"chip_size={self.chip_size}: out of range; allowed [8, 8192] px")
        if self.stride is not None and not 1 <= self.stride <= 8192:
            raise ValueError(f"stride={self.stride}: out of range; allowed [1, 8192] px (omit it for the chip size)")
        if self.resize is not None and not 8 <= self.resize <= 8192:
            raise ValueError(f"resize={self.resize}: out of range; allowed [8, 8192] px")
        if not 0 <= self.max_nodata <= 1:
            raise ValueError(f"max_nodata={self.max_nodata}: out of range; allowed [0, 1]")
        if self.shard_size < 1:
            raise ValueError(f"shard_size={self.shard_size}: must be ≥ 1")
        if not self.inputs:
            raise ValueError("no inputs given")
        if self.split not in ("train", "heldout", "all"):
            raise ValueError(f"split={self.split!r}; allowed train, heldout, all")
        return self

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class NoSamplesError(ValueError):
    """No usable sample could be made: an error, and nothing is written (a later run must not see it as done)."""

    def __init__(self, skipped: list[Skipped]):
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3]) or "no chip passed the filters"
        super().__init__(f"no samples could be made from the inputs ({len(skipped)} file(s) skipped: {reasons})")
        self.skipped = skipped


@dataclass
class _Stats:
    samples: int = 0
    files_used: int = 0
    chips_skipped_nodata: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    ranges: dict[str, list[Any]] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=lambda: {k: 0 for k in ("lon", "lat", "gsd", "cloud_cover", "date")})

    def add_metadata(self, meta: SatMetadata) -> None:
        for name in ("lon", "lat", "gsd", "cloud_cover"):
            value = getattr(meta, name)
            if value is None:
                self.unknown[name] += 1
                continue
            lo, hi = self.ranges.get(name, [value, value])
            self.ranges[name] = [min(lo, value), max(hi, value)]
        date = meta.date_string()
        if date is None:
            self.unknown["date"] += 1
        else:
            lo, hi = self.ranges.get("date", [date, date])
            self.ranges["date"] = [min(lo, date), max(hi, date)]


def _row(key: str, shard: str, source: str, caption: str, meta: SatMetadata) -> dict[str, Any]:
    return {"key": key, "shard": shard, "path": source, "caption": caption, "lat": meta.lat, "lon": meta.lon,
            "gsd": meta.gsd, "cloud_cover": meta.cloud_cover, "date": meta.date_string()}


def _split_ucmerced(inputs: Sequence[str]) -> tuple[list[str], list[Path]]:
    """(other inputs, UC Merced folders): a folder with the 21 class sub-folders is a labelled set."""
    from .ucmerced import is_ucmerced_folder

    ucm = [Path(p) for p in inputs if is_ucmerced_folder(p)]
    return [p for p in inputs if Path(p) not in ucm], ucm


def _ucmerced_items(cfg: PrepareConfig, roots: list[Path], stats: _Stats) -> Iterator[tuple[str, dict[str, Any], SatMetadata, str, str]]:
    """Whole UC Merced images (``resize`` applies, GSD and caption follow) with their class."""
    from .transforms import to_uint8
    from .ucmerced import UCMerced

    for root in roots:
        dataset = UCMerced(root, cfg.split, size=cfg.resize, seed=cfg.seed)
        for i in range(len(dataset)):
            path = dataset.records[i][0]
            try:
                sample = dataset[i]
            except DataError as err:
                stats.skipped.append(Skipped(str(path), err.problem))
                continue
            image = np.moveaxis(to_uint8(sample["pixel_values"]), -1, 0)
            meta, text = sample["metadata"], sample["caption"]
            ext, data = encode_image(image)
            record = {"key": sample["key"], "metadata": meta.to_dict(), "caption": text, "source": str(path),
                      "class": sample["class_name"], "label": sample["label"], "split": cfg.split,
                      "caption_fields": sample["caption_fields"], "caption_template": sample["caption_template"],
                      "pixel_range": [[0.0] * 3, [255.0] * 3], "dtype": "uint8", "shape": list(image.shape)}
            stats.files_used += 1
            yield sample["key"], {ext: data, "json": record, "txt": text}, meta, text, str(path)


def _classify(inputs: Sequence[str], stack_bands: bool = True) -> tuple[list[Any], list[Path], list[tuple[Path, Path]], list[Skipped]]:
    """Split inputs into rasters (single-band files of one scene stacked), manifests and fMoW pairs;
    unknown/missing inputs are skipped."""
    rasters: list[Path] = []
    manifests: list[Path] = []
    pairs: list[tuple[Path, Path]] = []
    skipped: list[Skipped] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            skipped.append(Skipped(str(path), "not found"))
        elif path.is_dir():
            found_pairs = [p for p in find_fmow_pairs([path]) if p[0].suffix.lower() not in RASTER_SUFFIXES]
            pair_images = {p[0] for p in found_pairs}
            pairs.extend(found_pairs)
            rasters.extend(r for r in find_rasters([path]) if r not in pair_images)
            manifests.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in MANIFEST_SUFFIXES))
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            manifests.append(path)
        elif path.suffix.lower() in RASTER_SUFFIXES:
            rasters.append(path)
        elif path.suffix.lower() == ".json":
            pairs.extend(find_fmow_pairs([path]) or [])
            if not find_fmow_pairs([path]):
                skipped.append(Skipped(str(path), "JSON without an image of the same name beside it"))
        else:
            skipped.append(Skipped(str(path), f"unknown input type {path.suffix!r}; expected a raster "
                                              f"({', '.join(RASTER_SUFFIXES)}), a manifest ({', '.join(MANIFEST_SUFFIXES)}), "
                                              "an fMoW JSON or a folder"))
    if stack_bands:
        rasters = group_band_files(rasters)
    return rasters, manifests, pairs, skipped


def _generate_items(cfg: PrepareConfig, rasters: list[Path], manifests: list[Path], pairs: list[tuple[Path, Path]],
                    stats: _Stats) -> Iterator[tuple[str, dict[str, Any], SatMetadata, str, str]]:
    """(key, entries, metadata, caption, source) for the generate task, file by file."""
    for path in rasters:
        try:
            info = open_raster(path, bands=cfg.bands, band_names=cfg.band_names, nodata=cfg.nodata,
                               date_pattern=cfg.date_pattern)
            check_pixels(info)  # a damaged file is skipped whole, before any of its chips is written
            if not chip_windows(info.width, info.height, cfg.chip_size, cfg.stride):
                raise DataError(info.source, f"{info.width}×{info.height} px is smaller than one {cfg.chip_size} px chip")
        except DataError as err:
            stats.skipped.append(Skipped(str(path), err.problem))
            logger.info("skipping %s", err)
            continue
        nodata_skips: list[str] = []
        kept = 0
        for chip in iter_chips(info, cfg.chip_size, stride=cfg.stride, max_nodata=cfg.max_nodata,
                               skipped=nodata_skips, out_size=cfg.resize, template=cfg.template,
                               sensor=cfg.sensor, countries=cfg.countries):
            kept += 1
            yield chip.key, chip_entries(chip, cfg.template), chip.metadata, chip.caption, chip.source
        stats.chips_skipped_nodata += len(nodata_skips)
        if kept:
            stats.files_used += 1
        else:
            stats.skipped.append(Skipped(str(path), f"all {len(nodata_skips)} chips are more than "
                                                    f"{cfg.max_nodata:.0%} nodata"))
    for manifest in manifests:
        try:
            rows = read_manifest(manifest, on_error="skip", skipped=stats.skipped)
        except DataError as err:
            stats.skipped.append(Skipped(str(manifest), err.problem))
            continue
        for n, row in enumerate(rows):
            yield from _whole_image(f"{manifest.stem}_{n:06d}_{row.path.stem}", row.path, row.metadata,
                                    row.caption, None, cfg, stats)
    for image, js in pairs:
        try:
            meta, cls = parse_fmow_json(js)
        except DataError as err:
            stats.skipped.append(Skipped(str(js), err.problem))
            continue
        yield from _whole_image(image.stem, image, meta, None, cls, cfg, stats)


def _whole_image(key: str, path: Path, meta: SatMetadata, caption: str | None, cls: str | None,
                 cfg: PrepareConfig, stats: _Stats) -> Iterator[tuple[str, dict[str, Any], SatMetadata, str, str]]:
    from .captions import CaptionTemplate, caption_fields

    try:
        image = read_image(path)
    except DataError as err:
        stats.skipped.append(Skipped(str(path), err.problem))
        return
    template = FMOW_TEMPLATE if cls else cfg.template
    fields = caption_fields(meta, class_name=cls, sensor=cfg.sensor, countries=cfg.countries)
    text = caption or CaptionTemplate(template).render(fields)
    ext, data = encode_image(image)
    record = {"key": key, "metadata": meta.to_dict(), "caption": text, "source": str(path),
              "caption_fields": {k: v for k, v in fields.items() if v is not None}, "caption_template": template,
              "pixel_range": [list(r) for r in image_pixel_range(image)], "dtype": str(image.dtype),
              "shape": list(image.shape)}
    stats.files_used += 1
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in key)
    yield safe, {ext: data, "json": record, "txt": text}, meta, text, str(path)


def _task_items(cfg: PrepareConfig, rasters: list[Path], stats: _Stats) -> Iterator[tuple[str, dict[str, Any], SatMetadata, str, str]]:
    chip_kwargs = {"out_size": cfg.resize, "template": cfg.template, "sensor": cfg.sensor, "countries": cfg.countries}
    if cfg.task == "temporal":
        try:
            ds = TemporalSequences(rasters, cfg.chip_size, num_frames=cfg.num_frames, date_pattern=cfg.date_pattern,
                                   bands=cfg.bands, stride=cfg.stride, **chip_kwargs)
        except DataError as err:
            stats.skipped.append(Skipped(str(err.path or cfg.inputs[0]), err.problem))
            return
        stats.files_used += sum(len(g) for g in ds.groups)
        for i in range(len(ds)):
            seq = ds.sequence(i)
            target = seq.frames[-1]
            entries = chip_entries(target, cfg.template)
            frames = np.concatenate([f.image for f in seq.frames[:-1]], axis=0)
            entries["frames.tif"] = encode_image(frames, force_tiff=True)[1]
            entries["json"]["frames"] = [{"source": f.source, "metadata": f.metadata.to_dict()} for f in seq.frames[:-1]]
            yield target.key, entries, target.metadata, target.caption, target.source
    elif cfg.task == "superres":
        for path in rasters:
            try:
                ds = SuperResPairs(path, cfg.chip_size, low=cfg.lowres, factor=cfg.sr_factor, stride=cfg.stride,
                                   bands=cfg.bands, **chip_kwargs)
            except DataError as err:
                stats.skipped.append(Skipped(str(err.path or path), err.problem))
                continue
            stats.files_used += 1
            for i in range(len(ds)):
                pair = ds.pair(i)
                entries = chip_entries(pair.high, cfg.template)
                entries["lowres.tif"] = encode_image(pair.low, force_tiff=True)[1]
                entries["json"]["lowres_metadata"] = pair.low_metadata.to_dict()
                entries["json"]["lowres_pixel_range"] = [list(r) for r in pair.low_pixel_range]
                yield pair.high.key, entries, pair.high.metadata, pair.high.caption, pair.high.source
    elif cfg.task == "inpaint":
        for path in rasters:
            try:
                ds = InpaintSamples([path], cfg.chip_size, vector=cfg.mask_vector, boxes=cfg.mask_boxes,
                                    seed=cfg.seed, stride=cfg.stride, bands=cfg.bands, **chip_kwargs)
            except DataError as err:
                stats.skipped.append(Skipped(str(err.path or path), err.problem))
                continue
            stats.files_used += 1
            for i in range(len(ds)):
                chip, mask = ds.item(i)
                entries = chip_entries(chip, cfg.template)
                entries["mask.png"] = encode_image(mask[None] * 255)[1]
                entries["json"]["mask_source"] = cfg.mask_vector or f"{cfg.mask_boxes} random boxes (seed {cfg.seed})"
                yield chip.key, entries, chip.metadata, chip.caption, chip.source


def prepare_data(config: PrepareConfig, out: str | os.PathLike, *, overwrite: bool = False,
                 progress: Callable[[Iterator[Any]], Iterator[Any]] | None = None) -> dict[str, Any]:
    """Build shards + manifest + summary for ``config`` in ``out``; returns the summary dict.

    If ``out`` holds the summary of the same configuration, nothing is redone and that summary is
    returned with ``"up_to_date": True``.
    """
    cfg = config.validate()
    out = Path(out)
    summary_path = out / "summary.json"
    if summary_path.is_file():
        try:
            previous = json.loads(summary_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            previous = {}
        complete = previous.get("samples", 0) > 0 and (out / "manifest.jsonl").is_file()
        if previous.get("config_digest") == cfg.digest() and complete and not overwrite:
            return {**previous, "up_to_date": True}
        if not overwrite:
            raise OutputExistsError(f"output folder {str(out)!r} holds data prepared with other settings "
                                    "(use --overwrite to replace it)")
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"output folder {str(out)!r} exists and is not empty (use --overwrite)")

    inputs, ucmerced = _split_ucmerced(cfg.inputs)
    rasters, manifests, pairs, skipped = _classify(inputs, cfg.stack_bands)
    stats = _Stats(skipped=skipped)
    if cfg.task == "generate":
        items = itertools.chain(_ucmerced_items(cfg, ucmerced, stats), _generate_items(cfg, rasters, manifests, pairs, stats))
    else:
        if manifests or pairs or ucmerced:
            for p in [*manifests, *(j for _, j in pairs), *ucmerced]:
                stats.skipped.append(Skipped(str(p), f"task {cfg.task!r} takes rasters only"))
        items = _task_items(cfg, rasters, stats)
    if progress is not None:
        items = progress(items)
    rows: list[dict[str, Any]] = []
    with atomic_dir(out, overwrite=True) as tmp:
        with ShardWriter(tmp, max_samples=cfg.shard_size) as writer:
            for key, entries, meta, caption, source in items:
                shard = writer.shard_path(writer.index).name
                writer.write(key, entries)
                rows.append(_row(key, shard, source, caption, meta))
                stats.add_metadata(meta)
                stats.samples += 1
        if stats.samples == 0:  # raised inside: the temporary folder goes, nothing appears under `out`
            raise NoSamplesError(stats.skipped)
        write_manifest(rows, tmp / "manifest.jsonl")
        summary = {
            "config": asdict(cfg),
            "config_digest": cfg.digest(),
            "samples": stats.samples,
            "shards": [p.name for p in writer.written],
            "files_used": stats.files_used,
            "files_skipped": len({s.path for s in stats.skipped}),
            "chips_skipped_nodata": stats.chips_skipped_nodata,
            "skipped": [s.to_dict() for s in stats.skipped],
            "metadata_ranges": stats.ranges,
            "metadata_unknown": stats.unknown,
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return {**summary, "up_to_date": False}
