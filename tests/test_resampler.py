"""The importance sampling of the timestep for L_vlb (improved DDPM section 3.3): p_t from the history of
the terms, the draws follow p, and the weighted estimate has the expectation of the uniform one."""

import numpy as np
import pytest
import torch

from ddpm_bench.resampler import HISTORY, UNIFORM_MIX, LossSecondMomentResampler, draw_indices


def warmed_up(T: int, seed: int = 0) -> tuple[LossSecondMomentResampler, np.ndarray]:
    """A resampler whose every term has HISTORY values, term t's spread around a level that grows 100-fold."""
    rng = np.random.default_rng(seed)
    r = LossSecondMomentResampler(T)
    level = np.geomspace(0.01, 1.0, T)
    for _ in range(HISTORY):
        r.update(torch.arange(T), torch.from_numpy(level * rng.uniform(0.5, 1.5, T)))
    return r, level


def test_uniform_until_every_term_has_its_history():
    T = 5
    r = LossSecondMomentResampler(T)
    for k in range(HISTORY):
        assert torch.equal(r.probabilities(), torch.full((T,), 1 / T, dtype=torch.float64)), k
        r.update(torch.arange(T - 1), torch.full((T - 1,), 3.0))  # the last term never gets a value
        r.update(torch.tensor([T - 1] * (k < HISTORY - 1)), torch.tensor([1.0] * (k < HISTORY - 1)))
    assert not r.warmed_up  # 9 values of the last term
    r.update(torch.tensor([T - 1]), torch.tensor([1.0]))
    assert r.warmed_up
    expected = (1 - UNIFORM_MIX) * np.array([3, 3, 3, 3, 1]) / 13 + UNIFORM_MIX / T  # sqrt(E[L^2]): 3 and 1
    np.testing.assert_allclose(r.probabilities().numpy(), expected, rtol=1e-15)


def test_the_history_keeps_the_last_values_of_each_term_in_batch_order():
    r = LossSecondMomentResampler(2)
    values = torch.arange(1.0, 14.0)  # 13 values of term 0, and one of term 1 in between
    r.update(torch.zeros(7, dtype=torch.int64), values[:7])
    r.update(torch.tensor([1, 0, 0]), torch.tensor([99.0, 8.0, 9.0]))
    r.update(torch.zeros(4, dtype=torch.int64), values[9:])
    assert r.history[0].tolist() == [float(v) for v in range(4, 14)]
    assert r.count.tolist() == [HISTORY, 1] and r.history[1, 0] == 99.0
    p = r.probabilities()
    assert torch.equal(p, torch.full((2,), 0.5, dtype=torch.float64))  # term 1 has only 1 value: uniform


def test_draws_follow_p():
    r, _ = warmed_up(40)
    p = r.probabilities()
    assert abs(float(p.sum()) - 1) < 1e-14 and float(p.min()) > UNIFORM_MIX / 40
    n = 400_000
    i = draw_indices(p, torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    counts = np.bincount(i.numpy(), minlength=40)
    expected = n * p.numpy()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 80, chi2  # 39 degrees of freedom: P(chi2 > 80) is about 1e-4
    assert int(draw_indices(p, torch.tensor([0.0]))) == 0 and int(draw_indices(p, torch.tensor([1 - 1e-16]))) == 39


def test_the_weighted_estimate_has_the_expectation_of_the_uniform_one_and_a_smaller_variance():
    """L_vlb with t ~ p and weights 1 / (T p_t), against t uniform (the "L" objective), on fixed per-term
    losses: the same mean to within 5 standard errors, and the smaller spread that motivates it."""
    T, n = 40, 200_000
    r, level = warmed_up(T)
    losses = torch.from_numpy(level * 1.1)  # the terms the network would give now
    g = torch.Generator().manual_seed(1)
    p = r.probabilities()
    i = draw_indices(p, torch.rand(n, generator=g, dtype=torch.float64))
    weighted = losses[i] / (T * p[i])
    uniform = losses[torch.randint(0, T, (n,), generator=g)]
    truth = float(losses.mean())
    for estimate in (weighted, uniform):
        stderr = float(estimate.std()) / n ** 0.5
        assert abs(float(estimate.mean()) - truth) < 5 * stderr, (float(estimate.mean()), truth, stderr)
    assert float(weighted.std()) < 0.5 * float(uniform.std())
    # and exactly: sum_t p_t L_t / (T p_t) = mean L_t
    assert abs(float((p * losses / (T * p)).sum()) - truth) < 1e-15


def test_the_state_round_trips_and_a_wrong_shape_is_refused():
    r, _ = warmed_up(6)
    s = LossSecondMomentResampler(6)
    s.load_state_dict(r.state_dict())
    assert torch.equal(s.history, r.history) and torch.equal(s.count, r.count)
    assert torch.equal(s.probabilities(), r.probabilities())
    with pytest.raises(ValueError, match="shape"):
        LossSecondMomentResampler(7).load_state_dict(r.state_dict())
