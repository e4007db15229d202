"""GeoTIFF scenes cut into chips, each with the metadata the raster itself supports.

Any GeoTIFF readable by rasterio: any band count, uint8/uint16/int/float, nodata values, alpha or
mask bands, any CRS (also without an EPSG code). For every chip:

- ``lon``/``lat``: the chip centre, reprojected from the raster CRS with pyproj;
- ``gsd``: metres per pixel from the transform (:func:`diffusionsat.geo.gsd_metres`), scaled
  when the chip is resized (SPEC §1); a GSD beyond the model's (0, 1000] m is recorded as unknown;
- date and cloud cover: :func:`diffusionsat.data.dates.date_for_file` (sidecar, MTL, tags, the
  user's file-name pattern, Landsat IDs);
- chips with more than ``max_nodata`` of nodata pixels are skipped.

Pixels keep their native dtype in a :class:`Chip`; :meth:`Chip.to_sample` maps them to [-1, 1]
with the scene's ``pixel_range`` (dtype range for 8-bit, 2nd–98th percentile per band otherwise,
computed once per scene so that all its chips share one scale).
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import geo
from ..metadata import SatMetadata
from .captions import AUTO_TEMPLATE, CaptionTemplate, caption_fields, land_cover_words
from .dates import Acquisition, date_for_file
from .errors import DataError

logger = logging.getLogger(__name__)

#: Extensions treated as rasters when a folder is given.
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")

#: Band names that mean near-infrared (file descriptions, Sentinel-2 codes, user names).
_NIR_ALIASES = ("nir", "b08", "near infrared", "nir08")

#: One band of a multi-file scene: ``<scene>_B4.TIF``, ``<scene>_SR_B4.TIF``, ``<scene>_B8A_20m.tif``.
_BAND_FILE = re.compile(r"^(?P<scene>.+?)_(?:SR_|ST_)?B(?P<band>\d{1,2}|8A)(?P<rest>_[A-Za-z0-9]+)?\.(?:tif|tiff)$",
                        re.IGNORECASE)


@dataclass(frozen=True)
class BandStack:
    """Single-band files of one scene (e.g. Landsat ``LC8…_B2.tif``, ``_B3``, ``_B4``) read as one
    multi-band raster through a GDAL VRT held in memory; band descriptions are ``B2``, ``B3``, ...

    ``name`` is the scene's virtual path (folder / scene ID): dates, keys and MTL look-ups use it.
    """

    name: Path
    files: tuple[Path, ...]
    bands: tuple[str, ...]

    def __fspath__(self) -> str:
        return str(self.name)

    def __str__(self) -> str:
        return f"{self.name}_{{{','.join(self.bands)}}}{self.files[0].suffix}"

    def vrt_xml(self, nodata: float | None = None) -> str:
        """The VRT (XML text, which rasterio opens directly); all files must share one grid.
        ``nodata`` overrides the files' own nodata value."""
        import rasterio
        from rasterio.errors import RasterioError

        grid = None
        sources = []
        for path, band in zip(self.files, self.bands):
            try:
                with rasterio.open(path) as src:
                    this = (src.width, src.height, src.transform, src.crs)
                    dtype, own = src.dtypes[0], src.nodata
            except (RasterioError, OSError) as err:
                raise DataError(path, f"not a readable raster ({str(err).splitlines()[0]})") from None
            if grid is None:
                grid = this
            elif this != grid:
                raise DataError(path, f"band {band} is on another grid than {self.files[0].name}; "
                                      "stack only bands of the same size, transform and CRS")
            sources.append((path, 1, band, dtype, own if nodata is None else nodata))
        assert grid is not None
        return vrt_xml(*grid, sources)


