"""Put a trained task ControlNet into the package, beside the default model it was trained on (issue #15).

    diffusionsat train --config configs/tasks/superres.yaml            # → runs/task-superres/model
    python scripts/ship_task_model.py --task superres --run runs/task-superres

The run's final model (``RUN/model``: the frozen base + ``controlnet/``, EMA weights) must have been
trained on the embedded default model: its UNet must equal the shipped one bit for bit, so only the
ControlNet (about 8 MB) is shipped, as ``assets/default-model/controlnet_<task>/``. The task
commands then find it with no ``--model`` (``find_controlnet_folder``). The folder is replaced
whole or not at all; its MODEL_CARD.md is kept (written separately). A fine-tuning run
(``controlnet_init: base``) records the shipped ControlNet it started from in ``training.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffusionsat.fileio import atomic_dir
from diffusionsat.loading import default_model_path

TASKS = ("superres", "temporal", "inpaint")
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def same_base(model: Path, base: Path) -> bool:
    """Whether the run's frozen UNet is the shipped one (every tensor equal)."""
    ours, shipped = load_file(model / UNET_WEIGHTS), load_file(base / UNET_WEIGHTS)
    return ours.keys() == shipped.keys() and all(torch.equal(ours[k], shipped[k]) for k in ours)


def ship(task: str, run: Path, base: Path) -> Path:
    model = run / "model"
    controlnet = model / "controlnet"
    if not (controlnet / "config.json").is_file():
        raise SystemExit(f"{controlnet}: no ControlNet (train with `diffusionsat train --config configs/tasks/{task}.yaml`)")
    if not same_base(model, base):
        raise SystemExit(f"{model} was not trained on the shipped default model ({base}); its ControlNet would not fit")
    target = base / f"controlnet_{task}"
    card = target / "MODEL_CARD.md"
    keep_card = card.read_text(encoding="utf-8") if card.is_file() else None
    training = json.loads((model / "training.json").read_text(encoding="utf-8")) if (model / "training.json").is_file() else {}
    shipped = target / "training.json"
    previous = json.loads(shipped.read_text(encoding="utf-8")) if shipped.is_file() else None
    with atomic_dir(target, overwrite=True) as tmp:
        shutil.copyfile(controlnet / "diffusion_pytorch_model.safetensors", tmp / "diffusion_pytorch_model.safetensors")
        config = json.loads((controlnet / "config.json").read_text(encoding="utf-8"))
        config.pop("_name_or_path", None)  # where a fine-tuning run loaded it from: a path on the training machine
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if training:
            state, cfg = training.get("state", {}), training.get("config", {})
            summary = {"task": task, "steps": state.get("global_step"), "samples_seen": state.get("samples_seen"),
                       "batch_size": cfg.get("batch_size"), "learning_rate": cfg.get("learning_rate"),
                       "data": cfg.get("data"), "seed": cfg.get("seed")}
            if cfg.get("sr_pairs"):
                summary["sr_pairs"] = cfg["sr_pairs"]
            if cfg.get("controlnet_init"):  # a fine-tuning stage: keep the lineage of what it started from
                summary["controlnet_init"] = cfg["controlnet_init"]
                if cfg["controlnet_init"] == "base" and previous is not None:
                    summary["started_from"] = previous
            (tmp / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        if keep_card is not None:
            (tmp / "MODEL_CARD.md").write_text(keep_card, encoding="utf-8")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--run", type=Path, required=True, help="Training run folder (holds model/).")
    parser.add_argument("--base", type=Path, default=None, help="Default-model folder (default: the package's).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    target = ship(args.task, args.run, args.base or default_model_path())
    size = sum(p.stat().st_size for p in target.iterdir()) / 1e6
    logging.info("shipped %s (%.1f MB)", target, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
