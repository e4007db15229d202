"""Data engine: a spec of classes → labelled synthetic WebDataset shards + manifest (``synthesize``).

The sample list is a pure function of the spec: classes are interleaved round by round (sample
``g`` of a spec with equal counts is class ``g % C``), and each sample's seed is derived from
(spec seed, class key, index within the class); the same seed draws its metadata from the class's
ranges and starts its noise. Shard ``k`` holds samples ``[k·S, (k+1)·S)`` (``S = shard_size``),
is sampled in fixed batches of ``batch_size`` and written atomically when complete. So:

- a killed run rerun with the same spec skips the finished shards and redoes only the rest;
- with N processes (``accelerate launch``) shard ``k`` goes to rank ``k % N``; the folder they fill
  together is byte-identical to a single process's (same batches, same seeds);
- the manifest and summary are written once every shard is there.

Output folder: ``spec.json`` (the normalised spec, its digest and the model version: what the
folder holds), ``shard-000000.tar ...`` (``{key}.png``, ``{key}.json`` with ``class``, ``label``,
``seed``, ``metadata``, ``caption``; ``{key}.txt``), ``manifest.jsonl``, ``summary.json`` — the
format ``prepare-data`` writes and ``train``/``downstream`` read.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .fileio import OutputExistsError, atomic_write_text
from .metadata import MetadataError, SatMetadata, parse_date

logger = logging.getLogger(__name__)

SPEC_VERSION = 1
DEFAULT_PROMPT = "a satellite image of {class} in {country} at {scale}"
TOP_KEYS = ("version", "prompt", "negative_prompt", "fields", "images_per_class", "seed", "size", "steps",
            "guidance", "metadata_guidance", "scheduler", "batch_size", "shard_size", "metadata", "classes")
CLASS_KEYS = ("words", "prompt", "images", "metadata", "control")
CONTROL_KEYS = ("kind", "files")
SYNTH_CONTROL_KINDS = ("mask", "road")  # maps that label the image they steer: segmentation pairs
MAP_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
METADATA_KEYS = ("lat", "lon", "polygon", "date", "gsd", "cloud_cover", "cloud_percent")
KEY_PATTERN = re.compile(r"[A-Za-z0-9_\-]+")
SPEC_FILE, MANIFEST_FILE, SUMMARY_FILE = "spec.json", "manifest.jsonl", "summary.json"
IDENTITY_KEYS = ("digest", "model_version", "controlnet")  # what makes a folder this spec's data


class SpecError(ValueError):
    """A bad synthesis spec; the message names the spec, the class and the field."""


# --- metadata ranges ------------------------------------------------------------------------------


def _period(text: Any, end: bool, where: str) -> _dt.date:
    """First (or last, ``end``) day of an ISO date, month or year."""
    try:
        year, month, day = parse_date(str(text) if not isinstance(text, _dt.date) else text)
        SatMetadata(year=year, month=month, day=day)
    except MetadataError as err:
        raise SpecError(f"{where}: {err}") from None
    if day is not None:
        return _dt.date(year, month, day)  # type: ignore[arg-type]
    if not end:
        return _dt.date(year, month or 1, 1)
    month = month or 12
    nxt = _dt.date(year + (month == 12), month % 12 + 1, 1)
    return nxt - _dt.timedelta(days=1)


@dataclass(frozen=True)
class MetadataRanges:
    """Where each sample's metadata is drawn from: fixed values or uniform [low, high] ranges.

    ``polygon`` (``[[lon, lat], ...]``) replaces the lat/lon box: points are drawn uniformly inside
    it. Dates are drawn by day. Unset fields stay unknown.
    """

    lat: tuple[float, float] | None = None
    lon: tuple[float, float] | None = None
    polygon: tuple[tuple[float, float], ...] | None = None
    date: tuple[str, str] | None = None  # ISO days, or (partial date, same) for a fixed partial date
    gsd: tuple[float, float] | None = None
    cloud_cover: tuple[float, float] | None = None

    @classmethod
    def parse(cls, data: Any, where: str, base: MetadataRanges | None = None) -> MetadataRanges:
        if data is None:
            return base or cls()
        if not isinstance(data, Mapping):
            raise SpecError(f"{where}: must be a mapping of {', '.join(METADATA_KEYS)}")
        unknown = [k for k in data if k not in METADATA_KEYS]
        if unknown:
            raise SpecError(f"{where}.{unknown[0]}: unknown metadata field; allowed {', '.join(METADATA_KEYS)}")
        if "cloud_cover" in data and "cloud_percent" in data:
            raise SpecError(f"{where}: give cloud_cover (fraction) or cloud_percent, not both")
        if "polygon" in data and ("lat" in data or "lon" in data):
            raise SpecError(f"{where}: give a lat/lon box or a polygon, not both")
        values = asdict(base) if base is not None else {}
        values = {k: (tuple(map(tuple, v)) if k == "polygon" and v else (tuple(v) if v else None))
                  for k, v in values.items()}
        if "polygon" in data:
            values.update(lat=None, lon=None)
        if "lat" in data or "lon" in data:
            values["polygon"] = None
        for name in ("lat", "lon", "gsd", "cloud_cover", "cloud_percent"):
            if name in data:
                target = "cloud_cover" if name == "cloud_percent" else name
                low, high = cls._number_range(data[name], f"{where}.{name}", target, 100.0 if name == "cloud_percent" else 1.0)
                values[target] = (low, high)
        if "polygon" in data:
            values["polygon"] = cls._polygon(data["polygon"], f"{where}.polygon")
        if "date" in data:
            values["date"] = cls._date_range(data["date"], f"{where}.date")
        return cls(**values)

    @staticmethod
    def _number_range(value: Any, where: str, name: str, scale: float) -> tuple[float, float]:
        pair = value if isinstance(value, (list, tuple)) else [value, value]
        if len(pair) != 2:
            raise SpecError(f"{where}={value!r}: give a value or [min, max]")
        out = []
        for v in pair:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SpecError(f"{where}={value!r}: must be numbers")
            number = float(v) / scale
            if scale != 1.0 and not 0.0 <= float(v) <= 100.0:
                raise SpecError(f"{where}={value!r}: out of range; allowed [0, 100] percent")
            try:
                SatMetadata(**{name: number})
            except MetadataError as err:
                raise SpecError(f"{where}={value!r}: {str(err).split(': ', 1)[1]}") from None
            out.append(number)
        if out[0] > out[1]:
            raise SpecError(f"{where}={value!r}: min > max")
        return out[0], out[1]

    @staticmethod
    def _polygon(value: Any, where: str) -> tuple[tuple[float, float], ...]:
        from shapely.geometry import Polygon

        if not isinstance(value, (list, tuple)) or len(value) < 3:
            raise SpecError(f"{where}: give at least three [lon, lat] points")
        points = []
        for p in value:
            if not isinstance(p, (list, tuple)) or len(p) != 2:
                raise SpecError(f"{where}: {p!r} is not a [lon, lat] point")
            try:
                meta = SatMetadata(lon=p[0], lat=p[1])
            except MetadataError as err:
                raise SpecError(f"{where}: point {list(p)!r}: {err}") from None
            points.append((meta.lon, meta.lat))
        shape = Polygon(points)
        if not shape.is_valid or shape.area <= 0:
            raise SpecError(f"{where}: not a valid polygon with an area (self-crossing or all points on a line)")
        minx, miny, maxx, maxy = shape.bounds
        if shape.area / max((maxx - minx) * (maxy - miny), 1e-12) < 1e-3:
            raise SpecError(f"{where}: the polygon fills under 0.1 % of its bounding box; too thin to sample")
        return tuple(points)

    @staticmethod
    def _date_range(value: Any, where: str) -> tuple[str, str]:
        if not isinstance(value, (list, tuple)):
            try:
                meta = SatMetadata.from_dict({"date": str(value)})
            except MetadataError as err:
                raise SpecError(f"{where}: {err}") from None
            text = meta.date_string() or ""
            return text, text
        if len(value) != 2:
            raise SpecError(f"{where}={value!r}: give a date or [first, last]")
        low, high = _period(value[0], False, where), _period(value[1], True, where)
        if low > high:
            raise SpecError(f"{where}={list(value)!r}: first date is after the last")
        return low.isoformat(), high.isoformat()

    def draw(self, rng: random.Random) -> SatMetadata:
        """One sample's metadata (values rounded so that records stay readable)."""
        values: dict[str, Any] = {}
        if self.polygon:
            from shapely.geometry import Point, Polygon

            shape = Polygon(self.polygon)
            minx, miny, maxx, maxy = shape.bounds
            for _ in range(100_000):
                lon, lat = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
                if shape.contains(Point(lon, lat)):
                    break
            values.update(lon=round(lon, 5), lat=round(lat, 5))
        for name, digits in (("lat", 5), ("lon", 5), ("gsd", 4), ("cloud_cover", 3)):
            pair = getattr(self, name)
            if pair is not None:
                values[name] = pair[0] if pair[0] == pair[1] else round(rng.uniform(*pair), digits)
        if self.date is not None:
            low, high = self.date
            if low == high:
                values["date"] = low
            else:
                first, last = _dt.date.fromisoformat(low), _dt.date.fromisoformat(high)
                values["date"] = (first + _dt.timedelta(days=rng.randint(0, (last - first).days))).isoformat()
        return SatMetadata.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(map(list, v)) if k == "polygon" else list(v)) for k, v in asdict(self).items() if v is not None}


