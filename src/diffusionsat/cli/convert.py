"""``diffusionsat convert-checkpoint``: original DiffusionSat ControlNet folder → our format."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from ..fileio import atomic_dir
from .main import InputError, cli

EXAMPLES = """
\b
Examples:
  # a ControlNet alone
  diffusionsat convert-checkpoint outputs/controlnet3d_fmow_temporal/checkpoint-40000/controlnet \\
      models/temporal-controlnet
  # a task model: the base model folder + the converted controlnet/ subfolder
  diffusionsat convert-checkpoint original/controlnet models/temporal --base models/diffusionsat-sd21
"""


@cli.command("convert-checkpoint", epilog=EXAMPLES)
@click.argument("source")
@click.argument("destination")
@click.option("--kind", type=click.Choice(["auto", "2d", "3d"]), default="auto", show_default=True,
              help="ControlNet kind (auto: from the config's _class_name / weight shapes).")
@click.option("--max-frames", type=int, default=3, show_default=True,
              help="Frames the 3D ControlNet was trained with (the original's --num_cond).")
@click.option("--no-cond-metadata", is_flag=True, help="2D: the ControlNet was trained without conditioning metadata.")
@click.option("--base", default=None, help="Base model folder: write it with the ControlNet as DESTINATION/controlnet.")
@click.option("--overwrite", is_flag=True, help="Replace DESTINATION if it exists.")
def convert_checkpoint(source, destination, kind, max_frames, no_cond_metadata, base, overwrite):
    """Convert the original ControlNet checkpoint folder SOURCE into DESTINATION (safetensors)."""
    from ..conversion import convert_controlnet

    if max_frames < 1:
        raise InputError(f"--max-frames={max_frames}: must be >= 1")
    if base is not None and not (Path(base) / "model_index.json").is_file():
        raise InputError(f"--base {base!r} is not a model folder (no model_index.json)")
    model = convert_controlnet(source, kind=kind, max_frames=max_frames, use_cond_metadata=not no_cond_metadata)
    with atomic_dir(destination, overwrite=overwrite) as tmp:
        if base is not None:
            shutil.copytree(base, tmp, dirs_exist_ok=True)
            model.save_pretrained(tmp / "controlnet")
        else:
            model.save_pretrained(tmp)
    click.echo(f"{destination} ({type(model).__name__})")
