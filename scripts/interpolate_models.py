"""Interpolate the weights of two default-model versions of one lineage (no training).

    python scripts/interpolate_models.py --from runs/v1/model --to src/diffusionsat/assets/default-model \
        --alpha 0.7 --out runs/v1-v3-0.7

Every UNet and text-encoder tensor becomes ``(1 - alpha) · FROM + alpha · TO``. When ``TO`` is a
fine-tuned descendant of ``FROM`` (v3 was fine-tuned from v1 through v2), the two sit in one basin
and the average keeps much of both (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models",
WiSE-FT): here, v1's date conditioning on the georeferenced scenes and v3's UC Merced classes.

``TO``'s tokenizer, scheduler and configs are kept. Its vocabulary must extend ``FROM``'s (the ids
``FROM`` knows unchanged, as ``extend_caption_vocabulary`` guarantees); the words ``FROM`` lacks
take, on its side, the mean of its word embeddings, which is how fine-tuning initialised them.
ControlNets are not carried over: they are trained on one UNet (rebase them with
``ship_task_model.py --stage/--install``). The output folder is written whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from diffusionsat.fileio import atomic_dir
from diffusionsat.loading import resolve_model

logger = logging.getLogger("interpolate_models")

WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors"}
COPIED = ("tokenizer", "scheduler")
TOKEN_EMBEDDING = "token_embedding.weight"
#: Config keys that say where a folder came from, not what the model is.
PROVENANCE_KEYS = {"_name_or_path", "_diffusers_version", "transformers_version"}


def _vocab(folder: Path) -> dict[str, int]:
    return json.loads((folder / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]


def _config(folder: Path, part: str) -> dict:
    config = json.loads((folder / part / "config.json").read_text(encoding="utf-8"))
    return {k: v for k, v in config.items() if k not in PROVENANCE_KEYS}


def check_compatible(source: Path, target: Path) -> None:
    """Same architecture, and ``target``'s vocabulary extends ``source``'s; else SystemExit naming why."""
    for folder in (source, target):
        missing = [p for p in (*WEIGHTS, *COPIED) if not (folder / p).is_dir()]
        if missing:
            raise SystemExit(f"{folder}: not a default-model folder (missing {', '.join(p + '/' for p in missing)})")
    for part in WEIGHTS:
        a, b = _config(source, part), _config(target, part)
        if part == "text_encoder":
            a.pop("vocab_size", None), b.pop("vocab_size", None)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        if differ:
            raise SystemExit(f"{part}: the two models differ in {', '.join(differ)}; only one architecture interpolates")
    src_vocab, dst_vocab = _vocab(source), _vocab(target)
    moved = sorted(w for w, i in src_vocab.items() if dst_vocab.get(w) != i)
    if moved:
        raise SystemExit(f"tokenizer: {target}'s vocabulary does not extend {source}'s (e.g. {moved[0]!r} has "
                         "another id): they are not one lineage")


def interpolate_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) a + alpha b`` per tensor; a token embedding ``a`` has fewer rows of is padded
    with its mean row (the fine-tuning initialisation of the words it lacks)."""
    if a.keys() != b.keys():
        raise SystemExit(f"weights differ in tensors: {', '.join(sorted(a.keys() ^ b.keys())[:5])}")
    out = {}
    for name, tb in b.items():
        ta = a[name]
        if name.endswith(TOKEN_EMBEDDING) and ta.shape[0] < tb.shape[0] and ta.shape[1:] == tb.shape[1:]:
            ta = torch.cat([ta, ta.mean(dim=0, keepdim=True).expand(tb.shape[0] - ta.shape[0], -1)])
        if ta.shape != tb.shape:
            raise SystemExit(f"{name}: shapes {tuple(ta.shape)} and {tuple(tb.shape)} do not interpolate")
        if not tb.is_floating_point():
            out[name] = tb.clone()
            continue
        mixed = torch.lerp(ta.to(torch.float32), tb.to(torch.float32), alpha)
        out[name] = mixed.to(tb.dtype).contiguous()
    return out


def interpolate(source: Path, target: Path, alpha: float, out: Path) -> Path:
    """Write the interpolated model to ``out`` (which must not exist)."""
    if not 0.0 <= alpha <= 1.0:
        raise SystemExit(f"--alpha {alpha!r}: must be in [0, 1] (0 = --from, 1 = --to)")
    if out.exists():
        raise SystemExit(f"{out} already exists: write into a new folder")
    check_compatible(source, target)
    with atomic_dir(out) as tmp:
        for part in COPIED:
            shutil.copytree(target / part, tmp / part)
        shutil.copy2(target / "model_index.json", tmp / "model_index.json")
        for part, weights in WEIGHTS.items():
            (tmp / part).mkdir()
            shutil.copy2(target / part / "config.json", tmp / part / "config.json")
            mixed = interpolate_state(load_file(source / part / weights), load_file(target / part / weights), alpha)
            save_file(mixed, tmp / part / weights)
        (tmp / "interpolation.json").write_text(json.dumps(
            {"from": str(source), "to": str(target), "alpha": alpha}, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="the earlier model (alpha 0)")
    parser.add_argument("--to", dest="target", required=True, help="its fine-tuned descendant (alpha 1); "
                        "'default' = the shipped model")
    parser.add_argument("--alpha", type=float, required=True, help="weight of --to, in [0, 1]")
    parser.add_argument("--out", required=True, help="new model folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    out = interpolate(Path(resolve_model(args.source)), Path(resolve_model(args.target)), args.alpha, Path(args.out))
    logger.info("interpolated model (alpha %.2f) in %s", args.alpha, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
