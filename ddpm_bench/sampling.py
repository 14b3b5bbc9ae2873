"""Ancestral sampling from the reverse process, with one noise stream per sample.

- DDPM (Ho et al. 2020) Algorithm 2: x_T ~ N(0, I); for t = T..1, x_{t-1} = mu_theta(x_t, t) + sigma_t z
  with z ~ N(0, I), and no noise at t = 1. The mean and variance come from `diffusion.p_mean_logvar`,
  so every mean and variance type is covered, and the x_0 prediction is clipped to [-1, 1] before the
  mean is formed (the official sampler's `clip_denoised=True`).
- Respaced sampling (Nichol & Dhariwal 2021, section 4): K of the T steps, evenly strided; the shorter
  process keeps alpha-bar at the kept steps, its betas are 1 - alpha-bar_{t_k} / alpha-bar_{t_{k-1}},
  its fixed variances and learned-range bounds are recomputed from those betas, and the network is still
  called with the original index of each kept step (improved DDPM's `SpacedDiffusion`).
- Progressive generation (DDPM section 4.3, Figure 6): the x_0 prediction every N steps.

Per-sample seeding: x_T of sample j and the z drawn when leaving network index i are
`counter_normal(seed, [j, T, PRIOR])` and `counter_normal(seed, [j, i, STEP])`, so sample j is a pure
function of (seed, j) and the sampler settings, whatever the batch it is computed in. The state x_t is
float64; the network sees float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ddpm_bench.arguments import flag, given, named
from ddpm_bench.diffusion import DiffusionConfig, p_mean_logvar, predict_x0
from ddpm_bench.errors import ModelOutputError, UserError
from ddpm_bench.network import Network
from ddpm_bench.noise import check_seed, counter_normal
from ddpm_bench.schedule import Schedule, respace_betas, schedule_from_betas, space_timesteps

# third component of a noise key: what the noise is for
PURPOSE_PRIOR = 0  # x_T ~ N(0, I)
PURPOSE_STEP = 1  # z ~ N(0, I) of a reverse step


SAMPLERS = ("ancestral", "ddim")


@dataclass(frozen=True)
class SamplerOptions:
    """Everything besides the model that changes a sample (with its number j)."""

    seed: int = 0  # sample j is a pure function of (seed, j)
    steps: int | None = None  # respaced sampling with K evenly strided steps; None = all T steps
    clip: bool = True  # clip the x0 prediction to [-1, 1] before forming the mean (official sampler)
    sampler: str = "ancestral"  # "ancestral" (DDPM Algorithm 2) or "ddim" (Song et al. 2021)
    eta: float = 0.0  # DDIM only: 0 deterministic given x_T, 1 the ancestral (posterior) variance

    def __post_init__(self) -> None:
        check_seed(self.seed)
        flag("clip", self.clip)
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):
            raise UserError(f"{named('steps')} must be at least 1, got {self.steps!r}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"{given('sampler', self.sampler)}: choose from {', '.join(SAMPLERS)}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0 <= self.eta < float("inf"):
            raise UserError(f"{named('eta')} must be a finite number >= 0, got {self.eta!r}")
        if self.eta and self.sampler != "ddim":
            raise UserError(f"{named('eta')} goes with {given('sampler', 'ddim')} (the ancestral sampler has the model's "
                            "variance)")


@dataclass(frozen=True)
class SamplingProcess:
    """The reverse process being sampled: K steps, each with its coefficients and its network index."""

    diffusion: DiffusionConfig
    schedule: Schedule  # (K,) float64 coefficients of the (possibly respaced) process
    timesteps: torch.Tensor  # (K,) int64: the original network index i of step k

    @property
    def steps(self) -> int:
        return int(self.timesteps.shape[0])


def sampling_process(cfg: DiffusionConfig, steps: int | None = None) -> SamplingProcess:
    """The full process (steps None or T), or the improved-DDPM respacing to `steps` evenly strided steps."""
    full = cfg.schedule()
    if steps is None or steps == cfg.T:
        return SamplingProcess(cfg, full, torch.arange(cfg.T, dtype=torch.int64))
    if cfg.mean_type == "mu":
        raise ValueError("respaced sampling needs an eps or x0 model; a mu model predicts the mean of "
                         "one step of the full process, which the respaced process does not have")
    use = space_timesteps(cfg.T, steps)
    respaced = schedule_from_betas(respace_betas(full.alphas_cumprod.numpy(), use))
    return SamplingProcess(cfg, respaced, torch.tensor(use, dtype=torch.int64))


def sample_noise(seed: int, indices: torch.Tensor, step: int, purpose: int,
                 shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) float64 standard normal noise; row b depends only on (seed, indices[b], step, purpose)."""
    B = indices.shape[0]
    keys = torch.stack([indices.to(torch.int64),
                        torch.full((B,), step, dtype=torch.int64, device=indices.device),
                        torch.full((B,), purpose, dtype=torch.int64, device=indices.device)], dim=1)
    return counter_normal(seed, keys, shape)


