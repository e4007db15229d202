"""Training cost per step of candidate default-model architectures, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_architectures.py

Each candidate: a ``SatUNet`` like the ``small`` preset, batch 8, one forward + backward + AdamW
step on random inputs. Printed relative to the shipped 64 px model (ratios, not absolute times, are
what carries over between machines). The latent candidate excludes the autoencoder: its latents
would be cached, but it must be trained first.
"""

from __future__ import annotations

import argparse
import time

import torch

from diffusionsat.models.presets import get_preset
from diffusionsat.models.sat_unet import SatUNet


def build(channels: tuple[int, ...], resolution: int, in_channels: int = 3) -> SatUNet:
    cfg = get_preset("small").unet_config(cross_attention_dim=128)
    cfg.update(block_out_channels=channels, sample_size=resolution, in_channels=in_channels,
               out_channels=in_channels, norm_num_groups=16 if channels[0] % 32 else 32)
    return SatUNet(**cfg)


CANDIDATES = {
    "small 64 px pixel space (shipped)": ((32, 64, 128), 64, 3),
    "small 128 px pixel space": ((32, 64, 128), 128, 3),
    "wide 64 px pixel space (48/96/192)": ((48, 96, 192), 64, 3),
    "small on 32x32x4 latents (128 px, f=4 autoencoder not counted)": ((32, 64, 128), 32, 4),
}


def seconds_per_step(model: SatUNet, resolution: int, channels: int, batch: int, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    x = torch.randn(batch, channels, resolution, resolution)
    t = torch.randint(0, 1000, (batch,))
    text = torch.randn(batch, 32, 128)
    metadata = torch.randn(batch, 7)

    def step() -> None:
        loss = model(x, t, encoder_hidden_states=text, metadata=metadata).sample.pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    base = None
    for name, (channels, resolution, in_channels) in CANDIDATES.items():
        model = build(channels, resolution, in_channels)
        dt = seconds_per_step(model, resolution, in_channels, args.batch, args.steps)
        base = base or dt
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name}: {params:.2f} M parameters, {dt:.2f} s/step, {dt / base:.2f}x the shipped model", flush=True)


if __name__ == "__main__":
    main()
