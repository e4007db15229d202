"""``diffusionsat superres | temporal | inpaint`` and ``generate --control``: ControlNet tasks.

Each reads georeferenced rasters, calls one function of :mod:`diffusionsat.conditional`, and writes
PNG + GeoTIFF (on the input's footprint) + JSON sidecar. ``superres``/``inpaint`` inputs whose output
is larger than ``--block`` pixels a side go block by block through :mod:`diffusionsat.scenes`.
A task model is the base model folder plus a ``controlnet/`` (or ``controlnet_<task>/``) subfolder
(``--model``), or a separate ``--controlnet`` folder.
"""

from __future__ import annotations

import contextlib
import functools
import random
from pathlib import Path

import click

from ..choices import (
    BLOCK_RANGE,
    CONTROL_KINDS,
    DEFAULT_BLOCK,
    DEFAULT_MAX_INPUT_PIXELS,
    MAX_PNG_PIXELS,
    MIN_BLOCK_INPUT,
)
from ..schedulers import check_scheduler, scheduler_name
from . import generate as _generate  # noqa: F401  (registered first: _hook_generate adds --control to it)
from .main import InputError, cli
from .options import metadata_from_options, metadata_options, sampling_options


def task_options(func):
    """Options every conditional task shares (besides metadata and sampling)."""
    options = [
        click.option("--prompt", default="", show_default=True, help="Text prompt (e.g. 'a satellite image of farmland')."),
        click.option("--controlnet", "controlnet", default=None,
                     help="ControlNet folder (default: MODEL/controlnet)."),
        click.option("--bands", default=None, help="Bands to use: 1-based indices or names, e.g. 1,2,3 or B04,B03,B02."),
        click.option("--window", default=None, help="Only this pixel window of the input: COL,ROW,WIDTH,HEIGHT."),
        click.option("--tile", type=int, default=None, help="Tile size in model pixels (default: the model's native size)."),
        click.option("--overlap", type=int, default=None, help="Tile overlap in model pixels (default: tile/4)."),
        click.option("--out", default=None, help="Output PNG path (default: INPUT_<task>.png)."),
        click.option("--max-pixels", type=click.IntRange(64, None), default=DEFAULT_MAX_INPUT_PIXELS,
                     show_default=True, help="Largest input (or --window) processed, in pixels; checked from the header."),
        click.option("--num-samples", type=int, default=1, show_default=True,
                     help=f"Samples to draw, [1, {MAX_TASK_SAMPLES}] (seeds SEED, SEED+1, ...). With K > 1: OUT_0 ... "
                          "OUT_{K-1} and OUT_spread.png/.tif, the per-pixel standard deviation across the samples "
                          "(where the model guesses)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


MAX_TASK_SAMPLES = 16


def _check_num_samples(num_samples: int, blocks: bool) -> None:
    if not 1 <= num_samples <= MAX_TASK_SAMPLES:
        raise InputError(f"--num-samples={num_samples}: out of range; allowed [1, {MAX_TASK_SAMPLES}]")
    if num_samples > 1 and blocks:
        raise InputError(f"--num-samples={num_samples}: spread maps are made for outputs of one block; this scene is "
                         "processed block by block: take a part with --window or raise --block")


def block_option(func):
    """``--block``: scenes whose output is larger than one block are processed block by block."""
    return click.option(
        "--block", type=int, default=DEFAULT_BLOCK, show_default=True,
        help=f"Block side in output pixels, [{BLOCK_RANGE[0]}, {BLOCK_RANGE[1]}] (superres: at least "
             f"{MIN_BLOCK_INPUT} x --scale). A larger output is made block by block: windowed reads and writes, "
             f"overlaps blended, memory bounded by the block; over {MAX_PNG_PIXELS} output pixels no PNG is written.",
    )(func)


def _check_block(block: int, scale: int = 1) -> None:
    low = max(BLOCK_RANGE[0], MIN_BLOCK_INPUT * scale)
    if not low <= block <= BLOCK_RANGE[1]:
        with_scale = f" with --scale {scale}" if low > BLOCK_RANGE[0] else ""
        raise InputError(f"--block={block}: out of range; allowed [{low}, {BLOCK_RANGE[1]}] output pixels{with_scale}")


def _check_sampling(steps: int, guidance: float, scheduler: str | None, tile: int | None, overlap: int | None) -> None:
    if not 1 <= steps <= 1000:
        raise InputError(f"--steps={steps}: out of range; allowed [1, 1000]")
    if not 0 <= guidance <= 50:
        raise InputError(f"--guidance={guidance}: out of range; allowed [0, 50]")
    if scheduler is not None:
        try:
            check_scheduler(scheduler)
        except ValueError as err:
            raise InputError(f"--{err}") from None
    if tile is not None and tile < 8:
        raise InputError(f"--tile={tile}: must be >= 8")
    if overlap is not None and (overlap < 0 or (tile is not None and overlap >= tile)):
        raise InputError(f"--overlap={overlap}: must be >= 0 and smaller than the tile")


def _load(model, checkpoint, controlnet, device, scheduler, task):
    import diffusers
    import transformers

    from ..loading import describe_model, resolve_model
    from ..pipelines.pipeline_controlnet import load_controlnet_pipeline
    from ..schedulers import make_scheduler

    location = resolve_model(model, checkpoint)
    if describe_model(location) != location:  # a run folder: say which checkpoint
        click.echo(f"model: {describe_model(location)}", err=True)
    diffusers.utils.logging.disable_progress_bar()  # loading bars; the denoising bar stays
    transformers.utils.logging.disable_progress_bar()
    pipe = load_controlnet_pipeline(location, controlnet=controlnet, device=device, task=task)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler)
    return pipe, location


def _describe(steps, guidance, pipe, location) -> dict:
    """The sidecar's record of how an image was made (besides prompt, seed, metadata)."""
    return {"steps": steps, "guidance_scale": guidance, "scheduler": scheduler_name(pipe.scheduler),
            "model": Path(location).name if Path(location).exists() else location}


def _write(result, out, default_stem, task, prompt, steps, guidance, pipe, location, overwrite):
    from .. import conditional as tasks
    from ..loading import model_version
    from ..outputs import check_outputs, output_paths

    paths = output_paths(out or f"{default_stem}_{task}.png", 1, geotiff=result.crs is not None)[0]
    check_outputs([paths], overwrite)
    written = tasks.save_task_result(result, paths, task=task, prompt=prompt, model_version=model_version(location),
                                     overwrite=overwrite, **_describe(steps, guidance, pipe, location))
    click.echo(" ".join(str(p) for p in written.all()))


def _write_samples(results, out, default_stem, task, prompt, steps, guidance, pipe, location, overwrite):
    """K results of one call + their spread map, all appearing together or not at all."""
    from .. import conditional as tasks
    from ..fileio import atomic_files
    from ..loading import model_version
    from ..outputs import check_outputs, output_paths

    if len(results) == 1:
        return _write(results[0], out, default_stem, task, prompt, steps, guidance, pipe, location, overwrite)
    geo = results[0].crs is not None
    paths = output_paths(out or f"{default_stem}_{task}.png", len(results), geotiff=geo)
    base = paths[0].png.with_name(paths[0].png.name.rsplit("_", 1)[0])
    spread_png, spread_tif = base.with_name(f"{base.name}_spread.png"), (base.with_name(f"{base.name}_spread.tif")
                                                                         if geo else None)
    spread_files = [spread_png] + ([spread_tif] if spread_tif else [])
    check_outputs(paths, overwrite)
    spread = tasks.sample_spread([r.image for r in results])
    with atomic_files([p for op in paths for p in op.all()] + spread_files, overwrite=overwrite) as staged:
        for k, (result, op) in enumerate(zip(results, paths)):
            result.extra.update({"num_samples": len(results), "sample_index": k,
                                 "spread": (spread_tif or spread_png).name,
                                 "spread_mean": float(spread.mean()), "spread_max": float(spread.max())})
            tasks.save_task_result(result, op, task=task, prompt=prompt, model_version=model_version(location),
                                   overwrite=overwrite, staging=staged, **_describe(steps, guidance, pipe, location))
        tasks.save_spread(spread, staged[spread_png], staged[spread_tif] if spread_tif else None, results[0].crs,
                          results[0].transform, len(results))
    click.echo(" ".join(str(p) for op in paths for p in op.all()) + " " + " ".join(str(p) for p in spread_files))


def _scene_paths(out, default_stem, task, overwrite):
    """Outputs of a block-processed scene (always with a .tif), checked before any work."""
    from ..outputs import check_outputs, output_paths

    paths = output_paths(out or f"{default_stem}_{task}.png", 1, geotiff=True)[0]
    check_outputs([paths], overwrite)
    return paths


def _report_scene(done) -> None:
    if done.png_skipped:
        click.echo(f"note: no PNG: {done.png_skipped}; wrote the TIFF and sidecar only", err=True)
    click.echo(" ".join(str(p) for p in done.paths))


@contextlib.contextmanager
def _band_hint(bands, trained):
    """A band name the file lacks: say which bands the ControlNet was trained on."""
    try:
        yield
    except ValueError as err:
        if bands is None and trained and "not found" in str(err):
            raise InputError(f"{err}; this ControlNet was trained on {', '.join(trained)}: pick them with --bands "
                             "(1-based indices)") from None
        raise


def _overrides(lat, lon, gsd, cloud_cover, cloud_percent, date):
    md = metadata_from_options(lat, lon, gsd, cloud_cover, cloud_percent, date)
    return None if md.is_unknown() else md


def _seed(seed: int | None) -> int:
    return seed if seed is not None else random.SystemRandom().randrange(2**31)


def _sampling_kwargs(steps, guidance, metadata_guidance, tile, overlap) -> dict:
    return {"num_inference_steps": steps, "guidance_scale": guidance, "metadata_guidance_scale": metadata_guidance,
            "tile_size": tile, "tile_overlap": overlap}


SUPERRES_EXAMPLES = """
\b
Examples:
  diffusionsat superres ../shared/data/sentinel2-slovenia/reference_scene_0.tif --scale 4 \\
      --bands B04,B03,B02,B08 --model models/superres --seed 1 --out slovenia_x4.png
  # multi-image SR: several dates of one place, fused during sampling
  diffusionsat superres scene_0.tif scene_1.tif scene_2.tif --scale 4 --model models/superres
"""


@cli.command(epilog=SUPERRES_EXAMPLES)
@click.argument("inputs", nargs=-1, required=True)
@click.option("--scale", type=int, default=4, show_default=True, help="Upscaling factor, [1, 16].")
@click.option("--reproject", is_flag=True, help="Resample inputs on another grid onto the first input's grid.")
@click.option("--consistency/--no-consistency", default=True, show_default=True,
              help="Back-project the result onto the input, so that its SCALE-times average reproduces the input's "
                   "pixels (RGB inputs): the sensor's colours, the model's detail.")
@block_option
@task_options
@metadata_options
@sampling_options
def superres(inputs, scale, reproject, consistency, block, prompt, controlnet, bands, window, tile, overlap, out, max_pixels,
             num_samples, lat, lon, gsd, cloud_cover, cloud_percent, date, seed, steps, guidance, metadata_guidance, scheduler, model, checkpoint,
             device, overwrite):
    """Super-resolve low-res raster INPUTS (one, or several dates of one place) to RGB SCALE times finer.

    The output keeps the input's footprint and CRS with a GSD SCALE times finer. An output larger
    than --block pixels a side is made block by block (windowed reads and writes, blended overlaps)
    into one GeoTIFF; inside a block the model denoises tile by tile (--tile, --overlap).
    """
    from .. import conditional as tasks
    from .. import scenes

    if not 1 <= scale <= 16:
        raise InputError(f"--scale={scale}: out of range; allowed [1, 16]")
    _check_block(block, scale)
    _check_sampling(steps, guidance, scheduler, tile, overlap)
    overrides = _overrides(lat, lon, gsd, cloud_cover, cloud_percent, date)
    parsed = tasks.parse_window(window)
    for path in inputs:  # from the headers, before any model loads
        tasks.check_input_size(path, parsed, max_pixels)
    width, height = tasks.window_size(inputs[0], parsed)
    scene_paths = None
    _check_num_samples(num_samples, scenes.needs_blocks(width, height, scale, block))
    if scenes.needs_blocks(width, height, scale, block):
        scene_paths = _scene_paths(out, Path(inputs[0]).stem, "superres", overwrite)
    pipe, location = _load(model, checkpoint, controlnet, device, scheduler, "superres")
    trained = tasks.controlnet_bands(pipe)
    chosen = bands or (",".join(trained) if trained else None)
    sampling = {**_sampling_kwargs(steps, guidance, metadata_guidance, tile, overlap), "consistency": consistency}
    if scene_paths is not None:
        from ..loading import model_version

        with _band_hint(bands, trained):
            done = scenes.superresolve_scene(
                pipe, inputs, scene_paths, scale=scale, bands=chosen, window=parsed, block=block, prompt=prompt,
                metadata=overrides, seed=_seed(seed), reproject=reproject, overwrite=overwrite,
                describe=_describe(steps, guidance, pipe, location), model_version=model_version(location), **sampling)
        return _report_scene(done)
    with _band_hint(bands, trained):
        rasters = [tasks.read_input(p, bands=chosen, window=parsed, max_pixels=max_pixels) for p in inputs]
    first = _seed(seed)
    results = [tasks.superresolve(pipe, rasters, scale=scale, prompt=prompt, metadata=overrides, seed=first + k,
                                  reproject=reproject, **sampling) for k in range(num_samples)]
    _write_samples(results, out, Path(inputs[0]).stem, "superres", prompt, steps, guidance, pipe, location, overwrite)


TEMPORAL_EXAMPLES = """
\b
Examples:
  diffusionsat temporal ../shared/data/landsat-timeseries/1995.tif \\
      ../shared/data/landsat-timeseries/1985.tif ../shared/data/landsat-timeseries/1990.tif \\
      --date-pattern '{YYYY}.tif' --target-date 2000 --bands 1,2,3 --model models/temporal
  diffusionsat temporal naip/*_2015*.tif naip/*_2017*.tif --date-pattern '*_{YYYYMMDD}.tif' \\
      --target-date 2021-06-01 --reproject --bands 1,2,3,4 --model models/temporal
"""


@cli.command(epilog=TEMPORAL_EXAMPLES)
@click.argument("frames", nargs=-1, required=True)
@click.option("--target-date", required=True, help="Date of the image to generate (ISO 8601: 2021-06-01, 2021-06, 2021).")
@click.option("--frame-dates", default=None, help="Dates of the frames, comma-separated, in the order given.")
@click.option("--date-pattern", default=None, help="Date in the file names, e.g. '*_{YYYYMMDD}.tif' or '{YYYY}.tif'.")
@click.option("--reproject", is_flag=True, help="Resample frames on another grid onto the first frame's grid.")
@click.option("--keep-order", is_flag=True, help="Give the frames to the model in the order listed (default: by date).")
@task_options
@metadata_options
@sampling_options
def temporal(frames, target_date, frame_dates, date_pattern, reproject, keep_order, prompt, controlnet, bands, window, tile,
             overlap, out, max_pixels, num_samples, lat, lon, gsd, cloud_cover, cloud_percent, date, seed, steps, guidance,
             metadata_guidance, scheduler, model, checkpoint, device, overwrite):
    """Generate the image of a place at --target-date from FRAMES of it at other dates (any order).

    Frames are sorted by date (--keep-order: as listed); dates come from --frame-dates, sidecars, tags, Landsat IDs or
    --date-pattern. All frames must share the first frame's grid (or use --reproject).
    """
    from .. import conditional as tasks
    from ..metadata import parse_date

    if date is not None:
        raise InputError("use --target-date for the date to generate (--date is not used by temporal)")
    parse_date(target_date, field="target_date")
    dates = [d.strip() for d in frame_dates.split(",")] if frame_dates else [None] * len(frames)
    if len(dates) != len(frames):
        raise InputError(f"--frame-dates has {len(dates)} dates for {len(frames)} frames")
    _check_sampling(steps, guidance, scheduler, tile, overlap)
    _check_num_samples(num_samples, blocks=False)
    overrides = _overrides(lat, lon, gsd, cloud_cover, cloud_percent, None)
    parsed = tasks.parse_window(window)
    rasters = [tasks.read_input(p, bands=bands, window=parsed, date=d, date_pattern=date_pattern, max_pixels=max_pixels)
               for p, d in zip(frames, dates)]
    undated = [r.path.name for r in rasters if r.metadata.year is None]
    if undated:
        raise InputError(f"no date known for {undated[0]}; give --frame-dates or --date-pattern")
    pipe, location = _load(model, checkpoint, controlnet, device, scheduler, "temporal")
    first = _seed(seed)
    results = [tasks.predict_temporal(pipe, rasters, target_date=target_date, prompt=prompt, metadata=overrides,
                                      seed=first + k, reproject=reproject, sort_frames=not keep_order,
                                      **_sampling_kwargs(steps, guidance, metadata_guidance, tile, overlap))
               for k in range(num_samples)]
    _write_samples(results, out, Path(frames[0]).stem, "temporal", prompt, steps, guidance, pipe, location, overwrite)


INPAINT_EXAMPLES = """
\b
Examples:
  diffusionsat inpaint ../shared/data/spacenet-samples/sample_geotiff.tif --bands 1,1,1 \\
      --geojson ../shared/data/spacenet-samples/sample_geotiff_buildings.geojson --model models/inpaint
  diffusionsat inpaint scene.tif --mask damage_mask.tif --bands 1,2,3 --model models/inpaint
"""


@cli.command(epilog=INPAINT_EXAMPLES)
@click.argument("image")
@click.option("--mask", "mask_path", default=None, help="1-band raster on the image's grid; non-zero = fill.")
@click.option("--geojson", default=None, help="GeoJSON features to fill (EPSG:4326 unless the file names a CRS).")
@block_option
@task_options
@metadata_options
@sampling_options
def inpaint(image, mask_path, geojson, block, prompt, controlnet, bands, window, tile, overlap, out, max_pixels,
            num_samples, lat, lon, gsd, cloud_cover, cloud_percent, date, seed, steps, guidance, metadata_guidance, scheduler, model, checkpoint,
            device, overwrite):
    """Fill the masked pixels of IMAGE; every unmasked pixel is returned exactly as read.

    An IMAGE (window) larger than --block pixels a side is filled block by block into one GeoTIFF:
    blocks without a masked pixel are copied through without running the model.
    """
    from .. import conditional as tasks
    from .. import scenes

    if (mask_path is None) == (geojson is None):
        raise InputError("give exactly one of --mask MASK.tif or --geojson FEATURES.geojson")
    _check_block(block)
    _check_sampling(steps, guidance, scheduler, tile, overlap)
    overrides = _overrides(lat, lon, gsd, cloud_cover, cloud_percent, date)
    parsed = tasks.parse_window(window)
    tasks.check_input_size(image, parsed, max_pixels)
    width, height = tasks.window_size(image, parsed)
    _check_num_samples(num_samples, scenes.needs_blocks(width, height, 1, block))
    if scenes.needs_blocks(width, height, 1, block):
        from ..loading import model_version

        scene_paths = _scene_paths(out, Path(image).stem, "inpaint", overwrite)
        pipe, location = _load(model, checkpoint, controlnet, device, scheduler, "inpaint")
        done = scenes.inpaint_scene(
            pipe, image, scene_paths, mask=mask_path, geojson=geojson, bands=bands, window=parsed, block=block,
            prompt=prompt, metadata=overrides, seed=_seed(seed), overwrite=overwrite,
            describe=_describe(steps, guidance, pipe, location), model_version=model_version(location),
            **_sampling_kwargs(steps, guidance, metadata_guidance, tile, overlap))
        return _report_scene(done)
    raster = tasks.read_input(image, bands=bands, window=parsed, max_pixels=max_pixels)
    if mask_path is not None:
        fill = tasks.mask_from_raster(mask_path, raster, window=parsed)
    else:
        fill = tasks.mask_from_geojson(geojson, raster)
    pipe, location = _load(model, checkpoint, controlnet, device, scheduler, "inpaint")
    first = _seed(seed)
    results = [tasks.inpaint_raster(pipe, raster, fill, prompt=prompt, metadata=overrides, seed=first + k,
                                    **_sampling_kwargs(steps, guidance, metadata_guidance, tile, overlap))
               for k in range(num_samples)]
    _write_samples(results, out, Path(image).stem, "inpaint", prompt, steps, guidance, pipe, location, overwrite)


# --- `generate --control KIND IMAGE`: a hook on the existing generate command ------------------------
def _controlled_generate(original, control, controlnet, **kwargs):
    """Run plain ``generate`` unless ``--control`` is given; then steer it with the control map."""
    from .. import conditional as tasks
    from ..fileio import atomic_files
    from ..loading import model_version
    from ..outputs import check_outputs, output_paths

    if control is None:
        if controlnet is not None:
            raise InputError("--controlnet needs --control KIND IMAGE")
        return original(**kwargs)
    kind, image = control
    prompt, num_images = kwargs["prompt"], kwargs["num_images"]
    steps, guidance, scheduler = kwargs["steps"], kwargs["guidance"], kwargs["scheduler"]
    if kwargs.get("width") is not None or kwargs.get("height") is not None:
        raise InputError("with --control the output has the control image's size; drop --width/--height")
    if not 1 <= num_images <= 64:
        raise InputError(f"--num-images={num_images}: out of range; allowed [1, 64]")
    _check_sampling(steps, guidance, scheduler, None, None)
    overrides = _overrides(kwargs["lat"], kwargs["lon"], kwargs["gsd"], kwargs["cloud_cover"], kwargs["cloud_percent"],
                           kwargs["date"])
    raster = tasks.read_input(image)
    if kwargs["geotiff"] and not raster.georeferenced:
        raise InputError("--geotiff with --control needs a georeferenced control image")
    paths = output_paths(kwargs["out"] or f"{Path(image).stem}_{kind}.png", num_images, geotiff=raster.georeferenced)
    check_outputs(paths, kwargs["overwrite"])
    pipe, location = _load(kwargs["model"], kwargs["checkpoint"], controlnet, kwargs["device"], scheduler, "control")
    seed = _seed(kwargs["seed"])
    results = [tasks.controlled_generation(
        pipe, raster, kind, prompt=prompt, metadata=overrides, seed=seed + i,
        num_inference_steps=steps, guidance_scale=guidance, metadata_guidance_scale=kwargs["metadata_guidance"],
        negative_prompt=kwargs["negative_prompt"],
    ) for i in range(len(paths))]
    model_name = Path(location).name if Path(location).exists() else location
    with atomic_files([p for op in paths for p in op.all()], overwrite=kwargs["overwrite"]) as staging:
        written = [tasks.save_task_result(
            result, path, task="control", prompt=prompt, steps=steps, guidance_scale=guidance,
            scheduler=scheduler_name(pipe.scheduler), model=model_name, model_version=model_version(location),
            staging=staging,
        ) for result, path in zip(results, paths)]
    for item in written:
        click.echo(" ".join(str(p) for p in item.all()))


def _hook_generate() -> None:
    command = cli.commands.get("generate")
    if command is None or any(p.name == "control" for p in command.params):
        return
    command.params.append(click.Option(
        ["--control"], nargs=2, type=(click.Choice(CONTROL_KINDS), str), default=None,
        help="Steer generation with a map: road|mask|edges IMAGE (needs a model with a controlnet/).",
    ))
    command.params.append(click.Option(["--controlnet"], default=None, help="ControlNet folder for --control."))
    command.callback = functools.partial(_controlled_generate, command.callback)
    command.epilog = (command.epilog or "") + (
        "  diffusionsat generate 'roads in a desert town' --control road roads.tif --model models/control\n"
    )


_hook_generate()
