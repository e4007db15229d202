"""Satellite-image metadata and its one normalisation to model inputs (SPEC §1).

The seven values, in the fixed order of the original DiffusionSat checkpoints, are
``lon, lat, gsd, cloud_cover, year, month, day``. Every field may be missing ("unknown"); an
unknown field is encoded as ``unknown_value`` *after* normalisation (0.0 in the original code,
which also feeds an all-``unknown`` vector to the unconditional branch of classifier-free guidance).
"""

from __future__ import annotations

import calendar
import datetime as _dt
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are made, so the CLI starts without it
    import torch

#: The model's field order (index = position in the normalised vector).
METADATA_FIELDS: tuple[str, ...] = ("lon", "lat", "gsd", "cloud_cover", "year", "month", "day")
NUM_METADATA = len(METADATA_FIELDS)

# --- The normalisation constants, in one place (original `metadata_normalize` defaults) -----------
SCALE = 1000.0
BASE_LON = 180.0
BASE_LAT = 90.0
BASE_YEAR = 1980
MAX_YEAR = 2100
MAX_GSD = 1.0
#: The original's encoding of an unknown field (after normalisation).
ORIGINAL_UNKNOWN_VALUE = 0.0

#: Valid ranges: (low, high, low_inclusive, high_inclusive).
VALID_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "lon": (-180.0, 180.0, True, True),
    "lat": (-90.0, 90.0, True, True),
    "gsd": (0.0, 1000.0, False, True),
    "cloud_cover": (0.0, 1.0, True, True),
    "year": (1950, 2100, True, True),
    "month": (1, 12, True, True),
    "day": (1, 31, True, True),
}

_INPUT_KEYS = set(METADATA_FIELDS) | {"date"}


class MetadataError(ValueError):
    """A metadata value is missing its type, range or calendar sense; names the field."""

    def __init__(self, field: str, value: Any, reason: str):
        self.field = field
        self.value = value
        super().__init__(f"{field}={value!r}: {reason}")


def describe_range(field: str) -> str:
    """Human-readable allowed range of a field, e.g. ``[-90, 90]`` or ``(0, 1000]``."""
    low, high, lo_inc, hi_inc = VALID_RANGES[field]
    fmt = (lambda v: f"{v:g}") if isinstance(low, float) else str
    return f"{'[' if lo_inc else '('}{fmt(low)}, {fmt(high)}{']' if hi_inc else ')'}"


def _check_number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MetadataError(field, value, f"must be a number in {describe_range(field)}")
    value = float(value)
    if not math.isfinite(value):
        raise MetadataError(field, value, f"must be a finite number in {describe_range(field)}")
    low, high, lo_inc, hi_inc = VALID_RANGES[field]
    below = value < low or (value == low and not lo_inc)
    above = value > high or (value == high and not hi_inc)
    if below or above:
        raise MetadataError(field, value, f"out of range; allowed {describe_range(field)}")
    return value


def _check_int(field: str, value: Any) -> int:
    number = _check_number(field, value)
    if number != int(number):
        raise MetadataError(field, value, f"must be a whole number in {describe_range(field)}")
    return int(number)


def parse_date(text: str | _dt.date, field: str = "date") -> tuple[int, int | None, int | None]:
    """Parse an ISO-8601 date (``2021-06-15``, ``2021-06-15T10:00:00Z``, ``2021-06`` or ``2021``).

    Returns ``(year, month, day)`` where month/day are ``None`` for partial dates (e.g. a Landsat
    composite known only by its year). Impossible dates raise :class:`MetadataError`.
    """
    if isinstance(text, _dt.datetime):
        return text.year, text.month, text.day
    if isinstance(text, _dt.date):
        return text.year, text.month, text.day
    if not isinstance(text, str) or not text.strip():
        raise MetadataError(field, text, "must be an ISO-8601 date such as 2021-06-15")
    raw = text.strip()
    parts = raw.split("T")[0].split(" ")[0].split("-")
    if not all(p.isdigit() for p in parts) or len(parts) > 3 or len(parts[0]) != 4:
        raise MetadataError(field, text, "not an ISO-8601 date (expected YYYY-MM-DD, YYYY-MM or YYYY)")
    year = int(parts[0])
    month = int(parts[1]) if len(parts) > 1 else None
    day = int(parts[2]) if len(parts) > 2 else None
    if len(parts) == 3:
        try:
            _dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            # Separate "impossible date" from "bad time part" for a precise message.
            if month is not None and 1 <= month <= 12 and day is not None:
                last = calendar.monthrange(year, month)[1] if 1 <= year <= 9999 else 31
                if not 1 <= day <= last:
                    raise MetadataError(
                        field, text,
                        f"not a real calendar date ({calendar.month_name[month]} {year} has {last} days)",
                    ) from None
            raise MetadataError(field, text, "not a valid ISO-8601 date/time") from None
    return year, month, day


