"""Training throughput: `diffusionsat`'s Trainer vs a minimal plain diffusers loop, same model and data.

    python benchmarks/bench_training.py --preset small --steps 30 --batch-size 8

Both run in this process on the same real chips (NAIP, ../shared/data) with the same model
(fresh from the preset, same seed), AdamW and batch size. The plain loop is the textbook diffusers
step (add_noise → UNet → MSE → backward → step) on pre-loaded tensors, so it is the upper bound;
the report gives samples/s of each, their ratio, and the share of the Trainer's step time spent
waiting for data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusionsat.training import Trainer, load_config
from diffusionsat.training.datasets import build_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def plain_loop(pipe, loader, steps: int) -> float:
    """samples/s of the textbook diffusers loop (DataLoader → add_noise → UNet → MSE → AdamW → EMA)."""
    from diffusers.training_utils import EMAModel

    unet, text_encoder, scheduler = pipe.unet, pipe.text_encoder, pipe.scheduler
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ema = EMAModel(params, decay=0.999)
    unknown = unet.config.metadata_unknown_value
    durations, batches = [], iter(loader)
    for _ in range(steps):
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        pixels = batch["pixel_values"]
        tokens = pipe.tokenizer(batch["caption"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids
        md = torch.tensor([m.normalize(unknown) for m in batch["metadata"]], dtype=torch.float32)
        noise = torch.randn_like(pixels)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (pixels.shape[0],))
        pred = unet(scheduler.add_noise(pixels, noise, t), t, text_encoder(tokens)[0], metadata=md).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(params)
        durations.append(time.perf_counter() - start)
    return pixels.shape[0] / statistics.median(durations[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cfg = load_config(overrides={
        "data": [str(SHARED / "naip-timeseries")], "chip_size": 64, "bands": "1,2,3", "preset": args.preset,
        "batch_size": args.batch_size, "max_steps": args.steps, "checkpoint_every": 10**9, "use_ema": True,
        "report_to": None, "output_dir": str(out / "run"), "max_samples": args.batch_size * 8,
    })
    dataset = build_dataset(cfg)
    trainer = Trainer(cfg, dataset)

    # The Trainer's step rate: time between successive loss computations (data wait included).
    step_starts = []
    original = trainer.compute_loss

    def timed_loss(batch, epoch):
        step_starts.append(time.perf_counter())
        return original(batch, epoch)

    trainer.compute_loss = timed_loss
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    intervals = [b - a for a, b in zip(step_starts, step_starts[1:])]
    trainer_rate = args.batch_size / statistics.median(intervals[2:])

    # Data loading alone: the same DataLoader settings, no model.
    loader, _ = trainer._dataloader()
    load_times, it = [], iter(loader)
    for _ in range(min(len(loader), 8)):
        t0 = time.perf_counter()
        next(it)
        load_times.append(time.perf_counter() - t0)

    from torch.utils.data import DataLoader

    from diffusionsat.training.components import build_initial_pipeline
    from diffusionsat.training.trainer import _Indexed, collate, dataset_captions

    pipe = build_initial_pipeline(cfg, dataset_captions(dataset))
    plain_loader = DataLoader(_Indexed(dataset), batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                              drop_last=True)
    plain_rate = plain_loop(pipe, plain_loader, args.steps)
    report = {
        "preset": args.preset, "batch_size": args.batch_size, "steps": args.steps, "threads": torch.get_num_threads(),
        "trainer_samples_per_s": round(trainer_rate, 2),
        "plain_loop_samples_per_s": round(plain_rate, 2),
        "ratio_trainer_over_plain": round(trainer_rate / plain_rate, 3),
        "data_loading_share_of_step": round(statistics.median(load_times) / statistics.median(intervals[2:]), 4),
        "trainer_wall_s_incl_setup_and_final_save": round(total, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