# --- the spec ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlSpec:
    """A class's control maps (masks → image): sample ``i`` of the class is steered by ``files[i % n]``.

    ``sha256`` covers the maps' bytes, so a folder made from other maps is another spec's data.
    """

    kind: str
    pattern: str  # as written in the spec (a folder, a glob or a list), for the record
    files: tuple[str, ...]
    size: tuple[int, int]  # (height, width) of every map: the size of the class's images
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "files": self.pattern, "count": len(self.files), "size": list(self.size),
                "sha256": self.sha256}


def _control_files(value: Any, base_dir: Path, where: str) -> tuple[str, list[Path]]:
    """A folder (its rasters/images), a glob, or a list of files; relative to the spec's folder."""
    import glob as _glob

    entries = value if isinstance(value, (list, tuple)) else [value]
    if not entries or not all(isinstance(e, str) and e.strip() for e in entries):
        raise SpecError(f"{where}: give a folder, a glob (masks/*.tif) or a list of files")
    files: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in MAP_SUFFIXES)
        elif any(c in entry for c in "*?["):
            found = sorted(Path(p) for p in _glob.glob(str(path)) if Path(p).is_file())
        else:
            found = [path] if path.is_file() else []
            if not found:
                raise SpecError(f"{where}: {str(path)!r} not found")
        if not found:
            raise SpecError(f"{where}: no map files ({', '.join(MAP_SUFFIXES)}) in {str(path)!r}")
        files += found
    pattern = " ".join(entries) if len(entries) > 1 else entries[0]
    return pattern, files


