"""The UC Merced data-engine measurement (issue #16) in one command: synthesize, then downstream.

    python scripts/measure_downstream.py --out runs/ucm-downstream            # default model, 64/class
    python scripts/measure_downstream.py --out runs/ucm-downstream --images-per-class 8 --steps 10   # a quick look
    accelerate launch --num_processes 2 scripts/measure_downstream.py --out runs/ucm-downstream   # split sampling

1. ``diffusionsat synthesize --spec configs/synthesize/ucmerced.yaml`` (21 classes; a copy of the
   spec with the overrides given (``--images-per-class``, ``--seed``, ``--steps``, ``--guidance``, ``--scheduler``,
   ``--negative-prompt``) is written to OUT/spec.yaml) → OUT/synthetic; resumable: rerun the same
   command after an interruption.
2. ``diffusionsat downstream --train OUT/synthetic --test UCM`` (held-out split; the real-trained
   classifier gets the same number of UC Merced train-split images per class) → OUT/report.{json,md}.

Record the synthetic-trained accuracy, the real-trained accuracy and the ratio in docs/synthesize.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC_OVERRIDES = ("images_per_class", "seed", "steps", "guidance", "scheduler", "negative_prompt")


def main(argv: list[str] | None = None) -> int:
    from diffusionsat.cli.main import main as cli
    from diffusionsat.fileio import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="Run folder (synthetic/, report.json, report.md).")
    parser.add_argument("--ucmerced", type=Path, default=ROOT.parent / "shared" / "data" / "ucmerced",
                        help="UC Merced folder (default: ../shared/data/ucmerced).")
    parser.add_argument("--spec", type=Path, default=ROOT / "configs" / "synthesize" / "ucmerced.yaml")
    parser.add_argument("--model", default=None, help="Model folder (default: the embedded model).")
    parser.add_argument("--images-per-class", type=int, default=None, help="Override the spec's images_per_class.")
    parser.add_argument("--steps", type=int, default=None, help="Override the spec's denoising steps.")
    parser.add_argument("--guidance", type=float, default=None, help="Override the spec's guidance scale.")
    parser.add_argument("--seed", type=int, default=None, help="Override the spec's seed (another synthetic set).")
    parser.add_argument("--scheduler", default=None, help="Override the spec's sampler (ddpm, dpm++, ddim, ...).")
    parser.add_argument("--negative-prompt", default=None, help="Override the spec's negative prompt.")
    parser.add_argument("--epochs", type=int, default=15, help="Classifier epochs.")
    parser.add_argument("--augment", choices=("basic", "strong"), default=None,
                        help="Classifier augmentation (default: downstream's own).")
    parser.add_argument("--device", default=None, help="torch device for sampling (default: cpu / this rank's GPU).")
    parser.add_argument("--overwrite-report", action="store_true", help="Replace an existing report.")
    args = parser.parse_args(argv)

    spec = yaml.safe_load(args.spec.read_text(encoding="utf-8"))
    for key in SPEC_OVERRIDES:  # the spec's own key names, as the flags' destinations
        if getattr(args, key) is not None:
            spec[key] = getattr(args, key)
    args.out.mkdir(parents=True, exist_ok=True)
    spec_path = args.out / "spec.yaml"
    text = yaml.safe_dump(spec, sort_keys=False)
    if not spec_path.is_file() or spec_path.read_text(encoding="utf-8") != text:
        atomic_write_text(spec_path, text, overwrite=True)  # a changed spec then meets the folder check below

    synth = ["synthesize", "--spec", str(spec_path), "--out", str(args.out / "synthetic")]
    synth += ["--model", args.model] if args.model else []
    synth += ["--device", args.device] if args.device else []
    code = cli(synth)
    if code:
        return code
    from accelerate import PartialState

    if not PartialState().is_main_process:  # the classifier runs once
        return 0
    down = ["downstream", "--train", str(args.out / "synthetic"), "--test", str(args.ucmerced),
            "--out", str(args.out), "--epochs", str(args.epochs)]
    down += ["--augment", args.augment] if args.augment else []
    down += ["--overwrite"] if args.overwrite_report else []
    return cli(down)


if __name__ == "__main__":
    sys.exit(main())
