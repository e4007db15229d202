"""``diffusionsat prepare-data``: turn imagery into WebDataset shards + manifest + summary."""

from __future__ import annotations

import json

import click

from .main import InputError, cli


@cli.command("prepare-data")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (shards, manifest, summary).")
@click.option("--chip-size", required=True, type=int, help="Chip side in source pixels.")
@click.option("--task", type=click.Choice(["generate", "temporal", "superres", "inpaint"]), default="generate", show_default=True)
@click.option("--date-pattern", help="File-name pattern for dates, e.g. '*_{YYYYMMDD}.tif' or '{YYYY}.tif'.")
@click.option("--bands", help="Bands to keep: 1-based indices '1,2,3' or names 'B04,B03,B02'.")
@click.option("--band-names", help="Names of the kept bands where the file has none, e.g. 'red,green,blue,nir'.")
@click.option("--nodata", type=float, help="Nodata value for files that declare none (Landsat IDs default to 0).")
@click.option("--resize", type=int, help="Resample chips to this size (GSD scales accordingly).")
@click.option("--stride", type=int, help="Step between chips in pixels (default: chip size, no overlap).")
@click.option("--max-nodata", type=float, default=0.5, show_default=True, help="Skip chips with more nodata than this fraction.")
@click.option("--shard-size", type=int, default=1000, show_default=True, help="Samples per shard.")
@click.option("--sensor", help="Sensor name for captions (e.g. NAIP) when the files do not say.")
@click.option("--countries", type=click.Path(exists=True, dir_okay=False), help="Country polygons GeoJSON (default: shipped).")
@click.option("--num-frames", type=int, help="temporal: frames per sample, latest kept (default all).")
@click.option("--lowres", type=click.Path(exists=True, dir_okay=False), help="superres: low-res raster of the same place.")
@click.option("--sr-factor", type=int, default=4, show_default=True, help="superres: degradation factor without --lowres.")
@click.option("--mask-vector", type=click.Path(exists=True, dir_okay=False), help="inpaint: GeoJSON to rasterise as masks.")
@click.option("--mask-boxes", type=int, default=3, show_default=True, help="inpaint: random boxes without --mask-vector.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random boxes, and UC Merced's per-class split.")
@click.option("--split", type=click.Choice(["train", "heldout", "all"]), default="all", show_default=True,
              help="UC Merced folders: the seeded per-class split to write (80 %% train / 20 %% held out).")
@click.option("--no-stack-bands", is_flag=True, help="Keep single-band files (<scene>_B4.tif, ...) apart instead of "
              "stacking the bands of one scene.")
@click.option("--overwrite", is_flag=True, help="Replace an output folder prepared with other settings.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def prepare_data_command(inputs, out, chip_size, task, date_pattern, bands, band_names, nodata, resize, stride, max_nodata,
                         shard_size, sensor, countries, num_frames, lowres, sr_factor, mask_vector, mask_boxes, seed,
                         split, no_stack_bands, overwrite, no_progress) -> None:
    """Cut scenes, folders, manifests, fMoW trees or UC Merced into WebDataset shards.

    \b
    Examples:
      diffusionsat prepare-data ../shared/data/naip-timeseries --out data/naip --chip-size 128 \\
          --date-pattern '*_{YYYYMMDD}.tif' --bands 1,2,3 --sensor NAIP
      diffusionsat prepare-data ../shared/data/naip-timeseries --out data/naip-t --chip-size 128 \\
          --task temporal --num-frames 4 --date-pattern '*_{YYYYMMDD}.tif'
      diffusionsat prepare-data pan1.tif --lowres ms1.tif --task superres --chip-size 128 --out data/sr
      diffusionsat prepare-data ../shared/data/ucmerced --chip-size 256 --resize 64 --split train --out data/ucm
    """
    from tqdm.auto import tqdm

    from ..data.prepare import NoSamplesError, PrepareConfig, prepare_data

    cfg = PrepareConfig(
        inputs=list(inputs), chip_size=chip_size, task=task, stride=stride, resize=resize, bands=bands,
        band_names=band_names, nodata=nodata, date_pattern=date_pattern, max_nodata=max_nodata, shard_size=shard_size,
        sensor=sensor, countries=countries, num_frames=num_frames, sr_factor=sr_factor, lowres=lowres,
        mask_vector=mask_vector, mask_boxes=mask_boxes, seed=seed, stack_bands=not no_stack_bands, split=split,
    )
    progress = None if no_progress else (lambda it: tqdm(it, desc="samples", unit="chip"))
    try:
        summary = prepare_data(cfg, out, overwrite=overwrite, progress=progress)
    except NoSamplesError as err:
        for item in err.skipped:
            click.echo(f"skipped {item.path}: {item.reason}", err=True)
        raise InputError(f"no samples could be made from {', '.join(inputs)} (see the skipped files above); "
                         f"nothing was written to {out}") from None
    if summary["up_to_date"]:
        click.echo(f"{out}: already up to date ({summary['samples']} samples); nothing to do")
        return
    for item in summary["skipped"]:
        click.echo(f"skipped {item['path']}: {item['reason']}", err=True)
    click.echo(f"wrote {summary['samples']} samples in {len(summary['shards'])} shard(s) to {out} "
               f"({summary['files_used']} files used, {summary['files_skipped']} skipped, "
               f"{summary['chips_skipped_nodata']} chips skipped for nodata)")
    click.echo("metadata ranges: " + json.dumps(summary["metadata_ranges"]))
