"""Bound throughput: the batched engine (`compute_bound`) against the official loop on the same model,
images and noise keys.

The official loop (diffusion_tf `calc_bpd_loop`, improved-diffusion `calc_bpd_loop`): for t = T-1..0,
one network call on the batch of all images at timestep t. It is re-implemented here with the engine's
own per-call step (`bound_pairs`: counter noise keyed by (image, term, draw), network, float64 terms),
so the two differ only in which (image, term) pairs share a network call. Batch composition may change
the float32 rounding of the network, so the terms are compared with a stated tolerance.

    PYTHONPATH=. python benchmarks/bench_bound.py --T 100 --images 8 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from small_unet import SmallUNet  # noqa: E402

from ddpm_bench import load_model  # noqa: E402
from ddpm_bench.diffusion import DiffusionConfig  # noqa: E402
from ddpm_bench.variational_bound import BoundTerms, bound_pairs, compute_bound, prior_bpd, to_model_scale  # noqa: E402


def official_loop(net, s, images, index, *, seed=0, clip=True) -> BoundTerms:
    """One network call per timestep on the batch of all images, t = T-1 down to 0."""
    x0_all = to_model_scale(images)
    N, T = images.shape[0], s.T
    terms = torch.zeros(N, T + 1, dtype=torch.float64)
    mse = torch.zeros(N, T, dtype=torch.float64)
    n, d = torch.arange(N), torch.zeros(N, dtype=torch.long)
    for t in reversed(range(T)):
        v = bound_pairs(net, s, x0_all, index, n, d, torch.full((N,), t), seed=seed, clip=clip)
        terms[:, t], mse[:, t] = v.bpd, v.mse
    terms[:, T] = prior_bpd(s, x0_all)
    return BoundTerms(terms=terms, mse=mse)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256, help="pairs per call of the engine")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--variants", default="official,engine,engine-cl",
                   help="comma list of official, official-cl, engine, engine-cl, engine-compile")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = DiffusionConfig(T=a.T)
    s = cfg.schedule()
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (a.images, 3, a.size, a.size), dtype=np.uint8))
    index = torch.arange(a.images)
    plain = load_model(SmallUNet().eval(), diffusion=cfg, device="cpu", channels_last=False)
    cl = load_model(SmallUNet().eval(), diffusion=cfg, device="cpu", channels_last=True)
    evals = a.images * a.T
    print(f"{a.images} images {a.size}x{a.size}x3, T={a.T}: {evals} network evaluations; SmallUNet "
          f"{sum(q.numel() for q in plain.model.module.parameters())} parameters; {torch.get_num_threads()} threads; "
          f"median of {a.repeats} interleaved repeats")
    runs = {
        "official": lambda: official_loop(plain, s, images, index),
        "official-cl": lambda: official_loop(cl, s, images, index),
        "engine": lambda: compute_bound(plain, images, index, batch_size=a.batch_size),
        "engine-cl": lambda: compute_bound(cl, images, index, batch_size=a.batch_size),
    }
    if "engine-compile" in a.variants:
        compiled = load_model(SmallUNet().eval(), diffusion=cfg, device="cpu", channels_last=False, compile="default")
        t0 = time.perf_counter()
        compute_bound(compiled, images[:1], index[:1], batch_size=a.batch_size)  # compile + warm-up
        print(f"torch.compile warm-up: {time.perf_counter() - t0:.1f} s")
        runs["engine-compile"] = lambda: compute_bound(compiled, images, index, batch_size=a.batch_size)
    names = a.variants.split(",")
    times = {name: [] for name in names}
    out = {}
    for _ in range(a.repeats):  # interleaved, so that every variant sees the same load of a shared machine
        for name in names:
            t0 = time.perf_counter()
            out[name] = runs[name]()
            times[name].append(time.perf_counter() - t0)
    results = {}
    for name in names:
        med = statistics.median(times[name])
        results[name] = (med, out[name])
        print(f"{name:15s} {med:8.2f} s  {evals / med:8.1f} evals/s  {a.images / med:7.4f} images/s  "
              f"(runs: {', '.join(f'{x:.2f}' for x in times[name])})")
    base_t, base = results.get("official", next(iter(results.values())))
    for name, (med, r) in results.items():
        diff = (r.terms - base.terms).abs()
        total = (r.terms.sum(1) - base.terms.sum(1)).abs().max().item()
        print(f"{name:15s} speed-up vs official {base_t / med:5.2f}x; max |term diff| {diff.max().item():.2e} "
              f"bits/dim, max |total diff| {total:.2e} bits/dim, identical terms {bool(torch.equal(r.terms, base.terms))}")


if __name__ == "__main__":
    main()
