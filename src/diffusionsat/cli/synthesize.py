"""``diffusionsat synthesize``: a spec of classes → labelled synthetic shards + manifest (data engine)."""

from __future__ import annotations

import click

from .main import cli

EXAMPLES = """
\b
Examples:
  diffusionsat synthesize --spec configs/synthesize/ucmerced.yaml --out data/ucm-synthetic
  accelerate launch --num_processes 2 -m diffusionsat.cli.launch synthesize \\
      --spec configs/synthesize/ucmerced.yaml --out data/ucm-synthetic
\b
A killed run continues where it stopped when rerun with the same spec and folder.
"""


@cli.command(epilog=EXAMPLES)
@click.option("--spec", "spec_path", required=True, type=click.Path(dir_okay=False), help="Synthesis spec (YAML, docs/synthesize.md).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (shards, manifest, summary).")
@click.option("--model", default=None, help="Model folder (default: the embedded model).")
@click.option("--controlnet", default=None,
              help="ControlNet for classes with control maps (default: the model's controlnet_control/ or controlnet/).")
@click.option("--device", default=None, help="torch device (default: cpu, or this process's GPU under accelerate).")
@click.option("--overwrite", is_flag=True, help="Replace a folder holding another spec's data.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def synthesize(spec_path, out, model, controlnet, device, overwrite, no_progress):
    """Generate a labelled synthetic dataset from a SPEC of classes, prompts and metadata ranges."""
    from ..synthesis import load_spec
    from ..synthesis import synthesize as run_synthesis

    spec = load_spec(spec_path)

    def progress(total: int):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="synthesize", unit="img")

    summary = run_synthesis(spec, out, model=model, controlnet=controlnet, device=device, overwrite=overwrite,
                            progress=None if no_progress else progress)
    if not summary["main_process"]:
        return
    if summary["up_to_date"]:
        click.echo(f"{out}: already complete ({summary['samples']} samples); nothing to do")
        return
    if summary["written"]:
        click.echo(f"wrote {len(summary['written'])} shard(s) in {summary['seconds']:.1f} s", err=True)
    click.echo(f"{out}: {summary['samples']} samples of {len(summary['classes'])} classes in "
               f"{len(summary['shards'])} shard(s)")