def parse_control(data: Any, base_dir: Path, where: str) -> ControlSpec:
    """Validate a class's ``control``: kind, readable 1-band maps, all of one size."""
    from .conditional import open_input

    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: must be a mapping of {', '.join(CONTROL_KEYS)}")
    bad = [k for k in data if k not in CONTROL_KEYS]
    if bad:
        raise SpecError(f"{where}.{bad[0]}: unknown key; allowed {', '.join(CONTROL_KEYS)}")
    kind = data.get("kind", "mask")
    if kind not in SYNTH_CONTROL_KINDS:
        raise SpecError(f"{where}.kind={kind!r}: choose one of {', '.join(SYNTH_CONTROL_KINDS)} "
                        "(maps that label the image: segmentation pairs)")
    if "files" not in data:
        raise SpecError(f"{where}.files: missing; give a folder, a glob or a list of {kind} maps")
    pattern, files = _control_files(data["files"], base_dir, f"{where}.files")
    digest, size = hashlib.sha256(), None
    for path in files:
        try:
            info = open_input(path)
        except (OSError, ValueError) as err:
            raise SpecError(f"{where}.files: {path.name}: not a readable raster/image ({str(err).splitlines()[0]})") \
                from None
        if info.count != 1:
            raise SpecError(f"{where}.files: {path.name} has {info.count} bands; a {kind} map has 1 (0 = background)")
        if size is None:
            size = (info.height, info.width)
        elif (info.height, info.width) != size:
            raise SpecError(f"{where}.files: {path.name} is {info.width}x{info.height} px, {files[0].name} "
                            f"{size[1]}x{size[0]}; the maps of a class share one size")
        if min(size) < 8:
            raise SpecError(f"{where}.files: {path.name} is {info.width}x{info.height} px; maps need at least 8x8")
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return ControlSpec(str(kind), pattern, tuple(str(p) for p in files), size, digest.hexdigest()[:16])  # type: ignore[arg-type]


@dataclass(frozen=True)
class ClassSpec:
    key: str
    words: str
    prompt: str
    images: int
    metadata: MetadataRanges
    control: ControlSpec | None = None


