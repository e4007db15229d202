"""UC Merced in evaluation: 26 scene classes, chips from the train split only, class-averaged scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusionsat.data.ucmerced import CLASS_WORDS, UCMerced
from diffusionsat.evaluation.chips import (
    GEO_SCENE_CLASSES,
    SCENE_CLASSES,
    UCM_SCENE_CLASSES,
    caption_for,
    export_eval_set,
    load_ucmerced,
    sample_chips,
    ucm_class,
    whole_image_chip,
)
from diffusionsat.evaluation.dataset import EvalRecord
from diffusionsat.evaluation.domain_encoder import DomainEncoder, shipped_encoder_path
from diffusionsat.evaluation.evaluate import Candidate, Networks, classification_summary, compute_metrics
from diffusionsat.evaluation.report import markdown
from diffusionsat.evaluation.stats import class_mean_estimate

CLASSES = ("harbor", "airplane")  # a small subset keeps the data-reading tests quick


def test_scene_classes_are_the_five_geo_and_21_ucm_classes():
    assert len(SCENE_CLASSES) == 26 and len(set(SCENE_CLASSES)) == 26
    assert SCENE_CLASSES[:5] == GEO_SCENE_CLASSES
    assert tuple(f"ucm-{c}" for c in CLASS_WORDS) == UCM_SCENE_CLASSES and "ucm-harbor" in SCENE_CLASSES
    assert ucm_class("ucm-harbor") == "harbor"
    with pytest.raises(ValueError, match="not a UC Merced class"):
        ucm_class("naip-prairie")
    assert caption_for("ucm-harbor", 1.2192).startswith("a satellite image of a harbor in United States")
    assert caption_for("naip-prairie") == "a satellite image of farmland and prairie potholes in united states"


def test_class_mean_estimate_on_a_hand_made_case():
    # class a: 3/3 right, class b: 0/1 → plain mean 0.75, class-averaged 0.5.
    est = class_mean_estimate([1, 1, 1, 0], ["a", "a", "a", "b"], resamples=50)
    assert est.value == pytest.approx(0.5) and est.n == 4 and est.note == "2 classes"
    assert est.low <= 0.5 <= est.high
    # Reference (real) rates: a 2/3, b 1/1 → 0.8333; ratio 0.5 / 0.8333 = 0.6.
    ratio = class_mean_estimate([1, 1, 1, 0], ["a", "a", "a", "b"], reference=[1, 0, 1, 1], resamples=50)
    assert ratio.value == pytest.approx(0.6)
    assert class_mean_estimate([1, 0], ["a", "b"], reference=[0, 0]).value is None  # real rate 0 everywhere
    with pytest.raises(ValueError, match="aligned"):
        class_mean_estimate([1, 0, 1], ["a", "b"])


class ColourEncoder(DomainEncoder):
    """Stand-in encoder: the scene is the brightest channel (R → class 0, G → 1, B → 2)."""

    def forward(self, images):
        means = images.float().mean(dim=(2, 3))
        n = len(images)
        return {"embedding": torch.cat([means, torch.zeros(n, self.config.embed_dim - 3)], 1),
                "scene_logits": means * 50.0, "log2_gsd": torch.zeros(n), "season_logits": torch.zeros(n, 4)}


def _colour(channel: int) -> torch.Tensor:
    image = torch.full((3, 8, 8), 0.1)
    image[channel] = 0.9
    return image + 0.01 * torch.rand(3, 8, 8)


def test_evaluate_reports_the_class_averaged_score_and_its_ratio_to_real():
    classes = ("ucm-harbor", "ucm-airplane", "ucm-beach")
    encoder = ColourEncoder(scene_classes=classes, embed_dim=8).eval()
    targets = [0] * 6 + [1] * 2 + [2] * 2  # imbalanced: 6 harbours, 2 airplanes, 2 beaches
    records = [EvalRecord(key=f"r{i}", image=Path(f"r{i}.png"), scene=classes[t]) for i, t in enumerate(targets)]
    real_says = targets[:-1] + [0]  # one real beach is seen as a harbour: real rates 1, 1, 0.5
    model_says = [0] * 6 + [2, 2] + [2, 0]  # model: harbour 6/6, airplane 0/2, beach 1/2
    real = torch.stack([_colour(t) for t in real_says])
    model = torch.stack([_colour(t) for t in model_says])
    candidates = [Candidate("model", "model", model, "m"), Candidate("real-vs-real", "floor", real, "floor")]
    tables, per_condition = compute_metrics("generate", records, real, candidates, Networks(domain=encoder), bootstrap=0)
    assert tables["classification_score"]["model"].value == pytest.approx(0.7)  # 7 of 10 images
    assert tables["classification_score_class_mean"]["model"].value == pytest.approx(0.5)  # (1 + 0 + 0.5) / 3
    assert tables["classification_score_class_mean"]["real-vs-real"].value == pytest.approx(2.5 / 3)
    assert tables["classification_ratio_to_real"]["model"].value == pytest.approx(0.6)
    assert tables["classification_ratio_to_real"]["real-vs-real"].value == 1.0
    summary = classification_summary(tables, per_condition)
    assert summary["num_classes"] == 3 and summary["reference_row"] == "real-vs-real"
    assert summary["rows"]["model"]["ratio_to_real"] == pytest.approx(0.6)
    report = {
        "task": "generate", "data": "d", "num_records": 10, "image_size": [8, 8], "seed": 0, "created": "now",
        "diffusionsat_version": "0", "rows": [{"name": c.name, "role": c.role, "description": c.description}
                                               for c in candidates],
        "networks": {}, "metrics": {}, "classification_summary": summary,
        "per_condition": {k: v for k, v in per_condition.items() if not k.startswith("_")},
    }
    text = markdown(report)
    assert "## Class recognition, averaged over classes" in text
    assert "- model: **0.5000** = **60.0 %** of the real images' rate, averaged over classes" in text
    assert "| **mean over classes** | 3 classes | 0.5000 | 0.8333 |" in text
    assert "| **ratio to real** | | 60.0 % | 100.0 % |" in text


@pytest.mark.shared_data
def test_ucm_chips_come_from_the_train_split_only(shared_data):
    train = load_ucmerced(shared_data, "train", classes=CLASSES)
    held = load_ucmerced(shared_data, "heldout", classes=CLASSES)
    train_files = {r.source.paths[0] for r in train}
    held_files = {r.source.paths[0] for r in held}
    assert len(train) == 128 and len(held) == 32 and not train_files & held_files
    # The same seeded split the diffusion model trains on.
    data_layer = UCMerced(shared_data / "ucmerced", "heldout", seed=0, classes=CLASSES)
    assert held_files == {f"ucmerced/{p.parent.name}/{p.name}" for p, _ in data_layer.records}
    assert {r.source.scene for r in train} == {"ucm-harbor", "ucm-airplane"}
    rng = np.random.default_rng(0)
    chips = [c for r in train[:8] for c in sample_chips(r, 10, rng, region="train")]
    names = {Path(p).stem for p in train_files}
    assert len(chips) == 80 and all(c.source in names for c in chips)
    assert all(c.image.shape == (64, 64, 3) and c.image.dtype == np.uint8 for c in chips)
    assert all(128 <= c.window[2] <= 256 for c in chips)
    assert all(c.metadata.gsd == pytest.approx(0.3048 * c.window[2] / 64) for c in chips)
    whole = [c for c in chips if c.window[2] == 256]
    assert 15 <= len(whole) <= 55  # 40 % whole images
    assert whole[0].metadata.gsd == pytest.approx(1.2192)
    with pytest.raises(ValueError, match="'heldout' image"):
        sample_chips(held[0], 1, rng, region="train")
    with pytest.raises(ValueError, match="train or heldout"):
        load_ucmerced(shared_data, "all")


@pytest.mark.shared_data
def test_whole_image_view_matches_the_data_layer(shared_data):
    """A whole-image chip is the image UCMerced(size=64) gives the diffusion model (±1 level)."""
    held = load_ucmerced(shared_data, "heldout", classes=("harbor",))
    sample = UCMerced(shared_data / "ucmerced", "heldout", seed=0, classes=("harbor",), size=64)[0]
    chip = whole_image_chip(held[0])
    expected = np.round((sample["pixel_values"].permute(1, 2, 0).numpy() + 1) * 127.5)
    assert np.abs(chip.image.astype(int) - expected.astype(int)).max() <= 1
    assert chip.metadata.gsd == pytest.approx(sample["metadata"].gsd)


@pytest.mark.shared_data
def test_export_eval_set_writes_whole_heldout_ucm_images(shared_data, tmp_path):
    written = export_eval_set(shared_data, tmp_path, scenes=("ucm-harbor",), size=64)
    assert len(written) == 16
    sidecar = json.loads(written[0].with_suffix(".json").read_text())
    assert sidecar["scene"] == "ucm-harbor" and sidecar["metadata"]["gsd"] == pytest.approx(1.2192)
    assert "a harbor" in sidecar["caption"] and written[0].name.startswith("ucmerced-harbor")
    with pytest.raises(ValueError, match="unknown"):
        export_eval_set(shared_data, tmp_path, scenes=("ucm-castle",))


@pytest.mark.shared_data
def test_shipped_encoder_was_trained_on_the_ucm_train_split(shared_data):
    record = json.loads((shipped_encoder_path() / "training.json").read_text())
    held = UCMerced(shared_data / "ucmerced", "heldout", seed=0)
    assert record["ucmerced"]["heldout_files"] == sorted(f"ucmerced/{p.parent.name}/{p.name}" for p, _ in held.records)
    assert set(record["heldout"]["scene_accuracy_per_class"]) == set(SCENE_CLASSES)
    assert set(record["heldout_ucm_whole"]["scene_accuracy_per_class"]) == set(UCM_SCENE_CLASSES)


@pytest.mark.shared_data
def test_shipped_encoder_recognises_whole_heldout_ucm_images(shared_data, tmp_path):
    """The records `train_default_model.py --export-heldout --ucmerced` writes (whole held-out images,
    64 px, scene ucm-<class>): recognised far above chance (1/26), and as the card says."""
    from diffusionsat.evaluation.domain_encoder import load_domain_encoder

    encoder = load_domain_encoder()
    chips = [whole_image_chip(r) for r in load_ucmerced(shared_data, "heldout")]
    images = torch.stack([torch.from_numpy(c.image).permute(2, 0, 1).float() / 255.0 for c in chips])
    with torch.no_grad():
        pred = torch.cat([encoder(images[i:i + 128])["scene_logits"].argmax(-1) for i in range(0, len(images), 128)])
    truth = torch.tensor([SCENE_CLASSES.index(c.scene) for c in chips])
    hits = (pred == truth).float().numpy()
    class_mean = class_mean_estimate(hits, truth.numpy(), resamples=0).value
    assert len(chips) == 336 and class_mean >= 0.5, class_mean
    record = json.loads((shipped_encoder_path() / "training.json").read_text())
    assert class_mean == pytest.approx(record["heldout_ucm_whole"]["scene_accuracy_class_mean"], abs=0.02)
    card = (shipped_encoder_path() / "README.md").read_text()
    assert f"**{record['heldout_ucm_whole']['scene_accuracy']:.3f}**" in card and "ucm-harbor" in card
