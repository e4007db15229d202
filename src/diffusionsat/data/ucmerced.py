"""UC Merced Land Use: 21 land-use classes of 0.3 m aerial imagery, the one labelled set here.

Data (Yang & Newsam 2010): one folder per class, ``<class>/<class>NN.jpg``, RGB, 256×256 px (a
few are a little smaller), about one foot (0.3048 m) per pixel, from the USGS National Map Urban
Area Imagery of US cities. No georeference, location or date per image: the metadata is
``gsd=0.3048`` (scaled by any resize) and the rest unknown; the caption says "in United States of
America" (the country name of the shipped outlines, as every other caption here).

Classes: agricultural, airplane, baseballdiamond, beach, buildings, chaparral, denseresidential,
forest, freeway, golfcourse, harbor, intersection, mediumresidential, mobilehomepark, overpass,
parkinglot, river, runway, sparseresidential, storagetanks, tenniscourt.

Licence: USGS imagery, US public domain. Cite: Yi Yang and Shawn Newsam, "Bag-of-Visual-Words and
Spatial Extensions for Land-Use Classification", ACM SIGSPATIAL GIS 2010.

The split is per class and seeded: ``split="train"`` and ``split="heldout"`` never share an image,
and every class has the same number in each (``heldout_fraction`` of the smallest class).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from ..metadata import SatMetadata
from .captions import CaptionTemplate, scale_phrase
from .errors import DataError
from .images import PLAIN_IMAGE_SUFFIXES, read_image

#: Folder name → the words a caption (and a user's prompt) uses for it.
CLASS_WORDS: dict[str, str] = {
    "agricultural": "agricultural fields",
    "airplane": "an airplane",
    "baseballdiamond": "a baseball diamond",
    "beach": "a beach",
    "buildings": "buildings",
    "chaparral": "chaparral",
    "denseresidential": "dense residential",
    "forest": "forest",
    "freeway": "a freeway",
    "golfcourse": "a golf course",
    "harbor": "a harbor",
    "intersection": "an intersection",
    "mediumresidential": "medium residential",
    "mobilehomepark": "a mobile home park",
    "overpass": "an overpass",
    "parkinglot": "a parking lot",
    "river": "a river",
    "runway": "a runway",
    "sparseresidential": "sparse residential",
    "storagetanks": "storage tanks",
    "tenniscourt": "a tennis court",
}
CLASSES: tuple[str, ...] = tuple(CLASS_WORDS)

UCM_TEMPLATE = "a satellite image of {class} in {country} at {scale}"
UCM_GSD = 0.3048  # one foot
COUNTRY = "United States of America"
SPLITS = ("train", "heldout", "all")


def is_ucmerced_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a UC Merced folder: every class has its sub-folder."""
    root = Path(path)
    return root.is_dir() and all((root / name).is_dir() for name in CLASSES)


def ucm_caption_fields(class_name: str, gsd: float | None) -> dict[str, str | None]:
    """The caption fields of a UC Merced image: its class words, the country and the scale."""
    return {"class": CLASS_WORDS[class_name], "country": COUNTRY, "scale": scale_phrase(gsd)}


def ucm_caption(class_name: str, gsd: float | None, dropout: float = 0.0, rng: random.Random | None = None) -> str:
    """``"a satellite image of a harbor in United States of America at 0.3 m resolution"``."""
    return CaptionTemplate(UCM_TEMPLATE).render(ucm_caption_fields(class_name, gsd), dropout=dropout, rng=rng)


class UCMerced:
    """Map-style dataset over a UC Merced folder (see module docstring).

    Each sample is the data layer's dict (``pixel_values`` in [-1, 1] at native size, ``caption``,
    ``metadata``) plus ``label`` (class index) and ``class_name``. ``size`` resamples every image
    to ``size``×``size`` (a block average for whole factors, e.g. 256 → 64) and scales the GSD in
    the metadata and the caption with it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        heldout_fraction: float = 0.2,
        seed: int = 0,
        classes: tuple[str, ...] | None = None,
        size: int | None = None,
        caption_dropout: float = 0.0,
        transform: Any = None,
    ):
        self.root = Path(root)
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: choose one of {', '.join(SPLITS)}")
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction={heldout_fraction}: out of range; allowed (0, 1)")
        self.classes = tuple(classes or CLASSES)
        unknown = [c for c in self.classes if c not in CLASS_WORDS]
        if unknown:
            raise ValueError(f"classes: {unknown[0]!r} is not a UC Merced class; choose from {', '.join(CLASSES)}")
        if not self.root.is_dir():
            raise DataError(self.root, "UC Merced folder not found (expected one sub-folder per class, e.g. harbor/)")
        files = {c: self._class_files(c) for c in self.classes}
        held_per_class = max(1, round(min(len(f) for f in files.values()) * heldout_fraction))
        if size is not None and size <= 0:
            raise ValueError(f"size={size}: must be a positive number of pixels")
        self.split, self.seed, self.size, self.transform = split, seed, size, transform
        self.caption_dropout, self.rng = caption_dropout, random.Random(seed)
        self.records: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            order = sorted(files[name])
            random.Random(f"{seed}:{name}").shuffle(order)
            held = set(order[:held_per_class])
            chosen = {"train": [f for f in order if f not in held], "heldout": sorted(held), "all": order}[split]
            self.records.extend((f, label) for f in sorted(chosen))

    def _class_files(self, name: str) -> list[Path]:
        folder = self.root / name
        if not folder.is_dir():
            raise DataError(folder, f"missing class folder {name!r} (UC Merced has {len(CLASSES)}: {', '.join(CLASSES)})")
        found = [p for p in folder.iterdir() if p.suffix.lower() in (*PLAIN_IMAGE_SUFFIXES, ".tif", ".tiff")]
        if not found:
            raise DataError(folder, "no images (.jpg/.png/.tif) in this class folder")
        return found

    def __len__(self) -> int:
        return len(self.records)

    def captions(self) -> list[str]:
        """Every sample's full caption, no pixels read (the tokenizer's vocabulary).

        The GSD assumes the usual 256 px source; :meth:`__getitem__` uses each image's own size.
        """
        gsd = UCM_GSD * 256 / self.size if self.size else UCM_GSD
        return [ucm_caption(self.classes[label], gsd) for _, label in self.records]

    def __getitem__(self, idx: int) -> dict[str, Any]:
        from .transforms import resample, to_model_range

        path, label = self.records[idx]
        image = read_image(path)
        if image.shape[0] != 3 or image.dtype.name != "uint8":
            raise DataError(path, f"expected an 8-bit RGB image, found {image.shape[0]} bands of {image.dtype}")
        gsd = UCM_GSD
        if self.size:
            gsd = UCM_GSD * image.shape[2] / self.size
            image = resample(image, self.size)
        name = self.classes[label]
        sample = {
            "key": f"ucm-{path.stem}",
            "pixel_values": to_model_range(image, ([0.0] * 3, [255.0] * 3)),
            "caption": ucm_caption(name, gsd, self.caption_dropout, self.rng),
            "metadata": SatMetadata(gsd=gsd),
            "label": label,
            "class_name": name,
            "caption_fields": ucm_caption_fields(name, gsd),
            "caption_template": UCM_TEMPLATE,
        }
        return self.transform(sample) if self.transform else sample
