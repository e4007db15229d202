"""Plain manifests: one row per image with ``path, caption, lat, lon, gsd, cloud_cover, date``.

Formats by extension: ``.csv``, ``.jsonl`` (one JSON object per line), ``.parquet`` (needs
pyarrow, in the ``train`` extra). Relative paths are resolved against the manifest's folder.
Empty cells mean "unknown". ``cloud_cover`` is a fraction in [0, 1]; ``date`` is ISO 8601
(``2019-09-04``, ``2015-06`` or ``1985``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_path
from ..metadata import MetadataError, SatMetadata
from .captions import AUTO_TEMPLATE, CaptionTemplate, caption_fields
from .errors import DataError, Skipped
from .images import image_pixel_range, read_image

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")
COLUMNS = ("path", "caption", "lat", "lon", "gsd", "cloud_cover", "date")


@dataclass
class ManifestRow:
    """One validated manifest row."""

    path: Path
    caption: str | None
    metadata: SatMetadata
    extra: dict[str, Any] = field(default_factory=dict)


def _raw_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
        if suffix == ".jsonl":
            rows = []
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, start=1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as err:
                            raise DataError(path, f"line {n}: unreadable JSON ({err.msg})") from None
            return rows
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise DataError(path, "reading Parquet needs pyarrow (pip install 'diffusionsat[train]')") from None
            return pq.read_table(path).to_pylist()
    except UnicodeDecodeError:
        raise DataError(path, "not a text manifest (not UTF-8)") from None
    except OSError as err:
        raise DataError(path, f"cannot read ({err.strerror or err})") from None
    raise DataError(path, f"unknown manifest format {suffix!r}; allowed {', '.join(MANIFEST_SUFFIXES)}")


def _number(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # SatMetadata names the field and the range
    return value


def parse_row(raw: Mapping[str, Any], base: Path) -> ManifestRow:
    """Validate one row (raises ``DataError``/``MetadataError`` naming the field)."""
    if not raw.get("path"):
        raise ValueError("missing 'path'")
    path = Path(str(raw["path"]))
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise FileNotFoundError(f"path {str(raw['path'])!r} points nowhere ({path} does not exist)")
    values = {k: _number(raw.get(k)) for k in ("lat", "lon", "gsd", "cloud_cover")}
    date = raw.get("date")
    meta = {k: v for k, v in values.items() if v is not None}
    if date not in (None, ""):
        meta["date"] = str(date)
    caption = raw.get("caption")
    extra = {k: v for k, v in raw.items() if k not in COLUMNS}
    return ManifestRow(path, str(caption) if caption not in (None, "") else None, SatMetadata.from_dict(meta), extra)


def read_manifest(path: str | os.PathLike, *, on_error: str = "raise",
                  skipped: list[Skipped] | None = None) -> list[ManifestRow]:
    """Read and validate a manifest. ``on_error="skip"`` records bad rows in ``skipped`` instead."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "manifest not found")
    raws = _raw_rows(path)
    if raws and "path" not in raws[0]:
        raise DataError(path, f"no 'path' column; expected columns {', '.join(COLUMNS)}")
    rows: list[ManifestRow] = []
    for n, raw in enumerate(raws, start=1):
        try:
            rows.append(parse_row(raw, path.parent))
        except (MetadataError, ValueError, FileNotFoundError) as err:
            problem = f"row {n}: {err}"
            if on_error == "raise":
                raise DataError(path, problem) from None
            logger.warning("%s: skipping %s", path, problem)
            if skipped is not None:
                skipped.append(Skipped(str(path), problem))
    return rows


def write_manifest(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write dict rows as CSV/JSONL/Parquet (by extension), atomically."""
    path = Path(path)
    rows = list(rows)
    suffix = path.suffix.lower()
    columns: list[str] = list(COLUMNS) + sorted({k for r in rows for k in r} - set(COLUMNS))
    with atomic_path(path, overwrite=overwrite) as tmp:
        if suffix == ".jsonl":
            tmp.write_text("".join(json.dumps(dict(r), sort_keys=True) + "\n" for r in rows), encoding="utf-8")
        elif suffix == ".csv":
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
            tmp.write_text(buf.getvalue(), encoding="utf-8")
        elif suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows]), tmp)
        else:
            raise ValueError(f"{path}: unknown manifest format {suffix!r}; allowed {', '.join(MANIFEST_SUFFIXES)}")
    return path


class ManifestDataset:
    """Map-style dataset over a manifest: each row's whole image plus its metadata and caption.

    Rows without a caption get an automatic one (country, season, scale) from their metadata.
    Bad rows raise at construction (``on_error="raise"``) or are listed in :attr:`skipped`.
    """

    def __init__(self, manifest: str | os.PathLike | Sequence[str | os.PathLike], *, template: str = AUTO_TEMPLATE,
                 countries: str | os.PathLike | None = None, transform: Any = None, on_error: str = "raise"):
        self.skipped: list[Skipped] = []
        manifests = [manifest] if isinstance(manifest, (str, os.PathLike)) else list(manifest)
        self.rows = [row for m in manifests for row in read_manifest(m, on_error=on_error, skipped=self.skipped)]
        self.template, self.countries, self.transform = template, countries, transform

    def __len__(self) -> int:
        return len(self.rows)

    def captions(self) -> list[str]:
        """Every row's caption (its own, or the automatic one from its metadata), no pixels read."""
        return [row.caption or CaptionTemplate(self.template).render(caption_fields(row.metadata, countries=self.countries))
                for row in self.rows]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        from .transforms import to_model_range

        row = self.rows[idx]
        image = read_image(row.path)
        fields = caption_fields(row.metadata, countries=self.countries)
        sample = {
            "key": row.path.stem.replace(".", "_"),
            "pixel_values": to_model_range(image, image_pixel_range(image)),
            "caption": row.caption or CaptionTemplate(self.template).render(fields),
            "metadata": row.metadata,
            "caption_fields": {k: v for k, v in fields.items() if v is not None},
        }
        return self.transform(sample) if self.transform else sample


def manifest_inputs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    return [Path(p) for p in paths if Path(p).suffix.lower() in MANIFEST_SUFFIXES]