@dataclass(frozen=True)
class SatMetadata:
    """Metadata of one satellite image; every field optional (``None`` = unknown).

    ``gsd`` is in metres per pixel *of the image the model sees* (see :meth:`resized`).
    ``cloud_cover`` is a fraction in [0, 1]. The date may be partial (year only, year+month).
    """

    lon: float | None = None
    lat: float | None = None
    gsd: float | None = None
    cloud_cover: float | None = None
    year: int | None = None
    month: int | None = None
    day: int | None = None

    def __post_init__(self) -> None:
        for name in ("lon", "lat", "gsd", "cloud_cover"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _check_number(name, value))
        for name in ("year", "month", "day"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _check_int(name, value))
        if self.day is not None and self.month is not None:
            # Leap-year-agnostic when the year is unknown (29 February is possible).
            last = calendar.monthrange(self.year if self.year is not None else 2000, self.month)[1]
            if self.day > last:
                when = f"{calendar.month_name[self.month]}{'' if self.year is None else ' ' + str(self.year)}"
                raise MetadataError("day", self.day, f"not a real calendar date ({when} has {last} days)")

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, cloud_cover_percent: bool = False) -> SatMetadata:
        """Build from a dict such as ``{"lat": 47.0, "lon": -99.2, "date": "2019-09-04"}``.

        Unknown keys are rejected (typos would otherwise silently become "unknown").
        ``cloud_cover_percent=True`` accepts cloud cover in percent (0–100).
        """
        if not isinstance(data, Mapping):
            raise MetadataError("metadata", data, "must be a JSON object / dict")
        extra = set(data) - _INPUT_KEYS
        if extra:
            raise MetadataError(
                sorted(extra)[0], data[sorted(extra)[0]],
                f"unknown metadata field; allowed: {', '.join(sorted(_INPUT_KEYS))}",
            )
        values: dict[str, Any] = {k: data.get(k) for k in METADATA_FIELDS if data.get(k) is not None}
        if data.get("date") is not None:
            if any(k in values for k in ("year", "month", "day")):
                raise MetadataError("date", data["date"], "give either 'date' or year/month/day, not both")
            year, month, day = parse_date(data["date"])
            values.update({k: v for k, v in (("year", year), ("month", month), ("day", day)) if v is not None})
        if cloud_cover_percent and values.get("cloud_cover") is not None:
            cc = values["cloud_cover"]
            if isinstance(cc, (int, float)) and not isinstance(cc, bool):
                if not 0 <= cc <= 100:
                    raise MetadataError("cloud_cover", cc, "out of range; allowed [0, 100] percent")
                values["cloud_cover"] = cc / 100.0
        return cls(**values)

    @classmethod
    def from_json(cls, source: str | os.PathLike, **kwargs: Any) -> SatMetadata:
        """Parse a JSON string, or read a ``.json`` file."""
        text = str(source)
        if not text.lstrip().startswith("{") and os.path.exists(text):
            with open(text, encoding="utf-8") as fh:
                text = fh.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise MetadataError("metadata", str(source)[:60], f"not valid JSON ({err.msg})") from None
        return cls.from_dict(data, **kwargs)

    @classmethod
    def from_cli(
        cls,
        *,
        lon: str | float | None = None,
        lat: str | float | None = None,
        gsd: str | float | None = None,
        cloud_cover: str | float | None = None,
        date: str | None = None,
        cloud_cover_percent: bool = False,
    ) -> SatMetadata:
        """Build from command-line strings; a non-numeric string names its field in the error."""
        values: dict[str, Any] = {}
        for name, raw in (("lon", lon), ("lat", lat), ("gsd", gsd), ("cloud_cover", cloud_cover)):
            if raw is None:
                continue
            try:
                values[name] = float(raw)
            except (TypeError, ValueError):
                raise MetadataError(name, raw, f"must be a number in {describe_range(name)}") from None
        if date is not None:
            values["date"] = date
        return cls.from_dict(values, cloud_cover_percent=cloud_cover_percent)

    # --- views ------------------------------------------------------------------------------
    @property
    def date(self) -> _dt.date | None:
        """The full calendar date, or ``None`` when any part is unknown."""
        if None in (self.year, self.month, self.day):
            return None
        return _dt.date(self.year, self.month, self.day)  # type: ignore[arg-type]

    def date_string(self) -> str | None:
        """ISO form of what is known of the date: ``2021-06-15``, ``2021-06``, ``2021`` or ``None``."""
        if self.year is None:
            return None
        text = f"{self.year:04d}"
        if self.month is not None:
            text += f"-{self.month:02d}"
            if self.day is not None:
                text += f"-{self.day:02d}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (only known fields); ``from_dict(to_dict())`` round-trips."""
        out: dict[str, Any] = {
            k: getattr(self, k) for k in ("lon", "lat", "gsd", "cloud_cover") if getattr(self, k) is not None
        }
        if self.date is not None:
            out["date"] = self.date.isoformat()
        else:
            out.update({k: getattr(self, k) for k in ("year", "month", "day") if getattr(self, k) is not None})
        return out

    def values(self) -> tuple[float | None, ...]:
        """The seven raw values in model order (``None`` = unknown)."""
        return tuple(getattr(self, k) for k in METADATA_FIELDS)

    def replace(self, **changes: Any) -> SatMetadata:
        data = {k: getattr(self, k) for k in METADATA_FIELDS}
        data.update(changes)
        return SatMetadata(**data)

    def resized(self, from_size: int, to_size: int) -> SatMetadata:
        """Metadata of this image resized from ``from_size`` to ``to_size`` pixels (GSD scales)."""
        if self.gsd is None:
            return self
        return self.replace(gsd=self.gsd * from_size / to_size)

    def is_unknown(self) -> bool:
        return all(v is None for v in self.values())

    # --- the normalisation --------------------------------------------------------------------
    def normalize(self, unknown_value: float = ORIGINAL_UNKNOWN_VALUE) -> tuple[float, ...]:
        """The seven normalised model inputs (SPEC §1), unknown fields as ``unknown_value``."""
        return normalize_values(self.values(), unknown_value=unknown_value)

    @classmethod
    def denormalize(cls, values: Sequence[float], unknown_value: float = ORIGINAL_UNKNOWN_VALUE) -> SatMetadata:
        """Inverse of :meth:`normalize`. Values equal to ``unknown_value`` become unknown."""
        return cls(**dict(zip(METADATA_FIELDS, denormalize_values(values, unknown_value=unknown_value))))


