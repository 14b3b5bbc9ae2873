"""The forward process, its posterior, and the reverse process of each parameterisation (float64).

DDPM (Ho et al. 2020): q(x_t | x_0) Eq. 4, the posterior q(x_{t-1} | x_t, x_0) Eq. 6-7, the reverse
process p(x_{t-1} | x_t) section 3.2 with the mean parameterisations of Table 2 (`eps`, Eq. 11; `mu`,
the direct mu-tilde prediction; `x0`) and the variance choices of section 3.2 / Table 2.
All tensors here are float64; `i` is the 0-based network index (i = t - 1), one entry per row.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from ddpm_bench.schedule import BETA_SCHEDULES, Schedule, make_schedule

MEAN_TYPES = ("eps", "x0", "mu", "v")  # v: Salimans and Ho (2022), v = sqrt(abar) eps - sqrt(1 - abar) x_0
VAR_TYPES = ("fixed-large", "fixed-small", "learned", "learned-range")
# schedules built from beta_start up to beta_end, which therefore need beta_start <= beta_end
RISING_SCHEDULES = ("linear", "quad")
MAX_T = 1_000_000


class DiffusionSettingError(ValueError):
    """An impossible diffusion setting. `template` names the settings as {field} placeholders, so the
    message can name them as stored (`diffusion.T`, the default) or as flags (`--T`): see `render`."""

    def __init__(self, fields: tuple[str, ...], template: str):
        self.fields, self.template = fields, template
        super().__init__(self.render({f: f"diffusion.{f}" for f in fields}))

    def render(self, names: dict[str, str]) -> str:
        return self.template.format(**{f: names.get(f, f"diffusion.{f}") for f in self.fields})


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion settings a model was trained with."""

    T: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    mean_type: str = "eps"
    var_type: str = "fixed-large"

    def __post_init__(self) -> None:
        def bad(fields: tuple[str, ...], template: str, *values) -> DiffusionSettingError:
            shown = [repr(v).replace("{", "{{").replace("}", "}}") for v in values]
            return DiffusionSettingError(fields, template.format(*shown, **{f: f"{{{f}}}" for f in fields}))

        T = self.T
        if isinstance(T, bool) or not isinstance(T, numbers.Integral):
            raise bad(("T",), "{T} must be an integer, got {0}", T)
        if T < 1:
            raise bad(("T",), "{T} must be at least 1, got {0}", T)
        if T > MAX_T:
            raise bad(("T",), "{T} must be at most 1000000, got {0} (more steps cannot be meant: improved DDPM "
                      "uses 4000, and the exact bound costs T network evaluations per image)", T)
        for name in ("beta_start", "beta_end"):
            beta = getattr(self, name)
            if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0.0 < beta < 1.0:
                raise bad((name,), "{" + name + "} must be a number in (0, 1), got {0}", beta)
        if self.beta_schedule not in BETA_SCHEDULES:
            raise bad(("beta_schedule",), "{beta_schedule} {0} is unknown; choose one of "
                      + ", ".join(BETA_SCHEDULES), self.beta_schedule)
        if self.beta_schedule in RISING_SCHEDULES and self.beta_start > self.beta_end:
            raise bad(("beta_start", "beta_end"), "{beta_start} {0} is larger than {beta_end} {1}; the {2} "
                      "schedule rises from beta_start to beta_end", self.beta_start, self.beta_end, self.beta_schedule)
        if self.mean_type not in MEAN_TYPES:
            raise bad(("mean_type",), "{mean_type} {0}: unknown mean type; choose one of "
                      + ", ".join(MEAN_TYPES), self.mean_type)
        if self.var_type not in VAR_TYPES:
            raise bad(("var_type",), "{var_type} {0}: unknown variance type; choose one of "
                      + ", ".join(VAR_TYPES), self.var_type)

    @property
    def learned_variance(self) -> bool:
        return self.var_type in ("learned", "learned-range")

    def schedule(self) -> Schedule:
        return make_schedule(self.beta_schedule, self.T, self.beta_start, self.beta_end)


def extract(coef: torch.Tensor, i: torch.Tensor, ndim: int) -> torch.Tensor:
    """coef[i] shaped (N, 1, ..., 1) to broadcast over an (N, ...) tensor with `ndim` dimensions."""
    return coef[i].reshape(-1, *([1] * (ndim - 1)))


