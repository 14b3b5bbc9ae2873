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


def _reference_space_timesteps(T: int, K: int) -> list[int]:
    """improved-diffusion's `space_timesteps(T, [K])` as its code does it (read, not copied): the position
    accumulated in floating point, stride (T - 1) / (K - 1), rounded half to even."""
    stride, position, kept = (T - 1) / (K - 1) if K > 1 else 1, 0.0, []
    for _ in range(K):
        kept.append(round(position))
        position += stride
    return sorted(set(kept))


def test_respacing_keeps_exactly_the_timesteps_improved_diffusion_keeps():
    # reference values (improved-diffusion's rule): half to even, and the accumulated position's rounding
    assert space_timesteps(10, 4) == [0, 3, 6, 9]
    assert space_timesteps(100, 7) == [0, 16, 33, 50, 66, 82, 99]
    assert space_timesteps(1000, 21)[10] == 499  # round(10 * 49.95) would keep 500
    assert space_timesteps(1000, 21)[:3] == [0, 50, 100] and space_timesteps(1000, 21)[-1] == 999
    for T in (20, 100, 1000, 4000):
        for K in range(1, T + 1, max(1, T // 97)):
            assert space_timesteps(T, K) == _reference_space_timesteps(T, K), (T, K)
    # the rule of 0.1 (round(i * stride)) differs for 278 of the 1000 values of K at T = 1000
    old = [K for K in range(2, 1001) if sorted({round(i * (999 / (K - 1))) for i in range(K)}) != space_timesteps(1000, K)]
    assert len(old) == 278 and 21 in old
