"""The probability-flow ODE likelihood (docs/likelihood.md) against closed forms, and its invariances.

Closed form: data N(mu, s^2) per dimension; its exact eps prediction makes the ODE map Gaussians to
Gaussians, y(sigma) - mu = (x_0 - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_min^2)), with divergence
D sigma / (s^2 + sigma^2), so log p(x_0) is known exactly for every schedule.
"""

import math

import numpy as np
import pytest
import scipy.special as sp
import torch
import torch.nn.functional as F
from scipy.integrate import solve_ivp

from ddpm_bench.noise import counter_normal
from ddpm_bench.noise_level import eps_from_prediction, fractional_index, noise_level_at, noise_levels
from ddpm_bench.probability_flow import (
    BPD,
    DEQUANTIZATION_BPD,
    DIVERGENCE_BPD,
    PRIOR_BPD,
    bits_per_dim_offset,
    bits_per_dim_parts,
    dequantization_noise,
    dequantize,
    divergence_probe,
    dormand_prince,
    ode_log_likelihood,
)
from ddpm_bench.schedule import make_schedule

LN2 = math.log(2.0)
MU, S = 0.1, 0.5  # the closed-form data distribution N(MU, S^2) per dimension


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one CPU thread (fast for tiny tensors, and the same bits at every run)."""


def solve(eps_of_index, x0, sigmas, **kwargs):
    """The ODE likelihood of a discrete model given as f(x, fractional index): the ODE calls eps at sigma,
    as `estimators.ode.eps_in_sigma` does for a discrete model."""
    return ode_log_likelihood(lambda x, sigma: eps_of_index(x, fractional_index(sigma, sigmas)), x0,
                              float(sigmas[0]), float(sigmas[-1]), **kwargs)


def sigmas_of(name, T=1000):
    return noise_levels(make_schedule(name, T).alphas_cumprod)


def abar_at(s, sigmas):
    """alpha-bar(sigma) = 1 / (1 + sigma^2) at fractional index s, shaped (N, 1, 1, 1)."""
    return (1.0 / (1.0 + noise_level_at(s, sigmas).square())).reshape(-1, 1, 1, 1)


def gaussian_oracle(sigmas, mean_type="eps"):
    """The exact eps (or x0) prediction for data N(MU, S^2), as a network sees it: f(x, s)."""

    def fn(x, s):
        x = x.to(torch.float64)
        abar = abar_at(s, sigmas)
        if mean_type == "eps":
            return (1 - abar).sqrt() * (x - abar.sqrt() * MU) / (abar * S**2 + 1 - abar)
        # E[x_0 | x_t], the Gaussian posterior mean; converted back with eps_from_prediction
        x0_hat = MU + S**2 * abar.sqrt() * (x - abar.sqrt() * MU) / (abar * S**2 + 1 - abar)
        return eps_from_prediction("x0", x0_hat, x, abar.flatten())

    return fn


def closed_form(x0, sigmas):
    """(log p, prior_logp, divergence) of the Gaussian oracle's ODE, per image (docs/likelihood.md)."""
    D = x0[0].numel()
    smin, smax = sigmas[0], sigmas[-1]
    y1 = MU + (x0 - MU) * torch.sqrt((S**2 + smax**2) / (S**2 + smin**2))
    prior = -0.5 * D * torch.log(2 * math.pi * (1 + smax**2)) - 0.5 * y1.square().flatten(1).sum(1) / (1 + smax**2)
    div = 0.5 * D * torch.log((S**2 + smax**2) / (S**2 + smin**2))
    return prior + div, prior, div.expand(len(x0))