def q_mean_logvar(s: Schedule, x0: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of q(x_t | x_0) (Eq. 4), t = i + 1."""
    return extract(s.sqrt_alphas_cumprod, i, x0.ndim) * x0, extract(s.log_one_minus_alphas_cumprod, i, x0.ndim)


def q_sample(s: Schedule, x0: torch.Tensor, i: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps (Eq. 4)."""
    return extract(s.sqrt_alphas_cumprod, i, x0.ndim) * x0 + extract(s.sqrt_one_minus_alphas_cumprod, i, x0.ndim) * noise


def q_posterior_mean(s: Schedule, x0: torch.Tensor, xt: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """mu-tilde_t(x_t, x_0) of the posterior q(x_{t-1} | x_t, x_0) (Eq. 7)."""
    return extract(s.posterior_mean_coef1, i, xt.ndim) * x0 + extract(s.posterior_mean_coef2, i, xt.ndim) * xt


def q_posterior_logvar(s: Schedule, i: torch.Tensor, ndim: int) -> torch.Tensor:
    """log beta-tilde_t, clipped at i = 0 to the entry of i = 1 (official code)."""
    return extract(s.posterior_log_variance_clipped, i, ndim)


def predict_x0_from_eps(s: Schedule, xt: torch.Tensor, i: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t) (Eq. 15)."""
    return (xt - extract(s.sqrt_one_minus_alphas_cumprod, i, xt.ndim) * eps) / extract(s.sqrt_alphas_cumprod, i, xt.ndim)


def predict_x0_from_mu(s: Schedule, xt: torch.Tensor, i: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Invert Eq. 7 for x_0 given a predicted posterior mean (official `_predict_xstart_from_xprev`)."""
    c1 = extract(s.posterior_mean_coef1, i, xt.ndim)
    c2 = extract(s.posterior_mean_coef2, i, xt.ndim)
    return (mu - c2 * xt) / c1


def fixed_logvar(s: Schedule, var_type: str) -> torch.Tensor:
    """(T,) log sigma_t^2 of a fixed variance type.

    `fixed-large`: beta_t, with the i = 0 entry set to the posterior variance at i = 1 (official code,
    "better decoder log likelihood"); `fixed-small`: the clipped posterior log-variance.
    """
    if var_type == "fixed-large":
        large = s.betas.clone()
        if s.T > 1:
            large[0] = s.posterior_variance[1]
        return torch.log(large)
    if var_type == "fixed-small":
        return s.posterior_log_variance_clipped
    raise ValueError(f"{var_type!r} is not a fixed variance type")


@dataclass(frozen=True)
class ReverseStep:
    """p(x_{t-1} | x_t) for a batch: mean and log-variance, and the x_0 prediction it implies."""

    mean: torch.Tensor  # (N, C, H, W) float64
    logvar: torch.Tensor  # (N, C, H, W) or (N, 1, 1, 1) float64
    x0_hat: torch.Tensor  # (N, C, H, W) float64, clipped when requested


def p_mean_logvar(
    cfg: DiffusionConfig,
    s: Schedule,
    output: torch.Tensor,
    xt: torch.Tensor,
    i: torch.Tensor,
    clip: bool = True,
) -> ReverseStep:
    """Turn a network output into the reverse-process Gaussian (official `p_mean_variance`).

    `output` is (N, C, H, W), or (N, 2C, H, W) for the learned variance types (mean part first); it is
    used in float64. With `clip`, the x_0 prediction is clipped to [-1, 1] before the mean is formed
    from it (`eps`, `x0`); for `mu` the network's mean is used as is and only x0_hat is clipped, as in
    the official code.
    """
    model_out, logvar, x0_hat = p_logvar_x0(cfg, s, output, xt, i, clip)
    mean = model_out if cfg.mean_type == "mu" else q_posterior_mean(s, x0_hat, xt, i)
    return ReverseStep(mean=mean, logvar=logvar, x0_hat=x0_hat)


def p_logvar_x0(cfg: DiffusionConfig, s: Schedule, output: torch.Tensor, xt: torch.Tensor, i: torch.Tensor,
                clip: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`p_mean_logvar` up to the mean: the mean part of the output, the log-variance and x0_hat (float64).
    For `eps` and `x0` the mean is q_posterior_mean(x0_hat, x_t); the bound needs it only at t = 1."""
    output = output.to(torch.float64)
    C = xt.shape[1]
    if cfg.learned_variance:
        model_out, var_out = output[:, :C], output[:, C:]
        if cfg.var_type == "learned":
            logvar = var_out
        else:  # learned-range (improved DDPM Eq. 15, as its released code does it)
            frac = (var_out + 1.0) / 2.0
            max_log = extract(torch.log(s.betas), i, xt.ndim)
            min_log = extract(s.posterior_log_variance_clipped, i, xt.ndim)
            logvar = frac * max_log + (1.0 - frac) * min_log
    else:
        model_out = output
        logvar = extract(fixed_logvar(s, cfg.var_type), i, xt.ndim)

    return model_out, logvar, predict_x0(cfg, s, model_out, xt, i, clip)


def predict_x0(cfg: DiffusionConfig, s: Schedule, model_out: torch.Tensor, xt: torch.Tensor, i: torch.Tensor,
               clip: bool = True) -> torch.Tensor:
    """x0_hat from the mean part of a network output (float64), clipped to [-1, 1] with `clip`."""
    if cfg.mean_type == "mu":
        x0 = predict_x0_from_mu(s, xt, i, model_out)
    elif cfg.mean_type == "v":
        x0 = predict_x0_from_v(s, xt, i, model_out)
    else:
        x0 = model_out if cfg.mean_type == "x0" else predict_x0_from_eps(s, xt, i, model_out)
    return x0.clamp(-1.0, 1.0) if clip else x0


def v_target(s: Schedule, x0: torch.Tensor, i: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """v = sqrt(alpha-bar_t) eps - sqrt(1 - alpha-bar_t) x_0 (Salimans and Ho 2022, Eq. 10 in DDPM's notation)."""
    return extract(s.sqrt_alphas_cumprod, i, x0.ndim) * eps - extract(s.sqrt_one_minus_alphas_cumprod, i, x0.ndim) * x0


def predict_x0_from_v(s: Schedule, xt: torch.Tensor, i: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x_0 = sqrt(alpha-bar_t) x_t - sqrt(1 - alpha-bar_t) v, the inverse of `v_target` given x_t."""
    return extract(s.sqrt_alphas_cumprod, i, xt.ndim) * xt - extract(s.sqrt_one_minus_alphas_cumprod, i, xt.ndim) * v
