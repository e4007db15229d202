"""Options shared by several subcommands, so each is spelled and validated one way."""

from __future__ import annotations

import click

from ..metadata import SatMetadata


def metadata_options(func):
    """``--lat --lon --gsd --cloud-cover --date`` (strings: SatMetadata validates and names the field)."""
    options = [
        click.option("--lat", help="Latitude in degrees north, [-90, 90]."),
        click.option("--lon", help="Longitude in degrees east, [-180, 180]."),
        click.option("--gsd", help="Ground sample distance of the output in metres/pixel, (0, 1000]."),
        click.option("--cloud-cover", help="Cloud cover fraction [0, 1] (percent with --cloud-percent)."),
        click.option("--cloud-percent", is_flag=True, help="Read --cloud-cover as percent (0-100)."),
        click.option("--date", help="Acquisition date, ISO 8601 (2021-06-15, 2021-06 or 2021)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def metadata_from_options(lat, lon, gsd, cloud_cover, cloud_percent, date) -> SatMetadata:
    return SatMetadata.from_cli(
        lat=lat, lon=lon, gsd=gsd, cloud_cover=cloud_cover, date=date, cloud_cover_percent=cloud_percent
    )


def device_option(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Check ``--device`` while parsing: before any model loads, and as a one-line error (exit 2)."""
    from ..validation import check_device
    from .main import InputError

    try:
        return check_device(value)
    except ValueError as err:
        raise InputError(str(err).replace("device=", "--device=", 1)) from None


def sampling_options(func):
    """``--seed --steps --guidance --scheduler --model --checkpoint --device --overwrite``."""
    options = [
        click.option("--seed", type=int, default=None, help="Random seed (image i uses seed+i). Random if omitted."),
        click.option("--steps", type=int, default=25, show_default=True, help="Denoising steps, [1, 1000]."),
        click.option("--guidance", type=float, default=3.0, show_default=True, help="Classifier-free guidance scale."),
        click.option("--metadata-guidance", type=float, default=None, help="Separate guidance scale for metadata."),
        click.option("--scheduler", default=None, help="ddim, ddpm, dpm++, euler, euler-a, heun, lms, pndm, unipc."),
        click.option("--model", default=None, help="Model folder, original run folder or hub id (default: the embedded model)."),
        click.option("--checkpoint", type=int, default=None, help="Run folders: use checkpoint-N (default: the latest)."),
        click.option("--device", default="cpu", show_default=True, callback=device_option,
                     help="torch device, e.g. cpu or cuda."),
        click.option("--overwrite", is_flag=True, help="Replace existing output files."),
    ]
    for option in reversed(options):
        func = option(func)
    return func
