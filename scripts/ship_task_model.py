"""Put a trained task ControlNet into the package, beside the default model it was trained on (issue #15).

    diffusionsat train --config configs/tasks/superres.yaml            # → runs/task-superres/model
    python scripts/ship_task_model.py --task superres --run runs/task-superres

When the default model itself is retrained, its ControlNets move with it in three steps:

    python scripts/ship_task_model.py --stage runs/default-model-v4/model --out runs/stage-v4
    diffusionsat train --config configs/tasks/superres.yaml --base-model runs/stage-v4 \
        --controlnet-init base --max-steps 600 --output-dir runs/rebase-superres      # (each task)
    python scripts/ship_task_model.py --task superres --run runs/rebase-superres --base runs/stage-v4
    python scripts/ship_task_model.py --install runs/stage-v4

A ControlNet that scores as well on the new UNet without retraining (a rebase can do worse than none)
is kept instead, on the evidence of an ``evaluate`` report of the staged folder for its task:

    diffusionsat evaluate --task temporal --model runs/stage-v4 --data heldout-temporal --out eval-temporal-v4
    python scripts/ship_task_model.py --keep temporal --report eval-temporal-v4/report.json --base runs/stage-v4

``--stage`` copies the shipped folder and puts the new model's UNet, text encoder, tokenizer and
scheduler in, keeping the shipped ControlNets (so ``controlnet_init: base`` fine-tunes them from
the old base's weights); ``--install`` replaces the package's folder with the staged one once every
task's ControlNet there has been retrained on the staged UNet (each ``training.json`` records the
UNet's digest) or kept after being measured on it (``measured_on`` in ``training.json``: the UNet's
digest and the report's numbers), so the package never holds a ControlNet beside a UNet it was
neither trained nor measured on.

The run's final model (``RUN/model``: the frozen base + ``controlnet/``, EMA weights) must have been
trained on the embedded default model: its UNet must equal the shipped one bit for bit, so only the
ControlNet (about 8 MB) is shipped, as ``assets/default-model/controlnet_<task>/``. The task
commands then find it with no ``--model`` (``find_controlnet_folder``). The folder is replaced
whole or not at all; its MODEL_CARD.md is kept (written separately). A fine-tuning run
(``controlnet_init: base``) records the shipped ControlNet it started from in ``training.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffusionsat.fileio import atomic_dir, atomic_write_text
from diffusionsat.loading import default_model_path

TASKS = ("superres", "temporal", "inpaint")
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
#: What a retrained default model replaces in a staged folder; model_index.json, the card and the
#: ControlNets stay (the pipeline classes do not change between versions).
BASE_PARTS = ("unet", "text_encoder", "tokenizer", "scheduler")


def unet_digest(folder: Path) -> str:
    """SHA-256 of a model folder's UNet weights file: which base a ControlNet was trained on."""
    digest = hashlib.sha256()
    with open(folder / UNET_WEIGHTS, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def training_record(folder: Path) -> dict:
    """A run's model or a shipped ControlNet folder's ``training.json`` ({} when it has none)."""
    record = folder / "training.json"
    return json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}


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
    training, previous = training_record(model), training_record(target)
    with atomic_dir(target, overwrite=True) as tmp:
        shutil.copyfile(controlnet / "diffusion_pytorch_model.safetensors", tmp / "diffusion_pytorch_model.safetensors")
        config = json.loads((controlnet / "config.json").read_text(encoding="utf-8"))
        config.pop("_name_or_path", None)  # where a fine-tuning run loaded it from: a path on the training machine
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if training:
            state, cfg = training.get("state", {}), training.get("config", {})
            summary = {"task": task, "base_unet_sha256": unet_digest(base),
                       "steps": state.get("global_step"), "samples_seen": state.get("samples_seen"),
                       "batch_size": cfg.get("batch_size"), "learning_rate": cfg.get("learning_rate"),
                       "data": cfg.get("data"), "seed": cfg.get("seed")}
            if cfg.get("sr_pairs"):
                summary["sr_pairs"] = cfg["sr_pairs"]
            if cfg.get("controlnet_init"):  # a fine-tuning stage: keep the lineage of what it started from
                summary["controlnet_init"] = cfg["controlnet_init"]
                if cfg["controlnet_init"] == "base" and previous:
                    summary["started_from"] = previous
            (tmp / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        if keep_card is not None:
            (tmp / "MODEL_CARD.md").write_text(keep_card, encoding="utf-8")
    return target


def stage(model: Path, out: Path, base: Path) -> Path:
    """A copy of the shipped folder ``base`` with a retrained default model's parts put in."""
    missing = [part for part in BASE_PARTS if not (model / part).is_dir()]
    if missing:
        raise SystemExit(f"{model}: not a default-model folder (missing {', '.join(p + '/' for p in missing)})")
    if out.exists():
        raise SystemExit(f"{out} already exists: stage into a new folder")
    with atomic_dir(out) as tmp:
        shutil.copytree(base, tmp, dirs_exist_ok=True)
        for part in BASE_PARTS:
            shutil.rmtree(tmp / part)
            shutil.copytree(model / part, tmp / part)
    return out


def stale_controlnets(folder: Path) -> list[str]:
    """The tasks whose shipped ControlNet in ``folder`` was neither trained nor measured on its UNet."""
    digest = unet_digest(folder)
    stale = []
    for task in TASKS:
        summary = training_record(folder / f"controlnet_{task}")
        if digest not in (summary.get("base_unet_sha256"), summary.get("measured_on", {}).get("base_unet_sha256")):
            stale.append(task)
    return stale


def keep(task: str, report_path: Path, base: Path) -> Path:
    """Keep ``base``'s ControlNet for ``task`` as it is, on the evidence of an evaluate report of ``base``.

    The report must be ``diffusionsat evaluate --task TASK --model BASE``'s; its model-row numbers and
    the UNet's digest go into the ControlNet's ``training.json`` as ``measured_on`` (what it was
    trained on stays recorded as it was).
    """
    target = base / f"controlnet_{task}"
    if not (target / "config.json").is_file():
        raise SystemExit(f"{target}: no ControlNet to keep")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SystemExit(f"--report {report_path}: not a readable evaluate report.json ({err})") from None
    if report.get("task") != task:
        raise SystemExit(f"--report {report_path}: evaluates task {report.get('task')!r}, not {task!r}")
    sources = [row.get("source") for row in report.get("rows", []) if row.get("role") == "model"]
    if not sources or sources[0] is None or Path(sources[0]).resolve() != base.resolve():
        raise SystemExit(f"--report {report_path}: its model is {sources[0] if sources else None!r}, not {str(base)!r} "
                         f"(run `diffusionsat evaluate --task {task} --model {base} ...`)")
    metrics = {name: table["rows"]["model"]["value"] for name, table in report.get("metrics", {}).items()
               if table.get("rows", {}).get("model", {}).get("value") is not None}
    summary = training_record(target) or {"task": task}
    summary["measured_on"] = {"base_unet_sha256": unet_digest(base), "data": report.get("data"),
                              "num_records": report.get("num_records"), "created": report.get("created"),
                              "generation": report.get("generation"), "metrics": metrics}
    atomic_write_text(target / "training.json", json.dumps(summary, indent=2) + "\n", overwrite=True)
    return target


def install(staged: Path, base: Path) -> Path:
    """Replace the package's default-model folder with a staged one whose ControlNets all fit it."""
    if not (staged / UNET_WEIGHTS).is_file():
        raise SystemExit(f"{staged}: not a staged default-model folder (no {UNET_WEIGHTS})")
    stale = stale_controlnets(staged)
    if stale:
        raise SystemExit(f"{staged}: ControlNet(s) {', '.join(stale)} not retrained on its UNet yet "
                         f"(ship each with --task T --run RUN --base {staged}, or measure it there and "
                         f"--keep T --report REPORT --base {staged})")
    with atomic_dir(base, overwrite=True) as tmp:
        shutil.copytree(staged, tmp, dirs_exist_ok=True)
    return base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--task", choices=TASKS, help="Ship this task's ControlNet from --run.")
    mode.add_argument("--stage", type=Path, metavar="MODEL", help="Stage a retrained default model (into --out).")
    mode.add_argument("--install", type=Path, metavar="STAGED", help="Make a staged folder the package's.")
    mode.add_argument("--keep", choices=TASKS, help="Keep --base's ControlNet for this task as it is, on the "
                      "evidence of --report (an evaluate report of --base).")
    parser.add_argument("--run", type=Path, help="Training run folder (holds model/), with --task.")
    parser.add_argument("--out", type=Path, help="The new staging folder, with --stage.")
    parser.add_argument("--report", type=Path, help="evaluate's report.json for --base and the task, with --keep.")
    parser.add_argument("--base", type=Path, default=None, help="Default-model folder (default: the package's).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    base = args.base or default_model_path()
    if args.stage is not None:
        if args.out is None:
            parser.error("--stage needs --out (the new staging folder)")
        logging.info("staged %s", stage(args.stage, args.out, base))
        return 0
    if args.install is not None:
        logging.info("installed %s as %s", args.install, install(args.install, base))
        return 0
    if args.keep is not None:
        if args.report is None or args.base is None:
            parser.error("--keep needs --report (evaluate's report.json) and --base (the staged folder)")
        logging.info("kept %s, measured on its UNet", keep(args.keep, args.report, base))
        return 0
    if args.run is None:
        parser.error("--task needs --run (the training run folder)")
    target = ship(args.task, args.run, base)
    size = sum(p.stat().st_size for p in target.iterdir()) / 1e6
    logging.info("shipped %s (%.1f MB)", target, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
