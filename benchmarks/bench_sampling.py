"""Sampling speed: DiffusionSatPipeline vs a raw UNet+scheduler loop with the same weights.

    python benchmarks/bench_sampling.py                  # the embedded default model
    python benchmarks/bench_sampling.py --model PATH --steps 25 --repeats 5

Both paths run in one process, interleaved, with the same prompt, metadata, CFG and seed; the
report gives medians, the pipeline's overhead as a ratio, and the process's peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from diffusionsat import SatMetadata
from diffusionsat.loading import load_pipeline
from diffusionsat.pipelines.pipeline_diffusionsat import combine_guidance

PROMPT = "a satellite image of vegetation and water in United States of America in summer"
METADATA = SatMetadata(lat=47.02, lon=-99.15, gsd=5.0, year=2016, month=7, day=15)


@torch.no_grad()
def raw_loop(pipe, steps: int, guidance: float, seed: int) -> torch.Tensor:
    """The minimum work: encode text once, then one batched CFG UNet call + scheduler step per step."""
    unet, scheduler = pipe.unet, pipe.scheduler
    tokens = pipe.tokenizer(["", PROMPT], padding="max_length",
                            max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt")
    text = pipe.text_encoder(tokens.input_ids)[0]
    unknown = unet.config.metadata_unknown_value
    md = torch.tensor([[unknown] * 7, list(METADATA.normalize(unknown))], dtype=torch.float32)
    size = unet.config.sample_size
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((1, unet.config.in_channels, size, size), generator=g) * scheduler.init_noise_sigma
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        noise = unet(model_input, t, encoder_hidden_states=text, metadata=md).sample
        latents = scheduler.step(combine_guidance(noise, guidance, None), t, latents,
                                 **pipe.prepare_extra_step_kwargs(g)).prev_sample
    return latents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    run_pipe = lambda: pipe(PROMPT, metadata=METADATA, num_inference_steps=args.steps,  # noqa: E731
                            guidance_scale=args.guidance, generator=torch.Generator().manual_seed(0),
                            output_type="latent").images
    run_raw = lambda: raw_loop(pipe, args.steps, args.guidance, 0)  # noqa: E731
    torch.testing.assert_close(run_pipe(), run_raw())  # same work, same result
    times = {"pipeline": [], "raw": []}
    for _ in range(args.repeats):
        for name, fn in (("pipeline", run_pipe), ("raw", run_raw)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    full = time.perf_counter()
    pipe(PROMPT, metadata=METADATA, num_inference_steps=args.steps, guidance_scale=args.guidance)
    full = time.perf_counter() - full
    med = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "model": str(args.model or "default"),
        "size": pipe.default_size,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "pipeline_s": round(med["pipeline"], 3),
        "raw_loop_s": round(med["raw"], 3),
        "overhead_ratio": round(med["pipeline"] / med["raw"], 4),
        "one_sample_with_decode_s": round(full, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
