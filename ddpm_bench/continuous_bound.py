"""The continuous-time variational bound (VDM, Kingma et al. 2021, Eq. 11-17), in gamma = -log SNR, float64.

For data x (the model scale x = v / 127.5 - 1 of uint8 values v) and a model's range [gamma_min, gamma_max]
(ddpm_bench.noise_level), -log p(v) <= prior + reconstruction + diffusion, each in nats per image:

    prior          = KL(q(z_1 | x) || N(0, I)),  z_1 at gamma_max                              (closed form)
    reconstruction = E_{z_0 ~ q(z_0 | x)} -log p(v | z_0),  z_0 at gamma_min, VDM's decoder: per dimension
                     a categorical over v' = 0..255, p(v' | z_0) proportional to N(z_0; alpha_0 x(v'), sigma_0^2)
    diffusion      = (1/2) integral_{gamma_min}^{gamma_max} E_eps ||eps - eps_hat(z_gamma, gamma)||^2 dgamma

with z_gamma = alpha x + sigma eps, alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma). The diffusion part
is estimated without bias: gamma is drawn per (image, draw) from a proposal q fixed before the run (uniform
in gamma, or piecewise constant over `BINS` equal bins of the range mixed with a uniform share), by its
inverse CDF at the stratified points u_k = (k + r_k) / K of the image's K draws (stratified sampling: every
stratum of [0, 1) once), and weighted by 1 / q(gamma). All noise is a pure function of (seed, image index,
draw) (ddpm_bench.noise): an image's numbers do not depend on its batch, shard or process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddpm_bench.noise import counter_normal
from ddpm_bench.noise_level import alpha_squared, sigma_squared

LN2 = math.log(2.0)
BINS = 64  # bins of a non-uniform proposal over [gamma_min, gamma_max]
LEVELS = 256  # values of a uint8 dimension: the decoder's categories
# the middle column of the counter-noise key (image j, purpose, draw d): the bound uses terms k >= -1, the
# sampler steps >= 0, the ODE -2 and -3, the resume fingerprint -7: these never meet theirs
PURPOSE_DIFFUSION_NOISE = -4
PURPOSE_GAMMA = -5
PURPOSE_RECONSTRUCTION_NOISE = -6
# a pilot's draws (`--pilot`): noise of their own, so that the proposal does not depend on the draws it weights
PURPOSE_PILOT_DIFFUSION_NOISE = -8
PURPOSE_PILOT_GAMMA = -9


def keys(index: torch.Tensor, purpose: int, draws: int) -> torch.Tensor:
    """(n * draws, 3) counter-noise keys (j, purpose, d), image-major: row j * draws + d."""
    index = index.to(torch.int64).reshape(-1)
    j = index.repeat_interleave(draws)
    d = torch.arange(draws, dtype=torch.int64, device=index.device).repeat(index.numel())
    return torch.stack([j, torch.full_like(j, purpose), d], dim=1)


def uniforms(seed: int, index: torch.Tensor, purpose: int, draws: int) -> torch.Tensor:
    """(n, draws) float64 in [0, 1), a pure function of (seed, j, purpose, d) (the counter normal through
    the normal CDF)."""
    z = counter_normal(seed, keys(index, purpose, draws), (1,)).reshape(index.numel(), draws)
    return torch.special.ndtr(z).clamp_(max=1.0 - 2.0**-53)


# ---------------------------------------------------------------------------------------------- the proposal

def stratified(seed: int, index: torch.Tensor, draws: int, purpose: int = PURPOSE_GAMMA) -> torch.Tensor:
    """(n, draws) points u_d = (d + r_d) / draws in [0, 1): one in each stratum, r from (seed, j, purpose, d)."""
    r = uniforms(seed, index, purpose, draws)
    return (torch.arange(draws, dtype=torch.float64, device=r.device) + r) / draws


@dataclass(frozen=True)
class GammaProposal:
    """A density over [gamma_min, gamma_max]: piecewise constant over len(weights) equal bins (`weights`
    sum to 1; a uniform proposal has equal ones)."""

    gamma_min: float
    gamma_max: float
    weights: torch.Tensor  # (B,) float64, positive, summing to 1

    @classmethod
    def uniform(cls, gamma_min: float, gamma_max: float) -> GammaProposal:
        return cls(gamma_min, gamma_max, torch.ones(1, dtype=torch.float64))

    @classmethod
    def from_draws(cls, gamma_min: float, gamma_max: float, gamma: torch.Tensor, values: torch.Tensor,
                   uniform_share: float, bins: int = BINS) -> GammaProposal:
        """The proposal that follows |f|, f the diffusion integrand sampled at `gamma` (any shape, with
        `values` of the same shape): per bin the root mean square of the values that fell in it (bins
        without a draw get the overall one), normalised, mixed with `uniform_share` of the uniform."""
        g, f = gamma.reshape(-1).to(torch.float64), values.reshape(-1).to(torch.float64)
        width = (gamma_max - gamma_min) / bins
        b = ((g - gamma_min) / width).floor().clamp(0, bins - 1).long()
        sums = torch.zeros(bins, dtype=torch.float64).index_add_(0, b.cpu(), f.square().cpu())
        counts = torch.zeros(bins, dtype=torch.float64).index_add_(0, b.cpu(), torch.ones_like(f).cpu())
        overall = f.square().mean().sqrt().cpu()
        rms = torch.where(counts > 0, (sums / counts.clamp(min=1)).sqrt(), overall)
        if not bool(rms.sum() > 0):  # nothing to follow: uniform
            return cls.uniform(gamma_min, gamma_max)
        w = (1.0 - uniform_share) * rms / rms.sum() + uniform_share / bins
        return cls(gamma_min, gamma_max, w / w.sum())

    def density(self, gamma: torch.Tensor) -> torch.Tensor:
        """q(gamma), float64."""
        B = self.weights.numel()
        width = (self.gamma_max - self.gamma_min) / B
        b = ((gamma.to(torch.float64) - self.gamma_min) / width).floor().clamp(0, B - 1).long()
        return self.weights.to(gamma.device)[b] / width

    def inverse_cdf(self, u: torch.Tensor) -> torch.Tensor:
        """gamma at the quantiles u in [0, 1) (piecewise linear: the CDF of a piecewise-constant density)."""
        w = self.weights.to(u.device)
        B = w.numel()
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64, device=u.device), torch.cumsum(w, 0)])
        cdf[-1] = 1.0
        b = (torch.searchsorted(cdf, u.to(torch.float64), right=True) - 1).clamp(0, B - 1)
        frac = ((u - cdf[b]) / w[b]).clamp(0.0, 1.0)
        width = (self.gamma_max - self.gamma_min) / B
        return self.gamma_min + (b.to(torch.float64) + frac) * width

    def draw(self, seed: int, index: torch.Tensor, draws: int, purpose: int = PURPOSE_GAMMA) -> torch.Tensor:
        """(n, draws) gamma of image index[n], draw d: stratified, u_d = (d + r_d) / draws."""
        return self.inverse_cdf(stratified(seed, index, draws, purpose))

    def sample(self, seed: int, index: torch.Tensor, draws: int,
               purpose: int = PURPOSE_GAMMA) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma, weight) (n, draws): the draws and 1 / q(gamma), the weight of the integrand."""
        gamma = self.draw(seed, index, draws, purpose)
        return gamma, 1.0 / self.density(gamma)

    def to_dict(self) -> dict:
        return {"gamma_min": self.gamma_min, "gamma_max": self.gamma_max, "bins": int(self.weights.numel()),
                "weights": [float(v) for v in self.weights]}


