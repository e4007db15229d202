"""``diffusionsat downstream``: a classifier trained on synthetic images, tested on real ones."""

from __future__ import annotations

from pathlib import Path

import click

from .main import cli, require_extra
from .options import device_option

EXAMPLES = """
\b
Examples:
  # synthetic UC Merced vs the same number of real UC Merced training images, tested on the held-out split
  diffusionsat downstream --train data/ucm-synthetic --test ../shared/data/ucmerced --out reports/downstream
\b
  # test on prepared shards (prepare-data ... --split heldout); the real training set given explicitly
  diffusionsat downstream --train data/ucm-synthetic --test data/ucm-heldout \\
      --real-train data/ucm-train --out reports/downstream
"""


@cli.command(epilog=EXAMPLES)
@click.option("--train", "train", required=True, type=click.Path(exists=True), help="Labelled training images (synthesize output, shards or a UC Merced folder).")
@click.option("--test", "test", required=True, type=click.Path(exists=True), help="Real test images: shards with 'class', or a UC Merced folder (held-out split).")
@click.option("--real-train", type=click.Path(exists=True), default=None,
              help="Real training images for the comparison (default: the UC Merced train split of --test).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report folder (report.json, report.md).")
@click.option("--size", type=int, default=64, show_default=True, help="Image side the classifier sees (px).")
@click.option("--epochs", type=int, default=15, show_default=True, help="Training epochs of each classifier.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Classifier, subsampling and bootstrap seed.")
@click.option("--split-seed", type=int, default=0, show_default=True, help="UC Merced split seed (as prepare-data --seed).")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap resamples for the intervals.")
@click.option("--augment", type=click.Choice(["basic", "strong"]), default="basic", show_default=True,
              help="Classifier augmentation: basic = flips + quarter turns; strong adds resized crops, colour jitter, blur.")
@click.option("--device", default="cpu", show_default=True, callback=device_option, help="torch device.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report.")
def downstream(train, test, real_train, out, size, epochs, batch_size, seed, split_seed, bootstrap, augment, device,
               overwrite):
    """Train a small classifier on synthetic data and on as many real images; test both on real images."""
    require_extra("eval")
    from ..evaluation.downstream import DownstreamConfig, run_downstream

    cfg = DownstreamConfig(train=Path(train), test=Path(test), out=Path(out),
                           real_train=None if real_train is None else Path(real_train), size=size, epochs=epochs,
                           batch_size=batch_size, seed=seed, split_seed=split_seed, bootstrap=bootstrap, augment=augment,
                           device=device, overwrite=overwrite)
    report = run_downstream(cfg)
    s, r, q = report["synthetic"]["accuracy"], report["real"]["accuracy"], report["synthetic_to_real"]
    click.echo(f"synthetic-trained accuracy {s['value']:.3f} [{s['low']:.3f}, {s['high']:.3f}] "
               f"({report['synthetic']['train_images']} images)")
    click.echo(f"real-trained accuracy      {r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}] "
               f"({report['real']['train_images']} images)")
    if q.get("value") is not None:
        interval = f" [{q['low']:.3f}, {q['high']:.3f}]" if q.get("low") is not None else ""
        click.echo(f"synthetic-to-real ratio    {q['value']:.3f}{interval}")
    click.echo(str(Path(out) / "report.md"))
