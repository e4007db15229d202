"""``python -m diffusionsat.cli.launch ...``: the CLI as a module, for ``accelerate launch -m``."""

from .main import run

if __name__ == "__main__":
    run()
