"""One noise level for every diffusion model: gamma = -log SNR (VDM, Kingma et al. 2021, Eq. 3-5).

Every model here is one variance-preserving process, written in one variable that increases with noise:

    z = alpha x + sigma eps,   alpha^2 = sigmoid(-gamma),   sigma^2 = sigmoid(gamma),   gamma = log(sigma^2 / alpha^2)

Each convention maps its own variable to gamma and back:
- a discrete DDPM (Ho et al. 2020): network index i = t - 1 has gamma_i = log((1 - abar_i) / abar_i)
  (`DiscreteLevels`; between the indices, k-diffusion's convention for discrete models: log sigma, i.e.
  gamma / 2, interpolated linearly in the fractional index);
- continuous time t of a named schedule (`SCHEDULES`): `vdm-linear` (gamma linear in t, VDM), `vp-linear`
  (score SDE's VP SDE: log abar(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2), `cosine` (improved
  DDPM's, continuous), each with gamma(t), its derivative and its inverse;
- the variance-exploding scale of EDM and k-diffusion: y = z / alpha = x + sigma_ve eps with
  sigma_ve = exp(gamma / 2).

A model declares how it takes its noise level and what it predicts (`NoiseConvention`, read from the
attributes `noise_input`, `prediction`, `schedule`, `time_scale`, `gamma_min`, `gamma_max` of a plug-in or a
module in memory); `eps_from_prediction` turns an x0 or v prediction into the eps every estimator uses.
Pure functions on float64 tensors: no I/O, no globals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NOISE_INPUTS = ("index", "gamma", "t", "sigma")  # what a network is called with besides its input
PREDICTIONS = ("eps", "x0", "v")  # what it predicts (a discrete model: its DiffusionConfig.mean_type)


# ---------------------------------------------------------------------------------------------- gamma

def alpha_squared(gamma: torch.Tensor) -> torch.Tensor:
    """alpha^2 = sigmoid(-gamma), float64."""
    return torch.sigmoid(-gamma.to(torch.float64))


def sigma_squared(gamma: torch.Tensor) -> torch.Tensor:
    """sigma^2 = sigmoid(gamma), float64."""
    return torch.sigmoid(gamma.to(torch.float64))


def gamma_of_alpha_bar(abar: torch.Tensor) -> torch.Tensor:
    """gamma = log((1 - abar) / abar) of a DDPM alpha-bar, float64."""
    abar = abar.to(torch.float64)
    return torch.log1p(-abar) - torch.log(abar)


def ve_sigma(gamma: torch.Tensor) -> torch.Tensor:
    """sigma_ve = sqrt(sigma^2 / alpha^2) = exp(gamma / 2), the noise level of EDM and k-diffusion."""
    return torch.exp(0.5 * gamma.to(torch.float64))


def eps_from_prediction(mean_type: str, output: torch.Tensor, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The eps prediction implied by a network output at z = x with alpha^2 = abar (float64; abar (N,) or
    broadcastable).

    `eps`: the output; `x0` (DDPM Eq. 15 solved for eps): eps = (x - sqrt(abar) x0_hat) / sqrt(1 - abar);
    `v` (Salimans & Ho 2022): eps = sqrt(abar) v + sqrt(1 - abar) x. `mu` is refused: a mu model predicts
    the mean of one discrete reverse step t -> t-1, whose coefficients (beta_t, Eq. 7) have no value at a
    fractional step, so it defines no eps between its integer steps.
    """
    output, x = output.to(torch.float64), x.to(torch.float64)
    abar = abar.to(torch.float64)
    if abar.ndim == 1:
        abar = abar.reshape(-1, *([1] * (x.ndim - 1)))
    if mean_type == "eps":
        return output
    if mean_type == "x0":
        return (x - abar.sqrt() * output) / (1.0 - abar).sqrt()
    if mean_type == "v":
        return abar.sqrt() * output + (1.0 - abar).sqrt() * x
    if mean_type == "mu":
        raise ValueError("mean type 'mu' has no probability-flow ODE: it predicts the mean of one discrete step "
                         "t -> t-1, which defines no eps at the fractional steps the ODE solver visits")
    raise ValueError(f"unknown mean type {mean_type!r}; choose one of eps, x0, v")


# ---------------------------------------------------------------------------------------------- discrete steps

