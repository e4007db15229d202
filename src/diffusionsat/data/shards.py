"""WebDataset-format shards: a writer and a streaming, rank/worker-splitting reader.

A shard is a plain ``.tar``; consecutive members sharing a *key* (the name up to the first dot)
form one sample (the WebDataset convention, readable by the ``webdataset`` package too):

- ``{key}.png`` (uint8 with 1, 3 or 4 bands) or ``{key}.tif`` (any other dtype/band count, with
  CRS and transform): the pixels, lossless, native dtype;
- ``{key}.json``: the chip record (metadata, caption fields, CRS/transform/bounds, pixel range, …);
- ``{key}.txt``: the caption;
- optional task entries: ``{key}.valid.png`` (nodata mask, when some pixels are invalid),
  ``{key}.mask.png`` (in-painting mask), ``{key}.lowres.tif`` (super-resolution input),
  ``{key}.frames.tif`` + ``frames`` in the JSON (temporal conditioning frames).

Writing is atomic per shard (temporary name, renamed when complete). Reading works over local paths
and any fsspec URL (``s3://``, ``gs://``, ``https://``, ``memory://``). Splitting: shards (or, with
fewer shards than readers, samples) are dealt round-robin to ``world_size × num_workers`` readers, so
each sample is read exactly once per epoch across all processes and DataLoader workers.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import atomic_path
from ..metadata import SatMetadata
from .errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("png", "tif", "jpg", "jpeg")


# --- encoding ---------------------------------------------------------------------------------


def encode_image(image: np.ndarray, *, crs_wkt: str | None = None, transform: Sequence[float] | None = None,
                 nodata: float | None = None, band_names: Sequence[str] | None = None,
                 force_tiff: bool = False) -> tuple[str, bytes]:
    """(extension, bytes) of a (C, H, W) array: PNG for uint8 with 1/3/4 bands, else (or with
    ``force_tiff``, for entries whose name fixes the format) a GeoTIFF; both lossless."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.dtype == np.uint8 and arr.shape[0] in (1, 3, 4) and not force_tiff:
        import PIL.Image

        hwc = np.moveaxis(arr, 0, -1)
        pil = PIL.Image.fromarray(hwc[..., 0] if arr.shape[0] == 1 else hwc)
        buf = io.BytesIO()
        pil.save(buf, format="PNG", compress_level=3)
        return "png", buf.getvalue()
    from rasterio.io import MemoryFile
    from rasterio.transform import Affine

    profile: dict[str, Any] = {"driver": "GTiff", "width": arr.shape[2], "height": arr.shape[1],
                               "count": arr.shape[0], "dtype": arr.dtype.name, "compress": "deflate"}
    if crs_wkt:
        import rasterio.crs

        profile["crs"] = rasterio.crs.CRS.from_wkt(crs_wkt)
    if transform is not None:
        profile["transform"] = Affine(*transform[:6])
    if nodata is not None:
        profile["nodata"] = nodata
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(arr)
            for i, name in enumerate(band_names or [], start=1):
                dst.set_band_description(i, name)
        return "tif", mem.read()


def decode_image(data: bytes, ext: str) -> np.ndarray:
    """Bytes of a PNG/JPEG/TIFF entry → (C, H, W) array in its stored dtype."""
    if ext in ("png", "jpg", "jpeg"):
        import PIL.Image

        arr = np.asarray(PIL.Image.open(io.BytesIO(data)))
        return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    from rasterio.io import MemoryFile

    with MemoryFile(data) as mem, mem.open() as src:
        return src.read()


# --- writing ----------------------------------------------------------------------------------


class ShardWriter:
    """Write samples into ``{prefix}-{n:06d}.tar`` files of at most ``max_samples`` each.

    Each shard is written under a temporary name and renamed only when complete, so an interrupted
    run never leaves a half-written shard under a final name. Use as a context manager.
    """

    def __init__(self, out_dir: str | os.PathLike, prefix: str = "shard", max_samples: int = 1000,
                 start_index: int = 0, overwrite: bool = False):
        if max_samples <= 0:
            raise ValueError(f"max_samples={max_samples}: must be ≥ 1")
        self.out_dir = Path(out_dir)
        self.prefix, self.max_samples, self.overwrite = prefix, max_samples, overwrite
        self.index = start_index
        self.written: list[Path] = []
        self.count = 0
        self._tar: tarfile.TarFile | None = None
        self._ctx: Any = None
        self._in_shard = 0
        self._keys: set[str] = set()

    def shard_path(self, index: int) -> Path:
        return self.out_dir / f"{self.prefix}-{index:06d}.tar"

    def _open(self) -> None:
        self._ctx = atomic_path(self.shard_path(self.index), overwrite=self.overwrite)
        tmp = self._ctx.__enter__()
        self._tar = tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - closed in _close
        self._in_shard = 0

    def _close(self, error: BaseException | None = None) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tar = None
        if error is None:
            self._ctx.__exit__(None, None, None)
            self.written.append(self.shard_path(self.index))
            self.index += 1
        else:
            self._ctx.__exit__(type(error), error, error.__traceback__)

    def write(self, key: str, entries: Mapping[str, bytes | str | dict]) -> None:
        """Add one sample: ``entries`` maps extension (``"png"``, ``"json"``, ``"txt"``…) to content."""
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", key):
            raise ValueError(f"sample key {key!r}: use letters, digits, '_' or '-' (no dots or slashes)")
        if key in self._keys:
            raise ValueError(f"sample key {key!r} written twice")
        self._keys.add(key)
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for ext, content in entries.items():
            if isinstance(content, dict):
                data = json.dumps(content, sort_keys=True).encode()
            elif isinstance(content, str):
                data = content.encode()
            else:
                data = bytes(content)
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._in_shard += 1
        self.count += 1
        if self._in_shard >= self.max_samples:
            self._close()

    def close(self) -> list[Path]:
        self._close()
        return self.written

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close(exc)


