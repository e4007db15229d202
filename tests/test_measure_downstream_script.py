"""scripts/measure_downstream.py: the spec's overrides reach the synthetic set, then downstream runs on it."""

from __future__ import annotations

import json
import tarfile

import pytest
import yaml


@pytest.mark.shared_data
def test_overrides_are_written_to_the_run_spec_and_used_for_sampling(shared_data, tiny_model_dir, load_script,
                                                                      tmp_path):
    module = load_script("scripts/measure_downstream.py")
    out = tmp_path / "run"
    code = module.main(["--out", str(out), "--model", str(tiny_model_dir), "--ucmerced", str(shared_data / "ucmerced"),
                        "--images-per-class", "1", "--steps", "1", "--seed", "7", "--guidance", "1.5",
                        "--scheduler", "ddim", "--negative-prompt", "a blurry image", "--epochs", "1"])
    assert code == 0
    spec = yaml.safe_load((out / "spec.yaml").read_text())
    assert (spec["images_per_class"], spec["steps"], spec["seed"], spec["guidance"]) == (1, 1, 7, 1.5)
    assert spec["scheduler"] == "ddim" and spec["negative_prompt"] == "a blurry image"
    assert len(spec["classes"]) == 21  # the rest of configs/synthesize/ucmerced.yaml is kept
    report = json.loads((out / "report.json").read_text())
    assert report["synthetic"]["train_images"] == 21 and report["config"]["epochs"] == 1
    with tarfile.open(out / "synthetic" / "shard-000000.tar") as shard:
        records = [json.load(shard.extractfile(m)) for m in shard.getmembers() if m.name.endswith(".json")]
    assert len(records) == 21
    assert {(r["generation"]["scheduler"], r["generation"]["negative_prompt"]) for r in records} == {("ddim", "a blurry image")}
