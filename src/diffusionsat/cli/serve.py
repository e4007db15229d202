"""``diffusionsat serve``: the web page and REST API on one local port."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from .main import InputError, cli, require_extra

logger = logging.getLogger(__name__)

EXAMPLES = """
\b
Examples:
  diffusionsat serve                                  # http://127.0.0.1:7860, the embedded model
  diffusionsat serve --model ./my-model --workers 2 --max-queue 16
  diffusionsat serve --host 0.0.0.0 --token "$(openssl rand -hex 16)"   # reachable from other machines
"""


@cli.command(epilog=EXAMPLES)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback requires --token.")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True, help="TCP port.")
@click.option("--model", default=None, help="Model folder (default: the embedded model).")
@click.option("--token", envvar="DIFFUSIONSAT_TOKEN", default=None,
              help="Bearer token clients must send (env DIFFUSIONSAT_TOKEN). Required off loopback.")
@click.option("--max-queue", type=click.IntRange(0, 10_000), default=8, show_default=True,
              help="Jobs that may wait; more get 429 with Retry-After.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Jobs sampled at the same time (they share one copy of the weights).")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for results, one sub-folder per job (default: a fresh temporary folder).")
@click.option("--job-ttl", type=click.FloatRange(1, None), default=3600, show_default=True,
              help="Seconds a finished job and its files are kept.")
@click.option("--abandon-after", type=click.FloatRange(1, None), default=120, show_default=True,
              help="Cancel a job nobody has polled for this many seconds.")
@click.option("--max-pixels", type=click.IntRange(64, 2**31), default=1024 * 1024, show_default=True,
              help="Most output pixels of one request, over all its images (width x height x images).")
@click.option("--max-steps", type=click.IntRange(1, 1000), default=200, show_default=True,
              help="Most denoising steps per image of one request.")
@click.option("--max-memory", type=click.FloatRange(0.01, None), default=8.0, show_default=True,
              help="Most estimated sampling memory of one request, GiB.")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="torch CPU threads per process (default: torch's choice; 1 per worker avoids oversubscription).")
def serve(host, port, model, token, max_queue, workers, device, output_dir, job_ttl, abandon_after, max_pixels,
          max_steps, max_memory, threads):
    """Serve the web page and the REST API (OpenAPI at /docs, /openapi.json)."""
    require_extra("serve")
    import uvicorn

    from ..server import check_bind, create_app

    try:
        from ..validation import check_device

        check_bind(host, token)  # before loading any model
        check_device(device)
    except ValueError as err:  # InsecureBindError included
        raise InputError(str(err)) from None
    from ..loading import resolve_model

    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    resolve_model(model)  # a missing model is a one-line error (exit 2) naming --model
    app = create_app(model, host=host, token=token, max_queue=max_queue, workers=workers, device=device,
                     output_dir=output_dir, job_ttl=job_ttl, abandon_after=abandon_after, max_pixels=max_pixels,
                     max_steps=max_steps, max_memory_bytes=int(max_memory * 2**30))
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    click.echo(f"serving {app.state.model.name} at {where}  (API docs: {where}/docs)", err=True)
    if token:
        click.echo("clients must send 'Authorization: Bearer <token>'", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info" if logging.getLogger().level <= logging.INFO else "warning",
                timeout_graceful_shutdown=int(app.state.config.shutdown_grace) + 5)
