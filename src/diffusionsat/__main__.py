"""``python -m diffusionsat``: the command line."""

from .cli.main import run

run()
