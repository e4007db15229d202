"""scripts/train_default_model.py: the training mix it builds from ../shared/data."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_default_model.py"


def test_ucm_repeat_sets_uc_merced_share_of_the_default_model_mix(shared_data, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_default_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_default_model", module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    geo = len(module.build(shared_data))
    once, twice = (len(module.build(shared_data, ucmerced=True, ucm_repeat=r)) for r in (1, 2))
    assert geo > 1000 and once - geo == 1344 and twice - geo == 2 * 1344  # UC Merced's train split: 64 × 21
