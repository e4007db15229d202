"""Honest automatic captions: only what the pixels and metadata support.

A caption is a template filled with *fields*; every field whose value is unknown is left out with
the words that introduce it, so no caption ever says "in None". Fields:

- ``country``: the country polygon (shipped GeoJSON, or a user file) containing the centre lat/lon;
- ``season``: from the month and the hemisphere (none within the tropics, where it means little);
- ``sensor``: when the file says it (Landsat IDs, MTL, Sentinel-2) or the user gives it;
- ``scale``: the GSD, e.g. ``5 m resolution``;
- ``land_cover``: words from NDVI/NDWI when a NIR band is present (``vegetation``, ``water``, ...);
- ``class``: an object class (fMoW-style labels).

The default model trains on :data:`AUTO_TEMPLATE` captions; fMoW-style data uses
:data:`FMOW_TEMPLATE`. :meth:`CaptionTemplate.render` drops each present part independently with
probability ``dropout`` (the original recipe: 10 % fMoW, 50 % Satlas) for training.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

AUTO_TEMPLATE = "a satellite image of {land_cover} in {country} in {season} from {sensor} at {scale}"
FMOW_TEMPLATE = "a satellite image of a {class} in {country}"

#: Words that belong to the placeholder they precede (dropped together with it).
_LEAD = r"(?:(?:of|a|an|the|in|from|at|during|with|on|near|by|taken|showing|,)\s+)*"
_PART = re.compile(r"(\s*,?\s*" + _LEAD + r"\{(\w+)\})")

#: Tropic of Cancer/Capricorn: inside it "summer"/"winter" do not describe the scene.
TROPIC_LAT = 23.44


@dataclass(frozen=True)
class CaptionTemplate:
    """A caption template such as ``"a satellite image of a {class} in {country}"``."""

    template: str = AUTO_TEMPLATE

    def parts(self) -> tuple[str, list[tuple[str, str]]]:
        """The fixed head and the (text, field) parts, each part with its leading words."""
        pieces = _PART.split(self.template)
        head = pieces[0]
        parts = [(pieces[i], pieces[i + 1]) for i in range(1, len(pieces) - 2, 3)]
        tail = "".join(pieces[i] for i in range(3, len(pieces), 3))
        if tail.strip():
            raise ValueError(f"caption template {self.template!r}: text after a placeholder must itself "
                             "introduce a placeholder (e.g. ' in {country}')")
        return head, parts

    def render(self, fields: Mapping[str, Any], dropout: float = 0.0, rng: random.Random | None = None) -> str:
        """Fill the template; parts whose field is missing are left out, the others kept with
        probability ``1 - dropout`` each (per-part caption dropout)."""
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"caption dropout={dropout!r} out of range; allowed [0, 1]")
        rng = rng or random
        head, parts = self.parts()
        out = head
        for text, name in parts:
            value = fields.get(name)
            if value is None or value == "":
                continue
            if dropout and rng.random() < dropout:
                continue
            value = str(value)
            if re.search(r"\ba \{", text) and value[:1].lower() in "aeiou":
                text = re.sub(r"\ba \{", "an {", text)
            out += text.replace("{" + name + "}", value)
        return re.sub(r"\s+", " ", out).strip()


# --- country from lat/lon ---------------------------------------------------------------------


class CountryIndex:
    """Country polygons (GeoJSON, EPSG:4326) with an STRtree for point look-ups."""

    def __init__(self, path: str | os.PathLike | None = None):
        from shapely import STRtree
        from shapely.geometry import shape

        if path is None:
            source = resources.files("diffusionsat").joinpath("assets/world/countries.geojson")
            text = source.read_text(encoding="utf-8")
            label = "shipped countries.geojson"
        else:
            label = os.fspath(path)
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as err:
                raise DataError(path, f"cannot read country polygons ({err.strerror or err})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(label, f"unreadable JSON ({err.msg} at line {err.lineno})") from None
        features = data.get("features") if isinstance(data, Mapping) else None
        if not features:
            raise DataError(label, "not a GeoJSON FeatureCollection of country polygons")
        self.names: list[str] = []
        geoms = []
        for feat in features:
            props = feat.get("properties") or {}
            name = props.get("name") or props.get("NAME") or props.get("ADMIN") or feat.get("id")
            if name and feat.get("geometry"):
                self.names.append(str(name))
                geoms.append(shape(feat["geometry"]))
        self.geometries = geoms
        self.tree = STRtree(geoms)

    def country_at(self, lon: float, lat: float) -> str | None:
        """Name of the country containing (lon, lat); ``None`` at sea or when unknown."""
        from shapely.geometry import Point

        if lon is None or lat is None or not (np.isfinite(lon) and np.isfinite(lat)):
            return None
        hits = self.tree.query(Point(lon, lat), predicate="intersects")
        return self.names[int(min(hits))] if len(hits) else None


@functools.lru_cache(maxsize=4)
def _index(path: str | None) -> CountryIndex:
    return CountryIndex(path)


def country_at(lon: float | None, lat: float | None, countries: str | os.PathLike | None = None) -> str | None:
    """Country containing (lon, lat), from the shipped polygons or a user GeoJSON ``countries``."""
    if lon is None or lat is None:
        return None
    return _index(None if countries is None else os.fspath(countries)).country_at(lon, lat)


# --- season, scale, land cover ------------------------------------------------------------------


def season(month: int | None, lat: float | None) -> str | None:
    """Meteorological season for the hemisphere; ``None`` in the tropics or when unknown."""
    if month is None or lat is None or abs(lat) < TROPIC_LAT:
        return None
    northern = ("winter", "winter", "spring", "spring", "spring", "summer",
                "summer", "summer", "autumn", "autumn", "autumn", "winter")
    name = northern[month - 1]
    if lat < 0:
        name = {"winter": "summer", "summer": "winter", "spring": "autumn", "autumn": "spring"}[name]
    return name


def scale_phrase(gsd: float | None) -> str | None:
    """``"5 m resolution"``, ``"0.5 m resolution"``: the GSD rounded to two significant digits."""
    if gsd is None:
        return None
    value = float(f"{gsd:.2g}")
    return f"{value:g} m resolution"


def spectral_indices(red: np.ndarray, nir: np.ndarray, green: np.ndarray | None = None,
                     valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """NDVI = (NIR − red)/(NIR + red) and, with green, NDWI = (green − NIR)/(green + NIR) (McFeeters)."""
    red, nir = red.astype(np.float64), nir.astype(np.float64)
    mask = np.ones(red.shape, bool) if valid is None else valid.astype(bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {"ndvi": ((nir - red) / (nir + red))[mask]}
        if green is not None:
            green = green.astype(np.float64)
            out["ndwi"] = ((green - nir) / (green + nir))[mask]
    return {k: v[np.isfinite(v)] for k, v in out.items()}


def land_cover_words(red: np.ndarray, nir: np.ndarray, green: np.ndarray | None = None,
                     valid: np.ndarray | None = None) -> str | None:
    """A few words for what covers the chip, from NDVI (vegetation) and NDWI (open water).

    Thresholds (documented in docs/data.md): water NDWI > 0.2 (or NDVI < 0 without green),
    vegetation NDVI > 0.3, dense vegetation NDVI > 0.6; a class is named when it covers ≥ 15 %.
    """
    idx = spectral_indices(red, nir, green, valid)
    ndvi = idx["ndvi"]
    if ndvi.size == 0:
        return None
    water_mask = idx["ndwi"] > 0.2 if "ndwi" in idx and idx["ndwi"].size == ndvi.size else ndvi < 0.0
    water = float(water_mask.mean())
    land = ~water_mask
    dense = float((ndvi[land] > 0.6).sum() / ndvi.size)
    veg = float((ndvi[land] > 0.3).sum() / ndvi.size)
    bare = float(((ndvi <= 0.3) & land).sum() / ndvi.size)
    words: list[str] = []
    if veg >= 0.15:
        words.append("dense vegetation" if dense >= 0.5 * veg and dense >= 0.15 else "vegetation")
    if bare >= 0.15:
        words.append("bare or built-up land" if veg < 0.15 else "open land")
    if water >= 0.15:
        words.append("water")
    if not words:
        return None
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def caption_fields(
    metadata: Any,
    *,
    sensor: str | None = None,
    land_cover: str | None = None,
    class_name: str | None = None,
    countries: str | os.PathLike | None = None,
) -> dict[str, str | None]:
    """All caption fields known for an image with this ``SatMetadata`` (unknown ones ``None``)."""
    lon, lat = getattr(metadata, "lon", None), getattr(metadata, "lat", None)
    return {
        "country": country_at(lon, lat, countries),
        "season": season(getattr(metadata, "month", None), lat),
        "sensor": sensor,
        "scale": scale_phrase(getattr(metadata, "gsd", None)),
        "land_cover": land_cover,
        "class": class_name.replace("_", " ") if class_name else None,
    }


def build_caption(
    metadata: Any,
    *,
    template: str = AUTO_TEMPLATE,
    dropout: float = 0.0,
    rng: random.Random | None = None,
    **fields: Any,
) -> str:
    """Caption for an image: :func:`caption_fields` rendered with ``template`` (see module doc)."""
    return CaptionTemplate(template).render(caption_fields(metadata, **fields), dropout=dropout, rng=rng)
