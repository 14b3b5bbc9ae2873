"""The bound engine against closed forms, and its invariances."""

import math

import numpy as np
import pytest
import scipy.special as sp
import torch

from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.noise import bits_to_normal_, counter_normal, mix64_int
from ddpm_bench.variational_bound import BoundOptions, compute_bound, default_pairs_per_call
from tests.plugins import ORACLE_IMAGE, TinyConv, as_network, oracle_eps

LN2 = math.log(2)


def official_schedule(T):
    """Coefficients computed independently of ddpm_bench (official code's cumprod form)."""
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    post = betas * (1 - abar_prev) / (1 - abar)
    return betas, abar, post


def oracle_closed_form(T, var_type, cdf):
    """Every term of the bound of the exact denoiser of one image c, in bits/dim (no randomness left)."""
    betas, abar, post = official_schedule(T)
    post_log = np.log(np.append(post[1], post[1:]))
    model_log = np.log(np.append(post[1], betas[1:])) if var_type == "fixed-large" else post_log
    d = post_log - model_log
    terms = np.empty(T + 1)
    terms[1:T] = 0.5 * (np.expm1(d[1:]) - d[1:]) / LN2  # mean matches exactly; only the variances differ
    c = ORACLE_IMAGE[0].astype(np.float64) / 127.5 - 1.0
    sigma = math.exp(0.5 * model_log[0])
    a = (1 / 255) / sigma
    if cdf == "exact":
        interior, edge = math.log(math.erf(a / math.sqrt(2))), sp.log_ndtr(a)
    else:
        approx = lambda z: 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))  # noqa: E731
        interior, edge = math.log(max(approx(a) - approx(-a), 1e-12)), math.log(max(approx(a), 1e-12))
    v = ORACLE_IMAGE[0]
    logp = np.where((v == 0) | (v == 255), edge, interior)
    terms[0] = -logp.mean() / LN2
    terms[T] = (0.5 * ((1 - abar[-1]) + abar[-1] * c**2 - 1 - np.log(1 - abar[-1]))).mean() / LN2
    return terms


def bound_of(net, cfg, images_nhwc, batch_size=256, **opts):
    images = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)
    return compute_bound(as_network(net, cfg), images, torch.arange(len(images_nhwc)), BoundOptions(**opts),
                         batch_size=batch_size)


@pytest.mark.parametrize("var_type", ["fixed-large", "fixed-small"])
@pytest.mark.parametrize("cdf", ["exact", "tanh"])
def test_oracle_denoiser_matches_its_closed_form_term_by_term(var_type, cdf):
    T = 1000
    cfg = DiffusionConfig(T=T, var_type=var_type)
    got = bound_of(oracle_eps(T=T), cfg, ORACLE_IMAGE, decoder_cdf=cdf, batch_size=500, seed=3)
    want = oracle_closed_form(T, var_type, cdf)
    np.testing.assert_allclose(got.terms[0].numpy(), want, rtol=1e-9, atol=1e-12)
    assert got.mse.max().item() < 1e-9  # exact up to the float32 rounding of the eps output
    if var_type == "fixed-large":  # sanity of the closed form itself: the paper's L_T ~ 1e-5 bits/dim scale
        assert 0 < want[T] < 1e-3 and want[1:T].sum() > 0


def test_oracle_result_does_not_depend_on_the_seed():
    cfg = DiffusionConfig(T=50)
    a = bound_of(oracle_eps(T=50), cfg, ORACLE_IMAGE, seed=0).terms
    b = bound_of(oracle_eps(T=50), cfg, ORACLE_IMAGE, seed=1).terms
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-13)


