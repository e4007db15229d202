"""``diffusionsat info``: versions, devices and the model card of a model."""

from __future__ import annotations

import platform
from pathlib import Path

import click

from .. import __version__
from ..loading import (
    default_model_path,
    describe_model,
    has_default_model,
    model_version,
    read_model_card,
    resolve_model,
)
from .main import cli


def task_controlnets(location: str) -> dict[str, Path]:
    """The task ControlNets a local model folder holds: ``controlnet_<task>/`` (or one ``controlnet/``)."""
    folder = Path(location)
    found = {}
    for task in ("superres", "temporal", "inpaint"):
        if (folder / f"controlnet_{task}" / "config.json").is_file():
            found[task] = folder / f"controlnet_{task}"
    if (folder / "controlnet" / "config.json").is_file():
        found.setdefault("controlnet", folder / "controlnet")
    return found


@cli.command()
@click.option("--model", default=None, help="Model folder (default: the embedded model).")
@click.option("--task", type=click.Choice(["superres", "temporal", "inpaint"]), default=None,
              help="Show the card of the model's task ControlNet instead (data, hold-out, metrics vs baselines).")
def info(model, task):
    """Show versions, the compute device and the model card of the (default) model."""
    import diffusers
    import torch
    import transformers

    click.echo(f"diffusionsat {__version__}")
    click.echo(f"python {platform.python_version()}  torch {torch.__version__}  diffusers {diffusers.__version__}  "
               f"transformers {transformers.__version__}")
    cuda = torch.cuda.is_available()
    click.echo(f"device: {'cuda (' + torch.cuda.get_device_name(0) + ')' if cuda else 'cpu'}, threads {torch.get_num_threads()}")
    click.echo(f"default model: {default_model_path()} ({'present' if has_default_model() else 'not shipped'})")
    if model is None and not has_default_model():
        return
    location = resolve_model(model)
    click.echo(f"model: {describe_model(location)}  version {model_version(location)}")
    tasks = task_controlnets(location)
    if task is not None:
        if task not in tasks:
            raise click.UsageError(f"--task {task}: this model has no {task} ControlNet "
                                   f"(it has: {', '.join(tasks) or 'none'})")
        card = read_model_card(tasks[task])
        click.echo(card if card else f"({tasks[task].name}/ has no MODEL_CARD.md)")
        return
    if tasks:
        click.echo("task models (used by these commands with no --model): "
                   + ", ".join(f"{name} ({folder.name}/)" for name, folder in tasks.items())
                   + "; their cards: diffusionsat info --task TASK")
    card = read_model_card(location)
    click.echo(card if card else "(this model folder has no MODEL_CARD.md)")
