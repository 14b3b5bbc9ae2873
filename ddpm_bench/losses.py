"""Training objectives of DDPM (Ho et al. 2020, Table 2), per image, in float64.

- `L_simple` / `mse`: the unweighted squared error of the network's own target (Eq. 14 for `eps`:
  || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2; x_0 for `x0`; mu-tilde_t(x_t, x_0)
  for `mu`, Table 2's "||mu-tilde - mu-tilde_theta||^2"), averaged over dimensions.
- `L`: one uniformly drawn term of the variational bound (Eq. 5): L_{t-1} = KL(q(x_{t-1}|x_t,x_0) ||
  p_theta(x_{t-1}|x_t)) for t > 1 and the decoder L_0 = -log p_theta(x_0|x_1) (Eq. 13) for t = 1, in bits/dim,
  with the fixed isotropic or the learned diagonal variance of the diffusion config (gradients reach both
  the mean and a learned variance). L_T has no parameters and is left out, as in the official code.
  The term is `bound.term_values`, the bound engine's own, with the x_0 prediction not clipped (as in the
  official training loss).
- `L_vlb` (improved DDPM, section 3.3): the terms of `L`, with t drawn by importance sampling
  (resampler.py); the trainer weights each term by 1 / (T p_t), so the expectation is that of `L`.
- `L_hybrid` (improved DDPM, Nichol and Dhariwal 2021, section 3.1): L_simple + lambda L_vlb with
  lambda = 0.001 and L_vlb = T times one uniformly drawn term (so lambda T L_t, improved-diffusion's
  `vb * num_timesteps / 1000`), the mean's gradient stopped inside L_vlb: it trains only the learned variance.
- `vdm` (continuous time, Kingma et al. 2021, "VDM"): the diffusion loss of a continuous-time model,
  `vdm_diffusion_loss`, at z_t = alpha x + sigma eps (`diffuse`), in bits/dim.
"""

from __future__ import annotations

import math

import torch

from ddpm_bench.diffusion import DiffusionConfig, q_posterior_mean, v_target
from ddpm_bench.noise_level import alpha_squared, sigma_squared
from ddpm_bench.schedule import Schedule
from ddpm_bench.variational_bound import term_values

HYBRID_LAMBDA = 0.001  # improved DDPM's lambda


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N,) mean over all but the first dimension."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def simple_target(cfg: DiffusionConfig, s: Schedule, x0: torch.Tensor, xt: torch.Tensor, i: torch.Tensor,
                  noise: torch.Tensor) -> torch.Tensor:
    """What the network's mean output should be: eps (Eq. 14), x_0, v (Salimans and Ho 2022) or
    mu-tilde_t(x_t, x_0) (Eq. 7)."""
    if cfg.mean_type == "eps":
        return noise
    if cfg.mean_type == "x0":
        return x0
    if cfg.mean_type == "v":
        return v_target(s, x0, i, noise)
    return q_posterior_mean(s, x0, xt, i)


def simple_loss(cfg: DiffusionConfig, s: Schedule, output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor,
                i: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(N,) unweighted mean squared error of the prediction target (Eq. 14 and Table 2), float64."""
    target = simple_target(cfg, s, x0, xt, i, noise)
    return mean_flat((output.to(torch.float64) - target) ** 2)


def training_loss(objective: str, cfg: DiffusionConfig, s: Schedule, output: torch.Tensor, x0: torch.Tensor,
                  xt: torch.Tensor, i: torch.Tensor, noise: torch.Tensor, decoder_cdf: str = "exact") -> torch.Tensor:
    """(N,) per-image loss of `objective` ("L_simple", "mse", "L", "L_vlb" (unweighted) or "L_hybrid");
    `decoder_cdf` is L_0's normal CDF."""
    if objective in ("L_simple", "mse"):
        return simple_loss(cfg, s, output[:, : x0.shape[1]], x0, xt, i, noise)
    if objective in ("L", "L_vlb"):
        return term_values(cfg, s, output, x0, xt, i, clip=False, decoder_cdf=decoder_cdf).bpd
    if objective == "L_hybrid":
        C = x0.shape[1]
        variance_only = torch.cat([output[:, :C].detach(), output[:, C:]], dim=1)  # the mean's gradient stopped
        vlb = term_values(cfg, s, variance_only, x0, xt, i, clip=False, decoder_cdf=decoder_cdf).bpd
        return simple_loss(cfg, s, output[:, :C], x0, xt, i, noise) + HYBRID_LAMBDA * cfg.T * vlb
    raise ValueError(f"unknown objective {objective!r}")


def diffuse(x0: torch.Tensor, gamma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """z_gamma = alpha x_0 + sigma eps (VDM Eq. 1-3), alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma);
    x_0, eps (N, C, H, W), gamma (N,); float64."""
    shape = (-1, *([1] * (x0.ndim - 1)))
    alpha = alpha_squared(gamma).sqrt().reshape(shape)
    sigma = sigma_squared(gamma).sqrt().reshape(shape)
    return alpha * x0.to(torch.float64) + sigma * noise.to(torch.float64)


def vdm_diffusion_loss(noise: torch.Tensor, eps_hat: torch.Tensor, dgamma_dt: torch.Tensor,
                       t_span: float = 1.0) -> torch.Tensor:
    """(N,) float64 bits/dim: VDM's continuous-time diffusion loss (Kingma et al. 2021, Eq. 17 as T -> infinity),
    the one-sample estimate of

        L_inf(x) = (1/2) integral_{t_min}^{t_max} gamma'(t) E_eps || eps - eps_hat(z_t, gamma(t)) ||^2 dt
                 = (1/2) integral_{gamma_min}^{gamma_max} E_eps || eps - eps_hat(z_gamma, gamma) ||^2 dgamma

    for t ~ U[t_min, t_max]: t_span (t_max - t_min) * (1/2) gamma'(t) ||eps - eps_hat||^2, divided by D ln 2.
    `noise` eps and `eps_hat` (N, C, H, W) (the network's output, any float type), `dgamma_dt` gamma'(t) (N,).
    Its expectation over t and eps is the diffusion term of the continuous-time bound (SPEC section 8)."""
    err = (eps_hat.to(torch.float64) - noise.to(torch.float64)).reshape(noise.shape[0], -1)
    D = err.shape[1]
    return 0.5 * t_span * dgamma_dt.to(torch.float64) * err.square().sum(dim=1) / (D * math.log(2.0))