def vrt_xml(width: int, height: int, transform: Any, crs: Any,
            sources: Sequence[tuple[Path, int, str | None, str, float | None]]) -> str:
    """A GDAL VRT (XML text) of ``(file, band, description, dtype, nodata)`` sources on one grid."""
    from rasterio.dtypes import _gdal_typename

    parts = []
    for i, (path, index, desc, dtype, nodata) in enumerate(sources, start=1):
        nd = "" if nodata is None else f"<NoDataValue>{nodata!r}</NoDataValue>"
        described = f"<Description>{xml_escape(desc)}</Description>" if desc else ""
        parts.append(
            f'<VRTRasterBand dataType="{_gdal_typename(dtype)}" band="{i}">{nd}{described}'
            f'<SimpleSource><SourceFilename relativeToVRT="0">{xml_escape(str(Path(path).resolve()))}</SourceFilename>'
            f"<SourceBand>{index}</SourceBand></SimpleSource></VRTRasterBand>"
        )
    srs = f"<SRS>{xml_escape(crs.to_wkt())}</SRS>" if crs else ""
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">{srs}'
            f"<GeoTransform>{', '.join(repr(v) for v in transform.to_gdal())}</GeoTransform>{''.join(parts)}</VRTDataset>")


def xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def group_band_files(paths: Sequence[Path]) -> list[Path | BandStack]:
    """Replace single-band files of one scene (same folder, scene ID and suffix) by a :class:`BandStack`,
    bands in ascending order; files that are alone keep their place."""
    groups: dict[tuple[Path, str, str], list[tuple[str, Path]]] = {}
    for path in paths:
        m = _BAND_FILE.match(path.name)
        if m:
            groups.setdefault((path.parent, m.group("scene"), (m.group("rest") or "").lower()), []).append(
                (m.group("band").upper(), path))
    out: list[Path | BandStack] = []
    emitted: set[tuple[Path, str, str]] = set()
    for path in paths:
        m = _BAND_FILE.match(path.name)
        key = (path.parent, m.group("scene"), (m.group("rest") or "").lower()) if m else None
        if key is None or len(groups[key]) < 2:
            out.append(path)
            continue
        if key in emitted:
            continue
        emitted.add(key)
        members = sorted(groups[key], key=lambda bp: (len(bp[0]), bp[0]))
        out.append(BandStack(name=key[0] / (key[1] + (m.group("rest") or "")),
                             files=tuple(p for _, p in members), bands=tuple(f"B{b}" for b, _ in members)))
    return out


def _silence_rasterio() -> None:
    warnings.filterwarnings("ignore", category=Warning, module="rasterio")
    logging.getLogger("rasterio").setLevel(logging.ERROR)


