import math

import numpy as np
import pytest
import scipy.special as sp
import torch

from ddpm_bench.gaussian import discretized_gaussian_log_likelihood, log_normal_cdf_diff, normal_kl

GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0


@pytest.mark.parametrize("mean", [-1.3, -1.0, -0.5, 0.0, 0.37, 0.999, 1.2])
@pytest.mark.parametrize("log_scale", [-9.0, -5.0, -2.0, 0.0, 1.5])
def test_decoder_probabilities_over_the_256_bins_sum_to_one(mean, log_scale):
    lp = discretized_gaussian_log_likelihood(GRID, torch.full_like(GRID, mean), torch.full_like(GRID, log_scale))
    assert torch.all(torch.isfinite(lp))
    assert abs(torch.exp(lp).sum().item() - 1.0) < 1e-12


def test_decoder_exact_matches_scipy_and_has_no_floor_in_the_tails():
    means = torch.tensor([0.0, 0.5, -0.9, 0.0], dtype=torch.float64)
    x = torch.tensor([0.0, -0.5, 0.9, 0.0], dtype=torch.float64)  # the last two far in a tail
    log_scales = torch.tensor([-3.0, -6.0, -6.0, -1.0], dtype=torch.float64)
    lp = discretized_gaussian_log_likelihood(x, means, log_scales)
    sig = np.exp(log_scales.numpy())
    lo, hi = (x.numpy() - means.numpy() - 1 / 255) / sig, (x.numpy() - means.numpy() + 1 / 255) / sig
    # reference: log(Phi(hi) - Phi(lo)) through the complementary side where both are in the upper tail
    ref = np.where(lo > 0, sp.log_ndtr(-lo) + np.log1p(-np.exp(sp.log_ndtr(-hi) - sp.log_ndtr(-lo))),
                   sp.log_ndtr(hi) + np.log1p(-np.exp(sp.log_ndtr(lo) - sp.log_ndtr(hi))))
    np.testing.assert_allclose(lp.numpy(), ref, rtol=1e-12)
    assert lp[1] < math.log(1e-12) and lp[2] < math.log(1e-12)  # below the official floor, still exact


def test_decoder_tanh_mode_reproduces_the_official_floor():
    x = torch.tensor([0.0, -0.5], dtype=torch.float64)
    lp = discretized_gaussian_log_likelihood(x, torch.tensor([0.0, 0.5], dtype=torch.float64),
                                             torch.tensor([-3.0, -6.0], dtype=torch.float64), cdf="tanh")
    assert lp[1].item() == pytest.approx(math.log(1e-12), rel=1e-12)
    a = math.exp(3.0) / 255
    approx = lambda z: 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))  # noqa: E731
    assert lp[0].item() == pytest.approx(math.log(approx(a) - approx(-a)), rel=1e-12)


def test_log_normal_cdf_diff_both_tails():
    lo = torch.tensor([-40.0, 38.0, -1.0, 5.0], dtype=torch.float64)
    hi = torch.tensor([-39.9, 38.1, 1.0, 5.0 + 1e-9], dtype=torch.float64)
    got = log_normal_cdf_diff(lo, hi).numpy()
    assert np.all(np.isfinite(got))
    assert got[2] == pytest.approx(math.log(math.erf(1 / math.sqrt(2))), rel=1e-14)
    # symmetric intervals have equal mass
    assert got[0] == pytest.approx(log_normal_cdf_diff(-hi[:1], -lo[:1]).item(), rel=1e-12)
    # a narrow interval: mass ~ width * density
    assert got[3] == pytest.approx(math.log(1e-9) - 12.5 - 0.5 * math.log(2 * math.pi), abs=1e-6)


def test_normal_kl_is_nonnegative_and_zero_only_for_equal_gaussians():
    g = torch.Generator().manual_seed(0)
    m1, m2, v1, v2 = (torch.randn(10000, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    kl = normal_kl(m1, v1, m2, v2)
    assert torch.all(kl >= 0)
    assert torch.all(normal_kl(m1, v1, m1, v1) == 0)
    # closed form of KL(N(0, 1) || N(1, e^2)) = 1 + (1 + 1) / (2 e^2) - 1/2
    z = torch.zeros(1, dtype=torch.float64)
    assert normal_kl(z, z, z + 1, z + 2).item() == pytest.approx(1 + 2 / (2 * math.e**2) - 0.5, rel=1e-14)
