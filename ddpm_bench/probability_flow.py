"""The exact log-likelihood of a DDPM under its probability-flow ODE (docs/likelihood.md), in float64.

Song et al. 2021, "Score-based generative modeling through stochastic differential equations": the
probability-flow ODE (Eq. 13) shares the marginals of the diffusion, and the instantaneous change of
variables gives the exact log-density of its end point (Eq. 39-40, appendix D.2):

    log p_0(x(0)) = log p_T(x(T)) + integral_0^T div f(x(t), t) dt,

with the divergence estimated by Hutchinson's trace estimator (Eq. 40). Here the ODE is written in the
noise-level variable of DDIM / EDM / k-diffusion, sigma = exp(gamma / 2) (ddpm_bench.noise_level), so every
model is one ODE over its own range [sigma_min, sigma_max] and a discrete DDPM needs no continuous-time
retraining:

    y = x / sqrt(abar)  (y = x_0 + sigma eps under q),  abar(sigma) = 1 / (1 + sigma^2)
    dy/dsigma = eps_hat(y, sigma) = eps_theta(y / sqrt(1 + sigma^2), sigma)
    log p(y(sigma_min)) = log N(y(sigma_max); 0, (1 + sigma_max^2) I)
                          + integral_{sigma_min}^{sigma_max} div_y eps_hat(y(sigma), sigma) dsigma,

where eps_theta is the model's eps at that noise level (`Network.eps`: a discrete DDPM's at the fractional
network index that interpolates log sigma linearly between its sigma_i = sqrt((1 - abar_i) / abar_i),
k-diffusion's `sigma_to_t`) and the path starts at the dequantized data y(sigma_min) = x_0.

The solver is an adaptive Dormand-Prince 5(4) pair (Dormand & Prince 1980) whose step size is controlled
per image (Hairer, Norsett & Wanner, "Solving ODEs I", II.4 and II.5), so an image's result and its
number of network evaluations do not depend on which other images share its batch. Finished images
leave the batch: the network sees only the images still being solved.

Every function here is pure: no I/O, no globals; all noise is a function of (seed, image index, draw).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ddpm_bench.errors import ModelOutputError
from ddpm_bench.noise import counter_normal

LN2 = math.log(2.0)
DEQUANTIZATIONS = ("ddpm-bench", "score-sde")
PROBE_KINDS = ("rademacher", "gaussian")
# the middle column of the counter-noise key (image j, purpose, draw d): the bound uses terms k >= 0 and -1,
# sampling uses steps >= 0, so these keys never meet theirs
PURPOSE_DEQUANTIZATION = -2
PURPOSE_DIVERGENCE_PROBE = -3
# per-image output parts in bits/dim (docs/likelihood.md, per_image.npz and summary.json), summing to "bpd"
BPD, PRIOR_BPD, DIVERGENCE_BPD, DEQUANTIZATION_BPD = "bpd", "prior_bpd", "divergence_bpd", "dequantization_bpd"
MAX_STEPS = 100_000  # attempted steps per image before the solve is declared stuck

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (N, C, H, W), sigma (N,) float64) -> eps


# ---------------------------------------------------------------------------------------------- dequantization

def dequantize(v: torch.Tensor, u: torch.Tensor, convention: str = "ddpm-bench") -> torch.Tensor:
    """Continuous data x_0 (N, C, H, W) float64 from uint8 values v and uniform noise u in [0, 1) (docs/likelihood.md).

    `ddpm-bench`: x_0 = (v - 0.5 + u) / 127.5 - 1, the bins of width 1/127.5 around v / 127.5 - 1;
    `score-sde`: x_0 = 2 (v + u) / 256 - 1 (Song et al. 2021's code; bins of width 1/128).
    """
    if v.dtype != torch.uint8:
        raise ValueError(f"data must be uint8 values 0..255, got {v.dtype}")
    if u.shape != v.shape:
        raise ValueError(f"dequantization noise of shape {tuple(u.shape)} does not match data {tuple(v.shape)}")
    vf, u = v.to(torch.float64), u.to(torch.float64)
    if convention == "ddpm-bench":
        return (vf - 0.5 + u) / 127.5 - 1.0
    if convention == "score-sde":
        return 2.0 * (vf + u) / 256.0 - 1.0
    raise ValueError(f"unknown dequantization {convention!r}; choose one of {', '.join(DEQUANTIZATIONS)}")


def bits_per_dim_offset(convention: str = "ddpm-bench") -> float:
    """-log2 of the bin width: bits/dim of the integer data = -log p(x_0) / (D ln 2) + this offset.
    log2(127.5) for `ddpm-bench`, 7 for `score-sde`."""
    if convention == "ddpm-bench":
        return math.log2(127.5)
    if convention == "score-sde":
        return 7.0
    raise ValueError(f"unknown dequantization {convention!r}; choose one of {', '.join(DEQUANTIZATIONS)}")


def _noise_keys(index: torch.Tensor, purpose: int, draw: int) -> torch.Tensor:
    index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
    if isinstance(draw, bool) or not isinstance(draw, int) or draw < 0:
        raise ValueError(f"draw must be a non-negative integer, got {draw!r}")
    return torch.stack([index, torch.full_like(index, purpose), torch.full_like(index, draw)], dim=1)


def dequantization_noise(seed: int, index: torch.Tensor, draw: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(N, *shape) float64 uniform u in [0, 1) for image index[n] and draw `draw`, a pure function of
    (seed, index[n], draw): counter_normal with key (j, PURPOSE_DEQUANTIZATION, d) through the normal CDF."""
    z = counter_normal(seed, _noise_keys(index, PURPOSE_DEQUANTIZATION, draw), tuple(shape))
    u = torch.special.ndtr(z)
    return u.clamp_(max=1.0 - 2.0**-53)  # the largest counter normal (8.29) would round up to 1


def divergence_probe(seed: int, index: torch.Tensor, draw: int, shape: tuple[int, ...],
                     kind: str = "rademacher") -> torch.Tensor:
    """(N, *shape) float64 Hutchinson probe z for image index[n] and draw `draw` (Song et al. 2021, Eq. 40),
    a pure function of (seed, index[n], draw): the counter normal with key (j, PURPOSE_DIVERGENCE_PROBE, d)
    (`gaussian`, E zz^T = I) or its sign (`rademacher`, +-1; never 0, as no counter normal is 0)."""
    z = counter_normal(seed, _noise_keys(index, PURPOSE_DIVERGENCE_PROBE, draw), tuple(shape))
    if kind == "gaussian":
        return z
    if kind == "rademacher":
        return torch.sign(z)
    raise ValueError(f"unknown probe {kind!r}; choose one of {', '.join(PROBE_KINDS)}")


# ---------------------------------------------------------------------------------------------- the solver

# Dormand & Prince (1980), the 5(4) pair of RK45 / ode45 / dopri5: nodes c, matrix a, 5th-order weights b
# (equal to the last row of a: first same as last), and e = b - b* (b* the embedded 4th-order weights).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
_SAFETY, _FACTOR_MIN, _FACTOR_MAX = 0.9, 0.2, 10.0
_ERROR_EXPONENT = -1.0 / 5.0  # -1 / (q + 1) with q = 4, the order of the embedded error estimate


def _combine(y: torch.Tensor, h: torch.Tensor, weights: tuple[float, ...], k: list[torch.Tensor]) -> torch.Tensor:
    """y + h * sum_j weights[j] k[j], summed in a fixed order elementwise (the same bits for any batch)."""
    acc = None
    for w, kj in zip(weights, k, strict=False):
        if w != 0.0:
            acc = w * kj if acc is None else acc + w * kj
    return y + h[:, None] * acc


def _rms(a: torch.Tensor, parts: tuple[int, ...]) -> torch.Tensor:
    """(n,) the largest of the RMS norms of a (n, F)'s parts, consecutive column blocks of widths `parts`."""
    return torch.stack([p.square().mean(dim=1).sqrt() for p in a.split(parts, dim=1)], dim=1).amax(dim=1)


def dormand_prince(f: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                   t0: torch.Tensor, t1: torch.Tensor, y0: torch.Tensor, *, rtol: float, atol: float,
                   parts: tuple[int, ...] | None = None,
                   max_steps: int = MAX_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve dy/dt = f(t, y) from t0 to t1 >= t0 for each row with its own adaptive step size; float64.

    f(t (n,), y (n, F), rows (n,) int64) -> (n, F) is called on the rows still being solved (`rows` are
    their positions in the batch). Dormand-Prince 5(4) with first-same-as-last. A row's F values are the
    consecutive parts of widths `parts` (default: one part of F); the error of a step is the largest over
    its parts of the RMS over the part of err / (atol + rtol max(|y|, |y_new|)) (torchdiffeq's mixed norm),
    so a part of one value is controlled as tightly as one of millions. A step is accepted when its error
    is <= 1, and the next step is h * clamp(0.9 err^(-1/5), 0.2, 10) (at most h right after a rejection);
    the first step comes from Hairer's heuristic (Hairer, Norsett & Wanner, "Solving ODEs I", II.4) in the
    same norm, per row. Returns y(t1) (N, F) and the number of evaluations of f per row (N,) int64:
    2 + 6 per attempted step.
    """
    N, F = y0.shape
    parts = (F,) if parts is None else tuple(parts)
    if sum(parts) != F or min(parts) < 1:
        raise ValueError(f"parts {parts} must be positive widths that add up to the {F} values of a row")
    y, t = y0.to(torch.float64).clone(), t0.to(torch.float64).clone()
    t1 = t1.to(torch.float64)
    dev = y.device
    nfe = torch.zeros(N, dtype=torch.int64, device=dev)
    steps = torch.zeros(N, dtype=torch.int64, device=dev)
    active = torch.nonzero(t < t1).flatten()
    if active.numel() == 0:
        return y, nfe

    # Hairer's initial step (II.4), per row; its first evaluation is the first stage of the first step
    ya, ta = y[active], t[active]
    f0 = f(ta, ya, active)
    scale = atol + rtol * ya.abs()
    d0, d1 = _rms(ya / scale, parts), _rms(f0 / scale, parts)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = torch.minimum(h0, t1[active] - ta)
    f1 = f(ta + h0, ya + h0[:, None] * f0, active)
    d2 = _rms((f1 - f0) / scale, parts) / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / dmax) ** (1.0 / 5.0))
    h = torch.zeros(N, dtype=torch.float64, device=dev)
    h[active] = torch.minimum(100.0 * h0, h1)
    nfe[active] += 2
    k_first = torch.zeros_like(y)
    k_first[active] = f0
    factor_max = torch.full((N,), _FACTOR_MAX, dtype=torch.float64, device=dev)

    while active.numel():
        ya, ta, t1a, ka = y[active], t[active], t1[active], k_first[active]
        ha = torch.minimum(h[active], t1a - ta)
        t_new = ta + ha
        last = t_new >= t1a
        t_new = torch.where(last, t1a, t_new)
        ha = t_new - ta
        k = [ka]
        for i in range(1, 6):
            k.append(f(ta + _C[i] * ha, _combine(ya, ha, _A[i], k), active))
        y_new = _combine(ya, ha, _B, k)
        k.append(f(t_new, y_new, active))  # first same as last: the next step's first stage
        nfe[active] += 6
        steps[active] += 1
        err = _combine(torch.zeros_like(ya), ha, _E, k)  # y5 - y4, the embedded error estimate
        ratio = _rms(err / (atol + rtol * torch.maximum(ya.abs(), y_new.abs())), parts)
        if not bool(torch.isfinite(ratio).all()):
            bad = active[~torch.isfinite(ratio)].tolist()
            raise FloatingPointError(f"the ODE solve of batch rows {bad} has a non-finite error estimate")
        accept = ratio <= 1.0
        factor = torch.minimum((_SAFETY * ratio.clamp(min=1e-10) ** _ERROR_EXPONENT).clamp(min=_FACTOR_MIN),
                               factor_max[active])
        h[active] = ha * factor
        factor_max[active] = torch.where(accept, _FACTOR_MAX, 1.0).to(factor_max)
        rows = active[accept]
        y[rows], t[rows], k_first[rows] = y_new[accept], t_new[accept], k[6][accept]
        active = active[~(accept & last)]
        stuck = (h[active] <= 1e-14 * t1[active].abs()) | (steps[active] >= max_steps)
        if bool(stuck.any()):
            raise FloatingPointError(f"the ODE solve of batch rows {active[stuck].tolist()} is stuck: its step size "
                                     f"fell below 1e-14 |t1| or it took {max_steps} steps")
    return y, nfe


# ---------------------------------------------------------------------------------------------- the likelihood

@dataclass(frozen=True)
class OdeResult:
    """Per-image probability-flow log-likelihood of the continuous data x_0 (nats, float64)."""

    log_prob: torch.Tensor  # (N,) log p(x_0) = prior_logp + divergence
    prior_logp: torch.Tensor  # (N,) log N(y(sigma_max); 0, (1 + sigma_max^2) I)
    divergence: torch.Tensor  # (N,) integral of div_y eps_hat over [sigma_min, sigma_max] (estimate with a probe)
    nfe: torch.Tensor  # (N,) int64 network evaluations this image's solve needed


def _vector_field(eps_fn: EpsFn, shape: tuple[int, ...], probe: torch.Tensor | None,
                  network_dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The augmented field (dy/dsigma, d divergence-integral/dsigma) = (eps_hat, div_y eps_hat), rows flattened."""
    D = math.prod(shape)

    def field(sigma: torch.Tensor, state: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        n = state.shape[0]
        with torch.enable_grad():
            y = state[:, :D].detach().reshape(n, *shape).requires_grad_(True)
            x = y / torch.sqrt(1.0 + sigma.square()).reshape(n, *([1] * len(shape)))
            eps = eps_fn(x.to(network_dtype), sigma)
            if not isinstance(eps, torch.Tensor) or tuple(eps.shape) != (n, *shape):
                got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
                raise ModelOutputError(f"the eps prediction has shape {got}; expected {(n, *shape)}")
            if not eps.requires_grad:
                raise ModelOutputError("the eps prediction is not differentiable in x (called under no_grad or "
                                       "inference_mode, or detached): its divergence cannot be computed")
            eps = eps.to(torch.float64)
            if not bool(torch.isfinite(eps).all()):
                raise ModelOutputError("the eps prediction has non-finite values")
            flat = eps.reshape(n, D)
            if probe is None:  # exact: D vector-Jacobian products, the diagonal of d eps_hat / d y
                diag = torch.empty(n, D, dtype=torch.float64, device=state.device)
                for d in range(D):
                    (g,) = torch.autograd.grad(flat[:, d].sum(), y, retain_graph=d < D - 1, allow_unused=True)
                    diag[:, d] = 0.0 if g is None else g.reshape(n, D)[:, d]
                div = diag.sum(dim=1)
            else:  # Hutchinson (Song et al. 2021, Eq. 40): z^T (d eps_hat / d y) z
                z = probe[rows]
                (g,) = torch.autograd.grad(eps, y, grad_outputs=z, allow_unused=True)
                div = torch.zeros_like(sigma) if g is None else (g * z).reshape(n, D).sum(dim=1)
        return torch.cat([flat.detach(), div.detach()[:, None]], dim=1)

    return field


def ode_log_likelihood(eps_fn: EpsFn, x0: torch.Tensor, sigma_min: float, sigma_max: float, *,
                       probe: torch.Tensor | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                       network_dtype: torch.dtype = torch.float32, max_steps: int = MAX_STEPS) -> OdeResult:
    """log p(x_0) per image under the probability-flow ODE (Song et al. 2021, Eq. 39-40; docs/likelihood.md).

    eps_fn(x (N, C, H, W) `network_dtype`, sigma (N,) float64) -> eps (N, C, H, W): the model's eps
    prediction at the variance-preserving x = y / sqrt(1 + sigma^2) and noise level sigma = exp(gamma / 2)
    (`Network.eps`; a discrete model's at the fractional index of sigma), evaluated with autograd enabled;
    it must treat rows independently. x0 (N, C, H, W) float64 dequantized data; [sigma_min, sigma_max] the
    model's range. probe: None for the exact divergence (D vector-Jacobian products per evaluation: small
    images and tests), or (N, C, H, W) Hutchinson probes from `divergence_probe`, one per row, fixed through
    the solve. The state (y, divergence integral) is integrated in float64 from sigma_min to sigma_max, the
    step's error the larger of the two parts' (`dormand_prince`, parts (D, 1)): the one value of the integral
    is held to rtol and atol as tightly as the D values of y; x is cast to `network_dtype` for the call and
    eps back to float64.
    """
    if x0.ndim < 2:
        raise ValueError(f"x0 must be (N, C, H, W), got shape {tuple(x0.shape)}")
    sigma_min, sigma_max = float(sigma_min), float(sigma_max)
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
        raise ValueError(f"noise levels must satisfy 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
    if probe is not None and probe.shape != x0.shape:
        raise ValueError(f"probe of shape {tuple(probe.shape)} does not match x0 {tuple(x0.shape)}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}")
    N, shape = x0.shape[0], tuple(x0.shape[1:])
    D = math.prod(shape)
    sigma_min, sigma_max = (torch.tensor(v, dtype=torch.float64, device=x0.device) for v in (sigma_min, sigma_max))
    probe = None if probe is None else probe.to(device=x0.device, dtype=torch.float64)
    field = _vector_field(eps_fn, shape, probe, network_dtype)
    state0 = torch.cat([x0.to(torch.float64).reshape(N, D), x0.new_zeros(N, 1, dtype=torch.float64)], dim=1)
    with torch.no_grad():
        state1, nfe = dormand_prince(field, sigma_min.expand(N), sigma_max.expand(N), state0,
                                     rtol=rtol, atol=atol, parts=(D, 1), max_steps=max_steps)
    y1, divergence = state1[:, :D], state1[:, D]
    var = 1.0 + sigma_max.square()
    prior_logp = -0.5 * D * (math.log(2 * math.pi) + torch.log1p(sigma_max.square())) - 0.5 * y1.square().sum(1) / var
    return OdeResult(log_prob=prior_logp + divergence, prior_logp=prior_logp, divergence=divergence, nfe=nfe)


def bits_per_dim_parts(result: OdeResult, D: int, convention: str = "ddpm-bench") -> dict[str, torch.Tensor]:
    """Per-image bits/dim of the integer data and its parts, (N,) float64 each (docs/likelihood.md outputs):
    prior_bpd = -prior_logp / (D ln 2), divergence_bpd = -divergence / (D ln 2), dequantization_bpd = the
    bin-width offset (`bits_per_dim_offset`), and bpd = their sum = -log p(x_0) / (D ln 2) + offset."""
    offset = bits_per_dim_offset(convention)
    prior = -result.prior_logp / (D * LN2)
    divergence = -result.divergence / (D * LN2)
    dequantization = torch.full_like(prior, offset)
    return {BPD: prior + divergence + dequantization, PRIOR_BPD: prior, DIVERGENCE_BPD: divergence,
            DEQUANTIZATION_BPD: dequantization}
