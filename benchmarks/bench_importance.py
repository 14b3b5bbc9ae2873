"""Time to a given standard error of a data set's mean bits/dim: the exact bound against the
importance-sampled one (`nll --terms K`), on a model trained by the reference trainer.

The standard error of the mean over n images is sd / sqrt(n), where sd is the spread of the per-image
totals: between images alone for the exact bound, between images plus term sampling for the estimate.
So the images needed for a target standard error e are (sd / e)^2, and the time is that many images at
each method's time per image (plus, for the estimate, its pilot: the exact bound of 4 images, which
sets the proposal). Both run on the same images, seed and network, in the same process.

    PYTHONPATH=. python benchmarks/bench_importance.py --ckpt runs/tiny/checkpoints/ckpt_0000200.pt \
        --data embedded:test --images 16 --K 10 25 50 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ddpm_bench import load_model
from ddpm_bench.data import load_images
from ddpm_bench.variational_bound import (
    BoundOptions,
    ImportanceOptions,
    compute_bound,
    estimate_bound,
    term_proposal,
)

PILOT = 4


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--data", default="embedded:test")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--K", type=int, nargs="+", default=[10, 25, 50, 100])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--target-se", type=float, default=0.01, help="standard error of the mean, bits/dim")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    src = load_model(a.ckpt, device="cpu")
    data = load_images(a.data, None, a.images)
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2)
    index = torch.from_numpy(data.index)
    T = src.diffusion.T
    print(f"{a.ckpt}: T = {T}, {len(data)} images of {a.data}, batch {a.batch_size}, torch threads "
          f"{torch.get_num_threads()}, target standard error {a.target_se} bits/dim")

    t0 = time.perf_counter()
    exact = compute_bound(src, images, index, BoundOptions(seed=a.seed), batch_size=a.batch_size)
    t_exact = (time.perf_counter() - t0) / len(data)
    totals = exact.terms.sum(1).numpy()
    sd_exact = totals.std(ddof=1)
    n_exact = (sd_exact / a.target_se) ** 2
    print(f"exact: mean {totals.mean():.4f} bits/dim, between-image sd {sd_exact:.4f}, {t_exact:.2f} s per image "
          f"({T} evaluations) -> {n_exact:.0f} images, {n_exact * t_exact / 60:.1f} min to the target")
    q = term_proposal(exact.terms[:PILOT].numpy())
    t_pilot = PILOT * t_exact
    print("| K | mean | sd of totals | sd of term sampling | s per image | images to target | minutes | "
          "speed-up vs exact |")
    print("|---|---|---|---|---|---|---|---|")
    for K in a.K:
        t0 = time.perf_counter()
        est = estimate_bound(src, images, index, ImportanceOptions(seed=a.seed, terms=K), q, batch_size=a.batch_size)
        t_est = (time.perf_counter() - t0) / len(data)
        est_totals = est.terms.sum(1).numpy()
        sd = est_totals.std(ddof=1)
        sd_sampling = (est_totals - totals).std(ddof=1)  # the same x_{k+1} for the drawn terms: paired
        n = (sd / a.target_se) ** 2
        minutes = (n * t_est + t_pilot) / 60
        print(f"| {K} | {est_totals.mean():.4f} | {sd:.4f} | {sd_sampling:.4f} | {t_est:.3f} | {n:.0f} | "
              f"{minutes:.1f} | {n_exact * t_exact / 60 / minutes:.1f}x |")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