def normalize_values(
    raw: Sequence[float | None], unknown_value: float = ORIGINAL_UNKNOWN_VALUE
) -> tuple[float, ...]:
    """Raw ``(lon, lat, gsd, cloud, year, month, day)`` → model inputs (original formula)."""
    if len(raw) != NUM_METADATA:
        raise ValueError(f"expected {NUM_METADATA} metadata values {METADATA_FIELDS}, got {len(raw)}")
    lon, lat, gsd, cloud, year, month, day = raw
    converted = (
        None if lon is None else (lon + BASE_LON) / (180.0 + BASE_LON) * SCALE,
        None if lat is None else (lat + BASE_LAT) / (90.0 + BASE_LAT) * SCALE,
        None if gsd is None else gsd / MAX_GSD * SCALE,
        None if cloud is None else cloud * SCALE,
        None if year is None else (year - BASE_YEAR) / (MAX_YEAR - BASE_YEAR) * SCALE,
        None if month is None else month / 12.0 * SCALE,
        None if day is None else day / 31.0 * SCALE,
    )
    return tuple(unknown_value if v is None else float(v) for v in converted)


def denormalize_values(
    normalized: Sequence[float], unknown_value: float = ORIGINAL_UNKNOWN_VALUE
) -> tuple[float | int | None, ...]:
    """Model inputs → raw values; the exact inverse of :func:`normalize_values`."""
    if len(normalized) != NUM_METADATA:
        raise ValueError(f"expected {NUM_METADATA} normalised values, got {len(normalized)}")
    vals = [None if float(v) == unknown_value else float(v) for v in normalized]
    lon, lat, gsd, cloud, year, month, day = vals
    return (
        None if lon is None else lon / SCALE * (180.0 + BASE_LON) - BASE_LON,
        None if lat is None else lat / SCALE * (90.0 + BASE_LAT) - BASE_LAT,
        None if gsd is None else gsd / SCALE * MAX_GSD,
        None if cloud is None else cloud / SCALE,
        None if year is None else round(year / SCALE * (MAX_YEAR - BASE_YEAR) + BASE_YEAR),
        None if month is None else round(month / SCALE * 12.0),
        None if day is None else round(day / SCALE * 31.0),
    )


MetadataLike = SatMetadata | Mapping[str, Any] | None


def as_metadata(value: MetadataLike) -> SatMetadata:
    """Accept a :class:`SatMetadata`, a dict, or ``None`` (all unknown)."""
    if value is None:
        return SatMetadata()
    if isinstance(value, SatMetadata):
        return value
    return SatMetadata.from_dict(value)


def metadata_tensor(
    items: Iterable[MetadataLike],
    unknown_value: float = ORIGINAL_UNKNOWN_VALUE,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Stack metadata into the ``(batch, 7)`` normalised tensor the models take (float32 by default)."""
    import torch

    rows = [as_metadata(m).normalize(unknown_value) for m in items]
    return torch.tensor(rows, device=device, dtype=dtype or torch.float32).reshape(len(rows), NUM_METADATA)