@dataclass(frozen=True)
class DiscreteSteps:
    """VDM's discrete-time bound with T steps over the range (Kingma et al. 2021, Eq. 13 in gamma): its
    diffusion part is sum_{i=1..T} (1/2) expm1(g_i - g_{i-1}) E||eps - eps_hat(z_{g_i}, g_i)||^2 on the grid
    g_0 = gamma_min < ... < g_T = gamma_max; step i is drawn stratified (uniform over the T steps) and
    weighted T expm1(g_i - g_{i-1}). As T grows it approaches the continuous-time bound from above."""

    grid: torch.Tensor  # (T + 1,) float64, increasing

    @property
    def T(self) -> int:
        return int(self.grid.numel()) - 1

    def sample(self, seed: int, index: torch.Tensor, draws: int,
               purpose: int = PURPOSE_GAMMA) -> tuple[torch.Tensor, torch.Tensor]:
        u = stratified(seed, index, draws, purpose)
        grid = self.grid.to(u.device)
        i = (u * self.T).floor().long().clamp(0, self.T - 1) + 1  # 1..T
        return grid[i], self.T * torch.expm1(grid[i] - grid[i - 1])

    def to_dict(self) -> dict:
        return {"steps": self.T, "gamma_min": float(self.grid[0]), "gamma_max": float(self.grid[-1])}


# ---------------------------------------------------------------------------------------------- the parts

def prior_nats(x: torch.Tensor, gamma_max: float) -> torch.Tensor:
    """(N,) KL(q(z_1 | x) || N(0, I)) at gamma_max: per dimension (alpha^2 x^2 + sigma^2 - 1 - log sigma^2) / 2."""
    g = torch.tensor(gamma_max, dtype=torch.float64)
    a2, s2 = alpha_squared(g), sigma_squared(g)
    x = x.to(torch.float64)
    kl = 0.5 * (a2 * x.square() + s2 - 1.0 - torch.log(s2))
    return kl.flatten(1).sum(1)


def reconstruction_nats(v: torch.Tensor, eps0: torch.Tensor, gamma_min: float) -> torch.Tensor:
    """(N,) -log p(v | z_0) for z_0 = alpha_0 x(v) + sigma_0 eps0 at gamma_min: VDM's decoder, per dimension
    the log-softmax over v' = 0..255 of -(z_0 - alpha_0 x(v'))^2 / (2 sigma_0^2), summed over dimensions
    (float64, one image at a time: (D, 256) values)."""
    g = torch.tensor(gamma_min, dtype=torch.float64)
    alpha, sigma = alpha_squared(g).sqrt(), sigma_squared(g).sqrt()
    levels = torch.arange(LEVELS, dtype=torch.float64, device=v.device) / 127.5 - 1.0  # x(v')
    out = torch.empty(v.shape[0], dtype=torch.float64, device=v.device)
    for n in range(v.shape[0]):
        vn = v[n].reshape(-1).long()
        z0 = alpha * (vn.to(torch.float64) / 127.5 - 1.0) + sigma * eps0[n].reshape(-1).to(torch.float64)
        logits = -(z0[:, None] - alpha * levels[None, :]).square() / (2.0 * sigma.square())
        logp = logits.gather(1, vn[:, None]).squeeze(1) - torch.logsumexp(logits, dim=1)
        out[n] = -logp.sum()
    return out


def diffusion_integrand(eps: torch.Tensor, eps_hat: torch.Tensor) -> torch.Tensor:
    """(P,) (1/2) ||eps - eps_hat||^2 per pair: the diffusion part's integrand at its gamma (nats)."""
    return 0.5 * (eps.to(torch.float64) - eps_hat.to(torch.float64)).flatten(1).square().sum(1)


def to_bits_per_dim(nats: torch.Tensor, dims: int) -> torch.Tensor:
    return nats / (dims * LN2)
