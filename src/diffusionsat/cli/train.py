"""``diffusionsat train``: the same command on a laptop CPU or under ``accelerate launch``."""

from __future__ import annotations

import click

from .main import cli, require_extra

EXAMPLES = """
\b
Examples:
  diffusionsat train --config configs/train-tiny.yaml
  diffusionsat train --config configs/train-small.yaml --max-steps 20000 --resume latest
  accelerate launch --num_processes 8 -m diffusionsat.cli.launch train --config configs/train-sd21.yaml
\b
Any config key can be overridden as a flag: --batch-size 8 --learning-rate 2e-5 --use-ema false.
"""


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, epilog=EXAMPLES)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="YAML config file.")
@click.option("--resume", default=None, help="'latest' or a checkpoint folder.")
@click.pass_context
def train(ctx, config_path, resume):
    """Train or fine-tune a text+metadata model (config keys: docs/training.md)."""
    require_extra("train")
    from ..training import train as run_training
    from ..training.config import load_config, parse_override_args

    cfg = load_config(config_path, parse_override_args(list(ctx.args)))
    final = run_training(cfg, resume=resume)
    click.echo(f"model saved to {final}")
