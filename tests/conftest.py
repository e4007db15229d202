"""Shared fixtures: the real data in ../shared/data and tiny randomly-initialised models."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

#: The project's real satellite imagery (never copied into the repository).
SHARED_DATA = Path(os.environ.get("DIFFUSIONSAT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
#: The repository root: scripts/ and benchmarks/ are files there, not an installed package.
REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow, opt-in tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def load_script():
    """Import a repository script (``"scripts/ship_task_model.py"``) as a module, once per session.

    It is registered in ``sys.modules`` under its stem, where its dataclasses look themselves up.
    """
    def load(relative: str):
        path = REPO / relative
        if path.stem not in sys.modules:
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        return sys.modules[path.stem]

    return load


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; tests that need it skip with a clear reason when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (clone the project beside ../shared, "
                    "or set DIFFUSIONSAT_SHARED_DATA)")
    return SHARED_DATA


TINY_CAPTIONS = [
    "a satellite image of farmland in united states",
    "a satellite image of a river in peru",
    "a satellite image of water and fields",
]


@pytest.fixture
def tiny_pipeline():
    """A randomly-initialised tiny pixel-space pipeline (16 px), progress bars off."""
    from diffusionsat.models.presets import build_pipeline

    pipe = build_pipeline("tiny", TINY_CAPTIONS, seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_model_dir(tiny_pipeline, tmp_path) -> Path:
    """The tiny pipeline saved as a diffusers folder (what --model takes)."""
    folder = tmp_path / "tiny-model"
    tiny_pipeline.save_pretrained(folder)
    return folder
