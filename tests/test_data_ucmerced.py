"""UC Merced: the seeded per-class split, captions and GSD, errors, prepare-data and training input."""

from __future__ import annotations

import json
import shutil

import pytest

from diffusionsat.data.ucmerced import CLASSES, UCM_GSD, UCMerced, is_ucmerced_folder, ucm_caption


@pytest.fixture(scope="module")
def ucm_root(shared_data):
    root = shared_data / "ucmerced"
    if not is_ucmerced_folder(root):
        pytest.skip(f"UC Merced not found at {root}")
    return root


def test_split_is_per_class_disjoint_and_seeded(ucm_root):
    train, held = UCMerced(ucm_root, "train"), UCMerced(ucm_root, "heldout")
    assert len(train) == 21 * 64 and len(held) == 21 * 16
    assert not {p for p, _ in train.records} & {p for p, _ in held.records}
    assert {p for p, _ in train.records} | {p for p, _ in held.records} == {p for p, _ in UCMerced(ucm_root, "all").records}
    for label in range(len(CLASSES)):
        assert sum(1 for _, lab in held.records if lab == label) == 16
    assert held.records == UCMerced(ucm_root, "heldout").records  # same seed, same split
    assert held.records != UCMerced(ucm_root, "heldout", seed=1).records


def test_sample_caption_and_gsd_follow_the_resize(ucm_root):
    native = UCMerced(ucm_root, "heldout", classes=("harbor",))[0]
    assert native["pixel_values"].shape == (3, 256, 256) and native["metadata"].gsd == pytest.approx(UCM_GSD)
    assert native["caption"] == "a satellite image of a harbor in United States of America at 0.3 m resolution"
    small = UCMerced(ucm_root, "heldout", classes=("harbor",), size=64)
    sample = small[0]
    assert sample["pixel_values"].shape == (3, 64, 64)
    assert float(sample["pixel_values"].min()) >= -1.0 and float(sample["pixel_values"].max()) <= 1.0
    assert sample["metadata"].gsd == pytest.approx(UCM_GSD * 4)
    assert sample["caption"].endswith("at 1.2 m resolution") and small.captions()[0] == sample["caption"]
    assert sample["class_name"] == "harbor" and sample["label"] == 0
    assert sample["metadata"].lat is None and sample["metadata"].date_string() is None  # unknown, not zero


def test_caption_words_of_every_class():
    assert ucm_caption("tenniscourt", 1.2192) == "a satellite image of a tennis court in United States of America at 1.2 m resolution"
    assert len(CLASSES) == 21


def test_missing_files_are_clear_errors(tmp_path, ucm_root):
    with pytest.raises(ValueError, match="UC Merced folder not found"):
        UCMerced(tmp_path / "nowhere")
    partial = tmp_path / "ucm"
    shutil.copytree(ucm_root / "beach", partial / "beach")
    with pytest.raises(ValueError, match="missing class folder 'agricultural'"):
        UCMerced(partial)
    assert len(UCMerced(partial, "all", classes=("beach",))) == 80
    (partial / "forest").mkdir()
    with pytest.raises(ValueError, match="no images"):
        UCMerced(partial, classes=("beach", "forest"))
    with pytest.raises(ValueError, match="not a UC Merced class"):
        UCMerced(partial, classes=("volcano",))
    with pytest.raises(ValueError, match="split='test'"):
        UCMerced(partial, "test")


def test_prepare_data_writes_the_heldout_split(ucm_root, tmp_path):
    from diffusionsat.data.prepare import PrepareConfig, prepare_data
    from diffusionsat.data.shards import ShardDataset

    summary = prepare_data(PrepareConfig(inputs=[str(ucm_root)], chip_size=256, resize=32, split="heldout"), tmp_path / "out")
    assert summary["samples"] == 21 * 16
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    held = {str(p) for p, _ in UCMerced(ucm_root, "heldout").records}
    assert {r["path"] for r in rows} == held
    sample = next(iter(ShardDataset([str(tmp_path / "out")])))
    assert sample["pixel_values"].shape == (3, 32, 32) and sample["caption"].endswith("at 2.4 m resolution")
    assert sample["record"]["class"] in CLASSES


def test_training_reads_the_train_split(ucm_root, tmp_path):
    from diffusionsat.training import load_config
    from diffusionsat.training.datasets import build_dataset

    cfg = load_config(overrides={"data": [str(ucm_root)], "preset": "tiny", "output_dir": str(tmp_path)})
    dataset = build_dataset(cfg)
    assert len(dataset) == 21 * 64 and dataset[0]["pixel_values"].shape == (3, 16, 16)
