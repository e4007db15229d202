"""A PNG grid of samples from a model: one row per (prompt, metadata), one column per seed.

    python scripts/sample_grid.py --model PATH --out docs/images/default-model-samples.png

The rows are the documented examples of the default model (docs/default-model.md).
"""

from __future__ import annotations

import argparse

import torch
from PIL import Image

from diffusionsat import SatMetadata
from diffusionsat.imaging import image_grid
from diffusionsat.loading import load_pipeline

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
    parser.add_argument("--scale", type=int, default=2, help="upscale factor of the grid (nearest) for viewing")
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for prompt, md in ROWS:
        generators = [torch.Generator().manual_seed(s) for s in range(args.seeds)]
        rows.append(pipe(prompt, metadata=SatMetadata.from_dict(md), num_images_per_prompt=args.seeds,
                         num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generators).images)
    grid = Image.fromarray(image_grid(rows))
    grid = grid.resize((grid.width * args.scale, grid.height * args.scale), Image.NEAREST)
    grid.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
