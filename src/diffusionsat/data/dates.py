"""Acquisition dates and cloud cover from where remote-sensing files keep them.

Sources, in the order :func:`date_for_file` tries them:

1. a JSON sidecar ``<name>.json`` with ``date``/``timestamp``/``acquisition_date`` (and
   ``cloud_cover``, a fraction, or ``cloud_cover_percent``);
2. a Landsat MTL file beside the image whose product/scene ID starts the image's name
   (``DATE_ACQUIRED``, ``CLOUD_COVER`` in percent);
3. GeoTIFF tags that name an acquisition (``ACQUISITION_DATE``, ``DATE_ACQUIRED``,
   ``ACQUISITIONDATETIME``, ``SENSING_TIME``, ``DATETIME_ORIGINAL``, ``timestamp``);
   ``TIFFTAG_DATETIME`` is *not* used: by the TIFF standard it is when the file was written;
4. a user file-name pattern such as ``*_{YYYYMMDD}.tif`` or ``{YYYY}.tif`` (``{YYYY}``, ``{MM}``,
   ``{DD}``, ``{DOY}`` (day of year), ``{YYYYMMDD}``, ``*`` = anything);
5. Landsat scene/product IDs in the name: ``LC81070352015122LGN00`` (year + day of year) and
   ``LE07_L2SP_225078_20110306_...`` (acquisition date is the 4th part).
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..metadata import MetadataError, parse_date
from .errors import DataError

logger = logging.getLogger(__name__)

_PLACEHOLDERS = {
    "YYYYMMDD": r"(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})",
    "YYYY": r"(?P<year>\d{4})",
    "MM": r"(?P<month>\d{2})",
    "DD": r"(?P<day>\d{2})",
    "DOY": r"(?P<doy>\d{3})",
}

#: Pre-collection Landsat scene ID: L + sensor + satellite + path(3) + row(3) + year(4) + doy(3) + station + version.
LANDSAT_SCENE_ID = re.compile(r"L[COTEM]\d(?P<path>\d{3})(?P<row>\d{3})(?P<year>\d{4})(?P<doy>\d{3})[A-Z]{3}\d{2}")
#: Collection product ID: LXSS_LLLL_PPPRRR_YYYYMMDD_yyyymmdd_CC_TX (processing date and rest optional).
LANDSAT_PRODUCT_ID = re.compile(
    r"L(?P<sensor>[COTEM])(?P<sat>\d{2})_(?P<level>L1TP|L1GT|L1GS|L2SP|L2SR)_(?P<path>\d{3})(?P<row>\d{3})_(?P<date>\d{8})"
)

_DATE_TAGS = ("ACQUISITION_DATE", "DATE_ACQUIRED", "ACQUISITIONDATETIME", "SENSING_TIME",
              "DATETIME_ORIGINAL", "EXIF_DATETIMEORIGINAL", "TIMESTAMP", "DATE")
_SIDECAR_DATE_KEYS = ("date", "timestamp", "acquisition_date", "datetime")


@dataclass(frozen=True)
class Acquisition:
    """What is known of an acquisition: date parts (any may be ``None``), cloud cover, where from."""

    year: int | None = None
    month: int | None = None
    day: int | None = None
    cloud_cover: float | None = None
    source: str | None = None
    sensor: str | None = None

    def as_metadata_fields(self) -> dict[str, Any]:
        return {k: v for k, v in (("year", self.year), ("month", self.month), ("day", self.day),
                                  ("cloud_cover", self.cloud_cover)) if v is not None}


def _from_doy(year: int, doy: int, what: str) -> tuple[int, int, int]:
    days = 366 if _dt.date(year, 12, 31).timetuple().tm_yday == 366 else 365
    if not 1 <= doy <= days:
        raise MetadataError("date", what, f"day of year {doy} out of range; allowed [1, {days}] in {year}")
    date = _dt.date(year, 1, 1) + _dt.timedelta(days=doy - 1)
    return date.year, date.month, date.day


def compile_date_pattern(pattern: str) -> re.Pattern[str]:
    """Turn ``*_{YYYYMMDD}.tif`` into a regular expression over the file *name*."""
    out, pos = "", 0
    for m in re.finditer(r"\{([A-Z]+)\}", pattern):
        out += fnmatch.translate(pattern[pos:m.start()]).removeprefix("(?s:").removesuffix(")\\Z")
        if m.group(1) not in _PLACEHOLDERS:
            raise ValueError(
                f"date pattern {pattern!r}: unknown placeholder {{{m.group(1)}}}; "
                f"allowed {', '.join('{' + p + '}' for p in _PLACEHOLDERS)}"
            )
        out += _PLACEHOLDERS[m.group(1)]
        pos = m.end()
    out += fnmatch.translate(pattern[pos:]).removeprefix("(?s:").removesuffix(")\\Z")
    if "(?P<year>" not in out:
        raise ValueError(f"date pattern {pattern!r}: needs {{YYYY}} or {{YYYYMMDD}}")
    return re.compile(out + r"\Z", re.IGNORECASE)


def date_from_pattern(name: str, pattern: str | re.Pattern[str]) -> tuple[int, int | None, int | None] | None:
    """Date parts from a file name matched against a user pattern; ``None`` when it does not match."""
    regex = compile_date_pattern(pattern) if isinstance(pattern, str) else pattern
    m = regex.match(Path(name).name)
    if m is None:
        return None
    parts = m.groupdict()
    year = int(parts["year"])
    if parts.get("doy"):
        return _from_doy(year, int(parts["doy"]), name)
    month = int(parts["month"]) if parts.get("month") else None
    day = int(parts["day"]) if parts.get("day") else None
    text = f"{year:04d}" + (f"-{month:02d}" if month else "") + (f"-{day:02d}" if month and day else "")
    return parse_date(text, field=f"date in file name {Path(name).name!r}")


def landsat_id_date(name: str) -> Acquisition | None:
    """Acquisition date (and sensor) from a Landsat scene or product ID anywhere in ``name``."""
    stem = Path(name).name
    m = LANDSAT_PRODUCT_ID.search(stem)
    if m:
        d = m.group("date")
        y, mo, da = parse_date(f"{d[:4]}-{d[4:6]}-{d[6:]}", field=f"date in Landsat ID {stem!r}")
        return Acquisition(y, mo, da, source="landsat product id", sensor=f"Landsat {int(m.group('sat'))}")
    m = LANDSAT_SCENE_ID.search(stem)
    if m:
        y, mo, da = _from_doy(int(m.group("year")), int(m.group("doy")), stem)
        return Acquisition(y, mo, da, source="landsat scene id", sensor=f"Landsat {stem[m.start() + 2]}")
    return None


def read_mtl(path: str | os.PathLike) -> dict[str, str]:
    """All ``KEY = value`` pairs of a Landsat MTL text file (quotes removed; first occurrence wins)."""
    values: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise DataError(path, f"cannot read MTL file ({err.strerror or err})") from None
    for line in text.splitlines():
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip()
        if key and key not in ("GROUP", "END_GROUP"):
            values.setdefault(key, value.strip().strip('"'))
    if "DATE_ACQUIRED" not in values and "ACQUISITION_DATE" not in values:
        raise DataError(path, "not a Landsat MTL file (no DATE_ACQUIRED)")
    return values


def acquisition_from_mtl(path: str | os.PathLike) -> Acquisition:
    """Date, cloud cover (percent → fraction) and spacecraft from a Landsat MTL file."""
    mtl = read_mtl(path)
    y, mo, da = parse_date(mtl.get("DATE_ACQUIRED") or mtl["ACQUISITION_DATE"], field=f"DATE_ACQUIRED in {path}")
    cloud = None
    raw = mtl.get("CLOUD_COVER")
    if raw is not None:
        try:
            value = float(raw)
        except ValueError:
            raise DataError(path, f"CLOUD_COVER={raw!r} is not a number") from None
        if value >= 0:  # -1 means "not computed"
            if value > 100:
                raise DataError(path, f"CLOUD_COVER={value} out of range; allowed [0, 100] percent")
            cloud = value / 100.0
    sensor = mtl.get("SPACECRAFT_ID", "").replace("_", " ").title() or None
    return Acquisition(y, mo, da, cloud_cover=cloud, source=f"MTL {Path(path).name}", sensor=sensor)


def _landsat_key(text: str) -> tuple[str, str, str] | None:
    """(path, row, YYYYMMDD) of a Landsat scene or product ID in ``text``."""
    m = LANDSAT_PRODUCT_ID.search(text)
    if m:
        return m.group("path"), m.group("row"), m.group("date")
    m = LANDSAT_SCENE_ID.search(text)
    if m:
        y, mo, da = _from_doy(int(m.group("year")), int(m.group("doy")), text)
        return m.group("path"), m.group("row"), f"{y:04d}{mo:02d}{da:02d}"
    return None


def find_mtl(image: str | os.PathLike) -> Path | None:
    """The MTL file beside ``image`` that describes the same Landsat scene (path, row and date).

    Matching on the scene rather than on the file name survives renamed products (an L1 band next
    to the L2 MTL of the same acquisition) and never pairs an image with another scene's MTL.
    """
    image = Path(image)
    key = _landsat_key(image.name)
    if key is None:
        return None
    for mtl in sorted(image.parent.glob("*_MTL.txt")):
        try:
            values = read_mtl(mtl)
        except DataError:
            continue
        ids = " ".join(v for k, v in values.items() if k in ("LANDSAT_PRODUCT_ID", "LANDSAT_SCENE_ID"))
        if _landsat_key(ids or mtl.name) == key:
            return mtl
    return None


def _sidecar_for(image: Path) -> Path | None:
    for candidate in (image.with_suffix(".json"), image.with_name(image.name + ".json")):
        if candidate.is_file():
            return candidate
    return None


def read_json(path: str | os.PathLike) -> Any:
    """Load a JSON file; a broken one raises :class:`DataError` naming it and the line."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise DataError(path, f"unreadable JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except UnicodeDecodeError:
        raise DataError(path, "unreadable JSON (not UTF-8 text)") from None
    except OSError as err:
        raise DataError(path, f"cannot read ({err.strerror or err})") from None


