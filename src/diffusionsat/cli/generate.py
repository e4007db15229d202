"""``diffusionsat generate``: text + metadata → PNG (+ GeoTIFF) + JSON sidecar."""

from __future__ import annotations

import click

from .main import InputError, cli
from .options import metadata_from_options, metadata_options, sampling_options

EXAMPLES = """
\b
Examples:
  diffusionsat generate "farmland with small lakes in united states" \\
      --lat 47.0 --lon -99.2 --gsd 5 --date 2019-07-15 --seed 1 --out farm.png
  diffusionsat generate "a river in peru" --lat -8.4 --lon -74.4 --gsd 30 \\
      --date 2015 --num-images 4 --geotiff --out river.png
"""


@cli.command(epilog=EXAMPLES)
@click.argument("prompt")
@metadata_options
@sampling_options
@click.option("--negative-prompt", default=None, help="Text for the unconditional branch instead of ''.")
@click.option("--no-anchored-guidance", "plain_negative", is_flag=True,
              help="Guide against the all-unknown branch even where the model has a location-anchored one "
                   "(the default model: requests with --lat and --lon; docs/default-model.md).")
@click.option("--width", type=int, default=None, help="Width in pixels (default: the model's native size).")
@click.option("--height", type=int, default=None, help="Height in pixels (default: the model's native size).")
@click.option("--num-images", type=int, default=1, show_default=True, help="Images to generate, [1, 64].")
@click.option("--out", "out", default=None, help="Output PNG path (default: generated-N.png, first free N).")
@click.option("--geotiff", is_flag=True, help="Also write a GeoTIFF at lat/lon with the GSD (local UTM zone).")
def generate(prompt, lat, lon, gsd, cloud_cover, cloud_percent, date, seed, steps, guidance, metadata_guidance,
             scheduler, model, checkpoint, device, overwrite, negative_prompt, plain_negative, width, height, num_images, out, geotiff):
    """Generate satellite images from a PROMPT and metadata."""
    from ..generation import GenerationRequest, generate_images, save_images
    from ..loading import describe_model, load_pipeline, model_version, resolve_model
    from ..outputs import check_outputs, next_free_name, output_paths

    # Validate everything cheap before loading any model.
    metadata = metadata_from_options(lat, lon, gsd, cloud_cover, cloud_percent, date)
    request = GenerationRequest(
        prompt=prompt, metadata=metadata, seed=seed, steps=steps, guidance_scale=guidance,
        metadata_guidance_scale=metadata_guidance, negative_prompt=negative_prompt, scheduler=scheduler,
        anchored_guidance=not plain_negative,
        width=width, height=height, num_images=num_images,
    ).validate()
    if geotiff and None in (metadata.lat, metadata.lon, metadata.gsd):
        raise InputError("--geotiff needs --lat, --lon and --gsd to georeference the image")
    paths = output_paths(out or next_free_name(), num_images, geotiff)
    check_outputs(paths, overwrite)
    location = resolve_model(model, checkpoint)
    if describe_model(location) != location:  # a run folder: say which checkpoint
        click.echo(f"model: {describe_model(location)}", err=True)

    pipe = load_pipeline(location, device=device)
    images, seeds, used_scheduler = generate_images(pipe, request)
    written = save_images(
        images, seeds, request, paths, model=location, model_version=model_version(location),
        scheduler=used_scheduler, overwrite=overwrite,
    )
    for item in written:
        click.echo(" ".join(str(p) for p in item.all()))
