"""scripts/train_default_model.py: the training mix it builds from ../shared/data."""

from __future__ import annotations

import pytest


def test_ucm_repeat_sets_uc_merced_share_of_the_default_model_mix(shared_data, load_script):
    module = load_script("scripts/train_default_model.py")
    geo = len(module.build(shared_data))
    once, twice = (len(module.build(shared_data, ucmerced=True, ucm_repeat=r)) for r in (1, 2))
    assert geo > 1000 and once - geo == 1344 and twice - geo == 2 * 1344  # UC Merced's train split: 64 × 21


def test_lr_schedule_flag_sets_a_decay_stage_and_keeps_the_constant_default(load_script, tmp_path):
    module = load_script("scripts/train_default_model.py")
    out = str(tmp_path / "run")
    default = module.training_config(module.parse_args(["--out", out]))
    assert default.lr_scheduler == "constant_with_warmup" and default.learning_rate == 3e-4
    cooled = module.training_config(module.parse_args(
        ["--out", out, "--init", "default", "--max-steps", "3000", "--lr-schedule", "cosine"]))
    assert cooled.lr_scheduler == "cosine" and cooled.max_steps == 3000 and cooled.lr_warmup_steps == 200
    assert cooled.learning_rate == 2e-4 and cooled.prediction_type == "v_prediction"
    with pytest.raises(SystemExit):
        module.parse_args(["--lr-schedule", "step"])