def gaussian_data(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MU + S * torch.randn(n, *shape, dtype=torch.float64, generator=g)


class TinyNet:
    """A seeded 2-layer conv with tanh, eps(x, s) = x + 0.5 conv2(tanh(conv1(x) + s/T)): nonlinear, row by row."""

    def __init__(self, C, T, seed=0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.w1 = (0.4 * torch.randn(6, C, 3, 3, generator=g)).to(dtype)
        self.w2 = (0.4 * torch.randn(C, 6, 3, 3, generator=g)).to(dtype)
        self.T = T

    def __call__(self, x, s):
        h = torch.tanh(F.conv2d(x, self.w1, padding=1) + (s / self.T).to(x.dtype).reshape(-1, 1, 1, 1))
        return x + 0.5 * F.conv2d(h, self.w2, padding=1)


# ------------------------------------------------------------------------------------------- noise levels


def test_noise_levels_and_fractional_index_follow_k_diffusion():
    sigmas = sigmas_of("linear", 1000)
    abar = make_schedule("linear", 1000).alphas_cumprod.numpy()
    np.testing.assert_allclose(sigmas.numpy(), np.sqrt((1 - abar) / abar), rtol=1e-14)
    # s(sigma_i) = i, and log sigma is interpolated linearly between neighbours (k-diffusion's sigma_to_t)
    i = torch.tensor([0, 1, 17, 500, 998, 999])
    np.testing.assert_allclose(fractional_index(sigmas[i], sigmas).numpy(), i.numpy(), atol=1e-12)
    log_sig = np.log(sigmas.numpy())
    q = np.array([0.0, 0.25, 3.5, 123.9, 998.01, 999.0])
    lo = np.floor(np.minimum(q, 998)).astype(int)
    mid = np.exp(log_sig[lo] + (q - lo) * (log_sig[lo + 1] - log_sig[lo]))
    np.testing.assert_allclose(fractional_index(torch.from_numpy(mid), sigmas).numpy(), q, atol=1e-9)
    np.testing.assert_allclose(noise_level_at(torch.from_numpy(q), sigmas).numpy(), mid, rtol=1e-13)
    # outside [sigma_min, sigma_max] the index is clamped
    out = fractional_index(torch.tensor([1e-9, 1e9], dtype=torch.float64), sigmas)
    assert out.tolist() == [0.0, 999.0]
    with np.errstate(divide="ignore"), pytest.raises(ValueError, match="finite and positive"):
        noise_levels(make_schedule("jsd", 10).alphas_cumprod)  # alpha-bar_T = 0: sigma_max = inf


def test_eps_from_prediction_inverts_x0_and_v_and_refuses_mu():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 5, 3, 3, 2, dtype=torch.float64, generator=g)
    abar = torch.tensor([0.9, 0.3, 0.5, 1e-3, 0.999], dtype=torch.float64)
    a = abar.reshape(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(eps_from_prediction("x0", x0, xt, abar), eps, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(eps_from_prediction("v", v, xt, abar), eps, rtol=1e-12, atol=1e-12)
    assert eps_from_prediction("eps", eps, xt, abar) is not None
    with pytest.raises(ValueError, match="mu"):
        eps_from_prediction("mu", eps, xt, abar)


# ------------------------------------------------------------------------------------------- the solver


def test_dormand_prince_per_row_step_control_on_a_known_ode():
    """y' = lam y cos(t) has y = y0 exp(lam sin t); rows of different stiffness get their own NFE, and a row
    solved alone takes the same steps and gives the same bits as in the batch."""
    lam = torch.tensor([0.5, 4.0, -3.0], dtype=torch.float64)

    def f(t, y, rows):
        return lam[rows, None] * y * torch.cos(t)[:, None]

    y0 = torch.tensor([[1.0, -2.0], [0.5, 1.0], [2.0, 3.0]], dtype=torch.float64)
    t0, t1 = torch.zeros(3, dtype=torch.float64), torch.full((3,), 6.0, dtype=torch.float64)
    y, nfe = dormand_prince(f, t0, t1, y0, rtol=1e-8, atol=1e-8)
    exact = y0 * torch.exp(lam[:, None] * math.sin(6.0))
    torch.testing.assert_close(y, exact, rtol=1e-6, atol=1e-7)
    assert nfe[1] > nfe[0] and len(set(nfe.tolist())) > 1 and bool(((nfe - 2) % 6 == 0).all())
    alone, nfe_alone = dormand_prince(lambda t, y, rows: f(t, y, rows + 1), t0[:1], t1[:1], y0[1:2], rtol=1e-8,
                                      atol=1e-8)
    assert torch.equal(alone[0], y[1]) and nfe_alone[0] == nfe[1]
    # a zero-length interval costs nothing
    same, nfe0 = dormand_prince(f, t1, t1, y0, rtol=1e-8, atol=1e-8)
    assert torch.equal(same, y0) and nfe0.tolist() == [0, 0, 0]


def test_dormand_prince_with_one_part_takes_scipys_rk45_steps():
    """One part (the default): the error norm is one RMS over the row, scipy's RK45 run row by row takes the
    same steps (the same evaluations, the same values to rounding); parts that do not tile a row are refused."""
    lam = torch.tensor([0.5, 4.0], dtype=torch.float64)

    def f(t, y, rows):
        return lam[rows, None] * y * torch.cos(t)[:, None] + torch.stack([t, t.square()], dim=1)

    y0 = torch.tensor([[1.0, -2.0], [0.5, 1.0]], dtype=torch.float64)
    t0, t1 = torch.zeros(2, dtype=torch.float64), torch.full((2,), 6.0, dtype=torch.float64)
    y, nfe = dormand_prince(f, t0, t1, y0, rtol=1e-6, atol=1e-6)
    def row_of(j):  # scipy's f(t, y) of row j
        return lambda t, v: f(torch.tensor([t], dtype=torch.float64), torch.from_numpy(v)[None], torch.tensor([j]))[0]

    for j in range(2):
        ref = solve_ivp(row_of(j), (0.0, 6.0), y0[j].numpy(), method="RK45", rtol=1e-6, atol=1e-6)
        assert ref.nfev == nfe[j]
        np.testing.assert_allclose(ref.y[:, -1], y[j].numpy(), rtol=1e-12, atol=1e-12)
    _, nfe_parts = dormand_prince(f, t0, t1, y0, rtol=1e-6, atol=1e-6, parts=(1, 1))
    assert not torch.equal(nfe_parts, nfe)  # the max over two parts is another norm
    for parts in [(1,), (2, 1), (3, -1)]:
        with pytest.raises(ValueError, match="parts"):
            dormand_prince(f, t0, t1, y0, rtol=1e-6, atol=1e-6, parts=parts)


# ------------------------------------------------------------------------------------------- closed form

CLOSED_FORM_BPD_TOL = 2e-4  # stated tolerance at rtol = atol = 1e-5 (measured: 0.3e-4 linear, 1.0e-4 cosine)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("mean_type", ["eps", "x0"])
def test_exact_divergence_matches_the_gaussian_closed_form(schedule, mean_type):
    sigmas = sigmas_of(schedule)
    x0 = gaussian_data(3, (1, 4, 4), seed=2)
    D = 16
    r = solve(gaussian_oracle(sigmas, mean_type), x0, sigmas, network_dtype=torch.float64)
    logp, prior, div = closed_form(x0, sigmas)
    err_bpd = (r.log_prob - logp).abs() / (D * LN2)
    assert float(err_bpd.max()) < CLOSED_FORM_BPD_TOL, err_bpd
    assert float(((r.divergence - div).abs() / (D * LN2)).max()) < CLOSED_FORM_BPD_TOL
    assert float(((r.prior_logp - prior).abs() / (D * LN2)).max()) < CLOSED_FORM_BPD_TOL
    torch.testing.assert_close(r.log_prob, r.prior_logp + r.divergence, rtol=0, atol=1e-12)
    assert r.nfe.dtype == torch.int64 and bool((r.nfe > 20).all())
    if schedule == "linear" and mean_type == "eps":
        # the error is the solver's: 100x tighter tolerances shrink it more than tenfold
        tight = solve(gaussian_oracle(sigmas), x0, sigmas, network_dtype=torch.float64,
                                   rtol=1e-7, atol=1e-7)
        assert float((tight.log_prob - logp).abs().max()) < 0.1 * float((r.log_prob - logp).abs().max())
        assert bool((tight.nfe > r.nfe).all())


def gaussian_field(D):
    """The Gaussian oracle's augmented field in y itself (docs/likelihood.md, closed form):
    (dy/dsigma, d divergence-integral/dsigma) = (sigma (y - MU), D sigma) / (S^2 + sigma^2), rows of D + 1."""

    def field(sigma, state, rows):
        w = (sigma / (S**2 + sigma.square()))[:, None]
        return torch.cat([w * (state[:, :D] - MU), D * w], dim=1)

    return field


@pytest.mark.parametrize("schedule, shape", [("cosine", (3, 32, 32)), ("linear", (3, 16, 16))])
def test_the_divergence_integral_is_controlled_as_a_part_of_its_own(schedule, shape):
    """At the default tolerance, within 1e-4 bits/dim of the closed form (measured 9.9e-5 on the cosine
    schedule at 3x32x32, 3.0e-5 linear at 3x16x16): the step's error is the larger of y's RMS and the
    divergence integral's. With one RMS over the D + 1 values, the integral is 1/(D + 1) of the norm and
    drifts (measured 1.4e-3 and 2.2e-4). Rademacher probes are exact here: the oracle's Jacobian is a
    multiple of I."""
    sigmas = sigmas_of(schedule)
    n, D = 2, math.prod(shape)
    x0 = gaussian_data(n, shape, seed=13)
    logp = closed_form(x0, sigmas)[0]
    r = solve(gaussian_oracle(sigmas), x0, sigmas, probe=divergence_probe(13, torch.arange(n), 0, shape),
              network_dtype=torch.float64)
    err = (r.log_prob - logp).abs() / (D * LN2)
    assert float(err.max()) <= 1e-4, err

    # the same ODE in y, solved with the parts (D, 1) as above and with one part of D + 1
    state0 = torch.cat([x0.reshape(n, D), x0.new_zeros(n, 1)], dim=1)
    var = 1 + sigmas[-1].square()
    prior0 = -0.5 * D * torch.log(2 * math.pi * var)
    errors = {}
    for parts in [(D, 1), (D + 1,)]:
        state1, nfe = dormand_prince(gaussian_field(D), sigmas[0].expand(n), sigmas[-1].expand(n), state0, rtol=1e-5,
                                     atol=1e-5, parts=parts)
        got = prior0 - 0.5 * state1[:, :D].square().sum(1) / var + state1[:, D]
        errors[parts] = (got - logp).abs() / (D * LN2)
        if parts == (D, 1):  # ode_log_likelihood solves with these parts: the same steps, the same bits/dim
            assert torch.equal(nfe, r.nfe)
            torch.testing.assert_close(got, r.log_prob, rtol=1e-12, atol=0)
    assert float(errors[D + 1,].min()) > 1e-4 and bool((errors[D + 1,] > 2 * errors[D, 1]).all()), errors


def test_hutchinson_on_the_closed_form_agrees_within_four_standard_errors():
    """Rademacher probes are exact for this oracle (its Jacobian is a multiple of I); Gaussian probes average
    to the closed form over images and draws."""
    sigmas = sigmas_of("linear")
    shape, D, n, draws = (3, 4, 4), 48, 4, 8
    x0 = gaussian_data(n, shape, seed=3).repeat(draws, 1, 1, 1)
    index = torch.arange(n).repeat(draws)
    oracle = gaussian_oracle(sigmas)
    logp = closed_form(x0, sigmas)[0]
    rad = torch.cat([divergence_probe(0, index[:n], d, shape, "rademacher") for d in range(draws)])
    r = solve(oracle, x0, sigmas, probe=rad, network_dtype=torch.float64)
    assert float(((r.log_prob - logp).abs() / (D * LN2)).max()) < CLOSED_FORM_BPD_TOL
    gauss = torch.cat([divergence_probe(0, index[:n], d, shape, "gaussian") for d in range(draws)])
    r = solve(oracle, x0, sigmas, probe=gauss, network_dtype=torch.float64)
    diff = (r.log_prob - logp).numpy()
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert abs(diff.mean()) < 4 * se, (diff.mean(), se)
    assert se > 0.01  # the Gaussian probe's noise is real, so the check above has something to check


def test_float32_network_call_costs_little_against_the_closed_form():
    sigmas = sigmas_of("linear")
    x0 = gaussian_data(2, (1, 4, 4), seed=4)
    oracle = gaussian_oracle(sigmas)
    # default network_dtype: x reaches the network as float32; here the output is float32 too, as a network's
    r = solve(lambda x, s: oracle(x, s).to(x.dtype), x0, sigmas)
    err_bpd = (r.log_prob - closed_form(x0, sigmas)[0]).abs() / (16 * LN2)
    assert float(err_bpd.max()) < CLOSED_FORM_BPD_TOL  # measured 0.3e-4, as with a float64 network


# ------------------------------------------------------------------------------------------- Hutchinson


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_on_a_nonlinear_network(kind):
    sigmas = sigmas_of("linear", 100)
    shape, n, draws = (1, 4, 4), 2, 256
    net = TinyNet(1, 100, seed=5)
    x0 = gaussian_data(n, shape, seed=6)
    exact = solve(net, x0, sigmas, network_dtype=torch.float64, rtol=1e-6, atol=1e-6)
    index = torch.arange(n).repeat(draws)
    probe = torch.cat([divergence_probe(7, index[:n], d, shape, kind) for d in range(draws)])
    est = solve(net, x0.repeat(draws, 1, 1, 1), sigmas, probe=probe, network_dtype=torch.float64,
                             rtol=1e-6, atol=1e-6)
    div = est.divergence.reshape(draws, n)
    mean, se = div.mean(0), div.std(0) / math.sqrt(draws)
    assert bool(((mean - exact.divergence).abs() < 4 * se).all()), (mean, exact.divergence, se)
    # the check has power: a probe scaled by sqrt(0.8) (a 20% bias in the divergence) would fail it
    assert bool(((0.8 * mean - exact.divergence).abs() > 4 * se).all()), (mean, exact.divergence, se)
    # the probe changes only the divergence: the path, and so the prior term, stays (up to the solver's
    # tolerance: the divergence component takes part in the step control, so the steps differ)
    torch.testing.assert_close(est.prior_logp.reshape(draws, n), exact.prior_logp.expand(draws, n),
                               rtol=2e-5, atol=0)


# ------------------------------------------------------------------------------------------- invariance


def test_an_images_result_does_not_depend_on_its_batch():
    sigmas = sigmas_of("linear")
    shape = (1, 4, 4)
    x0 = gaussian_data(8, shape, seed=8)
    x0[5] *= 3.0  # an outlier
    gaussian = gaussian_oracle(sigmas)

    def oracle(x, s):
        """Elementwise, float64 and nonlinear: its divergence depends on y, so each row's divergence integral
        (which sets the steps of the Gaussian oracle alone, the same for every row) asks for its own steps."""
        return gaussian(x, s) + 0.3 * torch.tanh(3.0 * x)

    batch = solve(oracle, x0, sigmas, network_dtype=torch.float64)
    assert len(set(batch.nfe.tolist())) > 1  # the rows did take different numbers of steps
    for j in (0, 5):  # float64 elementwise oracle: the same bits
        alone = solve(oracle, x0[j:j + 1], sigmas, network_dtype=torch.float64)
        assert torch.equal(alone.log_prob[0], batch.log_prob[j]) and alone.nfe[0] == batch.nfe[j]
    # Hutchinson probes of the rows, computed for the row alone
    probe = divergence_probe(9, torch.arange(8), 0, shape)
    batch = solve(oracle, x0, sigmas, probe=probe, network_dtype=torch.float64)
    pair = solve(oracle, x0[[5, 2]], sigmas, probe=divergence_probe(9, torch.tensor([5, 2]), 0, shape),
                              network_dtype=torch.float64)
    assert torch.equal(pair.log_prob, batch.log_prob[[5, 2]]) and torch.equal(pair.nfe, batch.nfe[[5, 2]])
    # a nonlinear conv network, exact divergence, batch [a, b] against [a] alone: float rounding at most
    net = TinyNet(1, 1000, seed=10)
    two = solve(net, x0[[0, 5]], sigmas, network_dtype=torch.float64)
    one = solve(net, x0[[0]], sigmas, network_dtype=torch.float64)
    torch.testing.assert_close(one.log_prob[0], two.log_prob[0], rtol=1e-9, atol=0)
    assert one.nfe[0] == two.nfe[0]


# ------------------------------------------------------------------------------------------- dequantization


def discrete_bits_per_dim(v, convention, mean, var):
    """-log2 P(v) / D for integer data v under the continuous density N(mean, var) per dimension, with the
    convention's bins (exact normal CDF, float64)."""
    v = v.astype(np.float64)
    lo, hi = ((v - 0.5) / 127.5 - 1, (v + 0.5) / 127.5 - 1) if convention == "ddpm-bench" else \
        (2 * v / 256 - 1, 2 * (v + 1) / 256 - 1)
    sd = math.sqrt(var)
    p = sp.ndtr((hi - mean) / sd) - sp.ndtr((lo - mean) / sd)
    return -np.log2(p).reshape(len(v), -1).mean(1)


@pytest.mark.parametrize("convention", ["ddpm-bench", "score-sde"])
def test_dequantized_bits_per_dim_of_integer_data(convention):
    """The ODE model of the Gaussian oracle is exactly Gaussian in x_0 (mean MU (1 - 1/r), variance
    (1 + sigma_max^2) / r^2, r = sqrt((S^2 + sigma_max^2) / (S^2 + sigma_min^2))). Averaged over
    dequantization draws, its bits/dim must give the probability of the integer data under that density,
    up to the tiny Jensen gap of a smooth density across a bin; the two conventions' offsets differ by 0.0056
    and a half-bin shift by about 0.01 bits/dim, far outside the tolerance."""
    sigmas = sigmas_of("linear")
    shape, n, draws = (3, 32, 32), 4, 2
    D = math.prod(shape)
    smin, smax = float(sigmas[0]), float(sigmas[-1])
    r = math.sqrt((S**2 + smax**2) / (S**2 + smin**2))
    mean, var = MU * (1 - 1 / r), (1 + smax**2) / r**2
    g = np.random.default_rng(11)
    center = 127.5 * (mean + 1.0)
    v_np = np.clip(np.round(center + 64 + 20 * g.standard_normal((n, *shape))), 0, 255).astype(np.uint8)
    v = torch.from_numpy(v_np)
    index = torch.arange(n)
    bpd = []
    for d in range(draws):
        x0 = dequantize(v, dequantization_noise(12, index, d, shape), convention)
        res = solve(gaussian_oracle(sigmas), x0, sigmas,
                                 probe=divergence_probe(12, index, d, shape), network_dtype=torch.float64)
        parts = bits_per_dim_parts(res, D, convention)
        torch.testing.assert_close(parts[BPD], parts[PRIOR_BPD] + parts[DIVERGENCE_BPD] + parts[DEQUANTIZATION_BPD],
                                   rtol=0, atol=1e-12)
        assert bool((parts[DEQUANTIZATION_BPD] == bits_per_dim_offset(convention)).all())
        bpd.append(parts[BPD].numpy())
    bpd = np.stack(bpd)  # (draws, n)
    expected = discrete_bits_per_dim(v_np, convention, mean, var)
    diff = bpd.mean(0) - expected
    se = bpd.std(0, ddof=1).max() / math.sqrt(draws)
    # solver error (3e-5 at D = 3072, rtol 1e-5) + Jensen gap (~2e-5) + 4 standard errors of the draws
    assert np.abs(diff).max() < 1e-3 + 4 * se, (diff, se)
    assert 4 * se < 1e-3


def test_dequantization_conventions_and_offsets():
    v = torch.tensor([0, 1, 128, 255], dtype=torch.uint8).reshape(1, 1, 2, 2)
    zero, half = torch.zeros(v.shape, dtype=torch.float64), torch.full(v.shape, 0.5, dtype=torch.float64)
    torch.testing.assert_close(dequantize(v, half, "ddpm-bench"), v.double() / 127.5 - 1, rtol=0, atol=1e-15)
    assert float(dequantize(v, zero, "ddpm-bench").min()) == pytest.approx(-1 - 0.5 / 127.5)
    torch.testing.assert_close(dequantize(v, zero, "score-sde"), v.double() / 128 - 1, rtol=0, atol=1e-15)
    assert bits_per_dim_offset("ddpm-bench") == pytest.approx(6.994353436858858, abs=1e-12)
    assert bits_per_dim_offset("score-sde") == 7.0
    with pytest.raises(ValueError, match="dequantization"):
        dequantize(v, zero, "floor")
    with pytest.raises(ValueError, match="uint8"):
        dequantize(v.double(), zero, "ddpm-bench")


# ------------------------------------------------------------------------------------------- noise purity


def test_probe_and_dequantization_noise_are_pure_functions_of_seed_image_and_draw():
    shape = (3, 4, 4)
    index = torch.tensor([3, 11, 7, 0])
    for make in (dequantization_noise,
                 lambda *a: divergence_probe(*a, kind="rademacher"),
                 lambda *a: divergence_probe(*a, kind="gaussian")):
        batch = make(5, index, 2, shape)
        assert batch.shape == (4, *shape) and batch.dtype == torch.float64
        for row, j in enumerate(index.tolist()):
            assert torch.equal(make(5, torch.tensor([j]), 2, shape)[0], batch[row])
        assert torch.equal(make(5, index.flip(0), 2, shape), batch.flip(0))
        assert not torch.equal(make(5, index, 3, shape), batch)  # another draw
        assert not torch.equal(make(6, index, 2, shape), batch)  # another seed
        assert not torch.equal(batch[0], batch[1])  # another image
    u = dequantization_noise(5, torch.arange(64), 0, shape)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0 and abs(float(u.mean()) - 0.5) < 0.02
    z = divergence_probe(5, torch.arange(64), 0, shape, "rademacher")
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    # the two purposes draw different noise, and neither is the bound's (j, term, draw) noise
    g = divergence_probe(5, index, 2, shape, "gaussian")
    assert not torch.equal(torch.special.ndtr(g), dequantization_noise(5, index, 2, shape))
    bound_keys = torch.stack([index, torch.full_like(index, 2), torch.zeros_like(index)], 1)
    assert not torch.equal(g, counter_normal(5, bound_keys, shape))
