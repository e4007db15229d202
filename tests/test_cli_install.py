"""The command line as a new user meets it: instant ``--help``, and the base install without extras."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import tomllib

from diffusionsat.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
COMMANDS = ("generate", "superres", "temporal", "inpaint", "info", "prepare-data", "convert-checkpoint",
            "train", "evaluate", "serve")
HEAVY = ("torch", "diffusers", "transformers", "rasterio")


def run_python(code: str, python: str = sys.executable, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), **env}
    return subprocess.run([python, "-c", code], env=full_env, capture_output=True, text=True, timeout=timeout)


def test_help_and_version_import_neither_torch_nor_diffusers():
    calls = [["--help"], ["--version"]] + [[c, "--help"] for c in COMMANDS]
    done = run_python(f"""
import sys
from diffusionsat.cli.main import main
for argv in {calls!r}:
    assert main(argv) == 0, argv
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
assert not heavy, heavy
""")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "train" in done.stdout and "evaluate" in done.stdout and "serve" in done.stdout


def test_extras_match_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(extras)
    for extra, modules in EXTRAS.items():
        assert len(modules) == len(extras[extra])


#: Makes the modules of every extra unimportable, as in a base install: ``import`` raises
#: ModuleNotFoundError and ``importlib.util.find_spec`` returns None.
BLOCKER = f"""
import sys
for name in {sorted({m for ms in EXTRAS.values() for m in ms})!r}:
    sys.modules[name] = None
"""


def test_commands_of_missing_extras_name_the_extra(tmp_path):
    done = run_python(BLOCKER + f"""
from diffusionsat.cli.main import main
assert main(["--help"]) == 0
assert main(["evaluate", "--task", "generate", "--data", {str(tmp_path)!r}, "--out", {str(tmp_path / "e")!r}]) == 2
assert main(["train", "--max-steps", "1"]) == 2
assert main(["serve", "--port", "7999"]) == 2
try:
    import diffusionsat.evaluation.metrics
except ModuleNotFoundError as err:  # the library keeps Python's own error
    print("library:", err.name)
""")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: `diffusionsat evaluate` needs the 'eval' extra: pip install 'diffusionsat[eval]' (torchmetrics is not installed)",
        "error: `diffusionsat train` needs the 'train' extra: pip install 'diffusionsat[train]' (tensorboard is not installed)",
        "error: `diffusionsat serve` needs the 'serve' extra: pip install 'diffusionsat[serve]' (fastapi is not installed)",
    ], done.stderr[-2000:]
    assert done.returncode == 0 and "library: torchmetrics" in done.stdout
    assert not (tmp_path / "e").exists()


def test_cli_maps_a_missing_extra_module_to_exit_2(monkeypatch, capsys):
    from diffusionsat.cli import main as cli_main

    def broken(**_):
        raise ModuleNotFoundError("No module named 'torchmetrics'", name="torchmetrics")

    cli_main._register()
    monkeypatch.setattr(cli_main.cli.commands["info"], "callback", broken)
    assert cli_main.main(["info"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: needs the 'eval' extra: pip install 'diffusionsat[eval]' (torchmetrics is not installed)")


# --- a real base install (no extras), built once per dependency list and cached outside the repo ------
def base_venv() -> Path:
    """A venv with torch==2.13.0 (first: the CPU wheel) and the base dependencies only; skips when pip
    cannot reach an index. The first build takes a few minutes; later runs reuse it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = sorted(project["dependencies"])
    key = hashlib.sha256(repr((sys.version_info[:2], deps)).encode()).hexdigest()[:12]
    venv = Path(tempfile.gettempdir()) / f"diffusionsat-base-venv-{key}"
    python = venv / "bin" / "python"
    if (venv / ".complete").is_file():
        return python
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
             [str(python), "-m", "pip", "install", "-q", "torch==2.13.0"],
             [str(python), "-m", "pip", "install", "-q", *deps]]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=1200)
        except subprocess.TimeoutExpired:
            pytest.skip(f"building the base-install venv timed out at: {' '.join(step[-2:])}")
        if done.returncode != 0:
            pytest.skip(f"cannot build the base-install venv (no package index?): {done.stderr.strip()[-300:]}")
    (venv / ".complete").write_text("\n".join(deps))
    return python


@pytest.mark.timeout(2400)
def test_base_install_runs_every_base_command(tmp_path):
    python = str(base_venv())
    done = run_python("""
import importlib.util
from diffusionsat.extras import EXTRAS
present = [m for ms in EXTRAS.values() for m in ms if importlib.util.find_spec(m)]
assert not present, f"the base venv has modules of extras: {present}"
""", python=python)
    assert done.returncode == 0, done.stderr[-2000:]
    env = {"PYTHONPATH": str(SRC)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "diffusionsat", *args], env={**os.environ, **env}, capture_output=True,
                              text=True, timeout=600, cwd=tmp_path)

    for command in COMMANDS:
        assert cli(command, "--help").returncode == 0, command
    for command, extra in (("train", "train"), ("evaluate", "eval"), ("serve", "serve")):
        args = ["--task", "generate", "--data", ".", "--out", "e"] if command == "evaluate" else []
        done = cli(command, *args)
        assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr[-2000:]
        assert f"pip install 'diffusionsat[{extra}]'" in done.stderr
    assert cli("info").returncode == 0
    done = cli("generate", "a satellite image of farmland", "--steps", "1", "--seed", "0", "--out", "g.png")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "g.png").is_file() and (tmp_path / "g.json").is_file()
    done = cli("generate", "x", "--lat", "100")
    assert done.returncode == 2 and done.stderr.strip() == "error: lat=100.0: out of range; allowed [-90, 90]"
