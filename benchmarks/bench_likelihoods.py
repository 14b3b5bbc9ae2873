"""The bound and the ODE likelihood of one model, side by side: bits/dim with their standard errors,
network evaluations and seconds per image, and the time to a standard error of 0.01 bits/dim of a data
set's mean (the images needed, (sd / 0.01)^2, times the seconds per image; sd between images, estimate
noise included).

    PYTHONPATH=. python benchmarks/bench_likelihoods.py --ckpt embedded --data embedded:test --images 8

Runs through the Python API on the same images and seed: the exact bound, `--terms 25` (its proposal from
the exact output, so without a pilot), and `--ode` (Rademacher, rtol = atol = 1e-5).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import ddpm_bench
from ddpm_bench.estimators.ode import OdeOptions


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="embedded")
    p.add_argument("--data", default="embedded:test")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--terms", type=int, default=25)
    p.add_argument("--target-se", type=float, default=0.01)
    a = p.parse_args(argv)
    model = ddpm_bench.load_model(a.ckpt)
    work = tempfile.mkdtemp(prefix="bench_likelihoods_")
    runs = {}
    t0 = time.perf_counter()
    runs["exact bound"] = ddpm_bench.bound(model, a.data, num_images=a.images, out=f"{work}/exact")
    runs[f"--terms {a.terms}"] = ddpm_bench.bound(model, a.data, num_images=a.images, terms=a.terms,
                                                  proposal=f"{work}/exact")
    runs["--ode"] = ddpm_bench.bound(model, a.data, num_images=a.images, options=OdeOptions())
    print(f"{a.ckpt} on {a.images} images of {a.data} ({time.perf_counter() - t0:.0f} s in all)")
    print("| method | bits/dim | s.e. | network evaluations per image | s per image | sd between images | "
          f"images to s.e. {a.target_se} | time to s.e. {a.target_se} |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        s = r.summary
        per_image = s.seconds / s.n_images
        sd = s.total_bpd_stderr * s.n_images**0.5
        n = (sd / a.target_se) ** 2
        hours = n * per_image / 3600
        print(f"| {name} | {s.total_bpd:.4f} | {s.total_bpd_stderr:.4f} | {s.network_evals / s.n_images:.0f} | "
              f"{per_image:.2f} | {sd:.3f} | {n:.0f} | {hours:.2f} h |")


if __name__ == "__main__":
    main()
