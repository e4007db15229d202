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


def test_teacher_flags_distil_the_georeferenced_chips_and_not_uc_merced(shared_data, load_script, tmp_path):
    module = load_script("scripts/train_default_model.py")
    cfg = module.training_config(module.parse_args(
        ["--out", str(tmp_path / "run"), "--init", "default", "--teacher", "v1-model", "--teacher-weight", "0.75",
         "--metadata-dropout", "0.05"]))
    assert (cfg.teacher_model, cfg.teacher_weight, cfg.metadata_dropout) == ("v1-model", 0.75, 0.05)
    default = module.training_config(module.parse_args(["--out", str(tmp_path / "run")]))
    assert default.teacher_model is None and default.metadata_dropout == 0.1 and default.anchor_model is None
    anchored = module.training_config(module.parse_args(
        ["--out", str(tmp_path / "run"), "--init", "default", "--anchor", "v1-model", "--anchor-share", "0.4"]))
    assert (anchored.anchor_model, anchored.anchor_share, anchored.anchor_fields) == ("v1-model", 0.4, ["lon", "lat"])
    mix = module.build(shared_data, ucmerced=True, ucm_repeat=1)
    geo = len(module.build(shared_data))
    assert mix[0].get("distill", True) is True  # a georeferenced chip: the teacher's
    assert mix[geo]["distill"] is False and "ucm" not in str(mix[geo - 1].get("caption"))  # UC Merced: not
