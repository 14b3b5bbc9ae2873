"""The importance-sampled bound (`nll --terms K`): unbiased against closed forms and the exact engine, and
its standard error calibrated."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm_bench.diffusion import DiffusionConfig
from ddpm_bench.variational_bound import (
    BoundOptions,
    ImportanceOptions,
    compute_bound,
    draw_terms,
    estimate_bound,
    term_proposal,
)
from tests.plugins import ORACLE_IMAGE, TinyConv, as_network, oracle_eps
from tests.test_bound import oracle_closed_form

Z95 = 1.959963984540054


def oracle_images(n: int) -> torch.Tensor:
    return torch.from_numpy(np.repeat(ORACLE_IMAGE, n, axis=0)).permute(0, 3, 1, 2)


def proposals(closed: np.ndarray) -> dict[str, np.ndarray]:
    T1 = len(closed) - 2
    return {"rms": term_proposal(closed[None]), "uniform": np.full(T1, 1.0 / T1),
            "sqrt": term_proposal(np.sqrt(closed)[None], uniform_share=0.2)}


@pytest.mark.parametrize("name, K", [("rms", 1), ("rms", 10), ("sqrt", 1), ("sqrt", 10), ("sqrt", 50),
                                     ("uniform", 50)])
def test_estimate_of_the_oracle_is_unbiased_for_its_closed_form(K, name):
    """The exact denoiser of one image: every term is known in closed form and has no noise left, so the
    estimate's only randomness is the term sampling; the mean over 64 images agrees within 4 standard
    errors (or 1e-9 where a proposal proportional to the terms leaves no variance). A proposal that almost
    never draws a large term (uniform with K = 1 here: L_1 is 14% of the bound and drawn by 1 image in 199)
    is unbiased too, but no sample of 64 images shows it: its standard error is then no guide, which is
    why the proposal matters."""
    T = 200
    closed = oracle_closed_form(T, "fixed-large", "exact")
    q = proposals(closed)[name]
    est = estimate_bound(as_network(oracle_eps(T=T), DiffusionConfig(T=T)), oracle_images(64),
                         torch.arange(64), ImportanceOptions(terms=K, seed=3), q, batch_size=97)
    totals = est.terms.sum(1).numpy()
    se = totals.std(ddof=1) / math.sqrt(len(totals))
    assert abs(totals.mean() - closed.sum()) <= max(4 * se, 1e-9), (totals.mean(), closed.sum(), se)
    assert np.array_equal(est.drawn[:, 1:T].sum(1).numpy(), np.full(64, K))  # K KL terms per image
    np.testing.assert_allclose(est.terms[:, 0].numpy(), closed[0], rtol=1e-10)  # L_0 always evaluated
    np.testing.assert_allclose(est.terms[:, T].numpy(), closed[T], rtol=1e-10)  # L_T in closed form


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny U-Net of the trainer tests after 2 steps of the reference trainer (8x8x3, T = 20)."""
    from ddpm_bench import load_model
    from tests.test_train import tiny_checkpoint

    net = load_model(tiny_checkpoint(tmp_path_factory.mktemp("ckpt")), device="cpu", channels_last=False)
    return net, net.diffusion


@pytest.mark.parametrize("which", ["seeded conv net", "trained U-Net"])
def test_estimate_agrees_with_the_exact_engine_on_a_network(which, trained):
    """The estimate of each image uses the same x_{k+1} as the exact engine for the terms it draws, so the
    paired differences are the term-sampling error alone; their mean is within 4 standard errors."""
    if which == "trained U-Net":
        net, cfg = trained
        T, N = cfg.T, 24
    else:
        T, N = 50, 24
        cfg = DiffusionConfig(T=T)
        torch.manual_seed(0)
        net = TinyConv(T=T).eval()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (N, 3, 8, 8), dtype=np.uint8))
    exact = compute_bound(as_network(net, cfg), images, torch.arange(N), BoundOptions(seed=2)).terms.numpy()
    q = term_proposal(exact[:4])  # a pilot on 4 images
    est = estimate_bound(as_network(net, cfg), images, torch.arange(N), ImportanceOptions(seed=2, terms=10), q)
    diff = est.terms.sum(1).numpy() - exact.sum(1)
    se = diff.std(ddof=1) / math.sqrt(N)
    assert se > 0 and abs(diff.mean()) < 4 * se
    drawn = est.drawn.numpy() > 0
    first = drawn[:, 1:T] & (est.drawn.numpy()[:, 1:T] == 1)
    weights = 1.0 / (10 * q)
    np.testing.assert_allclose(est.terms.numpy()[:, 1:T][first], (exact[:, 1:T] * weights)[first], rtol=1e-9)


def test_term_draws_depend_on_seed_and_image_only():
    q = term_proposal(np.random.default_rng(0).random((3, 101)))
    a = draw_terms(5, torch.tensor([0, 1, 2, 3]), q, 7)
    b = draw_terms(5, torch.tensor([2, 3]), q, 7)
    np.testing.assert_array_equal(a[2:], b)
    assert (a >= 1).all() and (a <= 99).all() and (np.diff(a, axis=1) >= 0).all()
    assert not np.array_equal(draw_terms(6, torch.tensor([0, 1, 2, 3]), q, 7), a)


