"""Sampling throughput: ddpm-bench's sampler vs diffusers' DDPMPipeline on the same UNet2DModel weights.

Both run the full ancestral sampler (Algorithm 2, T steps, clipped x0 prediction) on the CPU with the
same randomly initialised UNet2DModel saved with save_pretrained; ddpm-bench loads it through
`--ckpt DIR` (ddpm_bench.models.formats.diffusers_dir). The samples differ (each library draws its own
noise), the work per step is the same: one network call on the batch plus the step arithmetic.

    PYTHONPATH=. python benchmarks/bench_sampling.py --T 100 --batch 16 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from ddpm_bench import load_model
    from ddpm_bench.sampling import draw_samples, sampling_process

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    scheduler = DDPMScheduler(num_train_timesteps=args.T, beta_schedule="linear", variance_type="fixed_large",
                              clip_sample=True)
    with tempfile.TemporaryDirectory() as tmp:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp)
        source = load_model(tmp, device="cpu", channels_last=False)
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    process = sampling_process(source.diffusion)
    idx = torch.arange(args.batch)

    def ours() -> None:
        draw_samples(source, process, idx, (3, 32, 32))

    def theirs() -> None:
        with torch.inference_mode():
            pipe(batch_size=args.batch, num_inference_steps=args.T, generator=torch.Generator().manual_seed(0),
                 output_type="np")

    times: dict[str, list[float]] = {"diffusers DDPMPipeline": [], "ddpm-bench sampler": []}
    for _ in range(args.repeats):  # interleaved, so a change of machine load hits both
        for name, fn in (("diffusers DDPMPipeline", theirs), ("ddpm-bench sampler", ours)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["diffusers DDPMPipeline"])
    print(f"UNet2DModel {sum(p.numel() for p in unet.parameters()):,} parameters, T={args.T}, batch {args.batch}, "
          f"threads {torch.get_num_threads()}, median of {args.repeats}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:24s} {med:7.2f} s  {args.batch / med:6.2f} images/s  ratio {base / med:.2f}x")


if __name__ == "__main__":
    main()