def noise_levels(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """(T,) float64 sigma_i = sqrt((1 - abar_i) / abar_i) = exp(gamma_i / 2) of network index i.

    Raises ValueError unless they are finite, positive and strictly increasing (a schedule whose last
    alpha-bar is 0, such as `jsd`, has sigma_max = inf and no continuous-time likelihood).
    """
    abar = alphas_cumprod.to(torch.float64)
    sigmas = torch.sqrt((1.0 - abar) / abar)
    check_noise_levels(sigmas)
    return sigmas


def check_noise_levels(sigmas: torch.Tensor) -> None:
    if sigmas.ndim != 1 or sigmas.numel() < 1:
        raise ValueError(f"noise levels must be a non-empty (T,) tensor, got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()) or not bool((sigmas > 0).all()):
        raise ValueError("noise levels sigma_i = sqrt((1 - abar_i) / abar_i) must be finite and positive: "
                         "every alpha-bar must lie in (0, 1)")
    if not bool((sigmas[1:] > sigmas[:-1]).all()):
        raise ValueError("noise levels sigma_i must increase strictly with the network index")


def fractional_index(sigma: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """(N,) float64 fractional network index s(sigma): log sigma interpolated linearly between the two
    neighbouring log sigma_i (k-diffusion's `sigma_to_t`); clamped to [0, T-1] outside [sigma_min, sigma_max]."""
    T = sigmas.shape[0]
    sigma = sigma.to(torch.float64)
    if T == 1:
        return torch.zeros_like(sigma)
    log_sigmas = sigmas.to(torch.float64).log()
    log_sigma = sigma.log()
    low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, T - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = ((log_sigma - lo) / (hi - lo)).clamp(0.0, 1.0)
    return low.to(torch.float64) + w


def noise_level_at(s: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """(N,) float64 sigma at fractional network index s: the inverse of `fractional_index` on [0, T-1]."""
    T = sigmas.shape[0]
    s = s.to(torch.float64)
    if T == 1:
        return sigmas.to(torch.float64)[0].expand(s.shape).clone()
    log_sigmas = sigmas.to(torch.float64).log()
    low = s.floor().clamp(0, T - 2).long()
    w = s - low.to(torch.float64)
    return torch.exp((1.0 - w) * log_sigmas[low] + w * log_sigmas[low + 1])


@dataclass(frozen=True)
class DiscreteLevels:
    """The noise levels of a discrete DDPM's T steps: gamma_i = 2 log sigma_i for network index i, and the
    fractional index between them (`fractional_index`)."""

    sigmas: torch.Tensor  # (T,) float64, increasing

    @classmethod
    def of(cls, alphas_cumprod: torch.Tensor) -> DiscreteLevels:
        return cls(noise_levels(alphas_cumprod))

    @property
    def gamma_min(self) -> float:
        return 2.0 * math.log(float(self.sigmas[0]))

    @property
    def gamma_max(self) -> float:
        return 2.0 * math.log(float(self.sigmas[-1]))

    def index_of_gamma(self, gamma: torch.Tensor) -> torch.Tensor:
        """(N,) float64 fractional network index at gamma (clamped to [0, T-1])."""
        return fractional_index(ve_sigma(gamma), self.sigmas.to(gamma.device))

    def gamma_of_index(self, s: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.log(noise_level_at(s, self.sigmas.to(s.device)))


# ---------------------------------------------------------------------------------------------- continuous time

@dataclass(frozen=True)
class VdmLinear:
    """VDM's fixed schedule: gamma(t) = gamma_min + (gamma_max - gamma_min) t, t in [0, 1]."""

    NAME = "vdm-linear"
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    t_min: float = 0.0
    t_max: float = 1.0

    def __post_init__(self) -> None:
        if not self.gamma_min < self.gamma_max:
            raise ValueError(f"vdm-linear needs gamma_min < gamma_max, got {self.gamma_min} and {self.gamma_max} "
                             f"(an end left out is VDM's: {VdmLinear.gamma_min} and {VdmLinear.gamma_max})")

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t.to(torch.float64)

    def dgamma_dt(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t.to(torch.float64), self.gamma_max - self.gamma_min)

    def t_of(self, gamma: torch.Tensor) -> torch.Tensor:
        return (gamma.to(torch.float64) - self.gamma_min) / (self.gamma_max - self.gamma_min)


@dataclass(frozen=True)
class VpLinear:
    """Score SDE's VP SDE with linear beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021, Eq. 11):
    -log abar(t) = a(t) = t^2 (beta_max - beta_min) / 4 + t beta_min / 2, gamma(t) = log(expm1(a(t))),
    t in [t_min, 1] (their code's eps = 1e-5 for likelihoods)."""

    NAME = "vp-linear"
    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-5
    t_max: float = 1.0

    def _a(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        return t.square() * (self.beta_max - self.beta_min) / 4.0 + t * self.beta_min / 2.0

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.expm1(self._a(t)))

    def dgamma_dt(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        da = t * (self.beta_max - self.beta_min) / 2.0 + self.beta_min / 2.0
        return da / -torch.expm1(-self._a(t))

    def t_of(self, gamma: torch.Tensor) -> torch.Tensor:
        a = torch.nn.functional.softplus(gamma.to(torch.float64))  # -log abar = log(1 + e^gamma)
        c2, c1 = (self.beta_max - self.beta_min) / 4.0, self.beta_min / 2.0
        return 2.0 * a / (c1 + torch.sqrt(c1 * c1 + 4.0 * c2 * a))  # the positive root, without cancellation


@dataclass(frozen=True)
class Cosine:
    """Improved DDPM's cosine schedule in continuous time (Nichol & Dhariwal 2021, Eq. 17):
    abar(t) = f(t) / f(0), f(t) = cos^2(theta(t)), theta(t) = (t + s) / (1 + s) pi / 2. gamma = -inf at t = 0
    and +inf at t = 1, so its range is [t_min, t_max] inside (0, 1)."""

    NAME = "cosine"
    s: float = 0.008
    t_min: float = 1e-4
    t_max: float = 1.0 - 1e-4

    def _theta(self, t: torch.Tensor) -> torch.Tensor:
        return (t.to(torch.float64) + self.s) / (1.0 + self.s) * (math.pi / 2.0)

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        # (1 - abar) / abar = (cos^2 theta0 - cos^2 theta) / cos^2 theta = sin(theta - theta0) sin(theta + theta0) / cos^2 theta
        theta, theta0 = self._theta(t), self._theta(torch.zeros(()))
        return torch.log(torch.sin(theta - theta0)) + torch.log(torch.sin(theta + theta0)) - 2.0 * torch.log(torch.cos(theta))

    def dgamma_dt(self, t: torch.Tensor) -> torch.Tensor:
        theta, theta0 = self._theta(t), self._theta(torch.zeros(()))
        dtheta = math.pi / (2.0 * (1.0 + self.s))
        return dtheta * (1.0 / torch.tan(theta - theta0) + 1.0 / torch.tan(theta + theta0) + 2.0 * torch.tan(theta))

    def t_of(self, gamma: torch.Tensor) -> torch.Tensor:
        # cos^2 theta = cos^2 theta0 sigmoid(-gamma), sin^2 theta = sin^2 theta0 + cos^2 theta0 sigmoid(gamma)
        theta0 = self._theta(torch.zeros((), dtype=torch.float64))
        c0, s0 = torch.cos(theta0), torch.sin(theta0)
        gamma = gamma.to(torch.float64)
        theta = torch.atan2(torch.sqrt(s0 * s0 + c0 * c0 * torch.sigmoid(gamma)), c0 * torch.sqrt(torch.sigmoid(-gamma)))
        return theta / (math.pi / 2.0) * (1.0 + self.s) - self.s


SCHEDULES = {cls.NAME: cls for cls in (VdmLinear, VpLinear, Cosine)}


def continuous_schedule(name: str, gamma_min: float | None = None, gamma_max: float | None = None):
    """The named continuous schedule; vdm-linear takes its gamma range (VDM's -13.3 and 5.0 by default)."""
    if name not in SCHEDULES:
        raise ValueError(f"schedule {name!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    if name == VdmLinear.NAME:
        return VdmLinear(gamma_min=VdmLinear.gamma_min if gamma_min is None else gamma_min,
                         gamma_max=VdmLinear.gamma_max if gamma_max is None else gamma_max)
    return SCHEDULES[name]()


# ---------------------------------------------------------------------------------------------- conventions

@dataclass(frozen=True)
class NoiseConvention:
    """How a network takes its noise level and what it predicts (SPEC section 8's attributes):

    - `noise_input`: "index" (a discrete DDPM's network index, fractional between steps), "gamma" (called
      with gamma, float (N,)), "t" (continuous time of `schedule`, times `time_scale`), "sigma" (called as
      f(y, sigma_ve) with y = z / alpha, EDM's and k-diffusion's convention);
    - `prediction`: "eps", "x0" or "v" (a "sigma" model's "x0" is EDM's denoised D(y, sigma)); an "index"
      model predicts what its DiffusionConfig's mean type says;
    - `gamma_min`, `gamma_max`: the range the model was trained on ("gamma" and "sigma" models; a "t" model
      of `vdm-linear` its schedule's; other "t" models their schedule's [t_min, t_max]).
    """

    noise_input: str = "index"
    prediction: str = "eps"
    schedule: str | None = None
    time_scale: float = 1.0
    gamma_min: float | None = None
    gamma_max: float | None = None

    def __post_init__(self) -> None:
        if self.noise_input not in NOISE_INPUTS:
            raise ValueError(f"noise_input {self.noise_input!r}: choose one of {', '.join(NOISE_INPUTS)}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction {self.prediction!r}: choose one of {', '.join(PREDICTIONS)}")
        if self.noise_input == "t" and self.schedule not in SCHEDULES:
            raise ValueError(f"noise_input 't' needs schedule = one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.noise_input in ("gamma", "sigma") and (self.gamma_min is None or self.gamma_max is None):
            raise ValueError(f"noise_input {self.noise_input!r} needs the range the model was trained on: "
                             "gamma_min and gamma_max (EDM's sigma from 0.002 to 80: gamma = 2 log sigma)")
        for name in ("time_scale", "gamma_min", "gamma_max"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {self.time_scale!r}")
        if self.gamma_min is not None and self.gamma_max is not None and not self.gamma_min < self.gamma_max:
            raise ValueError(f"gamma_min {self.gamma_min} must be below gamma_max {self.gamma_max}")
        if self.noise_input == "t" and self.schedule != VdmLinear.NAME and \
                (self.gamma_min is not None or self.gamma_max is not None):
            lo, hi = self.gamma_range()
            raise ValueError(f"schedule {self.schedule!r} fixes its own range (gamma from {lo:.4g} to {hi:.4g} over "
                             "its t_min..t_max): leave out gamma_min and gamma_max (they set vdm-linear's range, "
                             "and a 'gamma' or 'sigma' model's)")
        if self.noise_input == "t":
            self.time_schedule()  # vdm-linear: its range with VDM's end for one left out, checked

    @property
    def continuous(self) -> bool:
        """A model of continuous noise levels (no discrete steps of its own)."""
        return self.noise_input != "index"

    def time_schedule(self):
        """The continuous schedule of a "t" model."""
        return continuous_schedule(self.schedule, self.gamma_min, self.gamma_max)

    def gamma_range(self) -> tuple[float, float] | None:
        """[gamma_min, gamma_max] the model covers (None for an "index" model: its discrete levels say)."""
        if self.noise_input == "index":
            return None
        if self.noise_input == "t":
            sched = self.time_schedule()
            lo = sched.gamma(torch.tensor(sched.t_min, dtype=torch.float64))
            hi = sched.gamma(torch.tensor(sched.t_max, dtype=torch.float64))
            return float(lo), float(hi)
        return float(self.gamma_min), float(self.gamma_max)

    def network_input(self, gamma: torch.Tensor) -> torch.Tensor:
        """What a continuous model is called with at gamma (N,): gamma itself, t * time_scale, or sigma_ve."""
        if self.noise_input == "gamma":
            return gamma.to(torch.float64)
        if self.noise_input == "t":
            return self.time_schedule().t_of(gamma) * self.time_scale
        if self.noise_input == "sigma":
            return ve_sigma(gamma)
        raise ValueError("an 'index' model is called with its network index (DiscreteLevels.index_of_gamma)")

    def to_dict(self) -> dict:
        """The convention as a model's identity records it (absent for the default: today's models)."""
        return {"noise_input": self.noise_input, "prediction": self.prediction, "schedule": self.schedule,
                "time_scale": self.time_scale, "gamma_min": self.gamma_min, "gamma_max": self.gamma_max}


ATTRIBUTES = ("noise_input", "prediction", "schedule", "time_scale", "gamma_min", "gamma_max")


def convention_of(obj: object) -> NoiseConvention:
    """The convention an object (a plug-in's module or function, a module in memory) declares with the
    attributes of `ATTRIBUTES`; none declared: a discrete DDPM's ("index")."""
    given = {name: getattr(obj, name) for name in ATTRIBUTES if getattr(obj, name, None) is not None}
    return NoiseConvention(**given)
