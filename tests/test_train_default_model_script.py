"""scripts/train_default_model.py: the training mix it builds from ../shared/data."""

from __future__ import annotations


def test_ucm_repeat_sets_uc_merced_share_of_the_default_model_mix(shared_data, load_script):
    module = load_script("scripts/train_default_model.py")
    geo = len(module.build(shared_data))
    once, twice = (len(module.build(shared_data, ucmerced=True, ucm_repeat=r)) for r in (1, 2))
    assert geo > 1000 and once - geo == 1344 and twice - geo == 2 * 1344  # UC Merced's train split: 64 × 21