@dataclass(frozen=True)
class SynthSpec:
    """A validated synthesis spec (see ``docs/synthesize.md`` for the YAML format)."""

    classes: tuple[ClassSpec, ...]
    seed: int = 0
    size: int | None = None
    steps: int = 25
    guidance: float = 3.0
    metadata_guidance: float | None = None
    scheduler: str | None = None
    negative_prompt: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    batch_size: int = 8
    shard_size: int = 256

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SPEC_VERSION, "seed": self.seed, "size": self.size, "steps": self.steps,
            "guidance": self.guidance, "metadata_guidance": self.metadata_guidance, "scheduler": self.scheduler,
            "negative_prompt": self.negative_prompt, "fields": dict(self.fields), "batch_size": self.batch_size,
            "shard_size": self.shard_size,
            "classes": [{"key": c.key, "words": c.words, "prompt": c.prompt, "images": c.images,
                         "metadata": c.metadata.to_dict(), **({"control": c.control.to_dict()} if c.control else {})}
                        for c in self.classes],
        }

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def controlled(self) -> bool:
        """Whether some class is steered by control maps (needs a ControlNet)."""
        return any(c.control is not None for c in self.classes)

    @property
    def num_samples(self) -> int:
        return sum(c.images for c in self.classes)

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)


def _int(data: Mapping[str, Any], key: str, default: Any, low: int, high: int, where: str) -> Any:
    value = data.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{where}{key}={value!r}: must be a whole number in [{low}, {high}]")
    return value


def _float(data: Mapping[str, Any], key: str, default: Any, low: float, high: float) -> Any:
    value = data.get(key, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise SpecError(f"{key}={value!r}: must be a number in [{low:g}, {high:g}]")
    return float(value)


def _check_prompt(prompt: Any, where: str) -> str:
    from .data.captions import CaptionTemplate

    if not isinstance(prompt, str) or not prompt.strip():
        raise SpecError(f"{where}: must be a non-empty text")
    try:
        CaptionTemplate(prompt).parts()
    except ValueError as err:
        raise SpecError(f"{where}: {err}") from None
    return prompt


def parse_spec(data: Any, source: str = "spec", base_dir: str | os.PathLike | None = None) -> SynthSpec:
    """Validate a spec mapping (as loaded from YAML); every error is one line naming the field.

    ``base_dir``: where relative control-map paths start (the spec file's folder; default: here).
    """
    from .data.ucmerced import CLASS_WORDS
    from .schedulers import check_scheduler

    def fail(message: str) -> SpecError:
        return SpecError(f"{source}: {message}")

    try:
        if not isinstance(data, Mapping):
            raise SpecError("must be a YAML mapping with a 'classes' entry")
        unknown = [k for k in data if k not in TOP_KEYS]
        if unknown:
            raise SpecError(f"{unknown[0]}: unknown key; allowed {', '.join(TOP_KEYS)}")
        if data.get("version", SPEC_VERSION) != SPEC_VERSION:
            raise SpecError(f"version={data.get('version')!r}: this diffusionsat reads version {SPEC_VERSION}")
        scheduler = data.get("scheduler")
        if scheduler is not None:
            try:
                check_scheduler(scheduler)
            except ValueError as err:
                raise SpecError(str(err)) from None
        size = _int(data, "size", None, 8, 2048, "")
        if size is not None and size % 8:
            raise SpecError(f"size={size}: must be a multiple of 8")
        fields = data.get("fields") or {}
        if not isinstance(fields, Mapping) or not all(isinstance(v, str) for v in fields.values()):
            raise SpecError("fields: must map caption fields to texts, e.g. {country: United States of America}")
        prompt = _check_prompt(data.get("prompt", DEFAULT_PROMPT), "prompt")
        negative = data.get("negative_prompt")
        if negative is not None and not isinstance(negative, str):
            raise SpecError("negative_prompt: must be a text")
        per_class = _int(data, "images_per_class", None, 1, 10_000_000, "")
        base_meta = MetadataRanges.parse(data.get("metadata"), "metadata")
        raw_classes = data.get("classes")
        if isinstance(raw_classes, list):  # a plain list of class keys
            raw_classes = {str(k): None for k in raw_classes}
        if not isinstance(raw_classes, Mapping) or not raw_classes:
            raise SpecError("classes: empty; list at least one class (key → prompt/words/images/metadata)")
        classes = []
        for key, entry in raw_classes.items():
            key = str(key)
            where = f"classes.{key}"
            if not KEY_PATTERN.fullmatch(key):
                raise SpecError(f"{where}: class keys use letters, digits, '_' or '-'")
            entry = entry or {}
            if not isinstance(entry, Mapping):
                raise SpecError(f"{where}: must be a mapping of {', '.join(CLASS_KEYS)} (or empty)")
            bad = [k for k in entry if k not in CLASS_KEYS]
            if bad:
                raise SpecError(f"{where}.{bad[0]}: unknown key; allowed {', '.join(CLASS_KEYS)}")
            words = entry.get("words", CLASS_WORDS.get(key))
            class_prompt = entry.get("prompt", prompt)
            if words is None and "{class}" in class_prompt:
                raise SpecError(f"{where}: unknown class key {key!r}: give it 'words' (or a 'prompt' of its own); "
                                f"known keys: {', '.join(CLASS_WORDS)}")
            images = _int(entry, "images", per_class, 1, 10_000_000, f"{where}.") if ("images" in entry or per_class) \
                else None
            if images is None:
                raise SpecError(f"{where}: no image count; set images_per_class or the class's images")
            control = parse_control(entry["control"], Path(base_dir or "."), f"{where}.control") \
                if entry.get("control") is not None else None
            if control is not None and size is not None and control.size != (size, size):
                raise SpecError(f"{where}.control: the maps are {control.size[1]}x{control.size[0]} px but size={size}; "
                                "a controlled image has its map's size (drop size or use maps of that size)")
            classes.append(ClassSpec(key, str(words or key), _check_prompt(class_prompt, f"{where}.prompt"), images,
                                     MetadataRanges.parse(entry.get("metadata"), f"{where}.metadata", base_meta),
                                     control))
        return SynthSpec(
            classes=tuple(classes), seed=_int(data, "seed", 0, 0, 2**62, ""), size=size,
            steps=_int(data, "steps", 25, 1, 1000, ""), guidance=_float(data, "guidance", 3.0, 0.0, 50.0),
            metadata_guidance=_float(data, "metadata_guidance", None, 0.0, 50.0),
            scheduler=None if scheduler is None else str(scheduler).lower(), negative_prompt=negative,
            fields={str(k): v for k, v in fields.items()}, batch_size=_int(data, "batch_size", 8, 1, 64, ""),
            shard_size=_int(data, "shard_size", 256, 1, 100_000, ""),
        )
    except SpecError as err:
        raise fail(str(err)) from None


def load_spec(path: str | os.PathLike) -> SynthSpec:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"spec {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not readable YAML ({str(err).splitlines()[0]})") from None
    return parse_spec(data, str(path), base_dir=path.parent)


