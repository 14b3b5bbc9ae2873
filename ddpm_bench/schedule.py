"""Noise schedules and the float64 coefficients of the forward process and its posterior.

DDPM (Ho et al. 2020) section 2 and Eq. 4, 6-7; the official code's `GaussianDiffusion.__init__`
is the tie-breaker for the i = 0 conventions. Every array is float64, indexed by the 0-based network
index i = t - 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "quad", "const", "cosine", "jsd")


def make_betas(name: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Return betas_1..betas_T as float64 (T,) for a named schedule.

    `linear`, `quad`, `const` and `jsd` follow the official DDPM code; `cosine` is improved DDPM
    (Nichol & Dhariwal 2021, Eq. 17) with s = 0.008 and betas clipped at 0.999.
    """
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    if name == "linear":
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    elif name == "quad":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    elif name == "const":
        betas = np.full(T, beta_end, dtype=np.float64)
    elif name == "jsd":
        betas = 1.0 / np.linspace(T, 1, T, dtype=np.float64)
    elif name == "cosine":
        s = 0.008

        def alpha_bar(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = np.array(
            [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)], dtype=np.float64
        )
    else:
        raise ValueError(f"unknown beta schedule {name!r}; choose one of {', '.join(BETA_SCHEDULES)}")
    if not (np.all(betas > 0) and np.all(betas <= 1)):
        raise ValueError(f"betas of schedule {name!r} must lie in (0, 1]")
    return betas


@dataclass(frozen=True)
class Schedule:
    """Float64 coefficients of a diffusion with T steps; entry i belongs to t = i + 1."""

    betas: torch.Tensor  # (T,) beta_t
    alphas_cumprod: torch.Tensor  # (T,) alpha-bar_t
    alphas_cumprod_prev: torch.Tensor  # (T,) alpha-bar_{t-1}, with alpha-bar_0 = 1
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor  # (T,) beta-tilde_t (Eq. 7); entry 0 is 0
    posterior_log_variance_clipped: torch.Tensor  # log beta-tilde_t, entry 0 replaced by entry 1
    posterior_mean_coef1: torch.Tensor  # coefficient of x_0 in mu-tilde_t (Eq. 7)
    posterior_mean_coef2: torch.Tensor  # coefficient of x_t in mu-tilde_t (Eq. 7)

    @property
    def T(self) -> int:
        return int(self.betas.shape[0])

    def to(self, device: torch.device | str) -> Schedule:
        return Schedule(**{k: v.to(device) for k, v in self.__dict__.items()})


def schedule_from_betas(betas: np.ndarray) -> Schedule:
    """All coefficients from betas, in float64 (log space for alpha-bar)."""
    betas = np.asarray(betas, dtype=np.float64)
    log_alphas_cumprod = np.cumsum(np.log1p(-betas))
    alphas_cumprod = np.exp(log_alphas_cumprod)
    one_minus_alphas_cumprod = -np.expm1(log_alphas_cumprod)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    one_minus_prev = np.append(0.0, one_minus_alphas_cumprod[:-1])
    posterior_variance = betas * one_minus_prev / one_minus_alphas_cumprod
    clipped = posterior_variance.copy()
    if len(betas) > 1:
        clipped[0] = posterior_variance[1]
    else:  # T = 1: there is no posterior step; keep log finite
        clipped[0] = betas[0]
    coef1 = betas * np.sqrt(alphas_cumprod_prev) / one_minus_alphas_cumprod
    coef2 = one_minus_prev * np.sqrt(1.0 - betas) / one_minus_alphas_cumprod

    def t64(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))

    return Schedule(
        betas=t64(betas),
        alphas_cumprod=t64(alphas_cumprod),
        alphas_cumprod_prev=t64(alphas_cumprod_prev),
        sqrt_alphas_cumprod=t64(np.sqrt(alphas_cumprod)),
        sqrt_one_minus_alphas_cumprod=t64(np.sqrt(one_minus_alphas_cumprod)),
        log_one_minus_alphas_cumprod=t64(np.log(one_minus_alphas_cumprod)),
        posterior_variance=t64(posterior_variance),
        posterior_log_variance_clipped=t64(np.log(clipped)),
        posterior_mean_coef1=t64(coef1),
        posterior_mean_coef2=t64(coef2),
    )


def make_schedule(name: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    return schedule_from_betas(make_betas(name, T, beta_start, beta_end))


def space_timesteps(T: int, steps: int) -> list[int]:
    """Evenly strided subset of `steps` network indices out of 0..T-1 (improved DDPM's `space_timesteps`
    with one section), always keeping 0 and the spacing as even as integer steps allow."""
    if not 1 <= steps <= T:
        raise ValueError(f"must be between 1 and T={T}")
    if steps == T:
        return list(range(T))
    if steps == 1:
        return [0]
    # the position is accumulated in floating point and rounded (half to even), as improved DDPM's code does:
    # round(i * stride) differs from it for 278 of the 1000 values of `steps` at T = 1000 (K = 21: 500 vs 499)
    frac_stride = (T - 1) / (steps - 1)
    kept, position = [], 0.0
    for _ in range(steps):
        kept.append(round(position))
        position += frac_stride
    return sorted(set(kept))


def respace_betas(alphas_cumprod: np.ndarray, use_timesteps: list[int]) -> np.ndarray:
    """Betas of the shorter process that keeps alpha-bar at `use_timesteps` (improved DDPM, section 4):
    beta_i = 1 - alpha-bar_{t_i} / alpha-bar_{t_{i-1}}."""
    kept = np.asarray(alphas_cumprod, dtype=np.float64)[sorted(use_timesteps)]
    prev = np.append(1.0, kept[:-1])
    return 1.0 - kept / prev


# A schedule whose x_T still holds much of x_0 makes samples start from noise the model never saw at
# t = T, and makes L_T a large part of the bound (T = 50 with the default linear betas: alpha-bar_T = 0.60)
PRIOR_WARN_BPD = 1e-3


def prior_warning(s: Schedule) -> str | None:
    """A warning when q(x_T | x_0) is far from N(0, I), with alpha-bar_T and L_T (bits/dim) of images spread
    evenly over [-1, 1] (E x_0^2 = 1/3); None for a schedule that reaches noise (the paper's: L_T ~ 1e-5)."""
    abar = float(s.alphas_cumprod[-1])
    prior_bpd = 0.5 * (abar / 3.0 - math.log1p(-abar) - abar) / math.log(2.0)
    if prior_bpd <= PRIOR_WARN_BPD:
        return None
    return (f"the schedule does not reach noise: alpha-bar_T = {abar:.3g}, so x_T keeps {math.sqrt(abar):.0%} of "
            f"x_0's scale and L_T is about {prior_bpd:.3g} bits/dim; samples start from N(0, I), which the model "
            "never saw at t = T (a larger T or beta_end fixes it)")
