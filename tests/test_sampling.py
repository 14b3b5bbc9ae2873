"""The sampler (ddpm_bench.sampling): Algorithm 2, per-sample seeding, respacing, progressive output, uint8."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_bench.diffusion import MEAN_TYPES, VAR_TYPES, DiffusionConfig, fixed_logvar, q_posterior_mean
from ddpm_bench.errors import ModelOutputError, UserError
from ddpm_bench.noise import counter_normal
from ddpm_bench.sampling import (
    PURPOSE_PRIOR,
    PURPOSE_STEP,
    SamplerOptions,
    SamplingProcess,
    draw_samples,
    sample_noise,
    sampling_process,
    to_uint8,
)
from ddpm_bench.schedule import respace_betas, schedule_from_betas, space_timesteps
from tests.plugins import as_network
from tests.sampling_plugins import TinyConv, nan_if_bright


def draw(net, process, indices, seed, shape, clip=True, progressive_every=None, sampler="ancestral", eta=0.0):
    """draw_samples with a test's network (wrapped with the process's diffusion) and these sampler options."""
    return draw_samples(as_network(net, process.diffusion), process, indices, shape,
                        SamplerOptions(seed=seed, clip=clip, sampler=sampler, eta=eta), progressive_every)

SHAPE = (3, 8, 8)


def tiny(T: int, out_channels: int | None = None) -> TinyConv:
    torch.manual_seed(0)
    return TinyConv(out_channels=out_channels, T=T).eval()


def run(net, cfg: DiffusionConfig, n: int, batch: int, seed: int = 0, steps=None, clip=True, start: int = 0):
    process = sampling_process(cfg, steps)
    idx = torch.arange(start, start + n, dtype=torch.int64)
    return torch.cat([draw(net, process, idx[b: b + batch], seed, SHAPE, clip=clip).x0
                      for b in range(0, n, batch)])


def test_same_seed_and_number_give_the_same_image_for_any_batch_size():
    cfg = DiffusionConfig(T=20)
    net = tiny(20)
    images = [to_uint8(run(net, cfg, 8, b)) for b in (1, 3, 8)]
    assert images[0].shape == (8, 8, 8, 3) and images[0].dtype == np.uint8
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])
    # sample j does not depend on which other samples are computed: 5..7 alone equal 5..7 of 0..7
    assert np.array_equal(to_uint8(run(net, cfg, 3, 3, start=5)), images[0][5:])
    # and the seed matters
    assert not np.array_equal(to_uint8(run(net, cfg, 8, 8, seed=1)), images[0])


def test_noise_keys_are_seed_sample_step_purpose():
    idx = torch.tensor([4, 9])
    want = counter_normal(7, torch.tensor([[4, 12, PURPOSE_STEP], [9, 12, PURPOSE_STEP]]), SHAPE)
    assert torch.equal(sample_noise(7, idx, 12, PURPOSE_STEP, SHAPE), want)
    assert not torch.equal(sample_noise(7, idx, 12, PURPOSE_PRIOR, SHAPE), want)


def test_to_uint8_rounds_instead_of_truncating():
    # (x + 1) * 127.5 = 0.6 -> 1 (truncation: 0); 254.6 -> 255 (truncation: 254); 127.4 -> 127; out of range clips
    v = torch.tensor([0.6, 254.6, 127.4, 3.0, -7.0, 300.0], dtype=torch.float64)
    x = (v / 127.5 - 1.0).reshape(1, 1, 1, 6)
    got = to_uint8(x)
    assert got.shape == (1, 1, 6, 1)
    assert got[0, 0, :, 0].tolist() == [1, 255, 127, 3, 0, 255]
    # layout: NCHW in, NHWC out
    y = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    y[:, 1] = 1.0
    out = to_uint8(y)
    assert out.shape == (2, 4, 5, 3) and (out[..., 1] == 255).all() and (out[..., 0] == 128).all()


def point_mass_oracle(cfg: DiffusionConfig, c: torch.Tensor, var_out: float | None = None):
    """The exact denoiser of a data distribution that is a point mass at c, for each mean type."""
    s = cfg.schedule()

    def net(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        ab = s.alphas_cumprod[i].reshape(-1, 1, 1, 1)
        c_b = c.expand_as(x)
        if cfg.mean_type == "eps":
            out = (x - ab.sqrt() * c_b) / (1 - ab).sqrt()
        elif cfg.mean_type == "x0":
            out = c_b.clone()
        elif cfg.mean_type == "v":
            out = ab.sqrt() * (x - ab.sqrt() * c_b) / (1 - ab).sqrt() - (1 - ab).sqrt() * c_b
        else:
            out = q_posterior_mean(s, c_b, x, i)
        if cfg.learned_variance:
            out = torch.cat([out, torch.full_like(out, var_out)], dim=1)
        return out.to(torch.float32)

    return net


@pytest.mark.parametrize("var_type", VAR_TYPES)
@pytest.mark.parametrize("mean_type", MEAN_TYPES)
def test_point_mass_oracle_reproduces_the_point(mean_type, var_type):
    """For data that is a point mass at c the exact x0 prediction is c at every step, and the last step
    adds no noise and has mean coef1 c + 0 * x_1 = c: the samples are c whatever the noise, for every
    mean and variance type (up to the float32 network output)."""
    cfg = DiffusionConfig(T=30, mean_type=mean_type, var_type=var_type)
    g = torch.Generator().manual_seed(3)
    c_u8 = torch.randint(0, 256, (1, *SHAPE), generator=g)
    c = c_u8.to(torch.float64) / 127.5 - 1.0
    var_out = {"learned": -6.0, "learned-range": 0.3}.get(var_type)
    net = point_mass_oracle(cfg, c, var_out)
    res = draw(net, sampling_process(cfg), torch.arange(4), 0, SHAPE, progressive_every=7)
    assert (res.x0 - c).abs().max() < 1e-4
    assert np.array_equal(to_uint8(res.x0), np.repeat(c_u8.permute(0, 2, 3, 1).numpy().astype(np.uint8), 4, 0))
    assert (res.progressive - c[:, None]).abs().max() < 1e-3  # x0_hat(x_t) = c at every recorded t
    if mean_type != "mu":
        res = draw(net, sampling_process(cfg, 7), torch.arange(2), 0, SHAPE)
        assert (res.x0 - c).abs().max() < 1e-4


@pytest.mark.parametrize("var_type", ["fixed-large", "fixed-small"])
def test_matches_algorithm_2_written_out(var_type):
    """Without clipping, the eps sampler is the paper's Algorithm 2:
    x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sigma_t z, sigma_t^2 = beta_t or beta-tilde_t."""
    T = 20
    cfg = DiffusionConfig(T=T, var_type=var_type)
    net = tiny(T)
    betas = np.linspace(1e-4, 0.02, T)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    sigma2 = betas if var_type == "fixed-large" else betas * (1 - abar_prev) / (1 - abar)
    j = torch.arange(3)
    keys = lambda step, purpose: torch.stack([j, torch.full_like(j, step), torch.full_like(j, purpose)], 1)  # noqa: E731
    x = counter_normal(5, keys(T, 0), SHAPE)
    with torch.no_grad():
        for t in range(T, 0, -1):
            eps = net(x.float(), torch.full((3,), t - 1)).double()
            x = (x - betas[t - 1] / np.sqrt(1 - abar[t - 1]) * eps) / np.sqrt(1 - betas[t - 1])
            if t > 1:
                x = x + np.sqrt(sigma2[t - 1]) * counter_normal(5, keys(t - 1, 1), SHAPE)
    got = draw(net, sampling_process(cfg), j, 5, SHAPE, clip=False).x0
    assert torch.allclose(got, x, rtol=0, atol=1e-5), (got - x).abs().max()


@pytest.mark.parametrize("steps", [None, 6])
def test_learned_range_at_its_ends_is_the_fixed_variances(steps):
    """learned-range with v = 1 is log beta_t (fixed-large; the i = 0 entries differ but no noise is added
    there) and with v = 0 the clipped posterior log-variance (fixed-small): bit-identical samples."""
    T = 24
    eps_net = tiny(T)

    def with_var(r: float):
        return lambda x, i: torch.cat([eps_net(x, i), torch.full_like(x, r)], dim=1)

    for r, fixed in ((1.0, "fixed-large"), (-1.0, "fixed-small")):
        a = draw(with_var(r), sampling_process(DiffusionConfig(T=T, var_type="learned-range"), steps),
                             torch.arange(3), 2, SHAPE).x0
        b = draw(eps_net, sampling_process(DiffusionConfig(T=T, var_type=fixed), steps),
                             torch.arange(3), 2, SHAPE).x0
        assert torch.equal(a, b)


@pytest.mark.parametrize("steps", [10, 50, 250, 999])
def test_respacing_keeps_alpha_bar_at_the_kept_steps(steps):
    T = 1000
    cfg = DiffusionConfig(T=T)
    full = cfg.schedule()
    p = sampling_process(cfg, steps)
    use = p.timesteps
    assert p.steps == steps and use[0] == 0 and use[-1] == T - 1 and bool((use[1:] > use[:-1]).all())
    assert torch.allclose(p.schedule.alphas_cumprod, full.alphas_cumprod[use], rtol=1e-12, atol=0)
    # betas of the shorter process: 1 - abar_{t_k} / abar_{t_{k-1}}; fixed variances follow them
    want_betas = 1 - full.alphas_cumprod[use[1:]] / full.alphas_cumprod[use[:-1]]
    assert torch.allclose(p.schedule.betas[1:], want_betas, rtol=1e-10, atol=0)
    assert torch.allclose(fixed_logvar(p.schedule, "fixed-large")[1:], torch.log(want_betas), rtol=1e-10, atol=0)
    # strides as even as integers allow
    gaps = (use[1:] - use[:-1]).tolist()
    assert max(gaps) - min(gaps) <= 1


def test_respaced_sampler_calls_the_network_with_original_indices():
    T, steps = 40, 9
    cfg = DiffusionConfig(T=T)
    calls = []
    base = tiny(T)

    def net(x, i):
        calls.append(int(i[0]))
        assert bool((i == i[0]).all())
        return base(x, i)

    draw(net, sampling_process(cfg, steps), torch.arange(2), 0, SHAPE)
    assert calls == sorted(space_timesteps(T, steps), reverse=True)


def test_steps_equal_to_T_is_the_full_sampler():
    T = 25
    cfg = DiffusionConfig(T=T)
    net = tiny(T)
    full = sampling_process(cfg)
    same = sampling_process(cfg, T)
    assert torch.equal(same.timesteps, full.timesteps) and torch.equal(same.schedule.betas, full.schedule.betas)
    a = draw(net, full, torch.arange(4), 1, SHAPE).x0
    assert torch.equal(draw(net, same, torch.arange(4), 1, SHAPE).x0, a)
    # the respacing formula with every step kept recovers the original betas, hence the same samples
    all_steps = schedule_from_betas(respace_betas(full.schedule.alphas_cumprod.numpy(), list(range(T))))
    assert torch.allclose(all_steps.betas, full.schedule.betas, rtol=1e-12, atol=0)
    b = draw(net, SamplingProcess(cfg, all_steps, full.timesteps), torch.arange(4), 1, SHAPE).x0
    assert torch.allclose(a, b, rtol=0, atol=1e-6)
    assert np.array_equal(to_uint8(a), to_uint8(b))


def test_mu_models_refuse_respacing():
    with pytest.raises(ValueError, match="eps or x0"):
        sampling_process(DiffusionConfig(T=20, mean_type="mu"), 5)


def test_progressive_columns():
    T, every = 20, 6
    net = tiny(T)
    res = draw(net, sampling_process(DiffusionConfig(T=T)), torch.arange(2), 0, SHAPE,
                           progressive_every=every)
    want_t = [k + 1 for k in reversed(range(T)) if k % every == 0]  # 19, 13, 7, 1
    assert res.progressive_t.tolist() == want_t
    assert res.progressive.shape == (2, len(want_t), *SHAPE)
    assert torch.equal(res.progressive[:, -1], res.x0)  # the x0 prediction at t = 1 is the sample
    assert res.progressive.abs().max() <= 1.0  # clipped


def test_non_finite_output_names_the_samples():
    cfg = DiffusionConfig(T=10)
    idx = torch.arange(40)
    x_T = sample_noise(0, idx, cfg.T, PURPOSE_PRIOR, SHAPE)
    bad = idx[x_T[:, 0, 0, 0].float() > 1.0].tolist()
    assert bad  # about 16% of the samples
    with pytest.raises(ModelOutputError) as e:
        draw(nan_if_bright, sampling_process(cfg), idx, 0, SHAPE)
    assert ", ".join(map(str, bad[:10])) in str(e.value)


def test_wrong_output_shape_is_a_model_error():
    cfg = DiffusionConfig(T=10, var_type="learned")
    with pytest.raises(ModelOutputError, match="shape"):
        draw(tiny(10), sampling_process(cfg), torch.arange(2), 0, SHAPE)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_the_one_image_oracle_returns_that_image(eta):
    """The exact denoiser of a point mass: DDIM's x0 prediction is the image at every step, so any eta and
    any respacing end on it."""
    from tests.plugins import ORACLE_IMAGE, oracle_eps_T20

    cfg = DiffusionConfig(T=20)
    for steps in (None, 7):
        res = draw(oracle_eps_T20(), sampling_process(cfg, steps), torch.arange(3), 0, (3, 8, 8),
                               sampler="ddim", eta=eta)
        assert (to_uint8(res.x0) == ORACLE_IMAGE[0]).all()


def test_ddim_eta_0_is_deterministic_given_x_T_and_differs_from_ancestral():
    from tests.sampling_plugins import tiny_conv

    cfg, net = DiffusionConfig(T=20), tiny_conv()
    proc = sampling_process(cfg, 10)
    a = draw(net, proc, torch.arange(4), 5, (3, 8, 8), sampler="ddim")
    b = draw(net, proc, torch.arange(4), 5, (3, 8, 8), sampler="ddim", eta=0.0)
    c = draw(net, proc, torch.arange(4), 5, (3, 8, 8))
    assert torch.equal(a.x0, b.x0) and not torch.equal(a.x0, c.x0)
    with pytest.raises(UserError, match="eta= goes with sampler='ddim'"):
        SamplerOptions(eta=0.5)