@pytest.mark.slow
def test_the_95_percent_interval_covers_the_expected_bound_93_to_97_percent_of_the_time():
    """1,000 independent seeds, 100 images each, K = 10 from an imperfect proposal, on the oracle whose
    expected bound is known in closed form: the mean +- 1.96 standard errors (term sampling included)
    covers it in 93-97% of the runs."""
    T, N, runs = 100, 100, 1000
    closed = oracle_closed_form(T, "fixed-large", "exact")
    q = proposals(closed)["sqrt"]
    cfg = DiffusionConfig(T=T)
    net, images = as_network(oracle_eps(T=T), cfg), oracle_images(N)
    covered = 0
    for seed in range(runs):
        totals = estimate_bound(net, images, torch.arange(N), ImportanceOptions(terms=10, seed=seed), q,
                                batch_size=N * 11).terms.sum(1).numpy()
        se = totals.std(ddof=1) / math.sqrt(N)
        covered += abs(totals.mean() - closed.sum()) <= Z95 * se
    assert 0.93 <= covered / runs <= 0.97, covered / runs


# -- `nll --terms K` ---------------------------------------------------------------------------------------------

def _nll(npz, out, *args):
    from ddpm_bench.cli import main

    return main(["nll", "--model", "tests/plugins.py:tiny_conv_T20", "--T", "20", "--no-progress", "--data", str(npz),
                 "--out", str(out), *map(str, args)])


def test_nll_terms_writes_an_honest_importance_sampled_output(tmp_path, capsys):
    import csv
    import json

    from ddpm_bench.cli import main

    npz = tmp_path / "d.npz"
    np.savez(npz, np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    assert _nll(npz, tmp_path / "exact") == 0
    assert _nll(npz, tmp_path / "pilot", "--terms", 3, "--batch-size", 5) == 0
    s = json.loads((tmp_path / "pilot" / "summary.json").read_text())
    assert s["estimator"] == "importance" and s["terms_per_image"] == 3 and s["bound"]["terms"] == 3
    assert s["proposal"]["from"] == "pilot" and s["proposal"]["images"] == [0, 1, 2, 3]
    assert s["network_evals"] == 6 * (3 + 1) + 4 * 20  # the pilot is counted
    with np.load(tmp_path / "pilot" / "per_image.npz") as z:
        drawn, terms = z["drawn"], z["terms"]
    assert (drawn[:, 1:20].sum(1) == 3).all() and np.isclose(terms.sum(1).mean(), s["total_bpd"], rtol=1e-12)
    # a resume reads the pilot's q back (checked like a shard) instead of running the pilot again
    kept = (tmp_path / "pilot" / "proposal.npz").stat().st_mtime_ns
    (tmp_path / "pilot" / "summary.json").unlink()
    assert _nll(npz, tmp_path / "pilot", "--terms", 3, "--batch-size", 5) == 0
    assert (tmp_path / "pilot" / "proposal.npz").stat().st_mtime_ns == kept
    assert json.loads((tmp_path / "pilot" / "summary.json").read_text())["proposal"] == s["proposal"]
    rows = list(csv.DictReader(open(tmp_path / "pilot" / "terms.csv")))
    never = [int(r["term"]) for r in rows if r["bpd_mean"] == ""]
    assert never and all(drawn[:, k].sum() == 0 for k in never)  # blank where no image drew the term
    # the same draws whatever the batch size, and a proposal from the exact output of the same model
    assert _nll(npz, tmp_path / "pilot2", "--terms", 3, "--batch-size", 64) == 0
    with np.load(tmp_path / "pilot2" / "per_image.npz") as z:
        assert np.array_equal(z["drawn"], drawn) and np.allclose(z["terms"], terms, rtol=1e-9, atol=0)
    assert _nll(npz, tmp_path / "prop", "--terms", 3, "--proposal", tmp_path / "exact") == 0
    p = json.loads((tmp_path / "prop" / "summary.json").read_text())
    assert p["proposal"]["from"] == "nll output" and p["network_evals"] == 6 * 4
    # exact and estimated outputs of one model have one expectation: gap compares them
    alt = tmp_path / "alt.npz"
    np.savez(alt, np.random.default_rng(1).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    assert _nll(alt, tmp_path / "test_est", "--terms", 3) == 0
    capsys.readouterr()
    assert main(["gap", str(tmp_path / "exact"), str(tmp_path / "test_est"), "--max-gap", "100"]) == 0
    # but rate-distortion needs every term; a proposal may come from another model with the same T (an
    # earlier checkpoint, say: any q keeps the estimate unbiased), which its summary records
    assert main(["rate-distortion", str(tmp_path / "pilot"), "--out", str(tmp_path / "rd")]) == 2
    assert "need every term" in capsys.readouterr().err
    assert main(["nll", "--model", "tests/plugins.py:tiny_conv_learned_T20", "--var-type", "learned", "--T", "20",
                "--no-progress", "--data", str(npz), "--terms", "3", "--proposal", str(tmp_path / "exact"),
                "--out", str(tmp_path / "other")]) == 0
    other = json.loads((tmp_path / "other" / "summary.json").read_text())
    assert other["proposal"]["model"] == p["model"]["identity"]["sha256"] != other["model"]["identity"]["sha256"]
    assert main(["nll", "--model", "tests/plugins.py:tiny_conv_T20", "--T", "10", "--no-progress", "--data", str(npz),
                 "--terms", "3", "--proposal", str(tmp_path / "exact"), "--out", str(tmp_path / "other_T")]) == 2
    assert "needs an exact nll output (every term) with T = 10" in capsys.readouterr().err
