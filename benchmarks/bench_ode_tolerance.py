"""Error against network evaluations of the probability-flow ODE solve, tolerance by tolerance: ddpm-bench's
Dormand-Prince 5(4) with its error norm the largest of the parts' RMS (y, and the divergence integral),
the same solver with one RMS over all D + 1 values (ddpm-bench before issue 29), and torchdiffeq's dopri5
(its mixed norm, the same parts) when it is importable.

    PYTHONPATH=. python benchmarks/bench_ode_tolerance.py [--trained-images 2] [--truth-tol 1e-7]

Every solver integrates the same augmented float64 system (ddpm_bench.probability_flow's field: eps_hat
and its Hutchinson divergence with one Rademacher probe per image) from sigma_min to sigma_max with
rtol = atol = tol; torchdiffeq gets one image per call (its step size is shared by a batch) and the state
as the tuple (y, divergence integral). Problems:
- `closed form`: data N(0.1, 0.5^2) per dimension at 3x32x32, the exact eps_hat on the cosine schedule;
  its Jacobian is a multiple of I, so the Rademacher probe is exact and the truth is the closed form
  (SPEC section 7).
- `trained`: the packaged model (`embedded`, float32 network) on the first images of embedded:test,
  dequantized with seed 0; the truth is ddpm-bench's solve at `--truth-tol` (1e-7: with the float32
  network, a solve at 1e-8 had not finished after 20 minutes), swept at the tolerances above it.
The error is |bits/dim - truth| averaged over the images; NFE is per image. torchdiffeq is never a
dependency of ddpm-bench: install it beside this run only (pip install --target DIR torchdiffeq).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import ddpm_bench
from ddpm_bench.data import load_images
from ddpm_bench.estimators.ode import eps_in_sigma
from ddpm_bench.noise_level import noise_levels
from ddpm_bench.probability_flow import (
    _vector_field,  # the augmented field every solver here integrates
    dequantization_noise,
    dequantize,
    divergence_probe,
    dormand_prince,
    ode_log_likelihood,
)
from ddpm_bench.schedule import make_schedule

MU, S = 0.1, 0.5  # the closed form's data distribution, N(MU, S^2) per dimension
DEFAULT_TOL = 1e-5


def closed_form_problem(n: int, shape: tuple[int, ...], schedule: str):
    """(eps_fn, x0, sigmas, probe, exact log p per image) of Gaussian data with its exact eps, a function of
    (x, sigma); sigmas = (sigma_min, sigma_max), the schedule's first and last steps."""
    levels = noise_levels(make_schedule(schedule, 1000).alphas_cumprod)
    sigmas = torch.stack([levels[0], levels[-1]])

    def eps_fn(x, sigma):
        x = x.to(torch.float64)
        abar = (1.0 / (1.0 + sigma.square())).reshape(-1, 1, 1, 1)
        return (1 - abar).sqrt() * (x - abar.sqrt() * MU) / (abar * S**2 + 1 - abar)

    x0 = MU + S * torch.randn(n, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    D, smin, smax = math.prod(shape), sigmas[0], sigmas[-1]
    y1 = MU + (x0 - MU) * torch.sqrt((S**2 + smax**2) / (S**2 + smin**2))
    logp = -0.5 * D * torch.log(2 * math.pi * (1 + smax**2)) - 0.5 * y1.square().flatten(1).sum(1) / (1 + smax**2) \
        + 0.5 * D * torch.log((S**2 + smax**2) / (S**2 + smin**2))
    return eps_fn, x0, sigmas, divergence_probe(0, torch.arange(n), 0, shape), logp


def trained_problem(n: int):
    """(eps_fn, x0, sigmas, probe) of the packaged model on the first n test images, as `nll --ode` runs it
    (eps of (x, sigma) from `eps_in_sigma`, sigmas = (sigma_min, sigma_max))."""
    net = ddpm_bench.load_model("embedded")
    images = load_images("embedded:test", num_images=n)
    v = torch.from_numpy(images.images).permute(0, 3, 1, 2)
    index = torch.from_numpy(images.index)
    shape = tuple(v.shape[1:])
    eps_fn, sigma_min, sigma_max = eps_in_sigma(net)
    sigmas = torch.tensor([sigma_min, sigma_max], dtype=torch.float64)
    x0 = dequantize(v, dequantization_noise(0, index, 0, shape))
    return net, eps_fn, x0, sigmas, divergence_probe(0, index, 0, shape)


def log_prob(state: torch.Tensor, sigma_max: torch.Tensor, D: int) -> torch.Tensor:
    """log p(x_0) from the end state (y(sigma_max), divergence integral), as ode_log_likelihood forms it."""
    prior = -0.5 * D * (math.log(2 * math.pi) + torch.log1p(sigma_max.square())) \
        - 0.5 * state[:, :D].square().sum(1) / (1 + sigma_max.square())
    return prior + state[:, D]


def solve_ours(eps_fn, x0, sigmas, probe, tol, dtype):
    r = ode_log_likelihood(eps_fn, x0, float(sigmas[0]), float(sigmas[-1]), probe=probe, rtol=tol, atol=tol,
                           network_dtype=dtype)
    return r.log_prob, r.nfe.double()


def solve_one_rms(eps_fn, x0, sigmas, probe, tol, dtype):
    """ddpm-bench's solver with the error norm of before issue 29: one RMS over the D + 1 values."""
    N, shape = x0.shape[0], tuple(x0.shape[1:])
    D = math.prod(shape)
    field = _vector_field(eps_fn, shape, probe, dtype)
    state0 = torch.cat([x0.reshape(N, D), x0.new_zeros(N, 1)], 1)
    with torch.no_grad():
        state1, nfe = dormand_prince(field, sigmas[0].expand(N), sigmas[-1].expand(N), state0, rtol=tol, atol=tol,
                                     parts=(D + 1,))
    return log_prob(state1, sigmas[-1], D), nfe.double()


class _OneImage:
    """torchdiffeq's f(t, (y, integral)) of one batch row of the field, counting its calls."""

    def __init__(self, field, row: int, D: int):
        self.field, self.row, self.D, self.calls = field, torch.tensor([row]), D, 0

    def __call__(self, t, state):
        self.calls += 1
        out = self.field(t.reshape(1), torch.cat(state, 1), self.row)
        return out[:, :self.D], out[:, self.D:]


def solve_torchdiffeq(eps_fn, x0, sigmas, probe, tol, dtype):
    """torchdiffeq's dopri5 on the same field, one image per call, the state as the tuple (y, integral)."""
    from torchdiffeq import odeint

    N, shape = x0.shape[0], tuple(x0.shape[1:])
    D = math.prod(shape)
    field = _vector_field(eps_fn, shape, probe, dtype)
    logp, nfe = torch.empty(N, dtype=torch.float64), torch.empty(N, dtype=torch.float64)
    span = torch.stack([sigmas[0], sigmas[-1]])
    for j in range(N):
        f = _OneImage(field, j, D)
        with torch.no_grad():
            y, div = odeint(f, (x0[j:j + 1].reshape(1, D), x0.new_zeros(1, 1)), span, method="dopri5", rtol=tol,
                            atol=tol)
        logp[j] = log_prob(torch.cat([y[-1], div[-1]], 1), sigmas[-1], D)[0]
        nfe[j] = f.calls
    return logp, nfe


def nfe_at(error: float, points: list[tuple[float, float]]) -> tuple[float, float]:
    """NFE at `error` from the (error, NFE) points of a tolerance sweep: interpolated linearly in log-log
    between the two points around it (nan outside them), and from the least-squares line through all of
    them in log-log (robust to a solver whose error is not monotone in the tolerance)."""
    points = sorted(points)
    local = math.nan
    for (e0, n0), (e1, n1) in zip(points, points[1:], strict=False):
        if e0 <= error <= e1:
            w = 0.0 if e1 == e0 else math.log(error / e0) / math.log(e1 / e0)
            local = math.exp(math.log(n0) + w * (math.log(n1) - math.log(n0)))
            break
    slope, intercept = np.polyfit(np.log([e for e, _ in points]), np.log([n for _, n in points]), 1)
    return local, math.exp(intercept + slope * math.log(error))


def sweep(name, eps_fn, x0, sigmas, probe, truth, tols, solvers, dtype):
    D = x0[0].numel()
    rows = {}
    for tol in tols:
        for solver, solve in solvers.items():
            t0 = time.perf_counter()
            logp, nfe = solve(eps_fn, x0, sigmas, probe, tol, dtype)
            err = ((logp - truth).abs() / (D * math.log(2))).numpy()
            rows[solver, tol] = (float(err.mean()), float(nfe.mean()))
            print(f"  {name} {solver} tol {tol:g}: error {err.mean():.2e} (max {err.max():.2e}) bits/dim, "
                  f"NFE {nfe.mean():.0f}, {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\n{name}: mean |error| in bits/dim / NFE per image\n")
    print("| rtol = atol | " + " | ".join(solvers) + " |")
    print("|---" * (len(solvers) + 1) + "|")
    for tol in tols:
        print(f"| {tol:g} | " + " | ".join(f"{rows[s, tol][0]:.1e} / {rows[s, tol][1]:.0f}" for s in solvers) + " |")
    if DEFAULT_TOL in tols:
        error, nfe = rows["ddpm-bench", DEFAULT_TOL]
        for other in solvers:
            if other != "ddpm-bench":
                local, fit = nfe_at(error, [rows[other, t] for t in tols])
                print(f"\n{other} at ddpm-bench's error at tol {DEFAULT_TOL:g} ({error:.1e} bits/dim, {nfe:.0f} NFE): "
                      f"{local:.0f} NFE between its neighbouring tolerances, {fit:.0f} from the line through all")
    print()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tols", default="1e-3,1e-4,1e-5,1e-6,1e-7")
    p.add_argument("--images", type=int, default=4, help="closed-form images")
    p.add_argument("--schedule", default="cosine", help="the closed form's schedule")
    p.add_argument("--trained-images", type=int, default=2, help="embedded:test images (0: skip the model)")
    p.add_argument("--truth-tol", type=float, default=1e-7,
                   help="the trained model's reference solve (its float32 network stalls tighter solves)")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    tols = [float(t) for t in a.tols.split(",")]
    solvers = {"ddpm-bench": solve_ours, "one RMS (before)": solve_one_rms}
    try:
        import torchdiffeq

        solvers[f"torchdiffeq {torchdiffeq.__version__} dopri5"] = solve_torchdiffeq
    except ImportError:
        print("torchdiffeq is not importable: its column is left out")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    eps_fn, x0, sigmas, probe, logp = closed_form_problem(a.images, (3, 32, 32), a.schedule)
    sweep(f"closed form 3x32x32 ({a.schedule}, {a.images} images)", eps_fn, x0, sigmas, probe, logp, tols, solvers,
          torch.float64)
    if a.trained_images:
        net, eps_fn, x0, sigmas, probe = trained_problem(a.trained_images)
        D = x0[0].numel()
        with net.in_use():
            t0 = time.perf_counter()
            truth, nfe = solve_ours(eps_fn, x0, sigmas, probe, a.truth_tol, torch.float32)
            bpd = -truth / (D * math.log(2)) + math.log2(127.5)
            print(f"trained truth, ddpm-bench at tol {a.truth_tol:g}: {np.round(bpd.numpy(), 6)} bits/dim, NFE "
                  f"{nfe.tolist()}, {time.perf_counter() - t0:.0f} s", flush=True)
            for name, solve in solvers.items():
                if solve is not solve_ours:  # how far the truth itself is from the others' at its tolerance
                    other, nfe = solve(eps_fn, x0, sigmas, probe, a.truth_tol, torch.float32)
                    diff = ((other - truth).abs() / (D * math.log(2))).numpy()
                    print(f"  {name} at tol {a.truth_tol:g}: {np.round(diff, 8)} bits/dim from it, NFE {nfe.tolist()}",
                          flush=True)
            sweep(f"trained (embedded, {a.trained_images} test images)", eps_fn, x0, sigmas, probe, truth,
                  [t for t in tols if t > a.truth_tol], solvers, torch.float32)


if __name__ == "__main__":
    main()