def images(n, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_terms_are_identical_for_batch_sizes_1_7_and_64():
    cfg = DiffusionConfig(T=20)
    x = images(3)
    net = oracle_eps(image_nhwc=x[:1], T=20)  # elementwise: the network itself is batch-invariant
    runs = [bound_of(net, cfg, x, batch_size=b, seed=5) for b in (1, 7, 64)]
    for r in runs[1:]:
        assert torch.equal(r.terms, runs[0].terms) and torch.equal(r.mse, runs[0].mse)


def test_conv_model_terms_agree_across_batch_sizes_and_draws_average():
    cfg = DiffusionConfig(T=20)
    net = TinyConv(T=20).eval()
    x = images(4)
    a = bound_of(net, cfg, x, batch_size=1, seed=2)
    b = bound_of(net, cfg, x, batch_size=64, seed=2)
    np.testing.assert_allclose(a.terms.numpy(), b.terms.numpy(), rtol=1e-6)
    two = bound_of(net, cfg, x, batch_size=64, seed=2, draws=2)
    assert not torch.allclose(two.terms[:, :20], a.terms[:, :20])  # a second draw changes the estimate
    assert torch.equal(two.terms[:, 20], a.terms[:, 20])  # L_T needs no draw


def test_every_kl_is_nonnegative_and_total_is_the_sum_of_terms(tmp_path):
    cfg = DiffusionConfig(T=20, var_type="learned-range")
    from tests.plugins import tiny_conv_learned_T20

    r = bound_of(tiny_conv_learned_T20(), cfg, images(3), seed=1)
    assert torch.all(r.terms[:, 1:] >= 0)
    assert torch.all(torch.isfinite(r.terms))


def test_a_subset_of_images_gets_the_same_terms_as_in_the_full_set():
    cfg = DiffusionConfig(T=20)
    net = TinyConv(T=20).eval()
    x = images(5)
    full = compute_bound(as_network(net, cfg), torch.from_numpy(x).permute(0, 3, 1, 2), torch.arange(5), BoundOptions(seed=4))
    part = compute_bound(as_network(net, cfg), torch.from_numpy(x[3:]).permute(0, 3, 1, 2), torch.arange(3, 5),
                         BoundOptions(seed=4))
    np.testing.assert_allclose(part.terms.numpy(), full.terms[3:].numpy(), rtol=1e-6)


def test_counter_noise_matches_a_pure_python_reference():
    keys = torch.tensor([[12, 999, 0], [0, 0, 3]])
    z = counter_normal(42, keys, (5,))
    for p, key in enumerate(keys.tolist()):
        h = mix64_int(42)
        for c in key:
            h = mix64_int(h ^ c)
        for e in range(5):
            bits = mix64_int(h + (e + 1) * 0x9E3779B97F4A7C15) >> 11
            assert z[p, e].item() == pytest.approx(sp.ndtri((bits + 0.5) * 2.0**-53), rel=1e-14, abs=1e-15)


def test_counter_noise_is_standard_normal():
    keys = torch.stack([torch.arange(2000), torch.zeros(2000, dtype=torch.long), torch.zeros(2000, dtype=torch.long)], 1)
    z = counter_normal(0, keys, (64,)).flatten()
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    from scipy import stats

    assert stats.kstest(z.numpy()[:20000], "norm").pvalue > 1e-3


def test_default_pairs_per_call_keeps_the_values_per_call_of_32x32x3_images():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_pairs_per_call(cpu) == default_pairs_per_call(cpu, (3, 32, 32)) == 32
    assert default_pairs_per_call(cpu, (3, 16, 16)) == 128
    assert default_pairs_per_call(cpu, (1, 28, 28)) == 125
    assert default_pairs_per_call(cpu, (3, 256, 256)) == 1  # never 0
    assert default_pairs_per_call(cuda, (3, 32, 32)) == 256 and default_pairs_per_call(cuda, (3, 64, 64)) == 64


def test_every_53_bit_draw_maps_to_a_finite_normal_quantile():
    # b = 2^53 - 1 is U = 1 - 2^-54, which (b + 0.5) / 2^53 in float64 rounded to 1 (and ndtri to inf)
    bits = torch.tensor([0, 1, (1 << 52) - 1, 1 << 52, (1 << 53) - 2, (1 << 53) - 1], dtype=torch.int64)
    low = sp.ndtri(np.array([0.5, 1.5, 2.0**52 - 0.5]) / 2.0**53)  # U = (b + 1/2) / 2^53, exact in float64
    z = bits_to_normal_(bits.clone(), torch.empty(6, dtype=torch.float64))
    assert torch.isfinite(z).all()
    np.testing.assert_allclose(z.numpy(), np.concatenate([low, -low[::-1]]), rtol=1e-12)  # Phi^-1(1-U) = -Phi^-1(U)
    np.testing.assert_allclose(z[:3].numpy(), -z.flip(0)[:3].numpy(), rtol=1e-15)  # symmetric about U = 1/2
