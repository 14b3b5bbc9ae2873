"""Gaussian helpers of the bound: KL divergence and the discretised decoder likelihood (float64).

DDPM (Ho et al. 2020) Eq. 5 (KL between Gaussians) and Eq. 13 (the discretised decoder).
"""

from __future__ import annotations

import math

import torch

DECODER_CDF_MODES = ("exact", "tanh")
BIN_HALF_WIDTH = 1.0 / 255.0  # data in [-1, 1] on 256 levels: bin edges x +- 1/255
EDGE = 0.999  # |x| above this is the first or last bin, open to -inf or +inf (official code)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats.

    Written as 0.5 * (expm1(d) - d + (mean1 - mean2)^2 / var2) with d = logvar1 - logvar2, which is
    exactly zero for equal distributions and free of the cancellation in -1 + exp(d) - d.
    """
    return normal_kl_of_gap((mean1 - mean2) ** 2, logvar1, logvar2)


def normal_kl_of_gap(sq_gap: torch.Tensor, logvar1: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """`normal_kl` given the squared gap of the means, (mean1 - mean2)^2. It is linear in `sq_gap`, so
    with per-row variances the mean over dims of the KL is this of the mean squared gap."""
    d = logvar1 - logvar2
    return 0.5 * (torch.expm1(d) - d + sq_gap * torch.exp(-logvar2))


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate for x near 0 and for x very negative (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_normal_cdf_diff(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi, exact in both tails.

    Uses the symmetry Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi) to work in the lower tail, where
    log_ndtr is exact, then log(Phi(b) - Phi(a)) = log Phi(b) + log1mexp(log Phi(a) - log Phi(b)).
    """
    flip = (lo + hi) > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b = torch.special.log_ndtr(b)
    log_a = torch.special.log_ndtr(a)
    return log_b + _log1mexp(log_a - log_b)


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The official code's tanh approximation of the standard normal CDF."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, cdf: str = "exact"
) -> torch.Tensor:
    """Elementwise log p(x | means, exp(log_scales)) of the decoder of DDPM Eq. 13, in nats.

    `x` holds data values on the 256-level grid in [-1, 1]; each value owns the bin x +- 1/255, and the
    first and last bins extend to -inf and +inf. `cdf="exact"` evaluates the normal CDF in log space
    (no floor); `cdf="tanh"` reproduces the official code (tanh approximation, probabilities floored at
    1e-12) for comparison with numbers computed by it.
    """
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    plus_in = inv_stdv * (centered + BIN_HALF_WIDTH)
    min_in = inv_stdv * (centered - BIN_HALF_WIDTH)
    if cdf == "exact":
        log_cdf_plus = torch.special.log_ndtr(plus_in)
        log_one_minus_cdf_min = torch.special.log_ndtr(-min_in)
        log_cdf_delta = log_normal_cdf_diff(min_in, plus_in)
    elif cdf == "tanh":
        cdf_plus = approx_standard_normal_cdf(plus_in)
        cdf_min = approx_standard_normal_cdf(min_in)
        log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
        log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
        log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    else:
        raise ValueError(f"unknown decoder CDF mode {cdf!r}; choose one of {', '.join(DECODER_CDF_MODES)}")
    return torch.where(x < -EDGE, log_cdf_plus, torch.where(x > EDGE, log_one_minus_cdf_min, log_cdf_delta))
