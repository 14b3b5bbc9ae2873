import numpy as np
import pytest

from ddpm_bench.diffusion import fixed_logvar
from ddpm_bench.schedule import make_betas, make_schedule, respace_betas, space_timesteps


def test_linear_schedule_matches_the_official_definition():
    s = make_schedule("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    post = betas * (1 - abar_prev) / (1 - abar)
    assert s.betas.dtype.is_floating_point and s.betas.numpy().dtype == np.float64
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), abar, rtol=1e-13)
    np.testing.assert_allclose(s.posterior_variance.numpy(), post, rtol=1e-12)
    np.testing.assert_allclose(s.posterior_log_variance_clipped.numpy(), np.log(np.append(post[1], post[1:])), rtol=1e-12)
    np.testing.assert_allclose(s.posterior_mean_coef1.numpy(), betas * np.sqrt(abar_prev) / (1 - abar), rtol=1e-12)
    np.testing.assert_allclose(s.posterior_mean_coef2.numpy(), (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar), rtol=1e-12)
    large = fixed_logvar(s, "fixed-large").numpy()
    np.testing.assert_allclose(large, np.log(np.append(post[1], betas[1:])), rtol=1e-12)


@pytest.mark.parametrize("name", ["linear", "quad", "const", "cosine", "jsd"])
def test_every_schedule_is_valid(name):
    b = make_betas(name, 100)
    assert b.dtype == np.float64 and b.shape == (100,) and np.all((b > 0) & (b <= 1))


def test_cosine_schedule_is_clipped_and_jsd_ends_at_one():
    assert make_betas("cosine", 1000).max() == pytest.approx(0.999)
    assert make_betas("jsd", 10)[-1] == 1.0


def test_respacing_keeps_alpha_bar_at_the_kept_steps():
    s = make_schedule("linear", 1000)
    kept = space_timesteps(1000, 50)
    assert len(kept) == 50 and kept[0] == 0 and kept[-1] == 999
    abar = s.alphas_cumprod.numpy()
    new = np.cumprod(1 - respace_betas(abar, kept))
    np.testing.assert_allclose(new, abar[kept], rtol=1e-12)
    assert space_timesteps(1000, 1000) == list(range(1000))