@dataclass
class RasterInfo:
    """What a raster file is: size, bands, CRS, transform, nodata, date; validated on open."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    crs_wkt: str | None
    transform: Any
    bands: list[int]
    band_names: list[str]
    tags: dict[str, str]
    acquisition: Acquisition
    pixel_range: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    #: What rasterio opens: the file path, or the VRT XML of a :class:`BandStack`.
    dataset: str = ""
    sensor: str | None = None
    label: str = ""

    def __post_init__(self) -> None:
        self.dataset = self.dataset or str(self.path)

    @property
    def source(self) -> str:
        """Human-readable origin: the file, or ``<scene>_{B2,B3,B4}.tif`` for a band stack."""
        return self.label or str(self.path)

    @property
    def georeferenced(self) -> bool:
        return self.crs_wkt is not None


def _has_georeference(src: Any) -> bool:
    from rasterio.transform import Affine

    return src.crs is not None and src.transform != Affine.identity()


def parse_bands(bands: str | Sequence[int | str] | None) -> list[int | str] | None:
    """``"1,2,3"`` or ``"B04,B03,B02"`` → ``[1, 2, 3]`` / ``["B04", "B03", "B02"]``."""
    if bands is None:
        return None
    items = [b.strip() for b in bands.split(",")] if isinstance(bands, str) else list(bands)
    out: list[int | str] = []
    for item in items:
        if isinstance(item, str) and item.isdigit():
            out.append(int(item))
        elif item in ("", None):
            raise ValueError(f"bands={bands!r}: empty band name")
        else:
            out.append(item)
    return out


def _resolve_bands(path: str | Path, src: Any, bands: Sequence[int | str] | None) -> list[int]:
    if bands is None:
        return list(range(1, src.count + 1))
    names = [(d or "").upper() for d in src.descriptions]
    out = []
    for band in bands:
        if isinstance(band, int):
            if not 1 <= band <= src.count:
                raise DataError(path, f"band {band} requested but the file has {src.count} band"
                                      f"{'s' if src.count != 1 else ''} (allowed 1–{src.count})")
            out.append(band)
        else:
            if band.upper() not in names:
                known = ", ".join(d for d in src.descriptions if d) or "none"
                raise DataError(path, f"band {band!r} not found; band descriptions in the file: {known}")
            out.append(names.index(band.upper()) + 1)
    return out


def scene_pixel_range(src: Any, bands: Sequence[int], dtype: str) -> tuple[list[float], list[float]]:
    """Per-band (low, high) that maps to (-1, 1): the dtype range for 8-bit data, else the
    2nd/98th percentile of valid pixels on a decimated read (≤ 512 px) of the whole scene."""
    if dtype == "uint8":
        return [0.0] * len(bands), [255.0] * len(bands)
    scale = max(1, math.ceil(max(src.width, src.height) / 512))
    shape = (max(1, src.height // scale), max(1, src.width // scale))
    data = src.read(bands, out_shape=(len(bands), *shape), masked=True)
    lows, highs = [], []
    for band in data:
        valid = band.compressed().astype(np.float64)
        valid = valid[np.isfinite(valid)]
        if valid.size == 0:
            lows.append(0.0)
            highs.append(1.0)
            continue
        lo, hi = np.percentile(valid, [2, 98])
        if hi <= lo:
            hi = lo + 1.0
        lows.append(float(lo))
        highs.append(float(hi))
    return lows, highs


def _landsat_fill(name: Path, sample_file: Path) -> float | None:
    """0 for an integer Landsat file (by its ID) that declares no nodata value, else ``None``."""
    import rasterio

    from .dates import landsat_id_date

    if landsat_id_date(name.name) is None:
        return None
    with rasterio.open(sample_file) as src:
        if any(v is not None for v in src.nodatavals) or not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
            return None
    return 0.0


def _with_nodata(path: Path, nodata: float | None) -> str:
    """``path`` itself, or a VRT of it that declares ``nodata`` on every band when it differs."""
    import rasterio

    if nodata is None:
        return str(path)
    with rasterio.open(path) as src:
        if all(v == nodata for v in src.nodatavals):
            return str(path)
        sources = [(path, i, src.descriptions[i - 1], src.dtypes[i - 1], nodata) for i in range(1, src.count + 1)]
        return vrt_xml(src.width, src.height, src.transform, src.crs, sources)


def _is_sentinel2(descriptions: Sequence[str]) -> bool:
    from .sentinel2 import BANDS

    return bool(descriptions) and all(d.upper() in BANDS for d in descriptions)


def open_raster(
    path: str | os.PathLike | BandStack,
    *,
    bands: str | Sequence[int | str] | None = None,
    expected_bands: int | None = None,
    require_georeference: bool = True,
    date_pattern: str | None = None,
    pixel_range: str | tuple[Sequence[float], Sequence[float]] = "auto",
    band_names: str | Sequence[str] | None = None,
    nodata: float | None = None,
) -> RasterInfo:
    """Open and validate a raster; every problem raises :class:`DataError` naming the file.

    Checks: readable, georeferenced (unless ``require_georeference=False``), the requested bands
    exist, the band count matches ``expected_bands``, the decimated pixels can be read and are not
    all nodata. ``band_names`` (e.g. ``"red,green,blue,nir"``) names the selected bands where the
    file does not; a band named ``nir`` enables land-cover words in captions.

    ``nodata`` sets the nodata value of a file that lacks one (or overrides it). Landsat files
    (named by a scene/product ID) without one get 0, the USGS Level-1/2 fill value, so their
    black scene borders count as nodata.
    """
    import rasterio
    from rasterio.errors import RasterioError

    _silence_rasterio()
    stack = path if isinstance(path, BandStack) else None
    if stack is not None:
        label: Any = str(stack)
        fill = nodata if nodata is not None else _landsat_fill(stack.name, stack.files[0])
        dataset = stack.vrt_xml(nodata=fill)
        path = stack.name
    else:
        path = Path(path)
        label = dataset = str(path)
        if not path.exists():
            raise DataError(label, "file not found")
        if path.is_dir():
            raise DataError(label, "is a folder, expected a raster file")
    try:
        if stack is None:
            dataset = _with_nodata(path, nodata if nodata is not None else _landsat_fill(path, path))
        with rasterio.open(dataset) as src:
            if require_georeference and not _has_georeference(src):
                raise DataError(label, "no georeference (no CRS or geotransform); lat/lon and GSD cannot be "
                                      "derived. Add a CRS, or use a manifest with lat/lon/gsd columns")
            band_list = _resolve_bands(label, src, parse_bands(bands))
            if expected_bands is not None and len(band_list) != expected_bands:
                raise DataError(label, f"has {len(band_list)} band{'s' if len(band_list) != 1 else ''}, "
                                      f"expected {expected_bands}")
            dtype = src.dtypes[band_list[0] - 1]
            is_s2 = _is_sentinel2([(src.descriptions[b - 1] or "") for b in band_list])
            if pixel_range == "auto" and is_s2:
                # Reflectance 0–0.3 (floats) or L1C/L2A DN 0–3000: one fixed scale for all scenes.
                top = 0.3 if np.issubdtype(np.dtype(dtype), np.floating) else 3000.0
                lows, highs = [0.0] * len(band_list), [top] * len(band_list)
            elif pixel_range == "auto":
                lows, highs = scene_pixel_range(src, band_list, dtype)
            else:
                lows, highs = (list(map(float, pixel_range[0])), list(map(float, pixel_range[1])))
            small = src.dataset_mask(out_shape=(min(src.height, 256), min(src.width, 256)))
            if not small.any():
                raise DataError(label, f"every pixel is nodata (nodata={src.nodata})")
            descriptions = [src.descriptions[b - 1] or f"band {b}" for b in band_list]
            if band_names is not None:
                names = [n.strip() for n in band_names.split(",")] if isinstance(band_names, str) else list(band_names)
                if len(names) != len(band_list):
                    raise DataError(label, f"{len(names)} band names given for {len(band_list)} bands")
                descriptions = names
            info = RasterInfo(
                path=path, width=src.width, height=src.height, count=src.count, dtype=dtype,
                nodata=src.nodata, crs_wkt=src.crs.to_wkt() if src.crs else None, transform=src.transform,
                bands=band_list, band_names=descriptions, tags=dict(src.tags()),
                acquisition=Acquisition(), pixel_range=(lows, highs), dataset=dataset,
                label=label if stack is not None else "",
            )
    except DataError:
        raise
    except (RasterioError, OSError) as err:
        raise DataError(label, f"not a readable raster ({str(err).splitlines()[0]})") from None
    info.acquisition = date_for_file(path, tags=info.tags, date_pattern=date_pattern)
    info.sensor = info.acquisition.sensor or ("Sentinel-2" if is_s2 else None)
    return info


def chip_windows(width: int, height: int, chip_size: int, stride: int | None = None) -> list[tuple[int, int, int, int]]:
    """Full ``chip_size`` windows (col_off, row_off, w, h) on a regular grid, row by row.

    Partial windows at the right/bottom edges are not produced: a chip is always square and full.
    """
    if chip_size <= 0:
        raise ValueError(f"chip_size={chip_size}: must be a positive number of pixels")
    stride = stride or chip_size
    if stride <= 0:
        raise ValueError(f"stride={stride}: must be a positive number of pixels")
    cols = range(0, width - chip_size + 1, stride)
    rows = range(0, height - chip_size + 1, stride)
    return [(c, r, chip_size, chip_size) for r in rows for c in cols]


@dataclass
class Chip:
    """One chip: native pixels (C, H, W), validity mask, metadata, caption and where it came from."""

    key: str
    image: np.ndarray
    valid: np.ndarray
    metadata: SatMetadata
    caption: str
    caption_fields: dict[str, Any]
    source: str
    window: tuple[int, int, int, int]
    crs_wkt: str | None
    transform: tuple[float, ...]
    band_names: list[str]
    pixel_range: tuple[list[float], list[float]]
    nodata: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """JSON-ready description (what a shard's ``{key}.json`` holds)."""
        h, w = self.image.shape[-2:]
        from rasterio.transform import Affine

        bounds = geo.transform_bounds_of(Affine(*self.transform[:6]), w, h) if self.crs_wkt else None
        return {
            "key": self.key,
            "metadata": self.metadata.to_dict(),
            "caption": self.caption,
            "caption_fields": {k: v for k, v in self.caption_fields.items() if v is not None},
            "source": self.source,
            "window": list(self.window),
            "crs": self.crs_wkt,
            "crs_label": geo.crs_label(self.crs_wkt) if self.crs_wkt else None,
            "transform": list(self.transform[:6]),
            "bounds": list(bounds) if bounds else None,
            "bands": self.band_names,
            "dtype": str(self.image.dtype),
            "shape": list(self.image.shape),
            "pixel_range": [list(self.pixel_range[0]), list(self.pixel_range[1])],
            "nodata": self.nodata,
            "valid_fraction": float(self.valid.mean()),
            **self.extra,
        }

    def to_sample(self) -> dict[str, Any]:
        """The training sample dict (see :mod:`diffusionsat.data`)."""
        from .transforms import to_model_range

        return {
            "key": self.key,
            "pixel_values": to_model_range(self.image, self.pixel_range, self.valid),
            "caption": self.caption,
            "metadata": self.metadata,
            "valid_mask": torch.from_numpy(self.valid.copy()),
        }


def _land_cover(image: np.ndarray, band_names: Sequence[str], valid: np.ndarray, nir_band: int | None) -> str | None:
    """Land-cover words when a NIR band is known (explicit index, named, or the 4th of R,G,B,NIR)."""
    names = [n.lower() for n in band_names]
    if nir_band is None:
        for alias in _NIR_ALIASES:
            if alias in names:
                nir_band = names.index(alias)
                break
    if nir_band is None:
        return None
    red = names.index("red") if "red" in names else (names.index("b04") if "b04" in names else 0)
    green = names.index("green") if "green" in names else (names.index("b03") if "b03" in names else 1)
    if nir_band >= image.shape[0] or max(red, green) >= image.shape[0]:
        return None
    return land_cover_words(image[red], image[nir_band], image[green], valid)


def _metadata_for(info: RasterInfo, window: tuple[int, int, int, int], out_size: int | None,
                  notes: list[str]) -> SatMetadata:
    col, row, w, h = window
    lon = lat = gsd = None
    if info.crs_wkt:
        lon, lat = geo.window_center_lonlat(info.crs_wkt, info.transform, col, row, w, h)
        if not (math.isfinite(lon) and math.isfinite(lat)):
            notes.append("chip centre is off the Earth in this projection: lat/lon unknown")
            lon = lat = None
        gsd = geo.gsd_metres(info.crs_wkt, info.transform, lon, lat) if lon is not None or \
            not geo.as_crs(info.crs_wkt).is_geographic else None
        if gsd is not None and out_size:
            gsd = gsd * w / out_size
        if gsd is not None and not 0 < gsd <= 1000:
            notes.append(f"gsd {gsd:.4g} m is outside the model's (0, 1000] m: recorded as unknown")
            gsd = None
    acq = info.acquisition
    return SatMetadata(lon=lon, lat=lat, gsd=gsd, cloud_cover=acq.cloud_cover,
                       year=acq.year, month=acq.month, day=acq.day)


def read_chip(
    info: RasterInfo,
    window: tuple[int, int, int, int],
    *,
    out_size: int | None = None,
    template: str = AUTO_TEMPLATE,
    sensor: str | None = None,
    nir_band: int | None = None,
    countries: str | os.PathLike | None = None,
    key: str | None = None,
) -> Chip:
    """Read one window of a validated raster into a :class:`Chip` (optionally resized to ``out_size``)."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    col, row, w, h = window
    win = Window(col, row, w, h)
    try:
        # Always full resolution: overviews may be nearest-neighbour (aliasing) or hide damaged data.
        with rasterio.open(info.dataset) as src:
            image = src.read(info.bands, window=win)
            valid = src.dataset_mask(window=win) > 0
    except (RasterioError, OSError) as err:
        raise DataError(info.source, f"cannot read pixels of window col={col} row={row} size={w}×{h} "
                                   f"({str(err).splitlines()[0]}); the file is damaged") from None
    if out_size and out_size != w:
        from .transforms import resample

        image, valid = resample(image, out_size), resample(valid[None], out_size, nearest=True)[0]
    if np.issubdtype(image.dtype, np.floating):
        valid &= np.isfinite(image).all(axis=0)
    notes: list[str] = []
    metadata = _metadata_for(info, window, out_size, notes)
    transform = geo.window_transform(info.transform, col, row)
    if out_size:
        transform = geo.scaled_transform(transform, (w, h), (out_size, out_size))
    fields = caption_fields(
        metadata, sensor=sensor or info.sensor, countries=countries,
        land_cover=_land_cover(image, info.band_names, valid, nir_band),
    )
    extra: dict[str, Any] = {"date_source": info.acquisition.source}
    if notes:
        extra["notes"] = notes
    return Chip(
        key=key or chip_key(info.path, window),
        image=image, valid=valid, metadata=metadata,
        caption=CaptionTemplate(template).render(fields), caption_fields=fields,
        source=info.source, window=window, crs_wkt=info.crs_wkt, transform=tuple(transform)[:6],
        band_names=info.band_names, pixel_range=info.pixel_range, nodata=info.nodata, extra=extra,
    )


def chip_key(path: str | os.PathLike, window: tuple[int, int, int, int]) -> str:
    """Stable sample key: file stem + window (no dots, as WebDataset keys must not contain any)."""
    stem = Path(path).stem.replace(".", "_")
    return f"{stem}_c{window[0]}_r{window[1]}_s{window[2]}"


def check_pixels(info: RasterInfo) -> None:
    """Read every block of the selected bands at full resolution once; a damaged file raises
    :class:`DataError` here, before any chip of it is used (memory stays at one block)."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(info.dataset) as src:
            for _, window in src.block_windows(info.bands[0]):
                src.read(info.bands, window=window)
    except (RasterioError, OSError) as err:
        raise DataError(info.source, f"cannot read its pixels ({str(err).splitlines()[0]}); the file is damaged") from None


def iter_chips(
    info: RasterInfo,
    chip_size: int,
    *,
    stride: int | None = None,
    max_nodata: float = 0.5,
    skipped: list[str] | None = None,
    **kwargs: Any,
) -> Iterator[Chip]:
    """All chips of a scene with at most ``max_nodata`` nodata; skipped windows are counted in
    ``skipped`` (one reason string per chip) rather than silently dropped."""
    if not 0.0 <= max_nodata <= 1.0:
        raise ValueError(f"max_nodata={max_nodata!r} out of range; allowed [0, 1]")
    windows = chip_windows(info.width, info.height, chip_size, stride)
    if not windows:
        raise DataError(info.source, f"{info.width}×{info.height} px is smaller than one {chip_size} px chip")
    for window in windows:
        chip = read_chip(info, window, **kwargs)
        nodata = 1.0 - float(chip.valid.mean())
        if nodata > max_nodata:
            if skipped is not None:
                skipped.append(f"window {window[:2]}: {nodata:.0%} nodata > {max_nodata:.0%}")
            continue
        yield chip


def find_rasters(inputs: Sequence[str | os.PathLike], stack_bands: bool = False) -> list[Any]:
    """Expand files and folders (recursively) into raster paths, sorted, de-duplicated; with
    ``stack_bands`` single-band files of one scene become one :class:`BandStack`."""
    out: list[Path] = []
    stacks = [raw for raw in inputs if isinstance(raw, BandStack)]
    for raw in inputs:
        if isinstance(raw, BandStack):
            continue
        path = Path(raw)
        if path.is_dir():
            out.extend(p for p in sorted(path.rglob("*")) if p.suffix.lower() in RASTER_SUFFIXES and p.is_file())
        else:
            out.append(path)
    seen: set[Path] = set()
    unique = [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]
    return [*stacks, *(group_band_files(unique) if stack_bands else unique)]


class GeoTiffChips:
    """Map-style torch dataset of chips cut from GeoTIFF scenes.

    Data: any GeoTIFF files (see module docstring). At construction every file is validated and
    its windows' nodata fractions are measured (one mask read per scene), so ``len`` is exact and
    mostly-nodata chips never appear. Each item is the sample dict of :mod:`diffusionsat.data`.

    Args:
        paths: raster files or folders.
        chip_size: chip side in source pixels; ``resize_to`` resamples each chip (GSD scales).
        on_error: ``"raise"`` (default) or ``"skip"``: bad files then land in :attr:`skipped`.
        verify_pixels: read every block of each file once at construction (:func:`check_pixels`),
            so a damaged file (header fine, pixels unreadable) fails or is skipped here, not when
            one of its chips is first read (``train`` sets it).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike] | str | os.PathLike,
        chip_size: int,
        *,
        stride: int | None = None,
        resize_to: int | None = None,
        bands: str | Sequence[int | str] | None = None,
        band_names: str | Sequence[str] | None = None,
        nodata: float | None = None,
        date_pattern: str | None = None,
        max_nodata: float = 0.5,
        template: str = AUTO_TEMPLATE,
        sensor: str | None = None,
        countries: str | os.PathLike | None = None,
        transform: Any = None,
        on_error: str = "raise",
        stack_bands: bool = True,
        verify_pixels: bool = False,
    ):
        import rasterio
        from rasterio.windows import Window

        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={on_error!r}; allowed 'raise' or 'skip'")
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.chip_size, self.resize_to, self.transform = chip_size, resize_to, transform
        self.read_kwargs = {"out_size": resize_to, "template": template, "sensor": sensor, "countries": countries}
        self.skipped: list[tuple[str, str]] = []
        self.scenes: list[RasterInfo] = []
        self.index: list[tuple[int, tuple[int, int, int, int]]] = []
        for path in find_rasters(paths, stack_bands=stack_bands):
            try:
                info = open_raster(path, bands=bands, band_names=band_names, nodata=nodata, date_pattern=date_pattern)
                if verify_pixels:
                    check_pixels(info)
                with rasterio.open(info.dataset) as src:
                    # One mask read per scene when it fits in 64 MB, else one per window.
                    whole = src.dataset_mask() > 0 if info.width * info.height <= 64_000_000 else None
                    windows = []
                    for window in chip_windows(info.width, info.height, chip_size, stride):
                        c, r, w, h = window
                        mask = whole[r:r + h, c:c + w] if whole is not None else \
                            src.dataset_mask(window=Window(*window)) > 0
                        if 1.0 - float(mask.mean()) <= max_nodata:
                            windows.append(window)
            except DataError as err:
                if on_error == "raise":
                    raise
                logger.warning("skipping %s", err)
                self.skipped.append((str(path), err.problem))
                continue
            self.scenes.append(info)
            self.index.extend((len(self.scenes) - 1, w) for w in windows)
        if not self.index and on_error == "raise":
            raise DataError(None, f"no chips of {chip_size} px with ≤ {max_nodata:.0%} nodata in {list(map(str, paths))}")

    def __len__(self) -> int:
        return len(self.index)

    def chip(self, idx: int) -> Chip:
        scene, window = self.index[idx]
        return read_chip(self.scenes[scene], window, **self.read_kwargs)

    def captions(self) -> list[str]:
        """Every chip's caption (e.g. for a tokenizer vocabulary) without reading pixels, unless
        land-cover words need them (a band named NIR)."""
        out = []
        for scene_idx, window in self.index:
            info = self.scenes[scene_idx]
            if any(n.lower() in _NIR_ALIASES for n in info.band_names):
                out.append(read_chip(info, window, **self.read_kwargs).caption)
                continue
            kw = self.read_kwargs
            meta = _metadata_for(info, window, kw["out_size"], [])
            fields = caption_fields(meta, sensor=kw["sensor"] or info.sensor, countries=kw["countries"])
            out.append(CaptionTemplate(kw["template"]).render(fields))
        return out

    def __getitem__(self, idx: int) -> dict[str, Any]:
        sample = self.chip(idx).to_sample()
        return self.transform(sample) if self.transform else sample
