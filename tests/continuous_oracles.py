"""Gaussian oracles of every noise convention (SPEC section 8): the exact eps_hat of data N(MU, S^2) per
dimension, diffused, as a model of noise_input "gamma", "t" (of each named schedule) or "sigma" (an EDM-style
denoiser D(y, sigma)) sees it; and the continuous bound's parts of an image x under them, in closed form or by
quadrature, computed here independently of the estimator."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import integrate

from ddpm_bench.noise_level import continuous_schedule

MU, S = 0.1, 0.5


def eps_hat(z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """E[eps | z] at gamma for x ~ N(MU, S^2): sigma (z - alpha MU) / (alpha^2 S^2 + sigma^2), float64."""
    g = gamma.to(torch.float64).reshape(-1, *([1] * (z.ndim - 1)))
    a2, s2 = torch.sigmoid(-g), torch.sigmoid(g)
    return s2.sqrt() * (z.to(torch.float64) - a2.sqrt() * MU) / (a2 * S**2 + s2)


class _Oracle(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # an identity by its weights


class GammaOracle(_Oracle):
    noise_input = "gamma"

    def __init__(self, gamma_min: float, gamma_max: float):
        super().__init__()
        self.gamma_min, self.gamma_max = gamma_min, gamma_max

    def forward(self, z, gamma):
        return eps_hat(z, gamma).to(torch.float32) + self.weight


class TimeOracle(_Oracle):
    noise_input = "t"

    def __init__(self, schedule: str, time_scale: float = 1000.0, gamma_min=None, gamma_max=None):
        super().__init__()
        self.schedule, self.time_scale = schedule, time_scale
        self.gamma_min, self.gamma_max = gamma_min, gamma_max
        self._sched = continuous_schedule(schedule, gamma_min, gamma_max)

    def forward(self, z, t):
        return eps_hat(z, self._sched.gamma(t.to(torch.float64) / self.time_scale)).to(torch.float32) + self.weight


class SigmaOracle(_Oracle):
    """EDM's D(y, sigma) = E[x | y], y = x + sigma eps: MU + S^2 / (S^2 + sigma^2) (y - MU)."""

    noise_input = "sigma"
    prediction = "x0"

    def __init__(self, gamma_min: float, gamma_max: float):
        super().__init__()
        self.gamma_min, self.gamma_max = gamma_min, gamma_max

    def forward(self, y, sigma):
        s2 = sigma.to(torch.float64).reshape(-1, 1, 1, 1).square()
        return (MU + S**2 / (S**2 + s2) * (y.to(torch.float64) - MU)).to(torch.float32) + self.weight


def diffusion_coefficients(gamma_min: float, gamma_max: float) -> tuple[float, float]:
    """(A, B) with E_eps (eps - eps_hat)^2 integrated over gamma = A + B (x - MU)^2 per dimension."""
    def a(g):
        a2, s2 = 1 / (1 + math.exp(g)), 1 / (1 + math.exp(-g))
        return a2 * a2 * S**4 / (a2 * S**2 + s2) ** 2

    def b(g):
        a2, s2 = 1 / (1 + math.exp(g)), 1 / (1 + math.exp(-g))
        return s2 * a2 / (a2 * S**2 + s2) ** 2

    opts = {"limit": 200, "epsabs": 1e-13, "epsrel": 1e-12}
    return integrate.quad(a, gamma_min, gamma_max, **opts)[0], integrate.quad(b, gamma_min, gamma_max, **opts)[0]


def parts_nats(v: np.ndarray, gamma_min: float, gamma_max: float, points: int = 80) -> dict[str, np.ndarray]:
    """Each image's expected prior, reconstruction and diffusion parts (nats): closed forms and quadrature
    (Gauss-Hermite over the decoder's noise), for uint8 images v (N, H, W, C)."""
    x = v.reshape(len(v), -1).astype(np.float64) / 127.5 - 1.0
    a2, s2 = 1 / (1 + math.exp(gamma_max)), 1 / (1 + math.exp(-gamma_max))
    prior = 0.5 * (a2 * x**2 + s2 - 1 - math.log(s2)).sum(1)
    A, B = diffusion_coefficients(gamma_min, gamma_max)
    diffusion = 0.5 * (A + B * (x - MU) ** 2).sum(1)
    alpha, sigma = math.sqrt(1 / (1 + math.exp(gamma_min))), math.sqrt(1 / (1 + math.exp(-gamma_min)))
    nodes, weights = np.polynomial.hermite_e.hermegauss(points)  # E over e ~ N(0, 1)
    weights = weights / weights.sum()
    levels = np.arange(256) / 127.5 - 1.0
    per_value = np.empty(256)
    for value in range(256):
        z0 = alpha * levels[value] + sigma * nodes  # (P,)
        logits = -((z0[:, None] - alpha * levels[None, :]) ** 2) / (2 * sigma**2)
        top = logits.max(1, keepdims=True)
        logp = logits[:, value] - (top[:, 0] + np.log(np.exp(logits - top).sum(1)))
        per_value[value] = -(weights * logp).sum()
    reconstruction = per_value[v.reshape(len(v), -1)].sum(1)
    return {"prior": prior, "reconstruction": reconstruction, "diffusion": diffusion}


def gaussian_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    """uint8 NHWC images whose model-scale values are N(MU, S^2), quantized."""
    x = np.random.default_rng(seed).normal(MU, S, (n, size, size, 3))
    return np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8)


def discrete_diffusion_nats(v: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Each image's expected diffusion part of VDM's T-step bound on `grid` (T + 1 gammas): the sum over
    steps of (1/2) expm1(g_i - g_{i-1}) E (eps - eps_hat(z_{g_i}))^2 over dimensions, in closed form."""
    x = v.reshape(len(v), -1).astype(np.float64) / 127.5 - 1.0
    out = np.zeros(len(v))
    for lo, hi in zip(grid[:-1], grid[1:], strict=True):
        a2, s2 = 1 / (1 + math.exp(hi)), 1 / (1 + math.exp(-hi))
        e = (a2 * a2 * S**4 + s2 * a2 * (x - MU) ** 2) / (a2 * S**2 + s2) ** 2
        out += 0.5 * math.expm1(hi - lo) * e.sum(1)
    return out
