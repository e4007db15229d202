"""Real geodata in: datasets over GeoTIFF scenes, Sentinel-2, fMoW-style pairs, manifests and
WebDataset shards; task samples; honest captions; ``prepare-data``.

The sample dict
---------------
Every dataset here yields (and the trainer consumes) a dict with at least::

    {
      "key":          str,                      # stable id, e.g. "m_4709963_se_14_1_20190904_c0_r0_s128"
      "pixel_values": torch.float32 (C, H, W),  # in [-1, 1]; nodata pixels are -1
      "caption":      str,                      # honest automatic caption or the dataset's own
      "metadata":     SatMetadata,              # lon, lat, gsd (of these pixels), cloud_cover, date; unknown = None
    }

and, where they apply: ``valid_mask`` (bool (H, W), False = nodata), ``caption_fields`` and
``caption_template`` (to re-render captions with per-part dropout, see
:class:`~diffusionsat.data.transforms.CaptionDropout`), ``record`` (the shard's JSON: CRS,
transform, bounds, source file, window), ``conditioning_pixel_values`` + ``conditioning_metadata``
(temporal: (T, C, H, W) and a list of T; super-resolution: (C_lr, h, w) and one), ``mask``
((1, H, W) float, 1 = fill) for in-painting. Batch with :func:`collate_samples`; turn
``batch["metadata"]`` into the model's (B, 7) tensor with
:func:`diffusionsat.metadata.metadata_tensor`.
"""

from __future__ import annotations

from .captions import (
    AUTO_TEMPLATE,
    FMOW_TEMPLATE,
    CaptionTemplate,
    build_caption,
    country_at,
    land_cover_words,
    season,
)
from .dates import Acquisition, acquisition_from_mtl, date_for_file, date_from_pattern, landsat_id_date
from .errors import DataError, Skipped
from .fmow import FMoWDataset, parse_fmow_json
from .geotiff import (
    BandStack,
    Chip,
    GeoTiffChips,
    RasterInfo,
    check_pixels,
    chip_windows,
    iter_chips,
    open_raster,
    read_chip,
)
from .manifest import ManifestDataset, read_manifest, write_manifest
from .prepare import PrepareConfig, prepare_data
from .sentinel2 import BANDS as SENTINEL2_BANDS
from .sentinel2 import Sentinel2Chips, Sentinel2Scene, to_reflectance
from .shards import ShardDataset, ShardWriter, decode_sample, write_chips
from .tasks import (
    BoxMasked,
    DownsampledPairs,
    InpaintSamples,
    SuperResPairs,
    TemporalSequences,
    degrade,
    random_box_mask,
    rasterize_mask,
)
from .transforms import (
    CaptionDropout,
    Compose,
    Resize,
    SelectBands,
    collate_samples,
    to_model_range,
    to_uint8,
)
from .ucmerced import UCMerced

__all__ = [
    "AUTO_TEMPLATE", "FMOW_TEMPLATE", "CaptionTemplate", "build_caption", "country_at", "land_cover_words", "season",
    "Acquisition", "acquisition_from_mtl", "date_for_file", "date_from_pattern", "landsat_id_date",
    "DataError", "Skipped", "FMoWDataset", "parse_fmow_json",
    "BandStack", "Chip", "GeoTiffChips", "RasterInfo", "check_pixels", "chip_windows", "iter_chips", "open_raster", "read_chip",
    "ManifestDataset", "read_manifest", "write_manifest", "PrepareConfig", "prepare_data",
    "SENTINEL2_BANDS", "Sentinel2Chips", "Sentinel2Scene", "to_reflectance",
    "ShardDataset", "ShardWriter", "decode_sample", "write_chips",
    "BoxMasked", "DownsampledPairs", "InpaintSamples", "SuperResPairs", "TemporalSequences", "degrade",
    "random_box_mask", "rasterize_mask", "UCMerced",
    "CaptionDropout", "Compose", "Resize", "SelectBands", "collate_samples", "to_model_range", "to_uint8",
]