@dataclass(frozen=True)
class Samples:
    x0: torch.Tensor  # (B, C, H, W) float64 final samples, model scale
    progressive: torch.Tensor | None  # (B, P, C, H, W) float64 x_0 predictions, earliest (t = T) first
    progressive_t: torch.Tensor | None  # (P,) int64 timestep t = i + 1 of each column


def _describe(indices: torch.Tensor, bad: torch.Tensor) -> str:
    nums = indices.cpu()[bad.cpu()].tolist()
    shown = ", ".join(str(n) for n in nums[:10])
    return shown + (f" and {len(nums) - 10} more" if len(nums) > 10 else "")


def _check_finite(t: torch.Tensor, indices: torch.Tensor, what: str, i: int) -> None:
    bad = ~torch.isfinite(t).flatten(1).all(dim=1)
    if bool(bad.any()):
        raise ModelOutputError(f"{what} is not finite (NaN or Inf) for sample number(s) {_describe(indices, bad)} "
                               f"at network index {i}; no shard was written for them")


def draw_samples(
    net: Network,
    process: SamplingProcess,
    indices: torch.Tensor,
    image_shape: tuple[int, int, int],
    opts: SamplerOptions = SamplerOptions(),
    progressive_every: int | None = None,
) -> Samples:
    """Algorithm 2 (`opts.sampler` "ancestral") or DDIM ("ddim", with `opts.eta`) for the samples numbered
    `indices` ((B,) int64), on the network's device.

    With `progressive_every` = N, the x_0 prediction is recorded at every step k (0-based in the sampled
    process) with k % N == 0; the last column (k = 0) is the final sample for the `eps` and `x0`
    parameterisations. Non-finite network outputs or states raise `ModelOutputError` naming the sample
    numbers.
    """
    cfg = process.diffusion
    device = net.device
    seed, clip, sampler, eta = opts.seed, opts.clip, opts.sampler, opts.eta
    s = process.schedule.to(device)
    idx = indices.to(device=device, dtype=torch.int64)
    B = idx.shape[0]
    C = image_shape[0]
    x = sample_noise(seed, idx, cfg.T, PURPOSE_PRIOR, image_shape)  # x_T
    columns: list[torch.Tensor] = []
    column_t: list[int] = []
    with torch.inference_mode():
        for k in reversed(range(process.steps)):
            i = int(process.timesteps[k])
            out = net(x.to(torch.float32), torch.full((B,), i, dtype=torch.int64, device=device))
            _check_finite(out, indices, "the model output", i)
            ik = torch.full((B,), k, dtype=torch.int64, device=device)
            if sampler == "ddim":  # only the x_0 prediction: DDIM uses neither the model's mean nor its variance
                x0_hat = predict_x0(cfg, s, out[:, :C].to(torch.float64), x, ik, clip)
                z = sample_noise(seed, idx, i, PURPOSE_STEP, image_shape) if k > 0 and eta else None
                x = ddim_step(s, x0_hat, x, k, eta, z)
            else:
                step = p_mean_logvar(cfg, s, out, x, ik, clip=clip)
                x0_hat = step.x0_hat
                if k > 0:
                    z = sample_noise(seed, idx, i, PURPOSE_STEP, image_shape)
                    x = step.mean + torch.exp(0.5 * step.logvar) * z
                else:
                    x = step.mean
            _check_finite(x, indices, "the sampled state", i)
            if progressive_every and k % progressive_every == 0:
                columns.append(x0_hat)
                column_t.append(i + 1)
    if progressive_every:
        return Samples(x0=x, progressive=torch.stack(columns, dim=1),
                       progressive_t=torch.tensor(column_t, dtype=torch.int64))
    return Samples(x0=x, progressive=None, progressive_t=None)


def ddim_step(s: Schedule, x0_hat: torch.Tensor, x: torch.Tensor, k: int, eta: float,
              z: torch.Tensor | None) -> torch.Tensor:
    """One DDIM step (Song et al. 2021, Eq. 12) from step k to k - 1 of the (respaced) process `s`:
    eps = (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar); sigma = eta sqrt((1 - abar') / (1 - abar))
    sqrt(1 - abar / abar'); x' = sqrt(abar') x0_hat + sqrt(1 - abar' - sigma^2) eps + sigma z, with abar' the
    alpha-bar of step k - 1 (1 at k = 0, where x' = x0_hat). `z` is None when no noise is drawn."""
    abar, prev = float(s.alphas_cumprod[k]), float(s.alphas_cumprod_prev[k])
    eps = (x - math.sqrt(abar) * x0_hat) / math.sqrt(1.0 - abar)
    sigma = eta * math.sqrt((1.0 - prev) / (1.0 - abar)) * math.sqrt(1.0 - abar / prev)
    x_prev = math.sqrt(prev) * x0_hat + math.sqrt(max(0.0, 1.0 - prev - sigma**2)) * eps
    return x_prev + sigma * z if z is not None else x_prev


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model scale (..., C, H, W) -> uint8 (..., H, W, C): v = round((x + 1) * 127.5) clipped to 0..255.

    Rounding (half to even), never truncation: truncation would move every value down by half a level
    on average and never produce 255 for x < 1.
    """
    v = torch.round((x.to(torch.float64) + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
    return v.movedim(-3, -1).cpu().numpy()