# --- the sample list -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    index: int
    key: str
    class_key: str
    label: int
    prompt: str
    metadata: SatMetadata
    seed: int
    caption_fields: dict[str, str]
    template: str
    control: str | None = None  # the control map steering this sample (its file)
    control_kind: str | None = None


def sample_seed(spec_seed: int, class_key: str, index: int) -> int:
    digest = hashlib.blake2b(f"{spec_seed}:{class_key}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample_list(spec: SynthSpec) -> list[Sample]:
    """Every sample of the spec in order: classes interleaved round by round."""
    from .data.captions import CaptionTemplate, caption_fields

    out: list[Sample] = []
    for i in range(max(c.images for c in spec.classes)):
        for label, cls in enumerate(spec.classes):
            if i >= cls.images:
                continue
            seed = sample_seed(spec.seed, cls.key, i)
            meta = cls.metadata.draw(random.Random(seed))
            fields = {k: v for k, v in caption_fields(meta).items() if v is not None}
            fields["class"] = cls.words
            for k, v in spec.fields.items():
                fields.setdefault(k, v)
            prompt = CaptionTemplate(cls.prompt).render(fields)
            control = cls.control.files[i % len(cls.control.files)] if cls.control else None
            out.append(Sample(len(out), f"{cls.key}-{i:06d}", cls.key, label, prompt, meta, seed, fields, cls.prompt,
                              control, cls.control.kind if cls.control else None))
    return out


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


# --- the output folder ----------------------------------------------------------------------------


def _identity(spec: SynthSpec, model: str, version: str | None, controlnet: str | None = None) -> dict[str, Any]:
    return {"spec": spec.to_dict(), "digest": spec.digest(), "model": Path(model).name if Path(model).exists() else model,
            "model_version": version, "controlnet": controlnet, "samples": spec.num_samples,
            "shards": spec.num_shards}


def check_output(out: Path, identity: dict[str, Any], overwrite: bool) -> bool:
    """Raise if ``out`` holds anything but this spec's (possibly partial) output; True if finished."""
    spec_file = out / SPEC_FILE
    if spec_file.is_file():
        try:
            held = json.loads(spec_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            held = {}
        same = {k: held.get(k) for k in IDENTITY_KEYS} == {k: identity.get(k) for k in IDENTITY_KEYS}
        if not same and not overwrite:
            raise OutputExistsError(
                f"output folder {str(out)!r} holds another spec's data (spec {held.get('digest')}, model "
                f"{held.get('model_version')}{_controlnet_note(held)}; this is spec {identity['digest']}, model "
                f"{identity['model_version']}{_controlnet_note(identity)}); "
                "use a new folder or --overwrite")
        return same and (out / SUMMARY_FILE).is_file()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {str(out)!r} is a file, expected a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"output folder {str(out)!r} is not empty and holds no synthesize spec.json "
                                "(use a new folder or --overwrite)")
    return False


def _controlnet_note(identity: Mapping[str, Any]) -> str:
    return f" + ControlNet {identity['controlnet']}" if identity.get("controlnet") else ""


def _clear(out: Path) -> None:
    """--overwrite: remove what synthesize/prepare-data write (and their partial files), nothing else."""
    if not out.is_dir():
        return
    for p in out.iterdir():
        if p.is_file() and (re.fullmatch(r"\.?shard-\d{6}\.tar.*", p.name) or
                            p.name in (SPEC_FILE, MANIFEST_FILE, SUMMARY_FILE)):
            p.unlink()


def _remove_partials(out: Path, shard: int) -> None:
    for p in out.glob(f".{shard_name(shard)}.*partial*"):
        logger.info("removing %s left by an interrupted run", p)
        p.unlink(missing_ok=True)


def _batch_images(pipes: Mapping[str, Any], spec: SynthSpec, batch: list[Sample]) -> list[tuple[Any, Any]]:
    """(PIL image, control map or None) per sample of one batch: one prompt, metadata and generator
    each. Samples without control run through the base pipeline together; controlled ones in groups
    of one map size through the ControlNet pipeline (``pipes["control"]``), on their map's grid."""
    import numpy as np
    import torch

    from .conditional import control_condition, pad_to, padded_size, read_input

    def common(pipe, group: list[Sample]) -> dict[str, Any]:
        device = pipe._execution_device
        return dict(
            prompt=[s.prompt for s in group], metadata=[s.metadata for s in group], num_inference_steps=spec.steps,
            guidance_scale=spec.guidance, metadata_guidance_scale=spec.metadata_guidance,
            negative_prompt=None if spec.negative_prompt is None else [spec.negative_prompt] * len(group),
            generator=[torch.Generator(device=device).manual_seed(s.seed) for s in group])

    out: list[tuple[Any, Any]] = [None] * len(batch)  # type: ignore[list-item]
    plain = [j for j, s in enumerate(batch) if s.control is None]
    if plain:
        group = [batch[j] for j in plain]
        images = pipes["base"](height=spec.size, width=spec.size, **common(pipes["base"], group)).images
        for j, image in zip(plain, images):
            out[j] = (image, None)
    maps: dict[tuple[int, int], list[tuple[int, Any]]] = {}
    for j, s in enumerate(batch):
        if s.control is not None:
            raster = read_input(s.control)
            maps.setdefault((raster.height, raster.width), []).append((j, raster))
    for (h, w), items in maps.items():
        pipe = pipes["control"]
        channels = pipe.controlnet.config.conditioning_channels
        cond = torch.stack([torch.from_numpy(control_condition(r, batch[j].control_kind, channels)) for j, r in items])
        pad_h, pad_w = padded_size(h, w, pipe.size_multiple)
        result = pipe(control_image=pad_to(cond, pad_h, pad_w), cond_metadata=[r.metadata for _, r in items],
                      height=pad_h, width=pad_w, output_type="np", **common(pipe, [batch[j] for j, _ in items]))
        for (j, _), array, single in zip(items, result.images, cond[:, 0]):
            image = np.clip(np.asarray(array)[:h, :w] * 255.0 + 0.5, 0, 255).astype(np.uint8)
            out[j] = (image, (single.numpy() > 0.5).astype(np.uint8))
    return out


def _record(sample: Sample, image, identity: dict[str, Any], spec: SynthSpec, scheduler: str) -> dict[str, Any]:
    return {
        "key": sample.key, "class": sample.class_key, "label": sample.label, "index": sample.index,
        "seed": sample.seed, "caption": sample.prompt, "metadata": sample.metadata.to_dict(),
        "caption_fields": sample.caption_fields, "caption_template": sample.template,
        "source": f"synthesize:{identity['model']}", "spec_digest": identity["digest"],
        "generation": {"model": identity["model"], "model_version": identity["model_version"], "steps": spec.steps,
                       "guidance_scale": spec.guidance, "metadata_guidance_scale": spec.metadata_guidance,
                       "negative_prompt": spec.negative_prompt, "scheduler": scheduler},
        "pixel_range": [[0.0] * 3, [255.0] * 3], "dtype": "uint8", "shape": list(image.shape),
        **({"control": {"kind": sample.control_kind, "file": Path(sample.control).name,
                        "controlnet": identity.get("controlnet")},
            "mask_source": f"{sample.control_kind} map {Path(sample.control).name}"} if sample.control else {}),
    }


def write_index(out: Path, spec: SynthSpec, samples: list[Sample], identity: dict[str, Any],
                elapsed: float | None = None) -> dict[str, Any]:
    """manifest.jsonl + summary.json (pure functions of the spec), once every shard is written."""
    from .data.manifest import write_manifest
    from .data.prepare import _row, _Stats

    stats = _Stats()
    rows = []
    for s in samples:
        row = _row(s.key, shard_name(s.index // spec.shard_size), identity["source"], s.prompt, s.metadata)
        rows.append({**row, "class": s.class_key, "label": s.label, "seed": s.seed,
                     **({"mask": f"{s.key}.mask.png", "control_file": Path(s.control).name} if s.control else {})})
        stats.add_metadata(s.metadata)
    write_manifest(rows, out / MANIFEST_FILE, overwrite=True)
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.class_key] = counts.get(s.class_key, 0) + 1
    summary = {
        "synthesize": identity["spec"], "config_digest": identity["digest"], "model": identity["model"],
        "model_version": identity["model_version"], "controlnet": identity.get("controlnet"), "samples": len(samples),
        "shards": [shard_name(k) for k in range(spec.num_shards)], "classes": counts,
        "metadata_ranges": stats.ranges, "metadata_unknown": stats.unknown,
    }
    if elapsed is not None:
        summary["last_run_seconds"] = round(elapsed, 2)
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2), overwrite=True)
    return summary


