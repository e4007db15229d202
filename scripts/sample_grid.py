"""A PNG grid of samples from a model: one row per (prompt, metadata), one column per seed.

    python scripts/sample_grid.py --model PATH --out docs/images/default-model-samples.png
    python scripts/sample_grid.py --classes --seeds 4 --out docs/images/default-model-classes.png
    python scripts/sample_grid.py --classes --only runway overpass river --scheduler dpm++ --out thin.png

The rows are the documented examples of the default model (docs/default-model.md); with
``--classes``, UC Merced's 21 land-use classes (captions as in training, 1.2 m GSD) in a 3×7 block
layout, each class ``--seeds`` images wide, a real held-out image of the class in front.
"""

from __future__ import annotations

import argparse

import torch
from PIL import Image

from diffusionsat import SatMetadata
from diffusionsat.data.transforms import to_uint8
from diffusionsat.data.ucmerced import CLASSES, UCM_GSD, UCMerced, ucm_caption
from diffusionsat.imaging import image_grid
from diffusionsat.loading import load_pipeline
from diffusionsat.schedulers import make_scheduler

UCM_GSD_64 = UCM_GSD * 256 / 64  # the 256 px images at the model's 64 px

ROWS = [
    ("a satellite image of vegetation and water in United States of America in summer from NAIP aerial at 5 m resolution",
     {"lat": 47.02, "lon": -99.15, "gsd": 5, "date": "2016-07-15"}),
    ("a satellite image of bare or built-up land in United States of America in autumn from NAIP aerial at 10 m resolution",
     {"lat": 47.02, "lon": -99.15, "gsd": 10, "date": "2015-09-26"}),
    ("a satellite image in Peru from Landsat false colour at 89 m resolution",
     {"lat": -8.4, "lon": -74.4, "gsd": 89, "date": "2005"}),
    ("a satellite image of vegetation in Slovenia from Sentinel-2 at 10 m resolution",
     {"lat": 45.87, "lon": 14.56, "gsd": 10}),
    ("a satellite image in The Bahamas from Landsat 7 at 300 m resolution",
     {"lat": 24.5, "lon": -77.7, "gsd": 300}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--scheduler", default=None, help="sampler (ddim, dpm++, ...; default: the model's own)")
    parser.add_argument("--only", nargs="+", metavar="CLASS", help="with --classes: these classes only, one per row")
    parser.add_argument("--scale", type=int, default=2, help="upscale factor of the grid (nearest) for viewing")
    parser.add_argument("--classes", action="store_true", help="UC Merced's 21 classes instead of the example rows")
    parser.add_argument("--ucmerced", default="../shared/data/ucmerced", help="for the real image in front (--classes)")
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    if args.scheduler:
        pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler)
    if args.classes:
        return class_grid(pipe, args)
    rows = []
    for prompt, md in ROWS:
        generators = [torch.Generator().manual_seed(s) for s in range(args.seeds)]
        rows.append(pipe(prompt, metadata=SatMetadata.from_dict(md), num_images_per_prompt=args.seeds,
                         num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generators).images)
    grid = Image.fromarray(image_grid(rows))
    grid = grid.resize((grid.width * args.scale, grid.height * args.scale), Image.NEAREST)
    grid.save(args.out)
    print(args.out)


def label_tile(text: str, size: int = 64) -> Image.Image:
    """The class name on a white tile of the grid's cell size."""
    import textwrap

    from PIL import ImageDraw, ImageFont

    tile = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default(size=11)
    draw.multiline_text((3, 3), "\n".join(textwrap.wrap(text, 10)), fill=(0, 0, 0), font=font, spacing=1)
    return tile


def class_grid(pipe, args) -> None:
    """Classes in 3 blocks of 7 rows; per class: its name, one real held-out image, then ``seeds`` samples."""
    from pathlib import Path

    real = UCMerced(args.ucmerced, "heldout", size=64) if Path(args.ucmerced).is_dir() else None
    blank = Image.new("RGB", (64, 64), (255, 255, 255))
    cells = {}
    names = args.only or CLASSES
    unknown = sorted(set(names) - set(CLASSES))
    if unknown:
        raise SystemExit(f"--only: unknown class {unknown[0]!r}; choose from {', '.join(CLASSES)}")
    for name in names:
        generators = [torch.Generator().manual_seed(s) for s in range(args.seeds)]
        images = pipe(ucm_caption(name, UCM_GSD_64), metadata=SatMetadata(gsd=UCM_GSD_64), num_images_per_prompt=args.seeds,
                      num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generators).images
        first = next((i for i, (_, label) in enumerate(real.records) if real.classes[label] == name), None) if real else None
        front = Image.fromarray(to_uint8(real[first]["pixel_values"])) if first is not None else blank
        cells[name] = [label_tile(name), front, *images]
    if args.only:
        rows = [cells[name] for name in names]
    else:
        rows = []
        for k in range(7):
            row = []
            for b in range(3):
                row += [*cells[CLASSES[b * 7 + k]], *([blank] if b < 2 else [])]
            rows.append(row)
    grid = Image.fromarray(image_grid(rows))
    grid = grid.resize((grid.width * args.scale, grid.height * args.scale), Image.NEAREST)
    grid.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
