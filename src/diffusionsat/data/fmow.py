"""fMoW-style samples: an image file plus a JSON with its metadata and class.

Data (Functional Map of the World layout, Christie et al., CVPR 2018): ``<name>.json`` beside
``<name>.jpg|png|tif``. JSON fields used:

- ``gsd`` (m/px), ``cloud_cover`` (fMoW stores **percent** 0–100; ``cloud_cover_percent=False``
  for files that store a fraction), ``timestamp`` (ISO 8601);
- location: ``lat``/``lon``, else the centroid of ``raw_location`` (WKT polygon, lon/lat) or of
  ``bounding_polygon`` (GeoJSON polygon coordinates, lon/lat);
- class: ``category`` / ``class`` / the first ``bounding_boxes[].category``.

Caption: :data:`~diffusionsat.data.captions.FMOW_TEMPLATE` ("a satellite image of a {class} in
{country}"), country from lat/lon; ``caption_dropout`` drops each part independently (training).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..metadata import MetadataError, SatMetadata
from .captions import FMOW_TEMPLATE, CaptionTemplate, caption_fields
from .dates import read_json
from .errors import DataError
from .images import PLAIN_IMAGE_SUFFIXES, image_pixel_range, read_image

IMAGE_SUFFIXES = (*PLAIN_IMAGE_SUFFIXES, ".tif", ".tiff")


@dataclass
class FMoWRecord:
    """One parsed fMoW-style sample (image path, metadata, class)."""

    image: Path
    json: Path
    metadata: SatMetadata
    class_name: str | None


def _location(data: Mapping[str, Any], path: Path) -> tuple[float | None, float | None]:
    if data.get("lat") is not None and data.get("lon") is not None:
        return data["lon"], data["lat"]
    try:
        if data.get("raw_location"):
            from shapely import wkt

            c = wkt.loads(data["raw_location"]).centroid
            return c.x, c.y
        if data.get("bounding_polygon"):
            from shapely.geometry import Polygon

            coords = data["bounding_polygon"]
            coords = coords.get("coordinates", coords) if isinstance(coords, Mapping) else coords
            ring = coords[0] if coords and isinstance(coords[0][0], (list, tuple)) else coords
            c = Polygon(ring).centroid
            return c.x, c.y
    except Exception as err:  # noqa: BLE001 - any malformed geometry is the same user problem
        raise DataError(path, f"unreadable location polygon ({err})") from None
    return None, None


def parse_fmow_json(path: str | os.PathLike, *, cloud_cover_percent: bool = True) -> tuple[SatMetadata, str | None]:
    """Metadata and class of one fMoW JSON; errors name the file and the field."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, Mapping):
        raise DataError(path, "fMoW JSON must be an object")
    lon, lat = _location(data, path)
    values: dict[str, Any] = {"lon": lon, "lat": lat, "gsd": data.get("gsd"), "cloud_cover": data.get("cloud_cover")}
    values = {k: v for k, v in values.items() if v is not None}
    if data.get("timestamp"):
        values["date"] = data["timestamp"]
    try:
        metadata = SatMetadata.from_dict(values, cloud_cover_percent=cloud_cover_percent)
    except MetadataError as err:
        raise DataError(path, str(err)) from None
    cls = data.get("category") or data.get("class")
    if cls is None and data.get("bounding_boxes"):
        cls = (data["bounding_boxes"][0] or {}).get("category")
    return metadata, (str(cls) if cls else None)


def find_fmow_pairs(inputs: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """(image, json) pairs: every JSON with an image of the same stem beside it."""
    pairs = []
    for raw in inputs:
        root = Path(raw)
        jsons = sorted(root.rglob("*.json")) if root.is_dir() else [root]
        for js in jsons:
            image = next((js.with_suffix(s) for s in IMAGE_SUFFIXES if js.with_suffix(s).is_file()), None)
            if image is not None:
                pairs.append((image, js))
    return pairs


class FMoWDataset:
    """Map-style dataset of fMoW-style image + JSON pairs (see module docstring).

    Bad JSON raises at construction naming the file (``on_error="raise"``) or is listed in
    :attr:`skipped` (``"skip"``).
    """

    def __init__(
        self,
        root: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        template: str = FMOW_TEMPLATE,
        caption_dropout: float = 0.0,
        cloud_cover_percent: bool = True,
        countries: str | os.PathLike | None = None,
        transform: Any = None,
        on_error: str = "raise",
        seed: int | None = None,
    ):
        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        self.template, self.caption_dropout = CaptionTemplate(template), caption_dropout
        self.countries, self.transform, self.rng = countries, transform, random.Random(seed)
        self.records: list[FMoWRecord] = []
        self.skipped: list[tuple[str, str]] = []
        for image, js in find_fmow_pairs(roots):
            try:
                metadata, cls = parse_fmow_json(js, cloud_cover_percent=cloud_cover_percent)
            except DataError as err:
                if on_error == "raise":
                    raise
                self.skipped.append((str(js), err.problem))
                continue
            self.records.append(FMoWRecord(image, js, metadata, cls))
        if not self.records and not self.skipped:
            raise DataError(str(roots[0]), "no fMoW-style pairs (<name>.json beside <name>.jpg/.png/.tif)")

    def __len__(self) -> int:
        return len(self.records)

    def captions(self) -> list[str]:
        """Every sample's full caption (no dropout), no pixels read."""
        return [self.template.render(caption_fields(r.metadata, class_name=r.class_name, countries=self.countries))
                for r in self.records]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        from .transforms import to_model_range

        rec = self.records[idx]
        image = read_image(rec.image)
        fields = caption_fields(rec.metadata, class_name=rec.class_name, countries=self.countries)
        sample = {
            "key": rec.image.stem.replace(".", "_"),
            "pixel_values": to_model_range(image, image_pixel_range(image)),
            "caption": self.template.render(fields, dropout=self.caption_dropout, rng=self.rng),
            "metadata": rec.metadata,
            "caption_fields": {k: v for k, v in fields.items() if v is not None},
            "caption_template": self.template.template,
        }
        return self.transform(sample) if self.transform else sample