# --- listing and splitting --------------------------------------------------------------------


def expand_urls(urls: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand brace ranges (``shard-{000000..000009}.tar``), globs and folders into shard URLs."""
    import fsspec

    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for raw in items:
        text = os.fspath(raw)
        m = re.search(r"\{(\d+)\.\.(\d+)\}", text)
        if m:
            lo, hi = m.group(1), m.group(2)
            width = len(lo)
            out.extend(expand_urls([text[: m.start()] + f"{i:0{width}d}" + text[m.end():]
                                    for i in range(int(lo), int(hi) + 1)]))
            continue
        fs, path = fsspec.core.url_to_fs(text)
        protocol = text.split("://", 1)[0] + "://" if "://" in text else ""
        if any(c in path for c in "*?["):
            found = sorted(fs.glob(path))
            if not found:
                raise DataError(text, "no shards match this pattern")
            out.extend(protocol + p if protocol and not p.startswith(protocol) else p for p in found)
        elif fs.isdir(path):
            found = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".tar"))
            if not found:
                raise DataError(text, "folder holds no .tar shards")
            out.extend(protocol + p if protocol and not p.startswith(protocol) else p for p in found)
        else:
            out.append(text)
    return out


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else ``RANK``/``WORLD_SIZE``
    (set by torchrun and accelerate), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank = int(os.environ.get("RANK", os.environ.get("PROCESS_INDEX", 0)))
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("NUM_PROCESSES", 1)))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} out of range for WORLD_SIZE={world}; allowed [0, {world - 1}]")
    return rank, world


def reader_slot(rank: int, world_size: int) -> tuple[int, int]:
    """(slot, number of slots) of this reader among ``world_size × DataLoader workers``."""
    info = torch.utils.data.get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world_size * workers


# --- reading ----------------------------------------------------------------------------------


def iter_tar_samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream (key, {ext: bytes}) from one tar shard (local path or fsspec URL), in order."""
    import fsspec

    try:
        with fsspec.open(url, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            key, group = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                if "." not in name:
                    continue
                k, ext = name.split(".", 1)
                if key is not None and k != key:
                    yield key, group
                    group = {}
                key = k
                extracted = tar.extractfile(member)
                group[ext] = extracted.read() if extracted is not None else b""
            if key is not None:
                yield key, group
    except FileNotFoundError:
        raise DataError(url, "shard not found") from None
    except tarfile.TarError as err:
        raise DataError(url, f"not a readable tar shard ({err})") from None


def decode_sample(key: str, entries: Mapping[str, bytes], *, raw: bool = False, source: str = "") -> dict[str, Any]:
    """Turn one sample's tar entries into the training sample dict (see :mod:`diffusionsat.data`)."""
    from .transforms import to_model_range

    if "json" not in entries:
        raise DataError(source, f"sample {key!r} has no .json entry")
    try:
        record = json.loads(entries["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(source, f"sample {key!r}: unreadable JSON ({err})") from None
    ext = next((e for e in IMAGE_EXTS if e in entries), None)
    if ext is None:
        raise DataError(source, f"sample {key!r} has no image entry (.png/.jpg/.tif)")
    image = decode_image(entries[ext], ext)
    valid = decode_image(entries["valid.png"], "png")[0] > 0 if "valid.png" in entries else \
        np.ones(image.shape[-2:], bool)
    pixel_range = record.get("pixel_range") or ([0.0] * image.shape[0], [255.0] * image.shape[0])
    caption = entries["txt"].decode() if "txt" in entries else record.get("caption", "")
    sample: dict[str, Any] = {
        "key": key,
        "pixel_values": to_model_range(image, pixel_range, valid),
        "caption": caption,
        "metadata": SatMetadata.from_dict(record.get("metadata") or {}),
        "valid_mask": torch.from_numpy(valid),
        "caption_fields": record.get("caption_fields") or {},
        "caption_template": record.get("caption_template"),
        "record": record,
    }
    if "mask.png" in entries:
        sample["mask"] = torch.from_numpy((decode_image(entries["mask.png"], "png")[0] > 0).astype(np.float32))[None]
    if "lowres.tif" in entries:
        low = decode_image(entries["lowres.tif"], "tif")
        sample["conditioning_pixel_values"] = to_model_range(low, record["lowres_pixel_range"])
        sample["conditioning_metadata"] = SatMetadata.from_dict(record.get("lowres_metadata") or {})
    if "frames.tif" in entries:
        frames = decode_image(entries["frames.tif"], "tif")
        t = len(record["frames"])
        c = frames.shape[0] // t
        sample["conditioning_pixel_values"] = torch.stack([
            to_model_range(frames[i * c:(i + 1) * c], pixel_range) for i in range(t)])
        sample["conditioning_metadata"] = [SatMetadata.from_dict(f["metadata"]) for f in record["frames"]]
    if raw:
        sample["image"] = image
    return sample


class ShardDataset(torch.utils.data.IterableDataset):
    """Streaming dataset over WebDataset-format shards (local or fsspec URLs).

    Args:
        urls: shard paths/URLs, a folder, a glob or a brace range.
        shuffle_buffer: samples held for shuffling (0 = file order); shard order is shuffled too.
        seed: base seed; the order changes with :meth:`set_epoch` and is the same on every rank.
        rank, world_size: this process among all; default from torch.distributed / env.
        split_by: ``"shard"``, ``"sample"`` or ``"auto"`` (shards when there are at least as many
            shards as readers, else samples: every reader then scans all shards but decodes only
            its own samples).
        transform: a callable applied to each sample dict.
        raw: also return the stored native pixels as ``sample["image"]`` (numpy).
    """

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        split_by: str = "auto",
        transform: Any = None,
        raw: bool = False,
    ):
        super().__init__()
        if split_by not in ("auto", "shard", "sample"):
            raise ValueError(f"split_by={split_by!r}; allowed 'auto', 'shard', 'sample'")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer={shuffle_buffer}: must be ≥ 0")
        self.urls = expand_urls(urls)
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if rank is None:
            rank, world_size = distributed_rank_world()
        assert world_size is not None
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} out of range; allowed [0, {world_size - 1}]")
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.seed, self.split_by = shuffle_buffer, seed, split_by
        self.transform, self.raw = transform, raw
        self.epoch = 0

    def captions(self) -> list[str]:
        """Every caption in all shards (all ranks), in file order, without decoding any image."""
        out = []
        for url in self.urls:
            for _, entries in iter_tar_samples(url):
                if "txt" in entries:
                    out.append(entries["txt"].decode())
        return out

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle order (same on every rank) for a new epoch."""
        self.epoch = epoch

    def _entries(self) -> Iterator[tuple[str, dict[str, bytes], str]]:
        slot, slots = reader_slot(self.rank, self.world_size)
        urls = list(self.urls)
        if self.shuffle_buffer:
            random.Random(self.seed * 100003 + self.epoch).shuffle(urls)
        by_shard = self.split_by == "shard" or (self.split_by == "auto" and len(urls) >= slots)
        if by_shard:
            for url in urls[slot::slots]:
                for key, entries in iter_tar_samples(url):
                    yield key, entries, url
        else:
            n = 0
            for url in urls:
                for key, entries in iter_tar_samples(url):
                    if n % slots == slot:
                        yield key, entries, url
                    n += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot, _ = reader_slot(self.rank, self.world_size)
        rng = random.Random((self.seed * 100003 + self.epoch) * 1009 + slot)
        buffer: list[tuple[str, dict[str, bytes], str]] = []
        for item in self._entries():
            if self.shuffle_buffer:
                buffer.append(item)
                if len(buffer) < self.shuffle_buffer:
                    continue
                item = buffer.pop(rng.randrange(len(buffer)))
            yield self._decode(item)
        rng.shuffle(buffer)
        for item in buffer:
            yield self._decode(item)

    def _decode(self, item: tuple[str, dict[str, bytes], str]) -> dict[str, Any]:
        key, entries, url = item
        sample = decode_sample(key, entries, raw=self.raw, source=url)
        return self.transform(sample) if self.transform else sample


def write_chips(chips: Iterable[Any], out_dir: str | os.PathLike, *, max_samples: int = 1000,
                prefix: str = "shard", overwrite: bool = False) -> list[Path]:
    """Write :class:`~diffusionsat.data.geotiff.Chip` objects as shards; returns the shard paths."""
    with ShardWriter(out_dir, prefix=prefix, max_samples=max_samples, overwrite=overwrite) as writer:
        for chip in chips:
            writer.write(chip.key, chip_entries(chip))
    return writer.written


def chip_entries(chip: Any, template: str | None = None) -> dict[str, bytes | str | dict]:
    """The tar entries of one chip: image, JSON record, caption, validity mask when needed."""
    ext, data = encode_image(chip.image, crs_wkt=chip.crs_wkt, transform=chip.transform,
                             nodata=chip.nodata, band_names=chip.band_names)
    record = chip.record()
    if template:
        record["caption_template"] = template
    entries: dict[str, bytes | str | dict] = {ext: data, "json": record, "txt": chip.caption}
    if not chip.valid.all():
        entries["valid.png"] = encode_image(chip.valid.astype(np.uint8)[None] * 255)[1]
    return entries