def acquisition_from_sidecar(path: str | os.PathLike) -> Acquisition:
    """Date and cloud cover from a JSON sidecar (``date``/``timestamp``, ``cloud_cover`` fraction)."""
    data = read_json(path)
    if not isinstance(data, Mapping):
        raise DataError(path, "sidecar JSON must be an object")
    year = month = day = None
    for key in _SIDECAR_DATE_KEYS:
        if data.get(key):
            try:
                year, month, day = parse_date(str(data[key]), field=key)
            except MetadataError as err:
                raise DataError(path, str(err)) from None
            break
    cloud = data.get("cloud_cover")
    if cloud is None and data.get("cloud_cover_percent") is not None:
        cloud = float(data["cloud_cover_percent"]) / 100.0
    if cloud is not None and (isinstance(cloud, bool) or not isinstance(cloud, (int, float)) or not 0 <= cloud <= 1):
        raise DataError(path, f"cloud_cover={cloud!r} must be a fraction in [0, 1] "
                                  "(give percent as cloud_cover_percent)")
    return Acquisition(year, month, day, cloud_cover=cloud, source=f"sidecar {Path(path).name}")


def acquisition_from_tags(tags: Mapping[str, str]) -> Acquisition | None:
    """Date from GeoTIFF tags that name an acquisition time (never ``TIFFTAG_DATETIME``)."""
    upper = {k.upper(): v for k, v in tags.items()}
    for key in _DATE_TAGS:
        raw = upper.get(key)
        if not raw:
            continue
        text = raw.strip()
        if re.match(r"^\d{4}:\d{2}:\d{2}", text):  # EXIF style 2020:05:18 10:00:00
            text = text[:10].replace(":", "-")
        try:
            y, mo, da = parse_date(text, field=f"tag {key}")
        except MetadataError:
            logger.warning("ignoring tag %s=%r: not a date", key, raw)
            continue
        return Acquisition(y, mo, da, source=f"tag {key}")
    return None


