"""``diffusionsat evaluate``: metrics of generated images against real held-out data, with baselines."""

from __future__ import annotations

from pathlib import Path

import click

from ..choices import EVAL_TASKS
from .main import cli, require_extra
from .options import device_option

EXAMPLES = """
\b
Examples:
  # generate one image per held-out real chip with a model, then score them
  diffusionsat evaluate --task generate --model ./my-model --data ./heldout --num-samples 200 --out ./eval
\b
  # score images made earlier (matched to the real records by file name), two models side by side
  diffusionsat evaluate --task superres --data ./sr-heldout --generated ./sr-a --compare ./sr-b --out ./eval-sr
\b
  # with standard pretrained networks from local files (never downloaded)
  diffusionsat evaluate --task generate --model ./my-model --data ./heldout --out ./eval \\
      --inception ~/weights/inception-2015-12-05.pt --clip ~/weights/clip-vit-base-patch32
"""


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


@cli.command(epilog=EXAMPLES)
@click.option("--task", type=click.Choice(EVAL_TASKS), required=True, help="What the images were made for.")
@click.option("--data", required=True, help="Real held-out data: a folder of images + JSON sidecars, a .jsonl/.csv manifest, or .tar shards.")
@click.option("--out", "out", required=True, help="Report folder (report.json, report.md, grids).")
@click.option("--model", default=None,
              help="Model to generate with (default: the embedded model; for superres/temporal/inpaint its shipped "
                   "task ControlNet, or give a task model with controlnet/).")
@click.option("--generated", default=None, help="Folder of already generated images named {key}.png after the real records.")
@click.option("--compare", default=None, help="Second model folder or generated-images folder, reported side by side.")
@click.option("--num-samples", type=int, default=None, help="Evaluate a seeded random subset of this many records.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of sampling, halves and bootstrap.")
@click.option("--steps", type=int, default=25, show_default=True, help="Denoising steps when generating.")
@click.option("--guidance", type=float, default=3.0, show_default=True, help="Guidance scale when generating.")
@click.option("--metadata-guidance", type=float, default=None,
              help="Separate guidance scale for metadata when generating (--task generate; default: one scale).")
@click.option("--no-anchored-guidance", "plain_negative", is_flag=True,
              help="--task generate: guide against the all-unknown branch even where the model has a "
                   "location-anchored one.")
@click.option("--scheduler", default=None,
              help="Sampler when generating: ddim, ddpm, dpm++, euler, euler-a, heun, lms, pndm, unipc (default: the model's own).")
@click.option("--size", type=int, default=None, help="Generated image side in px (default: the model's native size).")
@click.option("--device", default="cpu", show_default=True, callback=device_option,
              help="torch device for generation and features.")
@click.option("--domain-encoder", default=None, help="Domain encoder folder (default: the shipped one).")
@click.option("--inception", default=None, help="Local TorchScript Inception for FID/KID/IS (nothing is downloaded).")
@click.option("--clip", default=None, help="Local transformers CLIP folder for the CLIP score.")
@click.option("--lpips-backbone", default=None, help="Local TorchScript LPIPS backbone returning feature maps.")
@click.option("--lpips-weights", default=None, help="LPIPS learned linear weights (.pth or .safetensors).")
@click.option("--bootstrap", type=int, default=20, show_default=True, help="Bootstrap resamples for FID intervals (0: none; each costs one FID).")
@click.option("--overwrite", is_flag=True, help="Replace an existing report in --out.")
def evaluate(task, data, out, model, generated, compare, num_samples, seed, steps, guidance, metadata_guidance,
             plain_negative, scheduler,
             size, device, domain_encoder, inception, clip, lpips_backbone, lpips_weights, bootstrap, overwrite):
    """Score generated satellite images against real held-out images, with baselines and intervals."""
    require_extra("eval")
    from ..evaluation.evaluate import EvaluationConfig
    from ..evaluation.evaluate import evaluate as run_evaluation

    config = EvaluationConfig(
        task=task, data=Path(data), out=Path(out), model=model, generated=_path(generated), compare=compare,
        num_samples=num_samples, seed=seed, steps=steps, guidance_scale=guidance,
        metadata_guidance_scale=metadata_guidance, anchored_guidance=not plain_negative, scheduler=scheduler,
        size=size, device=device,
        domain_encoder=_path(domain_encoder), inception=_path(inception), clip=_path(clip),
        lpips_backbone=_path(lpips_backbone), lpips_weights=_path(lpips_weights), bootstrap=bootstrap,
        overwrite=overwrite,
    )
    report = run_evaluation(config)
    for name, status in report["networks"].items():
        if not status["available"]:
            click.echo(f"note: {name} not available: {status['reason']}", err=True)
    click.echo(str(Path(out) / "report.md"))
    click.echo(str(Path(out) / "report.json"))