def _process_state(device: str | None):
    """accelerate's process state: this process's rank among those ``accelerate launch`` started
    (CPU processes when asked, when the device is the CPU, or when there is no GPU)."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or str(device or "").startswith("cpu") or \
        not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _controlnet_identity(location: str, controlnet: str | os.PathLike | None) -> tuple[Path, str]:
    """The ControlNet a controlled spec uses (``controlnet``, else the model's ``controlnet_control/``
    or ``controlnet/``) and its identity: folder name @ a short hash of its weights."""
    from .loading import local_model_folder, model_layout
    from .pipelines.pipeline_controlnet import controlnet_class, controlnet_folder, find_controlnet_folder

    if controlnet is not None:
        folder = controlnet_folder(controlnet)
    else:
        folder = find_controlnet_folder(model_layout(local_model_folder(location)).root, "control")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"the spec has control maps but {str(folder)!r} holds no ControlNet: pass --controlnet PATH, a ControlNet "
            "trained for those maps (diffusionsat train --task control --control-kind mask --mask-vector ...)")
    if controlnet_class(folder).__name__ != "SatControlNet":
        raise ValueError(f"--controlnet {str(folder)!r}: a {controlnet_class(folder).__name__}; control maps need a "
                         "2D SatControlNet")
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin")):
        digest.update(file.read_bytes())
    return folder, f"{folder.parent.name}/{folder.name}@{digest.hexdigest()[:12]}"


def _load_pipelines(location: str, controlnet: Path | None, device: Any) -> dict[str, Any]:
    """The base pipeline, and for a controlled spec the ControlNet pipeline sharing its modules."""
    from .loading import load_pipeline

    if controlnet is None:
        return {"base": load_pipeline(location, device=device)}
    from .pipelines import DiffusionSatPipeline
    from .pipelines.pipeline_controlnet import load_controlnet_pipeline

    control = load_controlnet_pipeline(location, controlnet, device=device)
    base = DiffusionSatPipeline(**{k: v for k, v in control.components.items() if k != "controlnet"})
    return {"base": base.to(device), "control": control}


def synthesize(spec: SynthSpec, out: str | os.PathLike, *, model: str | os.PathLike | None = None,
               controlnet: str | os.PathLike | None = None, device: str | None = None, overwrite: bool = False,
               progress: Callable[[int], Any] | None = None,
               on_shard: Callable[[int, Path], None] | None = None) -> dict[str, Any]:
    """Write ``spec``'s samples to ``out`` (resuming a partial folder of the same spec).

    Under ``accelerate launch`` each process takes shards ``rank, rank + N, ...``. ``progress(total)``
    returns a bar with ``update(n)``/``close()`` (this process's remaining samples); ``on_shard(k,
    path)`` is called after each shard this process writes. Returns the summary dict (with
    ``written`` = shards written by this process and ``up_to_date``). Classes with ``control`` maps are
    generated by ``controlnet`` (default: the model's ``controlnet_control/`` or ``controlnet/``) and
    their maps are written beside the images (``{key}.mask.png``).
    """
    from .data.shards import ShardWriter, encode_image
    from .loading import model_version, resolve_model

    out = Path(out)
    location = resolve_model(model)
    if controlnet is not None and not spec.controlled:
        raise ValueError("--controlnet: no class of the spec has control maps (classes.<key>.control)")
    cn_folder, cn_name = _controlnet_identity(location, controlnet) if spec.controlled else (None, None)
    identity = _identity(spec, location, model_version(location), cn_name)
    identity["source"] = f"synthesize:{identity['model']}"
    finished = check_output(out, identity, overwrite)  # every rank checks before anything is written
    state = _process_state(device)
    if finished and not overwrite:
        summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
        return {**summary, "written": [], "up_to_date": True, "main_process": state.is_main_process}
    if state.is_main_process:
        if overwrite:
            _clear(out)
        out.mkdir(parents=True, exist_ok=True)
        if not (out / SPEC_FILE).is_file():
            atomic_write_text(out / SPEC_FILE, json.dumps({k: v for k, v in identity.items() if k != "source"},
                                                          indent=2))
    state.wait_for_everyone()

    started = time.perf_counter()
    samples = sample_list(spec)
    mine = [k for k in range(spec.num_shards) if k % state.num_processes == state.process_index]
    todo = [k for k in mine if not (out / shard_name(k)).is_file()]
    logger.info("rank %d/%d: %d of its %d shards to write", state.process_index, state.num_processes, len(todo), len(mine))
    written: list[str] = []
    if todo:
        import numpy as np

        from .schedulers import make_scheduler, scheduler_name

        pipes = _load_pipelines(location, cn_folder, device or state.device)
        for pipe in pipes.values():
            pipe.set_progress_bar_config(disable=True)
        if spec.scheduler:
            chosen = make_scheduler(spec.scheduler, pipes["base"].scheduler)
            for pipe in pipes.values():
                pipe.scheduler = chosen
        scheduler = scheduler_name(pipes["base"].scheduler)
        bar = progress(sum(len(samples[k * spec.shard_size:(k + 1) * spec.shard_size]) for k in todo)) \
            if progress else None
        try:
            for k in todo:
                _remove_partials(out, k)
                chunk = samples[k * spec.shard_size:(k + 1) * spec.shard_size]
                with ShardWriter(out, max_samples=len(chunk), start_index=k) as writer:
                    for b in range(0, len(chunk), spec.batch_size):
                        batch = chunk[b:b + spec.batch_size]
                        for sample, (made, control) in zip(batch, _batch_images(pipes, spec, batch)):
                            pixels = np.asarray(made.convert("RGB")) if hasattr(made, "convert") else made
                            image = np.moveaxis(pixels, -1, 0)
                            ext, data = encode_image(image)
                            entries = {ext: data, "json": _record(sample, image, identity, spec, scheduler),
                                       "txt": sample.prompt}
                            if control is not None:
                                entries["mask.png"] = encode_image(control[None] * 255)[1]
                            writer.write(sample.key, entries)
                        if bar is not None:
                            bar.update(len(batch))
                written.append(shard_name(k))
                if on_shard is not None:
                    on_shard(k, out / shard_name(k))
        finally:
            if bar is not None:
                bar.close()
    state.wait_for_everyone()
    elapsed = time.perf_counter() - started
    missing = [shard_name(k) for k in range(spec.num_shards) if not (out / shard_name(k)).is_file()]
    if missing:
        raise RuntimeError(f"{len(missing)} shard(s) missing after the run (first {missing[0]}); rerun to finish")
    if state.is_main_process:
        summary = write_index(out, spec, samples, identity, elapsed)
    state.wait_for_everyone()
    if not state.is_main_process:
        summary = json.loads((out / SUMMARY_FILE).read_text(encoding="utf-8"))
    return {**summary, "written": written, "up_to_date": False, "seconds": elapsed,
            "main_process": state.is_main_process}