def date_for_file(
    path: str | os.PathLike,
    *,
    tags: Mapping[str, str] | None = None,
    date_pattern: str | None = None,
) -> Acquisition:
    """Everything known about when (and how cloudy) ``path`` was acquired; unknown parts ``None``.

    A date pattern given by the user that does not match the name is not an error (the other
    sources still apply), but a match with an impossible date is.
    """
    path = Path(path)
    cloud: float | None = None
    sidecar = _sidecar_for(path)
    if sidecar is not None:
        acq = acquisition_from_sidecar(sidecar)
        cloud = acq.cloud_cover
        if acq.year is not None:
            return acq
    mtl = find_mtl(path)
    if mtl is not None:
        acq = acquisition_from_mtl(mtl)
        return Acquisition(acq.year, acq.month, acq.day, cloud if cloud is not None else acq.cloud_cover,
                           acq.source, acq.sensor)
    if tags:
        acq = acquisition_from_tags(tags)
        if acq is not None:
            return Acquisition(acq.year, acq.month, acq.day, cloud, acq.source)
    landsat = landsat_id_date(path.name)
    if date_pattern:
        try:
            parts = date_from_pattern(path.name, date_pattern)
        except MetadataError as err:
            raise DataError(path, str(err)) from None
        if parts is not None:
            return Acquisition(*parts, cloud_cover=cloud, source=f"file name pattern {date_pattern}",
                               sensor=landsat.sensor if landsat else None)
    if landsat is not None:
        return Acquisition(landsat.year, landsat.month, landsat.day, cloud, landsat.source, landsat.sensor)
    return Acquisition(cloud_cover=cloud)
