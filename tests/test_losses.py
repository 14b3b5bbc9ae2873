"""Training objectives: closed-form zeros for a perfect network, and the bound terms against the
Gaussian helpers they are built from."""

import math

import pytest
import torch

from ddpm_bench.diffusion import DiffusionConfig, q_posterior_logvar, q_posterior_mean, q_sample
from ddpm_bench.gaussian import discretized_gaussian_log_likelihood
from ddpm_bench.losses import training_loss


def batch(T=50, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 256, (n, 3, 4, 4), generator=g).double() / 127.5 - 1
    noise = torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64)
    i = torch.tensor([0, 1, 2, T // 2, T - 2, T - 1])[:n]
    return x0, noise, i


def test_perfect_eps_network_has_zero_simple_loss_and_zero_kl_with_the_posterior_variance():
    cfg = DiffusionConfig(T=50, var_type="fixed-small")
    s = cfg.schedule()
    x0, noise, i = batch()
    xt = q_sample(s, x0, i, noise)
    assert torch.equal(training_loss("L_simple", cfg, s, noise, x0, xt, i, noise), torch.zeros(6, dtype=torch.float64))
    kl = training_loss("L", cfg, s, noise, x0, xt, i, noise)
    assert torch.all(kl[1:].abs() < 1e-9)  # KL(q || p) = 0 when p is the posterior (t > 1)
    assert kl[0] > 0  # the decoder term L_0 is a positive NLL


def test_perfect_mu_network_with_learned_posterior_variance_has_zero_bound_terms():
    cfg = DiffusionConfig(T=50, mean_type="mu", var_type="learned")
    s = cfg.schedule()
    x0, noise, i = batch()
    xt = q_sample(s, x0, i, noise)
    mu = q_posterior_mean(s, x0, xt, i)
    out = torch.cat([mu, q_posterior_logvar(s, i, 4).expand_as(mu)], dim=1)
    assert torch.all(training_loss("mse", cfg, s, out[:, :3], x0, xt, i, noise) == 0)
    assert torch.all(training_loss("L", cfg, s, out, x0, xt, i, noise)[1:].abs() < 1e-9)


def test_decoder_term_is_the_discretised_gaussian_nll_in_bits_per_dim():
    cfg = DiffusionConfig(T=50, mean_type="x0", var_type="fixed-large")
    s = cfg.schedule()
    x0, noise, i = batch()
    xt = q_sample(s, x0, i, noise)
    out = (x0 + 0.01 * noise)  # an x0 prediction
    got = training_loss("L", cfg, s, out, x0, xt, i, noise)[0]
    mean = q_posterior_mean(s, out.clamp(-10, 10), xt, i)[0]
    logvar = math.log(s.posterior_variance[1].item())  # fixed-large entry 0
    want = -discretized_gaussian_log_likelihood(x0[0], mean, torch.full_like(mean, 0.5 * logvar)).mean() / math.log(2)
    assert torch.allclose(got, want, rtol=1e-12)


def test_bound_gradients_reach_a_learned_variance():
    cfg = DiffusionConfig(T=50, var_type="learned")
    s = cfg.schedule()
    x0, noise, i = batch()
    xt = q_sample(s, x0, i, noise)
    out = torch.zeros(6, 6, 4, 4, dtype=torch.float32, requires_grad=True)
    training_loss("L", cfg, s, out, x0, xt, i, noise).sum().backward()
    assert out.grad[:, 3:].abs().sum() > 0 and out.grad[:, :3].abs().sum() > 0


def test_the_training_decoder_cdf_is_a_recipe_key_official_in_the_table2_recipes(tmp_path):
    """`training.decoder_cdf`: the L objective's L_0 with the exact CDF or the official tanh one (1e-12
    floor). At initialisation a mu model's L_0 is thousands of bits/dim exactly, tens with the floor."""
    from ddpm_bench.config import load_recipe
    from ddpm_bench.diffusion import DiffusionConfig, q_sample
    from ddpm_bench.errors import ConfigError
    from ddpm_bench.losses import training_loss

    for name in ("table2_eps_L_fixed", "table2_eps_L_learned", "table2_mu_L_fixed", "table2_mu_L_learned",
                 "cifar10_L_fixed"):
        assert load_recipe(f"recipes/{name}.toml").training.decoder_cdf == "tanh", name
    assert load_recipe("recipes/tiny.toml").training.decoder_cdf == "exact"
    bad = tmp_path / "bad.toml"
    bad.write_text('[training]\ndecoder_cdf = "erf"\n')
    with pytest.raises(ConfigError, match="decoder_cdf"):
        load_recipe(bad)
    cfg = DiffusionConfig(T=20, mean_type="mu")
    s = cfg.schedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    output = torch.randn(4, 3, 8, 8, generator=g) * 3  # far from the data: deep in the tails of the CDF
    for k, differs in ((0, True), (5, False)):
        i = torch.full((4,), k)
        xt = q_sample(s, x0, i, noise)
        exact = training_loss("L", cfg, s, output, x0, xt, i, noise, "exact")
        tanh = training_loss("L", cfg, s, output, x0, xt, i, noise, "tanh")
        assert bool((exact > tanh + 1).all()) if differs else torch.equal(exact, tanh)


def test_mean_type_v_gives_the_bound_of_the_same_denoiser_and_trains_on_v(tmp_path):
    """v-prediction (Salimans and Ho 2022): the oracle denoiser written as v has the bound of the same oracle
    written as eps; the training target is sqrt(abar) eps - sqrt(1 - abar) x_0; diffusers' v_prediction maps."""
    import json

    import numpy as np

    from ddpm_bench.cli import main
    from ddpm_bench.diffusion import v_target
    from ddpm_bench.models.formats.diffusers_dir import diffusion_from_scheduler
    from tests.plugins import ORACLE_IMAGE

    np.savez(tmp_path / "x.npz", ORACLE_IMAGE)
    terms = {}
    for mean_type, plugin in (("eps", "oracle_eps_T20"), ("v", "oracle_v_T20")):
        out = tmp_path / mean_type
        assert main(["nll", "--model", f"tests/plugins.py:{plugin}", "--T", "20", "--mean-type", mean_type,
                     "--data", str(tmp_path / "x.npz"), "--no-progress", "--out", str(out)]) == 0
        terms[mean_type] = np.load(out / "per_image.npz")["terms"]
        assert json.loads((out / "summary.json").read_text())["mean_type"] == mean_type
    np.testing.assert_allclose(terms["v"], terms["eps"], rtol=1e-4, atol=1e-6)
    cfg = DiffusionConfig(T=20, mean_type="v")
    s = cfg.schedule()
    x0 = torch.rand(3, 3, 4, 4, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    i = torch.tensor([0, 7, 19])
    xt = q_sample(s, x0, i, eps)
    target = v_target(s, x0, i, eps)
    assert float(training_loss("L_simple", cfg, s, target.float().double(), x0, xt, i, eps).max()) < 1e-12
    assert diffusion_from_scheduler({"prediction_type": "v_prediction"}, "s").mean_type == "v"


def test_diffusers_clip_settings_are_refused_or_warned_about():
    from ddpm_bench.arguments import on_command_line
    from ddpm_bench.errors import CheckpointError
    from ddpm_bench.messages import DdpmBenchWarning
    from ddpm_bench.models.formats.diffusers_dir import diffusion_from_scheduler

    with pytest.raises(CheckpointError, match="clip_sample_range 2.0 is not supported"):
        diffusion_from_scheduler({"clip_sample_range": 2.0}, "scheduler_config.json")
    with pytest.warns(DdpmBenchWarning, match="clip_sample is false: .* pass clip=False"):
        diffusion_from_scheduler({"clip_sample": False, "clip_sample_range": 2.0}, "scheduler_config.json")
    with on_command_line(), pytest.warns(DdpmBenchWarning, match="pass --no-clip"):
        diffusion_from_scheduler({"clip_sample": False}, "scheduler_config.json")


# ---------------------------------------------------------------------------------------------- continuous time

def gaussian_oracle_eps(z, gamma, mu, s):
    """The exact eps prediction for data N(mu, s^2) per dimension: sigma (z - alpha mu) / (alpha^2 s^2 + sigma^2)."""
    a2, s2 = torch.sigmoid(-gamma).reshape(-1, 1, 1, 1), torch.sigmoid(gamma).reshape(-1, 1, 1, 1)
    return s2.sqrt() * (z - a2.sqrt() * mu) / (a2 * s * s + s2)


def exact_diffusion_bpd(x, gamma_min, gamma_max, mu, s, n=200_001):
    """(N,) (1/2) integral over gamma of E_eps ||eps - eps_hat||^2 in bits/dim for the oracle above, by
    Simpson's rule (per dimension E (eps - eps_hat)^2 = (alpha^4 s^4 + sigma^2 alpha^2 (x - mu)^2) /
    (alpha^2 s^2 + sigma^2)^2)."""
    g = torch.linspace(gamma_min, gamma_max, n, dtype=torch.float64)
    a2, s2 = torch.sigmoid(-g)[:, None], torch.sigmoid(g)[:, None]
    sq = ((x.reshape(x.shape[0], -1) - mu) ** 2)[None]  # (1, N, D)
    f = ((a2 * a2 * s ** 4)[..., None] + (s2 * a2)[..., None] * sq) / ((a2 * s * s + s2) ** 2)[..., None]
    f = f.sum(dim=2)  # (n, N): E ||eps - eps_hat||^2
    w = torch.ones(n, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    integral = (w[:, None] * f).sum(dim=0) * (gamma_max - gamma_min) / (n - 1) / 3.0
    return 0.5 * integral / (sq.shape[2] * math.log(2.0))


class QuadraticSchedule:
    """gamma(t) = -12 + 16 t^2 on t in [0.25, 1]: a gamma'(t) that changes with t and t_max - t_min != 1 (the
    schedules with such, vp-linear and cosine, have a gamma'(t) that grows like 1/t at their ends, too rough
    for a Monte Carlo test of this size)."""

    t_min, t_max = 0.25, 1.0

    def gamma(self, t):
        return -12.0 + 16.0 * t * t

    def dgamma_dt(self, t):
        return 32.0 * t


@pytest.mark.parametrize("schedule", ["vdm-linear", "quadratic"])
def test_vdm_loss_expectation_over_t_is_half_the_integral_over_gamma_for_gaussian_data(schedule):
    """VDM's continuous-time loss with the exact eps_hat of Gaussian data: its mean over t ~ U[t_min, t_max] and
    eps is (1/2) integral of E||eps - eps_hat||^2 dgamma (SPEC section 8's closed form), within 4 standard
    errors of 8,000 draws per image."""
    from ddpm_bench.losses import diffuse, vdm_diffusion_loss
    from ddpm_bench.noise_level import continuous_schedule

    sched = QuadraticSchedule() if schedule == "quadratic" else continuous_schedule(schedule)
    mu, s, images, draws = 0.1, 0.5, 3, 8000
    g = torch.Generator().manual_seed(0)
    x = (mu + s * torch.randn(images, 3, 4, 4, generator=g, dtype=torch.float64))
    x[0] = mu  # an image at the mean, one far from it
    x[1] = mu + 2.5 * s
    xs = x.repeat_interleave(draws, dim=0)
    t = sched.t_min + (sched.t_max - sched.t_min) * torch.rand(xs.shape[0], generator=g, dtype=torch.float64)
    eps = torch.randn(xs.shape, generator=g, dtype=torch.float64)
    gamma = sched.gamma(t)
    z = diffuse(xs, gamma, eps)
    loss = vdm_diffusion_loss(eps, gaussian_oracle_eps(z, gamma, mu, s), sched.dgamma_dt(t),
                              sched.t_max - sched.t_min).reshape(images, draws)
    mean, stderr = loss.mean(dim=1), loss.std(dim=1) / math.sqrt(draws)
    lo, hi = float(sched.gamma(torch.tensor(sched.t_min))), float(sched.gamma(torch.tensor(sched.t_max)))
    want = exact_diffusion_bpd(x, lo, hi, mu, s)
    assert torch.all((mean - want).abs() < 4 * stderr), (mean, want, stderr)
    assert torch.all(stderr < 0.03 * want)  # precise enough that a wrong factor (a missing 1/2, ln 2, t_span) fails


def test_vdm_loss_is_zero_for_a_perfect_network_and_half_gamma_prime_times_the_squared_error():
    from ddpm_bench.losses import vdm_diffusion_loss

    eps = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dg = torch.tensor([18.3, 2.0], dtype=torch.float64)
    assert torch.equal(vdm_diffusion_loss(eps, eps, dg), torch.zeros(2, dtype=torch.float64))
    got = vdm_diffusion_loss(eps, torch.zeros_like(eps, dtype=torch.float32), dg, 0.5)
    want = 0.5 * 0.5 * dg * eps.square().sum(dim=(1, 2, 3)) / (48 * math.log(2.0))
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)


def test_diffuse_is_alpha_x_plus_sigma_eps_and_variance_preserving():
    from ddpm_bench.losses import diffuse

    x = torch.full((1, 1, 2, 2), 0.3, dtype=torch.float64)
    eps = torch.full((1, 1, 2, 2), -1.2, dtype=torch.float64)
    gamma = torch.tensor([0.7], dtype=torch.float64)
    a2 = 1.0 / (1.0 + math.exp(0.7))
    torch.testing.assert_close(diffuse(x, gamma, eps), math.sqrt(a2) * x + math.sqrt(1.0 - a2) * eps, rtol=1e-15, atol=0)
